// CUDA kernels of the Winograd transforms (algebra and layouts in winograd.h; winograd_cpu.cpp
// holds the same semantics as CPU loops).
//
// One thread per (tile, channel), or per (input channel, output channel) for the weights, with
// the channel fastest: consecutive threads then read and write consecutive elements of the NHWC
// images and of every transformed plane (a plane's last dimension is the channel), so those
// accesses are coalesced; the tile of one channel lives in registers (alpha^2 <= 49 values). The
// weights are (K, C, r, r) while V and S are (P, C, K): the plane side (P values a thread) is the
// coalesced one, each thread's r*r weights are contiguous.
//
// The input gradient: tiles overlap by r-1 pixels, so dx is gathered rather than scattered. One
// thread owns a 4x4 block of input pixels (block (by, bx) starts at pixel (4*by - pad,
// 4*bx - pad), where tile (by, bx) starts) and one channel; a tile spans alpha <= 7 < 8 pixels,
// so the block receives from tile (by, bx) and the r-1 spill rows/columns of tiles (by-1, bx),
// (by, bx-1), (by-1, bx-1). Every dx element is written once: no zeroing, no atomics, and the sum
// order is fixed (deterministic).
//
// Each thread's work is a WSC_HD body (a functor of the thread index) run by one grid-stride
// kernel, so the bodies can also run in host loops; hence WSC_UNROLL (empty in nvcc's host pass)
// rather than #pragma unroll, which GCC would be handed and warn about.
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda_common.cuh"
#include "winograd.h"

namespace wsc {
using namespace cuda_common;
namespace {

constexpr int kThreads = 256;
constexpr int kM = kWinogradTile;

// Tile t -> (n, ty, tx).
WSC_HD void tile_coords(const WinogradShape& s, int64_t t, int64_t& n, int64_t& ty, int64_t& tx) {
  tx = t % s.tiles_w;
  ty = (t / s.tiles_w) % s.tiles_h;
  n = t / (s.tiles_w * s.tiles_h);
}

// x (NHWC) -> U (P, T, C); thread i = t * C + c. Positions outside the image read zeros.
template <typename T, int R>
struct InputBody {
  WinogradShape s;
  const T* __restrict__ x;
  T* __restrict__ U;
  int64_t ps;
  WSC_HD void operator()(int64_t i) const {
    constexpr int N = WinogradMatrices<R>::ALPHA;
    const int64_t c = i % s.C;
    int64_t n, ty, tx;
    tile_coords(s, i / s.C, n, ty, tx);
    T d[N][N];
    WSC_UNROLL
    for (int a = 0; a < N; ++a)
      WSC_UNROLL
      for (int b = 0; b < N; ++b) {
        const int64_t iy = ty * kM - s.pad + a, ix = tx * kM - s.pad + b;
        const bool inside = iy >= 0 && iy < s.H && ix >= 0 && ix < s.W;
        d[a][b] = inside ? x[((n * s.H + iy) * s.W + ix) * s.C + c] : T(0);
      }
    winograd_input_tile<R, T>(d);
    WSC_UNROLL
    for (int a = 0; a < N; ++a)
      WSC_UNROLL
      for (int b = 0; b < N; ++b) U[(a * N + b) * ps + i] = d[a][b];
  }
};

// M (P, T, K) -> y (NHWC) plus bias (may be null); thread i = t * K + k. Outputs past Ho, Wo
// are not written.
template <typename T, int R>
struct OutputBody {
  WinogradShape s;
  const T* __restrict__ M;
  int64_t ps;
  const T* __restrict__ bias;
  T* __restrict__ y;
  WSC_HD void operator()(int64_t i) const {
    constexpr int N = WinogradMatrices<R>::ALPHA;
    const int64_t k = i % s.K;
    int64_t n, ty, tx;
    tile_coords(s, i / s.K, n, ty, tx);
    T m[N][N], out[kM][kM];
    WSC_UNROLL
    for (int a = 0; a < N; ++a)
      WSC_UNROLL
      for (int b = 0; b < N; ++b) m[a][b] = M[(a * N + b) * ps + i];
    winograd_output_tile<R, T>(m, out);
    const T bk = bias ? bias[k] : T(0);
    WSC_UNROLL
    for (int a = 0; a < kM; ++a)
      WSC_UNROLL
      for (int b = 0; b < kM; ++b) {
        const int64_t oy = ty * kM + a, ox = tx * kM + b;
        if (oy < s.Ho && ox < s.Wo) y[((n * s.Ho + oy) * s.Wo + ox) * s.K + k] = out[a][b] + bk;
      }
  }
};

// dy (NHWC) -> Yh (P, T, K); thread i = t * K + k. Outputs past Ho, Wo read zeros.
template <typename T, int R>
struct GradBody {
  WinogradShape s;
  const T* __restrict__ dy;
  T* __restrict__ Yh;
  int64_t ps;
  WSC_HD void operator()(int64_t i) const {
    constexpr int N = WinogradMatrices<R>::ALPHA;
    const int64_t k = i % s.K;
    int64_t n, ty, tx;
    tile_coords(s, i / s.K, n, ty, tx);
    T g[kM][kM], out[N][N];
    WSC_UNROLL
    for (int a = 0; a < kM; ++a)
      WSC_UNROLL
      for (int b = 0; b < kM; ++b) {
        const int64_t oy = ty * kM + a, ox = tx * kM + b;
        g[a][b] = (oy < s.Ho && ox < s.Wo) ? dy[((n * s.Ho + oy) * s.Wo + ox) * s.K + k] : T(0);
      }
    winograd_grad_tile<R, T>(g, out);
    WSC_UNROLL
    for (int a = 0; a < N; ++a)
      WSC_UNROLL
      for (int b = 0; b < N; ++b) Yh[(a * N + b) * ps + i] = out[a][b];
  }
};

// Z (P, T, C) -> dx (NHWC), overwritten; thread i = block * C + c with block
// (n * blocks_h + by) * blocks_w + bx, the 4x4 pixel blocks of the header comment.
template <typename T, int R>
struct InputGradBody {
  WinogradShape s;
  const T* __restrict__ Z;
  int64_t ps;
  T* __restrict__ dx;
  int64_t blocks_h, blocks_w;

