// CPU loops for landmark_loss (math in landmark_loss.h). OpenMP over blocks of the batch.
//
// Work per sample, R = 3L rows, K = K_id + K_exp:
//   forward:  the rest-pose landmarks, R*K multiply-adds; then per landmark the pose, projection
//             and distance (~40 flops) and, when gradients are wanted, the gradient of the
//             sample's loss to the landmark, the pose and the target (~60 flops more), while all
//             of it is in registers.
//   backward: the coefficient gradients basis^T @ dL/dp, another R*K multiply-adds, and the
//             scaling of the saved gradients by the incoming one.
// The two R*K products are nearly all the work: 2 x 204 x 144 = 59k multiply-adds per sample for
// a BFM-sized model. The bases (R*K values, 117 KB for BFM in fp32) stay in L2 and are shared by
// the batch, so this is a small GEMM, bound by FMA throughput, not by memory.
//
// A block is V samples (one 64-byte vector of T; 16 bytes for the last one to three samples of a
// batch, so that a batch of 1 does not pay for 16) with every per-sample quantity stored lane-major,
// x[i * V + j] = item i of the block's sample j, so each basis value is broadcast once and
// multiplied into V samples at a time, and the per-landmark math runs V samples per instruction.
// RB basis rows (forward) or coefficient columns (backward) are accumulated at once to keep the
// FMA units busy; RB is picked per instruction set (the accumulators must fit the register file),
// and on x86-64 the block functions are compiled for AVX-512, AVX2+FMA and the baseline and chosen
// at run time, since the extension itself is built for the baseline (SSE2): AVX-512 runs the
// products ~5x faster than SSE2 here.
//
// The per-landmark stage (rotation, projection, residuals, their gradients and the sums over
// landmarks) runs in double for float storage too: float pixel positions carry ~1e-5 pixel of
// rounding, and the gradients to the pose sum ~L residuals of a few pixels whose total can be
// much smaller than its terms. It is a small part of the work; the two products stay in T.
#include "landmark_loss.h"

#include <algorithm>
#include <cstring>
#include <new>

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

// Lanes of a full block (64 bytes) and of a narrow one (16 bytes), for the tail of the batch.
template <typename T>
constexpr int kWide = static_cast<int>(64 / sizeof(T));
template <typename T>
constexpr int kNarrow = static_cast<int>(16 / sizeof(T));

// 64-byte aligned scratch of the calling thread, kept between calls (a block needs a few tens of
// KB; allocating them per block cost ~3% of a call). Slot 0 holds T values, slot 1 the Geo ones.
inline void* thread_scratch(size_t bytes, int slot) {
  struct Buffer {
    void* p = nullptr;
    size_t size = 0;
    ~Buffer() { ::operator delete(p, std::align_val_t(64)); }
  };
  thread_local Buffer buffers[2];
  Buffer& b = buffers[slot];
  if (b.size < bytes) {
    ::operator delete(b.p, std::align_val_t(64));
    b.p = nullptr;
    b.p = ::operator new(bytes, std::align_val_t(64));
    b.size = bytes;
  }
  return b.p;
}

template <typename T>
struct Problem {
  LandmarkLossDims d;
  LandmarkCamera cam;
  int norm, reduction;
  const T *id_coeff, *exp_coeff, *angles, *translation, *target, *weights, *mean, *id_basis, *exp_basis;
  T* per_sample;                                   // forward output
  T *point_grads, *pose_grads, *target_grads;      // forward outputs when gradients are wanted
  const T* grad;                                   // backward: the incoming gradient
  T *grad_id, *grad_exp;                           // backward outputs
};

// The type of the per-landmark stage (see the top of this file).
using Geo = double;

