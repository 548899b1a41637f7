// CUDA kernels for instance norm (no affine) + LeakyReLU (per-element math in
// instance_norm_act.h, shared with the CPU loops of instance_norm_act_cpu.cpp). Statistics,
// scratch and arithmetic are fp32; sums over many partials are fp64.
//
// NCHW (and channels_last with C == 1, the same memory): one kernel per direction, a block per
// (n, c) plane. The block sums its plane (forward: x - shift and its square, shift = the plane's
// first value; backward: gp = leaky_grad(dy) and gp * xhat) in per-lane fp32 runs of kFlush
// packs moved into fp64, adds the lanes in a fixed order (shuffles, then the warps in order),
// and then writes the plane's y or dx. Lanes walk the plane in consecutive packs: coalesced.
// A plane's second read should mostly hit L2, which holds the plane the block just read. (Fewer
// planes than about 2 per SM, each large, leave SMs idle: the PatchGAN's have N*C >= 1024.)
//
// NHWC: three kernels per direction.
//   1. Partial sums: a block owns a row (a run of `chunk` pixels of one image) and a tile of L
//      channel packs; thread (r, l) takes pack l of the tile in pixels r, r + R, ... (R = 256 / L
//      pixel lanes; at most kMaxRun pixels each, summed in fp32). Threads in order read pixel
//      after pixel, channels innermost: coalesced along C. The R lanes of a channel are added in
//      order through shared memory into part[2][rows][C].
//   2. Finish: per (n, c), the image's rows added in fp64 in a fixed order (the rows split over
//      the warps, then the warps in order); writes mean and rstd (forward) or the plane means of
//      gp and gp * xhat (backward).
//   3. Elementwise y or dx, a thread per pack, walking backwards: step 1 ended at the last rows,
//      which L2 may still hold.
//
// Bytes, E = N*C*HW*s (s = element size):
//   forward   3E: the statistics read x (E); y = leaky(xhat) reads x, writes y (2E).
//   backward  5E: the plane sums read dy, x (2E); dx reads dy, x, writes dx (3E).
//   Plus 8 bytes per (n, c) of statistics each way and, in NHWC, the partial arrays (2 floats per
//   row and channel, written then read: 16 * rows * C bytes). Rows are about 4 blocks per SM in
//   all, each at least kMinChunk pixels, so the arrays add at most 16 / (kMinChunk * s) of E (6%
//   fp32, 12% 16-bit; less on large images), but they hold at most about 1 MB (4 * 132 SMs *
//   32 packs * V * 8 bytes) and are read back right after being written: that traffic is L2's.
//   (The minimum, every input read once and every output written once, is 2E and 3E: a plane's
//   statistics must be complete before any of its outputs.)
//
// Packs: V = 16 bytes / s values per load and store when the unit-stride extent (HW for NCHW, C
// for NHWC) is a multiple of V and every tensor is 16-byte aligned, else V = 1.
// Indexing is 64-bit; grids are capped and blocks loop over their work, so any size launches.
// Deterministic: every sum is taken in a fixed order, no atomics. (NHWC rows follow the SM
// count, so two GPU models may differ in the last bits.)
// NHWC scratch comes from cudaMallocAsync on the caller's stream and is released with
// cudaFreeAsync on that stream (stream-ordered, capturable; the device's default memory pool,
// outside torch's caching allocator), as in ain.cu.
// The per-thread work of every kernel is in __host__ __device__ functions (*_lane, *_pack), so a
// host loop can run it with emulated thread indices.
#include <cuda_runtime.h>

#include <cstdint>
#include <initializer_list>
#include <stdexcept>
#include <string>

#include "cuda_common.cuh"
#include "instance_norm_act.h"

