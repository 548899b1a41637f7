// CUDA kernels for attribute-injection normalization (AIN). The per-element math is in ain.h,
// shared with the CPU loops of ain_cpu.cpp; this file holds the tiling, the reductions and the
// launches. Statistics, mask and scratch are fp32 (S = float); all arithmetic is fp32, the sums
// over many partials fp64.
//
// Passes and bytes. E = N*C*H*W*s is one (N,C,H,W) tensor (s = element size), P = N*H*W*4 one
// fp32 per-pixel array, R*C*4 one array of per-(row, channel) partial sums (R rows, below).
//   forward   2 passes over h, 5E + P:
//     statistics    read h (E)                                           [NCHW: + nothing;
//                                                                         NHWC: + 2 partial arrays]
//     main          read h, gamma_att, beta_att (3E); write out (E), the mask (P)
//   backward  2 passes over h, 10E + 4P:
//     sweep 1       read dout, h, gamma_att, beta_att (4E), the mask (P) and dL/dm when given;
//                   write dgamma_att, dbeta_att (2E), dz = dL/dlogit (P), 5 partial arrays
//     plane sums    read the partial arrays (5 x R*C*4); write the (N,C) and (C,) results
//     sweep 2       read dout, h, gamma_att (3E), the mask and dz (2P); write dh (E)
//   The minimal counts (every input read once, every output written once) are 4E + P and
//   7E + P: the statistics of a plane must be complete before any of its outputs (and the
//   per-plane means of dhn before dh), so each direction makes two passes. The kernels order
//   their work so that the second pass starts where the first ended (the statistics and sweep 2
//   walk backwards): what the first pass left in L2 (50 MB on an H100) is read first. When h
//   fits in L2 (16 MiB at (8,256,64,64) bf16), the forward's second read of h should mostly hit.
//   R (rows of partial sums) is about 4 per SM: R*C*4 = 0.5 MB at C = 256 on 132 SMs, so the
//   backward's 5 arrays (written, then read) add ~3% to its bytes, the NHWC statistics' 2 ~3%
//   to the forward's.
//
// Tiling of the main forward and of sweep 1: the mask logit is a sum across channels per pixel,
// and the channel sums of the backward are sums across pixels per channel, so one block owns
// all C channels of a set of pixels of one image.
//   NCHW: a tile is TP pixels (one 128-byte row per channel: 64 16-bit or 32 fp32 values, 32
//     when unpacked). Thread (cl, jq) loads pack jq (V values) of the row of channels cl,
//     cl + CL, ... (CL = 32 channel lanes): each warp reads whole 128-byte rows. Pass one over
//     the channels accumulates the V logit (or mask-gradient) partials in registers and copies
//     the rows of h into shared memory (32 KB: 256 channels of bf16; channels beyond that are
//     read again from global memory, where L2 should still hold them); the CL partials of a
//     pixel are added in a fixed order through shared memory; pass two reads h from shared
//     memory. Sweep 1 adds the channel sums of a row with shuffles across the row's lanes and
//     keeps them, for a run of tiles of one image (a row of the partial arrays), in the row
//     entry that one thread owns.
//   NHWC: the C channels of a pixel are contiguous. A group of G lanes (a power of two up to
//     256) owns a pixel and its channel packs q, q + G, ... (KP of them, in registers: up to
//     2 of 16-bit packs, 4 otherwise), so loads are contiguous along C. The logit of a pixel is a shuffle sum over
//     the group (and through shared memory when G > 32); h stays in registers for the second
//     step, so no shared-memory copy is needed. Channel sums accumulate per lane over the
//     pixels of a row and are added over the block's groups in a fixed order at the row's end.
//     C is limited to 256 * KP * V (4096 packed, 1024 unpacked); larger C throws.
//   Statistics: NCHW, one block per (n, c) plane; NHWC, blocks over runs of pixels of one
//   image (coalesced along C), then a small kernel adds the rows per (n, c). Both sum x - shift
//   and (x - shift)^2 with shift = the plane's first value (stats_from_shifted_sums): fp32
//   runs of at most 64 packs (NCHW) or 1024 pixels (NHWC) per lane, added in fp64 across
//   lanes (NCHW) or rows (NHWC), so |mean| >> std keeps its precision, as on the CPU.
//   Sweep 2 is elementwise (dh from dhn recomputed from the inputs, as on the CPU).
//
// Packs: V = 16 bytes / s values per load and store when the unit-stride extent (HW for NCHW,
// C for NHWC) is a multiple of V and every tensor of the pass is 16-byte aligned, else V = 1.
// Indexing is 64-bit; grids are capped (blocks loop over their work), so any size launches.
// Results are deterministic: every sum is taken in a fixed order, no float atomics. (The rows
// of partial sums follow the SM count, so two GPU models may differ in the last bits.)
// Scratch (the partial arrays, dz, per-plane means) comes from cudaMallocAsync on the caller's
// stream and is released with cudaFreeAsync on the same stream (stream-ordered, capturable in
// a CUDA graph): this torch-free library cannot use torch's caching allocator, so the scratch
// is held by the device's default memory pool, outside torch's accounting.
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <stdexcept>
#include <string>

#include "ain.h"
#include "cuda_common.cuh"

