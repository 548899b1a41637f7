// CUDA kernels for paste_faces and the mask feather (per-pixel math in paste_faces.h).
//
// paste: one thread per frame pixel of a frame's union box, grid (box columns, box rows, frames).
// The thread keeps its pixel's 3 bytes in registers while the frame's faces composite in index
// order, so overlapping faces need no synchronisation, and writes them back once. Memory: the
// union boxes' pixels read and written (6 bytes each; pixels that no face box covers are not
// written) plus each face's crop and mask, read through the cache about once per face.
// feather: 4 passes over K*S*S floats (erode rows, erode columns, blur rows, blur columns), each
// reading one buffer and writing the other, one thread per output element with x fastest, so
// both the row and the column passes read and write coalesced.
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "paste_faces.h"
#include "cuda_common.cuh"

namespace wsc {
using namespace cuda_common;
namespace {

constexpr int kTileX = 32, kTileY = 8;  // a warp covers 32 consecutive pixels of a row
constexpr int64_t kMaxGridX = 2147483647, kMaxGridY = 65535, kMaxGridZ = 65535;
constexpr int kFeatherThreads = 256;

template <typename CropT>
__global__ void __launch_bounds__(kTileX * kTileY)
paste_faces_kernel(uint8_t* __restrict__ frames, int64_t B, int64_t H, int64_t W,
                   const CropT* __restrict__ crops, const float* __restrict__ masks, int64_t S,
                   const float* __restrict__ affines, const int32_t* __restrict__ face_boxes,
                   const int32_t* __restrict__ faces_by_frame, const int32_t* __restrict__ frame_offsets,
                   const int32_t* __restrict__ frame_boxes, float crop_scale) {
  for (int64_t b = blockIdx.z; b < B; b += gridDim.z) {
    const int32_t* frame_box = frame_boxes + 4 * b;
    const int64_t x = frame_box[0] + static_cast<int64_t>(blockIdx.x) * kTileX + threadIdx.x;
    if (x >= frame_box[2]) continue;
    const int32_t first = frame_offsets[b], last = frame_offsets[b + 1];
    for (int64_t y = frame_box[1] + static_cast<int64_t>(blockIdx.y) * kTileY + threadIdx.y; y < frame_box[3];
         y += static_cast<int64_t>(gridDim.y) * kTileY) {
      uint8_t* px = frames + ((b * H + y) * W + x) * 3;
      uint8_t rgb[3] = {px[0], px[1], px[2]};
      bool touched = false;
      for (int32_t j = first; j < last; ++j) {
        const int64_t k = faces_by_frame[j];
        const int32_t* box = face_boxes + 4 * k;
        if (x < box[0] || x >= box[2] || y < box[1] || y >= box[3]) continue;
        composite_pixel(rgb, crops + k * 3 * S * S, masks + k * S * S, S, affines + 6 * k, crop_scale, x, y);
        touched = true;
      }
      if (touched) {
        px[0] = rgb[0];
        px[1] = rgb[1];
        px[2] = rgb[2];
      }
    }
  }
}

// One separable feather pass over K masks of SxS: element (k, y, x) of dst from the line through
// it in src, a row (kColumns false) or a column (kColumns true).
template <bool kColumns, bool kBlur>
__global__ void __launch_bounds__(kFeatherThreads)
feather_pass(const float* __restrict__ src, float* __restrict__ dst, int64_t K, int64_t S, int feather,
             const float* __restrict__ kernel) {
  const int64_t plane = S * S, total = K * plane;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t k = e / plane, y = (e - k * plane) / S, x = e - k * plane - y * S;
    const float* line = src + k * plane + (kColumns ? x : y * S);
    const int64_t stride = kColumns ? S : 1, i = kColumns ? y : x;
    dst[e] = kBlur ? blur_1d(line, stride, S, i, kernel, feather) : erode_1d(line, stride, S, i, feather);
  }
}


int clamp_grid(int64_t blocks, int64_t limit) { return static_cast<int>(blocks < limit ? blocks : limit); }

}  // namespace

template <typename CropT>
void paste_faces_cuda(uint8_t* frames, int64_t B, int64_t H, int64_t W,
                      const CropT* crops, const float* masks, int64_t K, int64_t S, const float* affines,
                      const int32_t* face_boxes, const int32_t* faces_by_frame,
                      const int32_t* frame_offsets, const int32_t* frame_boxes, float crop_scale,
                      int64_t max_rows, int64_t max_cols, void* stream) {
  if (B == 0 || K == 0 || max_rows <= 0 || max_cols <= 0) return;
  // Columns are covered by the grid alone (grid.x allows 2^31-1 blocks); rows and frames loop.
  const dim3 grid(static_cast<unsigned>((max_cols + kTileX - 1) / kTileX),
                  clamp_grid((max_rows + kTileY - 1) / kTileY, kMaxGridY), clamp_grid(B, kMaxGridZ));
  paste_faces_kernel<CropT><<<grid, dim3(kTileX, kTileY), 0, static_cast<cudaStream_t>(stream)>>>(
      frames, B, H, W, crops, masks, S, affines, face_boxes, faces_by_frame, frame_offsets, frame_boxes,
      crop_scale);
  check_launch("paste_faces_cuda");
}

void feather_masks_cuda(const float* masks, float* out, float* scratch, int64_t K, int64_t S,
                        int feather, const float* kernel, void* stream) {
  const int64_t total = K * S * S;
  if (total == 0) return;
  const int blocks = clamp_grid((total + kFeatherThreads - 1) / kFeatherThreads, kMaxGridX);
  const auto s = static_cast<cudaStream_t>(stream);
  feather_pass<false, false><<<blocks, kFeatherThreads, 0, s>>>(masks, scratch, K, S, feather, kernel);
  feather_pass<true, false><<<blocks, kFeatherThreads, 0, s>>>(scratch, out, K, S, feather, kernel);
  feather_pass<false, true><<<blocks, kFeatherThreads, 0, s>>>(out, scratch, K, S, feather, kernel);
  feather_pass<true, true><<<blocks, kFeatherThreads, 0, s>>>(scratch, out, K, S, feather, kernel);
  check_launch("feather_masks_cuda");
}

#define WSC_INSTANTIATE(T)                                                                              \
  template void paste_faces_cuda<T>(uint8_t*, int64_t, int64_t, int64_t, const T*, const float*, int64_t, \
                                    int64_t, const float*, const int32_t*, const int32_t*, const int32_t*, \
                                    const int32_t*, float, int64_t, int64_t, void*);
WSC_INSTANTIATE(uint8_t)
WSC_INSTANTIATE(float)
WSC_INSTANTIATE(half_t)
WSC_INSTANTIATE(bf16_t)
#undef WSC_INSTANTIATE

}  // namespace wsc
