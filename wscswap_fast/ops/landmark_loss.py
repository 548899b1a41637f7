"""Fused 3DMM landmark loss: coefficients -> only the landmark vertices -> pose -> perspective
projection -> weighted L2 or L1 distance to 2-D targets, with a fused backward.

Backends: cpu (C++, OpenMP over blocks of samples), cuda (one thread block per sample), triton
(one program per sample), reference (plain PyTorch). float32 everywhere; float64 on cpu and
reference (for gradcheck). No fp16/bf16: the projection divides by depth and the loss subtracts
pixel positions of ~100 from one another, which half precision cannot resolve.

Conventions (those of :mod:`wscswap_fast.models.camera`, Deep3DFaceRecon's), per sample n and
landmark l:

    p_l = landmark_mean_l + landmark_id_basis_l @ id_coeff_n + landmark_exp_basis_l @ exp_coeff_n
    v_l = R p_l + t,   R = Rz(roll) @ Ry(yaw) @ Rx(pitch),  (pitch, yaw, roll) = angles_n, t = translation_n
    Zc = camera_distance - v_l.z,  u_l = cx + focal * v_l.x / Zc,  w_l = cy - focal * v_l.y / Zc
    d_l = (u_l - target_l.x)^2 + (w_l - target_l.y)^2      (norm='l2', squared pixel distance)
        = |u_l - target_l.x| + |w_l - target_l.y|          (norm='l1')
    loss_n = sum_l weight_nl d_l / max(sum_l weight_nl, 1e-12)

then ``reduction`` over the batch: 'mean' (default), 'sum' or 'none' (the (N,) losses). A
sample whose weights are all 0 has loss 0. Landmarks at or behind the camera (Zc <= 0) have no
meaningful projection; nothing checks for them.

Gradients flow to id_coeff, exp_coeff, angles, translation and target (first order only: the
backward is not itself differentiable). weights and the model rows are constants: passing them
with requires_grad raises instead of silently dropping their gradient.

Precision: the landmark rows and basis^T @ dL/dp run in the inputs' dtype; the per-landmark
stage (rotation, projection, residuals, their gradients and the sums over landmarks) runs in
float64 on every backend, because float32 pixel positions carry ~1e-5 pixel of rounding and the
pose gradients sum residuals of a few pixels whose total can be far smaller than its terms. With
float32 inputs every output is within 1e-5 (relative to its largest element) of float64.

Work, R = 3L rows, K = K_id + K_exp, per sample: the forward forms the landmark rows (R*K
multiply-adds), projects them and sums the weighted distances (~40 flops per landmark) and, when
an input requires grad, computes right there the gradient of the sample's loss to the landmarks,
the pose and the target (~60 flops per landmark more): dloss_n/dp (L, 3, N), (N, 6) and (N, L, 2).
Those are all it saves (dloss/dp has the size of the landmarks themselves; nothing of the full
mesh). The backward op multiplies them by the incoming gradient and forms basis^T @ dL/dp (R*K
multiply-adds). For a BFM-sized model (L=68, K=80+64) that is 59k multiply-adds per sample,
forward and backward together, against 2 x 35709*3*144 = 31M for the full mesh and its gradient.
A forward whose gradient is never asked for still pays the ~60 flops per landmark, not the R*K.

The reference backend builds the full mesh and indexes it when given ``full_model=(mean_shape
(V,3), id_basis (V,3,K_id), exp_basis (V,3,K_exp), landmark_indices (L,) int64)``; without it,
it uses the gathered landmark rows like the other backends. ``full_model`` is for the reference
only (the fast backends never touch the full mesh): with another backend it raises.
"""
import os

import torch

from .._ext import extension
from ..models.camera import perspective, rotation_matrix
from . import _checks
from ._backends import cuda_stream, on_device, resolve

NORMS = ("l2", "l1")
REDUCTIONS = ("mean", "sum", "none")
_NORM_CODE = {"l2": 0, "l1": 1}  # kernels/landmark_loss.h
_REDUCTION_CODE = {"none": 0, "mean": 1, "sum": 2}
FLOAT_DTYPES = (torch.float32, torch.float64)
SUPPORTED = {"cpu": FLOAT_DTYPES, "reference": FLOAT_DTYPES, "*": (torch.float32,)}
WEIGHT_FLOOR = 1e-12


# ---------------------------------------------------------------------------------------------
# The plain-PyTorch definition (the reference backend, and what every backend is tested against)
# ---------------------------------------------------------------------------------------------

