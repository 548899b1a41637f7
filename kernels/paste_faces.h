// Paste-back of K face crops into B uint8 frames (inference). Per-pixel math shared by the CPU
// loops and the CUDA kernels.
//
// Semantics (see wscswap_fast/ops/paste_faces.py, the reference): the affine A (2x3) maps frame
// pixel coordinates to crop coordinates; frame pixel (x, y) samples crop and mask bilinearly at
// A*(x, y, 1) with zeros outside the crop (OpenCV warpAffine, WARP_INVERSE_MAP, BORDER_CONSTANT);
// out = m*crop + (1-m)*frame rounded to uint8; faces of one frame composite in index order.
#pragma once
#include "common.h"

namespace wsc {

// The four bilinear taps of a point, with zero weight (and a safe index) for taps outside the SxS crop.
struct BilinearTaps {
  int64_t idx[4];
  float w[4];
};

WSC_HD BilinearTaps bilinear_taps(float xc, float yc, int64_t S) {
  BilinearTaps t;
  const float fx0 = floorf(xc), fy0 = floorf(yc);
  const float ax = xc - fx0, ay = yc - fy0;
  const int64_t x0 = static_cast<int64_t>(fx0), y0 = static_cast<int64_t>(fy0);
  const float wx[2] = {1.f - ax, ax}, wy[2] = {1.f - ay, ay};
  for (int j = 0; j < 2; ++j) {
    for (int i = 0; i < 2; ++i) {
      const int64_t x = x0 + i, y = y0 + j;
      const bool inside = x >= 0 && x < S && y >= 0 && y < S;
      t.idx[j * 2 + i] = inside ? y * S + x : 0;
      t.w[j * 2 + i] = inside ? wx[i] * wy[j] : 0.f;
    }
  }
  return t;
}

template <typename T>
WSC_HD float sample(const T* plane, const BilinearTaps& t) {
  return t.w[0] * load(plane[t.idx[0]]) + t.w[1] * load(plane[t.idx[1]]) +
         t.w[2] * load(plane[t.idx[2]]) + t.w[3] * load(plane[t.idx[3]]);
}

// Composite face k onto one frame pixel (3 interleaved uint8 channels), in place.
// crop points at the face's (3, S, S) planes; crop_scale is 255 for float crops, 1 for uint8.
template <typename CropT>
WSC_HD void composite_pixel(uint8_t* px, const CropT* crop, const float* mask, int64_t S,
                            const float* A, float crop_scale, int64_t x, int64_t y) {
  const float xf = static_cast<float>(x), yf = static_cast<float>(y);
  const float xc = A[0] * xf + A[1] * yf + A[2];
  const float yc = A[3] * xf + A[4] * yf + A[5];
  if (!(xc > -1.f && xc < static_cast<float>(S) && yc > -1.f && yc < static_cast<float>(S))) return;
  const BilinearTaps t = bilinear_taps(xc, yc, S);
  const float m = sample(mask, t);
  if (!(m > 0.f)) return;  // m == 0 leaves the pixel exactly as it was
  const int64_t plane = S * S;
  for (int c = 0; c < 3; ++c) {
    const float v = sample(crop + c * plane, t) * crop_scale;
    px[c] = round_to_u8(m * v + (1.f - m) * static_cast<float>(px[c]));
  }
}

// OpenCV's BORDER_REFLECT_101 index (gfedcb|abcdefgh|gfedcba), for any distance outside.
WSC_HD int64_t reflect101(int64_t p, int64_t len) {
  if (len == 1) return 0;
  while (p < 0 || p >= len) p = p < 0 ? -p : 2 * len - 2 - p;
  return p;
}

// Feather of one output element, in two separable passes each way (erode rows, erode cols,
// blur rows, blur cols). The erosion window of width `feather` spans [i - feather/2,
// i + feather - 1 - feather/2] (OpenCV's centred anchor) and ignores samples outside the crop
// (OpenCV's default erode border); the blur uses reflect-101 borders.
WSC_HD float erode_1d(const float* line, int64_t stride, int64_t len, int64_t i, int feather) {
  const int64_t lo = i - feather / 2, hi = i + feather - 1 - feather / 2;
  float v = 3.4e38f;
  for (int64_t j = lo; j <= hi; ++j)
    if (j >= 0 && j < len) { const float s = line[j * stride]; v = s < v ? s : v; }
  return v;
}
WSC_HD float blur_1d(const float* line, int64_t stride, int64_t len, int64_t i,
                     const float* kernel, int radius) {
  float acc = 0.f;
  for (int j = -radius; j <= radius; ++j) acc += kernel[j + radius] * line[reflect101(i + j, len) * stride];
  return acc;
}

// CPU entry points (paste_faces_cpu.cpp).
//   frames: (B, H, W, 3) uint8, composited in place.
//   crops: (K, 3, S, S) of CropT (uint8, float, half_t or bf16_t); masks: (K, S, S) float, already feathered.
//   affines: (K, 6) float. face_boxes: (K, 4) int32 [x0, y0, x1, y1) of the pixels face k can touch.
//   faces_by_frame: (K,) int32, face indices grouped by frame in index order; frame_offsets:
//   (B+1,) int32 into it; frame_boxes: (B, 4) int32 [x0, y0, x1, y1) union of the face boxes of that frame.
//   max_rows, max_cols: the largest union box height and width over frames (CUDA grid size).
template <typename CropT>
void paste_faces_cpu(uint8_t* frames, int64_t B, int64_t H, int64_t W,
                     const CropT* crops, const float* masks, int64_t K, int64_t S, const float* affines,
                     const int32_t* face_boxes, const int32_t* faces_by_frame,
                     const int32_t* frame_offsets, const int32_t* frame_boxes, float crop_scale);

// masks, out: (K, S, S) float; scratch: (K, S, S) float. kernel: 2*feather+1 Gaussian taps.
void feather_masks_cpu(const float* masks, float* out, float* scratch, int64_t K, int64_t S,
                       int feather, const float* kernel);

// CUDA entry points (paste_faces.cu): the same arguments, all on the device; `stream` is a cudaStream_t.
template <typename CropT>
void paste_faces_cuda(uint8_t* frames, int64_t B, int64_t H, int64_t W,
                      const CropT* crops, const float* masks, int64_t K, int64_t S, const float* affines,
                      const int32_t* face_boxes, const int32_t* faces_by_frame,
                      const int32_t* frame_offsets, const int32_t* frame_boxes, float crop_scale,
                      int64_t max_rows, int64_t max_cols, void* stream);
void feather_masks_cuda(const float* masks, float* out, float* scratch, int64_t K, int64_t S,
                        int feather, const float* kernel, void* stream);

}  // namespace wsc
