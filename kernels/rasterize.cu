// CUDA rasterizer and photometric loss (math in rasterize.h), tile-binned:
//   1. setup_count: one thread per (sample, triangle) sets the triangle up (RasterTriangle<float>,
//      144 bytes) and counts the 16x16 tiles its bounding box overlaps (atomics on N*tiles ints).
//   2. exclusive_scan: one block turns the counts into bin offsets; the host reads the total once.
//   3. fill: the same threads write their index into each bin (atomic cursor, so the order inside
//      a bin is arbitrary: the z-test breaks depth ties by triangle index, which makes the result
//      independent of it).
//   4. raster: one block of 256 threads per (sample, tile), one pixel per thread, the pixel's
//      z-buffer entry in registers; the bin's triangles are staged through shared memory 256 at a
//      time (36.9 KB) and every thread tests its pixel against each of them.
//      The photometric variant shades the winning pixel, reduces the tile's loss sums in the block
//      and writes them per tile; a second kernel sums the tiles of each sample in a fixed order.
//   Backward: one thread per pixel recomputes the barycentrics of its triangle and adds the
//   gradients of its three vertices (and colours) with atomics.
#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "rasterize.h"
#include "cuda_common.cuh"

namespace wsc {
using namespace cuda_common;
namespace {

using Tri = RasterTriangle<float>;
constexpr int kThreads = 256;
constexpr int kScanThreads = 1024;
static_assert(kRasterTilePixels == kThreads, "one thread per tile pixel");


__host__ __device__ __forceinline__ int64_t tiles_along(int64_t pixels) {
  return (pixels + kRasterTile - 1) / kRasterTile;
}



__global__ void __launch_bounds__(kThreads)
setup_count_kernel(const float* __restrict__ vertices, const int32_t* __restrict__ triangles, int64_t N, int64_t V,
                   int64_t F, int64_t H, int64_t W, Tri* __restrict__ setups, int32_t* __restrict__ counts) {
  const int64_t tiles_x = tiles_along(W), tiles = tiles_x * tiles_along(H);
  for (int64_t i = global_thread(); i < N * F; i += grid_threads()) {
    const int64_t n = i / F, f = i - n * F;
    const float* verts = vertices + n * V * 3;
    const float* v[3] = {verts + 3 * int64_t(triangles[3 * f]), verts + 3 * int64_t(triangles[3 * f + 1]),
                         verts + 3 * int64_t(triangles[3 * f + 2])};
    Tri t;
    if (!setup_triangle<float>(v, static_cast<int32_t>(f), H, W, t)) {
      setups[i].x0 = 1;  // empty range: binned nowhere
      setups[i].x1 = 0;
      continue;
    }
    setups[i] = t;
    for (int64_t ty = t.y0 / kRasterTile; ty <= t.y1 / kRasterTile; ++ty)
      for (int64_t tx = t.x0 / kRasterTile; tx <= t.x1 / kRasterTile; ++tx)
        atomicAdd(counts + n * tiles + ty * tiles_x + tx, 1);
  }
}

// Exclusive prefix sum of counts[0..n) into offsets[0..n], offsets[n] = total; one block.
__global__ void __launch_bounds__(kScanThreads)
exclusive_scan_kernel(const int32_t* __restrict__ counts, int64_t n, int64_t* __restrict__ offsets) {
  __shared__ long long warp_sums[kScanThreads / 32];
  __shared__ long long carry;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (threadIdx.x == 0) carry = 0;
  __syncthreads();
  for (int64_t base = 0; base < n; base += kScanThreads) {
    const int64_t i = base + threadIdx.x;
    const long long value = i < n ? counts[i] : 0;
    long long x = value;
#pragma unroll
    for (int d = 1; d < 32; d <<= 1) {
      const long long y = __shfl_up_sync(0xffffffffu, x, d);
      if (lane >= d) x += y;
    }
    if (lane == 31) warp_sums[warp] = x;
    __syncthreads();
    if (warp == 0) {
      long long w = warp_sums[lane];
#pragma unroll
      for (int d = 1; d < 32; d <<= 1) {
        const long long y = __shfl_up_sync(0xffffffffu, w, d);
        if (lane >= d) w += y;
      }
      warp_sums[lane] = w;
    }
    __syncthreads();
    const long long inclusive = x + (warp > 0 ? warp_sums[warp - 1] : 0) + carry;
    if (i < n) offsets[i] = inclusive - value;
    __syncthreads();  // every thread has read carry
    if (threadIdx.x == kScanThreads - 1) carry = inclusive;
    __syncthreads();
  }
  if (threadIdx.x == 0) offsets[n] = carry;
}

__global__ void __launch_bounds__(kThreads)
fill_kernel(const Tri* __restrict__ setups, const int64_t* __restrict__ offsets, int64_t N, int64_t F, int64_t H,
            int64_t W, int32_t* __restrict__ cursor, int32_t* __restrict__ entries) {
  const int64_t tiles_x = tiles_along(W), tiles = tiles_x * tiles_along(H);
  for (int64_t i = global_thread(); i < N * F; i += grid_threads()) {
    const int32_t x0 = setups[i].x0, x1 = setups[i].x1, y0 = setups[i].y0, y1 = setups[i].y1;
    if (x0 > x1) continue;
    const int64_t n = i / F, f = i - n * F;
    for (int64_t ty = y0 / kRasterTile; ty <= y1 / kRasterTile; ++ty) {
      for (int64_t tx = x0 / kRasterTile; tx <= x1 / kRasterTile; ++tx) {
        const int64_t bin = n * tiles + ty * tiles_x + tx;
        entries[offsets[bin] + atomicAdd(cursor + bin, 1)] = static_cast<int32_t>(f);
      }
    }
  }
}

struct Hit {
  float depth, b1, b2;
  int32_t id;  // triangle index, -1 for none
};

struct TilePixel {
  int64_t n, x, y;
  bool inside;  // in the image (edge tiles have threads past the border)
};

__device__ __forceinline__ TilePixel tile_pixel(int64_t H, int64_t W) {
  const int64_t tiles_x = tiles_along(W), tiles = tiles_x * tiles_along(H);
  const int64_t bin = blockIdx.x, n = bin / tiles, tile = bin - n * tiles;
  TilePixel p;
  p.n = n;
  p.x = (tile % tiles_x) * kRasterTile + threadIdx.x % kRasterTile;
  p.y = (tile / tiles_x) * kRasterTile + threadIdx.x / kRasterTile;
  p.inside = p.x < W && p.y < H;
  return p;
}

// The z-buffer of this thread's pixel over the block's bin. Every thread of the block must call it.
__device__ Hit raster_pixel(const Tri* __restrict__ setups, const int64_t* __restrict__ offsets,
                            const int32_t* __restrict__ entries, int64_t F, const TilePixel& p, Tri* staged) {
  Hit hit{__int_as_float(0x7f800000), 0.f, 0.f, -1};  // depth +inf
  const int64_t begin = offsets[blockIdx.x], end = offsets[blockIdx.x + 1];
  const float px = static_cast<float>(p.x) + 0.5f, py = static_cast<float>(p.y) + 0.5f;
  for (int64_t chunk = begin; chunk < end; chunk += kThreads) {
    const int count = static_cast<int>(end - chunk < kThreads ? end - chunk : kThreads);
    __syncthreads();  // the previous chunk is consumed
    if (static_cast<int>(threadIdx.x) < count) staged[threadIdx.x] = setups[p.n * F + entries[chunk + threadIdx.x]];
    __syncthreads();
    if (!p.inside) continue;
    for (int i = 0; i < count; ++i) {
      const Tri& t = staged[i];
      if (p.x < t.x0 || p.x > t.x1 || p.y < t.y0 || p.y > t.y1 || !covers(t, p.x, p.y)) continue;
      float b[3];
      barycentrics<float>(t.vx, t.vy, t.coef, px, py, b);
      const float z = interpolate<float>(b, t.vz);
      if (z < hit.depth || (z == hit.depth && t.id < hit.id)) hit = Hit{z, b[1], b[2], t.id};
    }
  }
  return hit;
}

__global__ void __launch_bounds__(kThreads)
raster_forward_kernel(const Tri* __restrict__ setups, const int64_t* __restrict__ offsets,
                      const int32_t* __restrict__ entries, int64_t F, int64_t H, int64_t W,
                      int32_t* __restrict__ tri_id, float* __restrict__ bary, float* __restrict__ depth) {
  __shared__ Tri staged[kThreads];
  const TilePixel p = tile_pixel(H, W);
  const Hit hit = raster_pixel(setups, offsets, entries, F, p, staged);
  if (!p.inside) return;
  const int64_t q = (p.n * H + p.y) * W + p.x;
  const bool covered = hit.id >= 0;
  tri_id[q] = hit.id;
  bary[3 * q] = covered ? 1.f - hit.b1 - hit.b2 : 0.f;
  bary[3 * q + 1] = covered ? hit.b1 : 0.f;
  bary[3 * q + 2] = covered ? hit.b2 : 0.f;
  depth[q] = covered ? hit.depth : 0.f;
}

// Sum of v over the block (256 threads); the result is valid in thread 0.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
#pragma unroll
  for (int d = 16; d > 0; d >>= 1) v += __shfl_down_sync(0xffffffffu, v, d);
  __syncthreads();
  if ((threadIdx.x & 31) == 0) scratch[threadIdx.x >> 5] = v;
  __syncthreads();
  float s = 0.f;
  if (threadIdx.x == 0)
    for (int w = 0; w < kThreads / 32; ++w) s += scratch[w];
  return s;
}

__global__ void __launch_bounds__(kThreads)
photometric_forward_kernel(const Tri* __restrict__ setups, const int64_t* __restrict__ offsets,
                           const int32_t* __restrict__ entries, const float* __restrict__ image,
                           const int32_t* __restrict__ triangles, const float* __restrict__ colors,
                           const float* __restrict__ mask, int64_t V, int64_t F, int64_t H, int64_t W,
                           int32_t* __restrict__ tri_id, float* __restrict__ tile_sums) {
  __shared__ Tri staged[kThreads];
  __shared__ float scratch[kThreads / 32];
  const TilePixel p = tile_pixel(H, W);
  const Hit hit = raster_pixel(setups, offsets, entries, F, p, staged);
  float num = 0.f, den = 0.f;
  if (p.inside) {
    const int64_t HW = H * W, pix = p.y * W + p.x;
    tri_id[p.n * HW + pix] = hit.id;
    if (hit.id >= 0) {
      const float b[3] = {1.f - hit.b1 - hit.b2, hit.b1, hit.b2};
      float c[3][3], img[3], d[3];
      for (int k = 0; k < 3; ++k) {
        const float* ck = colors + (p.n * V + triangles[3 * int64_t(hit.id) + k]) * 3;
        c[k][0] = ck[0]; c[k][1] = ck[1]; c[k][2] = ck[2];
      }
      for (int ch = 0; ch < 3; ++ch) img[ch] = image[(p.n * 3 + ch) * HW + pix];
      const float m = mask ? mask[p.n * HW + pix] : 1.f;
      num = m * colour_difference<float>(b, c, img, d);
      den = m;
    }
  }
  num = block_sum(num, scratch);
  den = block_sum(den, scratch);
  if (threadIdx.x == 0) {
    tile_sums[2 * int64_t(blockIdx.x)] = num;
    tile_sums[2 * int64_t(blockIdx.x) + 1] = den;
  }
}

// One block per sample: the tile sums in a fixed order, in double.
__global__ void __launch_bounds__(kThreads)
photometric_reduce_kernel(const float* __restrict__ tile_sums, int64_t tiles, double eps, float* __restrict__ loss,
                          float* __restrict__ weight) {
  __shared__ double partial[2][kThreads];
  const int64_t n = blockIdx.x;
  double num = 0, den = 0;
  for (int64_t t = threadIdx.x; t < tiles; t += kThreads) {
    num += tile_sums[2 * (n * tiles + t)];
    den += tile_sums[2 * (n * tiles + t) + 1];
  }
  partial[0][threadIdx.x] = num;
  partial[1][threadIdx.x] = den;
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if (static_cast<int>(threadIdx.x) < s) {
      partial[0][threadIdx.x] += partial[0][threadIdx.x + s];
      partial[1][threadIdx.x] += partial[1][threadIdx.x + s];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    const double total_den = partial[1][0];
    loss[n] = static_cast<float>(partial[0][0] / (total_den > eps ? total_den : eps));
    weight[n] = static_cast<float>(total_den);
  }
}

// The triangle of a covered pixel: vertex indices and positions.
struct PixelTriangle {
  int64_t vi[3];
  float vx[3], vy[3], vz[3], area, coef[4];
};

__device__ __forceinline__ PixelTriangle load_triangle(const float* verts, const int32_t* triangles, int32_t f) {
  PixelTriangle t;
  for (int k = 0; k < 3; ++k) {
    t.vi[k] = triangles[3 * int64_t(f) + k];
    t.vx[k] = verts[3 * t.vi[k]];
    t.vy[k] = verts[3 * t.vi[k] + 1];
    t.vz[k] = verts[3 * t.vi[k] + 2];
  }
  t.area = triangle_area<float>(t.vx, t.vy);
  barycentric_coefficients<float>(t.vx, t.vy, t.area, t.coef);
  return t;
}

__global__ void __launch_bounds__(kThreads)
raster_backward_kernel(const float* __restrict__ grad_bary, const float* __restrict__ grad_depth,
                       const float* __restrict__ vertices, const int32_t* __restrict__ triangles,
                       const int32_t* __restrict__ tri_id, int64_t N, int64_t V, int64_t H, int64_t W,
                       float* __restrict__ grad_vertices) {
  const int64_t HW = H * W;
  for (int64_t q = global_thread(); q < N * HW; q += grid_threads()) {
    const int32_t f = tri_id[q];
    if (f < 0) continue;
    const int64_t n = q / HW, pix = q - n * HW, y = pix / W, x = pix - y * W;
    const PixelTriangle t = load_triangle(vertices + n * V * 3, triangles, f);
    const float px = static_cast<float>(x) + 0.5f, py = static_cast<float>(y) + 0.5f;
    float b[3];
    barycentrics<float>(t.vx, t.vy, t.coef, px, py, b);
    const float gz = grad_depth[q];
    const float g[3] = {grad_bary[3 * q] + gz * t.vz[0], grad_bary[3 * q + 1] + gz * t.vz[1],
                        grad_bary[3 * q + 2] + gz * t.vz[2]};
    float gx[3] = {0.f, 0.f, 0.f}, gy[3] = {0.f, 0.f, 0.f};
    barycentric_vertex_grads<float>(t.vx, t.vy, t.area, px, py, b, g, gx, gy);
    for (int k = 0; k < 3; ++k) {
      float* out = grad_vertices + (n * V + t.vi[k]) * 3;
      atomicAdd(out, gx[k]);
      atomicAdd(out + 1, gy[k]);
      atomicAdd(out + 2, gz * b[k]);
    }
  }
}

__global__ void __launch_bounds__(kThreads)
photometric_backward_kernel(const float* __restrict__ grad_loss, const float* __restrict__ image,
                            const float* __restrict__ vertices, const int32_t* __restrict__ triangles,
                            const float* __restrict__ colors, const float* __restrict__ mask,
                            const int32_t* __restrict__ tri_id, const float* __restrict__ loss,
                            const float* __restrict__ weight, int64_t N, int64_t V, int64_t H, int64_t W, double eps,
                            float* __restrict__ grad_vertices, float* __restrict__ grad_colors,
                            float* __restrict__ grad_image, float* __restrict__ grad_mask) {
  const int64_t HW = H * W;
  for (int64_t q = global_thread(); q < N * HW; q += grid_threads()) {
    const int64_t n = q / HW, pix = q - n * HW;
    const int32_t f = tri_id[q];
    if (f < 0) {
      if (grad_image)
        for (int ch = 0; ch < 3; ++ch) grad_image[(n * 3 + ch) * HW + pix] = 0.f;
      if (grad_mask) grad_mask[q] = 0.f;
      continue;
    }
    const double den = weight[n];
    const float scale = static_cast<float>(grad_loss[n] / (den > eps ? den : eps));
    const float mean = den >= eps ? loss[n] : 0.f;
    const int64_t y = pix / W, x = pix - y * W;
    const PixelTriangle t = load_triangle(vertices + n * V * 3, triangles, f);
    float c[3][3], img[3], d[3];
    for (int k = 0; k < 3; ++k) {
      const float* ck = colors + (n * V + t.vi[k]) * 3;
      c[k][0] = ck[0]; c[k][1] = ck[1]; c[k][2] = ck[2];
    }
    for (int ch = 0; ch < 3; ++ch) img[ch] = image[(n * 3 + ch) * HW + pix];
    const float px = static_cast<float>(x) + 0.5f, py = static_cast<float>(y) + 0.5f;
    float b[3];
    barycentrics<float>(t.vx, t.vy, t.coef, px, py, b);
    const float sq = colour_difference<float>(b, c, img, d);
    const float m = mask ? mask[q] : 1.f;
    const float gr[3] = {2.f * m * scale * d[0], 2.f * m * scale * d[1], 2.f * m * scale * d[2]};
    float g[3];
    for (int k = 0; k < 3; ++k) {
      g[k] = gr[0] * c[k][0] + gr[1] * c[k][1] + gr[2] * c[k][2];
      float* gc = grad_colors + (n * V + t.vi[k]) * 3;
      atomicAdd(gc, gr[0] * b[k]);
      atomicAdd(gc + 1, gr[1] * b[k]);
      atomicAdd(gc + 2, gr[2] * b[k]);
    }
    float gx[3] = {0.f, 0.f, 0.f}, gy[3] = {0.f, 0.f, 0.f};
    barycentric_vertex_grads<float>(t.vx, t.vy, t.area, px, py, b, g, gx, gy);
    for (int k = 0; k < 3; ++k) {
      float* gv = grad_vertices + (n * V + t.vi[k]) * 3;
      atomicAdd(gv, gx[k]);
      atomicAdd(gv + 1, gy[k]);
    }
    if (grad_image)
      for (int ch = 0; ch < 3; ++ch) grad_image[(n * 3 + ch) * HW + pix] = -gr[ch];
    if (grad_mask) grad_mask[q] = scale * (sq - mean);
  }
}

}  // namespace

