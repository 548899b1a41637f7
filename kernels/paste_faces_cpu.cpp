// CPU loops for paste_faces: one task per frame row that some face touches; in a row, the
// faces of that frame composite in index order over their own column range only.
#include "paste_faces.h"

#include <vector>

namespace wsc {

template <typename CropT>
void paste_faces_cpu(uint8_t* frames, int64_t B, int64_t H, int64_t W,
                     const CropT* crops, const float* masks, int64_t K, int64_t S, const float* affines,
                     const int32_t* face_boxes, const int32_t* faces_by_frame,
                     const int32_t* frame_offsets, const int32_t* frame_boxes, float crop_scale) {
  (void)K;
  // Flatten the touched rows of all frames into one task list so threads share the work evenly.
  std::vector<int64_t> row_start(B + 1, 0);
  for (int64_t b = 0; b < B; ++b)
    row_start[b + 1] = row_start[b] + (frame_boxes[4 * b + 3] - frame_boxes[4 * b + 1]);
  const int64_t tasks = row_start[B];
  // Small pastes stay on the calling thread: a parallel region costs more than it saves.
#pragma omp parallel for schedule(static) if (tasks * W >= (1 << 14))
  for (int64_t t = 0; t < tasks; ++t) {
    int64_t b = 0;
    while (row_start[b + 1] <= t) ++b;
    const int64_t y = frame_boxes[4 * b + 1] + (t - row_start[b]);
    uint8_t* row = frames + (b * H + y) * W * 3;
    for (int32_t j = frame_offsets[b]; j < frame_offsets[b + 1]; ++j) {
      const int64_t k = faces_by_frame[j];
      const int32_t* box = face_boxes + 4 * k;
      if (y < box[1] || y >= box[3]) continue;
      const CropT* crop = crops + k * 3 * S * S;
      const float* mask = masks + k * S * S;
      const float* A = affines + 6 * k;
      for (int64_t x = box[0]; x < box[2]; ++x)
        composite_pixel(row + 3 * x, crop, mask, S, A, crop_scale, x, y);
    }
  }
}

void feather_masks_cpu(const float* masks, float* out, float* scratch, int64_t K, int64_t S,
                       int feather, const float* kernel) {
  const int64_t lines = K * S;  // a line is a row (stride 1) or a column (stride S) of one mask
  // Each pass reads `src` and writes `dst`; rows: line l = (k, y), columns: line l = (k, x).
  auto pass = [&](const float* src, float* dst, bool columns, bool blur) {
#pragma omp parallel for schedule(static) if (K * S * S * (feather + 1) >= (1 << 16))
    for (int64_t l = 0; l < lines; ++l) {
      const int64_t k = l / S, r = l % S;
      const int64_t start = k * S * S + (columns ? r : r * S);
      const int64_t stride = columns ? S : 1;
      for (int64_t i = 0; i < S; ++i) {
        dst[start + i * stride] = blur ? blur_1d(src + start, stride, S, i, kernel, feather)
                                       : erode_1d(src + start, stride, S, i, feather);
      }
    }
  };
  pass(masks, scratch, false, false);
  pass(scratch, out, true, false);
  pass(out, scratch, false, true);
  pass(scratch, out, true, true);
}

#define WSC_INSTANTIATE(T)                                                                       \
  template void paste_faces_cpu<T>(uint8_t*, int64_t, int64_t, int64_t, const T*, const float*, \
                                   int64_t, int64_t, const float*, const int32_t*, const int32_t*, \
                                   const int32_t*, const int32_t*, float);
WSC_INSTANTIATE(uint8_t)
WSC_INSTANTIATE(float)
WSC_INSTANTIATE(half_t)
WSC_INSTANTIATE(bf16_t)
#undef WSC_INSTANTIATE

}  // namespace wsc
