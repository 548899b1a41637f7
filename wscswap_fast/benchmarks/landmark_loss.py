"""landmark_loss forward+backward at batch 64 on an SFM-sized and a BFM-sized 3D morphable model:
the fused backends against the two eager PyTorch baselines and torch.compile.

Models (synthetic, so the suite needs no file outside the repo): SFM-sized, 3448 vertices with
63 identity and 6 expression components; BFM-sized (Deep3DFaceRecon's BFM_model_front), 35709
vertices with 80 + 64. Face-sized shapes in decimetres, 68 landmark vertices drawn at random,
Deep3DFaceRecon's 224x224 camera (focal 1015, centre 112, distance 10), poses within 40 degrees,
targets a few pixels off the true projections, L2, mean over the batch, weights (68,).

Contenders, each timed as forward + the gradients of id_coeff, exp_coeff, angles and translation:
  eager full mesh  the reference on the full model: shape = mean + id_basis @ a + exp_basis @ e
                   for every vertex, then index the 68 landmarks (what the loss costs without
                   gathering); autograd through the full mesh.
  eager            the same on the landmark rows gathered once (what a careful PyTorch user
                   writes); the "vs eager" column.
  torch.compile    the gathered eager version compiled (Inductor); the "vs compile" column.
  cpu / cuda / triton  the fused op.

Work, R = 3*68 = 204 landmark rows, K = K_id + K_exp, N = 64: the fused op does 2*R*K*N
multiply-adds (the rows forward, basis^T @ dL/dp backward) plus ~120 flops per landmark: 7.5 MFLOP
(BFM) and 3.6 MFLOP (SFM). The full mesh costs 2*3V*K*N multiply-adds: 3.9 GFLOP (BFM). The
bytes are small (bases 3RK*4 = 117 KB for BFM, shared by the batch; inputs and gradients ~150 KB)
and stay in cache, so the op is bound by arithmetic and by fixed per-call costs; the note gives
the achieved GFLOP/s and the ratio to the full-mesh baseline.
"""
import math

import torch

from .. import ops
from ..models.camera import perspective, transform
from ..ops.landmark_loss import reference, rest_landmarks
from .harness import Row, finish_rows, fused_backends, time_interleaved

MODELS = {"SFM-sized": (3448, 63, 6), "BFM-sized": (35709, 80, 64)}
BATCH = {"full": 64, "quick": 8}
CAMERA = dict(focal=1015.0, cx=112.0, cy=112.0, camera_distance=10.0)
NUM_LANDMARKS = 68


def make_model(vertices: int, k_id: int, k_exp: int, device, seed: int = 0):
    """(mean_shape, id_basis, exp_basis, landmark_indices) of a synthetic face-sized model."""
    g = torch.Generator().manual_seed(seed)
    box = torch.tensor([0.55, 0.6, 0.25])
    mean_shape = (torch.rand(vertices, 3, generator=g) * 2 - 1) * box
    id_basis = torch.randn(vertices, 3, k_id, generator=g) * (0.02 / math.sqrt(k_id))
    exp_basis = torch.randn(vertices, 3, k_exp, generator=g) * (0.02 / math.sqrt(k_exp))
    indices = torch.randperm(vertices, generator=g)[:NUM_LANDMARKS]
    return [t.to(device) for t in (mean_shape, id_basis, exp_basis, indices)]


def make_case(model, batch: int, device, seed: int = 1):
    """Leaves (id_coeff, exp_coeff, angles, translation), then target, weights and the gathered rows."""
    mean_shape, id_basis, exp_basis, indices = model
    g = torch.Generator().manual_seed(seed)
    k_id, k_exp = id_basis.shape[2], exp_basis.shape[2]
    id_coeff = torch.randn(batch, k_id, generator=g)
    exp_coeff = torch.randn(batch, k_exp, generator=g)
    angles = (torch.rand(batch, 3, generator=g) * 2 - 1) * math.radians(40)
    translation = (torch.rand(batch, 3, generator=g) * 2 - 1) * torch.tensor([0.1, 0.1, 0.3])
    rows = [t[indices.cpu()].cpu().contiguous() for t in (mean_shape, id_basis, exp_basis)]
    weights = torch.rand(NUM_LANDMARKS, generator=g)
    with torch.no_grad():  # targets: the true projections moved by a few pixels
        points = rest_landmarks(id_coeff, exp_coeff, *rows)
        target = perspective(transform(points, angles, translation), **CAMERA)
        target += torch.randn(batch, NUM_LANDMARKS, 2, generator=g) * 4
    leaves = [t.to(device).requires_grad_() for t in (id_coeff, exp_coeff, angles, translation)]
    return leaves, [t.to(device) for t in [target, weights] + rows]


