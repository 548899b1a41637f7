"""rasterize + photometric loss forward+backward on the Surrey Face Model at 256x256, batch 8:
the fused backends against the brute-force plain-PyTorch reference.

The mesh: the SFM mean shape (3448 vertices, 6736 triangles) from
../shared/data/morphable/sfm/sfm_shape_3448.bin through eos-py when both are there; otherwise a
synthetic height-field cap of the same size (56 x 62 vertices, 6710 triangles). Each row's note
says which. Every sample has its own pose (yaw, pitch, roll within +-0.3 rad) and is projected
with the perspective camera of wscswap_fast.models.camera (camera at distance 10 on +z) so that
the face spans about 60% of the image width; depth is Zc. Colours: albedo and SH lighting (27
coefficients) with normals from the rotated mesh; the mask is an ellipse over the face. The
timed step is the op boundary: photometric_loss forward and the gradients of screen vertices,
albedo, normals and SH coefficients (the SH shading is plain PyTorch around the fused core).

The brute-force reference evaluates every (pixel, triangle) pair: at 256x256 x 6736 triangles it
needs ~7 minutes per batch here, so it is timed on the same mesh at 64x64, batch 1 (2 runs), and
its per-pair time is scaled to the 256x256 batch-8 case; that row is labelled extrapolated. The
cpu backend is timed at both sizes, so the 64x64 ratio is measured, not scaled.

Minimal bytes (fp32, P = N*H*W pixels): the forward reads the image (12 B) and mask (4 B) and
writes the triangle id (4 B) per pixel; the backward reads the three again: 40 B per pixel,
plus the vertex arrays (~0.5 MB per sample each way), negligible. The op is compute-bound (see
bench/NOTES.md); the GB/s column says how far it is from the memory floor.
"""
import os
import time

import torch

from .. import ops
from ..ops.photometric_loss import vertex_normals
from .harness import Row, finish_rows, time_interleaved

_SFM = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data", "morphable", "sfm",
                    "sfm_shape_3448.bin")
CASES = {"full": ((8, 256), (1, 64)), "quick": ((2, 64), (1, 16))}  # (batch, side): timed case, reference case
FOCAL, CAMERA_DISTANCE, FILL = 1015.0, 10.0, 0.6


def sfm_mesh():
    """(vertices (V,3) float32 centred, triangles (F,3) int64, description) from the SFM file, or None."""
    if not os.path.isfile(_SFM):
        return None
    try:
        import eos
    except ImportError:
        return None
    model = eos.morphablemodel.load_model(_SFM).get_shape_model()
    mean = torch.tensor(model.get_mean(), dtype=torch.float32).view(-1, 3)
    tris = torch.tensor(model.get_triangle_list(), dtype=torch.int64)
    return mean - mean.mean(0), tris, f"SFM mean shape, V={mean.shape[0]}, F={tris.shape[0]}"


def synthetic_mesh(rows: int = 56, cols: int = 62):
    """A face-sized height-field cap (counter-clockwise seen from +z), the SFM's vertex and triangle counts."""
    v, u = torch.meshgrid(torch.linspace(-1.3, 1.3, rows), torch.linspace(-1, 1, cols), indexing="ij")
    z = 0.6 * torch.sqrt((1.2 - u * u - (v / 1.3) ** 2).clamp_min(0.05))
    verts = torch.stack([u * 75, v * 75, z * 75], dim=-1).reshape(-1, 3)
    tris = []
    for r in range(rows - 1):
        for c in range(cols - 1):
            a, b, d, e = r * cols + c, r * cols + c + 1, (r + 1) * cols + c, (r + 1) * cols + c + 1
            tris += [[a, b, e], [a, e, d]]
    return verts - verts.mean(0), torch.tensor(tris), f"synthetic cap, V={verts.shape[0]}, F={len(tris)} (no SFM file)"


def rotation(angles: torch.Tensor) -> torch.Tensor:
    """R = Rz(roll) Ry(yaw) Rx(pitch), (N,3,3): the camera convention of the 3DMM spec."""
    x, y, z = angles.unbind(-1)
    one, zero = torch.ones_like(x), torch.zeros_like(x)
    rx = torch.stack([one, zero, zero, zero, x.cos(), -x.sin(), zero, x.sin(), x.cos()], -1).view(-1, 3, 3)
    ry = torch.stack([y.cos(), zero, y.sin(), zero, one, zero, -y.sin(), zero, y.cos()], -1).view(-1, 3, 3)
    rz = torch.stack([z.cos(), -z.sin(), zero, z.sin(), z.cos(), zero, zero, zero, one], -1).view(-1, 3, 3)
    return rz @ ry @ rx


