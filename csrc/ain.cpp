// Binding of the AIN kernels: checks, then CPU or CUDA dispatch by device and dtype.
#include "checks.h"

#include "../kernels/ain.h"

namespace wsc_binding {
namespace {

// The dense (N,C,H,W) tensors, the (N,C) and (C,) ones, and the saved float statistics.
void check_ain_tensors(const at::Tensor& h, std::initializer_list<const at::Tensor*> big,
                       std::initializer_list<const at::Tensor*> per_plane, std::initializer_list<const at::Tensor*> per_channel,
                       std::initializer_list<const at::Tensor*> saved, bool channels_last) {
  const auto dev = h.device();
  const auto dt = h.scalar_type();
  const auto st = dt == at::kDouble ? at::kDouble : at::kFloat;
  const int64_t N = h.size(0), C = h.size(1), HW = h.size(2) * h.size(3);
  dense_layout(h, channels_last, "h");
  for (const at::Tensor* t : big) {
    WSC_CHECK_TENSOR(*t, dev, dt);
    dense_layout(*t, channels_last, "ain tensor");
    TORCH_CHECK(t->sizes() == h.sizes(), "ain: an (N,C,H,W) tensor differs in shape from h");
  }
  for (const at::Tensor* t : per_plane) {
    WSC_CHECK_TENSOR(*t, dev, dt);
    TORCH_CHECK(t->is_contiguous() && t->numel() == N * C, "ain: an (N,C) tensor has the wrong size");
  }
  for (const at::Tensor* t : per_channel) {
    WSC_CHECK_TENSOR(*t, dev, dt);
    TORCH_CHECK(t->is_contiguous() && t->numel() == C, "ain: a (C,) tensor has the wrong size");
  }
  for (const at::Tensor* t : saved) {
    WSC_CHECK_TENSOR(*t, dev, st);
    TORCH_CHECK(t->is_contiguous() && (t->numel() == N * C || t->numel() == N * HW),
                "ain: a saved statistics tensor has the wrong size");
  }
}

}  // namespace

void ain_forward(const at::Tensor& h, const at::Tensor& g_id, const at::Tensor& b_id, const at::Tensor& g_att,
                 const at::Tensor& b_att, const at::Tensor& w, const at::Tensor& b, const at::Tensor& out,
                 const at::Tensor& mask, const at::Tensor& mean, const at::Tensor& rstd, double eps,
                 bool channels_last, int64_t stream) {
  check_ain_tensors(h, {&g_att, &b_att, &out}, {&g_id, &b_id}, {&w}, {&mask, &mean, &rstd}, channels_last);
  WSC_CHECK_TENSOR(b, h.device(), h.scalar_type());
  TORCH_CHECK(b.numel() == 1, "ain: mask_bias must have one element");
  const int64_t N = h.size(0), C = h.size(1), HW = h.size(2) * h.size(3);
  dispatch_float(h.scalar_type(), !h.is_cuda(), [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    if (h.is_cuda()) {
#ifdef WSC_WITH_CUDA
      if constexpr (!std::is_same_v<T, double>)
        wsc::ain_forward_cuda<T>(ptr<T>(h), ptr<T>(g_id), ptr<T>(b_id), ptr<T>(g_att), ptr<T>(b_att), ptr<T>(w),
                                 ptr<T>(b), ptr<T>(out), ptr<float>(mask), ptr<float>(mean), ptr<float>(rstd), N, C,
                                 HW, eps, channels_last, as_stream(stream));
#else
      TORCH_CHECK(false, "wscswap_fast._C was built without CUDA");
#endif
    } else {
      using S = std::conditional_t<std::is_same_v<T, double>, double, float>;
      wsc::ain_forward_cpu<T, S>(ptr<T>(h), ptr<T>(g_id), ptr<T>(b_id), ptr<T>(g_att), ptr<T>(b_att), ptr<T>(w),
                                 ptr<T>(b), ptr<T>(out), ptr<S>(mask), ptr<S>(mean), ptr<S>(rstd), N, C, HW, eps,
                                 channels_last);
    }
  });
}

// grad_mask_in may be an undefined tensor (no gradient reached the returned mask).
void ain_backward(const at::Tensor& grad_out, const c10::optional<at::Tensor>& grad_mask_in, const at::Tensor& h,
                  const at::Tensor& g_id, const at::Tensor& b_id, const at::Tensor& g_att, const at::Tensor& b_att,
                  const at::Tensor& w, const at::Tensor& mask, const at::Tensor& mean, const at::Tensor& rstd,
                  const at::Tensor& grad_h, const at::Tensor& grad_g_id, const at::Tensor& grad_b_id,
                  const at::Tensor& grad_g_att, const at::Tensor& grad_b_att, const at::Tensor& grad_w,
                  const at::Tensor& grad_b, bool channels_last, int64_t stream) {
  check_ain_tensors(h, {&grad_out, &g_att, &b_att, &grad_h, &grad_g_att, &grad_b_att}, {&g_id, &b_id, &grad_g_id, &grad_b_id},
                    {&w, &grad_w}, {&mask, &mean, &rstd}, channels_last);
  WSC_CHECK_TENSOR(grad_b, h.device(), h.scalar_type());
  TORCH_CHECK(grad_b.numel() == 1, "ain: grad of mask_bias must have one element");
  const int64_t N = h.size(0), C = h.size(1), HW = h.size(2) * h.size(3);
  const bool has_gm = grad_mask_in.has_value() && grad_mask_in->defined();
  if (has_gm) {
    WSC_CHECK_TENSOR(*grad_mask_in, h.device(), h.scalar_type());
    TORCH_CHECK(grad_mask_in->is_contiguous() && grad_mask_in->numel() == N * HW, "ain: grad of the mask must be dense (N,1,H,W)");
  }
  dispatch_float(h.scalar_type(), !h.is_cuda(), [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    const T* gm = has_gm ? ptr<T>(*grad_mask_in) : nullptr;
    if (h.is_cuda()) {
#ifdef WSC_WITH_CUDA
      if constexpr (!std::is_same_v<T, double>)
        wsc::ain_backward_cuda<T>(ptr<T>(grad_out), gm, ptr<T>(h), ptr<T>(g_id), ptr<T>(b_id), ptr<T>(g_att),
                                  ptr<T>(b_att), ptr<T>(w), ptr<float>(mask), ptr<float>(mean), ptr<float>(rstd),
                                  ptr<T>(grad_h), ptr<T>(grad_g_id), ptr<T>(grad_b_id), ptr<T>(grad_g_att),
                                  ptr<T>(grad_b_att), ptr<T>(grad_w), ptr<T>(grad_b), N, C, HW, channels_last,
                                  as_stream(stream));
#else
      TORCH_CHECK(false, "wscswap_fast._C was built without CUDA");
#endif
    } else {
      using S = std::conditional_t<std::is_same_v<T, double>, double, float>;
      wsc::ain_backward_cpu<T, S>(ptr<T>(grad_out), gm, ptr<T>(h), ptr<T>(g_id), ptr<T>(b_id), ptr<T>(g_att),
                                  ptr<T>(b_att), ptr<T>(w), ptr<S>(mask), ptr<S>(mean), ptr<S>(rstd), ptr<T>(grad_h),
                                  ptr<T>(grad_g_id), ptr<T>(grad_b_id), ptr<T>(grad_g_att), ptr<T>(grad_b_att),
                                  ptr<T>(grad_w), ptr<T>(grad_b), N, C, HW, channels_last);
    }
  });
}

}  // namespace wsc_binding
