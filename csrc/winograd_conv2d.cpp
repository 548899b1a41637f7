// Binding of the Winograd transforms: checks, then CPU or CUDA dispatch by device and dtype.
// The GEMMs between them and the buffers are ops/winograd_conv2d.py's (torch.bmm).
#include "checks.h"

#include "../kernels/winograd.h"

namespace wsc_binding {
namespace {

enum Transform { kInput, kWeight, kOutput, kGrad, kInputGrad, kWeightGrad };

wsc::WinogradShape shape_of(const std::vector<int64_t>& dims) {
  TORCH_CHECK(dims.size() == 7, "winograd: shape must be [N, H, W, C, K, pad, r]");
  const int64_t r = dims[6], pad = dims[5];
  TORCH_CHECK(r >= 2 && r <= 4, "winograd: kernel size must be 2, 3 or 4, got ", r);
  TORCH_CHECK(pad >= 0 && pad < r, "winograd: padding must be in [0, ", r, "), got ", pad);
  for (int i = 0; i < 5; ++i) TORCH_CHECK(dims[i] >= 0, "winograd: negative size in ", dims);
  const auto s = wsc::winograd_shape(dims[0], dims[1], dims[2], dims[3], dims[4], pad, static_cast<int>(r));
  TORCH_CHECK(s.Ho > 0 && s.Wo > 0, "winograd: the output would be empty (", s.Ho, "x", s.Wo, ")");
  return s;
}

// Elements of each operand of a transform, in the kernels' layouts.
int64_t input_numel(const wsc::WinogradShape& s) { return s.N * s.H * s.W * s.C; }
int64_t output_numel(const wsc::WinogradShape& s) { return s.N * s.Ho * s.Wo * s.K; }

void check_operand(const at::Tensor& t, const at::Tensor& like, int64_t numel, const char* name) {
  WSC_CHECK_TENSOR(t, like.device(), like.scalar_type());
  TORCH_CHECK(t.numel() == numel, "winograd: ", name, " must have ", numel, " elements, got ", t.numel());
  // NHWC tensors arrive as channels_last (N, C, H, W); the rest are plain contiguous buffers
  const bool dense = t.is_contiguous() || (t.dim() == 4 && t.is_contiguous(at::MemoryFormat::ChannelsLast));
  TORCH_CHECK(dense, "winograd: ", name, " must be dense (contiguous, or channels_last for images)");
}

void run(Transform which, const at::Tensor& in, const c10::optional<at::Tensor>& bias, const at::Tensor& out,
         const std::vector<int64_t>& dims, int64_t stream) {
  const auto s = shape_of(dims);
  const int64_t P = s.planes(), T = s.tiles();
  int64_t in_n = 0, out_n = 0;
  switch (which) {
    case kInput: in_n = input_numel(s); out_n = P * T * s.C; break;
    case kWeight: in_n = s.K * s.C * s.r * s.r; out_n = P * s.C * s.K; break;
    case kOutput: in_n = P * T * s.K; out_n = output_numel(s); break;
    case kGrad: in_n = output_numel(s); out_n = P * T * s.K; break;
    case kInputGrad: in_n = P * T * s.C; out_n = input_numel(s); break;
    case kWeightGrad: in_n = P * s.C * s.K; out_n = s.K * s.C * s.r * s.r; break;
  }
  TORCH_CHECK(in.scalar_type() == at::kFloat || (in.scalar_type() == at::kDouble && !in.is_cuda()),
              "winograd: dtype must be float32 (or float64 on the CPU), got ", in.scalar_type());
  check_operand(in, in, in_n, "input operand");
  check_operand(out, in, out_n, "output operand");
  if (bias) {
    TORCH_CHECK(which == kOutput, "winograd: only the output transform takes a bias");
    check_operand(*bias, in, s.K, "bias");
  }
  if (out_n == 0 || in_n == 0) return;  // an empty operand leaves an empty result
  AT_DISPATCH_FLOATING_TYPES(in.scalar_type(), "winograd", [&] {
    const scalar_t* src = in.data_ptr<scalar_t>();
    const scalar_t* b = bias ? bias->data_ptr<scalar_t>() : nullptr;
    scalar_t* dst = out.data_ptr<scalar_t>();
    if (in.is_cuda()) {
#ifdef WSC_WITH_CUDA
      if constexpr (std::is_same_v<scalar_t, float>) {
        void* st = as_stream(stream);
        switch (which) {
          case kInput: wsc::winograd_input_transform_cuda(s, src, dst, st); break;
          case kWeight: wsc::winograd_weight_transform_cuda(s, src, dst, st); break;
          case kOutput: wsc::winograd_output_transform_cuda(s, src, b, dst, st); break;
          case kGrad: wsc::winograd_grad_transform_cuda(s, src, dst, st); break;
          case kInputGrad: wsc::winograd_input_grad_transform_cuda(s, src, dst, st); break;
          case kWeightGrad: wsc::winograd_weight_grad_transform_cuda(s, src, dst, st); break;
        }
      }
#else
      TORCH_CHECK(false, "wscswap_fast._C was built without CUDA");
#endif
    } else {
      switch (which) {
        case kInput: wsc::winograd_input_transform_cpu(s, src, dst); break;
        case kWeight: wsc::winograd_weight_transform_cpu(s, src, dst); break;
        case kOutput: wsc::winograd_output_transform_cpu(s, src, b, dst); break;
        case kGrad: wsc::winograd_grad_transform_cpu(s, src, dst); break;
        case kInputGrad: wsc::winograd_input_grad_transform_cpu(s, src, dst); break;
        case kWeightGrad: wsc::winograd_weight_grad_transform_cpu(s, src, dst); break;
      }
    }
  });
}

}  // namespace

void winograd_input_transform(const at::Tensor& x, const at::Tensor& U, const std::vector<int64_t>& dims, int64_t stream) {
  run(kInput, x, c10::nullopt, U, dims, stream);
}
void winograd_weight_transform(const at::Tensor& w, const at::Tensor& V, const std::vector<int64_t>& dims, int64_t stream) {
  run(kWeight, w, c10::nullopt, V, dims, stream);
}
void winograd_output_transform(const at::Tensor& M, const c10::optional<at::Tensor>& bias, const at::Tensor& y,
                               const std::vector<int64_t>& dims, int64_t stream) {
  run(kOutput, M, bias, y, dims, stream);
}
void winograd_grad_transform(const at::Tensor& dy, const at::Tensor& Yh, const std::vector<int64_t>& dims, int64_t stream) {
  run(kGrad, dy, c10::nullopt, Yh, dims, stream);
}
void winograd_input_grad_transform(const at::Tensor& Z, const at::Tensor& dx, const std::vector<int64_t>& dims,
                                   int64_t stream) {
  run(kInputGrad, Z, c10::nullopt, dx, dims, stream);
}
void winograd_weight_grad_transform(const at::Tensor& S, const at::Tensor& dw, const std::vector<int64_t>& dims,
                                    int64_t stream) {
  run(kWeightGrad, S, c10::nullopt, dw, dims, stream);
}

}  // namespace wsc_binding