def rest_landmarks(id_coeff, exp_coeff, landmark_mean, landmark_id_basis, landmark_exp_basis, full_model=None):
    """(N, L, 3) landmark vertices before the pose: from the full mesh when ``full_model`` is given."""
    if full_model is not None:
        mean_shape, id_basis, exp_basis, landmark_indices = full_model
        mesh = (mean_shape + torch.einsum("vck,nk->nvc", id_basis, id_coeff)
                + torch.einsum("vck,nk->nvc", exp_basis, exp_coeff))
        return mesh[:, landmark_indices]
    return (landmark_mean + torch.einsum("lck,nk->nlc", landmark_id_basis, id_coeff)
            + torch.einsum("lck,nk->nlc", landmark_exp_basis, exp_coeff))


def _per_sample_weights(weights, n):
    return weights.expand(n, -1) if weights.dim() == 1 else weights


def _reduce(per_sample, reduction):
    if reduction == "mean":
        return per_sample.mean()
    return per_sample.sum() if reduction == "sum" else per_sample


def reference(id_coeff, exp_coeff, angles, translation, target, weights, landmark_mean, landmark_id_basis,
              landmark_exp_basis, *, focal, cx, cy, camera_distance=10.0, norm="l2", reduction="mean",
              full_model=None):
    """landmark_loss in plain PyTorch (differentiable by autograd in every input)."""
    points = rest_landmarks(id_coeff, exp_coeff, landmark_mean, landmark_id_basis, landmark_exp_basis, full_model)
    camera_points = points @ rotation_matrix(angles).transpose(1, 2) + translation[:, None, :]
    diff = perspective(camera_points, focal, cx, cy, camera_distance) - target
    d = (diff * diff).sum(-1) if norm == "l2" else diff.abs().sum(-1)
    w = _per_sample_weights(weights, id_coeff.shape[0])
    return _reduce((w * d).sum(1) / w.sum(1).clamp_min(WEIGHT_FLOOR), reduction)


def rotation_derivatives(angles):
    """(N, 3) -> (N, 3, 3, 3): dR/dpitch, dR/dyaw, dR/droll of R = Rz(roll) Ry(yaw) Rx(pitch),
    from the derivatives of the three factors."""
    c, s = torch.cos(angles), torch.sin(angles)
    zero, one = torch.zeros_like(c[:, 0]), torch.ones_like(c[:, 0])

    def mat(*entries):
        return torch.stack(entries, dim=1).reshape(-1, 3, 3)

    (cp, cy, cr), (sp, sy, sr) = c.unbind(1), s.unbind(1)
    rx, drx = mat(one, zero, zero, zero, cp, -sp, zero, sp, cp), mat(zero, zero, zero, zero, -sp, -cp, zero, cp, -sp)
    ry, dry = mat(cy, zero, sy, zero, one, zero, -sy, zero, cy), mat(-sy, zero, cy, zero, zero, zero, -cy, zero, -sy)
    rz, drz = mat(cr, -sr, zero, sr, cr, zero, zero, zero, one), mat(-sr, -cr, zero, cr, -sr, zero, zero, zero, zero)
    return torch.stack([rz @ ry @ drx, rz @ dry @ rx, drz @ ry @ rx], dim=1)


def reference_sample_grads(id_coeff, exp_coeff, angles, translation, target, weights, landmark_mean,
                           landmark_id_basis, landmark_exp_basis, *, focal, cx, cy, camera_distance=10.0, norm="l2",
                           full_model=None):
    """The gradients of each sample's loss (reduction 'none', before the incoming gradient scales
    them), written out in plain PyTorch, the chain the fused kernels follow: dloss_n/dp (N, L, 3)
    for the rest-pose landmarks p, dloss_n/d(pitch, yaw, roll, tx, ty, tz) (N, 6) and
    dloss_n/dtarget (N, L, 2)."""
    n = id_coeff.shape[0]
    points = rest_landmarks(id_coeff, exp_coeff, landmark_mean, landmark_id_basis, landmark_exp_basis, full_model)
    rot = rotation_matrix(angles)
    v = points @ rot.transpose(1, 2) + translation[:, None, :]
    inv_depth = 1.0 / (camera_distance - v[..., 2])
    diff = perspective(v, focal, cx, cy, camera_distance) - target
    g_diff = 2 * diff if norm == "l2" else torch.sign(diff)
    w = _per_sample_weights(weights, n)
    g_uv = g_diff * (w / w.sum(1, keepdim=True).clamp_min(WEIGHT_FLOOR))[..., None]
    gx = g_uv[..., 0] * focal * inv_depth
    gy = -g_uv[..., 1] * focal * inv_depth
    gz = (gx * v[..., 0] + gy * v[..., 1]) * inv_depth
    g_v = torch.stack([gx, gy, gz], dim=-1)                      # (N, L, 3)
    g_rot = g_v.transpose(1, 2) @ points                         # dloss/dR = sum_l g_v p^T
    grad_angles = (rotation_derivatives(angles) * g_rot[:, None]).sum((-1, -2))
    return g_v @ rot, torch.cat([grad_angles, g_v.sum(1)], dim=1), -g_uv  # dloss/dp = R^T g_v per landmark


