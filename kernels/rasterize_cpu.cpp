// CPU rasterizer and photometric loss (math in rasterize.h).
//
// Forward: each sample's triangles are set up and binned into 16x16-pixel tiles (count, prefix
// sum, fill; triangle order kept inside each bin), then a tile at a time runs a z-buffer for its
// 256 pixels in a stack buffer, visiting only each binned triangle's bounding box with
// incremental int64 edge functions, and writes its outputs (rasterize) or its partial loss sums
// (photometric; summed per sample in tile order, so the loss never depends on scheduling).
// Backward: each covered pixel recomputes its barycentrics and scatters its gradient to the
// three vertices of its triangle.
//
// Work split. With at least as many samples as threads, each thread takes whole samples: no
// barrier inside a sample (a descheduled thread on a busy machine then costs its own samples
// only), and each sample's gradients are one sequential sum, whatever the thread count. With
// fewer samples than threads, the threads share a sample's tiles (forward) or interleaved row
// blocks (backward, each into its own (V, channels) buffer, summed in thread order: the result is
// deterministic for a given thread count).
#include "rasterize.h"

#include <algorithm>
#include <limits>
#include <type_traits>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace wsc {
namespace {

int max_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}
int thread_index() {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}
int team_size() {
#ifdef _OPENMP
  return omp_get_num_threads();
#else
  return 1;
#endif
}

// Below this many pixels (all samples; ~0.3 ms of work for a face mesh) a parallel region costs
// more than it saves, and far more when the other core is busy.
constexpr int64_t kParallelMinPixels = 1 << 14;
constexpr int kBackwardRowBlock = 4;  // rows per static chunk: interleaves the face's rows across threads

struct TileGrid {
  int64_t tiles_x, tiles_y, count;
  TileGrid(int64_t H, int64_t W)
      : tiles_x((W + kRasterTile - 1) / kRasterTile), tiles_y((H + kRasterTile - 1) / kRasterTile),
        count(tiles_x * tiles_y) {}
};

// One sample's triangles that can cover a pixel, binned by tile.
template <typename A>
struct SampleBins {
  std::vector<RasterTriangle<A>> triangles;  // in triangle-index order
  std::vector<int32_t> offsets;              // bin t: entries[offsets[t] .. offsets[t+1])
  std::vector<int32_t> entries;              // indices into `triangles`, ascending in each bin
};

template <typename A>
void bin_sample(const A* vertices, const int32_t* triangles, int64_t F, int64_t H, int64_t W,
                const TileGrid& grid, SampleBins<A>& bins) {
  bins.triangles.resize(static_cast<size_t>(F));  // set up in place, then trimmed to the kept ones
  size_t kept = 0;
  for (int64_t f = 0; f < F; ++f) {
    const A* v[3] = {vertices + 3 * int64_t(triangles[3 * f]), vertices + 3 * int64_t(triangles[3 * f + 1]),
                     vertices + 3 * int64_t(triangles[3 * f + 2])};
    kept += setup_triangle<A>(v, static_cast<int32_t>(f), H, W, bins.triangles[kept]);
  }
  bins.triangles.resize(kept);
  bins.offsets.assign(static_cast<size_t>(grid.count + 1), 0);
  auto for_each_tile = [&](const RasterTriangle<A>& tri, auto&& visit) {
    for (int64_t ty = tri.y0 / kRasterTile; ty <= tri.y1 / kRasterTile; ++ty)
      for (int64_t tx = tri.x0 / kRasterTile; tx <= tri.x1 / kRasterTile; ++tx) visit(ty * grid.tiles_x + tx);
  };
  for (const auto& tri : bins.triangles) for_each_tile(tri, [&](int64_t tile) { ++bins.offsets[tile + 1]; });
  for (int64_t i = 0; i < grid.count; ++i) bins.offsets[i + 1] += bins.offsets[i];
  bins.entries.resize(static_cast<size_t>(bins.offsets.back()));
  std::vector<int32_t> cursor(bins.offsets.begin(), bins.offsets.end() - 1);
  for (size_t i = 0; i < bins.triangles.size(); ++i)
    for_each_tile(bins.triangles[i], [&](int64_t tile) { bins.entries[cursor[tile]++] = static_cast<int32_t>(i); });
}

// A tile's z-buffer: the winning triangle (index into SampleBins::triangles, -1 for none), its
// depth and barycentrics b1, b2 per pixel, row-major in the 16x16 tile.
template <typename A>
struct TileBuffer {
  int64_t x_begin, y_begin, x_end, y_end;  // the tile's pixels clipped to the image, [begin, end)
  int32_t best[kRasterTilePixels];
  A depth[kRasterTilePixels], b1[kRasterTilePixels], b2[kRasterTilePixels];
};