namespace wsc {
using namespace cuda_common;
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr unsigned kFullMask = 0xffffffffu;
constexpr int kFlush = 64;            // NCHW: packs per lane summed in fp32 before moving into fp64
constexpr int kMaxTileLanes = 32;     // NHWC: channel packs per block tile (a warp's worth)
constexpr int64_t kMinChunk = 64;     // NHWC: fewest pixels per row of partial sums
constexpr int64_t kMaxRun = 1024;     // NHWC: most pixels per lane summed in fp32
constexpr int kBlocksPerSm = 2048 / kThreads;  // resident blocks per SM at most (2048 threads on sm_80, sm_90)

template <typename T>
constexpr int kPackWidth = static_cast<int>(16 / sizeof(T));

WSC_HD int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
WSC_HD int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Pack<T, V> (cuda_common.cuh) at p, 16-byte aligned when V > 1; callable from host code too.
template <int V, typename T>
WSC_HD Pack<T, V> pack_at(const T* p) { return *reinterpret_cast<const Pack<T, V>*>(p); }
template <int V, typename T>
WSC_HD void pack_to(T* p, const Pack<T, V>& v) { *reinterpret_cast<Pack<T, V>*>(p) = v; }

// ---------------------------------------------------------------------------------------------
// NCHW: a block per plane; lane t takes packs t, t + kThreads, ... of the plane.

// Two running sums: fp32 over runs of kFlush packs, moved into fp64 between runs, so the sums of
// a large plane keep their precision.
struct Sums2 {
  double s1 = 0, s2 = 0;
  float a1 = 0, a2 = 0;
  int run = 0;
  WSC_HD void add(float u, float v) {
    a1 += u;
    a2 += v;
  }
  WSC_HD void end_pack() {
    if (++run == kFlush) flush();
  }
  WSC_HD void flush() {
    s1 += a1;
    s2 += a2;
    a1 = a2 = 0;
    run = 0;
  }
};

// Sums of d = x - shift and d^2 over the lane's packs.
template <typename T, int V>
WSC_HD Sums2 nchw_stats_lane(const T* x, int64_t HW, float shift, int lane) {
  Sums2 s;
  for (int64_t p = static_cast<int64_t>(lane) * V; p < HW; p += static_cast<int64_t>(kThreads) * V) {
    const Pack<T, V> v = pack_at<V>(x + p);
    for (int i = 0; i < V; ++i) {
      const float d = load(v.v[i]) - shift;
      s.add(d, d * d);
    }
    s.end_pack();
  }
  s.flush();
  return s;
}

template <typename T, int V>
WSC_HD void nchw_forward_lane(const T* x, T* y, int64_t HW, float mu, float rs, float slope, int lane) {
  for (int64_t p = static_cast<int64_t>(lane) * V; p < HW; p += static_cast<int64_t>(kThreads) * V) {
    const Pack<T, V> v = pack_at<V>(x + p);
    Pack<T, V> o;
    for (int i = 0; i < V; ++i) o.v[i] = store<T>(leaky<float>((load(v.v[i]) - mu) * rs, slope));
    pack_to<V>(y + p, o);
  }
}

// Sums of gp and gp * xhat over the lane's packs.
template <typename T, int V>
WSC_HD Sums2 nchw_grad_sums_lane(const T* dy, const T* x, int64_t HW, float mu, float rs, float slope, int lane) {
  Sums2 s;
  for (int64_t p = static_cast<int64_t>(lane) * V; p < HW; p += static_cast<int64_t>(kThreads) * V) {
    const Pack<T, V> g = pack_at<V>(dy + p), v = pack_at<V>(x + p);
    for (int i = 0; i < V; ++i) {
      const float xh = (load(v.v[i]) - mu) * rs, gp = leaky_grad<float>(load(g.v[i]), xh, slope);
      s.add(gp, gp * xh);
    }
    s.end_pack();
  }
  s.flush();
  return s;
}

template <typename T, int V>
WSC_HD void nchw_backward_lane(const T* dy, const T* x, T* dx, int64_t HW, float mu, float rs, float slope,
                               float mean_gp, float mean_gp_xhat, int lane) {
  for (int64_t p = static_cast<int64_t>(lane) * V; p < HW; p += static_cast<int64_t>(kThreads) * V) {
    const Pack<T, V> g = pack_at<V>(dy + p), v = pack_at<V>(x + p);
    Pack<T, V> o;
    for (int i = 0; i < V; ++i) {
      const float xh = (load(v.v[i]) - mu) * rs;
      o.v[i] = store<T>(instance_norm_input_grad<float>(leaky_grad<float>(load(g.v[i]), xh, slope), xh, rs, mean_gp,
                                                        mean_gp_xhat));
    }
    pack_to<V>(dx + p, o);
  }
}

// Block sums of a and b, the same bits in every thread (each adds the warps' sums in order).
// sm: 2 * kWarps doubles.
__device__ __forceinline__ void block_sum2(double& a, double& b, double* sm) {
  for (int o = 16; o > 0; o /= 2) {
    a += __shfl_xor_sync(kFullMask, a, o);
    b += __shfl_xor_sync(kFullMask, b, o);
  }
  if (threadIdx.x % 32 == 0) {
    sm[threadIdx.x / 32] = a;
    sm[kWarps + threadIdx.x / 32] = b;
  }
  __syncthreads();
  a = b = 0;
  for (int w = 0; w < kWarps; ++w) {
    a += sm[w];
    b += sm[kWarps + w];
  }
  __syncthreads();  // sm is free again
}

template <typename T, int V>
__global__ void __launch_bounds__(kThreads)
ina_forward_nchw(const T* __restrict__ x, T* __restrict__ y, float* __restrict__ mean, float* __restrict__ rstd,
                 int64_t planes, int64_t HW, double eps, float slope) {
  __shared__ double sm[2 * kWarps];
  const int lane = static_cast<int>(threadIdx.x);
  for (int64_t plane = blockIdx.x; plane < planes; plane += gridDim.x) {
    const int64_t at = plane * HW;
    const float shift = load(x[at]);
    Sums2 s = nchw_stats_lane<T, V>(x + at, HW, shift, lane);
    block_sum2(s.s1, s.s2, sm);
    double mu, rs;
    stats_from_shifted_sums(shift, s.s1, s.s2, HW, eps, mu, rs);
    if (lane == 0) {
      mean[plane] = static_cast<float>(mu);
      rstd[plane] = static_cast<float>(rs);
    }
    nchw_forward_lane<T, V>(x + at, y + at, HW, static_cast<float>(mu), static_cast<float>(rs), slope, lane);
  }
}

template <typename T, int V>
__global__ void __launch_bounds__(kThreads)
ina_backward_nchw(const T* __restrict__ dy, const T* __restrict__ x, const float* __restrict__ mean,
                  const float* __restrict__ rstd, T* __restrict__ dx, int64_t planes, int64_t HW, float slope) {
  __shared__ double sm[2 * kWarps];
  const int lane = static_cast<int>(threadIdx.x);
  for (int64_t plane = blockIdx.x; plane < planes; plane += gridDim.x) {
    const int64_t at = plane * HW;
    const float mu = mean[plane], rs = rstd[plane];
    Sums2 s = nchw_grad_sums_lane<T, V>(dy + at, x + at, HW, mu, rs, slope, lane);
    block_sum2(s.s1, s.s2, sm);
    const double count = static_cast<double>(HW);
    nchw_backward_lane<T, V>(dy + at, x + at, dx + at, HW, mu, rs, slope, static_cast<float>(s.s1 / count),
                             static_cast<float>(s.s2 / count), lane);
  }
}

// ---------------------------------------------------------------------------------------------
// NHWC (see the top of the file).

// How the partial-sum step splits the work: blocks = rows x tiles.
struct NhwcPlan {
  int64_t CP;               // channel packs per pixel (C / V)
  int L, R;                 // a block's threads: L channel-pack lanes x R pixel lanes (R * L <= kThreads)
  int64_t tiles;            // channel tiles of L packs per pixel
  int64_t chunk, chunks;    // a row is `chunk` pixels of one image; `chunks` rows per image
  int64_t rows, blocks;     // N * chunks, rows * tiles
};

// Tiles of at most kMaxTileLanes packs, balanced; rows for about 4 blocks per SM in all, each
// at least kMinChunk pixels (fewer rows, fewer partial sums to move) and at most kMaxRun pixels
// per lane (short fp32 runs).
NhwcPlan nhwc_plan(int64_t N, int64_t C, int64_t HW, int V, int64_t sms) {
  NhwcPlan pl;
  pl.CP = C / V;
  pl.tiles = ceil_div(pl.CP, kMaxTileLanes);
  pl.L = static_cast<int>(ceil_div(pl.CP, pl.tiles));
  pl.R = kThreads / pl.L;
  int64_t chunks = ceil_div(4 * sms, N * pl.tiles);
  chunks = min64(chunks, ceil_div(HW, kMinChunk));
  const int64_t fp32_runs = ceil_div(HW, pl.R * kMaxRun);
  if (chunks < fp32_runs) chunks = fp32_runs;
  pl.chunk = ceil_div(HW, chunks);
  pl.chunks = ceil_div(HW, pl.chunk);
  pl.rows = N * pl.chunks;
  pl.blocks = pl.rows * pl.tiles;
  return pl;
}

// Thread t's share of block `work` of the partial-sum step: pack cp of image n (channels
// cp*V .. cp*V + V-1) in pixels p0, p0 + R, ... < p1. Threads beyond R * L, or past the last
// pack, are idle.
struct NhwcSlice {
  int64_t n, row, tile, cp, p0, p1;
  bool active;
};

WSC_HD NhwcSlice nhwc_slice(const NhwcPlan& pl, int64_t HW, int64_t work, int t) {
  NhwcSlice s;
  s.row = work / pl.tiles;
  s.tile = work - s.row * pl.tiles;
  s.n = s.row / pl.chunks;
  const int64_t first = (s.row - s.n * pl.chunks) * pl.chunk;
  const int l = t % pl.L, r = t / pl.L;
  s.cp = s.tile * pl.L + l;
  s.p0 = first + r;
  s.p1 = min64(HW, first + pl.chunk);
  s.active = r < pl.R && s.cp < pl.CP;
  return s;
}

// Sums of d = x - shift and d^2 per channel of the slice; shift = the image's first pixel.
template <typename T, int V>
WSC_HD void nhwc_stats_lane(const T* x, int64_t C, int64_t HW, const NhwcPlan& pl, const NhwcSlice& s, float (&a)[V],
                            float (&b)[V]) {
  for (int i = 0; i < V; ++i) a[i] = b[i] = 0;
  if (!s.active) return;
  const T* img = x + s.n * HW * C + s.cp * V;
  const Pack<T, V> first = pack_at<V>(img);
  float shift[V];
  for (int i = 0; i < V; ++i) shift[i] = load(first.v[i]);
  for (int64_t p = s.p0; p < s.p1; p += pl.R) {
    const Pack<T, V> v = pack_at<V>(img + p * C);
    for (int i = 0; i < V; ++i) {
      const float d = load(v.v[i]) - shift[i];
      a[i] += d;
      b[i] += d * d;
    }
  }
}

// Sums of gp and gp * xhat per channel of the slice.
template <typename T, int V>
WSC_HD void nhwc_grad_sums_lane(const T* dy, const T* x, const float* mean, const float* rstd, float slope, int64_t C,
                                int64_t HW, const NhwcPlan& pl, const NhwcSlice& s, float (&a)[V], float (&b)[V]) {
  for (int i = 0; i < V; ++i) a[i] = b[i] = 0;
  if (!s.active) return;
  const int64_t base = s.n * HW * C + s.cp * V, nc = s.n * C + s.cp * V;
  float mu[V], rs[V];
  for (int i = 0; i < V; ++i) {
    mu[i] = mean[nc + i];
    rs[i] = rstd[nc + i];
  }
  for (int64_t p = s.p0; p < s.p1; p += pl.R) {
    const Pack<T, V> g = pack_at<V>(dy + base + p * C), v = pack_at<V>(x + base + p * C);
    for (int i = 0; i < V; ++i) {
      const float xh = (load(v.v[i]) - mu[i]) * rs[i], gp = leaky_grad<float>(load(g.v[i]), xh, slope);
      a[i] += gp;
      b[i] += gp * xh;
    }
  }
}

// Adds the R pixel lanes of each channel of the block's tile in lane order and writes the row:
// part[0][row][c] (from a), part[1][row][c] (from b). buf: 2 * kThreads * V floats. Thread
// t = r * L + l stores its channel i at t * V + i = r * (L * V) + (l * V + i).
template <int V>
__device__ void merge_pixel_lanes(const float (&a)[V], const float (&b)[V], const NhwcPlan& pl, const NhwcSlice& s,
                                  int64_t C, float* part, float* buf) {
  const int t = static_cast<int>(threadIdx.x), width = pl.L * V;  // width <= kMaxTileLanes * V <= kThreads
#pragma unroll
  for (int i = 0; i < V; ++i) {
    buf[t * V + i] = a[i];
    buf[(kThreads + t) * V + i] = b[i];
  }
  __syncthreads();
  const int64_t c = s.tile * width + t;
  if (t < width && c < C) {
    float s1 = 0, s2 = 0;
    for (int r = 0; r < pl.R; ++r) {
      s1 += buf[r * width + t];
      s2 += buf[kThreads * V + r * width + t];
    }
    part[s.row * C + c] = s1;
    part[(pl.rows + s.row) * C + c] = s2;
  }
  __syncthreads();  // buf is free again
}

template <typename T, int V>
__global__ void __launch_bounds__(kThreads)
ina_stats_nhwc(const T* __restrict__ x, float* __restrict__ part, int64_t C, int64_t HW, NhwcPlan pl) {
  __shared__ float buf[2 * kThreads * V];
  for (int64_t work = blockIdx.x; work < pl.blocks; work += gridDim.x) {
    const NhwcSlice s = nhwc_slice(pl, HW, work, static_cast<int>(threadIdx.x));
    float a[V], b[V];
    nhwc_stats_lane<T, V>(x, C, HW, pl, s, a, b);
    merge_pixel_lanes<V>(a, b, pl, s, C, part, buf);
  }
}

template <typename T, int V>
__global__ void __launch_bounds__(kThreads)
ina_grad_sums_nhwc(const T* __restrict__ dy, const T* __restrict__ x, const float* __restrict__ mean,
                   const float* __restrict__ rstd, float* __restrict__ part, int64_t C, int64_t HW, float slope,
                   NhwcPlan pl) {
  __shared__ float buf[2 * kThreads * V];
  for (int64_t work = blockIdx.x; work < pl.blocks; work += gridDim.x) {
    const NhwcSlice s = nhwc_slice(pl, HW, work, static_cast<int>(threadIdx.x));
    float a[V], b[V];
    nhwc_grad_sums_lane<T, V>(dy, x, mean, rstd, slope, C, HW, pl, s, a, b);
    merge_pixel_lanes<V>(a, b, pl, s, C, part, buf);
  }
}

// Finish, per thread: rows warp, warp + kWarps, ... of image n's `chunks` rows, channel c.
WSC_HD void finish_lane(const float* part, int64_t rows, int64_t chunks, int64_t C, int64_t n, int64_t c, int warp,
                        double& s1, double& s2) {
  s1 = s2 = 0;
  if (c >= C) return;
  for (int64_t r = warp; r < chunks; r += kWarps) {
    const int64_t row = n * chunks + r;
    s1 += part[row * C + c];
    s2 += part[(rows + row) * C + c];
  }
}

// Finish: a block per image and run of 32 channels; the warps' sums added in order. Writes
// out1, out2 = mean, rstd (kStats: part holds the shifted sums of x) or the plane means of gp
// and gp * xhat.
template <bool kStats, typename T>
__global__ void __launch_bounds__(kThreads)
ina_finish_nhwc(const float* __restrict__ part, const T* __restrict__ x, float* __restrict__ out1,
                float* __restrict__ out2, int64_t N, int64_t C, int64_t HW, NhwcPlan pl, double eps) {
  __shared__ double sm[2 * kThreads];
  const int t = static_cast<int>(threadIdx.x);
  const int64_t groups = ceil_div(C, 32);
  for (int64_t work = blockIdx.x; work < N * groups; work += gridDim.x) {
    const int64_t n = work / groups, c = (work - n * groups) * 32 + t % 32;
    double s1, s2;
    finish_lane(part, pl.rows, pl.chunks, C, n, c, t / 32, s1, s2);
    sm[t] = s1;
    sm[kThreads + t] = s2;
    __syncthreads();
    if (t < 32 && c < C) {
      s1 = s2 = 0;
      for (int w = 0; w < kWarps; ++w) {
        s1 += sm[w * 32 + t];
        s2 += sm[kThreads + w * 32 + t];
      }
      if constexpr (kStats) {
        double mu, rs;
        stats_from_shifted_sums(load(x[n * HW * C + c]), s1, s2, HW, eps, mu, rs);
        out1[n * C + c] = static_cast<float>(mu);
        out2[n * C + c] = static_cast<float>(rs);
      } else {
        out1[n * C + c] = static_cast<float>(s1 / static_cast<double>(HW));
        out2[n * C + c] = static_cast<float>(s2 / static_cast<double>(HW));
      }
    }
    __syncthreads();  // sm is free again
  }
}

// Elementwise, pack q (V channels of one pixel; V divides C).
template <typename T, int V>
WSC_HD void nhwc_forward_pack(const T* x, T* y, const float* mean, const float* rstd, int64_t C, int64_t HW,
                              float slope, int64_t q) {
  const int64_t e = q * V, n = e / (HW * C), nc = n * C + e % C;
  const Pack<T, V> v = pack_at<V>(x + e);
  Pack<T, V> o;
  for (int i = 0; i < V; ++i) o.v[i] = store<T>(leaky<float>((load(v.v[i]) - mean[nc + i]) * rstd[nc + i], slope));
  pack_to<V>(y + e, o);
}

template <typename T, int V>
WSC_HD void nhwc_backward_pack(const T* dy, const T* x, const float* mean, const float* rstd, const float* mean_gp,
                               const float* mean_gp_xhat, T* dx, int64_t C, int64_t HW, float slope, int64_t q) {
  const int64_t e = q * V, n = e / (HW * C), nc = n * C + e % C;
  const Pack<T, V> g = pack_at<V>(dy + e), v = pack_at<V>(x + e);
  Pack<T, V> o;
  for (int i = 0; i < V; ++i) {
    const float rs = rstd[nc + i], xh = (load(v.v[i]) - mean[nc + i]) * rs;
    o.v[i] = store<T>(instance_norm_input_grad<float>(leaky_grad<float>(load(g.v[i]), xh, slope), xh, rs,
                                                      mean_gp[nc + i], mean_gp_xhat[nc + i]));
  }
  pack_to<V>(dx + e, o);
}

template <typename T, int V>
__global__ void __launch_bounds__(kThreads)
ina_forward_nhwc(const T* __restrict__ x, T* __restrict__ y, const float* __restrict__ mean,
                 const float* __restrict__ rstd, int64_t N, int64_t C, int64_t HW, float slope) {
  const int64_t packs = N * HW * C / V;
  for (int64_t it = global_thread(); it < packs; it += grid_threads())
    nhwc_forward_pack<T, V>(x, y, mean, rstd, C, HW, slope, packs - 1 - it);
}

template <typename T, int V>
__global__ void __launch_bounds__(kThreads)
ina_backward_nhwc(const T* __restrict__ dy, const T* __restrict__ x, const float* __restrict__ mean,
                  const float* __restrict__ rstd, const float* __restrict__ mean_gp,
                  const float* __restrict__ mean_gp_xhat, T* __restrict__ dx, int64_t N, int64_t C, int64_t HW,
                  float slope) {
  const int64_t packs = N * HW * C / V;
  for (int64_t it = global_thread(); it < packs; it += grid_threads())
    nhwc_backward_pack<T, V>(dy, x, mean, rstd, mean_gp, mean_gp_xhat, dx, C, HW, slope, packs - 1 - it);
}

// ---------------------------------------------------------------------------------------------
// Host side

// Blocks for `work` units of a block-per-unit kernel: at most what can be resident at once.
int block_grid(int64_t work) {
  const int64_t cap = sm_count() * kBlocksPerSm;
  return static_cast<int>(work < 1 ? 1 : (work < cap ? work : cap));
}

template <typename... Params, typename... Args>
void launch(const char* what, void (*kernel)(Params...), int blocks, cudaStream_t stream, Args... args) {
  kernel<<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(static_cast<Params>(args)...);
  check_launch(what);
}

template <typename T>
bool aligned_16(std::initializer_list<const T*> pointers) {
  for (const T* p : pointers)
    if (reinterpret_cast<uintptr_t>(p) % 16 != 0) return false;
  return true;
}

template <typename T, int V>
void forward_nchw(const T* x, T* y, float* mean, float* rstd, int64_t planes, int64_t HW, double eps, float slope,
                  cudaStream_t s) {
  launch("ina_forward_nchw", ina_forward_nchw<T, V>, block_grid(planes), s, x, y, mean, rstd, planes, HW, eps, slope);
}

template <typename T, int V>
void backward_nchw(const T* dy, const T* x, const float* mean, const float* rstd, T* dx, int64_t planes, int64_t HW,
                   float slope, cudaStream_t s) {
  launch("ina_backward_nchw", ina_backward_nchw<T, V>, block_grid(planes), s, dy, x, mean, rstd, dx, planes, HW,
         slope);
}

template <typename T, int V>
void forward_nhwc(const T* x, T* y, float* mean, float* rstd, int64_t N, int64_t C, int64_t HW, double eps,
                  float slope, cudaStream_t s) {
  const NhwcPlan pl = nhwc_plan(N, C, HW, V, sm_count());
  StreamScratch scratch(2 * pl.rows * C * sizeof(float), s, "instance_norm_act");
  float* part = scratch.at<float>(0);
  launch("ina_stats_nhwc", ina_stats_nhwc<T, V>, block_grid(pl.blocks), s, x, part, C, HW, pl);
  launch("ina_finish_nhwc", ina_finish_nhwc<true, T>, block_grid(N * ceil_div(C, 32)), s, part, x, mean, rstd,
         N, C, HW, pl, eps);
  launch("ina_forward_nhwc", ina_forward_nhwc<T, V>, grid_blocks(N * HW * C / V, kThreads), s, x, y, mean, rstd, N, C,
         HW, slope);
}

template <typename T, int V>
void backward_nhwc(const T* dy, const T* x, const float* mean, const float* rstd, T* dx, int64_t N, int64_t C,
                   int64_t HW, float slope, cudaStream_t s) {
  const NhwcPlan pl = nhwc_plan(N, C, HW, V, sm_count());
  // part[2][rows][C], then the two (N, C) plane means
  StreamScratch scratch((2 * pl.rows * C + 2 * N * C) * sizeof(float), s, "instance_norm_act");
  float* part = scratch.at<float>(0);
  float* mean_gp = part + 2 * pl.rows * C;
  float* mean_gp_xhat = mean_gp + N * C;
  launch("ina_grad_sums_nhwc", ina_grad_sums_nhwc<T, V>, block_grid(pl.blocks), s, dy, x, mean, rstd, part, C, HW,
         slope, pl);
  launch("ina_finish_nhwc", ina_finish_nhwc<false, T>, block_grid(N * ceil_div(C, 32)), s, part,
         static_cast<const T*>(nullptr), mean_gp, mean_gp_xhat, N, C, HW, pl, 0.0);
  launch("ina_backward_nhwc", ina_backward_nhwc<T, V>, grid_blocks(N * HW * C / V, kThreads), s, dy, x, mean, rstd,
         mean_gp, mean_gp_xhat, dx, N, C, HW, slope);
}

}  // namespace

