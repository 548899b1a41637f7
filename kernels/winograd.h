// Winograd convolution F(4x4, r x r), r = 2, 3 or 4, stride 1, zero padding: the transforms around
// the batched GEMMs of ops.winograd_conv2d. Shared by the CPU loops and the CUDA kernels.
//
// Per 4x4 output tile (alpha = 4 + r - 1 input rows/columns, P = alpha^2 "planes"):
//   forward   U_c = BT d_c B  (input tile, per channel c)     V_ck = G g_ck GT  (weights)
//             M_k = sum_c U_c * V_ck   (per plane: a GEMM over channels, done by the caller)
//             y_k = AT M_k A (+ bias)
//   backward  Yh_k = A dy_k AT  (the transpose of the output transform)
//             Z_c = sum_k Yh_k * V_ck (GEMM)      dx += B Z_c BT  (overlapping tiles add up)
//             S_ck = sum_tiles U_c * Yh_k (GEMM)  dw_ck = GT S_ck G
// The matrices AT, G, BT are in winograd_matrices.h (exact rationals, generated).
//
// Layouts: x, y, dy, dx are NHWC (channels_last). Transformed tensors are plane-major,
// U (P, T, C), M and Yh (P, T, K), V and S (P, C, K), tile t = (n * tiles_h + ty) * tiles_w + tx,
// so each plane is one row-major GEMM operand. Planes are `ps` elements apart (ps >= the plane's
// size): a tile's P values of one channel sit a plane apart, and when that distance is a multiple
// of 4 KiB every one maps to the same cache set, so the caller pads it (measured: up to 30x
// slower transforms on power-of-two sizes). Weights and their gradients are (K, C, r, r) as in
// torch, with the strides of WeightStrides (plain contiguous, or channels_last).
#pragma once
#include "common.h"
#include "winograd_matrices.h"

// Full unrolling: nvcc's device pass and clang's pragma, GCC's own spelling (GCC ignores the bare
// one). None in nvcc's host pass: it hands a macro's _Pragma("unroll") to GCC, which warns, and
// rejects GCC's; no CPU loop is compiled there.
#if defined(__CUDA_ARCH__) || defined(__clang__)
#define WSC_UNROLL _Pragma("unroll")
#elif defined(__CUDACC__)
#define WSC_UNROLL
#elif defined(__GNUC__)
#define WSC_UNROLL _Pragma("GCC unroll 16")
#else
#define WSC_UNROLL
#endif