def reference_coefficient_grads(point_grads, landmark_id_basis, landmark_exp_basis, full_model=None):
    """basis^T @ dL/dp (N, L, 3) -> (dL/did_coeff, dL/dexp_coeff); with full_model through the full
    mesh: the landmark gradients scattered onto every vertex, then the full bases."""
    if full_model is None:
        return (torch.einsum("lck,nlc->nk", landmark_id_basis, point_grads),
                torch.einsum("lck,nlc->nk", landmark_exp_basis, point_grads))
    _, id_basis, exp_basis, landmark_indices = full_model
    mesh = point_grads.new_zeros((point_grads.shape[0], id_basis.shape[0], 3))
    mesh.index_add_(1, landmark_indices, point_grads)
    return torch.einsum("vck,nvc->nk", id_basis, mesh), torch.einsum("vck,nvc->nk", exp_basis, mesh)


def _sample_scale(grad, n, reduction):
    """dLoss/dloss_n (N,) from the incoming gradient."""
    if reduction == "none":
        return grad
    return (grad / n if reduction == "mean" else grad).expand(n)


# ---------------------------------------------------------------------------------------------
# Argument checks: once, here; every backend relies on them
# ---------------------------------------------------------------------------------------------

_ARGS = ("id_coeff", "exp_coeff", "angles", "translation", "target", "weights", "landmark_mean",
         "landmark_id_basis", "landmark_exp_basis")


def _check_full_model(full_model, ref, num_landmarks, k_id, k_exp):
    if not isinstance(full_model, (tuple, list)) or len(full_model) != 4:
        raise TypeError("full_model must be a tuple (mean_shape (V,3), id_basis (V,3,K_id), exp_basis (V,3,K_exp), "
                        f"landmark_indices (L,) int64), got {_checks.describe(full_model)}")
    mean_shape, id_basis, exp_basis, indices = full_model
    names = ("full_model mean_shape", "full_model id_basis", "full_model exp_basis", "full_model landmark_indices")
    for name, t in zip(names[:3], full_model[:3]):
        _checks.tensor(name, t, dtypes=(ref.dtype,), device=ref.device)
    _checks.tensor(names[3], indices, dtypes=(torch.int64,), device=ref.device)
    v = mean_shape.shape[0] if mean_shape.dim() == 2 else None
    _checks.shape(names[0], mean_shape, (v, 3), "(V,3)")
    _checks.shape(names[1], id_basis, (v, 3, k_id), "(V,3,K_id), K_id as landmark_id_basis")
    _checks.shape(names[2], exp_basis, (v, 3, k_exp), "(V,3,K_exp), K_exp as landmark_exp_basis")
    _checks.shape(names[3], indices, (num_landmarks,), "(L,), one vertex per landmark")
    if indices.numel() and not bool(((indices >= 0) & (indices < v)).all()):
        raise ValueError(f"full_model landmark_indices must lie in [0, {v}), got values from "
                         f"{int(indices.min())} to {int(indices.max())}")


def check_inputs(id_coeff, exp_coeff, angles, translation, target, weights, landmark_mean, landmark_id_basis,
                 landmark_exp_basis, focal, cx, cy, camera_distance, norm, reduction, full_model):
    """Validate once, here: every backend may assume what this guarantees. The common case is
    recognised in a few microseconds (this runs in every training step); anything else goes
    through the argument-by-argument checks, which name what is wrong or accept it."""
    if full_model is None and _plainly_valid(id_coeff, exp_coeff, angles, translation, target, weights, landmark_mean,
                                             landmark_id_basis, landmark_exp_basis, focal, cx, cy, camera_distance,
                                             norm, reduction):
        return
    _check_each(id_coeff, exp_coeff, angles, translation, target, weights, landmark_mean, landmark_id_basis,
                landmark_exp_basis, focal, cx, cy, camera_distance, norm, reduction, full_model)


