// Instance norm (no affine) followed by LeakyReLU, fused: the PatchGAN discriminator's layer.
//   xhat = (x - mean) * rstd        (per (n, c) plane; biased variance, eps)
//   y    = xhat > 0 ? xhat : slope * xhat
// Backward, with gp = dy * (xhat > 0 ? 1 : slope) and plane means over the pixels:
//   dx   = rstd * (gp - mean(gp) - xhat * mean(gp * xhat))
// Per-element math shared by the CPU loops and the CUDA kernels.
#pragma once
#include "common.h"

namespace wsc {

template <typename A>
WSC_HD_INLINE A leaky(A v, A slope) {
  return v > A(0) ? v : v * slope;
}

// dy through the LeakyReLU at xhat (PyTorch's convention at 0: the negative slope).
template <typename A>
WSC_HD_INLINE A leaky_grad(A dy, A xhat, A slope) {
  return xhat > A(0) ? dy : dy * slope;
}

template <typename A>
WSC_HD_INLINE A instance_norm_input_grad(A gp, A xhat, A rstd, A mean_gp, A mean_gp_xhat) {
  return rstd * (gp - mean_gp - xhat * mean_gp_xhat);
}

// CPU entry points (instance_norm_act_cpu.cpp); T = float or double, S (saved statistics) = T.
// x, y, dy, dx are (N, C, HW) in NCHW or NHWC order; mean, rstd are (N, C).
template <typename T>
void instance_norm_act_forward_cpu(const T* x, T* y, T* mean, T* rstd, int64_t N, int64_t C, int64_t HW, double eps,
                                   double slope, bool channels_last);
template <typename T>
void instance_norm_act_backward_cpu(const T* dy, const T* x, const T* mean, const T* rstd, T* dx, int64_t N,
                                    int64_t C, int64_t HW, double slope, bool channels_last);

// CUDA entry points (instance_norm_act.cu); T = float, half_t or bf16_t with fp32 statistics
// and accumulation; `stream` is a cudaStream_t.
template <typename T>
void instance_norm_act_forward_cuda(const T* x, T* y, float* mean, float* rstd, int64_t N, int64_t C, int64_t HW,
                                    double eps, double slope, bool channels_last, void* stream);
template <typename T>
void instance_norm_act_backward_cuda(const T* dy, const T* x, const float* mean, const float* rstd, T* dx, int64_t N,
                                     int64_t C, int64_t HW, double slope, bool channels_last, void* stream);

}  // namespace wsc