  // acc += the OY..OY+3, OX..OX+3 window of tile (ty, tx)'s B Z BT (OY, OX: 0 or 4; entries past
  // alpha are none). Out-of-range tiles add nothing. The compiler drops the arithmetic of the
  // entries a window does not use (not the loads: every window needs all of Z).
  template <int OY, int OX>
  WSC_HD void add_tile(int64_t n, int64_t ty, int64_t tx, int64_t c, T (&acc)[kM][kM]) const {
    constexpr int N = WinogradMatrices<R>::ALPHA;
    if (ty < 0 || ty >= s.tiles_h || tx < 0 || tx >= s.tiles_w) return;
    const T* src = Z + ((n * s.tiles_h + ty) * s.tiles_w + tx) * s.C + c;
    T z[N][N];
    WSC_UNROLL
    for (int a = 0; a < N; ++a)
      WSC_UNROLL
      for (int b = 0; b < N; ++b) z[a][b] = src[(a * N + b) * ps];
    winograd_input_grad_tile<R, T>(z);
    WSC_UNROLL
    for (int u = 0; u < kM; ++u)
      WSC_UNROLL
      for (int v = 0; v < kM; ++v)
        if (u + OY < N && v + OX < N) acc[u][v] += z[u + OY][v + OX];
  }