// Lane-major scratch of one block.
template <typename T, int V>
struct Block {
  int64_t n0, S;  // first sample, samples in the block (<= V; the other lanes are padding)
  T* points;      // (3L, V) rest-pose landmarks; then dL/dp
  T* coef;        // (K_id + K_exp, V) coefficients
  Geo* target;    // (2L, V); then dL/dtarget
  Geo* weights;   // (L, V)
  Geo R[9][V], tx[V], ty[V], tz[V];
  Geo trig[6][V];  // sin and cos of pitch, yaw, roll

  EulerTrig<Geo> trig_lane(int j) const {
    return EulerTrig<Geo>{trig[0][j], trig[1][j], trig[2][j], trig[3][j], trig[4][j], trig[5][j]};
  }
};

// Accumulators indexed by a run-time lane would live in memory: each loop below finishes with
// full-width stores into such a buffer, and only then copies out the block's S real samples.

// out[r][:] = mean[r] + sum_k id_basis[r][k] coef[k][:] + sum_k exp_basis[r][k] coef[K_id+k][:]
// for RB rows starting at r.
template <typename T, int V, int RB>
WSC_ALWAYS_INLINE void basis_rows(const Problem<T>& p, const T* coef, int64_t r, T* out) {
  const int64_t Ki = p.d.K_id, Ke = p.d.K_exp;
  // The products are summed from 0 and the mean added last: accumulating onto the mean (~0.5)
  // would round every one of the K additions at the mean's magnitude.
  T acc[RB][V];
  for (int i = 0; i < RB; ++i)
#pragma omp simd
    for (int j = 0; j < V; ++j) acc[i][j] = T(0);
  for (int64_t k = 0; k < Ki; ++k) {
    const T* c = coef + k * V;
    for (int i = 0; i < RB; ++i) {
      const T b = p.id_basis[(r + i) * Ki + k];
#pragma omp simd
      for (int j = 0; j < V; ++j) acc[i][j] += b * c[j];
    }
  }
  for (int64_t k = 0; k < Ke; ++k) {
    const T* c = coef + (Ki + k) * V;
    for (int i = 0; i < RB; ++i) {
      const T b = p.exp_basis[(r + i) * Ke + k];
#pragma omp simd
      for (int j = 0; j < V; ++j) acc[i][j] += b * c[j];
    }
  }
  for (int i = 0; i < RB; ++i) {
    const T m = p.mean[r + i];
#pragma omp simd
    for (int j = 0; j < V; ++j) out[(r + i) * V + j] = m + acc[i][j];
  }
}

// grad[n0 + j][k + i] = sum_r basis[r][k + i] dp[r][j] for RB columns starting at k.
template <typename T, int V, int RB>
WSC_ALWAYS_INLINE void basis_columns(const T* basis, int64_t K, int64_t rows, const T* dp, int64_t k,
                                     const Block<T, V>& b, T* grad) {
  T acc[RB][V];
  for (int i = 0; i < RB; ++i)
#pragma omp simd
    for (int j = 0; j < V; ++j) acc[i][j] = T(0);
  for (int64_t r = 0; r < rows; ++r) {
    const T* g = dp + r * V;
    for (int i = 0; i < RB; ++i) {
      const T v = basis[r * K + k + i];
#pragma omp simd
      for (int j = 0; j < V; ++j) acc[i][j] += v * g[j];
    }
  }
  alignas(64) T done[RB][V];
  for (int i = 0; i < RB; ++i)
#pragma omp simd
    for (int j = 0; j < V; ++j) done[i][j] = acc[i][j];
  for (int64_t j = 0; j < b.S; ++j)
    for (int i = 0; i < RB; ++i) grad[(b.n0 + j) * K + k + i] = done[i][j];
}

// Whole RB-blocks, then the remainder 4 and 1 at a time.
template <int RB, typename F4, typename F1, typename FR>
WSC_ALWAYS_INLINE void in_groups(int64_t count, FR&& rb, F4&& four, F1&& one) {
  int64_t i = 0;
  for (; i + RB <= count; i += RB) rb(i);
  for (; i + 4 <= count; i += 4) four(i);
  for (; i < count; ++i) one(i);
}

