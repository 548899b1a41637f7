// CUDA kernels for the mask-guided blend out = m*f + (1-m)*b (math in blend.h).
//
// Memory traffic, s = element size, one pass over memory per call:
//   forward:  reads f, b (2*N*C*HW*s) and m (N*HW*s), writes out (N*C*HW*s)
//             -> (3*N*C*HW + N*HW) * s bytes.
//   backward: reads dY, f, b (3*N*C*HW*s) and m (N*HW*s), writes dF, dB (2*N*C*HW*s) and
//             dM (N*HW*s) -> (5*N*C*HW + 2*N*HW) * s bytes.
// One thread owns a group of V pixels of one image and loops over the channels, so the mask is
// read once and dM (a sum over channels) accumulates in registers: no atomics, no second pass.
//   NCHW: channel c of the group is V consecutive elements at c*HW; consecutive threads take
//         consecutive groups, so every load is coalesced. V = 16 bytes / s when HW and every
//         pointer allow 16-byte loads, else 1.
//   NHWC: the pixel's C channels are contiguous; they are read V at a time when C and the
//         pointers allow 16-byte loads, else one at a time. The mask is read per pixel.
#include <cuda_runtime.h>

#include <cstdint>
#include <initializer_list>
#include <stdexcept>
#include <string>

#include "blend.h"
#include "cuda_common.cuh"

