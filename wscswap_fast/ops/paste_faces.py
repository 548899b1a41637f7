"""Inference paste-back: K swapped face crops composited into B uint8 frames in one call.

Reference semantics (the 'reference' backend; the others are tested against it):
  1. feather > 0: erode each mask with a feather x feather square, then Gaussian-blur it with
     kernel 2*feather+1 and OpenCV's default sigma for that size (reflect-101 border).
  2. Warp crop and mask into the frame with the inverse map: frame pixel (x, y) samples the crop
     bilinearly at A @ (x, y, 1), zero outside the crop (cv2.warpAffine with WARP_INVERSE_MAP and
     BORDER_CONSTANT 0).
  3. out = m*crop + (1-m)*frame, rounded half up to uint8; faces of one frame composite in
     index order, each over the result of the previous ones.

The fast backends visit only each face's bounding box in its frame (the pixels whose crop
coordinates lie in (-1, S) along both axes); everything else keeps the frame's bytes.
Bytes moved per face (fast backends): the box's frame pixels read and written (2*3 bytes each)
plus the crop and mask, 4 planes of S*S elements, read about once through the cache.
"""
import numpy as np
import torch
import torch.nn.functional as F

from .._ext import extension
from . import _checks
from ._backends import cuda_stream, on_device, resolve

CROP_DTYPES = (torch.uint8, torch.float32, torch.float16, torch.bfloat16)
MASK_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
AFFINE_DTYPES = (torch.float32, torch.float64)
SUPPORTED = {"*": CROP_DTYPES}

# OpenCV's getGaussianKernel(ksize, sigma<=0) uses these fixed tables for ksize <= 9.
_SMALL_GAUSSIAN = {
    1: [1.0],
    3: [0.25, 0.5, 0.25],
    5: [0.0625, 0.25, 0.375, 0.25, 0.0625],
    7: [0.03125, 0.109375, 0.21875, 0.28125, 0.21875, 0.109375, 0.03125],
    9: [1 / 64, 3.25 / 64, 7.5 / 64, 12.75 / 64, 15 / 64, 12.75 / 64, 7.5 / 64, 3.25 / 64, 1 / 64],
}


def gaussian_kernel(ksize: int) -> np.ndarray:
    """cv2.getGaussianKernel(ksize, 0) as float64."""
    if ksize in _SMALL_GAUSSIAN:
        return np.array(_SMALL_GAUSSIAN[ksize], dtype=np.float64)
    sigma = 0.3 * ((ksize - 1) * 0.5 - 1) + 0.8
    x = np.arange(ksize, dtype=np.float64) - (ksize - 1) / 2
    g = np.exp(-(x * x) / (2 * sigma * sigma))
    return g / g.sum()


def reflect101(index: np.ndarray, length: int) -> np.ndarray:
    """OpenCV's BORDER_REFLECT_101 for any distance outside [0, length)."""
    if length == 1:
        return np.zeros_like(index)
    period = 2 * length - 2
    i = np.abs(index) % period
    return np.where(i >= length, period - i, i)


def feather_reference(masks: torch.Tensor, feather: int) -> torch.Tensor:
    """Erode with a feather x feather square, then blur with a (2*feather+1)^2 Gaussian; float64."""
    m = masks.to(torch.float64)
    if feather == 0:
        return m
    lo, hi = feather // 2, feather - 1 - feather // 2
    padded = F.pad(m, (lo, hi, lo, hi), value=float("inf"))  # outside samples never win the min
    eroded = -F.max_pool2d(-padded, feather, stride=1)
    s = m.shape[-1]
    idx = torch.from_numpy(reflect101(np.arange(-feather, s + feather), s)).to(m.device)
    k = torch.from_numpy(gaussian_kernel(2 * feather + 1)).to(m.device)
    rows = F.conv2d(eroded.index_select(3, idx), k.view(1, 1, 1, -1))
    return F.conv2d(rows.index_select(2, idx), k.view(1, 1, -1, 1))


def reference(frames, crops, masks, affines, frame_idx, feather: int = 0) -> torch.Tensor:
    """Plain PyTorch, float64, over every pixel of every frame (no bounding boxes)."""
    out = frames.clone()
    k_faces, _, s, _ = crops.shape
    if k_faces == 0:
        return out
    h, w = frames.shape[1:3]
    dev = frames.device
    m_all = feather_reference(masks, feather)[:, 0]
    scale = 1.0 if crops.dtype == torch.uint8 else 255.0
    c_all = crops.to(torch.float64) * scale
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64, device=dev),
                            torch.arange(w, dtype=torch.float64, device=dev), indexing="ij")
    for k in range(k_faces):
        a = affines[k].to(torch.float64)
        xc = a[0, 0] * xs + a[0, 1] * ys + a[0, 2]
        yc = a[1, 0] * xs + a[1, 1] * ys + a[1, 2]
        x0, y0 = torch.floor(xc), torch.floor(yc)
        ax, ay = xc - x0, yc - y0
        planes = torch.cat([c_all[k], m_all[k][None]]).reshape(4, s * s)
        sampled = torch.zeros(4, h, w, dtype=torch.float64, device=dev)
        for dx, dy, wt in ((0, 0, (1 - ax) * (1 - ay)), (1, 0, ax * (1 - ay)), (0, 1, (1 - ax) * ay), (1, 1, ax * ay)):
            xi, yi = x0 + dx, y0 + dy
            inside = (xi >= 0) & (xi < s) & (yi >= 0) & (yi < s)
            flat = torch.where(inside, yi * s + xi, torch.zeros_like(xi)).long().reshape(-1)
            sampled += planes[:, flat].reshape(4, h, w) * (wt * inside)
        m = sampled[3][..., None]
        b = int(frame_idx[k])
        v = m * sampled[:3].permute(1, 2, 0) + (1 - m) * out[b].to(torch.float64)
        out[b] = torch.floor(v.clamp(0, 255) + 0.5).to(torch.uint8)
    return out


