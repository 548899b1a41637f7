"""Face alignment: a least-squares similarity (Umeyama) from five landmarks to a canonical template.

The matrix returned maps *image* pixels to *crop* pixels, (x_c, y_c) = M @ (x, y, 1): the
``cv2.warpAffine`` matrix that cuts the crop, and exactly the per-face affine that
:func:`wscswap_fast.ops.paste_faces` takes (it samples the crop at A @ (x, y, 1) for each frame
pixel), so paste-back needs no inversion.

Templates: ``arcface`` is insightface's arcface_dst (defined for 112x112) scaled by size/112,
as SimSwap's crop_224 and our training crops use; ``ffhq`` is the 5-point template of FFHQ-style
crops (defined for 512x512, face smaller, more hair and chin in the crop) scaled by size/512.
Both use pixel-centre coordinates, like OpenCV.
"""
from __future__ import annotations

import numpy as np

ARCFACE_112 = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                        [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float64)
FFHQ_512 = np.array([[192.98138, 239.94708], [318.90277, 240.19360], [256.63416, 314.01935],
                     [201.26117, 371.41043], [313.08905, 371.15118]], dtype=np.float64)
MODES = ("arcface", "ffhq")


def arcface_template(size: int, mode: str = "arcface") -> np.ndarray:
    """The five template points (5, 2) float64 for a size x size crop."""
    if not isinstance(size, (int, np.integer)) or size < 8:
        raise ValueError(f"size must be an int >= 8, got {size!r}")
    if mode == "arcface":
        return ARCFACE_112 * (size / 112.0)
    if mode == "ffhq":
        return FFHQ_512 * (size / 512.0)
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


def umeyama(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The similarity (rotation, uniform scale, translation) minimising sum |M @ src_i - dst_i|^2.

    src, dst: (N, 2), N >= 2. Returns M (2, 3) float64. Umeyama (1991): centre both sets, SVD of
    the cross-covariance, a reflection guard on the determinant, scale from the source variance.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.ndim != 2 or src.shape[1] != 2 or src.shape != dst.shape or src.shape[0] < 2:
        raise ValueError(f"src and dst must both be (N, 2) with N >= 2, got {src.shape} and {dst.shape}")
    if not (np.isfinite(src).all() and np.isfinite(dst).all()):
        raise ValueError("src and dst must be finite")
    mu_s, mu_d = src.mean(axis=0), dst.mean(axis=0)
    s_c, d_c = src - mu_s, dst - mu_d
    var_s = (s_c ** 2).sum() / len(src)
    if var_s <= 1e-12:
        raise ValueError("src points are all the same point: no similarity is defined")
    cov = d_c.T @ s_c / len(src)
    u, sig, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[1] = -1.0
    rot = u @ np.diag(d) @ vt
    scale = (sig * d).sum() / var_s
    m = np.empty((2, 3), dtype=np.float64)
    m[:, :2] = scale * rot
    m[:, 2] = mu_d - scale * rot @ mu_s
    return m


def estimate_affine(landmarks5: np.ndarray, size: int, mode: str = "arcface") -> np.ndarray:
    """The image -> crop similarity (2, 3) for a face's five ArcFace-order points."""
    lm = np.asarray(landmarks5, dtype=np.float64)
    if lm.shape != (5, 2):
        raise ValueError(f"landmarks5 must be (5, 2) in ArcFace order, got shape {lm.shape}")
    return umeyama(lm, arcface_template(size, mode))


def invert_affine(m: np.ndarray) -> np.ndarray:
    """The inverse of a (2, 3) (or (..., 2, 3)) affine: crop -> image for an image -> crop map."""
    m = np.asarray(m, dtype=np.float64)
    lin = np.linalg.inv(m[..., :2])
    t = -np.einsum("...ij,...j->...i", lin, m[..., 2])
    return np.concatenate([lin, t[..., None]], axis=-1)


def transform_points(m: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a (2, 3) affine to (N, 2) points."""
    points = np.asarray(points, dtype=np.float64)
    return points @ np.asarray(m, dtype=np.float64)[:, :2].T + np.asarray(m, dtype=np.float64)[:, 2]


def warp_face(image: np.ndarray, affine: np.ndarray, size: int) -> np.ndarray:
    """Cut the size x size crop of ``affine`` (image -> crop) out of an (H, W, C) image, bilinear,
    edges replicated (so a face near the border has no black wedge for the model to see)."""
    import cv2

    return cv2.warpAffine(image, np.asarray(affine, dtype=np.float64), (size, size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REPLICATE)


def align_face(image: np.ndarray, landmarks5: np.ndarray, size: int, mode: str = "arcface"):
    """(crop (size, size, C) like image, affine (2, 3) image -> crop, the matrix paste_faces takes)."""
    if not isinstance(image, np.ndarray) or image.ndim != 3:
        raise ValueError(f"image must be an (H, W, C) array, got {getattr(image, 'shape', type(image).__name__)}")
    m = estimate_affine(landmarks5, size, mode)
    return warp_face(image, m, size), m
