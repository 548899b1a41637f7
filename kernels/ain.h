// Attribute-injection normalization (AIN), the generator's decoder layer:
//   hn  = (h - mean) * rstd                       per (n, c) over H*W, biased variance
//   m   = sigmoid(sum_c w[c] * hn[c] + b)          one value per pixel
//   out = (1 - m) * (g_att*hn + b_att) + m * (g_id*hn + b_id)
// Per-element math shared by the CPU loops and the CUDA kernels.
//
// Backward, with g = dL/dout and gm = dL/dm from outside (return_mask), per pixel:
//   dz   = (sum_c g * (id - att) + gm) * m * (1 - m)            id/att: the two modulations
//   dhn  = g * ((1 - m) * g_att + m * g_id) + dz * w[c]
//   dh   = rstd * (dhn - mean_p(dhn) - hn * mean_p(dhn * hn))    instance-norm backward
//   dg_att = g*(1-m)*hn, db_att = g*(1-m);  dg_id = sum_p g*m*hn, db_id = sum_p g*m
//   dw[c] = sum_{n,p} dz * hn[c],  db = sum_{n,p} dz
#pragma once
#include "common.h"

namespace wsc {

template <typename A>
WSC_HD A sigmoid(A z) { return A(1) / (A(1) + exp(-z)); }

template <typename A>
WSC_HD A ain_value(A hn, A m, A g_att, A b_att, A g_id, A b_id) {
  return (A(1) - m) * (g_att * hn + b_att) + m * (g_id * hn + b_id);
}

// This element's share of dL/dm (before the sigmoid).
template <typename A>
WSC_HD A ain_mask_grad_term(A g, A hn, A g_att, A b_att, A g_id, A b_id) {
  return g * ((g_id * hn + b_id) - (g_att * hn + b_att));
}

// dL/dz of the mask logit from dL/dm.
template <typename A>
WSC_HD A ain_logit_grad(A mask_grad, A m) { return mask_grad * m * (A(1) - m); }

// dL/dhn of one element.
template <typename A>
WSC_HD A ain_hn_grad(A g, A m, A g_att, A g_id, A dz, A w) {
  return g * ((A(1) - m) * g_att + m * g_id) + dz * w;
}

// dL/dh from dL/dhn and the plane's means of dhn and dhn*hn (instance norm's backward).
template <typename A>
WSC_HD A ain_input_grad(A dhn, A hn, A rstd, A mean_dhn, A mean_dhn_hn) {
  return rstd * (dhn - mean_dhn - hn * mean_dhn_hn);
}

// CPU entry points (ain_cpu.cpp); T in float, double, half_t, bf16_t; S (saved statistics and
// mask, and the per-channel/pixel scratch) is double for T = double, else float.
// Layout: h, g_att, b_att, out (and their gradients) are (N, C, HW) in NCHW or NHWC order;
// g_id, b_id are (N, C); w is (C,); b is (1,); mask is (N, HW).
template <typename T, typename S>
void ain_forward_cpu(const T* h, const T* g_id, const T* b_id, const T* g_att, const T* b_att, const T* w,
                     const T* b, T* out, S* mask, S* mean, S* rstd, int64_t N, int64_t C, int64_t HW,
                     double eps, bool channels_last);
// grad_mask_in may be null (no gradient reached the returned mask).
template <typename T, typename S>
void ain_backward_cpu(const T* grad_out, const T* grad_mask_in, const T* h, const T* g_id, const T* b_id,
                      const T* g_att, const T* b_att, const T* w, const S* mask, const S* mean, const S* rstd,
                      T* grad_h, T* grad_g_id, T* grad_b_id, T* grad_g_att, T* grad_b_att, T* grad_w, T* grad_b,
                      int64_t N, int64_t C, int64_t HW, bool channels_last);

// CUDA entry points (ain.cu): the same arguments, T in float, half_t, bf16_t, S = float.
template <typename T>
void ain_forward_cuda(const T* h, const T* g_id, const T* b_id, const T* g_att, const T* b_att, const T* w,
                      const T* b, T* out, float* mask, float* mean, float* rstd, int64_t N, int64_t C, int64_t HW,
                      double eps, bool channels_last, void* stream);
template <typename T>
void ain_backward_cuda(const T* grad_out, const T* grad_mask_in, const T* h, const T* g_id, const T* b_id,
                       const T* g_att, const T* b_att, const T* w, const float* mask, const float* mean,
                       const float* rstd, T* grad_h, T* grad_g_id, T* grad_b_id, T* grad_g_att, T* grad_b_att,
                       T* grad_w, T* grad_b, int64_t N, int64_t C, int64_t HW, bool channels_last, void* stream);

}  // namespace wsc