// The same two products for a narrow block (the last few samples of a batch), vectorised along
// the coefficients instead of across samples: broadcasting a basis value into V lanes of which
// one or two are real samples would cost a full block's work.
// points[r][j] = mean[r] + basis rows . coefficients of sample j.
template <typename T, int V>
WSC_ALWAYS_INLINE void narrow_rows(const Problem<T>& p, Block<T, V>& b) {
  const int64_t Ki = p.d.K_id, Ke = p.d.K_exp, rows = 3 * p.d.L;
  std::fill(b.points, b.points + rows * V, T(0));
  for (int64_t j = 0; j < b.S; ++j) {
    const T* a = p.id_coeff + (b.n0 + j) * Ki;
    const T* e = p.exp_coeff + (b.n0 + j) * Ke;
    for (int64_t r = 0; r < rows; ++r) {
      const T* bi = p.id_basis + r * Ki;
      const T* be = p.exp_basis + r * Ke;
      T acc = T(0);
#pragma omp simd reduction(+ : acc)
      for (int64_t k = 0; k < Ki; ++k) acc += bi[k] * a[k];
#pragma omp simd reduction(+ : acc)
      for (int64_t k = 0; k < Ke; ++k) acc += be[k] * e[k];
      b.points[r * V + j] = p.mean[r] + acc;
    }
  }
}

// grad[n0 + j][:] = sum_r basis[r][:] dp[r][j], one pass over the basis rows.
template <typename T, int V>
WSC_ALWAYS_INLINE void narrow_columns(const T* basis, int64_t K, int64_t rows, const Block<T, V>& b, T* grad) {
  T* out = grad + b.n0 * K;
  std::fill(out, out + b.S * K, T(0));
  for (int64_t r = 0; r < rows; ++r) {
    const T* row = basis + r * K;
    for (int64_t j = 0; j < b.S; ++j) {
      const T g = b.points[r * V + j];
      T* o = out + j * K;
#pragma omp simd
      for (int64_t k = 0; k < K; ++k) o[k] += row[k] * g;
    }
  }
}

// dst[r * dst_stride + j] = src[r * src_stride + j] * scale[j] for j < S: the block's samples of
// each row of an (R, N) array, one vector per row when the block is full.
template <int V, typename T>
WSC_ALWAYS_INLINE void copy_rows(const T* src, int64_t src_stride, T* dst, int64_t dst_stride, int64_t rows,
                                 int64_t S, const T* scale) {
  if (S == V) {
    for (int64_t r = 0; r < rows; ++r)
#pragma omp simd
      for (int j = 0; j < V; ++j) dst[r * dst_stride + j] = src[r * src_stride + j] * scale[j];
  } else {
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t j = 0; j < S; ++j) dst[r * dst_stride + j] = src[r * src_stride + j] * scale[j];
  }
}

// Copy a (S, width) row-major slab starting at row n0 into lane-major (width, V), padding with 0:
// one full vector written per item (the reads gather across the S rows).
template <int V, typename T, typename D>
WSC_ALWAYS_INLINE void to_lanes(const T* src, int64_t width, int64_t n0, int64_t S, D* dst) {
  const T* s = src + n0 * width;
  if (S == V) {
    for (int64_t q = 0; q < width; ++q)
#pragma omp simd
      for (int j = 0; j < V; ++j) dst[q * V + j] = static_cast<D>(s[j * width + q]);
  } else {
    for (int64_t q = 0; q < width; ++q)
#pragma omp simd
      for (int j = 0; j < V; ++j) dst[q * V + j] = j < S ? static_cast<D>(s[j * width + q]) : D(0);
  }
}

