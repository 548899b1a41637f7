"""Face-recognition embeddings for evaluation: dlib's 128-d ResNet (always there, offline) and
ArcFace (an insightface iresnet backbone given by path).

Both take an RGB uint8 image (H, W, 3) and the face's 68 dlib landmarks in pixels; each aligns
the face its own way (dlib from the 68 points, ArcFace with the 5-point template).
"""
from __future__ import annotations

import numpy as np
import torch


DLIB_RECOGNITION_MODEL = "dlib_face_recognition_resnet_model_v1.dat"


def _rgb(image: np.ndarray) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        got = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"image must be an RGB uint8 array (H, W, 3), got {got}")
    return np.ascontiguousarray(image)


class DlibEmbedder:
    """dlib's face-recognition ResNet: 128-d descriptors; same person below 0.6 Euclidean distance."""

    name = "dlib"
    dim = 128

    def __init__(self, model_path: str | None = None):
        import dlib

        from ..pipeline.detect import dlib_model_path

        self._dlib = dlib
        self.model = dlib.face_recognition_model_v1(model_path or dlib_model_path(DLIB_RECOGNITION_MODEL))

    def __call__(self, image: np.ndarray, landmarks68: np.ndarray) -> np.ndarray:
        """(128,) float64 descriptor of the face whose 68 landmarks are given, in an RGB uint8 image."""
        dlib = self._dlib
        image = _rgb(image)
        lm = np.asarray(landmarks68, dtype=np.float64)
        if lm.shape != (68, 2):
            raise ValueError(f"landmarks68 must have shape (68, 2), got {lm.shape}")
        (x0, y0), (x1, y1) = lm.min(0), lm.max(0)
        rect = dlib.rectangle(int(round(x0)), int(round(y0)), int(round(x1)), int(round(y1)))
        # dlib aligns the 150x150 chip from the parts of the shape, not from the rectangle.
        shape = dlib.full_object_detection(rect, [dlib.point(int(round(x)), int(round(y))) for x, y in lm])
        return np.asarray(self.model.compute_face_descriptor(image, shape), dtype=np.float64)


class ArcFaceEmbedder:
    """An ArcFace iresnet backbone: 512-d L2-normalised embeddings of the 112x112 aligned crop."""

    name = "arcface"
    dim = 512

    def __init__(self, checkpoint: str, arch: str = "iresnet50", device: str | torch.device = "cpu"):
        from ..models.iresnet import load_identity_encoder

        self.device = torch.device(device)
        self.encoder = load_identity_encoder(checkpoint, arch=arch).to(self.device)

    @torch.no_grad()
    def __call__(self, image: np.ndarray, landmarks68: np.ndarray) -> np.ndarray:
        """(512,) float64 embedding of the face whose 68 landmarks are given, in an RGB uint8 image."""
        from ..pipeline.align import align_face
        from ..pipeline.detect import five_from_68

        image = _rgb(image)
        crop, _ = align_face(image, five_from_68(landmarks68), 112, "arcface")
        x = torch.from_numpy(np.ascontiguousarray(crop)).to(self.device).permute(2, 0, 1)[None].float() / 255.0
        return self.encoder(x)[0].double().cpu().numpy()
