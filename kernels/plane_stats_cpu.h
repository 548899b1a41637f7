// Per-(n, c) plane statistics (mean, 1/sqrt(var + eps)) of an (N, C, HW) tensor in NCHW or
// NHWC order, for the CPU loops of the instance-normalising ops (ain, instance_norm_act). Sums
// are taken around the plane's (NCHW) or the image's first pixel's (NHWC) value, in S partials
// flushed to double, and reduced in a fixed order: results do not depend on the thread count.
#pragma once
#include <algorithm>
#include <cstdint>
#include <vector>

#include "common.h"

namespace wsc {
namespace plane_stats {

constexpr int64_t kParallelMin = 1 << 15;  // elements below which threads cost more than they save
constexpr int64_t kPixelBlock = 2048;      // NHWC pixels per task

// Plane statistics of NCHW: one task per (n, c); sums around the plane's first value.
template <typename T, typename S>
inline void stats_nchw(const T* h, S* mean, S* rstd, int64_t planes, int64_t HW, double eps) {
#pragma omp parallel for schedule(static) if (planes * HW >= kParallelMin)
  for (int64_t pl = 0; pl < planes; ++pl) {
    const T* x = h + pl * HW;
    const S shift = load(x[0]);
    double s1 = 0, s2 = 0;
    for (int64_t p0 = 0; p0 < HW; p0 += 1024) {  // S partials over short runs, flushed to double
      S a1 = 0, a2 = 0;
      const int64_t p1 = std::min(HW, p0 + 1024);
#pragma omp simd reduction(+ : a1, a2)
      for (int64_t p = p0; p < p1; ++p) {
        const S d = load(x[p]) - shift;
        a1 += d;
        a2 += d * d;
      }
      s1 += a1;
      s2 += a2;
    }
    double mu, rs;
    stats_from_shifted_sums(shift, s1, s2, HW, eps, mu, rs);
    mean[pl] = static_cast<S>(mu);
    rstd[pl] = static_cast<S>(rs);
  }
}

// Plane statistics of NHWC: tasks over pixel blocks of one image add per-channel partial sums
// (around the image's first pixel) that are then reduced per (n, c) in block order.
template <typename T, typename S>
inline void stats_nhwc(const T* h, S* mean, S* rstd, int64_t N, int64_t C, int64_t HW, double eps) {
  const int64_t P = kPixelBlock, blocks = (HW + P - 1) / P;
  std::vector<double> part(static_cast<size_t>(N * blocks * C * 2));
#pragma omp parallel for schedule(static) if (N * C * HW >= kParallelMin)
  for (int64_t task = 0; task < N * blocks; ++task) {
    const int64_t n = task / blocks, p0 = (task % blocks) * P, p1 = std::min(HW, p0 + P);
    const T* img = h + n * HW * C;
    std::vector<S> a1(C, S(0)), a2(C, S(0));
    for (int64_t p = p0; p < p1; ++p) {
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) {
        const S d = load(img[p * C + c]) - load(img[c]);
        a1[c] += d;
        a2[c] += d * d;
      }
    }
    double* out = part.data() + task * C * 2;
    for (int64_t c = 0; c < C; ++c) { out[2 * c] = a1[c]; out[2 * c + 1] = a2[c]; }
  }
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t c = 0; c < C; ++c) {
      double s1 = 0, s2 = 0;
      for (int64_t blk = 0; blk < blocks; ++blk) {
        s1 += part[((n * blocks + blk) * C + c) * 2];
        s2 += part[((n * blocks + blk) * C + c) * 2 + 1];
      }
      double mu, rs;
      stats_from_shifted_sums(load(h[n * HW * C + c]), s1, s2, HW, eps, mu, rs);
      mean[n * C + c] = static_cast<S>(mu);
      rstd[n * C + c] = static_cast<S>(rs);
    }
  }
}

}  // namespace plane_stats
}  // namespace wsc