// A block over the thread's scratch: T values (points, coefficients), Geo values (targets, weights).
template <typename T, int V>
WSC_ALWAYS_INLINE void init_block(const Problem<T>& p, int64_t n0, Block<T, V>& b) {
  const int64_t rows = 3 * p.d.L;
  b.n0 = n0;
  b.S = std::min<int64_t>(V, p.d.N - n0);
  b.points = static_cast<T*>(thread_scratch(static_cast<size_t>((rows + p.d.K_id + p.d.K_exp) * V) * sizeof(T), 0));
  b.coef = b.points + rows * V;
  b.target = static_cast<Geo*>(thread_scratch(static_cast<size_t>(3 * p.d.L * V) * sizeof(Geo), 1));
  b.weights = b.target + 2 * p.d.L * V;
}

// Per-sample rotation and translation (padding lanes: identity pose), targets and weights.
template <typename T, int V>
WSC_ALWAYS_INLINE void setup_lanes(const Problem<T>& p, Block<T, V>& b) {
  const int64_t L = p.d.L;
  for (int j = 0; j < V; ++j) {
    const bool real = j < b.S;
    const T* a = p.angles + (b.n0 + j) * 3;
    const T* t = p.translation + (b.n0 + j) * 3;
    const EulerTrig<Geo> e = euler_trig<Geo>(real ? a[0] : T(0), real ? a[1] : T(0), real ? a[2] : T(0));
    const Geo trig[6] = {e.sp, e.cp, e.sy, e.cy, e.sr, e.cr};
    for (int i = 0; i < 6; ++i) b.trig[i][j] = trig[i];
    Geo R[9];
    rotation_matrix(e, R);
    for (int i = 0; i < 9; ++i) b.R[i][j] = R[i];
    b.tx[j] = real ? t[0] : T(0);
    b.ty[j] = real ? t[1] : T(0);
    b.tz[j] = real ? t[2] : T(0);
  }
  to_lanes<V>(p.target, 2 * L, b.n0, b.S, b.target);
  if (p.d.per_sample_weights) {
    to_lanes<V>(p.weights, L, b.n0, b.S, b.weights);
  } else {
    for (int64_t l = 0; l < L; ++l) {
      const Geo w = p.weights[l];
#pragma omp simd
      for (int j = 0; j < V; ++j) b.weights[l * V + j] = j < b.S ? w : Geo(0);
    }
  }
}

struct Camera {
  Geo focal, cx, cy, distance;
};

// Landmark l of every lane: its loss term into weighted and, with Grads, its gradients (dloss/dp
// over pt, dloss/dtarget over tg, and the sums dloss/dt, dloss/dR). A function of restrict
// pointers, so that the compiler knows the rows do not overlap and vectorises across lanes.
template <int Norm, bool Grads, typename T, int V>
WSC_ALWAYS_INLINE void landmark_lanes(T* __restrict pt, Geo* __restrict tg, const Geo* __restrict w,
                                      const Camera& cam, const Geo (&R)[9][V], const Geo (&t)[3][V],
                                      const Geo (&inv_weight)[V], Geo (&weighted)[V], Geo (&gt)[3][V],
                                      Geo (&G)[9][V]) {
#pragma omp simd
  for (int j = 0; j < V; ++j) {
    const Geo px = pt[j], py = pt[V + j], pz = pt[2 * V + j];
    const Geo vx = R[0][j] * px + R[1][j] * py + R[2][j] * pz + t[0][j];
    const Geo vy = R[3][j] * px + R[4][j] * py + R[5][j] * pz + t[1][j];
    const Geo vz = R[6][j] * px + R[7][j] * py + R[8][j] * pz + t[2][j];
    Geo du, dw, inv_depth;
    projection_residual<Geo>(vx, vy, vz, cam.focal, cam.cx, cam.cy, cam.distance, tg[j], tg[V + j], du, dw, inv_depth);
    weighted[j] += w[j] * landmark_distance<Norm>(du, dw);
    if constexpr (Grads) {
      Geo g_du, g_dw;
      landmark_distance_grad<Norm>(du, dw, g_du, g_dw);
      const Geo s = inv_weight[j] * w[j];
      const Geo gu = s * g_du, gw = s * g_dw;
      tg[j] = -gu;
      tg[V + j] = -gw;
      Geo gx, gy, gz;
      project_point_vjp<Geo>(vx, vy, inv_depth, cam.focal, gu, gw, gx, gy, gz);
      gt[0][j] += gx; gt[1][j] += gy; gt[2][j] += gz;
      G[0][j] += gx * px; G[1][j] += gx * py; G[2][j] += gx * pz;
      G[3][j] += gy * px; G[4][j] += gy * py; G[5][j] += gy * pz;
      G[6][j] += gz * px; G[7][j] += gz * py; G[8][j] += gz * pz;
      // dloss/dp = R^T dloss/dv, in T for the product with the bases.
      pt[j] = static_cast<T>(R[0][j] * gx + R[3][j] * gy + R[6][j] * gz);
      pt[V + j] = static_cast<T>(R[1][j] * gx + R[4][j] * gy + R[7][j] * gz);
      pt[2 * V + j] = static_cast<T>(R[2][j] * gx + R[5][j] * gy + R[8][j] * gz);
    }
  }
}

