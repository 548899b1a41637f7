"""Training losses of WSC-swap.

:class:`NonIdentityLoss` is the 3DMM non-identity preservation loss: the swap result Y must keep
the target's expression, pose and lighting while its face shape follows the source. It works on
the 3DMM coefficients a frozen regressor predicts for Y, the target Xt and the source Xs.

The other terms (identity, reconstruction, hinge adversarial, feature matching, identity removal,
mask) are plain functions below; :class:`LossWeights` holds every weight (DESIGN.md's defaults).
The trainer (wscswap_fast.train.trainer) combines them and logs each one separately.
"""
import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from .models.camera import perspective, transform
from .ops.landmark_loss import landmark_loss_for
from .ops.photometric_loss import photometric_loss, vertex_normals

NUM_ANGLES, NUM_LIGHTING, NUM_TRANSLATION = 3, 27, 3


@dataclasses.dataclass
class FaceCoefficients:
    """One regressor output split into its parts (Deep3DFaceRecon's order)."""

    identity: torch.Tensor  # (N, K_id)
    expression: torch.Tensor  # (N, K_exp)
    texture: torch.Tensor  # (N, K_tex), possibly K_tex = 0
    angles: torch.Tensor  # (N, 3) pitch, yaw, roll in radians
    lighting: torch.Tensor  # (N, 27) SH coefficients, 9 bands x RGB
    translation: torch.Tensor  # (N, 3)

    @classmethod
    def split(cls, coeffs: torch.Tensor, num_id: int, num_exp: int, num_tex: int) -> "FaceCoefficients":
        """Split (N, K_id + K_exp + K_tex + 3 + 27 + 3) coefficients; 257 = 80+64+80+3+27+3 for
        Deep3DFaceRecon's BFM regressor."""
        sizes = [num_id, num_exp, num_tex, NUM_ANGLES, NUM_LIGHTING, NUM_TRANSLATION]
        if coeffs.dim() != 2 or coeffs.shape[1] != sum(sizes):
            raise ValueError(f"coefficients must have shape (N, {sum(sizes)}) = (N, id {num_id} + exp {num_exp} + "
                             f"tex {num_tex} + angles 3 + lighting 27 + translation 3), got {tuple(coeffs.shape)}")
        return cls(*torch.split(coeffs, sizes, dim=1))

    def detach(self) -> "FaceCoefficients":
        return FaceCoefficients(*(getattr(self, f.name).detach() for f in dataclasses.fields(self)))


class NonIdentityLoss(nn.Module):
    """Expression, pose and lighting of Y against Xt, plus the shape-aware landmark loss.

    Terms (each returned, and their weighted sum as 'total'):
      - 'expression', 'pose' (angles and translation), 'lighting': mean squared differences of
        Y's coefficients to Xt's;
      - 'landmark': the 2-D landmarks of [identity of Xs, expression and pose of Xt] are the
        target of Y's landmarks, through the fused op ``landmark_loss`` (squared pixels, divided
        by the image size squared so that the weight does not depend on the resolution);
      - 'photometric' (optional, needs a model with albedo and Y's image): the face of
        [identity of Xs, expression, pose and lighting of Xt, Y's texture] rendered through
        the fused ``photometric_loss`` against Y's pixels inside the face mask.
    Xt's and Xs's coefficients are constants (the regressor is frozen; only Y is trained).

    Args:
        model: the MorphableModel the regressor's coefficients belong to.
        image_size: side of the square crops the regressor sees (224 for Deep3DFaceRecon).
        focal, camera_distance: the perspective camera; focal defaults to 1015 * image_size / 224.
        weights: of 'expression', 'pose', 'lighting', 'landmark', 'photometric' (DESIGN.md's
            defaults: 1, 1, 1, 0.5 and 0, the photometric term being optional).
    """

    def __init__(self, model, *, image_size: int = 224, focal: float | None = None, camera_distance: float = 10.0,
                 expression: float = 1.0, pose: float = 1.0, lighting: float = 1.0, landmark: float = 0.5,
                 photometric: float = 0.0, backend: str = "auto"):
        super().__init__()
        if photometric > 0 and model.albedo_mean is None:
            raise ValueError("photometric > 0 needs a morphable model with albedo (e.g. BFM_model_front.mat); "
                             f"{model.name or 'this model'} has none")
        self.model = model
        self.image_size = image_size
        self.camera = dict(focal=focal if focal is not None else 1015.0 * image_size / 224, cx=image_size / 2,
                           cy=image_size / 2, camera_distance=camera_distance)
        self.weights = dict(expression=expression, pose=pose, lighting=lighting, landmark=landmark,
                            photometric=photometric)
        self.backend = backend

    def split(self, coeffs: torch.Tensor) -> FaceCoefficients:
        return FaceCoefficients.split(coeffs, self.model.num_id, self.model.num_exp, self.model.num_albedo)

    def _project(self, vertices, angles, translation):
        return perspective(transform(vertices, angles, translation), **self.camera)

    def forward(self, coeff_result: torch.Tensor, coeff_target: torch.Tensor, coeff_source: torch.Tensor,
                result_image: torch.Tensor | None = None, face_mask: torch.Tensor | None = None) -> dict:
        """coeff_*: (N, K) regressor outputs for Y, Xt and Xs; result_image (N, 3, S, S) in
        [0, 1] and face_mask (N, 1, S, S) for the photometric term (S = image_size)."""
        y, t, s = self.split(coeff_result), self.split(coeff_target).detach(), self.split(coeff_source).detach()
        terms = {
            "expression": F.mse_loss(y.expression, t.expression),
            "pose": F.mse_loss(y.angles, t.angles) + F.mse_loss(y.translation, t.translation),
            "lighting": F.mse_loss(y.lighting, t.lighting),
        }
        model = self.model
        with torch.no_grad():  # the landmarks Y should have: source shape, target expression and pose
            target_landmarks = self._project(model.landmarks(s.identity, t.expression), t.angles, t.translation)
        terms["landmark"] = landmark_loss_for(
            model, y.identity, y.expression, y.angles, y.translation, target_landmarks, **self.camera,
            backend=self.backend) / self.image_size ** 2
        if self.weights["photometric"] > 0:
            if result_image is None:
                raise ValueError("the photometric term needs result_image (N, 3, S, S)")
            vertices = transform(model.vertices(s.identity, t.expression), t.angles, t.translation)
            pixels = perspective(vertices, **self.camera)
            screen = torch.cat([pixels, (self.camera["camera_distance"] - vertices[..., 2:])], dim=-1)
            terms["photometric"] = photometric_loss(
                result_image, screen, model.triangles, albedo=model.albedo(y.texture),
                normals=vertex_normals(vertices, model.triangles), sh_coeffs=t.lighting, mask=face_mask,
                backend=self.backend)
        terms["total"] = sum(self.weights[name] * value for name, value in terms.items())
        return terms