template <typename A>
void raster_tile(const SampleBins<A>& bins, int64_t tile, const TileGrid& grid, int64_t H, int64_t W,
                 TileBuffer<A>& buf) {
  buf.x_begin = (tile % grid.tiles_x) * kRasterTile;
  buf.y_begin = (tile / grid.tiles_x) * kRasterTile;
  buf.x_end = std::min<int64_t>(buf.x_begin + kRasterTile, W);
  buf.y_end = std::min<int64_t>(buf.y_begin + kRasterTile, H);
  std::fill(buf.best, buf.best + kRasterTilePixels, -1);
  std::fill(buf.depth, buf.depth + kRasterTilePixels, std::numeric_limits<A>::infinity());
  for (int32_t e = bins.offsets[tile]; e < bins.offsets[tile + 1]; ++e) {
    const int32_t index = bins.entries[e];
    const RasterTriangle<A>& t = bins.triangles[index];
    const int64_t x_lo = std::max<int64_t>(t.x0, buf.x_begin), x_hi = std::min<int64_t>(t.x1, buf.x_end - 1);
    const int64_t y_lo = std::max<int64_t>(t.y0, buf.y_begin), y_hi = std::min<int64_t>(t.y1, buf.y_end - 1);
    const int64_t px_lo = pixel_centre_snapped(x_lo);
    for (int64_t y = y_lo; y <= y_hi; ++y) {
      const int64_t py_snapped = pixel_centre_snapped(y);
      int64_t e0 = edge_value(t, 0, px_lo, py_snapped), e1 = edge_value(t, 1, px_lo, py_snapped),
              e2 = edge_value(t, 2, px_lo, py_snapped);
      const int64_t s0 = t.ea[0] * 256, s1 = t.ea[1] * 256, s2 = t.ea[2] * 256;  // one pixel to the right
      const A py = static_cast<A>(y) + A(0.5);
      const int64_t row = (y - buf.y_begin) * kRasterTile - buf.x_begin;  // + x: the tile pixel
      for (int64_t x = x_lo; x <= x_hi; ++x, e0 += s0, e1 += s1, e2 += s2) {
        if ((e0 | e1 | e2) < 0) continue;
        A b[3];
        barycentrics<A>(t.vx, t.vy, t.coef, static_cast<A>(x) + A(0.5), py, b);
        const A z = interpolate<A>(b, t.vz);
        const int64_t q = row + x;
        if (z < buf.depth[q]) {  // strict: the lower triangle index (visited first) keeps a tie
          buf.depth[q] = z;
          buf.best[q] = index;
          buf.b1[q] = b[1];
          buf.b2[q] = b[2];
        }
      }
    }
  }
}

// Bin every sample and call tile_fn(n, tile, bins, buf) after the z-buffer of each tile.
template <typename A, typename TileFn>
void raster_all(const A* vertices, const int32_t* triangles, int64_t N, int64_t V, int64_t F, int64_t H, int64_t W,
                TileFn&& tile_fn) {
  const TileGrid grid(H, W);
  const bool parallel = N * H * W >= kParallelMinPixels;
  if (N >= max_threads()) {
#pragma omp parallel if (parallel)
    {
      SampleBins<A> bins;  // reused across this thread's samples
      TileBuffer<A> buf;
#pragma omp for schedule(dynamic, 1)
      for (int64_t n = 0; n < N; ++n) {
        bin_sample<A>(vertices + n * V * 3, triangles, F, H, W, grid, bins);
        for (int64_t tile = 0; tile < grid.count; ++tile) {
          raster_tile<A>(bins, tile, grid, H, W, buf);
          tile_fn(n, tile, bins, buf);
        }
      }
    }
    return;
  }
  std::vector<SampleBins<A>> bins(static_cast<size_t>(N));
#pragma omp parallel for schedule(dynamic, 1) if (parallel && N > 1)
  for (int64_t n = 0; n < N; ++n) bin_sample<A>(vertices + n * V * 3, triangles, F, H, W, grid, bins[n]);
#pragma omp parallel for schedule(dynamic, 4) if (parallel)
  for (int64_t task = 0; task < N * grid.count; ++task) {
    const int64_t n = task / grid.count, tile = task % grid.count;
    TileBuffer<A> buf;
    raster_tile<A>(bins[n], tile, grid, H, W, buf);
    tile_fn(n, tile, bins[n], buf);
  }
}