// Per-sample losses of the block into p.per_sample; with Grads, also each sample's gradients:
// dloss/dp replaces b.points, dloss/dtarget replaces b.target, and the pose gradients go to
// p.pose_grads. Each point and target is read before its gradient overwrites it.
template <int Norm, bool Grads, typename T, int V>
WSC_ALWAYS_INLINE void block_landmarks(const Problem<T>& p, Block<T, V>& b) {
  const int64_t L = p.d.L;
  const Geo focal = p.cam.focal, cx = p.cam.cx, cy = p.cam.cy, distance = p.cam.distance;
  alignas(64) Geo R[9][V], t[3][V];
  for (int i = 0; i < 9; ++i)
#pragma omp simd
    for (int j = 0; j < V; ++j) R[i][j] = b.R[i][j];
#pragma omp simd
  for (int j = 0; j < V; ++j) {
    t[0][j] = b.tx[j];
    t[1][j] = b.ty[j];
    t[2][j] = b.tz[j];
  }
  alignas(64) Geo weighted[V], weight_sum[V], inv_weight[V];
#pragma omp simd
  for (int j = 0; j < V; ++j) weighted[j] = weight_sum[j] = Geo(0);
  for (int64_t l = 0; l < L; ++l) {
    const Geo* __restrict w = b.weights + l * V;
#pragma omp simd
    for (int j = 0; j < V; ++j) weight_sum[j] += w[j];
  }
#pragma omp simd
  for (int j = 0; j < V; ++j) inv_weight[j] = Geo(1) / weight_normaliser(weight_sum[j]);
  alignas(64) Geo gt[3][V], G[9][V];  // dloss/dt and dloss/dR = sum_l dloss/dv_l p_l^T
  for (int i = 0; i < 9; ++i)
#pragma omp simd
    for (int j = 0; j < V; ++j) G[i][j] = Geo(0);
  for (int i = 0; i < 3; ++i)
#pragma omp simd
    for (int j = 0; j < V; ++j) gt[i][j] = Geo(0);
  const Camera cam{focal, cx, cy, distance};
  for (int64_t l = 0; l < L; ++l)
    landmark_lanes<Norm, Grads, T, V>(b.points + 3 * l * V, b.target + 2 * l * V, b.weights + l * V, cam, R, t,
                                      inv_weight, weighted, gt, G);
  alignas(64) T loss[V];
#pragma omp simd
  for (int j = 0; j < V; ++j) loss[j] = static_cast<T>(weighted[j] * inv_weight[j]);
  std::memcpy(p.per_sample + b.n0, loss, static_cast<size_t>(b.S) * sizeof(T));
  if constexpr (Grads) {
    alignas(64) Geo pose_grad[6][V];  // dloss/d(pitch, yaw, roll), dloss/dt
#pragma omp simd
    for (int j = 0; j < V; ++j) {
      const Geo Gj[9] = {G[0][j], G[1][j], G[2][j], G[3][j], G[4][j], G[5][j], G[6][j], G[7][j], G[8][j]};
      rotation_angle_grads(b.trig_lane(j), Gj, pose_grad[0][j], pose_grad[1][j], pose_grad[2][j]);
      for (int i = 0; i < 3; ++i) pose_grad[3 + i][j] = gt[i][j];
    }
    for (int64_t j = 0; j < b.S; ++j)
      for (int i = 0; i < 6; ++i) p.pose_grads[(b.n0 + j) * 6 + i] = static_cast<T>(pose_grad[i][j]);
  }
}