# ---------------------------------------------------------------------------------------------
# The other training losses. Each returns a scalar (mean over the batch); the trainer logs each
# one separately and weights them with LossWeights.


def _fp32(x: torch.Tensor) -> torch.Tensor:
    """x in at least float32: autocast's bf16/fp16 are upcast (losses and their reductions in
    fp32), float64 stays (tests compare against a float64 run)."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _check_pair(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor):
        raise TypeError(f"{name_a} and {name_b} must be tensors, got {type(a).__name__} and {type(b).__name__}")
    if a.shape != b.shape:
        raise ValueError(f"{name_a} {tuple(a.shape)} and {name_b} {tuple(b.shape)} must have the same shape")


def _cosine_distance(a: torch.Tensor, b: torch.Tensor, name_a: str, name_b: str) -> torch.Tensor:
    _check_pair(name_a, a, name_b, b)
    if a.dim() != 2:
        raise ValueError(f"{name_a} must be (N, D) embeddings, got shape {tuple(a.shape)}")
    # Computed in fp32: under autocast a half-precision dot of 512-d unit vectors loses ~1e-3.
    return 1.0 - F.cosine_similarity(_fp32(a), _fp32(b), dim=1, eps=1e-8)


def identity_loss(emb: torch.Tensor, z_id: torch.Tensor) -> torch.Tensor:
    """1 - cos(ArcFace(Y), z_id), averaged over the batch. emb, z_id: (N, 512)."""
    return _cosine_distance(emb, z_id, "emb", "z_id").mean()


def reconstruction_loss(y: torch.Tensor, xt: torch.Tensor, same: torch.Tensor) -> torch.Tensor:
    """L1 between Y and Xt on the pairs whose source and target share identity.

    same: (N,) float 0/1. The mean is over the same-identity pairs only (0 when there are none),
    so the loss measures those pairs' error whatever the same-identity ratio.
    """
    _check_pair("y", y, "xt", xt)
    if not isinstance(same, torch.Tensor) or same.shape != (y.shape[0],):
        raise ValueError(f"same must be a ({y.shape[0]},) tensor of 0/1, got "
                         f"{tuple(same.shape) if isinstance(same, torch.Tensor) else type(same).__name__}")
    per_sample = (_fp32(y) - _fp32(xt)).abs().flatten(1).mean(1)
    same = same.to(per_sample.dtype)
    return (per_sample * same).sum() / same.sum().clamp(min=1.0)


def _as_logit_list(logits, name: str) -> list:
    """A tensor, or the discriminator's per-scale feature lists (logits last), as a list of logits."""
    if isinstance(logits, torch.Tensor):
        return [logits]
    if isinstance(logits, (list, tuple)) and logits:
        return [scale[-1] if isinstance(scale, (list, tuple)) else scale for scale in logits]
    raise TypeError(f"{name} must be a tensor or a non-empty list of per-scale outputs, got {type(logits).__name__}")


