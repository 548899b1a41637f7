// CUDA kernels for landmark_loss (math in landmark_loss.h). float32.
//
// One thread block per sample; the batch is the grid. Per sample, R = 3L rows, K = K_id + K_exp:
//   forward:  the coefficients go to shared memory; each warp forms rows of p = mean + B c, its
//             lanes striding over k (coalesced reads of a basis row) and a shuffle reduction,
//             R*K multiply-adds; then one thread per landmark projects it and the block reduces
//             the weighted distances to loss_n. When gradients are wanted the same threads also
//             write dloss_n/dtarget and dloss_n/dp = R^T dloss_n/dv, and the block reduces dloss_n/dt
//             and dloss_n/dR = sum_l dloss_n/dv_l p_l^T (12 values) for the pose gradients.
//   backward: dL/dcoeff = g_n B^T dloss_n/dp: one thread per coefficient k, summing over the rows
//             (consecutive threads read consecutive k of a row: coalesced), R*K multiply-adds;
//             and the pose and target gradients scaled by g_n.
// The bases (R*K*4 bytes, 117 KB for BFM) are read by every block and stay in L2. Reductions
// run in a fixed order, so results do not depend on scheduling. mean/sum over the batch is a
// second, single-block kernel over the per-sample losses.
// The per-landmark stage (pose, projection, residuals, sums over landmarks) runs in double, as on
// the CPU (see landmark_loss_cpu.cpp): ~100 flops per landmark, negligible next to the products
// even at the 1/64 double rate of consumer GPUs.
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "landmark_loss.h"
#include "cuda_common.cuh"

