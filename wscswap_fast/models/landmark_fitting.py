"""Fit a morphable model to 2-D ibug-68 landmarks: identity, expression, angles, translation.

Batched over N faces. The objective is the fused ``wscswap_fast.ops.landmark_loss`` (the model's
fixed landmarks: only their rows of the bases, projected by the perspective camera of
:mod:`wscswap_fast.models.camera`, squared pixel distances) plus, for a model with a free jaw
contour (the Surrey model), the contour term below, plus eos's Gaussian prior on the
coefficients. It is minimised by Adam from a closed-form start:

1. Start: the mean face's landmarks fitted to the targets by an affine camera in closed form,
   made a scaled rotation (SVD), as eos's ``estimate_orthographic_projection_linear`` does; its
   scale sets the depth of the perspective camera.
2. Adam on (angles, translation, identity, expression), learning rate decayed by a cosine,
   every ``contour_every`` steps re-choosing the contour correspondences for the current pose.

Objective per face: eos's (``fit_shape_and_pose``: landmark variance sigma^2 = 3 px^2, prior
weights lambda 30), times sigma^2, divided by the number of landmarks n (eos gives its
blendshapes no prior but fits them non-negative; ``nonnegative_expression`` does the latter):

    sum_l w_l |p_l - y_l|^2 / n + sigma^2 * (lambda_id |a_id|^2 + lambda_exp |a_exp|^2) / n

Contour. The jaw contour (ibug 1-8, 10-17) has no fixed vertex in the Surrey model (weight 0
there). Each contour landmark is matched, per face and re-chosen every ``contour_every`` steps
as the pose changes, to the model contour vertex of its side whose projection lies nearest to
it, as eos's ``get_nearest_contour_correspondences`` does. A side is left out while the head
has turned away from it by more than ``contour_yaw_limit`` degrees of yaw: there the detected
outline is the far cheek, not the model's jaw contour. eos uses 7.5 degrees (and fits the far
side to the mesh's occluding edges instead); 15 degrees agreed best with eos's angles on the 38
real faces of the comparison, and keeping both sides always biased large yaws towards frontal
by up to 16 degrees (bench/NOTES.md). These points enter through a small plain-PyTorch term:
each face has its own contour vertices, which the fused op's landmark rows, shared by the
batch, cannot express.
"""
import dataclasses
import math

import torch

from . import camera
from .morphable import CONTOUR_LANDMARKS_LEFT, CONTOUR_LANDMARKS_RIGHT, NUM_LANDMARKS, MorphableModel

# eos's fit_shape_and_pose: landmark variance sqrt(3)^2 px^2 and the weight of each prior.
SIGMA_SQUARED = 3.0
LAMBDA_ID = 30.0
LAMBDA_EXP = 30.0
# Degrees of yaw away from a contour side beyond which its landmarks are left out (see above).
CONTOUR_YAW_LIMIT = 15.0
# Deep3DFaceRecon's camera (focal 1015 px for a 224 px crop at 1 m): about 12.6 degrees of view.
FOCAL_PER_PIXEL = 1015.0 / 224.0


@dataclasses.dataclass
class LandmarkFit:
    """The result of :func:`fit_landmarks` (all (N, ...) tensors, detached).

    id_coeff (N, K_id), exp_coeff (N, K_exp), angles (N, 3) (pitch, yaw, roll) in radians,
    translation (N, 3) in model units; the camera they hold for (focal, cx, cy, camera_distance);
    vertex_indices (N, 68) int64: per landmark the vertex it was matched to (the model's fixed
    vertex, or the chosen contour vertex) and weights (N, 68) the weight it had in the fit (0 for
    a landmark the model does not map); error (N,) the root-mean-square
    reprojection error in pixels over the landmarks used, by weight.
    """
    id_coeff: torch.Tensor
    exp_coeff: torch.Tensor
    angles: torch.Tensor
    translation: torch.Tensor
    focal: float
    cx: float
    cy: float
    camera_distance: float
    vertex_indices: torch.Tensor
    weights: torch.Tensor
    error: torch.Tensor

    def project(self, model: MorphableModel) -> torch.Tensor:
        """The fitted positions (N, 68, 2) in pixels of the matched vertices."""
        return project_vertices(model, self.vertex_indices, self.id_coeff, self.exp_coeff, self.angles,
                                self.translation, self.focal, self.cx, self.cy, self.camera_distance)


