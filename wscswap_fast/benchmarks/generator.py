"""Generator inference (forward, no grad), faces/s at 128^2 and 256^2, batch 8: the model on each
fused backend against the same model on backend='reference' (the ops' plain-PyTorch definitions
behind the custom ops), torch.compile of that reference-backend model (the custom ops stay
opaque to it), torch.compile of the 'plain' model (no custom ops: Inductor may fuse through
AIN and the blend itself), and torch.compile of each fused-backend model. Quick mode (a smoke test: width 0.125, 64^2, batch 2) leaves
out the two torch.compile contenders, whose compile takes 20-40 s even for a tiny model.

GFLOPs per face are in the model (python -m wscswap_fast.models.generator); this suite reports
time per batch and faces/s; no byte floor (the convs make it compute-bound).
"""
import torch
import torch.nn.functional as F

from ..models.generator import Generator, GeneratorConfig
from .harness import Row, finish_rows, fused_backends, time_interleaved

LEGEND = "generator: vs eager = the model on the reference backend; faces/s in the note column"

CASES = {"full": [(128, 8, 1.0), (256, 8, 1.0)], "quick": [(64, 2, 0.125)]}  # resolution, batch, width


def _inputs(res: int, batch: int, device, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    xt = torch.rand(batch, 3, res, res, generator=g)
    mt = torch.rand(batch, 1, res, res, generator=g)
    z = F.normalize(torch.randn(batch, 512, generator=g), dim=1)
    return xt.to(device), mt.to(device), z.to(device)


def build(res: int, width: float, backend: str, device, seed: int = 0) -> Generator:
    torch.manual_seed(seed)
    return Generator(GeneratorConfig.for_resolution(res, width)).to(device).eval().set_backend(backend)


def _infer(model, inputs):
    def run():
        with torch.inference_mode():
            return model(*inputs).result

    return run


def contenders(res: int, batch: int, width: float, device, compiled: bool = True) -> dict:
    """Name -> callable running one batch, every model sharing the same weights."""
    inputs = _inputs(res, batch, device)
    ref = build(res, width, "reference", device)
    out = {"reference": _infer(ref, inputs)}
    if compiled:
        out["torch.compile"] = _infer(torch.compile(ref), inputs)
        out["torch.compile (plain)"] = _infer(torch.compile(build(res, width, "plain", device)), inputs)
    for backend in fused_backends(device):
        model = build(res, width, backend, device)
        out[backend] = _infer(model, inputs)
        if compiled:  # Inductor fuses the rest of the graph around the fused ops
            out[f"torch.compile ({backend})"] = _infer(torch.compile(model), inputs)
    return out


def run(device: torch.device, quick: bool = False, copy_gbps: float = 1.0, seconds: float = 1.5) -> list:
    rows = []
    for res, batch, width in CASES["quick" if quick else "full"]:
        times = time_interleaved(contenders(res, batch, width, device, compiled=not quick), device, seconds=seconds,
                                 warmup=2, max_reps=50)
        case = f"inference {res}x{res} batch {batch} width {width:g} fp32"
        case_rows = [Row("generator", case, name, t * 1e3, note=f"{batch / t:.1f} faces/s") for name, t in times.items()]
        rows += finish_rows(case_rows, copy_gbps, "reference", "torch.compile")
    return rows
