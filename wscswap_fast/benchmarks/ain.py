"""ain forward, and forward+backward, at the decoder's shapes: every available backend against
eager PyTorch (the plain reference) and torch.compile of it.

Minimal bytes (E = N*C*H*W elements of size s; the small per-(n, c) tensors counted too):
forward reads h, gamma_att, beta_att and writes out: (4E + 2NC + C + 1) * s; backward reads
dout, h, gamma_att, beta_att and writes dh, dgamma_att, dbeta_att: 7E * s plus the small
gradients. The kernels move more (cpu: 5E forward, 10E backward; see ops/ain.py).
"""
import torch

from .. import ops
from ..ops.ain import reference
from .harness import Row, finish_rows, fused_backends, time_interleaved

SHAPES = {"full": [(8, 512, 16, 16), (8, 256, 64, 64), (8, 64, 256, 256)], "quick": [(2, 16, 8, 8)]}


def minimal_bytes(shape, dtype, backward: bool) -> int:
    n, c, h, w = shape
    e, s = n * c * h * w, torch.empty((), dtype=dtype).element_size()
    small = 2 * n * c + c + 1
    return (4 * e + small) * s + ((7 * e + small) * s if backward else 0)


def _inputs(shape, dtype, device, requires_grad):
    n, c, h, w = shape
    make = lambda *size: torch.randn(size, device=device, dtype=dtype)  # noqa: E731
    args = [make(*shape), make(n, c) + 1, make(n, c), make(*shape) + 1, make(*shape), make(c) / c ** 0.5, make(1)]
    return [a.requires_grad_(requires_grad) for a in args]


def _eager(*args):
    return reference(*args)[0]


def run(device: torch.device, quick: bool = False, copy_gbps: float = 1.0, seconds: float = 1.5) -> list:
    dtypes = [torch.float32] + ([torch.bfloat16] if device.type == "cuda" else [])
    compiled = torch.compile(_eager)
    backends = fused_backends(device)
    rows = []
    for shape in SHAPES["quick" if quick else "full"]:
        for dtype in dtypes:
            for backward in (False, True):
                args = _inputs(shape, dtype, device, backward)
                grad = torch.randn(shape, device=device, dtype=dtype)

                def step(fn):
                    if backward:
                        return lambda: torch.autograd.grad(fn(*args), args, grad)
                    return lambda: fn(*args)

                contenders = {"eager": step(_eager), "torch.compile": step(compiled)}
                for b in backends:
                    contenders[b] = step(lambda *a, be=b: ops.ain(*a, backend=be))
                with torch.set_grad_enabled(backward):
                    times = time_interleaved(contenders, device, seconds=seconds, warmup=2)
                case = f"{'fwd+bwd' if backward else 'fwd'} {tuple(shape)} {str(dtype).replace('torch.', '')}"
                nbytes = minimal_bytes(shape, dtype, backward)
                case_rows = [Row("ain", case, name, t * 1e3, bytes=nbytes) for name, t in times.items()]
                rows += finish_rows(case_rows, copy_gbps, "eager", "torch.compile")
    return rows