def make_case(mesh, batch: int, side: int, device, seed: int = 0):
    """Screen vertices, triangles, image, mask, albedo, normals and SH coefficients for one case."""
    verts, tris, _ = mesh
    g = torch.Generator().manual_seed(seed)
    unit = verts / (verts[:, 0].max() - verts[:, 0].min())  # unit face width
    angles = 0.3 * (2 * torch.rand((batch, 3), generator=g) - 1)
    cam = unit[None] @ rotation(angles).transpose(1, 2)
    zc = CAMERA_DISTANCE - cam[..., 2]
    focal = FILL * side * CAMERA_DISTANCE  # a unit-wide face at distance 10 spans FILL*side pixels
    screen = torch.stack([side / 2 + focal * cam[..., 0] / zc, side / 2 - focal * cam[..., 1] / zc, zc], dim=-1)
    normals = vertex_normals(cam, tris)
    image = torch.rand((batch, 3, side, side), generator=g)
    yy, xx = torch.meshgrid(torch.arange(side) + 0.5, torch.arange(side) + 0.5, indexing="ij")
    mask = (((xx - side / 2) / (0.3 * side)) ** 2 + ((yy - side / 2) / (0.38 * side)) ** 2 < 1).float()
    albedo = 0.4 + 0.3 * torch.rand((batch, verts.shape[0], 3), generator=g)
    sh = 0.2 * torch.randn((batch, 27), generator=g)
    tensors = dict(screen_vertices=screen, image=image, mask=mask.expand(batch, 1, side, side).contiguous(),
                   albedo=albedo, normals=normals, sh_coeffs=sh)
    return {k: v.to(device) for k, v in tensors.items()}, tris.to(device)


def step(case, tris, backend: str):
    """One forward+backward at the op boundary; returns a callable."""
    leaves = {k: case[k].detach().clone().requires_grad_() for k in ("screen_vertices", "albedo", "normals",
                                                                     "sh_coeffs")}

    def run():
        loss = ops.photometric_loss(case["image"], leaves["screen_vertices"], tris, albedo=leaves["albedo"],
                                    normals=leaves["normals"], sh_coeffs=leaves["sh_coeffs"], mask=case["mask"],
                                    backend=backend)
        return torch.autograd.grad(loss, list(leaves.values()))

    return run


def minimal_bytes(batch: int, side: int) -> int:
    return 40 * batch * side * side


def _time_few(fn, device, runs: int) -> float:
    """Median seconds of `runs` calls after one warm-up: for the brute force, seconds per call."""
    fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def run(device: torch.device, quick: bool = False, copy_gbps: float = 1.0, seconds: float = 1.5) -> list:
    mesh = sfm_mesh() or synthetic_mesh()
    label = mesh[2]
    n_tris = mesh[1].shape[0]
    (batch, side), (ref_batch, ref_side) = CASES["quick" if quick else "full"]
    fast = [b for b, ok in ops.available().items() if ok is True and b in ("cpu", "cuda")
            and (b == "cuda") == (device.type == "cuda")]
    rows = []

    # The small case: every fast backend and the brute force, measured.
    case, tris = make_case(mesh, ref_batch, ref_side, device)
    ref_seconds = _time_few(step(case, tris, "reference"), device, runs=1 if quick else 2)
    small = time_interleaved({b: step(case, tris, b) for b in fast}, device, seconds=seconds / 3)
    small["reference"] = ref_seconds
    name = f"fwd+bwd {ref_side}x{ref_side} batch {ref_batch}"
    small_rows = [Row("rasterize+photometric", name, b, t * 1e3, bytes=minimal_bytes(ref_batch, ref_side),
                      note=label + (", brute force, measured" if b == "reference" else ""))
                  for b, t in small.items()]
    rows += finish_rows(small_rows, copy_gbps, "reference", None)

    # The target case: fast backends measured, the brute force scaled per pixel-triangle pair.
    case, tris = make_case(mesh, batch, side, device, seed=1)
    big = time_interleaved({b: step(case, tris, b) for b in fast}, device, seconds=seconds)
    per_pair = ref_seconds / (ref_batch * ref_side * ref_side * n_tris)
    big["reference"] = per_pair * batch * side * side * n_tris
    name = f"fwd+bwd {side}x{side} batch {batch}"
    big_rows = []
    for b, t in big.items():
        note = label
        if b == "reference":
            note += f", EXTRAPOLATED from {ref_side}x{ref_side} ({per_pair * 1e9:.0f} ns per pixel-triangle pair)"
        else:
            note += f", {batch / t:.0f} images/s"
        big_rows.append(Row("rasterize+photometric", name, b, t * 1e3, bytes=minimal_bytes(batch, side), note=note))
    rows += finish_rows(big_rows, copy_gbps, "reference", None)

    # The rasterizer alone (triangle id, barycentrics, depth; backward to the vertices).
    verts = case["screen_vertices"].detach().clone().requires_grad_()

    def raster_step(backend):
        def go():
            _, bary, depth = ops.rasterize(verts, tris, side, side, backend=backend)
            return torch.autograd.grad(bary.sum() + depth.sum(), verts)
        return go

    times = time_interleaved({b: raster_step(b) for b in fast}, device, seconds=seconds / 2)
    # rasterize writes id + 3 barycentrics + depth (20 B) and reads 16 B of gradients per pixel.
    rows += finish_rows([Row("rasterize", name, b, t * 1e3, bytes=36 * batch * side * side,
                             note=f"{label}, {batch / t:.0f} images/s") for b, t in times.items()],
                        copy_gbps, None, None)
    return rows