namespace wsc {
using namespace cuda_common;
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr unsigned kFullMask = 0xffffffffu;
constexpr int64_t kStageBytes = 32 << 10;  // NCHW: shared-memory copy of a tile's rows of h
constexpr int kFlush = 64;                 // fp32 partial statistics move into fp64 every kFlush packs
constexpr int kMaxRegisterValues = 16;     // NHWC: KP * V values of per-pack state per lane

// Per-(n, c) sums of sweep 1, each split into the part without dz (known before the logit
// gradient) and the dz parts: sum dhn = A + w*sum(dz), sum dhn*hn = B + w*sum(dz*hn).
enum Sum { kA, kB, kGid, kBid, kDzHn, kSums };


__device__ __forceinline__ int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

__device__ __forceinline__ unsigned char* dynamic_smem() {
  extern __shared__ __align__(16) unsigned char ain_smem[];
  return ain_smem;
}

// Sum over aligned groups of `width` lanes (a power of two <= 32). Every lane of a group gets
// the same bits: each butterfly step adds the same two operands in both lanes.
template <typename A>
__device__ __forceinline__ A lanes_sum(A v, int width) {
  for (int o = width / 2; o > 0; o /= 2) v += __shfl_xor_sync(kFullMask, v, o);
  return v;
}

// Block sums of a and b, in every thread. sm: 2 * kWarps doubles.
__device__ __forceinline__ void block_sum2(double& a, double& b, double* sm) {
  a = lanes_sum(a, 32);
  b = lanes_sum(b, 32);
  if (threadIdx.x % 32 == 0) {
    sm[threadIdx.x / 32] = a;
    sm[kWarps + threadIdx.x / 32] = b;
  }
  __syncthreads();
  a = 0;
  b = 0;
  for (int i = 0; i < kWarps; ++i) {
    a += sm[i];
    b += sm[kWarps + i];
  }
  __syncthreads();  // sm is free again
}

// Sum over the G lanes of an NHWC pixel group (aligned runs of G threads, G a power of two up
// to kThreads), the same bits in every lane. When G > 32 it synchronises the block: every
// thread must call it alike. sm: kWarps floats.
__device__ __forceinline__ float group_sum(float v, int G, float* sm) {
  if (G <= 32) return lanes_sum(v, G);
  v = lanes_sum(v, 32);
  if (threadIdx.x % 32 == 0) sm[threadIdx.x / 32] = v;
  __syncthreads();
  const int first = static_cast<int>(threadIdx.x) / G * (G / 32);
  float s = 0;
  for (int i = 0; i < G / 32; ++i) s += sm[first + i];
  __syncthreads();
  return s;
}

// Sum over rows [0, R) of column c of a row-major [R][C] array, in a fixed order: the rows are
// split over the warps, the 32 columns of a block are the lanes. The total is returned to the
// threads of warp 0 (others get 0). sm: kThreads doubles.
template <typename P>
__device__ double column_sum(const P* rows, int64_t R, int64_t C, int64_t c, double* sm) {
  double s = 0;
  if (c < C)
    for (int64_t r = threadIdx.x / 32; r < R; r += kWarps) s += static_cast<double>(rows[r * C + c]);
  sm[threadIdx.x] = s;
  __syncthreads();
  double total = 0;
  if (threadIdx.x < 32)
    for (int w = 0; w < kWarps; ++w) total += sm[w * 32 + threadIdx.x];
  __syncthreads();
  return total;
}

// ---------------------------------------------------------------------------------------------
// Statistics

// NCHW: one block per (n, c) plane, the last plane first (the forward kernel starts at the first).
template <typename T, int V>
__global__ void __launch_bounds__(kThreads)
ain_stats_nchw(const T* __restrict__ h, float* __restrict__ mean, float* __restrict__ rstd, int64_t planes,
               int64_t HW, double eps) {
  __shared__ double sm[2 * kWarps];
  for (int64_t it = blockIdx.x; it < planes; it += gridDim.x) {
    const int64_t plane = planes - 1 - it;
    const T* x = h + plane * HW;
    const float shift = load(x[0]);
    double s1 = 0, s2 = 0;
    float a1 = 0, a2 = 0;
    int run = 0;
    for (int64_t p = static_cast<int64_t>(threadIdx.x) * V; p < HW; p += static_cast<int64_t>(kThreads) * V) {
      const Pack<T, V> v = load_pack<V>(x + p);
#pragma unroll
      for (int i = 0; i < V; ++i) {
        const float d = load(v.v[i]) - shift;
        a1 += d;
        a2 += d * d;
      }
      if (++run == kFlush) {
        s1 += a1;
        s2 += a2;
        a1 = a2 = 0;
        run = 0;
      }
    }
    s1 += a1;
    s2 += a2;
    block_sum2(s1, s2, sm);
    if (threadIdx.x == 0) {
      double mu, rs;
      stats_from_shifted_sums(shift, s1, s2, HW, eps, mu, rs);
      mean[plane] = static_cast<float>(mu);
      rstd[plane] = static_cast<float>(rs);
    }
  }
}

// NHWC pixel groups: thread t is lane q = t % G of group g = t / G; the block has kThreads / G
// groups. A row of the partial arrays is a run of `chunk` pixels of one image.
struct GroupLane {
  int g, q, groups;
  __device__ explicit GroupLane(int G)
      : g(static_cast<int>(threadIdx.x) / G), q(static_cast<int>(threadIdx.x) % G), groups(kThreads / G) {}
};

// Adds acc (channel (q + k*G)*V + i of this lane's group) over the block's groups in group
// order and writes the C totals to dst[0, C). buf: kThreads * kMaxRegisterValues floats, which
// holds groups * C values because C <= G * KP * V.
template <int V, int KP, typename D>
__device__ void merge_groups(const float (&acc)[KP][V], D* dst, int64_t C, int G, float* buf) {
  const GroupLane lane(G);
  const int64_t CP = C / V;
#pragma unroll
  for (int k = 0; k < KP; ++k) {
    const int64_t cp = lane.q + static_cast<int64_t>(k) * G;
    if (cp < CP)
#pragma unroll
      for (int i = 0; i < V; ++i) buf[lane.g * C + cp * V + i] = acc[k][i];
  }
  __syncthreads();
  for (int64_t c = threadIdx.x; c < C; c += kThreads) {
    float s = 0;
    for (int gg = 0; gg < lane.groups; ++gg) s += buf[gg * C + c];
    dst[c] = static_cast<D>(s);
  }
  __syncthreads();
}

// NHWC statistics, first step: per row (n, pixel run) and channel, the shifted sums.
// part: [2][rows][C] (sum of d, sum of d^2; d = x - the image's first pixel). Last row first.
template <typename T, int V, int KP>
__global__ void __launch_bounds__(kThreads)
ain_stats_nhwc(const T* __restrict__ h, float* __restrict__ part, int64_t C, int64_t HW, int64_t chunk,
               int64_t chunks, int64_t rows, int G) {
  static_assert(KP * V <= kMaxRegisterValues, "per-lane state");
  __shared__ float buf[kThreads * kMaxRegisterValues];
  const GroupLane lane(G);
  const int64_t CP = C / V;
  for (int64_t it = blockIdx.x; it < rows; it += gridDim.x) {
    const int64_t row = rows - 1 - it;
    const int64_t n = row / chunks, p0 = (row - n * chunks) * chunk, p1 = min64(HW, p0 + chunk);
    const T* img = h + n * HW * C;
    float shift[KP][V], a1[KP][V], a2[KP][V];
#pragma unroll
    for (int k = 0; k < KP; ++k) {
      const int64_t cp = lane.q + static_cast<int64_t>(k) * G;
#pragma unroll
      for (int i = 0; i < V; ++i) {
        shift[k][i] = cp < CP ? load(img[cp * V + i]) : 0.f;
        a1[k][i] = a2[k][i] = 0;
      }
    }
    // At most 1024 pixels per lane and row (the host sizes `chunk`): short fp32 runs.
#pragma unroll 4
    for (int64_t p = p0 + lane.g; p < p1; p += lane.groups) {
#pragma unroll
      for (int k = 0; k < KP; ++k) {
        const int64_t cp = lane.q + static_cast<int64_t>(k) * G;
        if (cp < CP) {
          const Pack<T, V> v = load_pack<V>(img + p * C + cp * V);
#pragma unroll
          for (int i = 0; i < V; ++i) {
            const float d = load(v.v[i]) - shift[k][i];
            a1[k][i] += d;
            a2[k][i] += d * d;
          }
        }
      }
    }
    merge_groups<V, KP>(a1, part + row * C, C, G, buf);
    merge_groups<V, KP>(a2, part + (rows + row) * C, C, G, buf);
  }
}

// NHWC statistics, second step: per (n, c), the rows of image n added in order.
template <typename T>
__global__ void __launch_bounds__(kThreads)
ain_stats_nhwc_finish(const T* __restrict__ h, const float* __restrict__ part, float* __restrict__ mean,
                      float* __restrict__ rstd, int64_t N, int64_t C, int64_t HW, int64_t chunks, double eps) {
  __shared__ double sm[kThreads];
  const int64_t cblocks = (C + 31) / 32, rows = N * chunks;
  for (int64_t bi = blockIdx.x; bi < N * cblocks; bi += gridDim.x) {
    const int64_t n = bi / cblocks, c = (bi - n * cblocks) * 32 + threadIdx.x % 32;
    const double s1 = column_sum(part + n * chunks * C, chunks, C, c, sm);
    const double s2 = column_sum(part + (rows + n * chunks) * C, chunks, C, c, sm);
    if (threadIdx.x < 32 && c < C) {
      double mu, rs;
      stats_from_shifted_sums(load(h[n * HW * C + c]), s1, s2, HW, eps, mu, rs);
      mean[n * C + c] = static_cast<float>(mu);
      rstd[n * C + c] = static_cast<float>(rs);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// NCHW tiles (see the top of the file): thread (cl, jq) handles pack jq of channels cl + k*CL.

template <typename T, int V>
struct NchwTile {
  static constexpr int TP = V == 1 ? 32 : 8 * V;  // pixels: 128 bytes per row when packed
  static constexpr int PW = TP / V;               // packs per row: lanes of one warp (8 or 32)
  static constexpr int CL = kThreads / PW;        // channel lanes
};

// Dynamic shared memory: rows of h for channels [0, Cs) (each thread reads back only the packs
// it stored), the CL logit partials of each pixel, and two per-pixel values (mask, dz).
template <typename T, int V>
size_t nchw_smem_bytes(int64_t Cs) {
  using Tile = NchwTile<T, V>;
  return static_cast<size_t>(Cs) * Tile::TP * sizeof(T) + static_cast<size_t>(Tile::CL + 2) * Tile::TP * sizeof(float);
}

template <typename T, int V>
__global__ void __launch_bounds__(kThreads)
ain_forward_nchw(const T* __restrict__ h, const T* __restrict__ g_id, const T* __restrict__ b_id,
                 const T* __restrict__ g_att, const T* __restrict__ b_att, const T* __restrict__ w,
                 const T* __restrict__ b, T* __restrict__ out, float* __restrict__ mask,
                 const float* __restrict__ mean, const float* __restrict__ rstd, int64_t N, int64_t C, int64_t HW,
                 int64_t Cs) {
  using Tile = NchwTile<T, V>;
  constexpr int TP = Tile::TP, PW = Tile::PW, CL = Tile::CL;
  T* stage = reinterpret_cast<T*>(dynamic_smem());
  float* red = reinterpret_cast<float*>(stage + Cs * TP);
  float* ms = red + CL * TP;
  const int t = static_cast<int>(threadIdx.x), j = (t % PW) * V, cl = t / PW;
  const int64_t tiles_per_image = (HW + TP - 1) / TP, tiles = N * tiles_per_image;
  const float bias = load(b[0]);
  for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    const int64_t n = tile / tiles_per_image, p0 = (tile - n * tiles_per_image) * TP;
    const int len = static_cast<int>(min64(HW - p0, TP));
    const bool active = j < len;  // V divides len
    float z[V];
#pragma unroll
    for (int i = 0; i < V; ++i) z[i] = 0;
    if (active) {
      for (int64_t c = cl; c < C; c += CL) {
        const int64_t at = (n * C + c) * HW + p0 + j;
        const Pack<T, V> x = load_pack<V>(h + at);
        if (c < Cs) store_pack<V>(stage + c * TP + j, x);
        const float mu = mean[n * C + c], rs = rstd[n * C + c], wc = load(w[c]);
#pragma unroll
        for (int i = 0; i < V; ++i) z[i] += wc * ((load(x.v[i]) - mu) * rs);
      }
    }
#pragma unroll
    for (int i = 0; i < V; ++i) red[cl * TP + j + i] = z[i];
    __syncthreads();
    if (t < len) {
      float zs = 0;
      for (int l = 0; l < CL; ++l) zs += red[l * TP + t];
      const float m = sigmoid<float>(zs + bias);
      ms[t] = m;
      mask[n * HW + p0 + t] = m;
    }
    __syncthreads();
    if (active) {
      float mv[V];
#pragma unroll
      for (int i = 0; i < V; ++i) mv[i] = ms[j + i];
#pragma unroll 1
      for (int64_t c = cl; c < C; c += CL) {
        const int64_t at = (n * C + c) * HW + p0 + j;
        const Pack<T, V> x = c < Cs ? load_pack<V>(stage + c * TP + j) : load_pack<V>(h + at);
        const Pack<T, V> ga = load_pack<V>(g_att + at), ba = load_pack<V>(b_att + at);
        const float mu = mean[n * C + c], rs = rstd[n * C + c];
        const float gi = load(g_id[n * C + c]), bi = load(b_id[n * C + c]);
        Pack<T, V> o;
#pragma unroll
        for (int i = 0; i < V; ++i)
          o.v[i] = store<T>(ain_value<float>((load(x.v[i]) - mu) * rs, mv[i], load(ga.v[i]), load(ba.v[i]), gi, bi));
        store_pack<V>(out + at, o);
      }
    }
    // No barrier before the next tile: its writes before its first barrier (stage, red) race
    // with nothing, as each thread reads back only the stage entries it wrote and red was read
    // before the second barrier above; ms is written after the next tile's first barrier.
  }
}

// Sweep 1, NCHW. A row of the partial arrays is a run of `chunk` tiles of one image; the entry
// (row, c) of each partial array is owned by the thread with jq == 0 of channel c's lane.
// part: [kSums][rows][C]; row_dz: [rows] (sums of dz); dz_out: [N*HW].
template <typename T, int V>
__global__ void __launch_bounds__(kThreads)
ain_backward_nchw_sweep1(const T* __restrict__ grad_out, const T* __restrict__ grad_mask_in,
                         const T* __restrict__ h, const T* __restrict__ g_id, const T* __restrict__ b_id,
                         const T* __restrict__ g_att, const T* __restrict__ b_att, const float* __restrict__ mask,
                         const float* __restrict__ mean, const float* __restrict__ rstd, T* __restrict__ grad_g_att,
                         T* __restrict__ grad_b_att, float* __restrict__ dz_out, float* __restrict__ part,
                         float* __restrict__ row_dz, int64_t N, int64_t C, int64_t HW, int64_t Cs, int64_t chunk,
                         int64_t chunks) {
  using Tile = NchwTile<T, V>;
  constexpr int TP = Tile::TP, PW = Tile::PW, CL = Tile::CL;
  T* stage = reinterpret_cast<T*>(dynamic_smem());
  float* red = reinterpret_cast<float*>(stage + Cs * TP);
  float* ms = red + CL * TP;
  float* dzs = ms + TP;
  const int t = static_cast<int>(threadIdx.x), jq = t % PW, j = jq * V, cl = t / PW;
  const int64_t tiles_per_image = (HW + TP - 1) / TP, rows = N * chunks, plane_stride = rows * C;
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const int64_t n = row / chunks, first_tile = (row - n * chunks) * chunk;
    const int64_t last_tile = min64(tiles_per_image, first_tile + chunk);
    float* row_part = part + row * C;
    for (int64_t tile = first_tile; tile < last_tile; ++tile) {
      const bool first = tile == first_tile;
      const int64_t p0 = tile * TP;
      const int len = static_cast<int>(min64(HW - p0, TP));
      const bool active = j < len;
      if (t < len) ms[t] = mask[n * HW + p0 + t];
      // Also the previous tile's end: after its last barrier it reads only stage and dzs, which
      // this tile writes after this point.
      __syncthreads();
      float mv[V], dm[V];
#pragma unroll
      for (int i = 0; i < V; ++i) {
        mv[i] = active ? ms[j + i] : 0.f;
        dm[i] = 0;
      }
      // Pass one: the mask gradient partials, the attribute gradients and the sums without dz.
      // Every lane runs the same number of iterations: the row sums shuffle across lanes.
      for (int64_t c0 = 0; c0 < C; c0 += CL) {
        const int64_t c = c0 + cl;
        float s[kDzHn] = {0, 0, 0, 0};
        if (active && c < C) {
          const int64_t at = (n * C + c) * HW + p0 + j;
          const Pack<T, V> gp = load_pack<V>(grad_out + at), x = load_pack<V>(h + at);
          const Pack<T, V> ga = load_pack<V>(g_att + at), ba = load_pack<V>(b_att + at);
          if (c < Cs) store_pack<V>(stage + c * TP + j, x);
          const float mu = mean[n * C + c], rs = rstd[n * C + c];
          const float gi = load(g_id[n * C + c]), bi = load(b_id[n * C + c]);
          Pack<T, V> dga, dba;
#pragma unroll
          for (int i = 0; i < V; ++i) {
            const float gv = load(gp.v[i]), hn = (load(x.v[i]) - mu) * rs, gav = load(ga.v[i]);
            dm[i] += ain_mask_grad_term<float>(gv, hn, gav, load(ba.v[i]), gi, bi);
            dga.v[i] = store<T>(gv * (1.f - mv[i]) * hn);
            dba.v[i] = store<T>(gv * (1.f - mv[i]));
            const float dhn = ain_hn_grad<float>(gv, mv[i], gav, gi, 0.f, 0.f);  // dhn less its dz term
            s[kA] += dhn;
            s[kB] += dhn * hn;
            s[kGid] += gv * mv[i] * hn;
            s[kBid] += gv * mv[i];
          }
          store_pack<V>(grad_g_att + at, dga);
          store_pack<V>(grad_b_att + at, dba);
        }
#pragma unroll
        for (int k = 0; k < kDzHn; ++k) s[k] = lanes_sum(s[k], PW);
        if (jq == 0 && c < C)
#pragma unroll
          for (int k = 0; k < kDzHn; ++k) row_part[k * plane_stride + c] = first ? s[k] : row_part[k * plane_stride + c] + s[k];
      }
#pragma unroll
      for (int i = 0; i < V; ++i) red[cl * TP + j + i] = dm[i];
      __syncthreads();
      if (t < len) {
        const int64_t px = n * HW + p0 + t;
        float dmt = grad_mask_in ? load(grad_mask_in[px]) : 0.f;
        for (int l = 0; l < CL; ++l) dmt += red[l * TP + t];
        const float dz = ain_logit_grad<float>(dmt, ms[t]);
        dzs[t] = dz;
        dz_out[px] = dz;
      }
      __syncthreads();
      if (t < 32) {  // the tile's sum of dz, in a fixed order
        float sz = 0;
        for (int p = t; p < len; p += 32) sz += dzs[p];
        sz = lanes_sum(sz, 32);
        if (t == 0) row_dz[row] = first ? sz : row_dz[row] + sz;
      }
      // Pass two: sum of dz * hn per channel, h from shared memory.
      for (int64_t c0 = 0; c0 < C; c0 += CL) {
        const int64_t c = c0 + cl;
        float s = 0;
        if (active && c < C) {
          const int64_t at = (n * C + c) * HW + p0 + j;
          const Pack<T, V> x = c < Cs ? load_pack<V>(stage + c * TP + j) : load_pack<V>(h + at);
          const float mu = mean[n * C + c], rs = rstd[n * C + c];
#pragma unroll
          for (int i = 0; i < V; ++i) s += dzs[j + i] * ((load(x.v[i]) - mu) * rs);
        }
        s = lanes_sum(s, PW);
        if (jq == 0 && c < C)
          row_part[kDzHn * plane_stride + c] = first ? s : row_part[kDzHn * plane_stride + c] + s;
      }
    }
  }
}

// Sweep 2, NCHW: a thread owns V pixels of one image (consecutive threads, consecutive packs)
// and loops over the channels. Walks backwards: sweep 1 ended at the last image.
template <typename T, int V>
__global__ void __launch_bounds__(kThreads)
ain_backward_nchw_sweep2(const T* __restrict__ grad_out, const T* __restrict__ h, const T* __restrict__ g_id,
                         const T* __restrict__ g_att, const T* __restrict__ w, const float* __restrict__ mask,
                         const float* __restrict__ mean, const float* __restrict__ rstd, const float* __restrict__ dz,
                         const float* __restrict__ mean_dz, const float* __restrict__ mean_dhn_base,
                         const float* __restrict__ mean_dhn_hn, T* __restrict__ grad_h, int64_t N, int64_t C,
                         int64_t HW) {
  const int64_t per_image = HW / V, groups = N * per_image;
  for (int64_t it = global_thread(); it < groups; it += grid_threads()) {
    const int64_t group = groups - 1 - it;
    const int64_t n = group / per_image, p = (group - n * per_image) * V;
    float mv[V], dzv[V];
#pragma unroll
    for (int i = 0; i < V; ++i) {
      mv[i] = mask[n * HW + p + i];
      dzv[i] = dz[n * HW + p + i] - mean_dz[n];
    }
#pragma unroll 1
    for (int64_t c = 0; c < C; ++c) {
      const int64_t nc = n * C + c, at = nc * HW + p;
      const Pack<T, V> gp = load_pack<V>(grad_out + at), x = load_pack<V>(h + at), ga = load_pack<V>(g_att + at);
      const float mu = mean[nc], rs = rstd[nc], gi = load(g_id[nc]), wc = load(w[c]);
      const float md = mean_dhn_base[nc], mdh = mean_dhn_hn[nc];
      Pack<T, V> o;
#pragma unroll
      for (int i = 0; i < V; ++i) {
        const float hn = (load(x.v[i]) - mu) * rs;
        const float dhn = ain_hn_grad<float>(load(gp.v[i]), mv[i], load(ga.v[i]), gi, dzv[i], wc);
        o.v[i] = store<T>(ain_input_grad<float>(dhn, hn, rs, md, mdh));
      }
      store_pack<V>(grad_h + at, o);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// NHWC pixel groups (see the top of the file).

template <typename T, int V, int KP>
__global__ void __launch_bounds__(kThreads)
ain_forward_nhwc(const T* __restrict__ h, const T* __restrict__ g_id, const T* __restrict__ b_id,
                 const T* __restrict__ g_att, const T* __restrict__ b_att, const T* __restrict__ w,
                 const T* __restrict__ b, T* __restrict__ out, float* __restrict__ mask,
                 const float* __restrict__ mean, const float* __restrict__ rstd, int64_t N, int64_t C, int64_t HW,
                 int G) {
  static_assert(KP * V <= kMaxRegisterValues, "per-lane state");
  __shared__ float sm[kWarps];
  const GroupLane lane(G);
  const int64_t CP = C / V, pixels = N * HW;
  const float bias = load(b[0]);
  // Every thread runs the same iterations: group_sum may synchronise the block.
  for (int64_t base = static_cast<int64_t>(blockIdx.x) * lane.groups; base < pixels;
       base += static_cast<int64_t>(gridDim.x) * lane.groups) {
    const int64_t px = base + lane.g;
    const bool active = px < pixels;
    const int64_t nC = active ? px / HW * C : 0;
    Pack<T, V> x[KP];
    float zp = 0;
#pragma unroll
    for (int k = 0; k < KP; ++k) {
      const int64_t cp = lane.q + static_cast<int64_t>(k) * G;
      if (active && cp < CP) {
        x[k] = load_pack<V>(h + px * C + cp * V);
#pragma unroll
        for (int i = 0; i < V; ++i) {
          const int64_t c = cp * V + i;
          zp += load(w[c]) * ((load(x[k].v[i]) - mean[nC + c]) * rstd[nC + c]);
        }
      }
    }
    const float m = sigmoid<float>(group_sum(zp, G, sm) + bias);
    if (active && lane.q == 0) mask[px] = m;
#pragma unroll
    for (int k = 0; k < KP; ++k) {
      const int64_t cp = lane.q + static_cast<int64_t>(k) * G;
      if (active && cp < CP) {
        const int64_t at = px * C + cp * V;
        const Pack<T, V> ga = load_pack<V>(g_att + at), ba = load_pack<V>(b_att + at);
        Pack<T, V> o;
#pragma unroll
        for (int i = 0; i < V; ++i) {
          const int64_t c = cp * V + i;
          const float hn = (load(x[k].v[i]) - mean[nC + c]) * rstd[nC + c];
          o.v[i] = store<T>(ain_value<float>(hn, m, load(ga.v[i]), load(ba.v[i]), load(g_id[nC + c]), load(b_id[nC + c])));
        }
        store_pack<V>(out + at, o);
      }
    }
  }
}

// Sweep 1, NHWC. A row of the partial arrays is a run of `chunk` pixels of one image: its
// groups take the pixels in turn, each lane sums its channels over its pixels in registers,
// and the groups' sums are added in group order at the row's end.
template <typename T, int V, int KP>
__global__ void __launch_bounds__(kThreads)
ain_backward_nhwc_sweep1(const T* __restrict__ grad_out, const T* __restrict__ grad_mask_in,
                         const T* __restrict__ h, const T* __restrict__ g_id, const T* __restrict__ b_id,
                         const T* __restrict__ g_att, const T* __restrict__ b_att, const float* __restrict__ mask,
                         const float* __restrict__ mean, const float* __restrict__ rstd, T* __restrict__ grad_g_att,
                         T* __restrict__ grad_b_att, float* __restrict__ dz_out, float* __restrict__ part,
                         float* __restrict__ row_dz, int64_t N, int64_t C, int64_t HW, int64_t chunk,
                         int64_t chunks, int G) {
  static_assert(KP * V <= kMaxRegisterValues, "per-lane state");
  __shared__ float sm[kWarps];
  __shared__ float buf[kThreads * kMaxRegisterValues];
  const GroupLane lane(G);
  const int64_t CP = C / V, rows = N * chunks, plane_stride = rows * C;
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const int64_t n = row / chunks, p0 = (row - n * chunks) * chunk, p1 = min64(HW, p0 + chunk);
    float acc[kSums][KP][V];
#pragma unroll
    for (int s = 0; s < kSums; ++s)
#pragma unroll
      for (int k = 0; k < KP; ++k)
#pragma unroll
        for (int i = 0; i < V; ++i) acc[s][k][i] = 0;
    float dz_sum = 0;  // lane 0: this group's pixels
    for (int64_t base = p0; base < p1; base += lane.groups) {  // the same iterations in every thread
      const int64_t p = base + lane.g, px = n * HW + p;
      const bool active = p < p1;
      const float mv = active ? mask[px] : 0.f;
      float hn[KP][V];
      float dmp = 0;
#pragma unroll
      for (int k = 0; k < KP; ++k) {
        const int64_t cp = lane.q + static_cast<int64_t>(k) * G;
        if (active && cp < CP) {
          const int64_t at = px * C + cp * V;
          const Pack<T, V> gp = load_pack<V>(grad_out + at), x = load_pack<V>(h + at);
          const Pack<T, V> ga = load_pack<V>(g_att + at), ba = load_pack<V>(b_att + at);
          Pack<T, V> dga, dba;
#pragma unroll
          for (int i = 0; i < V; ++i) {
            const int64_t nc = n * C + cp * V + i;
            const float gv = load(gp.v[i]), gav = load(ga.v[i]), gi = load(g_id[nc]);
            hn[k][i] = (load(x.v[i]) - mean[nc]) * rstd[nc];
            dmp += ain_mask_grad_term<float>(gv, hn[k][i], gav, load(ba.v[i]), gi, load(b_id[nc]));
            dga.v[i] = store<T>(gv * (1.f - mv) * hn[k][i]);
            dba.v[i] = store<T>(gv * (1.f - mv));
            const float dhn = ain_hn_grad<float>(gv, mv, gav, gi, 0.f, 0.f);  // dhn less its dz term
            acc[kA][k][i] += dhn;
            acc[kB][k][i] += dhn * hn[k][i];
            acc[kGid][k][i] += gv * mv * hn[k][i];
            acc[kBid][k][i] += gv * mv;
          }
          store_pack<V>(grad_g_att + at, dga);
          store_pack<V>(grad_b_att + at, dba);
        }
      }
      float dm = group_sum(dmp, G, sm);
      if (grad_mask_in && active) dm += load(grad_mask_in[px]);
      const float dz = ain_logit_grad<float>(dm, mv);
      if (active && lane.q == 0) {
        dz_out[px] = dz;
        dz_sum += dz;
      }
#pragma unroll
      for (int k = 0; k < KP; ++k) {
        const int64_t cp = lane.q + static_cast<int64_t>(k) * G;
        if (active && cp < CP)
#pragma unroll
          for (int i = 0; i < V; ++i) acc[kDzHn][k][i] += dz * hn[k][i];
      }
    }
#pragma unroll
    for (int s = 0; s < kSums; ++s) merge_groups<V, KP>(acc[s], part + s * plane_stride + row * C, C, G, buf);
    if (lane.q == 0) buf[lane.g] = dz_sum;
    __syncthreads();
    if (threadIdx.x == 0) {
      float s = 0;
      for (int gg = 0; gg < lane.groups; ++gg) s += buf[gg];
      row_dz[row] = s;
    }
    __syncthreads();
  }
}

// Sweep 2, NHWC: a group per pixel, lanes over the channel packs. Walks backwards.
template <typename T, int V>
__global__ void __launch_bounds__(kThreads)
ain_backward_nhwc_sweep2(const T* __restrict__ grad_out, const T* __restrict__ h, const T* __restrict__ g_id,
                         const T* __restrict__ g_att, const T* __restrict__ w, const float* __restrict__ mask,
                         const float* __restrict__ mean, const float* __restrict__ rstd, const float* __restrict__ dz,
                         const float* __restrict__ mean_dz, const float* __restrict__ mean_dhn_base,
                         const float* __restrict__ mean_dhn_hn, T* __restrict__ grad_h, int64_t N, int64_t C,
                         int64_t HW, int G) {
  const GroupLane lane(G);
  const int64_t CP = C / V, pixels = N * HW;
  for (int64_t base = static_cast<int64_t>(blockIdx.x) * lane.groups; base < pixels;
       base += static_cast<int64_t>(gridDim.x) * lane.groups) {
    if (base + lane.g >= pixels) break;
    const int64_t px = pixels - 1 - (base + lane.g);
    const int64_t n = px / HW, nC = n * C;
    const float mv = mask[px], dzv = dz[px] - mean_dz[n];
#pragma unroll 1
    for (int64_t cp = lane.q; cp < CP; cp += G) {
      const int64_t at = px * C + cp * V;
      const Pack<T, V> gp = load_pack<V>(grad_out + at), x = load_pack<V>(h + at), ga = load_pack<V>(g_att + at);
      Pack<T, V> o;
#pragma unroll
      for (int i = 0; i < V; ++i) {
        const int64_t c = cp * V + i, nc = nC + c;
        const float rs = rstd[nc], hn = (load(x.v[i]) - mean[nc]) * rs;
        const float dhn = ain_hn_grad<float>(load(gp.v[i]), mv, load(ga.v[i]), load(g_id[nc]), dzv, load(w[c]));
        o.v[i] = store<T>(ain_input_grad<float>(dhn, hn, rs, mean_dhn_base[nc], mean_dhn_hn[nc]));
      }
      store_pack<V>(grad_h + at, o);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Between the sweeps: per (n, c), the rows of image n added in order (both layouts). Writes the
// gradients of gamma_id and beta_id, the means sweep 2 needs, and per (n, c) / per n the sums
// of dz*hn and dz that ain_backward_finish adds over n.
// Sweep 2 centres before it combines: dhn - mean(dhn) = (dhn_base - mean(dhn_base))
// + w*(dz - mean(dz)) with dhn_base = dhn less its dz term. Each difference is exact when the
// plane is one pixel (then dh is exactly 0, as in the reference) and loses nothing otherwise.
template <typename T>
__global__ void __launch_bounds__(kThreads)
ain_backward_planes(const float* __restrict__ part, const float* __restrict__ row_dz, const T* __restrict__ w,
                    float* __restrict__ mean_dhn_base, float* __restrict__ mean_dhn_hn, float* __restrict__ mean_dz,
                    T* __restrict__ grad_g_id, T* __restrict__ grad_b_id, double* __restrict__ dz_hn_total,
                    double* __restrict__ dz_total, int64_t N, int64_t C, int64_t HW, int64_t chunks) {
  __shared__ double sm[kThreads];
  const int64_t cblocks = C > 0 ? (C + 31) / 32 : 1, rows = N * chunks, plane_stride = rows * C;
  for (int64_t bi = blockIdx.x; bi < N * cblocks; bi += gridDim.x) {
    const int64_t n = bi / cblocks, cb = bi - n * cblocks, c = cb * 32 + threadIdx.x % 32;
    double s[kSums];
#pragma unroll
    for (int k = 0; k < kSums; ++k) s[k] = column_sum(part + k * plane_stride + n * chunks * C, chunks, C, c, sm);
    const double dz = column_sum(row_dz + n * chunks, chunks, int64_t(1), int64_t(0), sm);
    if (threadIdx.x < 32 && c < C) {
      const int64_t nc = n * C + c;
      const double wc = load(w[c]);
      mean_dhn_base[nc] = static_cast<float>(s[kA] / static_cast<double>(HW));
      mean_dhn_hn[nc] = static_cast<float>((s[kB] + wc * s[kDzHn]) / static_cast<double>(HW));
      grad_g_id[nc] = store<T>(static_cast<float>(s[kGid]));
      grad_b_id[nc] = store<T>(static_cast<float>(s[kBid]));
      dz_hn_total[nc] = s[kDzHn];
    }
    if (threadIdx.x == 0 && cb == 0) {
      dz_total[n] = dz;
      mean_dz[n] = static_cast<float>(dz / static_cast<double>(HW));
    }
  }
}

// The gradients of mask_weight and mask_bias: sums over the images, in order.
template <typename T>
__global__ void __launch_bounds__(kThreads)
ain_backward_finish(const double* __restrict__ dz_hn_total, const double* __restrict__ dz_total, T* __restrict__ grad_w,
                    T* __restrict__ grad_b, int64_t N, int64_t C) {
  for (int64_t c = global_thread(); c < C; c += grid_threads()) {
    double s = 0;
    for (int64_t n = 0; n < N; ++n) s += dz_hn_total[n * C + c];
    grad_w[c] = store<T>(static_cast<float>(s));
  }
  if (global_thread() == 0) {
    double s = 0;
    for (int64_t n = 0; n < N; ++n) s += dz_total[n];
    grad_b[0] = store<T>(static_cast<float>(s));
  }
}

// ---------------------------------------------------------------------------------------------
// Host side



// Blocks for `work` units of a grid-stride kernel: no more than can be resident at once.
template <typename... Params>
int64_t grid_for(void (*kernel)(Params...), int64_t work, size_t smem) {
  int per_sm = 0;
  if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, smem) != cudaSuccess) {
    cudaGetLastError();
    per_sm = 1;
  }
  const int64_t cap = sm_count() * (per_sm > 0 ? per_sm : 1);
  return work < cap ? (work > 0 ? work : 1) : cap;
}

template <typename... Params, typename... Args>
void launch(const char* what, void (*kernel)(Params...), int64_t work, size_t smem, cudaStream_t stream, Args... args) {
  const int64_t blocks = grid_for(kernel, work, smem);
  kernel<<<static_cast<unsigned>(blocks), kThreads, smem, stream>>>(static_cast<Params>(args)...);
  check_launch(what);
}

// Offsets of consecutive scratch arrays, each 256-byte aligned.
struct ScratchLayout {
  size_t total = 0;
  template <typename U>
  size_t add(int64_t count) {
    const size_t at = total;
    total += (static_cast<size_t>(count) * sizeof(U) + 255) / 256 * 256;
    return at;
  }
};

template <typename T>
constexpr int kPackWidth = static_cast<int>(16 / sizeof(T));

template <typename T>
bool aligned_16(std::initializer_list<const T*> pointers) {
  for (const T* p : pointers)
    if (reinterpret_cast<uintptr_t>(p) % 16 != 0) return false;
  return true;
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Rows of partial sums per image: about 4 per SM in all, at most one per unit of work. Each row
// is one block's work, so fewer rows would leave too few loads in flight per SM to cover HBM
// latency; more rows would make the partial arrays a larger share of the bytes.
int64_t chunks_per_image(int64_t N, int64_t units_per_image) {
  const int64_t want = ceil_div(4 * sm_count(), N);
  return want < units_per_image ? want : units_per_image;
}

// NHWC groups: the fewest packs per lane (KP) that let a group of at most kThreads lanes hold
// the CP packs of a pixel; G is the next power of two.
struct Groups {
  int G, KP;
};
template <int V>
Groups nhwc_groups(int64_t C) {
  constexpr int kMaxKP = kMaxRegisterValues / V < 4 ? kMaxRegisterValues / V : 4;
  const int64_t CP = C / V;
  for (int kp = 1; kp <= kMaxKP; kp *= 2) {
    const int64_t per = ceil_div(CP, kp);
    if (per <= kThreads) {
      int G = 1;
      while (G < per) G *= 2;
      return {G, kp};
    }
  }
  throw std::runtime_error("ain (CUDA, channels_last): C = " + std::to_string(C) + " is more than the " +
                           std::to_string(int64_t(kThreads) * kMaxKP * V) +
                           " channels the NHWC kernels hold per pixel for this dtype and alignment; "
                           "pass h (and gamma_att, beta_att) contiguous instead");
}

// NHWC rows: runs of `chunk` pixels of one image, at least a group's turn long, and at most
// 1024 pixels per lane so the fp32 partial statistics stay short.
struct Rows {
  int64_t chunk, chunks;
};
Rows nhwc_rows(int64_t N, int64_t HW, int G) {
  const int64_t groups = kThreads / G;
  int64_t chunks = chunks_per_image(N, ceil_div(HW, groups));
  const int64_t fp32_runs = ceil_div(HW, 1024 * groups);
  if (chunks < fp32_runs) chunks = fp32_runs;
  const int64_t chunk = ceil_div(HW, chunks);
  return {chunk, ceil_div(HW, chunk)};
}

template <typename T, int V>
void forward_nchw(const T* h, const T* g_id, const T* b_id, const T* g_att, const T* b_att, const T* w, const T* b,
                  T* out, float* mask, float* mean, float* rstd, int64_t N, int64_t C, int64_t HW, double eps,
                  cudaStream_t s) {
  using Tile = NchwTile<T, V>;
  if (C > 0) launch("ain_stats_nchw", ain_stats_nchw<T, V>, N * C, 0, s, h, mean, rstd, N * C, HW, eps);
  const int64_t max_staged = kStageBytes / (Tile::TP * static_cast<int64_t>(sizeof(T)));
  const int64_t Cs = C < max_staged ? C : max_staged;
  launch("ain_forward_nchw", ain_forward_nchw<T, V>, N * ceil_div(HW, Tile::TP), nchw_smem_bytes<T, V>(Cs), s, h,
         g_id, b_id, g_att, b_att, w, b, out, mask, mean, rstd, N, C, HW, Cs);
}

template <typename T, int V, int KP>
void forward_nhwc_groups(const T* h, const T* g_id, const T* b_id, const T* g_att, const T* b_att, const T* w,
                         const T* b, T* out, float* mask, float* mean, float* rstd, int64_t N, int64_t C,
                         int64_t HW, double eps, int G, cudaStream_t s) {
  const Rows r = nhwc_rows(N, HW, G);
  const int64_t rows = N * r.chunks;
  ScratchLayout layout;
  const size_t at_part = layout.add<float>(2 * rows * C);
  StreamScratch scratch(layout.total, s, "ain");
  float* part = scratch.at<float>(at_part);
  launch("ain_stats_nhwc", ain_stats_nhwc<T, V, KP>, rows, 0, s, h, part, C, HW, r.chunk, r.chunks, rows, G);
  launch("ain_stats_nhwc_finish", ain_stats_nhwc_finish<T>, N * ceil_div(C, 32), 0, s, h, part, mean, rstd, N, C,
         HW, r.chunks, eps);
  launch("ain_forward_nhwc", ain_forward_nhwc<T, V, KP>, ceil_div(N * HW, kThreads / G), 0, s, h, g_id, b_id, g_att,
         b_att, w, b, out, mask, mean, rstd, N, C, HW, G);
}

template <typename T, int V>
void forward_nhwc(const T* h, const T* g_id, const T* b_id, const T* g_att, const T* b_att, const T* w, const T* b,
                  T* out, float* mask, float* mean, float* rstd, int64_t N, int64_t C, int64_t HW, double eps,
                  cudaStream_t s) {
  const Groups gr = nhwc_groups<V>(C);
  if (gr.KP == 1) {
    forward_nhwc_groups<T, V, 1>(h, g_id, b_id, g_att, b_att, w, b, out, mask, mean, rstd, N, C, HW, eps, gr.G, s);
  } else if (gr.KP == 2) {
    forward_nhwc_groups<T, V, 2>(h, g_id, b_id, g_att, b_att, w, b, out, mask, mean, rstd, N, C, HW, eps, gr.G, s);
  } else if constexpr (4 * V <= kMaxRegisterValues) {
    forward_nhwc_groups<T, V, 4>(h, g_id, b_id, g_att, b_att, w, b, out, mask, mean, rstd, N, C, HW, eps, gr.G, s);
  }
}

// Backward scratch: dz per pixel, the partial arrays and their row sums of dz, the means of
// sweep 2 and the per-(n, c) and per-n sums that ain_backward_finish adds over n.
struct BackwardScratch {
  float *dz, *part, *row_dz, *mean_dhn_base, *mean_dhn_hn, *mean_dz;
  double *dz_hn_total, *dz_total;
};

template <typename T>
struct BackwardArgs {
  const T *grad_out, *grad_mask_in, *h, *g_id, *b_id, *g_att, *b_att, *w;
  const float *mask, *mean, *rstd;
  T *grad_h, *grad_g_id, *grad_b_id, *grad_g_att, *grad_b_att, *grad_w, *grad_b;
  int64_t N, C, HW;
};

// Runs sweep 1 (given as a callable taking the scratch), the plane sums, the finish and sweep 2.
template <typename T, typename Sweep1, typename Sweep2>
void backward_common(const BackwardArgs<T>& a, int64_t chunks, cudaStream_t s, Sweep1 sweep1, Sweep2 sweep2) {
  const int64_t rows = a.N * chunks;
  ScratchLayout layout;
  const size_t at_dz = layout.add<float>(a.N * a.HW), at_part = layout.add<float>(kSums * rows * a.C);
  const size_t at_row_dz = layout.add<float>(rows), at_mean_dhn_base = layout.add<float>(a.N * a.C);
  const size_t at_mean_dhn_hn = layout.add<float>(a.N * a.C), at_mean_dz = layout.add<float>(a.N);
  const size_t at_dz_hn = layout.add<double>(a.N * a.C), at_dz_total = layout.add<double>(a.N);
  StreamScratch scratch(layout.total, s, "ain");
  const BackwardScratch b{scratch.at<float>(at_dz),          scratch.at<float>(at_part),
                          scratch.at<float>(at_row_dz),      scratch.at<float>(at_mean_dhn_base),
                          scratch.at<float>(at_mean_dhn_hn), scratch.at<float>(at_mean_dz),
                          scratch.at<double>(at_dz_hn),      scratch.at<double>(at_dz_total)};
  sweep1(b);
  launch("ain_backward_planes", ain_backward_planes<T>, a.N * (a.C > 0 ? ceil_div(a.C, 32) : 1), 0, s, b.part,
         b.row_dz, a.w, b.mean_dhn_base, b.mean_dhn_hn, b.mean_dz, a.grad_g_id, a.grad_b_id, b.dz_hn_total, b.dz_total, a.N, a.C,
         a.HW, chunks);
  launch("ain_backward_finish", ain_backward_finish<T>, ceil_div(a.C > 0 ? a.C : 1, kThreads), 0, s, b.dz_hn_total,
         b.dz_total, a.grad_w, a.grad_b, a.N, a.C);
  if (a.C > 0) sweep2(b);
}

template <typename T, int V>
void backward_nchw(const BackwardArgs<T>& a, cudaStream_t s) {
  using Tile = NchwTile<T, V>;
  const int64_t tiles_per_image = ceil_div(a.HW, Tile::TP);
  const int64_t chunks0 = chunks_per_image(a.N, tiles_per_image);
  const int64_t chunk = ceil_div(tiles_per_image, chunks0), chunks = ceil_div(tiles_per_image, chunk);
  const int64_t max_staged = kStageBytes / (Tile::TP * static_cast<int64_t>(sizeof(T)));
  const int64_t Cs = a.C < max_staged ? a.C : max_staged;
  backward_common<T>(
      a, chunks, s,
      [&](const BackwardScratch& b) {
        launch("ain_backward_nchw_sweep1", ain_backward_nchw_sweep1<T, V>, a.N * chunks, nchw_smem_bytes<T, V>(Cs), s,
               a.grad_out, a.grad_mask_in, a.h, a.g_id, a.b_id, a.g_att, a.b_att, a.mask, a.mean, a.rstd,
               a.grad_g_att, a.grad_b_att, b.dz, b.part, b.row_dz, a.N, a.C, a.HW, Cs, chunk, chunks);
      },
      [&](const BackwardScratch& b) {
        launch("ain_backward_nchw_sweep2", ain_backward_nchw_sweep2<T, V>, ceil_div(a.N * a.HW / V, kThreads), 0, s,
               a.grad_out, a.h, a.g_id, a.g_att, a.w, a.mask, a.mean, a.rstd, b.dz, b.mean_dz, b.mean_dhn_base, b.mean_dhn_hn,
               a.grad_h, a.N, a.C, a.HW);
      });
}

template <typename T, int V, int KP>
void backward_nhwc_groups(const BackwardArgs<T>& a, int G, cudaStream_t s) {
  const Rows r = nhwc_rows(a.N, a.HW, G);
  backward_common<T>(
      a, r.chunks, s,
      [&](const BackwardScratch& b) {
        launch("ain_backward_nhwc_sweep1", ain_backward_nhwc_sweep1<T, V, KP>, a.N * r.chunks, 0, s, a.grad_out,
               a.grad_mask_in, a.h, a.g_id, a.b_id, a.g_att, a.b_att, a.mask, a.mean, a.rstd, a.grad_g_att,
               a.grad_b_att, b.dz, b.part, b.row_dz, a.N, a.C, a.HW, r.chunk, r.chunks, G);
      },
      [&](const BackwardScratch& b) {
        launch("ain_backward_nhwc_sweep2", ain_backward_nhwc_sweep2<T, V>, ceil_div(a.N * a.HW, kThreads / G), 0, s,
               a.grad_out, a.h, a.g_id, a.g_att, a.w, a.mask, a.mean, a.rstd, b.dz, b.mean_dz, b.mean_dhn_base, b.mean_dhn_hn,
               a.grad_h, a.N, a.C, a.HW, G);
      });
}

template <typename T, int V>
void backward_nhwc(const BackwardArgs<T>& a, cudaStream_t s) {
  const Groups gr = nhwc_groups<V>(a.C);
  if (gr.KP == 1) {
    backward_nhwc_groups<T, V, 1>(a, gr.G, s);
  } else if (gr.KP == 2) {
    backward_nhwc_groups<T, V, 2>(a, gr.G, s);
  } else if constexpr (4 * V <= kMaxRegisterValues) {
    backward_nhwc_groups<T, V, 4>(a, gr.G, s);
  }
}

}  // namespace

template <typename T>
void ain_forward_cuda(const T* h, const T* g_id, const T* b_id, const T* g_att, const T* b_att, const T* w,
                      const T* b, T* out, float* mask, float* mean, float* rstd, int64_t N, int64_t C, int64_t HW,
                      double eps, bool channels_last, void* stream) {
  if (N * HW == 0) return;
  constexpr int P = kPackWidth<T>;
  const auto s = static_cast<cudaStream_t>(stream);
  const bool packable = aligned_16<T>({h, g_att, b_att, out});
  if (channels_last && C > 1) {  // with one channel (or none) the two layouts are the same memory
    if (C % P == 0 && packable) forward_nhwc<T, P>(h, g_id, b_id, g_att, b_att, w, b, out, mask, mean, rstd, N, C, HW, eps, s);
    else forward_nhwc<T, 1>(h, g_id, b_id, g_att, b_att, w, b, out, mask, mean, rstd, N, C, HW, eps, s);
  } else {
    if (HW % P == 0 && packable) forward_nchw<T, P>(h, g_id, b_id, g_att, b_att, w, b, out, mask, mean, rstd, N, C, HW, eps, s);
    else forward_nchw<T, 1>(h, g_id, b_id, g_att, b_att, w, b, out, mask, mean, rstd, N, C, HW, eps, s);
  }
}

template <typename T>
void ain_backward_cuda(const T* grad_out, const T* grad_mask_in, const T* h, const T* g_id, const T* b_id,
                       const T* g_att, const T* b_att, const T* w, const float* mask, const float* mean,
                       const float* rstd, T* grad_h, T* grad_g_id, T* grad_b_id, T* grad_g_att, T* grad_b_att,
                       T* grad_w, T* grad_b, int64_t N, int64_t C, int64_t HW, bool channels_last, void* stream) {
  const auto s = static_cast<cudaStream_t>(stream);
  if (N * HW == 0) {  // nothing to sum over: the small gradients are zero (all-zero bits in every T)
    if (C > 0) cudaMemsetAsync(grad_w, 0, static_cast<size_t>(C) * sizeof(T), s);
    if (N * C > 0) {
      cudaMemsetAsync(grad_g_id, 0, static_cast<size_t>(N * C) * sizeof(T), s);
      cudaMemsetAsync(grad_b_id, 0, static_cast<size_t>(N * C) * sizeof(T), s);
    }
    cudaMemsetAsync(grad_b, 0, sizeof(T), s);
    check_launch("ain_backward_cuda (zero gradients)");
    return;
  }
  const BackwardArgs<T> a{grad_out, grad_mask_in, h,         g_id,      b_id,       g_att,      b_att,  w,      mask, mean,
                          rstd,     grad_h,       grad_g_id, grad_b_id, grad_g_att, grad_b_att, grad_w, grad_b, N,    C,
                          HW};
  constexpr int P = kPackWidth<T>;
  const bool packable = aligned_16<T>({grad_out, h, g_att, b_att, grad_h, grad_g_att, grad_b_att});
  if (channels_last && C > 1) {
    if (C % P == 0 && packable) backward_nhwc<T, P>(a, s);
    else backward_nhwc<T, 1>(a, s);
  } else {
    if (HW % P == 0 && packable) backward_nchw<T, P>(a, s);
    else backward_nchw<T, 1>(a, s);
  }
}

#define WSC_INSTANTIATE(T)                                                                                          \
  template void ain_forward_cuda<T>(const T*, const T*, const T*, const T*, const T*, const T*, const T*, T*, float*, \
                                    float*, float*, int64_t, int64_t, int64_t, double, bool, void*);                 \
  template void ain_backward_cuda<T>(const T*, const T*, const T*, const T*, const T*, const T*, const T*, const T*,  \
                                     const float*, const float*, const float*, T*, T*, T*, T*, T*, T*, T*, int64_t,   \
                                     int64_t, int64_t, bool, void*);
WSC_INSTANTIATE(float)
WSC_INSTANTIATE(half_t)
WSC_INSTANTIATE(bf16_t)
#undef WSC_INSTANTIATE

}  // namespace wsc
