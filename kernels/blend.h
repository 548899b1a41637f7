// Mask-guided blend: out = m*f + (1-m)*b, mask broadcast over channels.
// Per-element math shared by the CPU loops and the CUDA kernels.
#pragma once
#include "common.h"

namespace wsc {

// A is the accumulation type: float for fp32/fp16/bf16 storage, double for fp64.
template <typename A>
WSC_HD A blend_value(A f, A b, A m) { return m * f + (A(1) - m) * b; }

// Gradients of one element; grad_mask_term is summed over channels by the caller.
template <typename A>
WSC_HD void blend_grads(A g, A f, A b, A m, A& grad_face, A& grad_bg, A& grad_mask_term) {
  grad_face = g * m;
  grad_bg = g * (A(1) - m);
  grad_mask_term = g * (f - b);
}

template <typename T> struct acc_type { using type = float; };
template <> struct acc_type<double> { using type = double; };

// CPU entry points (blend_cpu.cpp). Tensors are (N, C, HW) in NCHW or NHWC order, all in
// the same order; the mask is (N, HW). Explicitly instantiated for float, double, half_t, bf16_t.
template <typename T>
void blend_forward_cpu(const T* face, const T* bg, const T* mask, T* out,
                       int64_t N, int64_t C, int64_t HW, bool channels_last);
template <typename T>
void blend_backward_cpu(const T* grad, const T* face, const T* bg, const T* mask,
                        T* grad_face, T* grad_bg, T* grad_mask,
                        int64_t N, int64_t C, int64_t HW, bool channels_last);

// CUDA entry points (blend.cu); `stream` is a cudaStream_t. T is float, half_t or bf16_t.
template <typename T>
void blend_forward_cuda(const T* face, const T* bg, const T* mask, T* out,
                        int64_t N, int64_t C, int64_t HW, bool channels_last, void* stream);
template <typename T>
void blend_backward_cuda(const T* grad, const T* face, const T* bg, const T* mask,
                         T* grad_face, T* grad_bg, T* grad_mask,
                         int64_t N, int64_t C, int64_t HW, bool channels_last, void* stream);

}  // namespace wsc
