// Differentiable triangle rasterizer and the fused photometric loss: per-triangle setup, coverage,
// barycentrics, depth and their gradients, shared by the CPU loops (rasterize_cpu.cpp) and the
// CUDA kernels (rasterize.cu).
//
// Conventions (the Python op documents the same):
//   - Screen space: x to the right, y down, in pixels; pixel (row i, column j) has its centre at
//     (j + 0.5, i + 0.5), so pixel j covers [j, j+1).
//   - Coverage is decided on vertices snapped to 1/256 pixel with exact int64 edge functions, so
//     every backend covers the same pixels and a pixel centre on an edge shared by two triangles
//     is covered by exactly one of them: the top-left rule (after orienting the triangle so that
//     its snapped area is positive, an edge counts when it goes up the screen, dy < 0, or runs
//     horizontally to the right, dy == 0 and dx > 0).
//   - Both windings are rendered (no culling). A triangle is skipped when its snapped or
//     floating-point area is zero, when a coordinate is not finite, or when |x| or |y| exceeds
//     the guard band of 2^21 pixels (the int64 edge functions stay exact inside it).
//   - Barycentrics b1 = cross(p-v0, v2-v0)/A, b2 = cross(v1-v0, p-v0)/A, b0 = 1 - b1 - b2 with
//     A = cross(v1-v0, v2-v0), in the accumulation type from the unsnapped vertices, so they are
//     differentiable in the vertex positions (interior gradients; no silhouette term). They are
//     evaluated as affine functions of p - v0 with per-triangle coefficients (no division per
//     pixel). At a pixel within 1/512 pixel of an edge a barycentric can be slightly negative.
//   - Depth = b0*z0 + b1*z1 + b2*z2 (linear in screen space); the smallest depth wins, ties go to
//     the lower triangle index.
#pragma once
#include "common.h"

