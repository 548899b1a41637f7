// Binding of the landmark_loss kernels: checks, output allocation, CPU or CUDA dispatch by device
// and dtype. Inputs may arrive non-contiguous (views); they are made dense here, where it is cheap.
// landmark_loss() wraps forward and backward in a C++ autograd node, so that an eager training
// step reaches the backward kernel without a Python frame (see wscswap_fast/ops/landmark_loss.py).
// The forward kernel computes each sample's gradients while it has the landmarks at hand; the
// backward multiplies them by the incoming gradient (basis^T dloss/dp for the coefficients).
#include "checks.h"

#include <c10/core/DeviceGuard.h>
#include <torch/autograd.h>
#ifdef WSC_WITH_CUDA
#include <c10/cuda/CUDAStream.h>
#endif

#include "../kernels/landmark_loss.h"

namespace wsc_binding {
namespace {

// Inputs shared by forward and backward, dense, checked against one another.
struct LandmarkInputs {
  at::Tensor angles, translation, target, weights, id_basis, exp_basis;
  wsc::LandmarkLossDims dims;
};

// t itself when already dense (the usual case: no dispatcher round trip), else a dense copy.
at::Tensor dense(const at::Tensor& t) { return t.is_contiguous() ? t : t.contiguous(); }

void check_shape(const at::Tensor& t, at::IntArrayRef expected, const char* name) {
  TORCH_CHECK(t.sizes() == expected, "landmark_loss: ", name, " must have shape ", expected, ", got ", t.sizes());
}

LandmarkInputs check_common(int64_t N, const at::Tensor& angles, const at::Tensor& translation,
                            const at::Tensor& target, const at::Tensor& weights, const at::Tensor& id_basis,
                            const at::Tensor& exp_basis, const at::Device dev, const at::ScalarType dt) {
  WSC_CHECK_TENSOR(angles, dev, dt); WSC_CHECK_TENSOR(translation, dev, dt); WSC_CHECK_TENSOR(target, dev, dt);
  WSC_CHECK_TENSOR(weights, dev, dt); WSC_CHECK_TENSOR(id_basis, dev, dt); WSC_CHECK_TENSOR(exp_basis, dev, dt);
  TORCH_CHECK(id_basis.dim() == 3 && exp_basis.dim() == 3, "landmark_loss: the bases must be (L,3,K)");
  const int64_t L = id_basis.size(0);
  LandmarkInputs in;
  in.dims = wsc::LandmarkLossDims{N, L, id_basis.size(2), exp_basis.size(2), weights.dim() == 2};
  check_shape(id_basis, {L, 3, in.dims.K_id}, "id_basis");
  check_shape(exp_basis, {L, 3, in.dims.K_exp}, "exp_basis");
  check_shape(angles, {N, 3}, "angles");
  check_shape(translation, {N, 3}, "translation");
  check_shape(target, {N, L, 2}, "target");
  if (in.dims.per_sample_weights) check_shape(weights, {N, L}, "weights");
  else check_shape(weights, {L}, "weights");
  in.angles = dense(angles); in.translation = dense(translation); in.target = dense(target);
  in.weights = dense(weights); in.id_basis = dense(id_basis); in.exp_basis = dense(exp_basis);
  return in;
}

int check_norm(int64_t norm) {
  TORCH_CHECK(norm == wsc::kLandmarkL2 || norm == wsc::kLandmarkL1, "landmark_loss: unknown norm code ", norm);
  return static_cast<int>(norm);
}
int check_reduction(int64_t reduction) {
  TORCH_CHECK(reduction == wsc::kReduceNone || reduction == wsc::kReduceMean || reduction == wsc::kReduceSum,
              "landmark_loss: unknown reduction code ", reduction);
  return static_cast<int>(reduction);
}

template <typename T>
T* maybe_ptr(const at::Tensor& t) { return t.defined() ? ptr<T>(t) : nullptr; }

template <typename F>
void dispatch(const at::Tensor& t, F&& f) {
  if (t.scalar_type() == at::kFloat) f(static_cast<float*>(nullptr));
  else if (t.scalar_type() == at::kDouble && !t.is_cuda()) f(static_cast<double*>(nullptr));
  else TORCH_CHECK(false, "landmark_loss: unsupported dtype ", t.scalar_type(), " on ", t.device(),
                   " (float32; float64 on the CPU)");
}

}  // namespace

// Returns [loss, point_grads, pose_grads, target_grads]: loss is (N,) for reduction none, else a
// scalar. With need_grads, the gradients of each sample's loss, all the backward needs:
// point_grads (L,3,N) dloss_n/dp, pose_grads (N,6), and with need_target target_grads (N,L,2);
// the others are undefined tensors (None in Python).
std::vector<at::Tensor> landmark_loss_forward(const at::Tensor& id_coeff, const at::Tensor& exp_coeff,
                                              const at::Tensor& angles, const at::Tensor& translation,
                                              const at::Tensor& target, const at::Tensor& weights,
                                              const at::Tensor& mean, const at::Tensor& id_basis,
                                              const at::Tensor& exp_basis, double focal, double cx, double cy,
                                              double distance, int64_t norm, int64_t reduction, bool need_grads,
                                              bool need_target, int64_t stream) {
  const at::OptionalDeviceGuard device_guard(id_coeff.device());  // kernels launch on the current GPU
  const auto dev = id_coeff.device();
  const auto dt = id_coeff.scalar_type();
  WSC_CHECK_TENSOR(exp_coeff, dev, dt); WSC_CHECK_TENSOR(mean, dev, dt);
  TORCH_CHECK(id_coeff.dim() == 2, "landmark_loss: id_coeff must be (N,K_id)");
  const int64_t N = id_coeff.size(0);
  LandmarkInputs in = check_common(N, angles, translation, target, weights, id_basis, exp_basis, dev, dt);
  const auto& d = in.dims;
  check_shape(id_coeff, {N, d.K_id}, "id_coeff");
  check_shape(exp_coeff, {N, d.K_exp}, "exp_coeff");
  check_shape(mean, {d.L, 3}, "mean");
  const int norm_code = check_norm(norm), reduction_code = check_reduction(reduction);
  TORCH_CHECK(need_grads || !need_target, "landmark_loss: need_target needs need_grads");
  const at::Tensor a = dense(id_coeff), e = dense(exp_coeff), m = dense(mean);

  const auto opts = id_coeff.options();
  at::Tensor per_sample = at::empty({N}, opts);
  at::Tensor loss = reduction_code == wsc::kReduceNone ? per_sample : at::empty({}, opts);
  at::Tensor point_grads = need_grads ? at::empty({d.L, 3, N}, opts) : at::Tensor();
  at::Tensor pose_grads = need_grads ? at::empty({N, 6}, opts) : at::Tensor();
  at::Tensor target_grads = need_target ? at::empty({N, d.L, 2}, opts) : at::Tensor();
  const wsc::LandmarkCamera cam{focal, cx, cy, distance};
  dispatch(id_coeff, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    T* pg = maybe_ptr<T>(point_grads);
    T* pose = maybe_ptr<T>(pose_grads);
    T* tg = maybe_ptr<T>(target_grads);
    if (id_coeff.is_cuda()) {
#ifdef WSC_WITH_CUDA
      if constexpr (std::is_same_v<T, float>)
        wsc::landmark_loss_forward_cuda<T>(d, cam, norm_code, reduction_code, ptr<T>(a), ptr<T>(e), ptr<T>(in.angles),
                                           ptr<T>(in.translation), ptr<T>(in.target), ptr<T>(in.weights), ptr<T>(m),
                                           ptr<T>(in.id_basis), ptr<T>(in.exp_basis), ptr<T>(per_sample),
                                           ptr<T>(loss), pg, pose, tg, as_stream(stream));
#else
      TORCH_CHECK(false, "wscswap_fast._C was built without CUDA");
#endif
    } else {
      wsc::landmark_loss_forward_cpu<T>(d, cam, norm_code, reduction_code, ptr<T>(a), ptr<T>(e), ptr<T>(in.angles),
                                        ptr<T>(in.translation), ptr<T>(in.target), ptr<T>(in.weights), ptr<T>(m),
                                        ptr<T>(in.id_basis), ptr<T>(in.exp_basis), ptr<T>(per_sample), ptr<T>(loss),
                                        pg, pose, tg);
    }
  });
  return {loss, point_grads, pose_grads, target_grads};
}