def plan(affines64: np.ndarray, frame_idx: np.ndarray, num_frames: int, height: int, width: int, size: int):
    """Where each face can touch its frame, and the faces of each frame in index order.

    Returns int32 arrays: face_boxes (K,4) [x0,y0,x1,y1), faces_by_frame (K,), frame_offsets
    (B+1,), frame_boxes (B,4) (the union of a frame's face boxes), and the largest union box
    height and width.
    """
    k = affines64.shape[0]
    lin, t = affines64[:, :, :2], affines64[:, :, 2]
    inv = np.linalg.inv(lin) if k else np.zeros((0, 2, 2))
    # Crop coordinates in (-1, S) reach the frame; map the corners of that square back.
    corners = np.array([[-1, -1], [size, -1], [-1, size], [size, size]], dtype=np.float64)
    pts = np.einsum("kij,kcj->kci", inv, corners[None] - t[:, None, :])
    lo = np.floor(pts.min(axis=1)) - 1
    hi = np.ceil(pts.max(axis=1)) + 2
    face_boxes = np.stack([
        np.clip(lo[:, 0], 0, width), np.clip(lo[:, 1], 0, height),
        np.clip(hi[:, 0], 0, width), np.clip(hi[:, 1], 0, height)], axis=1).astype(np.int32)
    faces_by_frame = np.argsort(frame_idx, kind="stable").astype(np.int32)
    counts = np.bincount(frame_idx, minlength=num_frames)
    frame_offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    frame_boxes = np.zeros((num_frames, 4), dtype=np.int32)
    for b in np.nonzero(counts)[0]:
        boxes = face_boxes[frame_idx == b]
        frame_boxes[b] = [boxes[:, 0].min(), boxes[:, 1].min(), boxes[:, 2].max(), boxes[:, 3].max()]
    extent = np.maximum(frame_boxes[:, 2:] - frame_boxes[:, :2], 0)
    max_cols, max_rows = (int(v) for v in extent.max(axis=0)) if num_frames else (0, 0)
    return face_boxes, faces_by_frame, frame_offsets, frame_boxes, max_rows, max_cols


def check_inputs(frames, crops, masks, affines, frame_idx, feather, out):
    """Validate once, here. Returns the affines as a float64 numpy array (read on the host)."""
    _checks.tensor("frames", frames, dims=4, dtypes=(torch.uint8,))
    dev = frames.device
    if frames.shape[3] != 3:
        raise ValueError(f"frames must be (B,H,W,3) uint8, got {_checks.describe(frames)}")
    _checks.tensor("crops", crops, dims=4, dtypes=CROP_DTYPES, device=dev)
    k, _, s, _ = crops.shape
    _checks.shape("crops", crops, (k, 3, s, s), "(K,3,S,S) square crops")
    _checks.tensor("masks", masks, dims=4, dtypes=MASK_DTYPES, device=dev)
    _checks.shape("masks", masks, (k, 1, s, s), "(K,1,S,S) like crops")
    _checks.tensor("affines", affines, dims=3, dtypes=AFFINE_DTYPES, device=dev)
    _checks.shape("affines", affines, (k, 2, 3), "(K,2,3), mapping frame pixels to crop pixels")
    _checks.tensor("frame_idx", frame_idx, dims=1, dtypes=(torch.int64,), device=dev)
    _checks.shape("frame_idx", frame_idx, (k,), "(K,), the frame of each face")
    if isinstance(feather, bool) or not isinstance(feather, int):
        raise TypeError(f"feather must be an int (a width in crop pixels), got {type(feather).__name__}")
    if feather < 0 or (k and feather >= s):
        raise ValueError(f"feather must be in [0, S) = [0, {s}), got {feather}")
    if out is not None:
        _checks.tensor("out", out, dims=4, dtypes=(torch.uint8,), device=dev)
        _checks.shape("out", out, tuple(frames.shape), "(the shape of frames)")
        if not out.is_contiguous():
            raise ValueError(f"out must be contiguous, got strides {out.stride()} ({_checks.describe(out)})")
    a = affines.detach().to("cpu", torch.float64).numpy()
    idx = frame_idx.detach().cpu().numpy()
    if not np.isfinite(a).all():
        bad = int(np.nonzero(~np.isfinite(a).reshape(k, -1).all(axis=1))[0][0])
        raise ValueError(f"affines[{bad}] has a NaN or infinite entry: {a[bad].tolist()}")
    det = a[:, 0, 0] * a[:, 1, 1] - a[:, 0, 1] * a[:, 1, 0]
    scale = np.abs(a[:, :, :2]).max(axis=(1, 2)) if k else det
    singular = np.abs(det) <= 1e-12 * np.maximum(scale * scale, 1e-300)
    if singular.any():
        bad = int(np.nonzero(singular)[0][0])
        raise ValueError(f"affines[{bad}] is not invertible (determinant {det[bad]:.3g}): {a[bad].tolist()}")
    if k and (idx.min() < 0 or idx.max() >= frames.shape[0]):
        bad = int(np.nonzero((idx < 0) | (idx >= frames.shape[0]))[0][0])
        raise ValueError(f"frame_idx[{bad}] = {idx[bad]} is out of range for {frames.shape[0]} frames")
    return a, idx