def hinge_discriminator_loss(real_logits, fake_logits) -> torch.Tensor:
    """mean(relu(1 - D(real))) + mean(relu(1 + D(fake))), averaged over the discriminator's scales.

    Each argument: a logits tensor, or MultiScaleDiscriminator's output (per scale a list of
    features whose last entry is the patch logits)."""
    real, fake = _as_logit_list(real_logits, "real_logits"), _as_logit_list(fake_logits, "fake_logits")
    if len(real) != len(fake):
        raise ValueError(f"real_logits has {len(real)} scales, fake_logits {len(fake)}")
    terms = [F.relu(1.0 - _fp32(r)).mean() + F.relu(1.0 + _fp32(f)).mean() for r, f in zip(real, fake)]
    return sum(terms) / len(terms)


def hinge_generator_loss(fake_logits) -> torch.Tensor:
    """-mean(D(fake)), averaged over the discriminator's scales."""
    fake = _as_logit_list(fake_logits, "fake_logits")
    return sum(-_fp32(f).mean() for f in fake) / len(fake)


def feature_matching_loss(real_feats, fake_feats) -> torch.Tensor:
    """L1 between the discriminator's intermediate features of real and fake images (logits
    excluded), averaged over layers and scales; the real features are constants."""
    if not isinstance(real_feats, (list, tuple)) or not isinstance(fake_feats, (list, tuple)):
        raise TypeError("real_feats and fake_feats must be the discriminator's per-scale feature lists")
    if len(real_feats) != len(fake_feats):
        raise ValueError(f"real_feats has {len(real_feats)} scales, fake_feats {len(fake_feats)}")
    terms = []
    for scale, (real, fake) in enumerate(zip(real_feats, fake_feats)):
        if len(real) != len(fake):
            raise ValueError(f"scale {scale}: real_feats has {len(real)} entries, fake_feats {len(fake)}")
        for r, f in zip(real[:-1], fake[:-1]):
            terms.append(F.l1_loss(_fp32(f), _fp32(r.detach())))
    if not terms:
        return fake_feats[0][-1].new_zeros(())  # a discriminator of logits only: nothing to match
    return sum(terms) / len(terms)


def identity_removal_loss(pred: torch.Tensor, target_emb: torch.Tensor) -> torch.Tensor:
    """The identity adversary's loss, 1 - cos(head(E_face(Xt)), ArcFace(Xt)), batch mean.

    The adversary minimises it (on a detached face code). E_face maximises it: its term in the
    generator loss is the negative, see :func:`identity_removal_generator_loss`."""
    return _cosine_distance(pred, target_emb, "pred", "target_emb").mean()


def identity_removal_generator_loss(pred: torch.Tensor, target_emb: torch.Tensor) -> torch.Tensor:
    """E_face's side of the min-max: the negative of :func:`identity_removal_loss`, i.e.
    mean(cos) - 1, in [-2, 0]. Minimising it maximises the adversary's error. (An adversary that
    learnt to read a negated identity is not a loophole: it updates every step and would flip
    its sign, so the equilibrium is a code from which the target identity cannot be predicted.)"""
    return -identity_removal_loss(pred, target_emb)


def mask_loss(mask: torch.Tensor, target_mask: torch.Tensor) -> torch.Tensor:
    """Mean L1 between the generator's soft mask M and the (dilated) target face mask, both
    (N, 1, H, W) in [0, 1]. L1 rather than BCE: it is autocast-safe and does not explode at 0/1."""
    _check_pair("mask", mask, "target_mask", target_mask)
    return F.l1_loss(_fp32(mask), _fp32(target_mask))


@dataclasses.dataclass
class LossWeights:
    """Weight of every loss term (DESIGN.md's defaults). 0 switches a term off (it is not computed,
    except the 3DMM terms, which share one regressor pass)."""

    identity: float = 5.0
    reconstruction: float = 10.0
    adversarial: float = 1.0
    feature_matching: float = 10.0
    identity_removal: float = 1.0
    expression: float = 1.0
    pose: float = 1.0
    lighting: float = 1.0
    landmark: float = 0.5
    photometric: float = 0.0
    mask: float = 1.0

    def __post_init__(self):
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v < 0:
                raise ValueError(f"LossWeights.{f.name} must be a finite number >= 0, got {v!r}")

    @classmethod
    def from_config(cls, loss_cfg) -> "LossWeights":
        """The weights of a config's loss section (other keys of that section, such as
        mask_dilate, are ignored)."""
        return cls(**{f.name: float(getattr(loss_cfg, f.name)) for f in dataclasses.fields(cls)
                      if hasattr(loss_cfg, f.name)})

    def non_identity(self) -> dict:
        """Keyword arguments of NonIdentityLoss."""
        return dict(expression=self.expression, pose=self.pose, lighting=self.lighting, landmark=self.landmark,
                    photometric=self.photometric)
