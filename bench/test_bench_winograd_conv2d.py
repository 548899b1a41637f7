"""pytest bench/ --benchmark-only -k winograd: winograd_conv2d forward and forward+backward at the
training step's convolution shapes, against F.conv2d and torch.compile of it."""
import pytest
import torch
import torch.nn.functional as F

from wscswap_fast import ops
from wscswap_fast.benchmarks.winograd_conv2d import SHAPES, direct_flops

CONTENDERS = ["eager", "torch.compile", "cpu", "cuda", "triton"]


@pytest.mark.parametrize("backward", [False, True], ids=["fwd", "fwd+bwd"])
@pytest.mark.parametrize("contender", CONTENDERS)
@pytest.mark.parametrize("case", SHAPES["full"], ids=lambda c: c[0])
def test_winograd_conv2d(benchmark, device, sync, skip_unless_native, contender, case, backward):
    skip_unless_native(contender, device)
    label, shape, k, r, padding, stride = case

    def eager(x, w, b):
        return F.conv2d(x, w, b, stride=stride, padding=padding)

    fn = {"eager": eager, "torch.compile": torch.compile(eager)}.get(
        contender, lambda x, w, b: ops.winograd_conv2d(x, w, b, padding, stride, backend=contender))
    x = torch.randn(shape, device=device).contiguous(memory_format=torch.channels_last).requires_grad_(backward)
    w = (torch.randn(k, shape[1], r, r, device=device) * (shape[1] * r * r) ** -0.5).requires_grad_(backward)
    b = torch.randn(k, device=device).requires_grad_(backward)
    grad = torch.randn_like(eager(x, w, b))
    step = (lambda: torch.autograd.grad(fn(x, w, b), (x, w, b), grad)) if backward else (lambda: fn(x, w, b))
    benchmark.group = f"winograd_conv2d {'fwd+bwd' if backward else 'fwd'} {label} {device}"
    benchmark.extra_info["direct_flops"] = direct_flops(shape, k, r, padding, stride) * (3 if backward else 1)
    with torch.set_grad_enabled(backward):
        benchmark.pedantic(lambda: (step(), sync()), warmup_rounds=2, rounds=10)
