"""Triton kernels for landmark_loss (conventions in wscswap_fast/ops/landmark_loss.py and
kernels/landmark_loss.h). float32.

One program per sample, holding its L landmarks in registers (BLOCK_L lanes):
  forward:  p = mean + id_basis @ a + exp_basis @ e, a (BLOCK_L, BLOCK_K) tile of each basis at a
            time (3L*K multiply-adds); then pose, projection and the weighted distances reduced
            to the sample's loss; with NEED_GRADS also the gradients of that loss to p (written
            (L,3,N)), to the pose (N,6) and, with NEED_TARGET, to the target, while all of it is
            in registers (dloss/dR = sum_l dloss/dv_l p_l^T reduced over the landmarks).
  backward: g_n times those gradients, and dL/dcoeff = basis^T (g_n dloss_n/dp) a column tile at a
            time (3L*K multiply-adds).
Each program reads the bases once (3L*K*4 bytes, shared by all programs through L2).
The per-landmark stage (pose, projection, residuals, sums over landmarks) runs in float64, as in
the CPU and CUDA kernels: float32 pixel positions carry ~1e-5 pixel of rounding, which the pose
gradients' sums of residuals amplify. The camera arrives as float32 scalars (Triton's type for a
Python float).
"""
import triton
import triton.language as tl

NUM_WARPS = 4
WEIGHT_FLOOR = tl.constexpr(1e-12)  # a kernel reads only constexpr globals