def _plainly_valid(id_coeff, exp_coeff, angles, translation, target, weights, landmark_mean, landmark_id_basis,
                   landmark_exp_basis, focal, cx, cy, camera_distance, norm, reduction) -> bool:
    """True only for inputs _check_each accepts: the same conditions, without the messages."""
    tensors = (id_coeff, exp_coeff, angles, translation, target, weights, landmark_mean, landmark_id_basis,
               landmark_exp_basis)
    for t in tensors:
        if not isinstance(t, torch.Tensor):
            return False
    dtype, device = id_coeff.dtype, id_coeff.device
    if dtype not in FLOAT_DTYPES:
        return False
    for t in tensors:
        if t.dtype != dtype or t.device != device:
            return False
    if id_coeff.dim() != 2 or landmark_mean.dim() != 2 or landmark_exp_basis.dim() != 3:
        return False
    n, k_id = id_coeff.shape
    num_landmarks, k_exp = landmark_mean.shape[0], landmark_exp_basis.shape[2]
    if (landmark_mean.shape[1] != 3 or landmark_id_basis.shape != (num_landmarks, 3, k_id)
            or landmark_exp_basis.shape[:2] != (num_landmarks, 3) or exp_coeff.shape != (n, k_exp)
            or angles.shape != (n, 3) or translation.shape != (n, 3) or target.shape != (n, num_landmarks, 2)
            or weights.shape not in ((num_landmarks,), (n, num_landmarks))):
        return False
    if torch.is_grad_enabled() and (weights.requires_grad or landmark_mean.requires_grad
                                    or landmark_id_basis.requires_grad or landmark_exp_basis.requires_grad):
        return False
    return (type(focal) in _NUMBER and type(cx) in _NUMBER and type(cy) in _NUMBER
            and type(camera_distance) in _NUMBER and norm in _NORM_CODE and reduction in _REDUCTION_CODE)


_NUMBER = (float, int)


