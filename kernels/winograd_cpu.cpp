// CPU loops of the Winograd transforms (see winograd.h). Every loop runs over a tile (or a
// channel of the weights) with the channels innermost: in NHWC each tile position is a
// contiguous run of channels, and each transformed plane row too, so the per-channel tile
// transforms of winograd.h vectorise across channels (omp simd) with unit-stride loads and
// stores. Positions outside the image read a row of zeros and write to a dump row, so the
// vector loops have no branches. Compiled for AVX-512, AVX2 and baseline x86-64, picked at run
// time.
#include "winograd.h"

#include <algorithm>
#include <vector>

namespace wsc {
namespace {

#if defined(__GNUC__)
#define WSC_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define WSC_ALWAYS_INLINE inline
#endif

#if defined(__x86_64__) && defined(__GNUC__)
#define WSC_X86_DISPATCH 1
#define WSC_TARGET_AVX512 __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,prefer-vector-width=512")))
#define WSC_TARGET_AVX2 __attribute__((target("avx2,fma")))
#endif

template <typename T> struct Acc { using type = float; };
template <> struct Acc<double> { using type = double; };

constexpr int kM = kWinogradTile;

// The pieces a range of work needs: the shape, the operands and a row of zeros / a dump row as
// long as the widest channel count, for positions outside the image.
template <typename T>
struct Job {
  WinogradShape s;
  const T* in;
  const T* bias;
  T* out;
  const T* zeros;
  int64_t ps;          // plane stride of the transformed operand, in elements
  WeightStrides wst;  // of the (K, C, r, r) weights (weight transforms only)
};

// Tile t -> (n, ty, tx).
inline void tile_coords(const WinogradShape& s, int64_t t, int64_t& n, int64_t& ty, int64_t& tx) {
  tx = t % s.tiles_w;
  ty = (t / s.tiles_w) % s.tiles_h;
  n = t / (s.tiles_w * s.tiles_h);
}

// x (NHWC) -> U (P, T, C) for tiles [t0, t1).
template <typename T, int R>
WSC_ALWAYS_INLINE void input_tiles(const Job<T>& j, int64_t t0, int64_t t1) {
  using A = typename Acc<T>::type;
  const int64_t ps = j.ps;  // a local: stores through T* could alias the Job
  constexpr int N = WinogradMatrices<R>::ALPHA;
  const WinogradShape& s = j.s;
  const int64_t C = s.C;
  for (int64_t t = t0; t < t1; ++t) {
    int64_t n, ty, tx;
    tile_coords(s, t, n, ty, tx);
    const T* src[N][N];
    for (int a = 0; a < N; ++a)
      for (int b = 0; b < N; ++b) {
        const int64_t iy = ty * kM - s.pad + a, ix = tx * kM - s.pad + b;
        const bool inside = iy >= 0 && iy < s.H && ix >= 0 && ix < s.W;
        src[a][b] = inside ? j.in + ((n * s.H + iy) * s.W + ix) * C : j.zeros;
      }
    T* dst = j.out + t * C;
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) {
      A d[N][N];
      WSC_UNROLL
      for (int a = 0; a < N; ++a)
        WSC_UNROLL
        for (int b = 0; b < N; ++b) d[a][b] = A(src[a][b][c]);
      winograd_input_tile<R, A>(d);
      WSC_UNROLL
      for (int a = 0; a < N; ++a)
        WSC_UNROLL
        for (int b = 0; b < N; ++b) dst[(a * N + b) * ps + c] = T(d[a][b]);
    }
  }
}

// M (P, T, K) -> y (NHWC) plus bias, for tiles [t0, t1).
template <typename T, int R>
WSC_ALWAYS_INLINE void output_tiles(const Job<T>& j, int64_t t0, int64_t t1, T* dump) {
  using A = typename Acc<T>::type;
  const int64_t ps = j.ps;  // a local: stores through T* could alias the Job
  constexpr int N = WinogradMatrices<R>::ALPHA;
  const WinogradShape& s = j.s;
  const int64_t K = s.K;
  for (int64_t t = t0; t < t1; ++t) {
    int64_t n, ty, tx;
    tile_coords(s, t, n, ty, tx);
    T* dst[kM][kM];
    for (int a = 0; a < kM; ++a)
      for (int b = 0; b < kM; ++b) {
        const int64_t oy = ty * kM + a, ox = tx * kM + b;
        dst[a][b] = (oy < s.Ho && ox < s.Wo) ? j.out + ((n * s.Ho + oy) * s.Wo + ox) * K : dump;
      }
    const T* src = j.in + t * K;
    const T* bias = j.bias ? j.bias : j.zeros;
#pragma omp simd
    for (int64_t k = 0; k < K; ++k) {
      A m[N][N], y[kM][kM];
      WSC_UNROLL
      for (int a = 0; a < N; ++a)
        WSC_UNROLL
        for (int b = 0; b < N; ++b) m[a][b] = A(src[(a * N + b) * ps + k]);
      winograd_output_tile<R, A>(m, y);
      const A bk = A(bias[k]);
      WSC_UNROLL
      for (int a = 0; a < kM; ++a)
        WSC_UNROLL
        for (int b = 0; b < kM; ++b) dst[a][b][k] = T(y[a][b] + bk);
    }
  }
}

// dy (NHWC) -> Yh (P, T, K), for tiles [t0, t1).
template <typename T, int R>
WSC_ALWAYS_INLINE void grad_tiles(const Job<T>& j, int64_t t0, int64_t t1) {
  using A = typename Acc<T>::type;
  const int64_t ps = j.ps;  // a local: stores through T* could alias the Job
  constexpr int N = WinogradMatrices<R>::ALPHA;
  const WinogradShape& s = j.s;
  const int64_t K = s.K;
  for (int64_t t = t0; t < t1; ++t) {
    int64_t n, ty, tx;
    tile_coords(s, t, n, ty, tx);
    const T* src[kM][kM];
    for (int a = 0; a < kM; ++a)
      for (int b = 0; b < kM; ++b) {
        const int64_t oy = ty * kM + a, ox = tx * kM + b;
        src[a][b] = (oy < s.Ho && ox < s.Wo) ? j.in + ((n * s.Ho + oy) * s.Wo + ox) * K : j.zeros;
      }
    T* dst = j.out + t * K;
#pragma omp simd
    for (int64_t k = 0; k < K; ++k) {
      A g[kM][kM], out[N][N];
      WSC_UNROLL
      for (int a = 0; a < kM; ++a)
        WSC_UNROLL
        for (int b = 0; b < kM; ++b) g[a][b] = A(src[a][b][k]);
      winograd_grad_tile<R, A>(g, out);
      WSC_UNROLL
      for (int a = 0; a < N; ++a)
        WSC_UNROLL
        for (int b = 0; b < N; ++b) dst[(a * N + b) * ps + k] = T(out[a][b]);
    }
  }
}

// Z (P, T, C) -> dx (NHWC, zeroed by the caller) += B Z BT, for the tiles of tile rows
// [r0, r1) (row = n * tiles_h + ty). A row's tiles overlap each other, so one call owns a whole
// row; rows two apart never overlap (alpha <= 2m), so the caller runs even rows, then odd ones.
template <typename T, int R>
WSC_ALWAYS_INLINE void input_grad_rows(const Job<T>& j, int64_t r0, int64_t r1, T* dump) {
  using A = typename Acc<T>::type;
  const int64_t ps = j.ps;  // a local: stores through T* could alias the Job
  constexpr int N = WinogradMatrices<R>::ALPHA;
  const WinogradShape& s = j.s;
  const int64_t C = s.C;
  for (int64_t row = r0; row < r1; ++row) {
    const int64_t n = row / s.tiles_h, ty = row % s.tiles_h;
    for (int64_t tx = 0; tx < s.tiles_w; ++tx) {
      const int64_t t = row * s.tiles_w + tx;
      T* dst[N][N];
      for (int a = 0; a < N; ++a)
        for (int b = 0; b < N; ++b) {
          const int64_t iy = ty * kM - s.pad + a, ix = tx * kM - s.pad + b;
          const bool inside = iy >= 0 && iy < s.H && ix >= 0 && ix < s.W;
          dst[a][b] = inside ? j.out + ((n * s.H + iy) * s.W + ix) * C : dump;
        }
      const T* src = j.in + t * C;
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) {
        A z[N][N];
        WSC_UNROLL
        for (int a = 0; a < N; ++a)
          WSC_UNROLL
          for (int b = 0; b < N; ++b) z[a][b] = A(src[(a * N + b) * ps + c]);
        winograd_input_grad_tile<R, A>(z);
        WSC_UNROLL
        for (int a = 0; a < N; ++a)
          WSC_UNROLL
          for (int b = 0; b < N; ++b) dst[a][b][c] = T(A(dst[a][b][c]) + z[a][b]);
      }
    }
  }
}