namespace wsc {
using namespace cuda_common;
namespace {

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;
constexpr int kMaxSharedBytes = 48 * 1024;

template <typename A>
__device__ __forceinline__ A warp_sum(A v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// Sums NV per-thread values over the block; every thread gets the totals. scratch: kWarps*NV values.
template <typename A, int NV>
__device__ __forceinline__ void block_sum(A (&v)[NV], A* scratch) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
#pragma unroll
  for (int i = 0; i < NV; ++i) v[i] = warp_sum(v[i]);
  if (lane == 0) {
#pragma unroll
    for (int i = 0; i < NV; ++i) scratch[warp * NV + i] = v[i];
  }
  __syncthreads();
#pragma unroll
  for (int i = 0; i < NV; ++i) {
    A total = A(0);
    for (int w = 0; w < kWarps; ++w) total += scratch[w * NV + i];
    v[i] = total;
  }
  __syncthreads();  // scratch may be reused
}

using Geo = double;  // the per-landmark stage

struct Pose {
  EulerTrig<Geo> trig;
  Geo R[9];
  Geo tx, ty, tz;
};

__device__ __forceinline__ Pose load_pose(const float* angles, const float* translation, int64_t n) {
  Pose p;
  p.trig = euler_trig<Geo>(angles[n * 3], angles[n * 3 + 1], angles[n * 3 + 2]);
  rotation_matrix(p.trig, p.R);
  p.tx = translation[n * 3];
  p.ty = translation[n * 3 + 1];
  p.tz = translation[n * 3 + 2];
  return p;
}

struct Args {
  LandmarkLossDims d;
  LandmarkCamera cam;
  int norm, reduction;
};

template <int Norm>
__global__ void __launch_bounds__(kThreads)
forward_kernel(Args a, const float* __restrict__ id_coeff, const float* __restrict__ exp_coeff,
               const float* __restrict__ angles, const float* __restrict__ translation,
               const float* __restrict__ target, const float* __restrict__ weights,
               const float* __restrict__ mean, const float* __restrict__ id_basis,
               const float* __restrict__ exp_basis, float* __restrict__ per_sample, float* __restrict__ point_grads,
               float* __restrict__ pose_grads, float* __restrict__ target_grads) {
  extern __shared__ double shared[];
  const int64_t N = a.d.N, L = a.d.L, Ki = a.d.K_id, Ke = a.d.K_exp, rows = 3 * L;
  Geo* scratch = shared;                                          // kWarps * 13
  float* coef = reinterpret_cast<float*>(scratch + 13 * kWarps);  // K_id + K_exp
  float* points = coef + Ki + Ke;                                 // 3L
  const int64_t n = blockIdx.x;
  for (int64_t k = threadIdx.x; k < Ki; k += kThreads) coef[k] = id_coeff[n * Ki + k];
  for (int64_t k = threadIdx.x; k < Ke; k += kThreads) coef[Ki + k] = exp_coeff[n * Ke + k];
  __syncthreads();

  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  for (int64_t r = warp; r < rows; r += kWarps) {
    float acc = 0.f;
    for (int64_t k = lane; k < Ki; k += 32) acc += id_basis[r * Ki + k] * coef[k];
    for (int64_t k = lane; k < Ke; k += 32) acc += exp_basis[r * Ke + k] * coef[Ki + k];
    acc = warp_sum(acc);
    if (lane == 0) points[r] = mean[r] + acc;
  }
  const float* w_row = weights + (a.d.per_sample_weights ? n * L : 0);
  Geo weight_sum[1] = {0.0};
  for (int64_t l = threadIdx.x; l < L; l += kThreads) weight_sum[0] += w_row[l];
  block_sum(weight_sum, scratch);  // also the barrier that publishes points
  const Geo inv_weight = Geo(1) / weight_normaliser(weight_sum[0]);

  const Pose pose = load_pose(angles, translation, n);
  const bool grads = point_grads != nullptr;
  Geo acc[13];  // sum w d, dloss/dt (3), dloss/dR row-major (9)
#pragma unroll
  for (int i = 0; i < 13; ++i) acc[i] = 0.0;
  for (int64_t l = threadIdx.x; l < L; l += kThreads) {
    const Geo px = points[3 * l], py = points[3 * l + 1], pz = points[3 * l + 2];
    Geo vx, vy, vz, du, dw, inv_depth;
    transform_point<Geo>(pose.R, pose.tx, pose.ty, pose.tz, px, py, pz, vx, vy, vz);
    projection_residual<Geo>(vx, vy, vz, a.cam.focal, a.cam.cx, a.cam.cy, a.cam.distance, target[(n * L + l) * 2],
                             target[(n * L + l) * 2 + 1], du, dw, inv_depth);
    const Geo wt = w_row[l];
    acc[0] += wt * landmark_distance<Norm>(du, dw);
    if (!grads) continue;
    Geo g_du, g_dw;
    landmark_distance_grad<Norm>(du, dw, g_du, g_dw);
    const Geo s = inv_weight * wt;
    const Geo gu = s * g_du, gw = s * g_dw;
    if (target_grads) {
      target_grads[(n * L + l) * 2] = static_cast<float>(-gu);
      target_grads[(n * L + l) * 2 + 1] = static_cast<float>(-gw);
    }
    Geo gx, gy, gz;
    project_point_vjp<Geo>(vx, vy, inv_depth, a.cam.focal, gu, gw, gx, gy, gz);
    acc[1] += gx; acc[2] += gy; acc[3] += gz;
    acc[4] += gx * px; acc[5] += gx * py; acc[6] += gx * pz;
    acc[7] += gy * px; acc[8] += gy * py; acc[9] += gy * pz;
    acc[10] += gz * px; acc[11] += gz * py; acc[12] += gz * pz;
    point_grads[(3 * l) * N + n] = static_cast<float>(pose.R[0] * gx + pose.R[3] * gy + pose.R[6] * gz);
    point_grads[(3 * l + 1) * N + n] = static_cast<float>(pose.R[1] * gx + pose.R[4] * gy + pose.R[7] * gz);
    point_grads[(3 * l + 2) * N + n] = static_cast<float>(pose.R[2] * gx + pose.R[5] * gy + pose.R[8] * gz);
  }
  block_sum(acc, scratch);
  if (threadIdx.x == 0) {
    per_sample[n] = static_cast<float>(acc[0] * inv_weight);
    if (grads) {
      Geo g_angles[3];
      rotation_angle_grads(pose.trig, acc + 4, g_angles[0], g_angles[1], g_angles[2]);
      for (int i = 0; i < 3; ++i) {
        pose_grads[n * 6 + i] = static_cast<float>(g_angles[i]);
        pose_grads[n * 6 + 3 + i] = static_cast<float>(acc[1 + i]);
      }
    }
  }
}

// loss[0] = sum or mean of per_sample, in a fixed order.
__global__ void __launch_bounds__(kThreads)
reduce_kernel(const float* __restrict__ per_sample, int64_t N, int reduction, float* __restrict__ loss) {
  __shared__ float scratch[kWarps];
  float total[1] = {0.f};  // float, as torch's sum of float32
  for (int64_t n = threadIdx.x; n < N; n += kThreads) total[0] += per_sample[n];
  block_sum(total, scratch);
  if (threadIdx.x == 0) loss[0] = reduction == kReduceMean ? total[0] / static_cast<float>(N) : total[0];
}

// One block per sample: g_n times the saved gradients, and B^T (g_n dloss_n/dp) for the coefficients.
__global__ void __launch_bounds__(kThreads)
backward_kernel(LandmarkLossDims d, int reduction, const float* __restrict__ grad,
                const float* __restrict__ point_grads, const float* __restrict__ pose_grads,
                const float* __restrict__ target_grads, const float* __restrict__ id_basis,
                const float* __restrict__ exp_basis, float* __restrict__ grad_id, float* __restrict__ grad_exp,
                float* __restrict__ grad_angles, float* __restrict__ grad_translation,
                float* __restrict__ grad_target) {
  extern __shared__ double shared[];
  const int64_t N = d.N, L = d.L, Ki = d.K_id, Ke = d.K_exp, rows = 3 * L;
  float* dp = reinterpret_cast<float*>(shared);  // 3L: g_n dloss_n/dp
  const int64_t n = blockIdx.x;
  const float g = sample_grad<float>(grad, n, N, reduction);
  for (int64_t r = threadIdx.x; r < rows; r += kThreads) dp[r] = g * point_grads[r * N + n];
  if (threadIdx.x < 3) {
    grad_angles[n * 3 + threadIdx.x] = g * pose_grads[n * 6 + threadIdx.x];
    grad_translation[n * 3 + threadIdx.x] = g * pose_grads[n * 6 + 3 + threadIdx.x];
  }
  if (grad_target)
    for (int64_t q = threadIdx.x; q < 2 * L; q += kThreads) grad_target[n * 2 * L + q] = g * target_grads[n * 2 * L + q];
  __syncthreads();
  if (grad_id)
    for (int64_t k = threadIdx.x; k < Ki; k += kThreads) {
      float acc = 0.f;
      for (int64_t r = 0; r < rows; ++r) acc += id_basis[r * Ki + k] * dp[r];
      grad_id[n * Ki + k] = acc;
    }
  if (grad_exp)
    for (int64_t k = threadIdx.x; k < Ke; k += kThreads) {
      float acc = 0.f;
      for (int64_t r = 0; r < rows; ++r) acc += exp_basis[r * Ke + k] * dp[r];
      grad_exp[n * Ke + k] = acc;
    }
}


// floats: the float-sized slots of a kernel's shared memory (a double reduction slot counts 2).
size_t shared_bytes(int64_t floats, const char* what) {
  const int64_t bytes = floats * static_cast<int64_t>(sizeof(float));
  if (bytes > kMaxSharedBytes)
    throw std::runtime_error(std::string(what) + ": K_id + K_exp + 3L is too large for shared memory (" +
                             std::to_string(bytes) + " bytes > " + std::to_string(kMaxSharedBytes) + ")");
  return static_cast<size_t>(bytes);
}

void check_grid(int64_t N, const char* what) {
  if (N > 2147483647LL) throw std::runtime_error(std::string(what) + ": batch larger than 2^31 - 1");
}

}  // namespace

template <typename T>
void landmark_loss_forward_cuda(const LandmarkLossDims& dims, const LandmarkCamera& camera, int norm,
                                int reduction, const T* id_coeff, const T* exp_coeff, const T* angles,
                                const T* translation, const T* target, const T* weights, const T* mean,
                                const T* id_basis, const T* exp_basis, T* per_sample, T* loss, T* point_grads,
                                T* pose_grads, T* target_grads, void* stream) {
  const auto s = static_cast<cudaStream_t>(stream);
  const Args a{dims, camera, norm, reduction};
  check_grid(dims.N, "landmark_loss_forward_cuda");
  if (dims.N > 0) {
    const size_t smem = shared_bytes(dims.K_id + dims.K_exp + 3 * dims.L + 26 * kWarps, "landmark_loss_forward_cuda");
    const auto kernel = norm == kLandmarkL1 ? forward_kernel<kLandmarkL1> : forward_kernel<kLandmarkL2>;
    kernel<<<static_cast<unsigned>(dims.N), kThreads, smem, s>>>(a, id_coeff, exp_coeff, angles, translation, target,
                                                                 weights, mean, id_basis, exp_basis, per_sample,
                                                                 point_grads, pose_grads, target_grads);
    check_launch("landmark_loss_forward_cuda");
  }
  if (reduction != kReduceNone) {
    reduce_kernel<<<1, kThreads, 0, s>>>(per_sample, dims.N, reduction, loss);
    check_launch("landmark_loss_forward_cuda (reduction)");
  }
}

template <typename T>
void landmark_loss_backward_cuda(const LandmarkLossDims& dims, int reduction, const T* grad, const T* point_grads,
                                 const T* pose_grads, const T* target_grads, const T* id_basis, const T* exp_basis,
                                 T* grad_id, T* grad_exp, T* grad_angles, T* grad_translation, T* grad_target,
                                 void* stream) {
  check_grid(dims.N, "landmark_loss_backward_cuda");
  if (dims.N == 0) return;
  const auto s = static_cast<cudaStream_t>(stream);
  const size_t smem = shared_bytes(3 * dims.L, "landmark_loss_backward_cuda");
  backward_kernel<<<static_cast<unsigned>(dims.N), kThreads, smem, s>>>(
      dims, reduction, grad, point_grads, pose_grads, target_grads, id_basis, exp_basis, grad_id, grad_exp,
      grad_angles, grad_translation, grad_target);
  check_launch("landmark_loss_backward_cuda");
}

template void landmark_loss_forward_cuda<float>(const LandmarkLossDims&, const LandmarkCamera&, int, int,
                                                const float*, const float*, const float*, const float*,
                                                const float*, const float*, const float*, const float*,
                                                const float*, float*, float*, float*, float*, float*, void*);
template void landmark_loss_backward_cuda<float>(const LandmarkLossDims&, int, const float*, const float*,
                                                 const float*, const float*, const float*, const float*, float*,
                                                 float*, float*, float*, float*, void*);

}  // namespace wsc