// Gradient scatter: row_fn(n, y, acc) adds the pixels of row y of sample n into acc, a (V, C)
// buffer of sums; finish_fn(n, v, sums) then receives the C sums of each vertex.
template <typename A, int C, typename RowFn, typename FinishFn>
void scatter_rows(int64_t N, int64_t V, int64_t H, int64_t W, RowFn&& row_fn, FinishFn&& finish_fn) {
  const bool parallel = N * H * W >= kParallelMinPixels;
  const int threads = max_threads();
  if (N >= threads) {
#pragma omp parallel if (parallel)
    {
      std::vector<A> acc(static_cast<size_t>(V * C));
#pragma omp for schedule(dynamic, 1)
      for (int64_t n = 0; n < N; ++n) {
        std::fill(acc.begin(), acc.end(), A(0));
        for (int64_t y = 0; y < H; ++y) row_fn(n, y, acc.data());
        for (int64_t v = 0; v < V; ++v) finish_fn(n, v, acc.data() + v * C);
      }
    }
    return;
  }
  std::vector<A> partial(static_cast<size_t>(threads * V * C));
  for (int64_t n = 0; n < N; ++n) {
#pragma omp parallel num_threads(threads) if (parallel)
    {
      A* acc = partial.data() + thread_index() * V * C;
      std::fill(acc, acc + V * C, A(0));
#pragma omp for schedule(static, kBackwardRowBlock)
      for (int64_t y = 0; y < H; ++y) row_fn(n, y, acc);
      const int team = team_size();
#pragma omp for schedule(static)
      for (int64_t v = 0; v < V; ++v) {
        A sums[C] = {};
        for (int th = 0; th < team; ++th)
          for (int c = 0; c < C; ++c) sums[c] += partial[(th * V + v) * C + c];
        finish_fn(n, v, sums);
      }
    }
  }
}

}  // namespace

template <typename T>
void rasterize_forward_cpu(const T* vertices, const int32_t* triangles, int64_t N, int64_t V, int64_t F,
                           int64_t H, int64_t W, int32_t* tri_id, T* bary, T* depth) {
  using A = typename raster_acc<T>::type;
  static_assert(std::is_same_v<A, T>, "vertices are read in their own type");
  raster_all<A>(vertices, triangles, N, V, F, H, W,
                [&](int64_t n, int64_t, const SampleBins<A>& bins, const TileBuffer<A>& buf) {
    for (int64_t y = buf.y_begin; y < buf.y_end; ++y) {
      for (int64_t x = buf.x_begin; x < buf.x_end; ++x) {
        const int64_t p = (n * H + y) * W + x, q = (y - buf.y_begin) * kRasterTile + (x - buf.x_begin);
        const int32_t best = buf.best[q];
        if (best < 0) {
          tri_id[p] = -1;
          bary[3 * p] = bary[3 * p + 1] = bary[3 * p + 2] = T(0);
          depth[p] = T(0);
        } else {
          tri_id[p] = bins.triangles[best].id;
          bary[3 * p] = A(1) - buf.b1[q] - buf.b2[q];
          bary[3 * p + 1] = buf.b1[q];
          bary[3 * p + 2] = buf.b2[q];
          depth[p] = buf.depth[q];
        }
      }
    }
  });
}

