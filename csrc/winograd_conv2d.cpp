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

// An image (N, C, H, W) dense in channels_last (NHWC), or a dense (K, C, r, r) weight: checked by
// element count and density.
void check_dense(const at::Tensor& t, const at::Tensor& like, int64_t numel, const char* name) {
  WSC_CHECK_TENSOR(t, like.device(), like.scalar_type());
  TORCH_CHECK(t.numel() == numel, "winograd: ", name, " must have ", numel, " elements, got ", t.numel());
  const bool dense = t.is_contiguous() || (t.dim() == 4 && t.is_contiguous(at::MemoryFormat::ChannelsLast));
  TORCH_CHECK(dense, "winograd: ", name, " must be dense (contiguous, or channels_last for images)");
}

// A (K, C, r, r) weight whose kernel positions a*r + b are evenly spaced (contiguous or
// channels_last): its strides for the kernels.
wsc::WeightStrides weight_strides(const at::Tensor& w, int r, const char* name) {
  TORCH_CHECK(w.dim() == 4 && w.size(2) == r && w.size(3) == r && (r == 1 || w.stride(2) == r * w.stride(3)),
              "winograd: ", name, " must be a (K, C, ", r, ", ", r, ") weight, contiguous or channels_last, got sizes ",
              w.sizes(), " strides ", w.strides());
  return {w.stride(0), w.stride(1), w.stride(3)};
}

// A contiguous plane-major operand (P, rows', cols), rows' >= rows (rows past `rows` are padding
// the kernels neither read nor write); returns its plane stride rows' * cols.
int64_t check_planes(const at::Tensor& t, const at::Tensor& like, int64_t P, int64_t rows, int64_t cols,
                     const char* name) {
  WSC_CHECK_TENSOR(t, like.device(), like.scalar_type());
  TORCH_CHECK(t.dim() == 3 && t.size(0) == P && t.size(1) >= rows && t.size(2) == cols, "winograd: ", name,
              " must be (", P, ", >= ", rows, ", ", cols, "), got ", t.sizes());
  TORCH_CHECK(t.is_contiguous(), "winograd: ", name, " must be contiguous");
  return t.size(1) * cols;
}

void run(Transform which, const at::Tensor& in, const c10::optional<at::Tensor>& bias, const at::Tensor& out,
         const std::vector<int64_t>& dims, int64_t stream) {
  const auto s = shape_of(dims);
  const int64_t P = s.planes(), T = s.tiles(), C = s.C, K = s.K, rr = int64_t(s.r) * s.r;
  TORCH_CHECK(in.scalar_type() == at::kFloat || (in.scalar_type() == at::kDouble && !in.is_cuda()),
              "winograd: dtype must be float32 (or float64 on the CPU), got ", in.scalar_type());
  int64_t ps = 0;
  wsc::WeightStrides ws{0, 0, 0};
  switch (which) {
    case kInput: check_dense(in, in, s.N * s.H * s.W * C, "x"); ps = check_planes(out, in, P, T, C, "U"); break;
    case kWeight:
      check_dense(in, in, rr * C * K, "w");
      ws = weight_strides(in, s.r, "w");
      ps = check_planes(out, in, P, C, K, "V");
      break;
    case kOutput: ps = check_planes(in, in, P, T, K, "M"); check_dense(out, in, s.N * s.Ho * s.Wo * K, "y"); break;
    case kGrad: check_dense(in, in, s.N * s.Ho * s.Wo * K, "dy"); ps = check_planes(out, in, P, T, K, "Yh"); break;
    case kInputGrad: ps = check_planes(in, in, P, T, C, "Z"); check_dense(out, in, s.N * s.H * s.W * C, "dx"); break;
    case kWeightGrad:
      ps = check_planes(in, in, P, C, K, "S");
      check_dense(out, in, rr * C * K, "dw");
      ws = weight_strides(out, s.r, "dw");
      break;
  }
  if (bias) {
    TORCH_CHECK(which == kOutput, "winograd: only the output transform takes a bias");
    check_dense(*bias, in, K, "bias");
  }
  if (in.numel() == 0 || out.numel() == 0) return;  // an empty operand leaves an empty result
  AT_DISPATCH_FLOATING_TYPES(in.scalar_type(), "winograd", [&] {
    const scalar_t* src = in.data_ptr<scalar_t>();
    const scalar_t* b = bias ? bias->data_ptr<scalar_t>() : nullptr;
    scalar_t* dst = out.data_ptr<scalar_t>();
    if (in.is_cuda()) {
#ifdef WSC_WITH_CUDA
      if constexpr (std::is_same_v<scalar_t, float>) {
        void* st = as_stream(stream);
        switch (which) {
          case kInput: wsc::winograd_input_transform_cuda(s, src, dst, ps, st); break;
          case kWeight: wsc::winograd_weight_transform_cuda(s, src, ws, dst, ps, st); break;
          case kOutput: wsc::winograd_output_transform_cuda(s, src, ps, b, dst, st); break;
          case kGrad: wsc::winograd_grad_transform_cuda(s, src, dst, ps, st); break;
          case kInputGrad: wsc::winograd_input_grad_transform_cuda(s, src, ps, dst, st); break;
          case kWeightGrad: wsc::winograd_weight_grad_transform_cuda(s, src, ps, dst, ws, st); break;
        }
      }
#else
      TORCH_CHECK(false, "wscswap_fast._C was built without CUDA");
#endif
    } else {
      switch (which) {
        case kInput: wsc::winograd_input_transform_cpu(s, src, dst, ps); break;
        case kWeight: wsc::winograd_weight_transform_cpu(s, src, ws, dst, ps); break;
        case kOutput: wsc::winograd_output_transform_cpu(s, src, ps, b, dst); break;
        case kGrad: wsc::winograd_grad_transform_cpu(s, src, dst, ps); break;
        case kInputGrad: wsc::winograd_input_grad_transform_cpu(s, src, ps, dst); break;
        case kWeightGrad: wsc::winograd_weight_grad_transform_cpu(s, src, ps, dst, ws); break;
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
