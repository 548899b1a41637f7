// CPU loops for blend. NCHW works on blocks of pixels so the innermost loop is a contiguous,
// vectorisable run and the mask-gradient sum over channels stays in a small stack buffer.
// NCHW outputs are computed one 64-byte line at a time into registers, then stored: streamed
// past the cache when the output is large (stream_store.h), plain stores otherwise.
#include "blend.h"

#include <algorithm>

#include "stream_store.h"

namespace wsc {
namespace {
constexpr int64_t kBlock = 2048;  // pixels per task: 8 KB of fp32 accumulator, fits L1
// Below this many elements a parallel region costs more than it saves (and stalls when the
// other core is busy), so small calls run on the calling thread.
constexpr int64_t kParallelMin = 1 << 16;
}  // namespace

template <typename T>
void blend_forward_cpu(const T* face, const T* bg, const T* mask, T* out,
                       int64_t N, int64_t C, int64_t HW, bool channels_last) {
  using A = typename acc_type<T>::type;
  const int64_t blocks = (HW + kBlock - 1) / kBlock;
  const bool streaming = !channels_last && N * C * HW * int64_t(sizeof(T)) >= kStreamMinBytes;
#pragma omp parallel for schedule(static) if (N * C * HW >= kParallelMin)
  for (int64_t task = 0; task < N * blocks; ++task) {
    const int64_t n = task / blocks;
    const int64_t p0 = (task % blocks) * kBlock;
    const int64_t p1 = std::min(HW, p0 + kBlock);
    const int64_t len = p1 - p0;
    const T* m = mask + n * HW + p0;
    const int64_t base = n * C * HW;
    if (!channels_last) {
      constexpr int64_t kLine = 64 / sizeof(T);
      for (int64_t c = 0; c < C; ++c) {
        const int64_t off = base + c * HW + p0;
        const T* f = face + off; const T* b = bg + off;
        auto line_step = [&](int64_t q, int64_t count) {
          alignas(64) T line[kLine];
#pragma omp simd
          for (int64_t j = 0; j < count; ++j)
            line[j] = store<T>(blend_value<A>(load(f[q + j]), load(b[q + j]), load(m[q + j])));
          put_line(out + off + q, line, count, streaming);
        };
        for_each_line<kLine>(out + off, len, line_step);
      }
      if (streaming) stream_fence();
    } else {
      for (int64_t p = 0; p < len; ++p) {
        const A mv = load(m[p]);
        for (int64_t c = 0; c < C; ++c) {
          const int64_t i = base + (p0 + p) * C + c;
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
  const bool streaming = !channels_last && N * C * HW * int64_t(sizeof(T)) >= kStreamMinBytes;
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
      constexpr int64_t kLine = 64 / sizeof(T);
      std::fill(acc, acc + len, A(0));
      for (int64_t c = 0; c < C; ++c) {
        const int64_t off = base + c * HW + p0;
        const T* g = grad + off; const T* f = face + off; const T* b = bg + off;
        // grad_face and grad_background come from the same allocator: the same line offsets.
        auto line_step = [&](int64_t q, int64_t count) {
          alignas(64) T line_face[kLine], line_bg[kLine];
#pragma omp simd
          for (int64_t j = 0; j < count; ++j) {
            A vf, vb, vm;
            blend_grads<A>(load(g[q + j]), load(f[q + j]), load(b[q + j]), load(m[q + j]), vf, vb, vm);
            line_face[j] = store<T>(vf);
            line_bg[j] = store<T>(vb);
            acc[q + j] += vm;
          }
          put_line(grad_face + off + q, line_face, count, streaming);
          put_line(grad_bg + off + q, line_bg, count, streaming);
        };
        for_each_line<kLine>(grad_face + off, len, line_step);
      }
      T staged[kBlock];
      for (int64_t p = 0; p < len; ++p) staged[p] = store<T>(acc[p]);
      put_line(gm, staged, len, streaming);
      if (streaming) stream_fence();
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