// The weights are (K, C, r, r) as torch holds them (contiguous or channels_last) and V is
// (P, C, K): a transpose. Each call takes a block of kWeightBlock input channels and goes through
// the output channels kKBlock at a time: the block's r*r*kWeightBlock weights of one output
// channel are one short contiguous run in either layout, staged into a (r*r, c, k) buffer, then
// transformed with k innermost (contiguous V stores). The weight gradient runs the same blocks
// backwards.
constexpr int64_t kWeightBlock = 8, kKBlock = 64;

// w (K, C, r, r) -> V (P, C, K), for input-channel blocks [b0, b1).
template <typename T, int R>
WSC_ALWAYS_INLINE void weight_blocks(const Job<T>& j, int64_t b0, int64_t b1) {
  using A = typename Acc<T>::type;
  const int64_t ps = j.ps;  // a local: stores through T* could alias the Job
  constexpr int N = WinogradMatrices<R>::ALPHA, RR = R * R;
  const int64_t C = j.s.C, K = j.s.K;
  const WeightStrides st = j.wst;
  alignas(64) T buf[RR][kWeightBlock][kKBlock];
  for (int64_t blk = b0; blk < b1; ++blk) {
    const int64_t c0 = blk * kWeightBlock, cn = std::min(kWeightBlock, C - c0);
    for (int64_t k0 = 0; k0 < K; k0 += kKBlock) {
      const int64_t kn = std::min(kKBlock, K - k0);
      for (int64_t kk = 0; kk < kn; ++kk) {
        const T* w = j.in + (k0 + kk) * st.k + c0 * st.c;
        for (int q = 0; q < RR; ++q)
          for (int64_t cc = 0; cc < cn; ++cc) buf[q][cc][kk] = w[cc * st.c + q * st.q];
      }
      for (int64_t cc = 0; cc < cn; ++cc) {
        T* v = j.out + (c0 + cc) * K + k0;
#pragma omp simd
        for (int64_t kk = 0; kk < kn; ++kk) {
          A g[R][R], t[N][N];
          WSC_UNROLL
          for (int a = 0; a < R; ++a)
            WSC_UNROLL
            for (int b = 0; b < R; ++b) g[a][b] = A(buf[a * R + b][cc][kk]);
          winograd_weight_tile<R, A>(g, t);
          WSC_UNROLL
          for (int a = 0; a < N; ++a)
            WSC_UNROLL
            for (int b = 0; b < N; ++b) v[(a * N + b) * ps + kk] = T(t[a][b]);
        }
      }
    }
  }
}