template <typename T, int V, int RB>
WSC_ALWAYS_INLINE void forward_block(const Problem<T>& p, int64_t n0) {
  const int64_t rows = 3 * p.d.L;
  Block<T, V> b;
  init_block(p, n0, b);

  // The landmark rows: the only R*K work of the forward.
  if constexpr (V == kNarrow<T>) {
    narrow_rows(p, b);
  } else {
    to_lanes<V>(p.id_coeff, p.d.K_id, n0, b.S, b.coef);
    to_lanes<V>(p.exp_coeff, p.d.K_exp, n0, b.S, b.coef + p.d.K_id * V);
    in_groups<RB>(
        rows, [&](int64_t r) { basis_rows<T, V, RB>(p, b.coef, r, b.points); },
        [&](int64_t r) { basis_rows<T, V, 4>(p, b.coef, r, b.points); },
        [&](int64_t r) { basis_rows<T, V, 1>(p, b.coef, r, b.points); });
  }
  setup_lanes(p, b);
  const bool grads = p.point_grads != nullptr;
  if (p.norm == kLandmarkL1) {
    if (grads) block_landmarks<kLandmarkL1, true>(p, b);
    else block_landmarks<kLandmarkL1, false>(p, b);
  } else {
    if (grads) block_landmarks<kLandmarkL2, true>(p, b);
    else block_landmarks<kLandmarkL2, false>(p, b);
  }
  if (!grads) return;
  alignas(64) T one[V];
  for (int j = 0; j < V; ++j) one[j] = T(1);
  copy_rows<V>(b.points, V, p.point_grads + n0, p.d.N, rows, b.S, one);
  if (p.target_grads)
    for (int64_t j = 0; j < b.S; ++j)
      for (int64_t q = 0; q < 2 * p.d.L; ++q)
        p.target_grads[(n0 + j) * 2 * p.d.L + q] = static_cast<T>(b.target[q * V + j]);
}

// The coefficient gradients of a block: g_n dloss_n/dp (read from the saved (L,3,N) gradients and
// scaled by the incoming gradient) times the bases.
template <typename T, int V, int RB>
WSC_ALWAYS_INLINE void backward_block(const Problem<T>& p, int64_t n0) {
  const int64_t rows = 3 * p.d.L;
  Block<T, V> b;
  init_block(p, n0, b);
  alignas(64) T scale[V];
  for (int j = 0; j < V; ++j) scale[j] = j < b.S ? sample_grad<T>(p.grad, n0 + j, p.d.N, p.reduction) : T(0);
  if (b.S < V) std::fill(b.points, b.points + rows * V, T(0));
  copy_rows<V>(p.point_grads + n0, p.d.N, b.points, V, rows, b.S, scale);

  // dL/dcoeff = basis^T dL/dp: the only R*K work of the backward.
  const auto columns = [&](const T* basis, int64_t K, T* grad) {
    if (!grad) return;
    if constexpr (V == kNarrow<T>) {
      narrow_columns(basis, K, rows, b, grad);
      return;
    }
    in_groups<RB>(
        K, [&](int64_t k) { basis_columns<T, V, RB>(basis, K, rows, b.points, k, b, grad); },
        [&](int64_t k) { basis_columns<T, V, 4>(basis, K, rows, b.points, k, b, grad); },
        [&](int64_t k) { basis_columns<T, V, 1>(basis, K, rows, b.points, k, b, grad); });
  };
  columns(p.id_basis, p.d.K_id, p.grad_id);
  columns(p.exp_basis, p.d.K_exp, p.grad_exp);
}

