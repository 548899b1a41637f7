"""Training losses of WSC-swap.

:class:`NonIdentityLoss` is the 3DMM non-identity preservation loss: the swap result Y must keep
the target's expression, pose and lighting while its face shape follows the source. It works on
the 3DMM coefficients a frozen regressor predicts for Y, the target Xt and the source Xs.
"""
import dataclasses

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
