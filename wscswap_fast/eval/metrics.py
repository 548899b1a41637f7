"""Face-swap metrics as plain functions of embeddings, fitted 3DMM parameters and images.

Everything here takes tensors (or anything ``torch.as_tensor`` accepts) and computes in float64:
the numbers go into reports, not into a training graph.

- identity: cosine similarity and Euclidean distance of embeddings, the same/different identity
  decision on distance (dlib's face-recognition model is trained so that one person's faces lie
  within 0.6 of each other), retrieval top-k accuracy;
- 3DMM: pose error (L2 of the (pitch, yaw, roll) differences in degrees), coefficient error (L2);
- consistency: mean pairwise cosine similarity of one source's results and its spread;
- reconstruction: PSNR and SSIM (Wang et al. 2004: an 11x11 Gaussian window of sigma 1.5,
  K1 = 0.01, K2 = 0.03, the mean of the SSIM map over the valid window positions).
"""
from __future__ import annotations

import math
from typing import Iterable

import torch

# dlib's face-recognition model: two faces of one person lie closer than this (Euclidean distance).
DLIB_SAME_IDENTITY_DISTANCE = 0.6


def _matrix(name: str, x, dim: int | None = None) -> torch.Tensor:
    """x as a float64 (N, D) tensor, or a clear error naming ``name``."""
    try:
        t = torch.as_tensor(x).detach().to("cpu", torch.float64)
    except (TypeError, ValueError, RuntimeError) as e:
        raise TypeError(f"{name} must be an array of numbers, got {type(x).__name__}: {e}") from None
    if t.dim() == 1:
        t = t[None]
    if t.dim() != 2 or t.shape[0] == 0 or t.shape[1] == 0:
        raise ValueError(f"{name} must have shape (N, D) with N, D >= 1, got {tuple(t.shape)}")
    if dim is not None and t.shape[1] != dim:
        raise ValueError(f"{name} must have {dim} columns, got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} holds non-finite values")
    return t


def _paired(name_a: str, a, name_b: str, b) -> tuple[torch.Tensor, torch.Tensor]:
    a = _matrix(name_a, a)
    b = _matrix(name_b, b, a.shape[1])
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"{name_a} and {name_b} must have the same number of rows, got {a.shape[0]} and {b.shape[0]}")
    return a, b


def _unit(t: torch.Tensor, name: str) -> torch.Tensor:
    norm = t.norm(dim=1, keepdim=True)
    if (norm == 0).any():
        raise ValueError(f"{name} holds an all-zero embedding (no direction to compare)")
    return t / norm


def cosine_similarity(a, b) -> torch.Tensor:
    """Row-wise cosine similarity (N,) of two (N, D) embedding sets."""
    a, b = _paired("a", a, "b", b)
    return (_unit(a, "a") * _unit(b, "b")).sum(1).clamp(-1.0, 1.0)


def cosine_matrix(a, b) -> torch.Tensor:
    """(N, M) cosine similarities of every row of a (N, D) with every row of b (M, D)."""
    a = _matrix("a", a)
    b = _matrix("b", b, a.shape[1])
    return (_unit(a, "a") @ _unit(b, "b").T).clamp(-1.0, 1.0)


def euclidean_distance(a, b) -> torch.Tensor:
    """Row-wise Euclidean distance (N,) of two (N, D) embedding sets."""
    a, b = _paired("a", a, "b", b)
    return (a - b).norm(dim=1)


def distance_matrix(a, b) -> torch.Tensor:
    """(N, M) Euclidean distances of every row of a with every row of b."""
    a = _matrix("a", a)
    b = _matrix("b", b, a.shape[1])
    return torch.cdist(a, b)


def same_identity(distance, threshold: float = DLIB_SAME_IDENTITY_DISTANCE) -> torch.Tensor:
    """Boolean tensor: whether each Euclidean embedding distance is below ``threshold``."""
    if not (isinstance(threshold, (int, float)) and threshold > 0):
        raise ValueError(f"threshold must be a positive number, got {threshold!r}")
    return torch.as_tensor(distance, dtype=torch.float64) < threshold


def retrieval_accuracy(queries, gallery, labels, ks: Iterable[int] = (1, 5), metric: str = "cosine") -> dict[str, float]:
    """Top-k identification accuracy: the fraction of queries whose gallery row ``labels[i]``
    is among the k nearest gallery rows.

    queries (N, D), gallery (G, D), labels (N,) integer indices into the gallery. ``metric``:
    "cosine" (largest similarity first) or "euclidean" (smallest distance first). Ties count
    against the query (a gallery row as near as the right one ranks before it). k is capped at
    G: with fewer than k gallery rows, top-k is 1 by construction.
    Returns {"top1": ..., "top5": ...} for ks (1, 5).
    """
    q = _matrix("queries", queries)
    g = _matrix("gallery", gallery, q.shape[1])
    lab = torch.as_tensor(labels)
    if lab.dim() != 1 or lab.shape[0] != q.shape[0] or lab.dtype.is_floating_point:
        raise ValueError(f"labels must be N = {q.shape[0]} integer gallery indices, got {tuple(lab.shape)} {lab.dtype}")
    if ((lab < 0) | (lab >= g.shape[0])).any():
        raise ValueError(f"labels must index the gallery (0..{g.shape[0] - 1}), got {lab.tolist()}")
    if metric == "cosine":
        score = cosine_matrix(q, g)
    elif metric == "euclidean":
        score = -distance_matrix(q, g)
    else:
        raise ValueError(f"metric must be 'cosine' or 'euclidean', got {metric!r}")
    right = score.gather(1, lab.long()[:, None])
    # rank 0 = best; rows as good as the right one rank before it
    rank = ((score >= right).sum(1) - 1)
    out = {}
    for k in ks:
        if not (isinstance(k, int) and k >= 1):
            raise ValueError(f"ks must be positive integers, got {k!r}")
        out[f"top{k}"] = float((rank < min(k, g.shape[0])).double().mean())
    return out