// One block function per instruction set and block width; RB accumulators of RB x 64 bytes fit
// the registers (AVX-512: 32 zmm, AVX2: 16 ymm holding 2 per row, SSE2: 16 xmm holding 4 per row).
template <typename T>
using BlockFn = void (*)(const Problem<T>&, int64_t n0, bool narrow);

template <typename T, int RB>
WSC_ALWAYS_INLINE void forward_any(const Problem<T>& p, int64_t n0, bool narrow) {
  if (narrow) forward_block<T, kNarrow<T>, RB>(p, n0);
  else forward_block<T, kWide<T>, RB>(p, n0);
}
template <typename T, int RB>
WSC_ALWAYS_INLINE void backward_any(const Problem<T>& p, int64_t n0, bool narrow) {
  if (narrow) backward_block<T, kNarrow<T>, RB>(p, n0);
  else backward_block<T, kWide<T>, RB>(p, n0);
}

#if defined(WSC_X86_DISPATCH)
template <typename T> WSC_TARGET_AVX512 void forward_avx512(const Problem<T>& p, int64_t n0, bool narrow) { forward_any<T, 12>(p, n0, narrow); }
template <typename T> WSC_TARGET_AVX2 void forward_avx2(const Problem<T>& p, int64_t n0, bool narrow) { forward_any<T, 6>(p, n0, narrow); }
template <typename T> WSC_TARGET_AVX512 void backward_avx512(const Problem<T>& p, int64_t n0, bool narrow) { backward_any<T, 12>(p, n0, narrow); }
template <typename T> WSC_TARGET_AVX2 void backward_avx2(const Problem<T>& p, int64_t n0, bool narrow) { backward_any<T, 6>(p, n0, narrow); }
#endif
template <typename T> void forward_baseline(const Problem<T>& p, int64_t n0, bool narrow) { forward_any<T, 4>(p, n0, narrow); }
template <typename T> void backward_baseline(const Problem<T>& p, int64_t n0, bool narrow) { backward_any<T, 4>(p, n0, narrow); }

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

template <typename T>
BlockFn<T> forward_fn() {
#if defined(WSC_X86_DISPATCH)
  if (kIsa == Isa::kAvx512) return forward_avx512<T>;
  if (kIsa == Isa::kAvx2) return forward_avx2<T>;
#endif
  return forward_baseline<T>;
}
template <typename T>
BlockFn<T> backward_fn() {
#if defined(WSC_X86_DISPATCH)
  if (kIsa == Isa::kAvx512) return backward_avx512<T>;
  if (kIsa == Isa::kAvx2) return backward_avx2<T>;
#endif
  return backward_baseline<T>;
}

// Below ~64k multiply-adds a parallel region costs more than it saves (and stalls when the other
// core is busy), so small calls run on the calling thread. Blocks are handed out one at a time,
// so a thread that wakes late takes fewer of them instead of delaying the whole call.
constexpr int64_t kParallelMin = 1 << 16;

// Full blocks, then the rest of the batch: a narrow block when it is under a quarter of a full
// one (a narrow block costs about a quarter of a full block per sample, measured at BFM size),
// else one full block, padded.
template <typename T>
void for_each_block(const Problem<T>& p, BlockFn<T> fn, int64_t work_per_sample) {
  constexpr int64_t W = kWide<T>, S = kNarrow<T>;
  const int64_t rest = p.d.N % W;
  const bool narrow_rest = rest > 0 && 4 * rest < W;
  const int64_t wide = p.d.N / W + (rest > 0 && !narrow_rest ? 1 : 0);
  const int64_t narrow = narrow_rest ? (rest + S - 1) / S : 0;
  const int64_t tasks = wide + narrow;
#pragma omp parallel for schedule(dynamic, 1) if (tasks > 1 && p.d.N * work_per_sample >= kParallelMin)
  for (int64_t task = 0; task < tasks; ++task) {
    if (task < wide) fn(p, task * W, false);
    else fn(p, wide * W + (task - wide) * S, true);
  }
}

}  // namespace

