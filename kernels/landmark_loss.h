// Landmark loss of a 3D morphable model (the fused op wscswap_fast.ops.landmark_loss).
// Per-sample math shared by the CPU loops (landmark_loss_cpu.cpp) and the CUDA kernels
// (landmark_loss.cu).
//
// For sample n with identity coefficients a (K_id), expression coefficients e (K_exp), angles
// (pitch, yaw, roll) and translation t, landmark l:
//   p_l  = mean_l + id_basis_l a + exp_basis_l e          (rest pose, only the L landmark rows)
//   v_l  = R p_l + t,  R = Rz(roll) Ry(yaw) Rx(pitch)      (Deep3DFaceRecon's convention)
//   Zc   = distance - v_l.z                                (camera on +z, looking towards -z)
//   u_l  = cx + focal v_l.x / Zc,  w_l = cy - focal v_l.y / Zc   (image y points down)
//   d_l  = (u_l - U_l)^2 + (w_l - W_l)^2  (L2)   or   |u_l - U_l| + |w_l - W_l|  (L1)
//   loss_n = sum_l weight_nl d_l / max(sum_l weight_nl, 1e-12)
// reduced over the batch by mean, sum or not at all. Gradients flow to a, e, the angles, t and
// the target (U, W); weights and the model rows are constants.
#pragma once
#include "common.h"