def gather_rows(model, vertex_indices):
    """The rows of the mean and both bases for per-face vertices (N, L): (N, L, 3), (N, L, 3, K_id), (N, L, 3, K_exp)."""
    return model.mean_shape[vertex_indices], model.id_basis[vertex_indices], model.exp_basis[vertex_indices]


def project_rows(rows, id_coeff, exp_coeff, angles, translation, focal, cx, cy, camera_distance):
    """Pixels (N, L, 2) of the vertices whose rows :func:`gather_rows` gathered."""
    mean, id_rows, exp_rows = rows
    shape = mean + torch.einsum("nlck,nk->nlc", id_rows, id_coeff) + torch.einsum("nlck,nk->nlc", exp_rows, exp_coeff)
    return camera.perspective(camera.transform(shape, angles, translation), focal, cx, cy, camera_distance)


def project_vertices(model, vertex_indices, id_coeff, exp_coeff, angles, translation, focal, cx, cy, camera_distance):
    """Pixels (N, L, 2) of per-face vertices ``vertex_indices`` (N, L), from those rows only."""
    return project_rows(gather_rows(model, vertex_indices), id_coeff, exp_coeff, angles, translation,
                        focal, cx, cy, camera_distance)


def _check(model, landmarks_2d, image_size, landmark_weights):
    if not isinstance(model, MorphableModel):
        raise TypeError(f"model must be a MorphableModel, got a {type(model).__name__}")
    if not isinstance(landmarks_2d, torch.Tensor) or landmarks_2d.dim() != 3 or landmarks_2d.shape[1:] != (NUM_LANDMARKS, 2):
        got = (f"shape {tuple(landmarks_2d.shape)}, dtype {landmarks_2d.dtype}" if isinstance(landmarks_2d, torch.Tensor)
               else f"a {type(landmarks_2d).__name__}")
        raise ValueError(f"landmarks_2d must be a tensor of shape (N, 68, 2) (ibug-68, pixels), got {got}")
    if landmarks_2d.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"landmarks_2d must be float32 or float64, got dtype {landmarks_2d.dtype}")
    if not bool(torch.isfinite(landmarks_2d).all()):
        raise ValueError("landmarks_2d must be finite (give a missing landmark weight 0 and any finite position)")
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if len(size) != 2 or not all(isinstance(s, int) and s > 0 for s in size):
        raise ValueError(f"image_size must be a positive int or (height, width), got {image_size!r}")
    n = landmarks_2d.shape[0]
    if landmark_weights is not None:
        if not isinstance(landmark_weights, torch.Tensor) or landmark_weights.shape not in ((NUM_LANDMARKS,), (n, NUM_LANDMARKS)):
            raise ValueError(f"landmark_weights must have shape (68,) or ({n}, 68), got "
                             f"{getattr(landmark_weights, 'shape', type(landmark_weights).__name__)}")
        if not bool((landmark_weights >= 0).all()):
            raise ValueError("landmark_weights must be non-negative")
    return size


def _initial_pose(points, targets, weights, focal, cx, cy, camera_distance):
    """Closed-form scaled-orthographic pose of model points (N, L, 3) onto pixels (N, L, 2),
    weighted by (N, L), turned into angles and a perspective translation."""
    n = points.shape[0]
    y_up = torch.stack([targets[..., 0] - cx, cy - targets[..., 1]], dim=-1)   # centred, y up
    homog = torch.cat([points, torch.ones_like(points[..., :1])], dim=-1)     # (N, L, 4)
    sw = weights.sqrt()[..., None]
    # Weighted least squares for the 2x4 affine A: homog @ A^T = y_up. Tiny ridge for degenerate sets.
    lhs = (homog * sw).transpose(1, 2) @ (homog * sw) + 1e-9 * torch.eye(4, dtype=points.dtype, device=points.device)
    affine = torch.linalg.solve(lhs, (homog * sw).transpose(1, 2) @ (y_up * sw)).transpose(1, 2)  # (N, 2, 4)
    linear = affine[:, :, :3]
    u, s, vh = torch.linalg.svd(linear, full_matrices=False)                  # the nearest scaled rotation
    rows = u @ vh
    rotation = torch.stack([rows[:, 0], rows[:, 1], torch.linalg.cross(rows[:, 0], rows[:, 1], dim=1)], dim=1)
    scale = s.mean(dim=1).clamp_min(1e-12)
    translation = torch.zeros(n, 3, dtype=points.dtype, device=points.device)
    translation[:, :2] = affine[:, :, 3] / scale[:, None]
    # Perspective depth giving the same scale at the model's origin: focal / (distance - t_z) = scale.
    translation[:, 2] = camera_distance - focal / scale
    return camera.angles_from_rotation(rotation), translation