namespace wsc {

constexpr int kWinogradTile = 4;  // m: outputs per tile side

struct WinogradShape {
  int64_t N, H, W, C;  // input
  int64_t K;           // output channels
  int64_t pad;         // zero padding on every side, 0 <= pad < r
  int r;               // kernel size, 2, 3 or 4
  int64_t Ho, Wo;      // output size: H + 2*pad - r + 1
  int64_t tiles_h, tiles_w;
  int alpha() const { return kWinogradTile + r - 1; }
  int64_t planes() const { return int64_t(alpha()) * alpha(); }
  int64_t tiles() const { return N * tiles_h * tiles_w; }
};

// Element strides of a (K, C, r, r) weight: of k, of c, and of the kernel position q = a*r + b
// (contiguous: C*r*r, r*r, 1; channels_last: r*r*C, 1, C).
struct WeightStrides {
  int64_t k, c, q;
};

inline WinogradShape winograd_shape(int64_t N, int64_t H, int64_t W, int64_t C, int64_t K, int64_t pad, int r) {
  WinogradShape s{N, H, W, C, K, pad, r, H + 2 * pad - r + 1, W + 2 * pad - r + 1, 0, 0};
  s.tiles_h = (s.Ho + kWinogradTile - 1) / kWinogradTile;
  s.tiles_w = (s.Wo + kWinogradTile - 1) / kWinogradTile;
  return s;
}

// ---- per-tile transforms of one channel; A is the accumulation type (float or double). The
// loops are fully unrolled so every matrix entry is a compile-time constant (zeros drop out).

// d (alpha x alpha) -> BT d B, in place.
template <int R, typename A>
WSC_HD_INLINE void winograd_input_tile(A (&d)[WinogradMatrices<R>::ALPHA][WinogradMatrices<R>::ALPHA]) {
  using W = WinogradMatrices<R>;
  constexpr int N = W::ALPHA;
  A t[N][N];
WSC_UNROLL
  for (int i = 0; i < N; ++i)
WSC_UNROLL
    for (int j = 0; j < N; ++j) {
      A acc = 0;
WSC_UNROLL
      for (int k = 0; k < N; ++k)
        if (W::bt(i, k) != 0.0) acc += A(W::bt(i, k)) * d[k][j];
      t[i][j] = acc;
    }
WSC_UNROLL
  for (int i = 0; i < N; ++i)
WSC_UNROLL
    for (int j = 0; j < N; ++j) {
      A acc = 0;
WSC_UNROLL
      for (int k = 0; k < N; ++k)
        if (W::bt(j, k) != 0.0) acc += t[i][k] * A(W::bt(j, k));
      d[i][j] = acc;
    }
}

// m (alpha x alpha) -> AT m A (4 x 4).
template <int R, typename A>
WSC_HD_INLINE void winograd_output_tile(const A (&m)[WinogradMatrices<R>::ALPHA][WinogradMatrices<R>::ALPHA],
                                 A (&y)[kWinogradTile][kWinogradTile]) {
  using W = WinogradMatrices<R>;
  constexpr int N = W::ALPHA, T = kWinogradTile;
  A t[T][N];
WSC_UNROLL
  for (int i = 0; i < T; ++i)
WSC_UNROLL
    for (int j = 0; j < N; ++j) {
      A acc = 0;
WSC_UNROLL
      for (int k = 0; k < N; ++k)
        if (W::at(i, k) != 0.0) acc += A(W::at(i, k)) * m[k][j];
      t[i][j] = acc;
    }
WSC_UNROLL
  for (int i = 0; i < T; ++i)
WSC_UNROLL
    for (int j = 0; j < T; ++j) {
      A acc = 0;
WSC_UNROLL
      for (int k = 0; k < N; ++k)
        if (W::at(j, k) != 0.0) acc += t[i][k] * A(W::at(j, k));
      y[i][j] = acc;
    }
}

// dy (4 x 4) -> A dy AT (alpha x alpha): the transpose of winograd_output_tile.
template <int R, typename A>
WSC_HD_INLINE void winograd_grad_tile(const A (&g)[kWinogradTile][kWinogradTile],
                               A (&out)[WinogradMatrices<R>::ALPHA][WinogradMatrices<R>::ALPHA]) {
  using W = WinogradMatrices<R>;
  constexpr int N = W::ALPHA, T = kWinogradTile;
  A t[N][T];
WSC_UNROLL
  for (int i = 0; i < N; ++i)
WSC_UNROLL
    for (int j = 0; j < T; ++j) {
      A acc = 0;
WSC_UNROLL
      for (int k = 0; k < T; ++k)
        if (W::at(k, i) != 0.0) acc += A(W::at(k, i)) * g[k][j];
      t[i][j] = acc;
    }
WSC_UNROLL
  for (int i = 0; i < N; ++i)
WSC_UNROLL
    for (int j = 0; j < N; ++j) {
      A acc = 0;
WSC_UNROLL
      for (int k = 0; k < T; ++k)
        if (W::at(k, j) != 0.0) acc += t[i][k] * A(W::at(k, j));
      out[i][j] = acc;
    }
}

// z (alpha x alpha) -> B z BT, in place: the transpose of winograd_input_tile.
template <int R, typename A>
WSC_HD_INLINE void winograd_input_grad_tile(A (&z)[WinogradMatrices<R>::ALPHA][WinogradMatrices<R>::ALPHA]) {
  using W = WinogradMatrices<R>;
  constexpr int N = W::ALPHA;
  A t[N][N];
WSC_UNROLL
  for (int i = 0; i < N; ++i)
WSC_UNROLL
    for (int j = 0; j < N; ++j) {
      A acc = 0;
WSC_UNROLL
      for (int k = 0; k < N; ++k)
        if (W::bt(k, i) != 0.0) acc += A(W::bt(k, i)) * z[k][j];
      t[i][j] = acc;
    }
WSC_UNROLL
  for (int i = 0; i < N; ++i)
WSC_UNROLL
    for (int j = 0; j < N; ++j) {
      A acc = 0;
WSC_UNROLL
      for (int k = 0; k < N; ++k)
        if (W::bt(k, j) != 0.0) acc += t[i][k] * A(W::bt(k, j));
      z[i][j] = acc;
    }
}

// g (r x r) -> G g GT (alpha x alpha).
template <int R, typename A>
WSC_HD_INLINE void winograd_weight_tile(const A (&g)[R][R], A (&out)[WinogradMatrices<R>::ALPHA][WinogradMatrices<R>::ALPHA]) {
  using W = WinogradMatrices<R>;
  constexpr int N = W::ALPHA;
  A t[N][R];
WSC_UNROLL
  for (int i = 0; i < N; ++i)
WSC_UNROLL
    for (int j = 0; j < R; ++j) {
      A acc = 0;
WSC_UNROLL
      for (int k = 0; k < R; ++k)
        if (W::g(i, k) != 0.0) acc += A(W::g(i, k)) * g[k][j];
      t[i][j] = acc;
    }
WSC_UNROLL
  for (int i = 0; i < N; ++i)
WSC_UNROLL
    for (int j = 0; j < N; ++j) {
      A acc = 0;
WSC_UNROLL
      for (int k = 0; k < R; ++k)
        if (W::g(j, k) != 0.0) acc += t[i][k] * A(W::g(j, k));
      out[i][j] = acc;
    }
}

// s (alpha x alpha) -> GT s G (r x r): the transpose of winograd_weight_tile.
template <int R, typename A>
WSC_HD_INLINE void winograd_weight_grad_tile(const A (&s)[WinogradMatrices<R>::ALPHA][WinogradMatrices<R>::ALPHA],
                                      A (&out)[R][R]) {
  using W = WinogradMatrices<R>;
  constexpr int N = W::ALPHA;
  A t[R][N];
WSC_UNROLL
  for (int i = 0; i < R; ++i)
WSC_UNROLL
    for (int j = 0; j < N; ++j) {
      A acc = 0;
WSC_UNROLL
      for (int k = 0; k < N; ++k)
        if (W::g(k, i) != 0.0) acc += A(W::g(k, i)) * s[k][j];
      t[i][j] = acc;
    }
WSC_UNROLL
  for (int i = 0; i < R; ++i)
WSC_UNROLL
    for (int j = 0; j < R; ++j) {
      A acc = 0;
WSC_UNROLL
      for (int k = 0; k < N; ++k)
        if (W::g(k, j) != 0.0) acc += t[i][k] * A(W::g(k, j));
      out[i][j] = acc;
    }
}

// ---- CPU entry points (winograd_cpu.cpp), T = float or double. dx is overwritten (not added to).
template <typename T> void winograd_input_transform_cpu(const WinogradShape& s, const T* x, T* U, int64_t ps);
template <typename T>
void winograd_weight_transform_cpu(const WinogradShape& s, const T* w, WeightStrides ws, T* V, int64_t ps);
template <typename T>
void winograd_output_transform_cpu(const WinogradShape& s, const T* M, int64_t ps, const T* bias, T* y);
template <typename T> void winograd_grad_transform_cpu(const WinogradShape& s, const T* dy, T* Yh, int64_t ps);
template <typename T> void winograd_input_grad_transform_cpu(const WinogradShape& s, const T* Z, int64_t ps, T* dx);
template <typename T>
void winograd_weight_grad_transform_cpu(const WinogradShape& s, const T* S, int64_t ps, T* dw, WeightStrides ws);

// ---- CUDA entry points (winograd.cu), T = float; `stream` is a cudaStream_t.
template <typename T>
void winograd_input_transform_cuda(const WinogradShape& s, const T* x, T* U, int64_t ps, void* stream);
template <typename T>
void winograd_weight_transform_cuda(const WinogradShape& s, const T* w, WeightStrides ws, T* V, int64_t ps,
                                    void* stream);
template <typename T>
void winograd_output_transform_cuda(const WinogradShape& s, const T* M, int64_t ps, const T* bias, T* y, void* stream);
template <typename T>
void winograd_grad_transform_cuda(const WinogradShape& s, const T* dy, T* Yh, int64_t ps, void* stream);
template <typename T>
void winograd_input_grad_transform_cuda(const WinogradShape& s, const T* Z, int64_t ps, T* dx, void* stream);
template <typename T>
void winograd_weight_grad_transform_cuda(const WinogradShape& s, const T* S, int64_t ps, T* dw, WeightStrides ws,
                                         void* stream);

}  // namespace wsc