namespace wsc {
using namespace cuda_common;
namespace {

constexpr int kThreads = 256;

// The channel loops below stay rolled (#pragma unroll 1): nvcc 13 splits the packed stores of
// unrolled copies into scalar ones, and the loop has enough independent loads across threads
// to hide latency.

// NCHW: V divides HW, so a group never straddles two images or two channel planes.
template <typename T, int V>
__global__ void __launch_bounds__(kThreads)
blend_forward_nchw(const T* __restrict__ face, const T* __restrict__ bg, const T* __restrict__ mask,
                   T* __restrict__ out, int64_t N, int64_t C, int64_t HW) {
  using A = typename acc_type<T>::type;
  const int64_t groups_per_image = HW / V, groups = N * groups_per_image;
  for (int64_t g = global_thread(); g < groups; g += grid_threads()) {
    const int64_t n = g / groups_per_image;
    const int64_t p = (g - n * groups_per_image) * V;
    const Pack<T, V> m = load_pack<V>(mask + n * HW + p);
    A mv[V];
#pragma unroll
    for (int i = 0; i < V; ++i) mv[i] = load(m.v[i]);
    const int64_t base = n * C * HW + p;
#pragma unroll 1
    for (int64_t c = 0; c < C; ++c) {
      const int64_t off = base + c * HW;
      const Pack<T, V> f = load_pack<V>(face + off), b = load_pack<V>(bg + off);
      Pack<T, V> o;
#pragma unroll
      for (int i = 0; i < V; ++i) o.v[i] = store<T>(blend_value<A>(load(f.v[i]), load(b.v[i]), mv[i]));
      store_pack<V>(out + off, o);
    }
  }
}

template <typename T, int V>
__global__ void __launch_bounds__(kThreads)
blend_backward_nchw(const T* __restrict__ grad, const T* __restrict__ face, const T* __restrict__ bg,
                    const T* __restrict__ mask, T* __restrict__ grad_face, T* __restrict__ grad_bg,
                    T* __restrict__ grad_mask, int64_t N, int64_t C, int64_t HW) {
  using A = typename acc_type<T>::type;
  const int64_t groups_per_image = HW / V, groups = N * groups_per_image;
  for (int64_t g = global_thread(); g < groups; g += grid_threads()) {
    const int64_t n = g / groups_per_image;
    const int64_t p = (g - n * groups_per_image) * V;
    const Pack<T, V> m = load_pack<V>(mask + n * HW + p);
    A mv[V], mask_grad[V];
#pragma unroll
    for (int i = 0; i < V; ++i) { mv[i] = load(m.v[i]); mask_grad[i] = A(0); }
    const int64_t base = n * C * HW + p;
#pragma unroll 1
    for (int64_t c = 0; c < C; ++c) {
      const int64_t off = base + c * HW;
      const Pack<T, V> gy = load_pack<V>(grad + off), f = load_pack<V>(face + off), b = load_pack<V>(bg + off);
      Pack<T, V> gf, gb;
#pragma unroll
      for (int i = 0; i < V; ++i) {
        A vf, vb, vm;
        blend_grads<A>(load(gy.v[i]), load(f.v[i]), load(b.v[i]), mv[i], vf, vb, vm);
        gf.v[i] = store<T>(vf);
        gb.v[i] = store<T>(vb);
        mask_grad[i] += vm;
      }
      store_pack<V>(grad_face + off, gf);
      store_pack<V>(grad_bg + off, gb);
    }
    Pack<T, V> gm;
#pragma unroll
    for (int i = 0; i < V; ++i) gm.v[i] = store<T>(mask_grad[i]);
    store_pack<V>(grad_mask + n * HW + p, gm);
  }
}

// NHWC: one thread per pixel (n, p), whose C channels start at pixel*C; V divides C.
template <typename T, int V>
__global__ void __launch_bounds__(kThreads)
blend_forward_nhwc(const T* __restrict__ face, const T* __restrict__ bg, const T* __restrict__ mask,
                   T* __restrict__ out, int64_t pixels, int64_t C) {
  using A = typename acc_type<T>::type;
  for (int64_t px = global_thread(); px < pixels; px += grid_threads()) {
    const A mv = load(mask[px]);
#pragma unroll 1
    for (int64_t c = 0; c < C; c += V) {
      const int64_t off = px * C + c;
      const Pack<T, V> f = load_pack<V>(face + off), b = load_pack<V>(bg + off);
      Pack<T, V> o;
#pragma unroll
      for (int i = 0; i < V; ++i) o.v[i] = store<T>(blend_value<A>(load(f.v[i]), load(b.v[i]), mv));
      store_pack<V>(out + off, o);
    }
  }
}

template <typename T, int V>
__global__ void __launch_bounds__(kThreads)
blend_backward_nhwc(const T* __restrict__ grad, const T* __restrict__ face, const T* __restrict__ bg,
                    const T* __restrict__ mask, T* __restrict__ grad_face, T* __restrict__ grad_bg,
                    T* __restrict__ grad_mask, int64_t pixels, int64_t C) {
  using A = typename acc_type<T>::type;
  for (int64_t px = global_thread(); px < pixels; px += grid_threads()) {
    const A mv = load(mask[px]);
    A mask_grad = A(0);
#pragma unroll 1
    for (int64_t c = 0; c < C; c += V) {
      const int64_t off = px * C + c;
      const Pack<T, V> gy = load_pack<V>(grad + off), f = load_pack<V>(face + off), b = load_pack<V>(bg + off);
      Pack<T, V> gf, gb;
#pragma unroll
      for (int i = 0; i < V; ++i) {
        A vf, vb, vm;
        blend_grads<A>(load(gy.v[i]), load(f.v[i]), load(b.v[i]), mv, vf, vb, vm);
        gf.v[i] = store<T>(vf);
        gb.v[i] = store<T>(vb);
        mask_grad += vm;
      }
      store_pack<V>(grad_face + off, gf);
      store_pack<V>(grad_bg + off, gb);
    }
    grad_mask[px] = store<T>(mask_grad);
  }
}

// Elements per 16-byte load, and whether every pointer is aligned for it.
template <typename T>
constexpr int kPackWidth = static_cast<int>(16 / sizeof(T));

template <typename T>
bool aligned_16(std::initializer_list<const T*> pointers) {
  for (const T* p : pointers)
    if (reinterpret_cast<uintptr_t>(p) % 16 != 0) return false;
  return true;
}



}  // namespace

template <typename T>
void blend_forward_cuda(const T* face, const T* bg, const T* mask, T* out,
                        int64_t N, int64_t C, int64_t HW, bool channels_last, void* stream) {
  if (N * HW == 0 || C == 0) return;
  constexpr int V = kPackWidth<T>;
  const auto s = static_cast<cudaStream_t>(stream);
  if (!channels_last) {
    if (HW % V == 0 && aligned_16<T>({face, bg, mask, out})) {
      blend_forward_nchw<T, V><<<grid_blocks(N * HW / V, kThreads), kThreads, 0, s>>>(face, bg, mask, out, N, C, HW);
    } else {
      blend_forward_nchw<T, 1><<<grid_blocks(N * HW, kThreads), kThreads, 0, s>>>(face, bg, mask, out, N, C, HW);
    }
  } else if (C % V == 0 && aligned_16<T>({face, bg, out})) {
    blend_forward_nhwc<T, V><<<grid_blocks(N * HW, kThreads), kThreads, 0, s>>>(face, bg, mask, out, N * HW, C);
  } else {
    blend_forward_nhwc<T, 1><<<grid_blocks(N * HW, kThreads), kThreads, 0, s>>>(face, bg, mask, out, N * HW, C);
  }
  check_launch("blend_forward_cuda");
}

template <typename T>
void blend_backward_cuda(const T* grad, const T* face, const T* bg, const T* mask,
                         T* grad_face, T* grad_bg, T* grad_mask,
                         int64_t N, int64_t C, int64_t HW, bool channels_last, void* stream) {
  if (N * HW == 0) return;
  constexpr int V = kPackWidth<T>;
  const auto s = static_cast<cudaStream_t>(stream);
  if (!channels_last) {
    if (HW % V == 0 && aligned_16<T>({grad, face, bg, mask, grad_face, grad_bg, grad_mask})) {
      blend_backward_nchw<T, V><<<grid_blocks(N * HW / V, kThreads), kThreads, 0, s>>>(
          grad, face, bg, mask, grad_face, grad_bg, grad_mask, N, C, HW);
    } else {
      blend_backward_nchw<T, 1><<<grid_blocks(N * HW, kThreads), kThreads, 0, s>>>(
          grad, face, bg, mask, grad_face, grad_bg, grad_mask, N, C, HW);
    }
  } else if (C % V == 0 && aligned_16<T>({grad, face, bg, grad_face, grad_bg})) {
    blend_backward_nhwc<T, V><<<grid_blocks(N * HW, kThreads), kThreads, 0, s>>>(
        grad, face, bg, mask, grad_face, grad_bg, grad_mask, N * HW, C);
  } else {
    blend_backward_nhwc<T, 1><<<grid_blocks(N * HW, kThreads), kThreads, 0, s>>>(
        grad, face, bg, mask, grad_face, grad_bg, grad_mask, N * HW, C);
  }
  check_launch("blend_backward_cuda");
}

#define WSC_INSTANTIATE(T)                                                                        \
  template void blend_forward_cuda<T>(const T*, const T*, const T*, T*, int64_t, int64_t, int64_t, \
                                      bool, void*);                                               \
  template void blend_backward_cuda<T>(const T*, const T*, const T*, const T*, T*, T*, T*, int64_t, \
                                       int64_t, int64_t, bool, void*);
WSC_INSTANTIATE(float)
WSC_INSTANTIATE(half_t)
WSC_INSTANTIATE(bf16_t)
#undef WSC_INSTANTIATE

}  // namespace wsc