def angle_differences(angles_a, angles_b) -> torch.Tensor:
    """(N, 3) differences a - b in degrees of (pitch, yaw, roll) given in radians, wrapped to [-180, 180)."""
    a, b = _paired("angles_a", angles_a, "angles_b", angles_b)
    if a.shape[1] != 3:
        raise ValueError(f"angles must have shape (N, 3) (pitch, yaw, roll), got {tuple(a.shape)}")
    d = torch.rad2deg(a - b)
    return torch.remainder(d + 180.0, 360.0) - 180.0


def pose_error(angles_a, angles_b) -> torch.Tensor:
    """(N,) L2 norm in degrees of the (pitch, yaw, roll) differences; angles in radians."""
    return angle_differences(angles_a, angles_b).norm(dim=1)


def coefficient_error(coeff_a, coeff_b) -> torch.Tensor:
    """(N,) L2 distance of two sets of 3DMM coefficients (expression or identity)."""
    a, b = _paired("coeff_a", coeff_a, "coeff_b", coeff_b)
    return (a - b).norm(dim=1)


def identity_consistency(embeddings) -> tuple[float, float]:
    """(mean, std) of the pairwise cosine similarities of M >= 2 embeddings (M, D) of one source's
    results: 1 and 0 when every result has the same identity embedding. std is the population
    standard deviation over the M (M - 1) / 2 pairs."""
    e = _matrix("embeddings", embeddings)
    m = e.shape[0]
    if m < 2:
        raise ValueError(f"identity consistency needs at least 2 results, got {m}")
    sim = cosine_matrix(e, e)
    iu = torch.triu_indices(m, m, offset=1)
    pairs = sim[iu[0], iu[1]]
    return float(pairs.mean()), float(pairs.std(unbiased=False))


def _images(name: str, x) -> torch.Tensor:
    t = torch.as_tensor(x).detach().to("cpu")
    if t.dim() == 3:
        t = t[None]
    if t.dim() != 4:
        raise ValueError(f"{name} must be (N, C, H, W) or (C, H, W), got shape {tuple(t.shape)}")
    return t.to(torch.float64)


def _image_pair(x, y) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = _images("x", x), _images("y", y)
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    return x, y


def psnr(x, y, data_range: float = 1.0) -> torch.Tensor:
    """(N,) peak signal-to-noise ratio in dB of image batches (N, C, H, W); inf where identical."""
    if not data_range > 0:
        raise ValueError(f"data_range must be positive, got {data_range!r}")
    x, y = _image_pair(x, y)
    mse = ((x - y) ** 2).flatten(1).mean(1)
    with torch.no_grad():
        out = 10.0 * torch.log10(data_range ** 2 / mse)   # mse 0 -> inf
    return out


def gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """(size, size) float64 normalised Gaussian window."""
    if not (isinstance(size, int) and size >= 1 and size % 2 == 1):
        raise ValueError(f"window size must be a positive odd integer, got {size!r}")
    if not sigma > 0:
        raise ValueError(f"sigma must be positive, got {sigma!r}")
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(r ** 2) / (2 * sigma ** 2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim(x, y, data_range: float = 1.0, window_size: int = 11, sigma: float = 1.5,
         k1: float = 0.01, k2: float = 0.03) -> torch.Tensor:
    """(N,) structural similarity of image batches (N, C, H, W), the mean over channels and valid
    window positions of Wang et al.'s SSIM map (Gaussian window, no padding). 1 where identical."""
    if not data_range > 0:
        raise ValueError(f"data_range must be positive, got {data_range!r}")
    x, y = _image_pair(x, y)
    n, c, h, w = x.shape
    if h < window_size or w < window_size:
        raise ValueError(f"images must be at least {window_size}x{window_size} for SSIM, got {h}x{w}")
    win = gaussian_window(window_size, sigma).expand(c, 1, window_size, window_size)

    def filt(t):
        return torch.nn.functional.conv2d(t, win, groups=c)

    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    mx, my = filt(x), filt(y)
    sxx = filt(x * x) - mx * mx
    syy = filt(y * y) - my * my
    sxy = filt(x * y) - mx * my
    num = (2 * mx * my + c1) * (2 * sxy + c2)
    den = (mx * mx + my * my + c1) * (sxx + syy + c2)
    return (num / den).flatten(1).mean(1)


def summarise(values) -> dict[str, float | int | None]:
    """{"mean", "std", "min", "max", "count"} of the finite values (None where there are none);
    the count of infinite ones under "infinite" (PSNR of identical images)."""
    t = torch.as_tensor(list(values) if not isinstance(values, torch.Tensor) else values, dtype=torch.float64).flatten()
    finite = t[torch.isfinite(t)]
    out: dict[str, float | int | None] = {"count": int(t.numel()), "infinite": int(torch.isinf(t).sum())}
    if finite.numel():
        out.update(mean=float(finite.mean()), std=float(finite.std(unbiased=False)),
                   min=float(finite.min()), max=float(finite.max()))
    else:
        out.update(mean=None, std=None, min=None, max=None)
    if out["infinite"] and not finite.numel():
        out["mean"] = math.inf
    return out
