// blend_forward_cpu / blend_backward_cpu against a plain scalar loop in double, for every storage
// type, both layouts and odd sizes (including pixel counts that straddle the CPU block size).
// Guard elements after every output catch writes past the end.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <type_traits>
#include <vector>

#include "blend.h"
#include "check.h"

using wsc::bf16_t;
using wsc::half_t;

namespace {

// Unit roundoff of the storage type (the final store rounds once) and of the accumulation type.
template <typename T> struct Precision;
template <> struct Precision<double> { static constexpr double store = 0x1p-53, acc = 0x1p-53; static constexpr const char* name = "double"; };
template <> struct Precision<float> { static constexpr double store = 0x1p-24, acc = 0x1p-24; static constexpr const char* name = "float"; };
template <> struct Precision<half_t> { static constexpr double store = 0x1p-11, acc = 0x1p-24; static constexpr const char* name = "half"; };
template <> struct Precision<bf16_t> { static constexpr double store = 0x1p-8, acc = 0x1p-24; static constexpr const char* name = "bf16"; };

constexpr int kGuard = 16;
const uint8_t kSentinel = 0xa5;

template <typename T>
double value(T x) { return static_cast<double>(wsc::load(x)); }
template <typename T>
T to_storage(double v) {
  if constexpr (std::is_same_v<T, double>) return v;
  else return wsc::store<T>(static_cast<float>(v));
}

// Uninitialised-looking output buffer with a recognisable byte pattern, guards included.
template <typename T>
std::vector<T> output_buffer(size_t n) {
  std::vector<T> v(n + kGuard);
  std::memset(static_cast<void*>(v.data()), kSentinel, v.size() * sizeof(T));
  return v;
}
template <typename T>
bool guards_intact(const std::vector<T>& v, size_t n) {
  const auto* bytes = reinterpret_cast<const uint8_t*>(v.data() + n);
  for (size_t i = 0; i < kGuard * sizeof(T); ++i)
    if (bytes[i] != kSentinel) return false;
  return true;
}

// |got - expected| within one rounding of the stored result plus accumulation error over `scale`.
template <typename T>
bool close(double got, double expected, double scale, int terms) {
  const double tol = Precision<T>::store * std::fabs(expected) + 4.0 * terms * Precision<T>::acc * scale + 1e-300;
  return std::fabs(got - expected) <= tol + (std::is_same_v<T, half_t> ? 0x1p-25 : 0.0);  // half subnormal spacing
}

template <typename T>
// out_offset shifts every output pointer by that many elements, off the allocator's alignment.
void check_case(std::mt19937& rng, int64_t N, int64_t C, int64_t H, int64_t W, bool channels_last,
                size_t out_offset = 0) {
  const int64_t HW = H * W;
  const size_t n = static_cast<size_t>(N * C * HW), n_mask = static_cast<size_t>(N * HW);
  std::uniform_real_distribution<double> signed_value(-2.0, 2.0), unit(0.0, 1.0);
  std::vector<T> face(n), bg(n), grad(n), mask(n_mask);
  for (auto* v : {&face, &bg, &grad})
    for (T& x : *v) x = to_storage<T>(signed_value(rng));
  for (T& x : mask) x = to_storage<T>(unit(rng));
  // Element (n, c, p) of a (N, C, HW) tensor in the chosen layout.
  auto at = [&](int64_t b, int64_t c, int64_t p) {
    return static_cast<size_t>(b * C * HW + (channels_last ? p * C + c : c * HW + p));
  };

  const size_t o = out_offset;
  auto out = output_buffer<T>(n + o), grad_face = output_buffer<T>(n + o), grad_bg = output_buffer<T>(n + o);
  auto grad_mask = output_buffer<T>(n_mask + o);
  wsc::blend_forward_cpu<T>(face.data(), bg.data(), mask.data(), out.data() + o, N, C, HW, channels_last);
  wsc::blend_backward_cpu<T>(grad.data(), face.data(), bg.data(), mask.data(), grad_face.data() + o,
                             grad_bg.data() + o, grad_mask.data() + o, N, C, HW, channels_last);

  const char* layout = channels_last ? "NHWC" : "NCHW";
  int bad = 0;
  for (int64_t b = 0; b < N; ++b) {
    for (int64_t p = 0; p < HW; ++p) {
      const double m = value(mask[b * HW + p]);
      double mask_grad = 0, mask_grad_scale = 0;
      for (int64_t c = 0; c < C; ++c) {
        const size_t i = at(b, c, p);
        const double f = value(face[i]), bk = value(bg[i]), g = value(grad[i]);
        const double y = m * f + (1 - m) * bk;
        bad += !close<T>(value(out[o + i]), y, std::fabs(m * f) + std::fabs((1 - m) * bk), 3);
        bad += !close<T>(value(grad_face[o + i]), g * m, std::fabs(g * m), 1);
        bad += !close<T>(value(grad_bg[o + i]), g * (1 - m), std::fabs(g * (1 - m)), 2);
        mask_grad += g * (f - bk);
        mask_grad_scale += std::fabs(g) * (std::fabs(f) + std::fabs(bk));
      }
      bad += !close<T>(value(grad_mask[o + b * HW + p]), mask_grad, mask_grad_scale, static_cast<int>(C) + 2);
    }
  }
  CHECK(bad == 0, "%s %s N=%ld C=%ld H=%ld W=%ld: %d elements outside tolerance", Precision<T>::name, layout,
        static_cast<long>(N), static_cast<long>(C), static_cast<long>(H), static_cast<long>(W), bad);
  CHECK(guards_intact(out, n + o) && guards_intact(grad_face, n + o) && guards_intact(grad_bg, n + o) &&
            guards_intact(grad_mask, n_mask + o),
        "%s %s N=%ld C=%ld H=%ld W=%ld: wrote past the end of an output", Precision<T>::name, layout,
        static_cast<long>(N), static_cast<long>(C), static_cast<long>(H), static_cast<long>(W));
}

template <typename T>
void check_type(std::mt19937& rng) {
  struct Shape { int64_t N, C, H, W; };
  // 1x1 images, single channels, primes, 3*1367 = 4101 pixels (two 2048-pixel blocks + 5), and
  // one shape above the size where the CPU loops go multi-threaded.
  const Shape shapes[] = {{1, 1, 1, 1}, {1, 3, 1, 1}, {2, 1, 5, 3}, {3, 3, 7, 13}, {1, 5, 37, 23},
                          {2, 4, 16, 16}, {2, 3, 3, 1367}, {1, 2, 64, 65}, {2, 3, 97, 131}};
  for (const Shape& s : shapes)
    for (const bool channels_last : {false, true}) check_case<T>(rng, s.N, s.C, s.H, s.W, channels_last);
  // Outputs of 8 MiB and more take the streaming-store path (stream_store.h): run it with an odd
  // H*W and with outputs one element off the cache-line grid, so each line run has a head and tail.
  for (const size_t offset : {size_t(0), size_t(1)}) check_case<T>(rng, 2, 3, 1031, 1033, false, offset);
}

}  // namespace

int main() {
  const unsigned seed = std::random_device{}();  // fresh inputs every run; the seed reproduces a failure
  std::printf("test_blend_cpu: seed %u\n", seed);
  std::mt19937 rng(seed);
  check_type<double>(rng);
  check_type<float>(rng);
  check_type<half_t>(rng);
  check_type<bf16_t>(rng);
  return wsc_test::report("test_blend_cpu");
}
