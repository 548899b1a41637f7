// CPU loops for paste_faces: one task per frame row that some face touches; in a row, the
// faces of that frame composite in index order over their own column range only.
#include "paste_faces.h"

#include <algorithm>
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

// The same four passes as erode_1d / blur_1d in paste_faces.h (same windows, borders, tap order,
// so the same floats), arranged so every inner loop runs along a contiguous row: rows through a
// padded copy of the row, columns as weighted sums of whole rows. 1.2 ms -> see bench/NOTES.md.
void feather_masks_cpu(const float* masks, float* out, float* scratch, int64_t K, int64_t S,
                       int feather, const float* kernel) {
  constexpr float kNoSample = 3.4e38f;  // erode_1d's start value: outside samples never win the min
  const int64_t lo = feather / 2, hi = feather - 1 - feather / 2, radius = feather;
  const int64_t taps = 2 * radius + 1;
  const bool parallel = K * S * S * (feather + 1) >= (1 << 16);

  // dst row y of mask k from src along the row: erosion over [i-lo, i+hi], or the blur.
  auto row_pass = [&](const float* src, float* dst, bool blur) {
#pragma omp parallel if (parallel)
    {
      std::vector<float> pad(S + 2 * radius);
#pragma omp for schedule(static)
      for (int64_t l = 0; l < K * S; ++l) {
        const float* in = src + l * S;
        float* o = dst + l * S;
        if (blur) {
          for (int64_t i = -radius; i < S + radius; ++i) pad[i + radius] = in[reflect101(i, S)];
          std::fill(o, o + S, 0.f);
          for (int64_t t = 0; t < taps; ++t) {
            const float w = kernel[t];
            const float* p = pad.data() + t;
#pragma omp simd
            for (int64_t i = 0; i < S; ++i) o[i] += w * p[i];
          }
        } else {
          std::fill(pad.begin(), pad.end(), kNoSample);
          std::copy(in, in + S, pad.begin() + lo);
          std::fill(o, o + S, kNoSample);
          for (int64_t t = 0; t < feather; ++t) {
            const float* p = pad.data() + t;
#pragma omp simd
            for (int64_t i = 0; i < S; ++i) o[i] = p[i] < o[i] ? p[i] : o[i];
          }
        }
      }
    }
  };
  // dst row y of mask k from the rows around it.
  auto column_pass = [&](const float* src, float* dst, bool blur) {
#pragma omp parallel for schedule(static) if (parallel)
    for (int64_t l = 0; l < K * S; ++l) {
      const int64_t k = l / S, y = l % S;
      const float* plane = src + k * S * S;
      float* o = dst + l * S;
      std::fill(o, o + S, blur ? 0.f : kNoSample);
      if (blur) {
        for (int64_t t = 0; t < taps; ++t) {
          const float w = kernel[t];
          const float* p = plane + reflect101(y + t - radius, S) * S;
#pragma omp simd
          for (int64_t i = 0; i < S; ++i) o[i] += w * p[i];
        }
      } else {
        for (int64_t yy = std::max<int64_t>(0, y - lo); yy <= std::min(S - 1, y + hi); ++yy) {
          const float* p = plane + yy * S;
#pragma omp simd
          for (int64_t i = 0; i < S; ++i) o[i] = p[i] < o[i] ? p[i] : o[i];
        }
      }
    }
  };
  row_pass(masks, scratch, false);
  column_pass(scratch, out, false);
  row_pass(out, scratch, true);
  column_pass(scratch, out, true);
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