int64_t rasterize_bin_count_cuda(const float* vertices, const int32_t* triangles, int64_t N, int64_t V, int64_t F,
                                 int64_t H, int64_t W, void* setups, int32_t* counts, int64_t* offsets, void* stream) {
  const auto s = static_cast<cudaStream_t>(stream);
  const int64_t bins = N * tiles_along(H) * tiles_along(W);
  if (cudaMemsetAsync(counts, 0, sizeof(int32_t) * bins, s) != cudaSuccess) check_launch("rasterize_bin_count_cuda");
  if (N * F > 0)
    setup_count_kernel<<<grid_blocks(N * F, kThreads), kThreads, 0, s>>>(vertices, triangles, N, V, F, H, W,
                                                                static_cast<Tri*>(setups), counts);
  exclusive_scan_kernel<<<1, kScanThreads, 0, s>>>(counts, bins, offsets);
  check_launch("rasterize_bin_count_cuda");
  int64_t total = 0;
  cudaMemcpyAsync(&total, offsets + bins, sizeof(int64_t), cudaMemcpyDeviceToHost, s);
  const cudaError_t err = cudaStreamSynchronize(s);
  if (err != cudaSuccess) throw std::runtime_error(std::string("rasterize_bin_count_cuda: ") + cudaGetErrorString(err));
  if (total > INT32_MAX) throw std::runtime_error("rasterize_bin_count_cuda: more than 2^31 bin entries");
  return total;
}