def _contour_sides(model):
    """[(contour landmark ids, candidate vertices, +1 right / -1 left)] for each side whose landmarks
    the model leaves free (weight 0) and for which it lists contour vertices."""
    sides = []
    for ids, candidates, sign in ((CONTOUR_LANDMARKS_RIGHT, model.contour_right, 1.0),
                                  (CONTOUR_LANDMARKS_LEFT, model.contour_left, -1.0)):
        free = [i for i in ids if model.landmark_weights[i] == 0]
        if free and candidates.numel():
            sides.append((free, candidates, sign))
    return sides


def _contour_choice(model, sides, yaw_limit, landmarks_2d, id_coeff, exp_coeff, angles, translation, cam):
    """Per face, the contour vertex of the landmark's side whose projection lies nearest to each
    free contour landmark: vertex indices (N, 68), the model's fixed ones elsewhere; and per free
    contour landmark (N, C) whether its side is used: not turned away by more than yaw_limit."""
    n = landmarks_2d.shape[0]
    indices = model.landmark_indices.expand(n, -1).clone()
    # yaw > 0 turns the head to the subject's left, towards its right side (ibug 1-8).
    yaw = torch.rad2deg(angles[:, 1])
    used = []
    for ids, candidates, sign in sides:
        cand = candidates.expand(n, -1)
        projected = project_vertices(model, cand, id_coeff, exp_coeff, angles, translation, *cam)  # (N, C, 2)
        nearest = torch.cdist(landmarks_2d[:, ids], projected).argmin(dim=2)                         # (N, len(ids))
        indices[:, ids] = torch.gather(cand, 1, nearest)
        used.append((sign * yaw >= -yaw_limit)[:, None].expand(-1, len(ids)))
    return indices, torch.cat(used, dim=1).to(angles.dtype)