template <typename T>
void rasterize_backward_cpu(const T* grad_bary, const T* grad_depth, const T* vertices, const int32_t* triangles,
                            const int32_t* tri_id, int64_t N, int64_t V, int64_t F, int64_t H, int64_t W,
                            T* grad_vertices) {
  using A = typename raster_acc<T>::type;
  (void)F;
  auto row = [&](int64_t n, int64_t y, A* acc) {
    const T* verts = vertices + n * V * 3;
    const A py = static_cast<A>(y) + A(0.5);
    for (int64_t x = 0; x < W; ++x) {
      const int64_t p = (n * H + y) * W + x;
      const int32_t f = tri_id[p];
      if (f < 0) continue;
      int64_t vi[3];
      A vx[3], vy[3], vz[3];
      for (int k = 0; k < 3; ++k) {
        vi[k] = triangles[3 * int64_t(f) + k];
        vx[k] = verts[3 * vi[k]];
        vy[k] = verts[3 * vi[k] + 1];
        vz[k] = verts[3 * vi[k] + 2];
      }
      const A area = triangle_area<A>(vx, vy);
      const A px = static_cast<A>(x) + A(0.5);
      A coef[4], b[3];
      barycentric_coefficients<A>(vx, vy, area, coef);
      barycentrics<A>(vx, vy, coef, px, py, b);
      const A gz = grad_depth[p];
      const A g[3] = {grad_bary[3 * p] + gz * vz[0], grad_bary[3 * p + 1] + gz * vz[1],
                      grad_bary[3 * p + 2] + gz * vz[2]};
      A gx[3] = {0, 0, 0}, gy[3] = {0, 0, 0};
      barycentric_vertex_grads<A>(vx, vy, area, px, py, b, g, gx, gy);
      for (int k = 0; k < 3; ++k) {
        A* a = acc + 3 * vi[k];
        a[0] += gx[k];
        a[1] += gy[k];
        a[2] += gz * b[k];
      }
    }
  };
  auto finish = [&](int64_t n, int64_t v, const A* sums) {
    T* out = grad_vertices + (n * V + v) * 3;
    out[0] = static_cast<T>(sums[0]);
    out[1] = static_cast<T>(sums[1]);
    out[2] = static_cast<T>(sums[2]);
  };
  scatter_rows<A, 3>(N, V, H, W, row, finish);
}

template <typename T>
void photometric_forward_cpu(const T* image, const T* vertices, const int32_t* triangles, const T* colors,
                             const T* mask, int64_t N, int64_t V, int64_t F, int64_t H, int64_t W, double eps,
                             int32_t* tri_id, T* loss, T* weight) {
  using A = typename raster_acc<T>::type;
  const TileGrid grid(H, W);
  const int64_t HW = H * W;
  std::vector<double> tile_sums(static_cast<size_t>(2 * N * grid.count));
  raster_all<A>(vertices, triangles, N, V, F, H, W,
                [&](int64_t n, int64_t tile, const SampleBins<A>& bins, const TileBuffer<A>& buf) {
    A num = A(0), den = A(0);
    for (int64_t y = buf.y_begin; y < buf.y_end; ++y) {
      for (int64_t x = buf.x_begin; x < buf.x_end; ++x) {
        const int64_t pix = y * W + x, q = (y - buf.y_begin) * kRasterTile + (x - buf.x_begin);
        const int32_t best = buf.best[q];
        tri_id[n * HW + pix] = best < 0 ? -1 : bins.triangles[best].id;
        if (best < 0) continue;
        const int64_t f = bins.triangles[best].id;
        const A b[3] = {A(1) - buf.b1[q] - buf.b2[q], buf.b1[q], buf.b2[q]};
        A c[3][3], img[3], d[3];
        for (int k = 0; k < 3; ++k) {
          const T* ck = colors + (n * V + triangles[3 * f + k]) * 3;
          c[k][0] = ck[0]; c[k][1] = ck[1]; c[k][2] = ck[2];
        }
        for (int ch = 0; ch < 3; ++ch) img[ch] = image[(n * 3 + ch) * HW + pix];
        const A m = mask ? static_cast<A>(mask[n * HW + pix]) : A(1);
        num += m * colour_difference<A>(b, c, img, d);
        den += m;
      }
    }
    tile_sums[2 * (n * grid.count + tile)] = num;
    tile_sums[2 * (n * grid.count + tile) + 1] = den;
  });
  for (int64_t n = 0; n < N; ++n) {
    double num = 0, den = 0;
    for (int64_t t = 0; t < grid.count; ++t) {
      num += tile_sums[2 * (n * grid.count + t)];
      den += tile_sums[2 * (n * grid.count + t) + 1];
    }
    loss[n] = static_cast<T>(num / std::max(den, eps));
    weight[n] = static_cast<T>(den);
  }
}

