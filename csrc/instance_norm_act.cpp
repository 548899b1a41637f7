// Binding of the instance_norm_act kernels: checks, then CPU or CUDA dispatch by device and dtype.
#include "checks.h"

#include "../kernels/instance_norm_act.h"

namespace wsc_binding {
namespace {

// The statistics' dtype: the input's on the CPU (float or double), fp32 on CUDA.
void check_stats(const at::Tensor& t, const at::Tensor& x, const char* name) {
  const auto want = x.is_cuda() ? at::kFloat : x.scalar_type();
  WSC_CHECK_TENSOR(t, x.device(), want);
  TORCH_CHECK(t.is_contiguous() && t.numel() == x.size(0) * x.size(1), name, " must be a dense (N, C) tensor");
}

}  // namespace

void instance_norm_act_forward(const at::Tensor& x, const at::Tensor& y, const at::Tensor& mean,
                               const at::Tensor& rstd, double eps, double slope, bool channels_last, int64_t stream) {
  const auto dev = x.device();
  const auto dt = x.scalar_type();
  WSC_CHECK_TENSOR(y, dev, dt);
  dense_layout(x, channels_last, "x");
  dense_layout(y, channels_last, "y");
  TORCH_CHECK(y.sizes() == x.sizes(), "instance_norm_act: x and y shapes differ");
  check_stats(mean, x, "mean");
  check_stats(rstd, x, "rstd");
  const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3);
  if (x.numel() == 0) return;
  dispatch_float(dt, !x.is_cuda(), [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    if (x.is_cuda()) {
#ifdef WSC_WITH_CUDA
      if constexpr (!std::is_same_v<T, double>)
        wsc::instance_norm_act_forward_cuda<T>(ptr<T>(x), ptr<T>(y), ptr<float>(mean), ptr<float>(rstd), N, C, HW,
                                               eps, slope, channels_last, as_stream(stream));
#else
      TORCH_CHECK(false, "wscswap_fast._C was built without CUDA");
#endif
    } else if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>) {
      wsc::instance_norm_act_forward_cpu<T>(ptr<T>(x), ptr<T>(y), ptr<T>(mean), ptr<T>(rstd), N, C, HW, eps, slope,
                                            channels_last);
    } else {
      TORCH_CHECK(false, "instance_norm_act: the CPU kernels take float32 or float64, got ", dt);
    }
  });
}

void instance_norm_act_backward(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& mean,
                                const at::Tensor& rstd, const at::Tensor& dx, double slope, bool channels_last,
                                int64_t stream) {
  const auto dev = x.device();
  const auto dt = x.scalar_type();
  WSC_CHECK_TENSOR(dy, dev, dt);
  WSC_CHECK_TENSOR(dx, dev, dt);
  for (const at::Tensor* t : {&dy, &x, &dx}) {
    dense_layout(*t, channels_last, "instance_norm_act_backward tensor");
    TORCH_CHECK(t->sizes() == x.sizes(), "instance_norm_act_backward: shapes differ");
  }
  check_stats(mean, x, "mean");
  check_stats(rstd, x, "rstd");
  const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3);
  if (x.numel() == 0) return;
  dispatch_float(dt, !x.is_cuda(), [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    if (x.is_cuda()) {
#ifdef WSC_WITH_CUDA
      if constexpr (!std::is_same_v<T, double>)
        wsc::instance_norm_act_backward_cuda<T>(ptr<T>(dy), ptr<T>(x), ptr<float>(mean), ptr<float>(rstd), ptr<T>(dx),
                                                N, C, HW, slope, channels_last, as_stream(stream));
#else
      TORCH_CHECK(false, "wscswap_fast._C was built without CUDA");
#endif
    } else if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>) {
      wsc::instance_norm_act_backward_cpu<T>(ptr<T>(dy), ptr<T>(x), ptr<T>(mean), ptr<T>(rstd), ptr<T>(dx), N, C, HW,
                                             slope, channels_last);
    } else {
      TORCH_CHECK(false, "instance_norm_act: the CPU kernels take float32 or float64, got ", dt);
    }
  });
}

}  // namespace wsc_binding