  WSC_HD void operator()(int64_t i) const {
    const int64_t c = i % s.C, blk = i / s.C;
    const int64_t bx = blk % blocks_w, by = (blk / blocks_w) % blocks_h, n = blk / (blocks_w * blocks_h);
    T acc[kM][kM] = {};
    add_tile<kM, kM>(n, by - 1, bx - 1, c, acc);
    add_tile<kM, 0>(n, by - 1, bx, c, acc);
    add_tile<0, kM>(n, by, bx - 1, c, acc);
    add_tile<0, 0>(n, by, bx, c, acc);
    WSC_UNROLL
    for (int u = 0; u < kM; ++u)
      WSC_UNROLL
      for (int v = 0; v < kM; ++v) {
        const int64_t iy = by * kM - s.pad + u, ix = bx * kM - s.pad + v;
        if (iy >= 0 && iy < s.H && ix >= 0 && ix < s.W) dx[((n * s.H + iy) * s.W + ix) * s.C + c] = acc[u][v];
      }
  }
};

// w (K, C, r, r) -> V (P, C, K); thread i = c * K + k.
template <typename T, int R>
struct WeightBody {
  WinogradShape s;
  const T* __restrict__ w;
  WeightStrides ws;
  T* __restrict__ V;
  int64_t ps;
  WSC_HD void operator()(int64_t i) const {
    constexpr int N = WinogradMatrices<R>::ALPHA;
    const int64_t k = i % s.K, c = i / s.K;
    const T* src = w + k * ws.k + c * ws.c;
    T g[R][R], out[N][N];
    WSC_UNROLL
    for (int a = 0; a < R; ++a)
      WSC_UNROLL
      for (int b = 0; b < R; ++b) g[a][b] = src[(a * R + b) * ws.q];
    winograd_weight_tile<R, T>(g, out);
    WSC_UNROLL
    for (int a = 0; a < N; ++a)
      WSC_UNROLL
      for (int b = 0; b < N; ++b) V[(a * N + b) * ps + i] = out[a][b];
  }
};

// S (P, C, K) -> dw (K, C, r, r); thread i = c * K + k.
template <typename T, int R>
struct WeightGradBody {
  WinogradShape s;
  const T* __restrict__ S;
  int64_t ps;
  T* __restrict__ dw;
  WeightStrides ws;
  WSC_HD void operator()(int64_t i) const {
    constexpr int N = WinogradMatrices<R>::ALPHA;
    const int64_t k = i % s.K, c = i / s.K;
    T sv[N][N], g[R][R];
    WSC_UNROLL
    for (int a = 0; a < N; ++a)
      WSC_UNROLL
      for (int b = 0; b < N; ++b) sv[a][b] = S[(a * N + b) * ps + i];
    winograd_weight_grad_tile<R, T>(sv, g);
    T* dst = dw + k * ws.k + c * ws.c;
    WSC_UNROLL
    for (int a = 0; a < R; ++a)
      WSC_UNROLL
      for (int b = 0; b < R; ++b) dst[(a * R + b) * ws.q] = g[a][b];
  }
};

template <typename Body>
__global__ void __launch_bounds__(kThreads) for_each_index(const Body body, int64_t total) {
  for (int64_t i = global_thread(); i < total; i += grid_threads()) body(i);
}

// Runs Body<T, r>{args...} over [0, total), r = s.r picked at run time.
template <template <typename, int> class Body, typename T, typename... Args>
void launch(const WinogradShape& s, int64_t total, void* stream, const char* what, const Args&... args) {
  if (total <= 0) return;
  const auto st = static_cast<cudaStream_t>(stream);
  const int blocks = grid_blocks(total, kThreads);
  switch (s.r) {
    case 2: for_each_index<<<blocks, kThreads, 0, st>>>(Body<T, 2>{s, args...}, total); break;
    case 3: for_each_index<<<blocks, kThreads, 0, st>>>(Body<T, 3>{s, args...}, total); break;
    default: for_each_index<<<blocks, kThreads, 0, st>>>(Body<T, 4>{s, args...}, total); break;
  }
  check_launch(what);
}

}  // namespace

template <typename T>
void winograd_input_transform_cuda(const WinogradShape& s, const T* x, T* U, int64_t ps, void* stream) {
  launch<InputBody, T>(s, s.tiles() * s.C, stream, "winograd_input_transform_cuda", x, U, ps);
}

template <typename T>
void winograd_weight_transform_cuda(const WinogradShape& s, const T* w, WeightStrides ws, T* V, int64_t ps,
                                    void* stream) {
  launch<WeightBody, T>(s, s.C * s.K, stream, "winograd_weight_transform_cuda", w, ws, V, ps);
}

template <typename T>
void winograd_output_transform_cuda(const WinogradShape& s, const T* M, int64_t ps, const T* bias, T* y, void* stream) {
  launch<OutputBody, T>(s, s.tiles() * s.K, stream, "winograd_output_transform_cuda", M, ps, bias, y);
}

template <typename T>
void winograd_grad_transform_cuda(const WinogradShape& s, const T* dy, T* Yh, int64_t ps, void* stream) {
  launch<GradBody, T>(s, s.tiles() * s.K, stream, "winograd_grad_transform_cuda", dy, Yh, ps);
}

template <typename T>
void winograd_input_grad_transform_cuda(const WinogradShape& s, const T* Z, int64_t ps, T* dx, void* stream) {
  // Pixel iy lies in block row (iy + pad) / 4, so H + pad pixels' worth of blocks cover the image.
  const int64_t blocks_h = (s.H + s.pad + kM - 1) / kM, blocks_w = (s.W + s.pad + kM - 1) / kM;
  launch<InputGradBody, T>(s, s.N * blocks_h * blocks_w * s.C, stream, "winograd_input_grad_transform_cuda", Z, ps,
                           dx, blocks_h, blocks_w);
}

template <typename T>
void winograd_weight_grad_transform_cuda(const WinogradShape& s, const T* S, int64_t ps, T* dw, WeightStrides ws,
                                         void* stream) {
  launch<WeightGradBody, T>(s, s.C * s.K, stream, "winograd_weight_grad_transform_cuda", S, ps, dw, ws);
}

#define WSC_INSTANTIATE(T)                                                                                    \
  template void winograd_input_transform_cuda<T>(const WinogradShape&, const T*, T*, int64_t, void*);            \
  template void winograd_weight_transform_cuda<T>(const WinogradShape&, const T*, WeightStrides, T*, int64_t, void*); \
  template void winograd_output_transform_cuda<T>(const WinogradShape&, const T*, int64_t, const T*, T*, void*); \
  template void winograd_grad_transform_cuda<T>(const WinogradShape&, const T*, T*, int64_t, void*);             \
  template void winograd_input_grad_transform_cuda<T>(const WinogradShape&, const T*, int64_t, T*, void*);       \
  template void winograd_weight_grad_transform_cuda<T>(const WinogradShape&, const T*, int64_t, T*, WeightStrides, void*);
WSC_INSTANTIATE(float)
#undef WSC_INSTANTIATE

}  // namespace wsc