void rasterize_bin_fill_cuda(const void* setups, const int64_t* offsets, int64_t N, int64_t F, int64_t H, int64_t W,
                             int32_t* counts, int32_t* entries, void* stream) {
  const auto s = static_cast<cudaStream_t>(stream);
  const int64_t bins = N * tiles_along(H) * tiles_along(W);
  if (cudaMemsetAsync(counts, 0, sizeof(int32_t) * bins, s) != cudaSuccess) check_launch("rasterize_bin_fill_cuda");
  if (N * F > 0)
    fill_kernel<<<grid_blocks(N * F, kThreads), kThreads, 0, s>>>(static_cast<const Tri*>(setups), offsets, N, F, H, W,
                                                         counts, entries);
  check_launch("rasterize_bin_fill_cuda");
}

void rasterize_forward_cuda(const void* setups, const int64_t* offsets, const int32_t* entries, int64_t N,
                            int64_t F, int64_t H, int64_t W, int32_t* tri_id, float* bary, float* depth, void* stream) {
  const int64_t bins = N * tiles_along(H) * tiles_along(W);
  if (bins == 0) return;
  raster_forward_kernel<<<static_cast<unsigned>(bins), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      static_cast<const Tri*>(setups), offsets, entries, F, H, W, tri_id, bary, depth);
  check_launch("rasterize_forward_cuda");
}