def _feather_fast(masks, feather, backend):
    masks = masks.to(torch.float32).contiguous()
    if feather == 0:
        return masks
    kernel = torch.from_numpy(gaussian_kernel(2 * feather + 1).astype(np.float32)).to(masks.device)
    out, scratch = torch.empty_like(masks), torch.empty_like(masks)
    if backend == "triton":
        from ..triton import paste_faces as triton_paste

        triton_paste.feather_masks(masks, out, scratch, kernel, feather)
    else:
        extension.feather_masks(masks, out, scratch, kernel, feather, cuda_stream(masks.device))
    return out


@torch.library.custom_op("wscswap::paste_faces_", mutates_args=("out",))
def _paste_op(out: torch.Tensor, crops: torch.Tensor, masks: torch.Tensor, affines: torch.Tensor,
              frame_idx: torch.Tensor, face_boxes: torch.Tensor, faces_by_frame: torch.Tensor,
              frame_offsets: torch.Tensor, frame_boxes: torch.Tensor, max_rows: int, max_cols: int,
              feather: int, backend: str) -> None:
    if backend == "reference":
        out.copy_(reference(out, crops, masks, affines, frame_idx, feather))
        return
    dev = out.device
    plan_tensors = [t.to(dev, non_blocking=True) for t in (face_boxes, faces_by_frame, frame_offsets, frame_boxes)]
    with on_device(dev):
        masks = _feather_fast(masks, feather, backend)
        args = (out, crops.contiguous(), masks, affines.to(torch.float32).contiguous(), *plan_tensors,
                max_rows, max_cols)
        if backend == "triton":
            from ..triton import paste_faces as triton_paste

            triton_paste.paste_faces(*args)
        else:
            extension.paste_faces(*args, cuda_stream(dev))


@_paste_op.register_fake
def _(out, crops, masks, affines, frame_idx, face_boxes, faces_by_frame, frame_offsets, frame_boxes,
      max_rows, max_cols, feather, backend):
    return None


def paste_faces(frames: torch.Tensor, crops: torch.Tensor, masks: torch.Tensor, affines: torch.Tensor,
                frame_idx: torch.Tensor, *, feather: int = 0, out: torch.Tensor | None = None,
                backend: str = "auto") -> torch.Tensor:
    """Composite K face crops into B frames.

    Args:
        frames: (B, H, W, 3) uint8, any channel order (crops use the same one).
        crops: (K, 3, S, S), float in [0, 1] (fp32/fp16/bf16) or uint8.
        masks: (K, 1, S, S) float in [0, 1].
        affines: (K, 2, 3) float, mapping frame pixel coordinates to crop coordinates (the matrix
            that cut the crop with ``cv2.warpAffine(frame, A, (S, S))``).
        frame_idx: (K,) int64, the frame each face belongs to.
        feather: erosion width in crop pixels; also sets the blur kernel to 2*feather+1.
        out: optional contiguous uint8 tensor shaped like frames; ``out=frames`` writes in place.
        backend: 'auto', 'cuda', 'triton', 'cpu' or 'reference'.

    Returns the composited frames (``out`` when given). No gradients: this is inference.
    """
    a, idx = check_inputs(frames, crops, masks, affines, frame_idx, feather, out)
    chosen = resolve("paste_faces", backend, frames.device, {"crops": crops.dtype}, SUPPORTED)
    if out is None:
        out = frames.clone(memory_format=torch.contiguous_format)
    elif out.data_ptr() != frames.data_ptr():
        out.copy_(frames)
    b, h, w, _ = frames.shape
    s = crops.shape[2]
    face_boxes, faces_by_frame, frame_offsets, frame_boxes, max_rows, max_cols = plan(a, idx, b, h, w, s)
    if crops.shape[0] == 0:
        return out
    _paste_op(out, crops, masks, affines, frame_idx, torch.from_numpy(face_boxes), torch.from_numpy(faces_by_frame),
              torch.from_numpy(frame_offsets), torch.from_numpy(frame_boxes), max_rows, max_cols, feather, chosen)
    return out
