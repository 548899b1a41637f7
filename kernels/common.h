// Shared by the CPU loops (*_cpu.cpp) and the CUDA kernels (*.cu): no torch, raw pointers.
#pragma once
#include <cstdint>
#include <cstring>
#include <cmath>

#if defined(__CUDACC__)
#define WSC_HD __host__ __device__ __forceinline__
#else
#define WSC_HD inline
#endif
// Also inlined by the host compiler whatever its size heuristics say: per-element math that a
// CPU loop must inline to vectorise (a call in an `omp simd` loop body stops vectorisation).
#if defined(__CUDACC__)
#define WSC_HD_INLINE __host__ __device__ __forceinline__
#elif defined(__GNUC__)
#define WSC_HD_INLINE inline __attribute__((always_inline))
#else
#define WSC_HD_INLINE inline
#endif

namespace wsc {

// 16-bit float storage types with the bit layout of IEEE half and bfloat16 (the same bits
// torch's at::Half / at::BFloat16 hold), so kernels can take raw tensor pointers.
struct half_t { uint16_t bits; };
struct bf16_t { uint16_t bits; };

WSC_HD float bits_to_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f; std::memcpy(&f, &u, 4); return f;
#endif
}
WSC_HD uint32_t float_to_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u; std::memcpy(&u, &f, 4); return u;
#endif
}

// Load any storage type into its accumulation type (fp32, or fp64 for double); store rounds to nearest even.
WSC_HD float load(float x) { return x; }
WSC_HD double load(double x) { return x; }  // fp64 accumulates in fp64
WSC_HD float load(uint8_t x) { return static_cast<float>(x); }
WSC_HD float load(bf16_t x) { return bits_to_float(static_cast<uint32_t>(x.bits) << 16); }
WSC_HD float load(half_t x) {
  const uint32_t h = x.bits;
  const uint32_t sign = (h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
  if (exp == 0x1f) return bits_to_float(sign | 0x7f800000u | (man << 13));  // inf / nan
  if (exp == 0) {
    if (man == 0) return bits_to_float(sign);
    // subnormal half: value = man * 2^-24
    const float v = static_cast<float>(man) * 5.9604644775390625e-8f;
    return sign ? -v : v;
  }
  return bits_to_float(sign | ((exp + 112u) << 23) | (man << 13));
}

template <typename T> WSC_HD T store(float v);
template <typename T> WSC_HD T store(double v);  // only store<double>: fp64 never rounds to fp32
template <> WSC_HD float store<float>(float v) { return v; }
template <> WSC_HD double store<double>(double v) { return v; }
template <> WSC_HD bf16_t store<bf16_t>(float v) {
  uint32_t u = float_to_bits(v);
  if ((u & 0x7fffffffu) > 0x7f800000u) return bf16_t{static_cast<uint16_t>((u >> 16) | 0x40u)};  // quiet nan
  u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest even
  return bf16_t{static_cast<uint16_t>(u >> 16)};
}
template <> WSC_HD half_t store<half_t>(float v) {
  const uint32_t u = float_to_bits(v);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  const uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return half_t{static_cast<uint16_t>(sign | 0x7e00u)};  // nan
  if (a >= 0x477ff000u) return half_t{static_cast<uint16_t>(sign | 0x7c00u)};  // rounds to inf
  if (a < 0x38800000u) {  // result is subnormal (or zero) in half: round man*2^-24 to an integer
    const float f = bits_to_float(a) * 16777216.0f;  // exact scaling by 2^24
    // round half to even without relying on the FPU rounding mode
    uint32_t q = static_cast<uint32_t>(f);
    const float rem = f - static_cast<float>(q);
    if (rem > 0.5f || (rem == 0.5f && (q & 1u))) ++q;
    return half_t{static_cast<uint16_t>(sign | q)};
  }
  uint32_t m = a + 0xc8000fffu + ((a >> 13) & 1u);  // rebias exponent (-112<<23) and round to even
  return half_t{static_cast<uint16_t>(sign | (m >> 13))};
}

WSC_HD uint8_t round_to_u8(float v) {
  // round half up, clamped: the uint8 store of every compositing op
  v = v < 0.f ? 0.f : (v > 255.f ? 255.f : v);
  return static_cast<uint8_t>(v + 0.5f);
}

// Memory layouts an NCHW-shaped op accepts: element (n, c, p) with p = y*W + x lives at
// n*C*HW + c*c_stride + p*p_stride.
struct Layout {
  int64_t c_stride;
  int64_t p_stride;
};
WSC_HD Layout nchw_layout(int64_t C, int64_t HW) { (void)C; return Layout{HW, 1}; }
WSC_HD Layout nhwc_layout(int64_t C, int64_t HW) { (void)HW; return Layout{1, C}; }

// Instance-norm statistics: mean and 1/sqrt(var + eps) of a plane from sums taken around a shift
// (a sample of the plane): s1 = sum(x - shift), s2 = sum((x - shift)^2). Shifting keeps
// |mean| >> std exact enough. Shared by ain and instance_norm_act.
WSC_HD void stats_from_shifted_sums(double shift, double s1, double s2, int64_t count, double eps, double& mean,
                                    double& rstd) {
  const double d = s1 / static_cast<double>(count);
  double var = s2 / static_cast<double>(count) - d * d;
  var = var < 0 ? 0 : var;
  mean = shift + d;
  rstd = 1.0 / sqrt(var + eps);
}

}  // namespace wsc