namespace wsc {

enum : int { kLandmarkL2 = 0, kLandmarkL1 = 1 };
enum : int { kReduceNone = 0, kReduceMean = 1, kReduceSum = 2 };

// Floor of a sample's weight sum: all-zero weights give a loss (and gradient) of 0, not NaN.
constexpr double kLandmarkWeightFloor = 1e-12;

struct LandmarkLossDims {
  int64_t N;      // batch
  int64_t L;      // landmarks
  int64_t K_id;   // identity components
  int64_t K_exp;  // expression components
  bool per_sample_weights;  // weights are (N, L); otherwise (L,), shared by the batch
};

struct LandmarkCamera {
  double focal, cx, cy, distance;
};

WSC_HD void sin_cos(float x, float& s, float& c) {
#if defined(__CUDA_ARCH__)
  sincosf(x, &s, &c);
#else
  s = std::sin(x);
  c = std::cos(x);
#endif
}
WSC_HD void sin_cos(double x, double& s, double& c) {
#if defined(__CUDA_ARCH__)
  sincos(x, &s, &c);
#else
  s = std::sin(x);
  c = std::cos(x);
#endif
}

// Sines and cosines of (pitch, yaw, roll): everything R and its derivatives need.
template <typename A>
struct EulerTrig {
  A sp, cp, sy, cy, sr, cr;
};

template <typename A>
WSC_HD EulerTrig<A> euler_trig(A pitch, A yaw, A roll) {
  EulerTrig<A> e;
  sin_cos(pitch, e.sp, e.cp);
  sin_cos(yaw, e.sy, e.cy);
  sin_cos(roll, e.sr, e.cr);
  return e;
}

// R = Rz(roll) Ry(yaw) Rx(pitch), row-major, with Rx = [[1,0,0],[0,c,-s],[0,s,c]],
// Ry = [[c,0,s],[0,1,0],[-s,0,c]], Rz = [[c,-s,0],[s,c,0],[0,0,1]].
template <typename A>
WSC_HD void rotation_matrix(const EulerTrig<A>& e, A R[9]) {
  R[0] = e.cr * e.cy;  R[1] = e.cr * e.sy * e.sp - e.sr * e.cp;  R[2] = e.cr * e.sy * e.cp + e.sr * e.sp;
  R[3] = e.sr * e.cy;  R[4] = e.sr * e.sy * e.sp + e.cr * e.cp;  R[5] = e.sr * e.sy * e.cp - e.cr * e.sp;
  R[6] = -e.sy;        R[7] = e.cy * e.sp;                        R[8] = e.cy * e.cp;
}

// The derivative of R: given G = dL/dR (row-major), the gradient of L to (pitch, yaw, roll),
// sum_jk G_jk dR_jk/dangle, with dR/dpitch, dR/dyaw, dR/droll written out from rotation_matrix.
template <typename A>
WSC_HD void rotation_angle_grads(const EulerTrig<A>& e, const A G[9], A& g_pitch, A& g_yaw, A& g_roll) {
  // dR/dpitch: column 0 is zero.
  g_pitch = G[1] * (e.cr * e.sy * e.cp + e.sr * e.sp) + G[2] * (e.sr * e.cp - e.cr * e.sy * e.sp) +
            G[4] * (e.sr * e.sy * e.cp - e.cr * e.sp) - G[5] * (e.sr * e.sy * e.sp + e.cr * e.cp) +
            G[7] * (e.cy * e.cp) - G[8] * (e.cy * e.sp);
  // dR/dyaw
  g_yaw = -G[0] * (e.cr * e.sy) + G[1] * (e.cr * e.cy * e.sp) + G[2] * (e.cr * e.cy * e.cp) -
          G[3] * (e.sr * e.sy) + G[4] * (e.sr * e.cy * e.sp) + G[5] * (e.sr * e.cy * e.cp) -
          G[6] * e.cy - G[7] * (e.sy * e.sp) - G[8] * (e.sy * e.cp);
  // dR/droll: row 0 is -(row 1 of R), row 1 is row 0 of R, row 2 is zero.
  A R[9];
  rotation_matrix(e, R);
  g_roll = -(G[0] * R[3] + G[1] * R[4] + G[2] * R[5]) + (G[3] * R[0] + G[4] * R[1] + G[5] * R[2]);
}

// v = R p + t.
template <typename A>
WSC_HD void transform_point(const A R[9], A tx, A ty, A tz, A px, A py, A pz, A& vx, A& vy, A& vz) {
  vx = R[0] * px + R[1] * py + R[2] * pz + tx;
  vy = R[3] * px + R[4] * py + R[5] * pz + ty;
  vz = R[6] * px + R[7] * py + R[8] * pz + tz;
}

// Perspective projection of a camera-space point, as its residual against the target (U, W):
// du = u - U, dw = w - W. The constant parts (cx - U, cy - W) are subtracted first: in float32 the
// pixel positions (~100) carry an absolute error of ~1e-5 pixel, which matters when the residual
// is a few pixels and the gradient sums many of them. inv_depth = 1 / (distance - vz) is kept for
// the Jacobian. A point at or behind the camera (vz >= distance) has no meaningful projection.
template <typename A>
WSC_HD void projection_residual(A vx, A vy, A vz, A focal, A cx, A cy, A distance, A target_u, A target_w, A& du,
                                A& dw, A& inv_depth) {
  inv_depth = A(1) / (distance - vz);
  du = (cx - target_u) + focal * vx * inv_depth;
  dw = (cy - target_w) - focal * vy * inv_depth;
}

// Jacobian-transpose of the projection: (dL/du, dL/dw) -> dL/dv.
//   du/dvx = f/Zc, dw/dvy = -f/Zc, du/dvz = f vx/Zc^2, dw/dvz = -f vy/Zc^2.
template <typename A>
WSC_HD void project_point_vjp(A vx, A vy, A inv_depth, A focal, A gu, A gw, A& gx, A& gy, A& gz) {
  gx = gu * focal * inv_depth;
  gy = -gw * focal * inv_depth;
  gz = (gx * vx + gy * vy) * inv_depth;
}

template <typename A>
WSC_HD A sign_of(A x) {
  return static_cast<A>(x > A(0)) - static_cast<A>(x < A(0));  // 0 at 0, as torch.abs's gradient
}

// The per-landmark distance d(du, dw) and its gradient (dd/ddu, dd/ddw).
template <int Norm, typename A>
WSC_HD A landmark_distance(A du, A dw) {
  if constexpr (Norm == kLandmarkL1) return (du < A(0) ? -du : du) + (dw < A(0) ? -dw : dw);
  else return du * du + dw * dw;
}
template <int Norm, typename A>
WSC_HD void landmark_distance_grad(A du, A dw, A& g_du, A& g_dw) {
  if constexpr (Norm == kLandmarkL1) {
    g_du = sign_of(du);
    g_dw = sign_of(dw);
  } else {
    g_du = A(2) * du;
    g_dw = A(2) * dw;
  }
}

template <typename A>
WSC_HD A weight_normaliser(A weight_sum) {
  return weight_sum > A(kLandmarkWeightFloor) ? weight_sum : A(kLandmarkWeightFloor);
}

// dLoss/dloss_n from the incoming gradient: grad is (N,) for kReduceNone, a scalar otherwise.
template <typename A, typename T>
WSC_HD A sample_grad(const T* grad, int64_t n, int64_t N, int reduction) {
  if (reduction == kReduceNone) return load(grad[n]);
  const A g = load(grad[0]);
  return reduction == kReduceMean ? g / static_cast<A>(N) : g;
}

// Layout of every pointer below (all dense, row-major):
//   id_coeff (N,K_id), exp_coeff (N,K_exp), angles (N,3), translation (N,3), target (N,L,2),
//   weights (N,L) or (L,), mean (L,3), id_basis (L,3,K_id), exp_basis (L,3,K_exp).
// forward writes per_sample (N,) and, unless reduction is kReduceNone, loss[0]. When point_grads
// is not null it also writes the gradients of each sample's loss (before the incoming gradient
// multiplies them), computed while the landmarks are at hand, which is all the backward needs:
//   point_grads (L,3,N), sample-minor: dloss_n/dp, p the rest-pose landmarks;
//   pose_grads (N,6): dloss_n/d(pitch, yaw, roll, tx, ty, tz);
//   target_grads (N,L,2): dloss_n/dtarget, when not null.
// backward, with g_n = dLoss/dloss_n (grad is (N,) for kReduceNone, else a scalar; the mean
// divides it by N): grad_id = g_n id_basis^T point_grads_n and grad_exp likewise (each when not
// null; the R*K work), grad_angles, grad_translation (N,3) = g_n pose_grads_n, and grad_target =
// g_n target_grads_n when not null.
// CPU entry points (landmark_loss_cpu.cpp), T = float or double.
template <typename T>
void landmark_loss_forward_cpu(const LandmarkLossDims& dims, const LandmarkCamera& camera, int norm,
                               int reduction, const T* id_coeff, const T* exp_coeff, const T* angles,
                               const T* translation, const T* target, const T* weights, const T* mean,
                               const T* id_basis, const T* exp_basis, T* per_sample, T* loss, T* point_grads,
                               T* pose_grads, T* target_grads);
template <typename T>
void landmark_loss_backward_cpu(const LandmarkLossDims& dims, int reduction, const T* grad, const T* point_grads,
                                const T* pose_grads, const T* target_grads, const T* id_basis, const T* exp_basis,
                                T* grad_id, T* grad_exp, T* grad_angles, T* grad_translation, T* grad_target);

// CUDA entry points (landmark_loss.cu), T = float; `stream` is a cudaStream_t.
template <typename T>
void landmark_loss_forward_cuda(const LandmarkLossDims& dims, const LandmarkCamera& camera, int norm,
                                int reduction, const T* id_coeff, const T* exp_coeff, const T* angles,
                                const T* translation, const T* target, const T* weights, const T* mean,
                                const T* id_basis, const T* exp_basis, T* per_sample, T* loss, T* point_grads,
                                T* pose_grads, T* target_grads, void* stream);
template <typename T>
void landmark_loss_backward_cuda(const LandmarkLossDims& dims, int reduction, const T* grad, const T* point_grads,
                                 const T* pose_grads, const T* target_grads, const T* id_basis, const T* exp_basis,
                                 T* grad_id, T* grad_exp, T* grad_angles, T* grad_translation, T* grad_target,
                                 void* stream);

}  // namespace wsc
