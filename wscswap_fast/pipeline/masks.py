"""Face masks: the convex hull of dlib's 68 landmarks with the forehead added, and mask dilation.

Used by the training data (masks for folders without a mask folder), the generator (E_bg sees the
target with the dilated face blanked), the mask loss, and the swap pipeline.
"""
from __future__ import annotations

import numbers

import numpy as np
import torch
import torch.nn.functional as F

BROWS = slice(17, 27)  # dlib 68-point indices of the eyebrows
CHIN = 8


def _size(size) -> tuple[int, int]:
    if isinstance(size, numbers.Integral) and not isinstance(size, bool):
        h = w = int(size)
    elif isinstance(size, (tuple, list)) and len(size) == 2 and all(
            isinstance(s, numbers.Integral) and not isinstance(s, bool) for s in size):
        h, w = int(size[0]), int(size[1])
    else:
        raise TypeError(f"size must be an int or a (height, width) pair of ints, got {size!r}")
    if h < 1 or w < 1:
        raise ValueError(f"size must be positive, got {size!r}")
    return h, w


def _radius(value, name: str) -> int:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int number of pixels, got {value!r}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return int(value)


def hull_points(landmarks68: np.ndarray, forehead: float = 0.2) -> np.ndarray:
    """The 68 points plus the 10 brow points moved up by ``forehead`` x the face height, (78, 2).

    "Up" is the direction from the chin (point 8) to the brows' mean, and the face height their
    distance, so the forehead follows a tilted face.
    """
    lm = np.asarray(landmarks68, dtype=np.float64)
    if lm.shape != (68, 2):
        raise ValueError(f"landmarks68 must have shape (68, 2), got {lm.shape}")
    if not np.isfinite(lm).all():
        raise ValueError("landmarks68 has NaN or infinite values")
    if not 0.0 <= forehead <= 1.0:
        raise ValueError(f"forehead must be in [0, 1] (a fraction of the face height), got {forehead}")
    brows = lm[BROWS]
    up = brows.mean(axis=0) - lm[CHIN]
    height = float(np.hypot(*up))
    if height == 0.0:  # degenerate landmarks: no direction to extend in
        return lm
    return np.concatenate([lm, brows + forehead * up])  # |up| = height, so this is forehead * height


def hull_mask(landmarks68: np.ndarray, size: int | tuple[int, int], *, dilate: int = 0, blur: int = 0,
              forehead: float = 0.2) -> np.ndarray:
    """A face mask (H, W) float32 in [0, 1]: the convex hull of the 68 landmarks (pixel coordinates,
    x right, y down) with the forehead extended upward by ``forehead`` x the face height, then
    dilated by ``dilate`` pixels (elliptical kernel) and blurred (Gaussian, kernel 2*blur+1).

    size: an int for a square mask or (height, width).
    """
    import cv2

    h, w = _size(size)
    dilate, blur = _radius(dilate, "dilate"), _radius(blur, "blur")
    pts = hull_points(landmarks68, forehead).astype(np.float32)
    hull = cv2.convexHull(pts).reshape(-1, 2)
    mask = np.zeros((h, w), dtype=np.uint8)
    shift = 4  # sub-pixel vertex positions (1/16 pixel)
    cv2.fillConvexPoly(mask, np.round(hull * (1 << shift)).astype(np.int32), 255, lineType=cv2.LINE_8, shift=shift)
    if dilate:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * dilate + 1, 2 * dilate + 1))
        mask = cv2.dilate(mask, kernel)
    out = mask.astype(np.float32) / 255.0
    if blur:
        out = cv2.GaussianBlur(out, (2 * blur + 1, 2 * blur + 1), 0, borderType=cv2.BORDER_CONSTANT)
    return np.clip(out, 0.0, 1.0)


def dilate_mask(mask: torch.Tensor, pixels: int) -> torch.Tensor:
    """Grow a (N, C, H, W) mask by ``pixels`` in every direction (a square (2p+1)^2 max filter, so a
    soft mask keeps its values; differentiable). pixels=0 returns the mask itself."""
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask must be a torch.Tensor, got {type(mask).__name__}")
    if mask.dim() != 4:
        raise ValueError(f"mask must be (N, C, H, W), got shape {tuple(mask.shape)}")
    if not mask.is_floating_point():
        raise TypeError(f"mask must be a floating-point tensor, got {mask.dtype}")
    pixels = _radius(pixels, "pixels")
    if pixels == 0:
        return mask
    # a square max filter is a row max then a column max, each by doubling windows: ~2 log2(2p+1)
    # elementwise maxima a pixel instead of max_pool2d's (2p+1)^2 compares (48 -> 1.1 ms at p=8 on 4x1x256^2)
    padded = F.pad(mask, (pixels, pixels, pixels, pixels), value=float("-inf"))
    return _sliding_max(_sliding_max(padded, 2 * pixels + 1, 3), 2 * pixels + 1, 2)


def _sliding_max(x: torch.Tensor, k: int, dim: int) -> torch.Tensor:
    """out[i] = max(x[i : i + k]) along dim (length L - k + 1)."""
    out, width = x, 1  # invariant: out[i] = max(x[i : i + width])
    while 2 * width <= k:
        n = out.shape[dim] - width
        out = torch.maximum(out.narrow(dim, 0, n), out.narrow(dim, width, n))
        width *= 2
    if width < k:  # two overlapping windows of `width` cover k
        n = out.shape[dim] - (k - width)
        out = torch.maximum(out.narrow(dim, 0, n), out.narrow(dim, k - width, n))
    return out


def erode_mask(mask: torch.Tensor, pixels: int) -> torch.Tensor:
    """Shrink a (N, C, H, W) mask by ``pixels`` (the dual of :func:`dilate_mask`; outside the image
    counts as mask, so the border does not eat into a face touching it)."""
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask must be a torch.Tensor, got {type(mask).__name__}")
    pixels = _radius(pixels, "pixels")
    if pixels == 0:
        return mask
    return -dilate_mask(-mask, pixels)
