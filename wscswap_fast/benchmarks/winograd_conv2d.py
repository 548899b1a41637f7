"""winograd_conv2d forward, and forward+backward, at the training step's convolution shapes:
every available backend against eager F.conv2d (oneDNN on the CPU, cuDNN on a GPU) and
torch.compile of it.

Convolutions are compute-bound, so the note column gives the rate in direct-equivalent GFLOP/s
(2*N*K*C*r*r*Ho*Wo per forward, twice that for the two backward products) and its share of this
machine's measured sgemm rate: Winograd does fewer multiplies than that count (1/4 for 3x3, 1/5
for 4x4), so a Winograd row can pass 100%.
"""
import torch
import torch.nn.functional as F

from .. import ops
from ..ops.winograd_conv2d import output_size
from .harness import Row, finish_rows, fused_backends, time_interleaved

LEGEND = ("winograd_conv2d: vs eager = F.conv2d; note = direct-equivalent GFLOP/s and its share of the measured sgemm "
          "rate (Winograd multiplies less, so it can pass 100%)")

# (label, (N, C, H, W), K, r, padding, stride)
SHAPES = {
    "full": [
        ("PatchGAN 256->512 4x4", (8, 256, 32, 32), 512, 4, 1, 1),
        ("PatchGAN 64->128 4x4/2", (8, 64, 128, 128), 128, 4, 1, 2),
        ("generator 3x3 @32^2", (4, 128, 32, 32), 128, 3, 1, 1),
        ("ArcFace 3x3 @14^2", (4, 256, 14, 14), 256, 3, 1, 1),
        ("ArcFace 3x3 @56^2", (4, 64, 56, 56), 64, 3, 1, 1),
    ],
    "quick": [("3x3", (2, 16, 12, 12), 16, 3, 1, 1), ("4x4/2", (2, 8, 16, 16), 8, 4, 1, 2)],
}


def direct_flops(shape, k: int, r: int, padding: int, stride: int) -> float:
    n, c, h, w = shape
    return 2.0 * n * k * c * r * r * output_size(h, r, padding, stride) * output_size(w, r, padding, stride)


def sgemm_gflops(device: torch.device) -> float:
    """The machine's fp32 GEMM rate, GFLOP/s (2048^3, median of a few)."""
    a = torch.randn(2048, 2048, device=device)
    t = time_interleaved({"mm": lambda: a @ a}, device, seconds=0.5, warmup=2, max_reps=10)["mm"]
    return 2 * 2048 ** 3 / t / 1e9


def run(device: torch.device, quick: bool = False, copy_gbps: float = 1.0, seconds: float = 1.5) -> list:
    backends = fused_backends(device)
    peak = sgemm_gflops(device)
    rows = []
    for label, shape, k, r, padding, stride in SHAPES["quick" if quick else "full"]:
        x = torch.randn(shape, device=device).contiguous(memory_format=torch.channels_last)
        w = torch.randn(k, shape[1], r, r, device=device) * (shape[1] * r * r) ** -0.5
        b = torch.randn(k, device=device)

        def eager(x, w, b):
            return F.conv2d(x, w, b, stride=stride, padding=padding)

        compiled = torch.compile(eager)
        fns = {"eager": eager, "torch.compile": compiled}
        for be in backends:
            fns[be] = lambda x, w, b, be=be: ops.winograd_conv2d(x, w, b, padding, stride, backend=be)
        for backward in (False, True):
            args = [t.detach().requires_grad_(backward) for t in (x, w, b)]
            grad = torch.randn_like(eager(x, w, b))

            def step(fn):
                if backward:
                    return lambda: torch.autograd.grad(fn(*args), args, grad)
                return lambda: fn(*args)

            with torch.set_grad_enabled(backward):
                times = time_interleaved({name: step(fn) for name, fn in fns.items()}, device, seconds=seconds,
                                         warmup=2)
            flops = direct_flops(shape, k, r, padding, stride) * (3 if backward else 1)
            case = f"{'fwd+bwd' if backward else 'fwd'} {label} {tuple(shape)}->{k}"
            case_rows = []
            for name, t in times.items():
                rate = flops / t / 1e9
                case_rows.append(Row("winograd_conv2d", case, name, t * 1e3,
                                     note=f"{rate:.0f} GFLOP/s = {100 * rate / peak:.0f}% of sgemm {peak:.0f}"))
            rows += finish_rows(case_rows, copy_gbps, "eager", "torch.compile")
    return rows
