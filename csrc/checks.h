// Tensor checks and dtype dispatch shared by the op bindings. The Python layer validates user
// input with friendly messages; these checks guard the raw-pointer kernels against misuse of _C.
#pragma once
#include <ATen/ATen.h>

#include "../kernels/common.h"

#define WSC_CHECK_TENSOR(t, dev, dt)                                                         \
  TORCH_CHECK((t).device() == (dev), #t " must be on ", (dev), ", got ", (t).device());      \
  TORCH_CHECK((t).scalar_type() == (dt), #t " must have dtype ", (dt), ", got ",             \
              (t).scalar_type())

namespace wsc_binding {

// Is t laid out densely in NCHW (false) or NHWC (true) order for a 4-D tensor?
inline bool dense_layout(const at::Tensor& t, bool channels_last, const char* name) {
  const auto fmt = channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  TORCH_CHECK(t.dim() == 4 && t.is_contiguous(fmt), name, " must be a dense 4-D tensor in ",
              channels_last ? "channels_last" : "contiguous", " layout");
  return channels_last;
}

// Stream handle passed down from Python (torch.cuda.current_stream().cuda_stream); 0 on CPU.
inline void* as_stream(int64_t stream) { return reinterpret_cast<void*>(static_cast<intptr_t>(stream)); }

// Call f with a null pointer of the kernel storage type matching a floating tensor dtype.
template <typename F>
void dispatch_float(at::ScalarType dt, bool allow_double, F&& f) {
  switch (dt) {
    case at::kFloat: f(static_cast<float*>(nullptr)); break;
    case at::kHalf: f(static_cast<wsc::half_t*>(nullptr)); break;
    case at::kBFloat16: f(static_cast<wsc::bf16_t*>(nullptr)); break;
    case at::kDouble:
      TORCH_CHECK(allow_double, "float64 is supported on the CPU only");
      f(static_cast<double*>(nullptr));
      break;
    default: TORCH_CHECK(false, "unsupported dtype ", dt);
  }
}

template <typename T>
T* ptr(const at::Tensor& t) { return reinterpret_cast<T*>(t.data_ptr()); }

}  // namespace wsc_binding
