// CPU loops of instance_norm_act. Passes over the (N, C, HW) tensor E:
//   forward:  statistics read x; the output pass reads x and writes y: 3 E.
//   backward: sums of gp and gp*xhat read dy and x; the dx pass reads dy, x and writes dx: 5 E.
// (Unfused, InstanceNorm2d + LeakyReLU move 5 E forward and ~9 E backward, plus, on
// channels_last input, copies to and from NCHW.) NCHW works plane by plane; NHWC by blocks of
// pixels of one image with the channel loop innermost (vectorised), per-task partial sums reduced
// in a fixed order, so results do not depend on the thread count.
// FP exceptions are never inspected: without trapping math GCC if-converts the LeakyReLU
// selects of the backward loops, which otherwise stay scalar (checked with -fopt-info-vec).
#pragma GCC optimize("no-trapping-math")
#include "instance_norm_act.h"

#include <algorithm>
#include <vector>

#include "plane_stats_cpu.h"

namespace wsc {
namespace {

using plane_stats::kParallelMin;
using plane_stats::kPixelBlock;

}  // namespace

template <typename T>
void instance_norm_act_forward_cpu(const T* x, T* y, T* mean, T* rstd, int64_t N, int64_t C, int64_t HW, double eps,
                                   double slope_d, bool channels_last) {
  if (N * C * HW == 0) return;
  const T slope = static_cast<T>(slope_d);
  if (!channels_last) {
    plane_stats::stats_nchw(x, mean, rstd, N * C, HW, eps);
#pragma omp parallel for schedule(static) if (N * C * HW >= kParallelMin)
    for (int64_t pl = 0; pl < N * C; ++pl) {
      const T mu = mean[pl], rs = rstd[pl];
      const T* xp = x + pl * HW;
      T* yp = y + pl * HW;
#pragma omp simd
      for (int64_t p = 0; p < HW; ++p) yp[p] = leaky<T>((xp[p] - mu) * rs, slope);
    }
    return;
  }
  plane_stats::stats_nhwc(x, mean, rstd, N, C, HW, eps);
  const int64_t blocks = (HW + kPixelBlock - 1) / kPixelBlock;
#pragma omp parallel for schedule(static) if (N * C * HW >= kParallelMin)
  for (int64_t task = 0; task < N * blocks; ++task) {
    const int64_t n = task / blocks, p0 = (task % blocks) * kPixelBlock, p1 = std::min(HW, p0 + kPixelBlock);
    const T* mu = mean + n * C;
    const T* rs = rstd + n * C;
    for (int64_t p = p0; p < p1; ++p) {
      const T* xp = x + (n * HW + p) * C;
      T* yp = y + (n * HW + p) * C;
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) yp[c] = leaky<T>((xp[c] - mu[c]) * rs[c], slope);
    }
  }
}

template <typename T>
void instance_norm_act_backward_cpu(const T* dy, const T* x, const T* mean, const T* rstd, T* dx, int64_t N,
                                    int64_t C, int64_t HW, double slope_d, bool channels_last) {
  if (N * C * HW == 0) return;
  const T slope = static_cast<T>(slope_d);
  const T inv_hw = T(1) / static_cast<T>(HW);
  if (!channels_last) {
#pragma omp parallel for schedule(static) if (N * C * HW >= kParallelMin)
    for (int64_t pl = 0; pl < N * C; ++pl) {
      const T mu = mean[pl], rs = rstd[pl];
      const T* xp = x + pl * HW;
      const T* gp = dy + pl * HW;
      T s1 = 0, s2 = 0;
#pragma omp simd reduction(+ : s1, s2)
      for (int64_t p = 0; p < HW; ++p) {
        const T xh = (xp[p] - mu) * rs, g = leaky_grad<T>(gp[p], xh, slope);
        s1 += g;
        s2 += g * xh;
      }
      const T m1 = s1 * inv_hw, m2 = s2 * inv_hw;
      T* out = dx + pl * HW;
#pragma omp simd
      for (int64_t p = 0; p < HW; ++p) {
        const T xh = (xp[p] - mu) * rs;
        out[p] = instance_norm_input_grad<T>(leaky_grad<T>(gp[p], xh, slope), xh, rs, m1, m2);
      }
    }
    return;
  }
  const int64_t blocks = (HW + kPixelBlock - 1) / kPixelBlock, tasks = N * blocks;
  // sums[task][2][C]: the task's partial sums of gp and gp * xhat per channel
  std::vector<T> sums(static_cast<size_t>(tasks * 2 * C));
#pragma omp parallel for schedule(static) if (N * C * HW >= kParallelMin)
  for (int64_t task = 0; task < tasks; ++task) {
    const int64_t n = task / blocks, p0 = (task % blocks) * kPixelBlock, p1 = std::min(HW, p0 + kPixelBlock);
    const T* mu = mean + n * C;
    const T* rs = rstd + n * C;
    T* s1 = sums.data() + task * 2 * C;
    T* s2 = s1 + C;
    std::fill(s1, s1 + 2 * C, T(0));
    for (int64_t p = p0; p < p1; ++p) {
      const T* xp = x + (n * HW + p) * C;
      const T* gp = dy + (n * HW + p) * C;
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) {
        const T xh = (xp[c] - mu[c]) * rs[c], g = leaky_grad<T>(gp[c], xh, slope);
        s1[c] += g;
        s2[c] += g * xh;
      }
    }
  }
  // plane means, reduced over an image's tasks in order
  std::vector<T> means(static_cast<size_t>(N * 2 * C), T(0));
  for (int64_t n = 0; n < N; ++n)
    for (int64_t b = 0; b < blocks; ++b) {
      const T* part = sums.data() + (n * blocks + b) * 2 * C;
      T* m = means.data() + n * 2 * C;
      for (int64_t c = 0; c < 2 * C; ++c) m[c] += part[c];
    }
  for (T& m : means) m *= inv_hw;
#pragma omp parallel for schedule(static) if (N * C * HW >= kParallelMin)
  for (int64_t task = 0; task < tasks; ++task) {
    const int64_t n = task / blocks, p0 = (task % blocks) * kPixelBlock, p1 = std::min(HW, p0 + kPixelBlock);
    const T* mu = mean + n * C;
    const T* rs = rstd + n * C;
    const T* m1 = means.data() + n * 2 * C;
    const T* m2 = m1 + C;
    for (int64_t p = p0; p < p1; ++p) {
      const T* xp = x + (n * HW + p) * C;
      const T* gp = dy + (n * HW + p) * C;
      T* out = dx + (n * HW + p) * C;
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) {
        const T xh = (xp[c] - mu[c]) * rs[c];
        out[c] = instance_norm_input_grad<T>(leaky_grad<T>(gp[c], xh, slope), xh, rs[c], m1[c], m2[c]);
      }
    }
  }
}

#define WSC_INSTANTIATE(T)                                                                               \
  template void instance_norm_act_forward_cpu<T>(const T*, T*, T*, T*, int64_t, int64_t, int64_t, double, \
                                                 double, bool);                                           \
  template void instance_norm_act_backward_cpu<T>(const T*, const T*, const T*, const T*, T*, int64_t,    \
                                                  int64_t, int64_t, double, bool);
WSC_INSTANTIATE(float)
WSC_INSTANTIATE(double)
#undef WSC_INSTANTIATE

}  // namespace wsc