template <typename T>
void photometric_backward_cpu(const T* grad_loss, const T* image, const T* vertices, const int32_t* triangles,
                              const T* colors, const T* mask, const int32_t* tri_id, const T* loss, const T* weight,
                              int64_t N, int64_t V, int64_t F, int64_t H, int64_t W, double eps,
                              T* grad_vertices, T* grad_colors, T* grad_image, T* grad_mask) {
  using A = typename raster_acc<T>::type;
  (void)F;
  const int64_t HW = H * W;
  auto row = [&](int64_t n, int64_t y, A* acc) {
    const T* verts = vertices + n * V * 3;
    const double den = static_cast<double>(weight[n]);
    const A scale = static_cast<A>(grad_loss[n] / std::max(den, eps));  // d(sample loss)/d(weighted sum)
    const A mean = den >= eps ? static_cast<A>(loss[n]) : A(0);          // the weight sum's share
    const A py = static_cast<A>(y) + A(0.5);
    for (int64_t x = 0; x < W; ++x) {
      const int64_t pix = y * W + x;
      const int32_t f = tri_id[n * HW + pix];
      if (f < 0) {
        if (grad_image)
          for (int ch = 0; ch < 3; ++ch) grad_image[(n * 3 + ch) * HW + pix] = T(0);
        if (grad_mask) grad_mask[n * HW + pix] = T(0);
        continue;
      }
      int64_t vi[3];
      A vx[3], vy[3], c[3][3], img[3], d[3];
      for (int k = 0; k < 3; ++k) {
        vi[k] = triangles[3 * int64_t(f) + k];
        vx[k] = verts[3 * vi[k]];
        vy[k] = verts[3 * vi[k] + 1];
        const T* ck = colors + (n * V + vi[k]) * 3;
        c[k][0] = ck[0]; c[k][1] = ck[1]; c[k][2] = ck[2];
      }
      for (int ch = 0; ch < 3; ++ch) img[ch] = image[(n * 3 + ch) * HW + pix];
      const A area = triangle_area<A>(vx, vy);
      const A px = static_cast<A>(x) + A(0.5);
      A coef[4], b[3];
      barycentric_coefficients<A>(vx, vy, area, coef);
      barycentrics<A>(vx, vy, coef, px, py, b);
      const A sq = colour_difference<A>(b, c, img, d);
      const A m = mask ? static_cast<A>(mask[n * HW + pix]) : A(1);
      const A gr[3] = {2 * m * scale * d[0], 2 * m * scale * d[1], 2 * m * scale * d[2]};  // d loss / d rendered
      A g[3];
      for (int k = 0; k < 3; ++k) {
        g[k] = gr[0] * c[k][0] + gr[1] * c[k][1] + gr[2] * c[k][2];
        A* a = acc + 5 * vi[k];
        a[2] += gr[0] * b[k];
        a[3] += gr[1] * b[k];
        a[4] += gr[2] * b[k];
      }
      A gx[3] = {0, 0, 0}, gy[3] = {0, 0, 0};
      barycentric_vertex_grads<A>(vx, vy, area, px, py, b, g, gx, gy);
      for (int k = 0; k < 3; ++k) {
        acc[5 * vi[k]] += gx[k];
        acc[5 * vi[k] + 1] += gy[k];
      }
      if (grad_image)
        for (int ch = 0; ch < 3; ++ch) grad_image[(n * 3 + ch) * HW + pix] = static_cast<T>(-gr[ch]);
      if (grad_mask) grad_mask[n * HW + pix] = static_cast<T>(scale * (sq - mean));
    }
  };
  // Sums 0-1 go to (x, y) of grad_vertices (depth gets no gradient), 2-4 to grad_colors.
  auto finish = [&](int64_t n, int64_t v, const A* sums) {
    T* gv = grad_vertices + (n * V + v) * 3;
    T* gc = grad_colors + (n * V + v) * 3;
    gv[0] = static_cast<T>(sums[0]); gv[1] = static_cast<T>(sums[1]); gv[2] = T(0);
    gc[0] = static_cast<T>(sums[2]); gc[1] = static_cast<T>(sums[3]); gc[2] = static_cast<T>(sums[4]);
  };
  scatter_rows<A, 5>(N, V, H, W, row, finish);
}

#define WSC_INSTANTIATE(T)                                                                                        \
  template void rasterize_forward_cpu<T>(const T*, const int32_t*, int64_t, int64_t, int64_t, int64_t, int64_t,    \
                                         int32_t*, T*, T*);                                                       \
  template void rasterize_backward_cpu<T>(const T*, const T*, const T*, const int32_t*, const int32_t*, int64_t,   \
                                          int64_t, int64_t, int64_t, int64_t, T*);                                \
  template void photometric_forward_cpu<T>(const T*, const T*, const int32_t*, const T*, const T*, int64_t,        \
                                           int64_t, int64_t, int64_t, int64_t, double, int32_t*, T*, T*);         \
  template void photometric_backward_cpu<T>(const T*, const T*, const T*, const int32_t*, const T*, const T*,      \
                                            const int32_t*, const T*, const T*, int64_t, int64_t, int64_t,        \
                                            int64_t, int64_t, double, T*, T*, T*, T*);
WSC_INSTANTIATE(float)
WSC_INSTANTIATE(double)
#undef WSC_INSTANTIATE

}  // namespace wsc