template <typename T>
void landmark_loss_forward_cpu(const LandmarkLossDims& dims, const LandmarkCamera& camera, int norm,
                               int reduction, const T* id_coeff, const T* exp_coeff, const T* angles,
                               const T* translation, const T* target, const T* weights, const T* mean,
                               const T* id_basis, const T* exp_basis, T* per_sample, T* loss, T* point_grads,
                               T* pose_grads, T* target_grads) {
  Problem<T> p{};
  p.d = dims;
  p.cam = camera;
  p.norm = norm;
  p.reduction = reduction;
  p.id_coeff = id_coeff; p.exp_coeff = exp_coeff; p.angles = angles; p.translation = translation;
  p.target = target; p.weights = weights; p.mean = mean; p.id_basis = id_basis; p.exp_basis = exp_basis;
  p.per_sample = per_sample;
  p.point_grads = point_grads; p.pose_grads = pose_grads; p.target_grads = target_grads;
  for_each_block(p, forward_fn<T>(), 3 * dims.L * (dims.K_id + dims.K_exp + 16));
  if (reduction != kReduceNone) {
    T total = T(0);  // in sample order: the same result on any thread count
    for (int64_t n = 0; n < dims.N; ++n) total += per_sample[n];
    // The mean of no samples is NaN, as torch.mean's.
    loss[0] = reduction == kReduceMean ? total / static_cast<T>(dims.N) : total;
  }
}

template <typename T>
void landmark_loss_backward_cpu(const LandmarkLossDims& dims, int reduction, const T* grad, const T* point_grads,
                                const T* pose_grads, const T* target_grads, const T* id_basis, const T* exp_basis,
                                T* grad_id, T* grad_exp, T* grad_angles, T* grad_translation, T* grad_target) {
  Problem<T> p{};
  p.d = dims;
  p.reduction = reduction;
  p.grad = grad;
  p.point_grads = const_cast<T*>(point_grads);  // read only in the backward
  p.id_basis = id_basis; p.exp_basis = exp_basis;
  p.grad_id = grad_id; p.grad_exp = grad_exp;
  if (grad_id || grad_exp) for_each_block(p, backward_fn<T>(), 3 * dims.L * (dims.K_id + dims.K_exp));
  for (int64_t n = 0; n < dims.N; ++n) {
    const T g = sample_grad<T>(grad, n, dims.N, reduction);
    for (int i = 0; i < 3; ++i) {
      grad_angles[n * 3 + i] = g * pose_grads[n * 6 + i];
      grad_translation[n * 3 + i] = g * pose_grads[n * 6 + 3 + i];
    }
    if (grad_target)
      for (int64_t q = 0; q < 2 * dims.L; ++q) grad_target[n * 2 * dims.L + q] = g * target_grads[n * 2 * dims.L + q];
  }
}

#define WSC_INSTANTIATE(T)                                                                                  \
  template void landmark_loss_forward_cpu<T>(const LandmarkLossDims&, const LandmarkCamera&, int, int,       \
                                             const T*, const T*, const T*, const T*, const T*, const T*,     \
                                             const T*, const T*, const T*, T*, T*, T*, T*, T*);              \
  template void landmark_loss_backward_cpu<T>(const LandmarkLossDims&, int, const T*, const T*, const T*,   \
                                              const T*, const T*, const T*, T*, T*, T*, T*, T*);
WSC_INSTANTIATE(float)
WSC_INSTANTIATE(double)
#undef WSC_INSTANTIATE

}  // namespace wsc
