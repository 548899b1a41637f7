// CPU loops for blend. NCHW works on blocks of pixels so the innermost loop is a contiguous,
// vectorisable run and the mask-gradient sum over channels stays in a small stack buffer.
#include "blend.h"

#include <algorithm>

namespace wsc {
namespace {
constexpr int64_t kBlock = 2048;  // pixels per task: 8 KB of fp32 accumulator, fits L1
// Below this many elements a parallel region costs more than it saves (and stalls when the
// other core is busy), so small calls run on the calling thread.
constexpr int64_t kParallelMin = 1 << 16;
}

template <typename T>
void blend_forward_cpu(const T* face, const T* bg, const T* mask, T* out,
                       int64_t N, int64_t C, int64_t HW, bool channels_last) {
  using A = typename acc_type<T>::type;
  const int64_t blocks = (HW + kBlock - 1) / kBlock;
#pragma omp parallel for schedule(static) if (N * C * HW >= kParallelMin)
  for (int64_t task = 0; task < N * blocks; ++task) {
    const int64_t n = task / blocks;
    const int64_t p0 = (task % blocks) * kBlock;
    const int64_t p1 = std::min(HW, p0 + kBlock);
    const T* m = mask + n * HW;
    const int64_t base = n * C * HW;
    if (!channels_last) {
      for (int64_t c = 0; c < C; ++c) {
        const T* f = face + base + c * HW;
        const T* b = bg + base + c * HW;
        T* o = out + base + c * HW;
#pragma omp simd
        for (int64_t p = p0; p < p1; ++p)
          o[p] = store<T>(blend_value<A>(load(f[p]), load(b[p]), load(m[p])));
      }
    } else {
      for (int64_t p = p0; p < p1; ++p) {
        const A mv = load(m[p]);
        for (int64_t c = 0; c < C; ++c) {
          const int64_t i = base + p * C + c;
          out[i] = store<T>(blend_value<A>(load(face[i]), load(bg[i]), mv));
        }
      }
    }
  }
}

template <typename T>
void blend_backward_cpu(const T* grad, const T* face, const T* bg, const T* mask,
                        T* grad_face, T* grad_bg, T* grad_mask,
                        int64_t N, int64_t C, int64_t HW, bool channels_last) {
  using A = typename acc_type<T>::type;
  const int64_t blocks = (HW + kBlock - 1) / kBlock;
#pragma omp parallel for schedule(static) if (N * C * HW >= kParallelMin)
  for (int64_t task = 0; task < N * blocks; ++task) {
    const int64_t n = task / blocks;
    const int64_t p0 = (task % blocks) * kBlock;
    const int64_t p1 = std::min(HW, p0 + kBlock);
    const int64_t len = p1 - p0;
    const T* m = mask + n * HW + p0;
    T* gm = grad_mask + n * HW + p0;
    const int64_t base = n * C * HW;
    A acc[kBlock];
    if (!channels_last) {
      std::fill(acc, acc + len, A(0));
      for (int64_t c = 0; c < C; ++c) {
        const int64_t off = base + c * HW + p0;
        const T* g = grad + off; const T* f = face + off; const T* b = bg + off;
        T* gf = grad_face + off; T* gb = grad_bg + off;
#pragma omp simd
        for (int64_t p = 0; p < len; ++p) {
          A vf, vb, vm;
          blend_grads<A>(load(g[p]), load(f[p]), load(b[p]), load(m[p]), vf, vb, vm);
          gf[p] = store<T>(vf);
          gb[p] = store<T>(vb);
          acc[p] += vm;
        }
      }
      for (int64_t p = 0; p < len; ++p) gm[p] = store<T>(acc[p]);
    } else {
      for (int64_t p = 0; p < len; ++p) {
        const A mv = load(m[p]);
        A sum = 0;
        for (int64_t c = 0; c < C; ++c) {
          const int64_t i = base + (p0 + p) * C + c;
          A vf, vb, vm;
          blend_grads<A>(load(grad[i]), load(face[i]), load(bg[i]), mv, vf, vb, vm);
          grad_face[i] = store<T>(vf);
          grad_bg[i] = store<T>(vb);
          sum += vm;
        }
        gm[p] = store<T>(sum);
      }
    }
  }
}

#define WSC_INSTANTIATE(T)                                                                    \
  template void blend_forward_cpu<T>(const T*, const T*, const T*, T*, int64_t, int64_t,      \
                                     int64_t, bool);                                          \
  template void blend_backward_cpu<T>(const T*, const T*, const T*, const T*, T*, T*, T*,     \
                                      int64_t, int64_t, int64_t, bool);
WSC_INSTANTIATE(float)
WSC_INSTANTIATE(double)
WSC_INSTANTIATE(half_t)
WSC_INSTANTIATE(bf16_t)
#undef WSC_INSTANTIATE

}  // namespace wsc
