// Binding of the blend kernels: checks, then CPU or CUDA dispatch by device and dtype.
#include "checks.h"

#include "../kernels/blend.h"

namespace wsc_binding {

void blend_forward(const at::Tensor& face, const at::Tensor& bg, const at::Tensor& mask,
                   const at::Tensor& out, bool channels_last, int64_t stream) {
  const auto dev = face.device();
  const auto dt = face.scalar_type();
  WSC_CHECK_TENSOR(bg, dev, dt); WSC_CHECK_TENSOR(mask, dev, dt); WSC_CHECK_TENSOR(out, dev, dt);
  dense_layout(face, channels_last, "face"); dense_layout(bg, channels_last, "background");
  dense_layout(out, channels_last, "out");
  TORCH_CHECK(bg.sizes() == face.sizes() && out.sizes() == face.sizes(), "face/background/out shapes differ");
  TORCH_CHECK(mask.is_contiguous() && mask.numel() == face.size(0) * face.size(2) * face.size(3),
              "mask must be a dense (N,1,H,W) tensor");
  const int64_t N = face.size(0), C = face.size(1), HW = face.size(2) * face.size(3);
  if (face.numel() == 0) return;
  dispatch_float(dt, !face.is_cuda(), [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    if (face.is_cuda()) {
#ifdef WSC_WITH_CUDA
      if constexpr (!std::is_same_v<T, double>)
        wsc::blend_forward_cuda<T>(ptr<T>(face), ptr<T>(bg), ptr<T>(mask), ptr<T>(out), N, C, HW,
                                   channels_last, as_stream(stream));
#else
      TORCH_CHECK(false, "wscswap_fast._C was built without CUDA");
#endif
    } else {
      wsc::blend_forward_cpu<T>(ptr<T>(face), ptr<T>(bg), ptr<T>(mask), ptr<T>(out), N, C, HW, channels_last);
    }
  });
}

void blend_backward(const at::Tensor& grad, const at::Tensor& face, const at::Tensor& bg,
                    const at::Tensor& mask, const at::Tensor& grad_face, const at::Tensor& grad_bg,
                    const at::Tensor& grad_mask, bool channels_last, int64_t stream) {
  const auto dev = face.device();
  const auto dt = face.scalar_type();
  for (const at::Tensor* t : {&grad, &bg, &mask, &grad_face, &grad_bg, &grad_mask}) {
    TORCH_CHECK(t->device() == dev && t->scalar_type() == dt, "blend_backward: tensors differ in device or dtype");
  }
  for (const at::Tensor* t : {&grad, &face, &bg, &grad_face, &grad_bg}) {
    dense_layout(*t, channels_last, "blend_backward tensor");
    TORCH_CHECK(t->sizes() == face.sizes(), "blend_backward: shapes differ");
  }
  const int64_t N = face.size(0), C = face.size(1), HW = face.size(2) * face.size(3);
  for (const at::Tensor* t : {&mask, &grad_mask})
    TORCH_CHECK(t->is_contiguous() && t->numel() == N * HW, "blend_backward: mask must be dense (N,1,H,W)");
  if (face.numel() == 0) {  // C == 0: the mask gradient is an empty sum
    grad_mask.zero_();
    return;
  }
  dispatch_float(dt, !face.is_cuda(), [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    if (face.is_cuda()) {
#ifdef WSC_WITH_CUDA
      if constexpr (!std::is_same_v<T, double>)
        wsc::blend_backward_cuda<T>(ptr<T>(grad), ptr<T>(face), ptr<T>(bg), ptr<T>(mask), ptr<T>(grad_face),
                                    ptr<T>(grad_bg), ptr<T>(grad_mask), N, C, HW, channels_last,
                                    as_stream(stream));
#else
      TORCH_CHECK(false, "wscswap_fast._C was built without CUDA");
#endif
    } else {
      wsc::blend_backward_cpu<T>(ptr<T>(grad), ptr<T>(face), ptr<T>(bg), ptr<T>(mask), ptr<T>(grad_face),
                                 ptr<T>(grad_bg), ptr<T>(grad_mask), N, C, HW, channels_last);
    }
  });
}

}  // namespace wsc_binding