def fit_landmarks(model: MorphableModel, landmarks_2d: torch.Tensor, image_size, *, landmark_weights=None,
                  steps: int = 300, learning_rate: float = 0.02, contour_every: int = 10,
                  contour_yaw_limit: float = CONTOUR_YAW_LIMIT,
                  lambda_id: float = LAMBDA_ID, lambda_exp: float = LAMBDA_EXP, nonnegative_expression: bool = False,
                  focal=None, cx=None, cy=None, camera_distance=None, backend: str = "auto") -> LandmarkFit:
    """Fit identity, expression, angles and translation of ``model`` to ibug-68 landmarks.

    Args:
        model: a :class:`MorphableModel` (moved to the landmarks' device and dtype).
        landmarks_2d: (N, 68, 2) pixel positions (x right, y down), float32 or float64.
        image_size: ``(height, width)`` or one int.
        landmark_weights: (68,) or (N, 68), multiplies the model's validity weights (0 for a
            landmark the detector missed).
        steps, learning_rate: Adam steps and the first learning rate in the optimiser's units
            (radians for angles, about 1 cm for translation, standard deviations for coefficients).
        contour_every: steps between re-choices of the contour correspondences.
        contour_yaw_limit: a contour side is left out while the head has turned away from it by
            more than this many degrees of yaw (eos: 7.5; ``math.inf`` keeps both sides).
        lambda_id, lambda_exp: prior weights, eos's meaning (see the module docstring).
        nonnegative_expression: keep expression coefficients >= 0 (blendshape models such as the
            Surrey model's, which eos fits with non-negative least squares).
        focal, cx, cy, camera_distance: the perspective camera; defaults: focal 1015/224 px per
            pixel of the larger image side, centre the image centre, 1 m (in the model's unit).
        backend: the backend of ``landmark_loss``.

    Returns a :class:`LandmarkFit`.
    """
    from ..ops import landmark_loss

    height, width = _check(model, landmarks_2d, image_size, landmark_weights)
    dtype, device = landmarks_2d.dtype, landmarks_2d.device
    n = landmarks_2d.shape[0]
    if model.mean_shape.dtype != dtype or model.mean_shape.device != device:
        model = model.to(device=device, dtype=dtype)
    size = float(max(height, width))
    focal = FOCAL_PER_PIXEL * size if focal is None else float(focal)
    cx = width / 2.0 if cx is None else float(cx)
    cy = height / 2.0 if cy is None else float(cy)
    camera_distance = model.units_per_metre if camera_distance is None else float(camera_distance)
    cam = (focal, cx, cy, camera_distance)

    targets = landmarks_2d.detach()
    user_weights = (torch.ones(n, NUM_LANDMARKS, dtype=dtype, device=device) if landmark_weights is None
                    else landmark_weights.to(device=device, dtype=dtype).expand(n, -1))
    fixed_weights = model.landmark_weights * user_weights   # the op's landmarks: 0 on the free contour
    sides = _contour_sides(model)
    contour_ids = [i for ids, _, _ in sides for i in ids]
    weights = fixed_weights.clone()

    id_coeff = torch.zeros(n, model.num_id, dtype=dtype, device=device)
    exp_coeff = torch.zeros(n, model.num_exp, dtype=dtype, device=device)
    angles, translation = _initial_pose(model.landmark_mean.expand(n, -1, -1), targets, fixed_weights, *cam)

    # Optimise in units where one step of the learning rate is a sensible move for each group.
    unit_t = 0.01 * model.units_per_metre  # 1 cm
    params = {"angles": angles, "translation": translation / unit_t, "id": id_coeff, "exp": exp_coeff}
    for p in params.values():
        p.requires_grad_()
    optimiser = torch.optim.Adam(list(params.values()), lr=learning_rate)
    prior = SIGMA_SQUARED * torch.tensor([lambda_id, lambda_exp], dtype=dtype, device=device)
    fixed_sum = fixed_weights.sum(dim=1)
    count = fixed_sum.clamp_min(1.0)

    def unpack():
        return params["id"], params["exp"], params["angles"], params["translation"] * unit_t

    vertex_indices = model.landmark_indices.expand(n, -1)
    for step in range(steps):
        if contour_ids and step % contour_every == 0:
            with torch.no_grad():
                vertex_indices, used = _contour_choice(model, sides, contour_yaw_limit, targets, *unpack(), cam)
            contour_rows = gather_rows(model, vertex_indices[:, contour_ids])  # reused until the next choice
            contour_weights = user_weights[:, contour_ids] * used
            count = (fixed_sum + contour_weights.sum(dim=1)).clamp_min(1.0)
        for group in optimiser.param_groups:
            group["lr"] = learning_rate * 0.5 * (1 + math.cos(math.pi * step / steps))
        optimiser.zero_grad(set_to_none=True)
        id_c, exp_c, ang, trans = unpack()
        # landmark_loss returns sum(w d) / sum(w) per face; undo the division to add the contour.
        total = landmark_loss(id_c, exp_c, ang, trans, targets, fixed_weights, model.landmark_mean,
                              model.landmark_id_basis, model.landmark_exp_basis, focal=focal, cx=cx, cy=cy,
                              camera_distance=camera_distance, norm="l2", reduction="none", backend=backend) * fixed_sum
        if contour_ids:
            projected = project_rows(contour_rows, id_c, exp_c, ang, trans, *cam)
            total = total + (contour_weights * ((projected - targets[:, contour_ids]) ** 2).sum(-1)).sum(1)
        total = total + prior[0] * (id_c ** 2).sum(1) + prior[1] * (exp_c ** 2).sum(1)
        (total / count).sum().backward()
        optimiser.step()
        if nonnegative_expression:
            with torch.no_grad():
                params["exp"].clamp_(min=0)

    with torch.no_grad():
        id_c, exp_c, ang, trans = (t.detach() for t in unpack())
        if contour_ids:
            vertex_indices, used = _contour_choice(model, sides, contour_yaw_limit, targets, id_c, exp_c, ang, trans, cam)
            weights[:, contour_ids] = user_weights[:, contour_ids] * used
        projected = project_vertices(model, vertex_indices, id_c, exp_c, ang, trans, *cam)
        sq = ((projected - targets) ** 2).sum(-1)
        error = ((weights * sq).sum(1) / weights.sum(1).clamp_min(1e-12)).sqrt()
    return LandmarkFit(id_c, exp_c, ang, trans, focal, cx, cy, camera_distance, vertex_indices.clone(), weights, error)
