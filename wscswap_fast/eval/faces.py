"""Per-face analysis for evaluation: detection, 68 landmarks, embeddings, and the 3DMM fit.

One face per image: the largest dlib detection for sources and targets; for a swap result the
detection that overlaps the target's face most (the swapped face sits where the target's was),
or, when dlib finds no face there, the 68 landmarks predicted inside the target's box (counted
in the report, since a result the detector misses is itself a finding).
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

# The box every face's landmarks are moved into before the 3DMM fit: fitting in one centred
# square of one size keeps the perspective camera's off-axis angle out of the fitted pose.
FIT_BOX = 256
# A result detection must overlap the target's face box this much to be taken as the swapped face.
MIN_IOU = 0.3


@dataclasses.dataclass
class FaceRecord:
    """One analysed face: box (x0, y0, x1, y1) in pixels, landmarks68 (68, 2), embeddings by
    embedder name, and whether dlib detected it (False: landmarks predicted in a given box)."""
    box: tuple[float, float, float, float]
    landmarks68: np.ndarray
    embeddings: dict[str, np.ndarray]
    detected: bool = True


def box_iou(a, b) -> float:
    """Intersection over union of two (x0, y0, x1, y1) boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _area(box) -> float:
    return max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1])


class FaceAnalyzer:
    """dlib detection + 68 landmarks, and the embeddings of every embedder given."""

    def __init__(self, embedders, detector=None):
        from ..pipeline.detect import DlibDetector

        self.detector = detector if detector is not None else DlibDetector()
        self.embedders = list(embedders)

    def _landmarks(self, bgr: np.ndarray, face) -> np.ndarray:
        lm = face.landmarks68
        if lm is None:
            lm = self.detector.landmarks68(bgr, face.box)
        return np.asarray(lm, dtype=np.float64).reshape(68, 2)

    def _record(self, bgr, box, landmarks68, detected) -> FaceRecord:
        rgb = np.ascontiguousarray(bgr[:, :, ::-1])
        emb = {e.name: e(rgb, landmarks68) for e in self.embedders}
        return FaceRecord(tuple(float(v) for v in box), landmarks68, emb, detected)

    def analyse(self, bgr: np.ndarray) -> FaceRecord | None:
        """The largest face of a BGR uint8 image, or None when dlib finds none."""
        faces = self.detector.detect(bgr)
        if not faces:
            return None
        face = max(faces, key=lambda f: _area(f.box))
        return self._record(bgr, face.box, self._landmarks(bgr, face), True)

    def analyse_at(self, bgr: np.ndarray, box) -> FaceRecord:
        """The face of a BGR uint8 image at ``box``: the detection overlapping it most (IoU >=
        MIN_IOU), else the 68 landmarks predicted inside ``box`` (detected=False)."""
        faces = self.detector.detect(bgr)
        best = max(faces, key=lambda f: box_iou(f.box, box), default=None)
        if best is not None and box_iou(best.box, box) >= MIN_IOU:
            return self._record(bgr, best.box, self._landmarks(bgr, best), True)
        lm = np.asarray(self.detector.landmarks68(bgr, box), dtype=np.float64).reshape(68, 2)
        return self._record(bgr, box, lm, False)


def to_fit_box(landmarks68: np.ndarray, size: int = FIT_BOX) -> np.ndarray:
    """Landmarks (68, 2) moved and scaled into a size x size square centred on them, twice their extent."""
    lm = np.asarray(landmarks68, dtype=np.float64)
    lo, hi = lm.min(axis=0), lm.max(axis=0)
    extent = float((hi - lo).max())
    if extent <= 0:
        raise ValueError("landmarks68 are all at one point")
    return (lm - (lo + hi) / 2) * (size / (2 * extent)) + size / 2


@dataclasses.dataclass
class FaceFits:
    """3DMM fits of N faces: angles (N, 3) (pitch, yaw, roll) radians, expression (N, K_exp),
    identity (N, K_id), reprojection error (N,) in pixels of the FIT_BOX square."""
    angles: torch.Tensor
    expression: torch.Tensor
    identity: torch.Tensor
    error: torch.Tensor


def fit_faces(model, landmarks: list[np.ndarray] | np.ndarray, steps: int = 300) -> FaceFits:
    """Fit ``model`` (a MorphableModel) to every face's 68 landmarks in one batch (float64, CPU),
    with :func:`wscswap_fast.models.landmark_fitting.fit_landmarks`, each face in the FIT_BOX
    square. The Surrey model's expressions are blendshapes, fitted non-negative as eos does."""
    from ..models.landmark_fitting import fit_landmarks

    pts = np.stack([to_fit_box(lm) for lm in landmarks])
    model = model.to(device="cpu", dtype=torch.float64)
    fit = fit_landmarks(model, torch.from_numpy(pts), FIT_BOX, steps=steps,
                        nonnegative_expression=model.name.startswith("sfm"),
                        backend="auto")
    return FaceFits(fit.angles, fit.exp_coeff, fit.id_coeff, fit.error)