template <typename T>
void instance_norm_act_forward_cuda(const T* x, T* y, float* mean, float* rstd, int64_t N, int64_t C, int64_t HW,
                                    double eps, double slope_d, bool channels_last, void* stream) {
  if (N * C * HW == 0) return;
  constexpr int P = kPackWidth<T>;
  const auto s = static_cast<cudaStream_t>(stream);
  const float slope = static_cast<float>(slope_d);
  const bool packable = aligned_16<T>({x, y});
  if (channels_last && C > 1) {  // with one channel the two layouts are the same memory
    if (C % P == 0 && packable) forward_nhwc<T, P>(x, y, mean, rstd, N, C, HW, eps, slope, s);
    else forward_nhwc<T, 1>(x, y, mean, rstd, N, C, HW, eps, slope, s);
  } else {
    if (HW % P == 0 && packable) forward_nchw<T, P>(x, y, mean, rstd, N * C, HW, eps, slope, s);
    else forward_nchw<T, 1>(x, y, mean, rstd, N * C, HW, eps, slope, s);
  }
}

template <typename T>
void instance_norm_act_backward_cuda(const T* dy, const T* x, const float* mean, const float* rstd, T* dx, int64_t N,
                                     int64_t C, int64_t HW, double slope_d, bool channels_last, void* stream) {
  if (N * C * HW == 0) return;
  constexpr int P = kPackWidth<T>;
  const auto s = static_cast<cudaStream_t>(stream);
  const float slope = static_cast<float>(slope_d);
  const bool packable = aligned_16<T>({dy, x, dx});
  if (channels_last && C > 1) {
    if (C % P == 0 && packable) backward_nhwc<T, P>(dy, x, mean, rstd, dx, N, C, HW, slope, s);
    else backward_nhwc<T, 1>(dy, x, mean, rstd, dx, N, C, HW, slope, s);
  } else {
    if (HW % P == 0 && packable) backward_nchw<T, P>(dy, x, mean, rstd, dx, N * C, HW, slope, s);
    else backward_nchw<T, 1>(dy, x, mean, rstd, dx, N * C, HW, slope, s);
  }
}

#define WSC_INSTANTIATE(T)                                                                                     \
  template void instance_norm_act_forward_cuda<T>(const T*, T*, float*, float*, int64_t, int64_t, int64_t,     \
                                                  double, double, bool, void*);                                \
  template void instance_norm_act_backward_cuda<T>(const T*, const T*, const float*, const float*, T*, int64_t, \
                                                   int64_t, int64_t, double, bool, void*);
WSC_INSTANTIATE(float)
WSC_INSTANTIATE(half_t)
WSC_INSTANTIATE(bf16_t)
#undef WSC_INSTANTIATE

}  // namespace wsc