void rasterize_backward_cuda(const float* grad_bary, const float* grad_depth, const float* vertices,
                             const int32_t* triangles, const int32_t* tri_id, int64_t N, int64_t V, int64_t H,
                             int64_t W, float* grad_vertices, void* stream) {
  if (N * H * W == 0) return;
  raster_backward_kernel<<<grid_blocks(N * H * W, kThreads), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      grad_bary, grad_depth, vertices, triangles, tri_id, N, V, H, W, grad_vertices);
  check_launch("rasterize_backward_cuda");
}

void photometric_forward_cuda(const void* setups, const int64_t* offsets, const int32_t* entries, const float* image,
                              const int32_t* triangles, const float* colors, const float* mask, int64_t N, int64_t V,
                              int64_t F, int64_t H, int64_t W, double eps, int32_t* tri_id, float* tile_sums,
                              float* loss, float* weight, void* stream) {
  const auto s = static_cast<cudaStream_t>(stream);
  const int64_t tiles = tiles_along(H) * tiles_along(W);
  if (N * tiles == 0) return;
  photometric_forward_kernel<<<static_cast<unsigned>(N * tiles), kThreads, 0, s>>>(
      static_cast<const Tri*>(setups), offsets, entries, image, triangles, colors, mask, V, F, H, W, tri_id,
      tile_sums);
  photometric_reduce_kernel<<<static_cast<unsigned>(N), kThreads, 0, s>>>(tile_sums, tiles, eps, loss, weight);
  check_launch("photometric_forward_cuda");
}

void photometric_backward_cuda(const float* grad_loss, const float* image, const float* vertices,
                               const int32_t* triangles, const float* colors, const float* mask, const int32_t* tri_id,
                               const float* loss, const float* weight, int64_t N, int64_t V, int64_t H, int64_t W,
                               double eps, float* grad_vertices, float* grad_colors, float* grad_image,
                               float* grad_mask, void* stream) {
  if (N * H * W == 0) return;
  photometric_backward_kernel<<<grid_blocks(N * H * W, kThreads), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      grad_loss, image, vertices, triangles, colors, mask, tri_id, loss, weight, N, V, H, W, eps, grad_vertices,
      grad_colors, grad_image, grad_mask);
  check_launch("photometric_backward_cuda");
}

}  // namespace wsc