@triton.jit
def _basis_product(points_x, points_y, points_z, coeff_ptr, basis_ptr, K, landmarks, landmark_mask,
                   BLOCK_K: tl.constexpr):
    """points += basis[l, :, :] @ coeff, a BLOCK_K column tile at a time."""
    rows = landmarks[:, None] * 3
    for k0 in range(0, K, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        k_mask = k < K
        c = tl.load(coeff_ptr + k, mask=k_mask, other=0.0)[None, :]
        tile_mask = landmark_mask[:, None] & k_mask[None, :]
        points_x += tl.sum(tl.load(basis_ptr + rows * K + k[None, :], mask=tile_mask, other=0.0) * c, axis=1)
        points_y += tl.sum(tl.load(basis_ptr + (rows + 1) * K + k[None, :], mask=tile_mask, other=0.0) * c, axis=1)
        points_z += tl.sum(tl.load(basis_ptr + (rows + 2) * K + k[None, :], mask=tile_mask, other=0.0) * c, axis=1)
    return points_x, points_y, points_z


@triton.jit
def _basis_transpose_product(grad_ptr, basis_ptr, K, g_x, g_y, g_z, landmarks, landmark_mask,
                             BLOCK_K: tl.constexpr):
    """grad[k] = sum_l basis[l, :, k] . g_l, a BLOCK_K column tile at a time."""
    rows = landmarks[:, None] * 3
    for k0 in range(0, K, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        k_mask = k < K
        tile_mask = landmark_mask[:, None] & k_mask[None, :]
        acc = tl.load(basis_ptr + rows * K + k[None, :], mask=tile_mask, other=0.0) * g_x[:, None]
        acc += tl.load(basis_ptr + (rows + 1) * K + k[None, :], mask=tile_mask, other=0.0) * g_y[:, None]
        acc += tl.load(basis_ptr + (rows + 2) * K + k[None, :], mask=tile_mask, other=0.0) * g_z[:, None]
        tl.store(grad_ptr + k, tl.sum(acc, axis=0), mask=k_mask)


@triton.jit
def _pose(angles_ptr, translation_ptr, n):
    """Sines and cosines of (pitch, yaw, roll), R = Rz Ry Rx row-major, and t; float64."""
    pitch = tl.load(angles_ptr + n * 3).to(tl.float64)
    yaw = tl.load(angles_ptr + n * 3 + 1).to(tl.float64)
    roll = tl.load(angles_ptr + n * 3 + 2).to(tl.float64)
    sp, cp = tl.sin(pitch), tl.cos(pitch)
    sy, cy = tl.sin(yaw), tl.cos(yaw)
    sr, cr = tl.sin(roll), tl.cos(roll)
    r0, r1, r2 = cr * cy, cr * sy * sp - sr * cp, cr * sy * cp + sr * sp
    r3, r4, r5 = sr * cy, sr * sy * sp + cr * cp, sr * sy * cp - cr * sp
    r6, r7, r8 = -sy, cy * sp, cy * cp
    tx = tl.load(translation_ptr + n * 3).to(tl.float64)
    ty = tl.load(translation_ptr + n * 3 + 1).to(tl.float64)
    tz = tl.load(translation_ptr + n * 3 + 2).to(tl.float64)
    return sp, cp, sy, cy, sr, cr, r0, r1, r2, r3, r4, r5, r6, r7, r8, tx, ty, tz


@triton.jit
def _residuals(px, py, pz, r0, r1, r2, r3, r4, r5, r6, r7, r8, tx, ty, tz, target_ptr, n, L, lm, live, focal, cx, cy,
               distance):
    """Camera-space x, y, 1/depth and the residuals (du, dw) to the targets, in float64 (the camera
    scalars promote); the constant parts first, as kernels/landmark_loss.h's projection_residual."""
    px, py, pz = px.to(tl.float64), py.to(tl.float64), pz.to(tl.float64)
    vx = r0 * px + r1 * py + r2 * pz + tx
    vy = r3 * px + r4 * py + r5 * pz + ty
    vz = r6 * px + r7 * py + r8 * pz + tz
    inv_depth = 1.0 / (distance - vz)
    du = (cx - tl.load(target_ptr + (n * L + lm) * 2, mask=live, other=0.0).to(tl.float64)) + focal * vx * inv_depth
    dw = (cy - tl.load(target_ptr + (n * L + lm) * 2 + 1, mask=live, other=0.0).to(tl.float64)) - focal * vy * inv_depth
    return px, py, pz, vx, vy, inv_depth, du, dw


@triton.jit
def _sign(x):
    return tl.where(x > 0, 1.0, tl.where(x < 0, -1.0, 0.0))


@triton.jit
def _forward_kernel(id_ptr, exp_ptr, angles_ptr, translation_ptr, target_ptr, weights_ptr, mean_ptr,
                    id_basis_ptr, exp_basis_ptr, per_sample_ptr, point_grads_ptr, pose_grads_ptr, target_grads_ptr,
                    N, L, K_ID, K_EXP, weights_sample_stride, focal, cx, cy, distance,
                    NORM: tl.constexpr, NEED_GRADS: tl.constexpr, NEED_TARGET: tl.constexpr,
                    BLOCK_L: tl.constexpr, BLOCK_K: tl.constexpr):
    n = tl.program_id(0).to(tl.int64)
    lm = tl.arange(0, BLOCK_L)
    live = lm < L
    # The products are summed from 0 and the mean added last (fewer roundings at the mean's magnitude).
    px = tl.zeros([BLOCK_L], dtype=tl.float32)
    py = tl.zeros([BLOCK_L], dtype=tl.float32)
    pz = tl.zeros([BLOCK_L], dtype=tl.float32)
    px, py, pz = _basis_product(px, py, pz, id_ptr + n * K_ID, id_basis_ptr, K_ID, lm, live, BLOCK_K)
    px, py, pz = _basis_product(px, py, pz, exp_ptr + n * K_EXP, exp_basis_ptr, K_EXP, lm, live, BLOCK_K)
    px += tl.load(mean_ptr + lm * 3, mask=live, other=0.0)
    py += tl.load(mean_ptr + lm * 3 + 1, mask=live, other=0.0)
    pz += tl.load(mean_ptr + lm * 3 + 2, mask=live, other=0.0)

    sp, cp, sy, cy_, sr, cr, r0, r1, r2, r3, r4, r5, r6, r7, r8, tx, ty, tz = _pose(angles_ptr, translation_ptr, n)
    px, py, pz, vx, vy, inv_depth, du, dw = _residuals(px, py, pz, r0, r1, r2, r3, r4, r5, r6, r7, r8, tx, ty, tz,
                                                       target_ptr, n, L, lm, live, focal, cx, cy, distance)
    if NORM == 0:
        d = du * du + dw * dw
    else:
        d = tl.abs(du) + tl.abs(dw)
    w = tl.load(weights_ptr + n * weights_sample_stride + lm, mask=live, other=0.0).to(tl.float64)
    inv_weight = 1.0 / tl.maximum(tl.sum(w, axis=0), WEIGHT_FLOOR)
    tl.store(per_sample_ptr + n, (tl.sum(w * d, axis=0) * inv_weight).to(tl.float32))
    if NEED_GRADS:
        if NORM == 0:
            g_du = 2.0 * du
            g_dw = 2.0 * dw
        else:
            g_du = _sign(du)
            g_dw = _sign(dw)
        gu = inv_weight * w * g_du
        gw = inv_weight * w * g_dw
        if NEED_TARGET:
            tl.store(target_grads_ptr + (n * L + lm) * 2, (-gu).to(tl.float32), mask=live)
            tl.store(target_grads_ptr + (n * L + lm) * 2 + 1, (-gw).to(tl.float32), mask=live)
        # Projection Jacobian-transpose: dloss/dv.
        gx = gu * focal * inv_depth
        gy = -gw * focal * inv_depth
        gz = (gx * vx + gy * vy) * inv_depth
        # dloss/dR = sum_l dloss/dv_l p_l^T, then its contraction with dR/dangle (kernels/landmark_loss.h).
        g0, g1, g2 = tl.sum(gx * px, axis=0), tl.sum(gx * py, axis=0), tl.sum(gx * pz, axis=0)
        g3, g4, g5 = tl.sum(gy * px, axis=0), tl.sum(gy * py, axis=0), tl.sum(gy * pz, axis=0)
        g6, g7, g8 = tl.sum(gz * px, axis=0), tl.sum(gz * py, axis=0), tl.sum(gz * pz, axis=0)
        g_pitch = (g1 * (cr * sy * cp + sr * sp) + g2 * (sr * cp - cr * sy * sp) + g4 * (sr * sy * cp - cr * sp)
                   - g5 * (sr * sy * sp + cr * cp) + g7 * (cy_ * cp) - g8 * (cy_ * sp))
        g_yaw = (-g0 * (cr * sy) + g1 * (cr * cy_ * sp) + g2 * (cr * cy_ * cp) - g3 * (sr * sy) + g4 * (sr * cy_ * sp)
                 + g5 * (sr * cy_ * cp) - g6 * cy_ - g7 * (sy * sp) - g8 * (sy * cp))
        g_roll = -(g0 * r3 + g1 * r4 + g2 * r5) + (g3 * r0 + g4 * r1 + g5 * r2)
        tl.store(pose_grads_ptr + n * 6, g_pitch.to(tl.float32))
        tl.store(pose_grads_ptr + n * 6 + 1, g_yaw.to(tl.float32))
        tl.store(pose_grads_ptr + n * 6 + 2, g_roll.to(tl.float32))
        tl.store(pose_grads_ptr + n * 6 + 3, tl.sum(gx, axis=0).to(tl.float32))
        tl.store(pose_grads_ptr + n * 6 + 4, tl.sum(gy, axis=0).to(tl.float32))
        tl.store(pose_grads_ptr + n * 6 + 5, tl.sum(gz, axis=0).to(tl.float32))
        # dloss/dp = R^T dloss/dv, (L,3,N).
        tl.store(point_grads_ptr + (lm * 3) * N + n, (r0 * gx + r3 * gy + r6 * gz).to(tl.float32), mask=live)
        tl.store(point_grads_ptr + (lm * 3 + 1) * N + n, (r1 * gx + r4 * gy + r7 * gz).to(tl.float32), mask=live)
        tl.store(point_grads_ptr + (lm * 3 + 2) * N + n, (r2 * gx + r5 * gy + r8 * gz).to(tl.float32), mask=live)


@triton.jit
def _backward_kernel(grad_ptr, point_grads_ptr, pose_grads_ptr, target_grads_ptr, id_basis_ptr, exp_basis_ptr,
                     grad_id_ptr, grad_exp_ptr, grad_angles_ptr, grad_translation_ptr, grad_target_ptr,
                     N, L, K_ID, K_EXP, grad_sample_stride, grad_scale,
                     NEED_ID: tl.constexpr, NEED_EXP: tl.constexpr, NEED_TARGET: tl.constexpr,
                     BLOCK_L: tl.constexpr, BLOCK_K: tl.constexpr):
    n = tl.program_id(0).to(tl.int64)
    g = tl.load(grad_ptr + n * grad_sample_stride) * grad_scale
    six = tl.arange(0, 8)
    pose = tl.load(pose_grads_ptr + n * 6 + six, mask=six < 6, other=0.0) * g
    tl.store(grad_angles_ptr + n * 3 + six, pose, mask=six < 3)
    tl.store(grad_translation_ptr + n * 3 + six - 3, pose, mask=(six >= 3) & (six < 6))
    lm = tl.arange(0, BLOCK_L)
    live = lm < L
    if NEED_TARGET:
        for c in range(2):
            offs = (n * L + lm) * 2 + c
            tl.store(grad_target_ptr + offs, tl.load(target_grads_ptr + offs, mask=live, other=0.0) * g, mask=live)
    dpx = tl.load(point_grads_ptr + (lm * 3) * N + n, mask=live, other=0.0) * g
    dpy = tl.load(point_grads_ptr + (lm * 3 + 1) * N + n, mask=live, other=0.0) * g
    dpz = tl.load(point_grads_ptr + (lm * 3 + 2) * N + n, mask=live, other=0.0) * g
    if NEED_ID:
        _basis_transpose_product(grad_id_ptr + n * K_ID, id_basis_ptr, K_ID, dpx, dpy, dpz, lm, live, BLOCK_K)
    if NEED_EXP:
        _basis_transpose_product(grad_exp_ptr + n * K_EXP, exp_basis_ptr, K_EXP, dpx, dpy, dpz, lm, live, BLOCK_K)


def _blocks(num_landmarks, k_id, k_exp):
    return max(16, triton.next_power_of_2(num_landmarks)), min(64, max(16, triton.next_power_of_2(max(k_id, k_exp))))


def forward(id_coeff, exp_coeff, angles, translation, target, weights, landmark_mean, landmark_id_basis,
            landmark_exp_basis, focal, cx, cy, camera_distance, norm: int, reduction: int, need_grads: bool,
            need_target: bool):
    """(loss, point_grads (L,3,N), pose_grads (N,6), target_grads (N,L,2)), the gradients of each
    sample's loss, None unless asked for; reduction 0 none, 1 mean, 2 sum; norm 0 l2, 1 l1."""
    tensors = [t.contiguous() for t in (id_coeff, exp_coeff, angles, translation, target, weights, landmark_mean,
                                        landmark_id_basis, landmark_exp_basis)]
    n, num_landmarks = id_coeff.shape[0], landmark_mean.shape[0]
    k_id, k_exp = landmark_id_basis.shape[2], landmark_exp_basis.shape[2]
    per_sample = id_coeff.new_empty((n,))
    point_grads = id_coeff.new_empty((num_landmarks, 3, n)) if need_grads else None
    pose_grads = id_coeff.new_empty((n, 6)) if need_grads else None
    target_grads = id_coeff.new_empty((n, num_landmarks, 2)) if need_target else None
    if n:
        block_l, block_k = _blocks(num_landmarks, k_id, k_exp)
        unused = per_sample  # a valid pointer for the outputs not asked for; their stores are compiled out
        _forward_kernel[(n,)](*tensors, per_sample, unused if point_grads is None else point_grads,
                              unused if pose_grads is None else pose_grads,
                              unused if target_grads is None else target_grads, n, num_landmarks, k_id, k_exp,
                              num_landmarks if weights.dim() == 2 else 0, focal, cx, cy, camera_distance,
                              NORM=norm, NEED_GRADS=need_grads, NEED_TARGET=need_target, BLOCK_L=block_l,
                              BLOCK_K=block_k, num_warps=NUM_WARPS)
    loss = per_sample if reduction == 0 else (per_sample.mean() if reduction == 1 else per_sample.sum())
    return loss, point_grads, pose_grads, target_grads


def backward(grad, point_grads, pose_grads, target_grads, landmark_id_basis, landmark_exp_basis, reduction: int,
             need_id: bool, need_exp: bool):
    """[grad_id, grad_exp, grad_angles, grad_translation, grad_target], None where not asked for."""
    grad, point_grads, pose_grads = grad.contiguous(), point_grads.contiguous(), pose_grads.contiguous()
    bases = [t.contiguous() for t in (landmark_id_basis, landmark_exp_basis)]
    n, num_landmarks = pose_grads.shape[0], point_grads.shape[0]
    k_id, k_exp = landmark_id_basis.shape[2], landmark_exp_basis.shape[2]
    grad_id = pose_grads.new_empty((n, k_id)) if need_id else None
    grad_exp = pose_grads.new_empty((n, k_exp)) if need_exp else None
    grad_angles, grad_translation = pose_grads.new_empty((n, 3)), pose_grads.new_empty((n, 3))
    grad_target = None if target_grads is None else pose_grads.new_empty((n, num_landmarks, 2))
    if n:
        block_l, block_k = _blocks(num_landmarks, k_id, k_exp)
        unused = grad_angles  # a valid pointer for the outputs not asked for; their stores are compiled out
        _backward_kernel[(n,)](grad, point_grads, pose_grads,
                               unused if target_grads is None else target_grads.contiguous(), *bases,
                               unused if grad_id is None else grad_id, unused if grad_exp is None else grad_exp,
                               grad_angles, grad_translation, unused if grad_target is None else grad_target,
                               n, num_landmarks, k_id, k_exp, 1 if reduction == 0 else 0,
                               1.0 / n if reduction == 1 else 1.0, NEED_ID=need_id, NEED_EXP=need_exp,
                               NEED_TARGET=target_grads is not None, BLOCK_L=block_l, BLOCK_K=block_k,
                               num_warps=NUM_WARPS)
    return [grad_id, grad_exp, grad_angles, grad_translation, grad_target]
