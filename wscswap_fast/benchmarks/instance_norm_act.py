"""instance_norm_act forward, and forward+backward, at the PatchGAN's shapes (batch 8: the real
and the generated images of a step): every available backend against eager
InstanceNorm2d + LeakyReLU and torch.compile of it.

Minimal bytes (E = N*C*H*W elements of size s): forward reads x and writes y, 2E * s; backward
reads dy and x and writes dx, 3E * s (the kernels move 3E and 5E: the statistics and the plane
sums of the gradient take one more read each; see ops/instance_norm_act.py).
"""
import torch

from .. import ops
from ..ops.instance_norm_act import reference
from .harness import Row, finish_rows, fused_backends, time_interleaved

SHAPES = {"full": [(8, 128, 64, 64), (8, 256, 32, 32), (8, 512, 31, 31)], "quick": [(2, 16, 8, 8)]}


def minimal_bytes(shape, dtype, backward: bool) -> int:
    n, c, h, w = shape
    e, s = n * c * h * w, torch.empty((), dtype=dtype).element_size()
    return 2 * e * s + (3 * e * s if backward else 0)


def run(device: torch.device, quick: bool = False, copy_gbps: float = 1.0, seconds: float = 1.5) -> list:
    dtypes = [torch.float32] + ([torch.bfloat16] if device.type == "cuda" else [])
    compiled = torch.compile(reference)
    backends = fused_backends(device)
    rows = []
    for shape in SHAPES["quick" if quick else "full"]:
        for dtype in dtypes:
            x0 = torch.randn(shape, device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
            grad = torch.randn_like(x0)
            for backward in (False, True):
                x = x0.detach().requires_grad_(backward)

                def step(fn):
                    if backward:
                        return lambda: torch.autograd.grad(fn(x), x, grad)
                    return lambda: fn(x)

                contenders = {"eager": step(reference), "torch.compile": step(compiled)}
                for b in backends:
                    contenders[b] = step(lambda t, be=b: ops.instance_norm_act(t, backend=be))
                with torch.set_grad_enabled(backward):
                    times = time_interleaved(contenders, device, seconds=seconds, warmup=2)
                case = (f"{'fwd+bwd' if backward else 'fwd'} {tuple(shape)} channels_last "
                        f"{str(dtype).replace('torch.', '')}")
                nbytes = minimal_bytes(shape, dtype, backward)
                case_rows = [Row("instance_norm_act", case, name, t * 1e3, bytes=nbytes) for name, t in times.items()]
                rows += finish_rows(case_rows, copy_gbps, "eager", "torch.compile")
    return rows