// Returns [grad_id, grad_exp, grad_angles, grad_translation, grad_target] from the forward's
// per-sample gradients and the incoming gradient; grad_id / grad_exp are undefined (None) unless
// asked for, grad_target unless target_grads is given.
std::vector<at::Tensor> landmark_loss_backward(const at::Tensor& grad, const at::Tensor& point_grads,
                                               const at::Tensor& pose_grads, const c10::optional<at::Tensor>& target_grads,
                                               const at::Tensor& id_basis, const at::Tensor& exp_basis,
                                               int64_t reduction, bool need_id, bool need_exp, int64_t stream) {
  const at::OptionalDeviceGuard device_guard(pose_grads.device());
  const auto dev = pose_grads.device();
  const auto dt = pose_grads.scalar_type();
  WSC_CHECK_TENSOR(grad, dev, dt); WSC_CHECK_TENSOR(point_grads, dev, dt);
  WSC_CHECK_TENSOR(id_basis, dev, dt); WSC_CHECK_TENSOR(exp_basis, dev, dt);
  TORCH_CHECK(pose_grads.dim() == 2 && pose_grads.size(1) == 6, "landmark_loss_backward: pose_grads must be (N,6)");
  TORCH_CHECK(id_basis.dim() == 3 && exp_basis.dim() == 3, "landmark_loss_backward: the bases must be (L,3,K)");
  const int64_t N = pose_grads.size(0), L = id_basis.size(0);
  const wsc::LandmarkLossDims d{N, L, id_basis.size(2), exp_basis.size(2), false};
  check_shape(id_basis, {L, 3, d.K_id}, "id_basis");
  check_shape(exp_basis, {L, 3, d.K_exp}, "exp_basis");
  check_shape(point_grads, {L, 3, N}, "point_grads");
  const bool has_target = target_grads.has_value() && target_grads->defined();
  if (has_target) {
    WSC_CHECK_TENSOR((*target_grads), dev, dt);
    check_shape(*target_grads, {N, L, 2}, "target_grads");
  }
  const int reduction_code = check_reduction(reduction);
  if (reduction_code == wsc::kReduceNone) check_shape(grad, {N}, "grad");
  else TORCH_CHECK(grad.numel() == 1, "landmark_loss_backward: grad must be a scalar, got ", grad.sizes());
  const at::Tensor g = dense(grad), pg = dense(point_grads), pose = dense(pose_grads);
  const at::Tensor tg = has_target ? dense(*target_grads) : at::Tensor();
  const at::Tensor bi = dense(id_basis), be = dense(exp_basis);

  const auto opts = pose_grads.options();
  at::Tensor grad_id = need_id ? at::empty({N, d.K_id}, opts) : at::Tensor();
  at::Tensor grad_exp = need_exp ? at::empty({N, d.K_exp}, opts) : at::Tensor();
  at::Tensor grad_angles = at::empty({N, 3}, opts), grad_translation = at::empty({N, 3}, opts);
  at::Tensor grad_target = has_target ? at::empty({N, L, 2}, opts) : at::Tensor();
  dispatch(pose_grads, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    if (pose_grads.is_cuda()) {
#ifdef WSC_WITH_CUDA
      if constexpr (std::is_same_v<T, float>)
        wsc::landmark_loss_backward_cuda<T>(d, reduction_code, ptr<T>(g), ptr<T>(pg), ptr<T>(pose), maybe_ptr<T>(tg),
                                            ptr<T>(bi), ptr<T>(be), maybe_ptr<T>(grad_id), maybe_ptr<T>(grad_exp),
                                            ptr<T>(grad_angles), ptr<T>(grad_translation), maybe_ptr<T>(grad_target),
                                            as_stream(stream));
#else
      TORCH_CHECK(false, "wscswap_fast._C was built without CUDA");
#endif
    } else {
      wsc::landmark_loss_backward_cpu<T>(d, reduction_code, ptr<T>(g), ptr<T>(pg), ptr<T>(pose), maybe_ptr<T>(tg),
                                         ptr<T>(bi), ptr<T>(be), maybe_ptr<T>(grad_id), maybe_ptr<T>(grad_exp),
                                         ptr<T>(grad_angles), ptr<T>(grad_translation), maybe_ptr<T>(grad_target));
    }
  });
  return {grad_id, grad_exp, grad_angles, grad_translation, grad_target};
}