def flops(model, batch: int) -> float:
    """Multiply-adds of the fused op (2 flops each) plus ~120 flops per landmark, forward+backward."""
    k = model[1].shape[2] + model[2].shape[2]
    return 2 * 2 * 3 * NUM_LANDMARKS * k * batch + 120 * NUM_LANDMARKS * batch


def full_mesh_flops(vertices: int, k: int, batch: int) -> float:
    """The full-mesh baseline's products: the mesh forward and its gradient to the coefficients."""
    return 2 * 2 * 3 * vertices * k * batch


def gathered_eager(id_coeff, exp_coeff, angles, translation, target, weights, mean, id_basis, exp_basis):
    return reference(id_coeff, exp_coeff, angles, translation, target, weights, mean, id_basis, exp_basis, **CAMERA)


def step(fn, leaves, rest):
    def run():
        return torch.autograd.grad(fn(*leaves, *rest), leaves)

    return run


def contenders(model, leaves, rest, device, compiled=None) -> dict:
    mean_shape, id_basis, exp_basis, indices = model
    out = {
        "eager full mesh": step(lambda *a: reference(*a, **CAMERA, full_model=(mean_shape, id_basis, exp_basis, indices)),
                                leaves, rest),
        "eager": step(gathered_eager, leaves, rest),
    }
    if compiled is not None:
        out["torch.compile"] = step(compiled, leaves, rest)
    for backend in fused_backends(device):
        out[backend] = step(lambda *a, be=backend: ops.landmark_loss(*a, **CAMERA, backend=be), leaves, rest)
    return out


def _rows(case, times, full, work, full_work):
    rows = []
    for contender, t in times.items():
        note = {"eager full mesh": f"baseline: full mesh, {full_work / 1e9:.1f} GFLOP",
                "eager": "baseline: gathered rows", "torch.compile": "gathered rows, compiled"}.get(
                    contender, f"{work / t / 1e9:.0f} GFLOP/s on {work / 1e6:.1f} MFLOP")
        if contender != "eager full mesh":
            note += f"; {full / t:.0f}x the full mesh"
        rows.append(Row("landmark_loss", case, contender, t * 1e3, note=note))
    return rows


def run(device: torch.device, quick: bool = False, copy_gbps: float = 1.0, seconds: float = 1.5) -> list:
    """Two timings per model. Interleaved: one call of each contender per round (the harness's
    default), so each runs after the others have emptied the caches, as a loss does inside a
    training step; a call this short then pays ~100 us of cold PyTorch machinery (an empty
    autograd.grad goes from 37 to 130 us here after 64 MB of other traffic). Back-to-back: each
    contender's calls in a row (as pytest-benchmark runs them), the steady state of the op itself.
    The full mesh (~30 ms a call, insensitive to either) is timed interleaved only."""
    batch = BATCH["quick" if quick else "full"]
    # dynamic=False: one graph per model size, as a training loop with a fixed model would have.
    compiled = torch.compile(gathered_eager, dynamic=False)
    rows = []
    for name, (vertices, k_id, k_exp) in MODELS.items():
        model = make_model(vertices, k_id, k_exp, device)
        leaves, rest = make_case(model, batch, device)
        steps = contenders(model, leaves, rest, device, compiled)
        times = time_interleaved(steps, device, seconds=seconds)
        case = f"fwd+bwd {name} V={vertices} K={k_id}+{k_exp} N={batch}"
        work, full_work = flops(model, batch), full_mesh_flops(vertices, k_id + k_exp, batch)
        full = times["eager full mesh"]
        rows += finish_rows(_rows(case + ", interleaved", times, full, work, full_work), copy_gbps, "eager",
                            "torch.compile")
        alone = {label: time_interleaved({label: step}, device, seconds=seconds / 2)[label]
                 for label, step in steps.items() if label != "eager full mesh"}
        rows += finish_rows(_rows(case + ", back-to-back", alone, full, work, full_work), copy_gbps, "eager",
                            "torch.compile")
    return rows