def _check_each(id_coeff, exp_coeff, angles, translation, target, weights, landmark_mean, landmark_id_basis,
                landmark_exp_basis, focal, cx, cy, camera_distance, norm, reduction, full_model):
    args = (id_coeff, exp_coeff, angles, translation, target, weights, landmark_mean, landmark_id_basis,
            landmark_exp_basis)
    _checks.tensor("id_coeff", id_coeff, dims=2, dtypes=FLOAT_DTYPES)
    dtype, device = id_coeff.dtype, id_coeff.device
    for name, t in zip(_ARGS[1:], args[1:]):
        _checks.tensor(name, t, device=device)
        if t.dtype != dtype:
            raise TypeError(f"{name} must have id_coeff's dtype {dtype}, got {_checks.describe(t)}")
    n, k_id = id_coeff.shape
    if landmark_mean.dim() != 2:
        raise ValueError(f"landmark_mean must be 2-D (L,3), got {_checks.describe(landmark_mean)}")
    num_landmarks = landmark_mean.shape[0]
    _checks.shape("landmark_mean", landmark_mean, (num_landmarks, 3), "(L,3)")
    _checks.shape("landmark_id_basis", landmark_id_basis, (num_landmarks, 3, k_id),
                  "(L,3,K_id): L as landmark_mean, K_id as id_coeff")
    k_exp = landmark_exp_basis.shape[2] if landmark_exp_basis.dim() == 3 else None
    _checks.shape("landmark_exp_basis", landmark_exp_basis, (num_landmarks, 3, k_exp), "(L,3,K_exp): L as landmark_mean")
    _checks.shape("exp_coeff", exp_coeff, (n, k_exp), "(N,K_exp): N as id_coeff, K_exp as landmark_exp_basis")
    _checks.shape("angles", angles, (n, 3), "(N,3) (pitch, yaw, roll), N as id_coeff")
    _checks.shape("translation", translation, (n, 3), "(N,3), N as id_coeff")
    _checks.shape("target", target, (n, num_landmarks, 2), "(N,L,2): N as id_coeff, L as landmark_mean")
    if weights.dim() == 1:
        _checks.shape("weights", weights, (num_landmarks,), "(L,) or (N,L)")
    else:
        _checks.shape("weights", weights, (n, num_landmarks), "(L,) or (N,L)")
    if torch.is_grad_enabled():
        for name, t in zip(_ARGS[5:], args[5:]):
            if t.requires_grad:
                raise ValueError(f"{name} requires grad, but landmark_loss does not differentiate it (it is a "
                                 "constant of the loss): pass it detached")
    for name, value in (("focal", focal), ("cx", cx), ("cy", cy), ("camera_distance", camera_distance)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{name} must be a number, got {value!r}")
    if norm not in _NORM_CODE:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    if reduction not in _REDUCTION_CODE:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if full_model is not None:
        _check_full_model(full_model, id_coeff, num_landmarks, k_id, k_exp)


# ---------------------------------------------------------------------------------------------
# The custom ops: forward and backward, one kernel call each
# ---------------------------------------------------------------------------------------------

def _loss_shape(n, reduction):
    return (n,) if reduction == "none" else ()


def _float64(tensors):
    """The reference backend evaluates in float64 (and rounds its results to the inputs' dtype):
    in float32 the pose gradients, sums of residuals of a few pixels each carrying ~1e-5 pixel of
    rounding, are good to only ~1e-5 of their size, and the reference is what the others are
    measured against. The fast backends run their per-landmark stage in float64 for the same reason."""
    return [t.double() if t is not None and t.is_floating_point() else t for t in tensors]


def _forward(id_coeff, exp_coeff, angles, translation, target, weights, landmark_mean, landmark_id_basis,
             landmark_exp_basis, full_model, camera, norm, reduction, need_grads, need_target, backend):
    """(loss, point_grads (L,3,N), pose_grads (N,6), target_grads (N,L,2)): the per-sample gradients
    only with need_grads (target_grads with need_target), else None."""
    if backend == "reference":
        kw = dict(zip(("focal", "cx", "cy", "camera_distance"), camera), norm=norm)
        inputs = _float64((id_coeff, exp_coeff, angles, translation, target, weights, landmark_mean,
                           landmark_id_basis, landmark_exp_basis))
        full = None if full_model is None else _float64(full_model)
        dtype = id_coeff.dtype
        loss = reference(*inputs, full_model=full, reduction=reduction, **kw).to(dtype)
        if not need_grads:
            return loss, None, None, None
        point, pose, tgt = reference_sample_grads(*inputs, full_model=full, **kw)
        return loss, point.permute(1, 2, 0).to(dtype).contiguous(), pose.to(dtype), tgt.to(dtype) if need_target else None
    device = id_coeff.device
    with on_device(device):
        if backend == "triton":
            from ..triton import landmark_loss as triton_landmark_loss

            return triton_landmark_loss.forward(id_coeff, exp_coeff, angles, translation, target, weights,
                                                landmark_mean, landmark_id_basis, landmark_exp_basis, *camera,
                                                _NORM_CODE[norm], _REDUCTION_CODE[reduction], need_grads, need_target)
        return tuple(extension.landmark_loss_forward(
            id_coeff, exp_coeff, angles, translation, target, weights, landmark_mean, landmark_id_basis,
            landmark_exp_basis, *camera, _NORM_CODE[norm], _REDUCTION_CODE[reduction], need_grads, need_target,
            cuda_stream(device)))


def _backward(grad, point_grads, pose_grads, target_grads, landmark_id_basis, landmark_exp_basis, full_model,
              reduction, need_id, need_exp, backend):
    """[grad_id, grad_exp, grad_angles, grad_translation, grad_target]: the forward's per-sample
    gradients times the incoming one; None for id/exp unless asked for, for target unless saved."""
    if backend == "reference":
        n = pose_grads.shape[0]
        dtype = pose_grads.dtype
        grad, point_grads, pose_grads, target_grads, landmark_id_basis, landmark_exp_basis = _float64(
            (grad, point_grads, pose_grads, target_grads, landmark_id_basis, landmark_exp_basis))
        scale = _sample_scale(grad, n, reduction)
        points = point_grads.permute(2, 0, 1) * scale[:, None, None]
        grad_id = grad_exp = None
        if need_id or need_exp:
            grad_id, grad_exp = (g.to(dtype) for g in reference_coefficient_grads(
                points, landmark_id_basis, landmark_exp_basis, None if full_model is None else _float64(full_model)))
        pose = (pose_grads * scale[:, None]).to(dtype)
        return [grad_id if need_id else None, grad_exp if need_exp else None, pose[:, :3].contiguous(),
                pose[:, 3:].contiguous(),
                None if target_grads is None else (target_grads * scale[:, None, None]).to(dtype)]
    device = pose_grads.device
    with on_device(device):
        if backend == "triton":
            from ..triton import landmark_loss as triton_landmark_loss

            return triton_landmark_loss.backward(grad, point_grads, pose_grads, target_grads, landmark_id_basis,
                                                 landmark_exp_basis, _REDUCTION_CODE[reduction], need_id, need_exp)
        return extension.landmark_loss_backward(grad, point_grads, pose_grads, target_grads, landmark_id_basis,
                                                landmark_exp_basis, _REDUCTION_CODE[reduction], need_id, need_exp,
                                                cuda_stream(device))


# Two ops, forward and backward, stitched together by an autograd.Function: what torch.compile
# traces (both ops have fake implementations and the Function is traceable, so
# torch.compile(fullgraph=True) keeps the whole loss in one graph), and what runs the reference and
# triton backends. Not custom_op with register_autograd: that wrapper costs ~200 us per call for an
# op with this many arguments (torch/_library/autograd.py calls utils.fill_defaults, which rebuilds
# the schema's argument list once per argument: quadratic in the argument count) and custom_op's
# own dispatch ~18 us against ~4 us for an op defined with torch.library.Library.
#
# In eager mode the cpu and cuda backends skip all of it: wscswap_fast._C.landmark_loss is the same
# forward kernel under a C++ autograd node whose backward calls the same backward kernel, so a
# training step pays no Python frame between the loss and its gradient: a forward+backward costs
# 61 us that way against 88 us through the Function for one sample, 109 against 138 us at N=64
# (BFM; warm, on the 2-core CI machine, where an empty autograd.grad costs 36 us).
_NATIVE = ("cpu", "cuda")
_lib = torch.library.Library("wscswap", "FRAGMENT")
_TENSORS = ("Tensor id_coeff, Tensor exp_coeff, Tensor angles, Tensor translation, Tensor target, Tensor weights, "
            "Tensor landmark_mean, Tensor landmark_id_basis, Tensor landmark_exp_basis, Tensor? mean_shape, "
            "Tensor? id_basis, Tensor? exp_basis, Tensor? landmark_indices")
_SETTINGS = "float focal, float cx, float cy, float camera_distance, str norm, str reduction"
_lib.define(f"landmark_loss({_TENSORS}, {_SETTINGS}, bool need_grads, bool need_target, str backend) "
            "-> (Tensor loss, Tensor[] sample_grads)")
_lib.define("landmark_loss_backward(Tensor grad, Tensor point_grads, Tensor pose_grads, Tensor? target_grads, "
            "Tensor landmark_id_basis, Tensor landmark_exp_basis, Tensor? id_basis, Tensor? exp_basis, "
            "Tensor? landmark_indices, str reduction, bool need_id, bool need_exp, str backend) -> Tensor[]")


def _full_model_arg(mean_shape, id_basis, exp_basis, landmark_indices):
    return None if id_basis is None else (mean_shape, id_basis, exp_basis, landmark_indices)


def _forward_impl(id_coeff, exp_coeff, angles, translation, target, weights, landmark_mean, landmark_id_basis,
                  landmark_exp_basis, mean_shape, id_basis, exp_basis, landmark_indices, focal, cx, cy,
                  camera_distance, norm, reduction, need_grads, need_target, backend):
    """(loss, [point_grads, pose_grads] + [target_grads] with need_target; [] without need_grads)."""
    loss, *grads = _forward(id_coeff, exp_coeff, angles, translation, target, weights, landmark_mean,
                            landmark_id_basis, landmark_exp_basis,
                            _full_model_arg(mean_shape, id_basis, exp_basis, landmark_indices),
                            (focal, cx, cy, camera_distance), norm, reduction, need_grads, need_target, backend)
    return loss, [g for g in grads if g is not None]


def _forward_fake(id_coeff, exp_coeff, angles, translation, target, weights, landmark_mean, landmark_id_basis,
                  landmark_exp_basis, mean_shape, id_basis, exp_basis, landmark_indices, focal, cx, cy,
                  camera_distance, norm, reduction, need_grads, need_target, backend):
    n, num_landmarks = id_coeff.shape[0], landmark_mean.shape[0]
    grads = [id_coeff.new_empty((num_landmarks, 3, n)), id_coeff.new_empty((n, 6))] if need_grads else []
    if need_grads and need_target:
        grads.append(id_coeff.new_empty((n, num_landmarks, 2)))
    return id_coeff.new_empty(_loss_shape(n, reduction)), grads


def _backward_impl(grad, point_grads, pose_grads, target_grads, landmark_id_basis, landmark_exp_basis, id_basis,
                   exp_basis, landmark_indices, reduction, need_id, need_exp, backend):
    """The gradients asked for, in the order id_coeff, exp_coeff, angles, translation, target
    (angles and translation always, target when its per-sample gradient was saved)."""
    grads = _backward(grad, point_grads, pose_grads, target_grads, landmark_id_basis, landmark_exp_basis,
                      _full_model_arg(None, id_basis, exp_basis, landmark_indices), reduction, need_id, need_exp,
                      backend)
    return [g for g in grads if g is not None]


def _backward_fake(grad, point_grads, pose_grads, target_grads, landmark_id_basis, landmark_exp_basis, id_basis,
                   exp_basis, landmark_indices, reduction, need_id, need_exp, backend):
    n = pose_grads.shape[0]
    wanted = [((n, landmark_id_basis.shape[2]), need_id), ((n, landmark_exp_basis.shape[2]), need_exp),
              ((n, 3), True), ((n, 3), True), ((n, point_grads.shape[0], 2), target_grads is not None)]
    return [pose_grads.new_empty(shape) for shape, need in wanted if need]


_lib.impl("landmark_loss", _forward_impl, "CompositeExplicitAutograd")
_lib.impl("landmark_loss_backward", _backward_impl, "CompositeExplicitAutograd")
torch.library.register_fake("wscswap::landmark_loss", _forward_fake, lib=_lib)
torch.library.register_fake("wscswap::landmark_loss_backward", _backward_fake, lib=_lib)
_forward_op = torch.ops.wscswap.landmark_loss.default
_backward_op = torch.ops.wscswap.landmark_loss_backward.default


class _LandmarkLoss(torch.autograd.Function):
    """Differentiable in the first five inputs (the coefficients, pose and target). The forward op
    returns each sample's gradients with the loss; the backward op scales them by the incoming
    gradient and multiplies the landmark gradients into the bases."""

    @staticmethod
    def forward(ctx, id_coeff, exp_coeff, angles, translation, target, weights, landmark_mean, landmark_id_basis,
                landmark_exp_basis, full_model, settings, need_target, backend):
        loss, grads = _forward_op(id_coeff, exp_coeff, angles, translation, target, weights, landmark_mean,
                                  landmark_id_basis, landmark_exp_basis, *full_model, *settings, True, need_target,
                                  backend)
        mean_shape, id_basis, exp_basis, landmark_indices = full_model
        ctx.save_for_backward(*grads[:2], grads[2] if need_target else None, landmark_id_basis, landmark_exp_basis,
                              id_basis, exp_basis, landmark_indices)
        ctx.reduction = settings[-1]
        ctx.backend = backend
        return loss

    @staticmethod
    def backward(ctx, grad):
        need = ctx.needs_input_grad
        grads = iter(_backward_op(grad, *ctx.saved_tensors, ctx.reduction, need[0], need[1], ctx.backend))
        wanted = (need[0], need[1], True, True, ctx.saved_tensors[2] is not None)
        return (*(next(grads) if w else None for w in wanted), None, None, None, None, None, None, None, None)


_PICKED = {}


@torch.compiler.assume_constant_result
def _pick(backend: str, device: torch.device, dtype: torch.dtype) -> str:
    """resolve(), remembered per (request, environment, device, dtype): what it depends on."""
    key = (backend, os.environ.get("WSCSWAP_BACKEND"), os.environ.get("TRITON_INTERPRET"), device, dtype)
    chosen = _PICKED.get(key)
    if chosen is None:
        chosen = _PICKED[key] = resolve("landmark_loss", backend, device, {"id_coeff": dtype}, SUPPORTED)
    return chosen


def landmark_loss(id_coeff: torch.Tensor, exp_coeff: torch.Tensor, angles: torch.Tensor, translation: torch.Tensor,
                  target: torch.Tensor, weights: torch.Tensor, landmark_mean: torch.Tensor,
                  landmark_id_basis: torch.Tensor, landmark_exp_basis: torch.Tensor, *, focal: float, cx: float,
                  cy: float, camera_distance: float = 10.0, norm: str = "l2", reduction: str = "mean",
                  full_model=None, backend: str = "auto") -> torch.Tensor:
    """Weighted 2-D landmark loss of a 3D morphable model, formed from the landmark rows only.

    Args:
        id_coeff: (N, K_id) identity coefficients.
        exp_coeff: (N, K_exp) expression coefficients.
        angles: (N, 3) (pitch, yaw, roll) in radians, R = Rz(roll) @ Ry(yaw) @ Rx(pitch).
        translation: (N, 3), added after the rotation.
        target: (N, L, 2) landmark positions in pixels (x right, y down).
        weights: (L,) shared by the batch, or (N, L); non-negative. Not differentiated.
        landmark_mean: (L, 3); landmark_id_basis: (L, 3, K_id); landmark_exp_basis: (L, 3, K_exp):
            the model's landmark rows (MorphableModel.landmark_*). L is any count (68 for ibug).
        focal, cx, cy, camera_distance: the perspective camera (pixels; camera at +z
            camera_distance in model units, looking towards -z). Deep3DFaceRecon's 224 crops:
            focal 1015, cx = cy = 112, camera_distance 10.
        norm: 'l2' (squared pixel distance, default) or 'l1' (|du| + |dv|).
        reduction: 'mean' (default) or 'sum' over the batch, or 'none' for the (N,) losses.
        full_model: reference backend only: (mean_shape (V,3), id_basis (V,3,K_id), exp_basis
            (V,3,K_exp), landmark_indices (L,) int64) to build the full mesh and index it.
        backend: 'auto', 'cuda', 'triton', 'cpu' or 'reference' (default: WSCSWAP_BACKEND or 'auto').

    Every tensor shares id_coeff's dtype (float32; float64 on cpu and reference) and device.
    Returns the loss: a scalar, or (N,) for reduction='none'. Differentiable in id_coeff,
    exp_coeff, angles, translation and target. See the module docstring for the formula.
    """
    check_inputs(id_coeff, exp_coeff, angles, translation, target, weights, landmark_mean, landmark_id_basis,
                 landmark_exp_basis, focal, cx, cy, camera_distance, norm, reduction, full_model)
    chosen = _pick(backend, id_coeff.device, id_coeff.dtype)
    if full_model is not None and chosen != "reference":
        raise ValueError(f"full_model is for the reference backend only, and this call runs on {chosen!r} "
                         "(the fast backends use the gathered landmark rows): pass backend='reference'")
    if chosen in _NATIVE and not torch.compiler.is_compiling():
        return extension.landmark_loss(id_coeff, exp_coeff, angles, translation, target, weights, landmark_mean,
                                       landmark_id_basis, landmark_exp_basis, float(focal), float(cx), float(cy),
                                       float(camera_distance), _NORM_CODE[norm], _REDUCTION_CODE[reduction])
    settings = (float(focal), float(cx), float(cy), float(camera_distance), norm, reduction)
    full = (None,) * 4 if full_model is None else tuple(full_model)
    if torch.is_grad_enabled() and (id_coeff.requires_grad or exp_coeff.requires_grad or angles.requires_grad
                                    or translation.requires_grad or target.requires_grad):
        return _LandmarkLoss.apply(id_coeff, exp_coeff, angles, translation, target, weights, landmark_mean,
                                   landmark_id_basis, landmark_exp_basis, full, settings, target.requires_grad,
                                   chosen)
    return _forward_op(id_coeff, exp_coeff, angles, translation, target, weights, landmark_mean, landmark_id_basis,
                       landmark_exp_basis, *full, *settings, False, False, chosen)[0]


def landmark_loss_for(model, id_coeff: torch.Tensor, exp_coeff: torch.Tensor, angles: torch.Tensor,
                      translation: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None, *,
                      focal: float, cx: float, cy: float, camera_distance: float = 10.0, norm: str = "l2",
                      reduction: str = "mean", backend: str = "auto") -> torch.Tensor:
    """:func:`landmark_loss` with the landmark rows of a :class:`~wscswap_fast.models.morphable.MorphableModel`
    (any object with ``landmark_mean``, ``landmark_id_basis``, ``landmark_exp_basis`` and
    ``landmark_weights``; for the reference backend also ``mean_shape``, ``id_basis``, ``exp_basis``
    and ``landmark_indices``, from which it builds the full mesh).

    weights: (68,) or (N, 68), multiplied by the model's landmark validity weights (a landmark the
    model does not map never counts); default: the model's weights alone.
    """
    model_weights = model.landmark_weights
    weights = model_weights if weights is None else model_weights * weights
    full_model = None
    if _pick(backend, id_coeff.device, id_coeff.dtype) == "reference":
        full_model = (model.mean_shape, model.id_basis, model.exp_basis, model.landmark_indices)
    return landmark_loss(id_coeff, exp_coeff, angles, translation, target, weights, model.landmark_mean,
                         model.landmark_id_basis, model.landmark_exp_basis, focal=focal, cx=cx, cy=cy,
                         camera_distance=camera_distance, norm=norm, reduction=reduction, full_model=full_model,
                         backend=backend)
