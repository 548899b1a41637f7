// Binding of the paste_faces and feather kernels: checks, then CPU or CUDA dispatch.
#include "checks.h"

#include "../kernels/paste_faces.h"

namespace wsc_binding {

// frames is composited in place. The plan tensors (face_boxes, faces_by_frame, frame_offsets,
// frame_boxes) come from wscswap_fast.ops.paste_faces, on the frames' device.
void paste_faces(const at::Tensor& frames, const at::Tensor& crops, const at::Tensor& masks,
                 const at::Tensor& affines, const at::Tensor& face_boxes, const at::Tensor& faces_by_frame,
                 const at::Tensor& frame_offsets, const at::Tensor& frame_boxes, int64_t max_rows,
                 int64_t max_cols, int64_t stream) {
  const auto dev = frames.device();
  TORCH_CHECK(frames.scalar_type() == at::kByte && frames.dim() == 4 && frames.size(3) == 3 &&
                  frames.is_contiguous(), "frames must be a contiguous uint8 (B,H,W,3) tensor");
  const int64_t B = frames.size(0), H = frames.size(1), W = frames.size(2);
  TORCH_CHECK(crops.device() == dev && crops.dim() == 4 && crops.size(1) == 3 &&
                  crops.size(2) == crops.size(3) && crops.is_contiguous(),
              "crops must be a contiguous (K,3,S,S) tensor on the frames' device");
  const int64_t K = crops.size(0), S = crops.size(2);
  WSC_CHECK_TENSOR(masks, dev, at::kFloat);
  WSC_CHECK_TENSOR(affines, dev, at::kFloat);
  WSC_CHECK_TENSOR(face_boxes, dev, at::kInt);
  WSC_CHECK_TENSOR(faces_by_frame, dev, at::kInt);
  WSC_CHECK_TENSOR(frame_offsets, dev, at::kInt);
  WSC_CHECK_TENSOR(frame_boxes, dev, at::kInt);
  TORCH_CHECK(masks.is_contiguous() && masks.numel() == K * S * S, "masks must be dense (K,1,S,S) float32");
  TORCH_CHECK(affines.is_contiguous() && affines.numel() == K * 6, "affines must be dense (K,2,3) float32");
  TORCH_CHECK(face_boxes.is_contiguous() && face_boxes.numel() == K * 4, "face_boxes must be (K,4)");
  TORCH_CHECK(faces_by_frame.is_contiguous() && faces_by_frame.numel() == K, "faces_by_frame must be (K,)");
  TORCH_CHECK(frame_offsets.is_contiguous() && frame_offsets.numel() == B + 1, "frame_offsets must be (B+1,)");
  TORCH_CHECK(frame_boxes.is_contiguous() && frame_boxes.numel() == B * 4, "frame_boxes must be (B,4)");
  if (K == 0 || B == 0) return;

  auto run = [&](auto* tag, float scale) {
    using T = std::remove_pointer_t<decltype(tag)>;
    if (frames.is_cuda()) {
#ifdef WSC_WITH_CUDA
      wsc::paste_faces_cuda<T>(ptr<uint8_t>(frames), B, H, W, ptr<T>(crops), ptr<float>(masks), K, S,
                               ptr<float>(affines), ptr<int32_t>(face_boxes), ptr<int32_t>(faces_by_frame),
                               ptr<int32_t>(frame_offsets), ptr<int32_t>(frame_boxes), scale, max_rows,
                               max_cols, as_stream(stream));
#else
      TORCH_CHECK(false, "wscswap_fast._C was built without CUDA");
#endif
    } else {
      wsc::paste_faces_cpu<T>(ptr<uint8_t>(frames), B, H, W, ptr<T>(crops), ptr<float>(masks), K, S,
                              ptr<float>(affines), ptr<int32_t>(face_boxes), ptr<int32_t>(faces_by_frame),
                              ptr<int32_t>(frame_offsets), ptr<int32_t>(frame_boxes), scale);
    }
  };
  if (crops.scalar_type() == at::kByte) {
    run(static_cast<uint8_t*>(nullptr), 1.f);
  } else {
    dispatch_float(crops.scalar_type(), false, [&](auto* tag) { run(tag, 255.f); });
  }
}

void feather_masks(const at::Tensor& masks, const at::Tensor& out, const at::Tensor& scratch,
                   const at::Tensor& kernel, int64_t feather, int64_t stream) {
  const auto dev = masks.device();
  for (const at::Tensor* t : {&masks, &out, &scratch, &kernel}) {
    WSC_CHECK_TENSOR(*t, dev, at::kFloat);
    TORCH_CHECK(t->is_contiguous(), "feather_masks: tensors must be contiguous");
  }
  TORCH_CHECK(masks.dim() == 4 && masks.size(1) == 1 && masks.size(2) == masks.size(3),
              "masks must be (K,1,S,S)");
  TORCH_CHECK(out.sizes() == masks.sizes() && scratch.sizes() == masks.sizes(), "feather_masks: shapes differ");
  TORCH_CHECK(feather >= 1 && kernel.numel() == 2 * feather + 1, "kernel must have 2*feather+1 taps");
  const int64_t K = masks.size(0), S = masks.size(2);
  if (K == 0) return;
  if (masks.is_cuda()) {
#ifdef WSC_WITH_CUDA
    wsc::feather_masks_cuda(ptr<float>(masks), ptr<float>(out), ptr<float>(scratch), K, S,
                            static_cast<int>(feather), ptr<float>(kernel), as_stream(stream));
#else
    TORCH_CHECK(false, "wscswap_fast._C was built without CUDA");
#endif
  } else {
    wsc::feather_masks_cpu(ptr<float>(masks), ptr<float>(out), ptr<float>(scratch), K, S,
                           static_cast<int>(feather), ptr<float>(kernel));
  }
}

}  // namespace wsc_binding
