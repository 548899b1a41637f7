// pybind11 module wscswap_fast._C: the raw kernel entry points. Users call wscswap_fast.ops.
#include <torch/extension.h>

namespace wsc_binding {
void blend_forward(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, bool, int64_t);
void blend_backward(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                    const at::Tensor&, const at::Tensor&, bool, int64_t);
void paste_faces(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                 const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t, int64_t, int64_t);
void feather_masks(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t, int64_t);
void ain_forward(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                 const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                 const at::Tensor&, double, bool, int64_t);
void ain_backward(const at::Tensor&, const c10::optional<at::Tensor>&, const at::Tensor&, const at::Tensor&,
                  const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                  const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                  const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, bool, int64_t);
void rasterize_forward(const at::Tensor&, const at::Tensor&, int64_t, int64_t, const at::Tensor&, const at::Tensor&,
                       const at::Tensor&, int64_t);
void rasterize_backward(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                        const at::Tensor&, int64_t);
void photometric_forward(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                         const std::optional<at::Tensor>&, double, const at::Tensor&, const at::Tensor&,
                         const at::Tensor&, int64_t);
void photometric_backward(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                          const std::optional<at::Tensor>&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                          double, const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                          const std::optional<at::Tensor>&, int64_t);
std::vector<at::Tensor> landmark_loss_forward(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                              const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                              const at::Tensor&, double, double, double, double, int64_t, int64_t, bool,
                                              bool, int64_t);
std::vector<at::Tensor> landmark_loss_backward(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                               const c10::optional<at::Tensor>&, const at::Tensor&, const at::Tensor&,
                                               int64_t, bool, bool, int64_t);
at::Tensor landmark_loss(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                         const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, double, double,
                         double, double, int64_t, int64_t);
void winograd_input_transform(const at::Tensor&, const at::Tensor&, const std::vector<int64_t>&, int64_t);
void winograd_weight_transform(const at::Tensor&, const at::Tensor&, const std::vector<int64_t>&, int64_t);
void winograd_output_transform(const at::Tensor&, const c10::optional<at::Tensor>&, const at::Tensor&,
                               const std::vector<int64_t>&, int64_t);
void winograd_grad_transform(const at::Tensor&, const at::Tensor&, const std::vector<int64_t>&, int64_t);
void winograd_input_grad_transform(const at::Tensor&, const at::Tensor&, const std::vector<int64_t>&, int64_t);
void winograd_weight_grad_transform(const at::Tensor&, const at::Tensor&, const std::vector<int64_t>&, int64_t);
void instance_norm_act_forward(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, double,
                               double, bool, int64_t);
void instance_norm_act_backward(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                const at::Tensor&, double, bool, int64_t);
}  // namespace wsc_binding

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "wscswap_fast fused kernels (CPU always; CUDA when built with it)";
#ifdef WSC_WITH_CUDA
  m.attr("with_cuda") = true;
#else
  m.attr("with_cuda") = false;
#endif
  m.def("blend_forward", &wsc_binding::blend_forward, "face, background, mask, out, channels_last, stream");
  m.def("blend_backward", &wsc_binding::blend_backward,
        "grad, face, background, mask, grad_face, grad_background, grad_mask, channels_last, stream");
  m.def("paste_faces", &wsc_binding::paste_faces,
        "frames (in place), crops, masks, affines, face_boxes, faces_by_frame, frame_offsets, frame_boxes, "
        "max_rows, max_cols, stream");
  m.def("ain_forward", &wsc_binding::ain_forward,
        "h, gamma_id, beta_id, gamma_att, beta_att, mask_weight, mask_bias, out, mask, mean, rstd, eps, "
        "channels_last, stream");
  m.def("ain_backward", &wsc_binding::ain_backward,
        "grad_out, grad_mask (or None), h, gamma_id, beta_id, gamma_att, beta_att, mask_weight, mask, mean, rstd, "
        "grad_h, grad_gamma_id, grad_beta_id, grad_gamma_att, grad_beta_att, grad_mask_weight, grad_mask_bias, "
        "channels_last, stream");
  m.def("rasterize_forward", &wsc_binding::rasterize_forward,
        "vertices, triangles (int32), height, width, tri_id, bary, depth, stream");
  m.def("rasterize_backward", &wsc_binding::rasterize_backward,
        "grad_bary, grad_depth, vertices, triangles, tri_id, grad_vertices, stream");
  m.def("photometric_forward", &wsc_binding::photometric_forward,
        "image, vertices, triangles, colors, mask (or None), eps, tri_id, loss, weight, stream");
  m.def("photometric_backward", &wsc_binding::photometric_backward,
        "grad_loss, image, vertices, triangles, colors, mask (or None), tri_id, loss, weight, eps, grad_vertices, "
        "grad_colors, grad_image (or None), grad_mask (or None), stream");
  m.def("landmark_loss_forward", &wsc_binding::landmark_loss_forward,
        "id_coeff, exp_coeff, angles, translation, target, weights, mean, id_basis, exp_basis, focal, cx, cy, "
        "distance, norm, reduction, need_grads, need_target, stream -> [loss, point_grads (L,3,N), pose_grads (N,6), "
        "target_grads (N,L,2)] (per-sample gradients; None where not asked for)");
  m.def("landmark_loss_backward", &wsc_binding::landmark_loss_backward,
        "grad, point_grads, pose_grads, target_grads (or None), id_basis, exp_basis, reduction, need_id, need_exp, "
        "stream -> [grad_id, grad_exp, grad_angles, grad_translation, grad_target] (None where not asked for)");
  m.def("landmark_loss", &wsc_binding::landmark_loss,
        "id_coeff, exp_coeff, angles, translation, target, weights, mean, id_basis, exp_basis, focal, cx, cy, "
        "distance, norm, reduction -> loss, with a C++ autograd node (backward: landmark_loss_backward)");
  // Winograd F(4x4, rxr) transforms; shape = [N, H, W, C, K, pad, r] (see kernels/winograd.h)
  m.def("winograd_input_transform", &wsc_binding::winograd_input_transform, "x (NHWC), U (P,T,C), shape, stream");
  m.def("winograd_weight_transform", &wsc_binding::winograd_weight_transform, "w (K,C,r,r), V (P,C,K), shape, stream");
  m.def("winograd_output_transform", &wsc_binding::winograd_output_transform,
        "M (P,T,K), bias (K) or None, y (NHWC), shape, stream");
  m.def("winograd_grad_transform", &wsc_binding::winograd_grad_transform, "dy (NHWC), Yh (P,T,K), shape, stream");
  m.def("winograd_input_grad_transform", &wsc_binding::winograd_input_grad_transform,
        "Z (P,T,C), dx (NHWC, overwritten), shape, stream");
  m.def("winograd_weight_grad_transform", &wsc_binding::winograd_weight_grad_transform,
        "S (P,C,K), dw (K,C,r,r), shape, stream");
  m.def("instance_norm_act_forward", &wsc_binding::instance_norm_act_forward,
        "x, y, mean, rstd, eps, negative_slope, channels_last, stream");
  m.def("instance_norm_act_backward", &wsc_binding::instance_norm_act_backward,
        "grad, x, mean, rstd, grad_x, negative_slope, channels_last, stream");
  m.def("feather_masks", &wsc_binding::feather_masks, "masks, out, scratch, kernel, feather, stream");
}