// S (P, C, K) -> dw (K, C, r, r), for input-channel blocks [b0, b1).
template <typename T, int R>
WSC_ALWAYS_INLINE void weight_grad_blocks(const Job<T>& j, int64_t b0, int64_t b1) {
  using A = typename Acc<T>::type;
  const int64_t ps = j.ps;  // a local: stores through T* could alias the Job
  constexpr int N = WinogradMatrices<R>::ALPHA, RR = R * R;
  const int64_t C = j.s.C, K = j.s.K;
  const WeightStrides st = j.wst;
  alignas(64) T buf[RR][kWeightBlock][kKBlock];
  for (int64_t blk = b0; blk < b1; ++blk) {
    const int64_t c0 = blk * kWeightBlock, cn = std::min(kWeightBlock, C - c0);
    for (int64_t k0 = 0; k0 < K; k0 += kKBlock) {
      const int64_t kn = std::min(kKBlock, K - k0);
      for (int64_t cc = 0; cc < cn; ++cc) {
        const T* sp = j.in + (c0 + cc) * K + k0;
#pragma omp simd
        for (int64_t kk = 0; kk < kn; ++kk) {
          A sv[N][N], g[R][R];
          WSC_UNROLL
          for (int a = 0; a < N; ++a)
            WSC_UNROLL
            for (int b = 0; b < N; ++b) sv[a][b] = A(sp[(a * N + b) * ps + kk]);
          winograd_weight_grad_tile<R, A>(sv, g);
          WSC_UNROLL
          for (int a = 0; a < R; ++a)
            WSC_UNROLL
            for (int b = 0; b < R; ++b) buf[a * R + b][cc][kk] = T(g[a][b]);
        }
      }
      for (int64_t kk = 0; kk < kn; ++kk) {
        T* w = j.out + (k0 + kk) * st.k + c0 * st.c;
        for (int q = 0; q < RR; ++q)
          for (int64_t cc = 0; cc < cn; ++cc) w[cc * st.c + q * st.q] = buf[q][cc][kk];
      }
    }
  }
}