namespace {

int64_t current_stream(const at::Tensor& t) {
#ifdef WSC_WITH_CUDA
  if (t.is_cuda()) return reinterpret_cast<int64_t>(c10::cuda::getCurrentCUDAStream(t.device().index()).stream());
#endif
  (void)t;
  return 0;
}

class LandmarkLossFunction : public torch::autograd::Function<LandmarkLossFunction> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& id_coeff,
                            const at::Tensor& exp_coeff, const at::Tensor& angles, const at::Tensor& translation,
                            const at::Tensor& target, const at::Tensor& weights, const at::Tensor& mean,
                            const at::Tensor& id_basis, const at::Tensor& exp_basis, double focal, double cx, double cy,
                            double distance, int64_t norm, int64_t reduction, bool need_grads, bool need_target) {
    std::vector<at::Tensor> out = landmark_loss_forward(id_coeff, exp_coeff, angles, translation, target, weights,
                                                        mean, id_basis, exp_basis, focal, cx, cy, distance, norm,
                                                        reduction, need_grads, need_target, current_stream(id_coeff));
    // The per-sample gradients and the bases; nothing else.
    ctx->save_for_backward({out[1], out[2], out[3], id_basis, exp_basis});
    ctx->saved_data["reduction"] = reduction;
    return out[0];
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    torch::autograd::variable_list result(17);  // one per input of forward; undefined: no gradient
    if (!grads[0].defined()) return result;
    const auto saved = ctx->get_saved_variables();
    std::vector<at::Tensor> g = landmark_loss_backward(
        grads[0], saved[0], saved[1], saved[2], saved[3], saved[4], ctx->saved_data["reduction"].toInt(),
        ctx->needs_input_grad(0), ctx->needs_input_grad(1), current_stream(saved[1]));
    for (size_t i = 0; i < g.size(); ++i) result[i] = g[i];
    return result;
  }
};

}  // namespace

// The loss, differentiable in id_coeff, exp_coeff, angles, translation and target (an autograd node
// whose backward calls landmark_loss_backward).
at::Tensor landmark_loss(const at::Tensor& id_coeff, const at::Tensor& exp_coeff, const at::Tensor& angles,
                         const at::Tensor& translation, const at::Tensor& target, const at::Tensor& weights,
                         const at::Tensor& mean, const at::Tensor& id_basis, const at::Tensor& exp_basis, double focal,
                         double cx, double cy, double distance, int64_t norm, int64_t reduction) {
  // The forward kernel computes each sample's gradients only when a backward will want them.
  const bool grad_mode = at::GradMode::is_enabled();
  const bool need_target = grad_mode && target.requires_grad();
  const bool need_grads = need_target || (grad_mode && (id_coeff.requires_grad() || exp_coeff.requires_grad() ||
                                                        angles.requires_grad() || translation.requires_grad()));
  return LandmarkLossFunction::apply(id_coeff, exp_coeff, angles, translation, target, weights, mean, id_basis,
                                     exp_basis, focal, cx, cy, distance, norm, reduction, need_grads, need_target);
}

}  // namespace wsc_binding
