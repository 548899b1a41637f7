"""blend forward+backward: every available backend against eager PyTorch and torch.compile.

Minimal bytes of forward+backward (s = element size, P = N*H*W pixels, E = N*C*H*W elements):
forward reads F, B, M and writes Y: (3E + P)*s; backward reads dY, F, B, M and writes dF, dB,
dM: (5E + 2P)*s. Total (8E + 3P)*s.
"""
import torch

from .. import ops
from ..ops.blend import reference
from .harness import Row, finish_rows, fused_backends, time_interleaved

SHAPES = {"full": [(16, 3, 256, 256)], "quick": [(2, 3, 32, 32)]}


def minimal_bytes(shape, dtype) -> int:
    n, c, h, w = shape
    return (8 * n * c * h * w + 3 * n * h * w) * torch.empty((), dtype=dtype).element_size()


def _inputs(shape, dtype, device):
    n, c, h, w = shape
    face = torch.randn(shape, device=device, dtype=dtype, requires_grad=True)
    bg = torch.randn(shape, device=device, dtype=dtype, requires_grad=True)
    mask = torch.rand((n, 1, h, w), device=device, dtype=dtype, requires_grad=True)
    grad = torch.randn(shape, device=device, dtype=dtype)
    return face, bg, mask, grad


def _step(fn, face, bg, mask, grad):
    def run():
        return torch.autograd.grad(fn(face, bg, mask), (face, bg, mask), grad)

    return run


def run(device: torch.device, quick: bool = False, copy_gbps: float = 1.0, seconds: float = 1.5) -> list:
    dtypes = [torch.float32] + ([torch.bfloat16] if device.type == "cuda" else [])
    compiled = torch.compile(reference)
    rows = []
    for shape in SHAPES["quick" if quick else "full"]:
        for dtype in dtypes:
            face, bg, mask, grad = _inputs(shape, dtype, device)
            contenders = {"eager": _step(reference, face, bg, mask, grad),
                          "torch.compile": _step(compiled, face, bg, mask, grad)}
            for backend in fused_backends(device):
                contenders[backend] = _step(lambda f, b, m, be=backend: ops.blend(f, b, m, backend=be), face, bg, mask, grad)
            times = time_interleaved(contenders, device, seconds=seconds)
            case = f"fwd+bwd {tuple(shape)} {str(dtype).replace('torch.', '')}"
            case_rows = [Row("blend", case, name, t * 1e3, bytes=minimal_bytes(shape, dtype)) for name, t in times.items()]
            rows += finish_rows(case_rows, copy_gbps, "eager", "torch.compile")
    return rows