// One function per (transform, r) taking a work range; `dump` is the calling thread's row
// for writes outside the image (unused by the transforms that do not need one).
enum class Op { kInput, kOutput, kGrad, kInputGrad, kWeight, kWeightGrad };
template <typename T>
using RangeFn = void (*)(const Job<T>&, int64_t, int64_t, T*);

template <Op O, int R, typename T>
WSC_ALWAYS_INLINE void run_range(const Job<T>& j, int64_t b, int64_t e, T* dump) {
  if constexpr (O == Op::kInput) input_tiles<T, R>(j, b, e);
  else if constexpr (O == Op::kOutput) output_tiles<T, R>(j, b, e, dump);
  else if constexpr (O == Op::kGrad) grad_tiles<T, R>(j, b, e);
  else if constexpr (O == Op::kInputGrad) input_grad_rows<T, R>(j, b, e, dump);
  else if constexpr (O == Op::kWeight) weight_blocks<T, R>(j, b, e);
  else weight_grad_blocks<T, R>(j, b, e);
}

#if defined(WSC_X86_DISPATCH)
template <Op O, int R, typename T>
WSC_TARGET_AVX512 void range_avx512(const Job<T>& j, int64_t b, int64_t e, T* dump) { run_range<O, R, T>(j, b, e, dump); }
template <Op O, int R, typename T>
WSC_TARGET_AVX2 void range_avx2(const Job<T>& j, int64_t b, int64_t e, T* dump) { run_range<O, R, T>(j, b, e, dump); }
#endif
template <Op O, int R, typename T>
void range_baseline(const Job<T>& j, int64_t b, int64_t e, T* dump) { run_range<O, R, T>(j, b, e, dump); }

enum class Isa { kBaseline, kAvx2, kAvx512 };

Isa detect_isa() {
#if defined(WSC_X86_DISPATCH)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("fma"))
    return Isa::kAvx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::kAvx2;
#endif
  return Isa::kBaseline;
}

const Isa kIsa = detect_isa();

template <Op O, int R, typename T>
RangeFn<T> pick_isa() {
#if defined(WSC_X86_DISPATCH)
  if (kIsa == Isa::kAvx512) return range_avx512<O, R, T>;
  if (kIsa == Isa::kAvx2) return range_avx2<O, R, T>;
#endif
  return range_baseline<O, R, T>;
}

template <Op O, typename T>
RangeFn<T> pick(int r) {
  return r == 2 ? pick_isa<O, 2, T>() : r == 3 ? pick_isa<O, 3, T>() : pick_isa<O, 4, T>();
}

// Below this many element-transforms a parallel region costs more than it saves.
constexpr int64_t kParallelMin = 1 << 14;

// Runs fn over [0, items) in contiguous chunks, one per thread; `width` is the channel count of
// the dump row each thread gets.
template <typename T>
void parallel_ranges(RangeFn<T> fn, const Job<T>& j, int64_t items, int64_t work_per_item, int64_t width) {
  if (items <= 0) return;
  const bool parallel = items > 1 && items * work_per_item >= kParallelMin;
#pragma omp parallel if (parallel)
  {
    std::vector<T> dump(static_cast<size_t>(width));
#pragma omp for schedule(static)
    for (int64_t i = 0; i < items; ++i) fn(j, i, i + 1, dump.data());
  }
}

template <typename T>
Job<T> make_job(const WinogradShape& s, const T* in, const T* bias, T* out, const std::vector<T>& zeros,
               int64_t plane_stride, WeightStrides weight_strides = {0, 0, 0}) {
  return Job<T>{s, in, bias, out, zeros.data(), plane_stride, weight_strides};
}

}  // namespace