namespace wsc {

constexpr double kSnapScale = 256.0;       // 8 sub-pixel bits
constexpr double kGuardBand = 2097152.0;   // 2^21 pixels: |snapped| <= 2^29, edge terms < 2^62
constexpr int kRasterTile = 16;            // screen bins (tiles) are 16x16 pixels on CPU and GPU
constexpr int kRasterTilePixels = kRasterTile * kRasterTile;

template <typename T> struct raster_acc { using type = float; };
template <> struct raster_acc<double> { using type = double; };

// Everything the coverage test and the interpolation need about one triangle.
template <typename A>
struct RasterTriangle {
  // Edge k covers pixel centre (PX, PY) (in 1/256 pixel) when ea*PX + eb*PY + ec >= 0; the
  // top-left rule is folded into ec (a non-top-left edge has ec lowered by one).
  int64_t ea[3], eb[3], ec[3];
  int32_t x0, x1, y0, y1;  // inclusive pixel range that can be covered, clipped to the image
  int32_t id;              // the triangle's index in `triangles`
  A vx[3], vy[3], vz[3];   // unsnapped vertices, in the triangle's own vertex order
  A coef[4];               // barycentric coefficients (see barycentric_coefficients)
};

// Round half to even, as torch.round does, so the reference snaps the same way. On the host,
// adding and subtracting 1.5 * 2^52 rounds any |v| < 2^51 to an integer in the default rounding
// mode without a libm call (baseline x86-64 has no rounding instruction); |v| <= 2^29 here.
WSC_HD double round_even(double v) {
#if defined(__CUDA_ARCH__)
  return rint(v);
#else
  volatile double shifted = v + 6755399441055744.0;  // volatile: no reassociation, whatever the flags
  return shifted - 6755399441055744.0;
#endif
}

// Snap a coordinate to 1/256 pixel; false when it is not finite or outside the guard band.
WSC_HD bool snap_coordinate(double v, int64_t& out) {
  if (!(v >= -kGuardBand && v <= kGuardBand)) return false;  // also false for NaN
  out = static_cast<int64_t>(round_even(v * kSnapScale));
  return true;
}

WSC_HD int64_t floor_div(int64_t a, int64_t b) {  // b > 0
  const int64_t q = a / b;
  return (a % b != 0 && a < 0) ? q - 1 : q;
}

// The snapped coordinate of the centre of pixel j: 256*j + 128.
WSC_HD int64_t pixel_centre_snapped(int64_t j) { return j * 256 + 128; }

// A = cross(v1 - v0, v2 - v0): twice the signed area, positive for clockwise vertices on screen.
template <typename A>
WSC_HD A triangle_area(const A vx[3], const A vy[3]) {
  return (vx[1] - vx[0]) * (vy[2] - vy[0]) - (vy[1] - vy[0]) * (vx[2] - vx[0]);
}

// b1 = cross(d, e2)/A and b2 = cross(e1, d)/A with d = p - v0, e1 = v1 - v0, e2 = v2 - v0, as
// coefficients of d: coef = {e2y, -e2x, -e1y, e1x} / A.
template <typename A>
WSC_HD void barycentric_coefficients(const A vx[3], const A vy[3], A area, A coef[4]) {
  const A inv_area = A(1) / area;
  coef[0] = (vy[2] - vy[0]) * inv_area;
  coef[1] = -(vx[2] - vx[0]) * inv_area;
  coef[2] = -(vy[1] - vy[0]) * inv_area;
  coef[3] = (vx[1] - vx[0]) * inv_area;
}

// Build the setup of one triangle from its three vertices (x, y, depth each). Returns false when
// the triangle is skipped (degenerate, not finite, outside the guard band, or covers no pixel
// centre of the height x width image).
template <typename A>
WSC_HD bool setup_triangle(const A* const v[3], int32_t id, int64_t height, int64_t width,
                           RasterTriangle<A>& t) {
  int64_t X[3], Y[3];
  for (int k = 0; k < 3; ++k) {
    const A z = v[k][2];
    if (!(z - z == A(0))) return false;  // inf or nan depth
    if (!snap_coordinate(static_cast<double>(v[k][0]), X[k]) || !snap_coordinate(static_cast<double>(v[k][1]), Y[k]))
      return false;
    t.vx[k] = v[k][0];
    t.vy[k] = v[k][1];
    t.vz[k] = z;
  }
  // The pixel range first: most rejected triangles (off-screen, or between pixel centres) leave here.
  const int64_t min_x = X[0] < X[1] ? (X[0] < X[2] ? X[0] : X[2]) : (X[1] < X[2] ? X[1] : X[2]);
  const int64_t max_x = X[0] > X[1] ? (X[0] > X[2] ? X[0] : X[2]) : (X[1] > X[2] ? X[1] : X[2]);
  const int64_t min_y = Y[0] < Y[1] ? (Y[0] < Y[2] ? Y[0] : Y[2]) : (Y[1] < Y[2] ? Y[1] : Y[2]);
  const int64_t max_y = Y[0] > Y[1] ? (Y[0] > Y[2] ? Y[0] : Y[2]) : (Y[1] > Y[2] ? Y[1] : Y[2]);
  // Pixel centres 256*j + 128 inside [min, max]: j from ceil((min-128)/256) to floor((max-128)/256).
  int64_t x0 = -floor_div(128 - min_x, 256), x1 = floor_div(max_x - 128, 256);
  int64_t y0 = -floor_div(128 - min_y, 256), y1 = floor_div(max_y - 128, 256);
  x0 = x0 < 0 ? 0 : x0;
  y0 = y0 < 0 ? 0 : y0;
  x1 = x1 > width - 1 ? width - 1 : x1;
  y1 = y1 > height - 1 ? height - 1 : y1;
  if (x0 > x1 || y0 > y1) return false;
  const int64_t snapped_area = (X[1] - X[0]) * (Y[2] - Y[0]) - (Y[1] - Y[0]) * (X[2] - X[0]);
  const A area = triangle_area<A>(t.vx, t.vy);
  if (snapped_area == 0 || area == A(0)) return false;
  barycentric_coefficients<A>(t.vx, t.vy, area, t.coef);
  // Orient so the snapped area is positive; only coverage uses the order, not the barycentrics.
  const int order[3] = {0, snapped_area > 0 ? 1 : 2, snapped_area > 0 ? 2 : 1};
  for (int k = 0; k < 3; ++k) {
    const int a = order[k], b = order[(k + 1) % 3];
    const int64_t dx = X[b] - X[a], dy = Y[b] - Y[a];
    const bool top_left = dy < 0 || (dy == 0 && dx > 0);
    // e(P) = dx*(PY - Ya) - dy*(PX - Xa): positive on the inner side of a->b.
    t.ea[k] = -dy;
    t.eb[k] = dx;
    t.ec[k] = dy * X[a] - dx * Y[a] - (top_left ? 0 : 1);
  }
  t.x0 = static_cast<int32_t>(x0);
  t.x1 = static_cast<int32_t>(x1);
  t.y0 = static_cast<int32_t>(y0);
  t.y1 = static_cast<int32_t>(y1);
  t.id = id;
  return true;
}

// Edge function k at a snapped point; the pixel is covered when all three are >= 0.
template <typename A>
WSC_HD int64_t edge_value(const RasterTriangle<A>& t, int k, int64_t PX, int64_t PY) {
  return t.ea[k] * PX + t.eb[k] * PY + t.ec[k];
}

template <typename A>
WSC_HD bool covers(const RasterTriangle<A>& t, int64_t x, int64_t y) {
  const int64_t PX = pixel_centre_snapped(x), PY = pixel_centre_snapped(y);
  return (edge_value(t, 0, PX, PY) | edge_value(t, 1, PX, PY) | edge_value(t, 2, PX, PY)) >= 0;
}

// Barycentrics of point (px, py): b1 = coef[0]*dx + coef[1]*dy, b2 = coef[2]*dx + coef[3]*dy
// with (dx, dy) = p - v0 (see the file comment), b0 = 1 - b1 - b2.
template <typename A>
WSC_HD void barycentrics(const A vx[3], const A vy[3], const A coef[4], A px, A py, A b[3]) {
  const A dx = px - vx[0], dy = py - vy[0];
  b[1] = coef[0] * dx + coef[1] * dy;
  b[2] = coef[2] * dx + coef[3] * dy;
  b[0] = A(1) - b[1] - b[2];
}

template <typename A>
WSC_HD A interpolate(const A b[3], const A z[3]) { return b[0] * z[0] + b[1] * z[1] + b[2] * z[2]; }

// Gradients of a scalar loss with respect to the vertex positions, given its gradients g[k]
// with respect to the barycentrics b[k] (from `barycentrics`) at point (px, py). Adds into gx[k], gy[k].
template <typename A>
WSC_HD void barycentric_vertex_grads(const A vx[3], const A vy[3], A area, A px, A py, const A b[3], const A g[3],
                                     A gx[3], A gy[3]) {
  const A d0x = vx[0] - px, d0y = vy[0] - py;
  const A d1x = vx[1] - px, d1y = vy[1] - py;
  const A d2x = vx[2] - px, d2y = vy[2] - py;
  // b0 = 1 - b1 - b2, so the loss depends on w1 = A*b1 and w2 = A*b2 through h1, h2, and on A.
  const A inv_area = A(1) / area;
  const A h1 = g[1] - g[0], h2 = g[2] - g[0];
  const A gw1 = h1 * inv_area, gw2 = h2 * inv_area;
  const A ga = -(h1 * b[1] + h2 * b[2]) * inv_area;
  // w1 = cross(d2, d0), w2 = cross(d0, d1); d/da cross(a,b) = (b.y, -b.x), d/db = (-a.y, a.x).
  gx[2] += gw1 * d0y;  gy[2] -= gw1 * d0x;
  gx[0] -= gw1 * d2y;  gy[0] += gw1 * d2x;
  gx[0] += gw2 * d1y;  gy[0] -= gw2 * d1x;
  gx[1] -= gw2 * d0y;  gy[1] += gw2 * d0x;
  // A = cross(e1, e2), e1 = v1 - v0, e2 = v2 - v0.
  const A e1x = vx[1] - vx[0], e1y = vy[1] - vy[0];
  const A e2x = vx[2] - vx[0], e2y = vy[2] - vy[0];
  const A g1x = ga * e2y, g1y = -ga * e2x;  // dA/de1
  const A g2x = -ga * e1y, g2y = ga * e1x;  // dA/de2
  gx[1] += g1x;  gy[1] += g1y;
  gx[2] += g2x;  gy[2] += g2y;
  gx[0] -= g1x + g2x;  gy[0] -= g1y + g2y;
}

// Photometric loss of one covered pixel: rendered colour r = sum_k b_k c_k (RGB), difference
// d = r - image. Returns |d|^2 and fills d.
template <typename A>
WSC_HD A colour_difference(const A b[3], const A c[3][3], const A image[3], A d[3]) {
  A sq = A(0);
  for (int ch = 0; ch < 3; ++ch) {
    d[ch] = b[0] * c[0][ch] + b[1] * c[1][ch] + b[2] * c[2][ch] - image[ch];
    sq += d[ch] * d[ch];
  }
  return sq;
}

// CPU entry points (rasterize_cpu.cpp), T = float or double. All arrays are dense:
// vertices (N,V,3) [x, y, depth]; triangles (F,3) int32 in [0, V) (checked by the caller);
// tri_id (N,H,W) (-1 = background); bary (N,H,W,3); depth (N,H,W); image (N,3,H,W);
// colors (N,V,3); mask (N,H,W) or null for all ones.
template <typename T>
void rasterize_forward_cpu(const T* vertices, const int32_t* triangles, int64_t N, int64_t V, int64_t F,
                           int64_t H, int64_t W, int32_t* tri_id, T* bary, T* depth);
// grad_vertices (N,V,3) is overwritten. Deterministic for a given number of OpenMP threads.
template <typename T>
void rasterize_backward_cpu(const T* grad_bary, const T* grad_depth, const T* vertices, const int32_t* triangles,
                            const int32_t* tri_id, int64_t N, int64_t V, int64_t F, int64_t H, int64_t W,
                            T* grad_vertices);
// Per sample n: weight[n] = sum_p mask*covered, loss[n] = sum_p mask*covered*|r - image|^2 / max(weight[n], eps).
template <typename T>
void photometric_forward_cpu(const T* image, const T* vertices, const int32_t* triangles, const T* colors,
                             const T* mask, int64_t N, int64_t V, int64_t F, int64_t H, int64_t W, double eps,
                             int32_t* tri_id, T* loss, T* weight);
// grad_vertices, grad_colors (N,V,3) are overwritten; grad_image (N,3,H,W) and grad_mask (N,H,W)
// are written when not null.
template <typename T>
void photometric_backward_cpu(const T* grad_loss, const T* image, const T* vertices, const int32_t* triangles,
                              const T* colors, const T* mask, const int32_t* tri_id, const T* loss, const T* weight,
                              int64_t N, int64_t V, int64_t F, int64_t H, int64_t W, double eps,
                              T* grad_vertices, T* grad_colors, T* grad_image, T* grad_mask);

// CUDA entry points (rasterize.cu), float only; `stream` is a cudaStream_t. Binning runs in two
// calls so the caller can allocate the bins in between:
//   1. rasterize_bin_count_cuda sets up every triangle into `setups` (N*F RasterTriangle<float>),
//      counts the tiles each one overlaps into `counts` (N*tiles int32, zeroed here), writes their
//      exclusive prefix sum to `offsets` (N*tiles + 1 int64) and returns the total (it waits for
//      the stream once to read it back).
//   2. rasterize_bin_fill_cuda writes each bin's triangle indices into `entries` (total int32);
//      `counts` is reused as the fill cursor.
// tiles = ceil(H/16) * ceil(W/16).
int64_t rasterize_bin_count_cuda(const float* vertices, const int32_t* triangles, int64_t N, int64_t V, int64_t F,
                                 int64_t H, int64_t W, void* setups, int32_t* counts, int64_t* offsets, void* stream);
void rasterize_bin_fill_cuda(const void* setups, const int64_t* offsets, int64_t N, int64_t F, int64_t H, int64_t W,
                             int32_t* counts, int32_t* entries, void* stream);
void rasterize_forward_cuda(const void* setups, const int64_t* offsets, const int32_t* entries, int64_t N,
                            int64_t F, int64_t H, int64_t W, int32_t* tri_id, float* bary, float* depth, void* stream);
// grad_vertices must be zeroed by the caller (the kernel adds with atomics).
void rasterize_backward_cuda(const float* grad_bary, const float* grad_depth, const float* vertices,
                             const int32_t* triangles, const int32_t* tri_id, int64_t N, int64_t V, int64_t H,
                             int64_t W, float* grad_vertices, void* stream);
// tile_sums: scratch of N*tiles*2 floats.
void photometric_forward_cuda(const void* setups, const int64_t* offsets, const int32_t* entries, const float* image,
                              const int32_t* triangles, const float* colors, const float* mask, int64_t N, int64_t V,
                              int64_t F, int64_t H, int64_t W, double eps, int32_t* tri_id, float* tile_sums,
                              float* loss, float* weight, void* stream);
// grad_vertices and grad_colors must be zeroed by the caller; grad_image / grad_mask may be null.
void photometric_backward_cuda(const float* grad_loss, const float* image, const float* vertices,
                               const int32_t* triangles, const float* colors, const float* mask, const int32_t* tri_id,
                               const float* loss, const float* weight, int64_t N, int64_t V, int64_t H, int64_t W,
                               double eps, float* grad_vertices, float* grad_colors, float* grad_image,
                               float* grad_mask, void* stream);

}  // namespace wsc
