"""paste_faces on a 1080p frame against the OpenCV paste-back pipeline that face-swap tools run
(one face at a time over the whole frame; see ops/paste_faces_opencv.py).

Minimal bytes: the frame pixels inside each face's box read and written (6 bytes each), plus
every crop and mask read once: K*S*S*(3*crop element size + 4). Fast backends composite in
place (out=frames); the OpenCV pipeline allocates its full-frame intermediates as tools do.
"""
import numpy as np
import torch

from .. import ops
from ..ops.paste_faces import plan
from ..ops.paste_faces_opencv import opencv_paste
from .harness import Row, finish_rows, fused_backends, time_interleaved

FEATHER = 5


def face_affines(count: int, size: int, frame_w: int, frame_h: int) -> np.ndarray:
    """Frame->crop similarity transforms of faces size pixels wide, spread along the frame,
    each turned a little, as a detector + aligner would give."""
    affines = []
    for k in range(count):
        cx = frame_w * (k + 1) / (count + 1)
        cy = frame_h / 2 + (k % 2) * 40
        a = np.deg2rad(8 * (k + 1))
        rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
        affines.append(np.concatenate([rot, (size / 2 - rot @ [cx, cy])[:, None]], axis=1))
    return np.array(affines, dtype=np.float32)


def make_case(faces: int, size: int, height: int, width: int, device: torch.device, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    frames = torch.randint(0, 256, (1, height, width, 3), generator=g, dtype=torch.uint8)
    crops = torch.rand((faces, 3, size, size), generator=g)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    ellipse = ((((xx - size / 2) / (0.42 * size)) ** 2 + ((yy - size / 2) / (0.5 * size)) ** 2) < 1).float()
    masks = ellipse.expand(faces, 1, size, size).contiguous()
    affines = torch.from_numpy(face_affines(faces, size, width, height))
    frame_idx = torch.zeros(faces, dtype=torch.int64)
    return [t.to(device) for t in (frames, crops, masks, affines, frame_idx)]


def minimal_bytes(frames, crops, affines, frame_idx) -> int:
    b, h, w, _ = frames.shape
    s = crops.shape[2]
    boxes = plan(affines.double().cpu().numpy(), frame_idx.cpu().numpy(), b, h, w, s)[0]
    box_pixels = int(((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).sum())
    return 6 * box_pixels + crops.shape[0] * s * s * (3 * crops.element_size() + 4)


def run(device: torch.device, quick: bool = False, copy_gbps: float = 1.0, seconds: float = 1.5) -> list:
    height, width, size = (180, 320, 64) if quick else (1080, 1920, 256)
    rows = []
    for faces in (1, 4):
        frames, crops, masks, affines, frame_idx = make_case(faces, size, height, width, device)
        np_args = [t.cpu().numpy() for t in (frames, crops, masks, affines, frame_idx)]
        contenders = {"opencv": lambda: opencv_paste(*np_args, feather=FEATHER)}
        for backend in fused_backends(device):
            contenders[backend] = lambda be=backend: ops.paste_faces(
                frames, crops, masks, affines, frame_idx, feather=FEATHER, out=frames, backend=be)
        times = time_interleaved(contenders, device, seconds=seconds)
        case = f"{faces} face{'s' if faces > 1 else ''} {size}px, {width}x{height}, feather {FEATHER}"
        nbytes = minimal_bytes(frames, crops, affines, frame_idx)
        case_rows = [Row("paste_faces", case, name, t * 1e3, bytes=nbytes,
                         note="baseline (CPU, whole frame per face)" if name == "opencv" else "in place")
                     for name, t in times.items()]
        rows += finish_rows(case_rows, copy_gbps, "opencv", None)
    return rows