template <typename T>
void winograd_input_transform_cpu(const WinogradShape& s, const T* x, T* U, int64_t ps) {
  const std::vector<T> zeros(static_cast<size_t>(s.C), T(0));
  parallel_ranges<T>(pick<Op::kInput, T>(s.r), make_job<T>(s, x, nullptr, U, zeros, ps), s.tiles(), s.C, 0);
}

template <typename T>
void winograd_output_transform_cpu(const WinogradShape& s, const T* M, int64_t ps, const T* bias, T* y) {
  const std::vector<T> zeros(static_cast<size_t>(s.K), T(0));
  parallel_ranges<T>(pick<Op::kOutput, T>(s.r), make_job<T>(s, M, bias, y, zeros, ps), s.tiles(), s.K, s.K);
}

template <typename T>
void winograd_grad_transform_cpu(const WinogradShape& s, const T* dy, T* Yh, int64_t ps) {
  const std::vector<T> zeros(static_cast<size_t>(s.K), T(0));
  parallel_ranges<T>(pick<Op::kGrad, T>(s.r), make_job<T>(s, dy, nullptr, Yh, zeros, ps), s.tiles(), s.K, 0);
}

template <typename T>
void winograd_input_grad_transform_cpu(const WinogradShape& s, const T* Z, int64_t ps, T* dx) {
  std::fill(dx, dx + s.N * s.H * s.W * s.C, T(0));
  const RangeFn<T> fn = pick<Op::kInputGrad, T>(s.r);
  const std::vector<T> none;
  const Job<T> j = make_job<T>(s, Z, nullptr, dx, none, ps);
  const bool parallel = s.tiles() * s.C >= kParallelMin;
  for (int64_t phase = 0; phase < 2; ++phase) {  // even tile rows, then odd ones: no two overlap
    const int64_t per_image = (s.tiles_h - phase + 1) / 2;
    const int64_t items = s.N * per_image;
#pragma omp parallel if (parallel && items > 1)
    {
      std::vector<T> dump(static_cast<size_t>(s.C));
#pragma omp for schedule(static)
      for (int64_t i = 0; i < items; ++i) {
        const int64_t row = (i / per_image) * s.tiles_h + phase + 2 * (i % per_image);
        fn(j, row, row + 1, dump.data());
      }
    }
  }
}

template <typename T>
void winograd_weight_transform_cpu(const WinogradShape& s, const T* w, WeightStrides ws, T* V, int64_t ps) {
  const std::vector<T> none;
  const int64_t blocks = (s.C + kWeightBlock - 1) / kWeightBlock;
  parallel_ranges<T>(pick<Op::kWeight, T>(s.r), make_job<T>(s, w, nullptr, V, none, ps, ws), blocks, kWeightBlock * s.K, 0);
}

template <typename T>
void winograd_weight_grad_transform_cpu(const WinogradShape& s, const T* S, int64_t ps, T* dw, WeightStrides ws) {
  const std::vector<T> none;
  const int64_t blocks = (s.C + kWeightBlock - 1) / kWeightBlock;
  parallel_ranges<T>(pick<Op::kWeightGrad, T>(s.r), make_job<T>(s, S, nullptr, dw, none, ps, ws), blocks, kWeightBlock * s.K, 0);
}

#define WSC_INSTANTIATE(T)                                                                     \
  template void winograd_input_transform_cpu<T>(const WinogradShape&, const T*, T*, int64_t);                \
  template void winograd_weight_transform_cpu<T>(const WinogradShape&, const T*, WeightStrides, T*, int64_t); \
  template void winograd_output_transform_cpu<T>(const WinogradShape&, const T*, int64_t, const T*, T*);     \
  template void winograd_grad_transform_cpu<T>(const WinogradShape&, const T*, T*, int64_t);                 \
  template void winograd_input_grad_transform_cpu<T>(const WinogradShape&, const T*, int64_t, T*);           \
  template void winograd_weight_grad_transform_cpu<T>(const WinogradShape&, const T*, int64_t, T*, WeightStrides);
WSC_INSTANTIATE(float)
WSC_INSTANTIATE(double)
#undef WSC_INSTANTIATE

}  // namespace wsc
