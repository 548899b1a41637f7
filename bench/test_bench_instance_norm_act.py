"""pytest bench/ --benchmark-only -k instance_norm_act: the PatchGAN's instance norm + LeakyReLU,
forward and forward+backward, channels_last, against eager PyTorch and torch.compile."""
import pytest
import torch

from wscswap_fast import ops
from wscswap_fast.benchmarks.instance_norm_act import SHAPES, minimal_bytes
from wscswap_fast.ops.instance_norm_act import reference

CONTENDERS = ["eager", "torch.compile", "cpu", "cuda", "triton"]


@pytest.mark.parametrize("backward", [False, True], ids=["fwd", "fwd+bwd"])
@pytest.mark.parametrize("contender", CONTENDERS)
@pytest.mark.parametrize("shape", SHAPES["full"], ids=str)
def test_instance_norm_act(benchmark, device, sync, skip_unless_native, contender, shape, backward):
    skip_unless_native(contender, device)
    fn = {"eager": reference, "torch.compile": torch.compile(reference)}.get(
        contender, lambda t: ops.instance_norm_act(t, backend=contender))
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    x = torch.randn(shape, device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
    x.requires_grad_(backward)
    grad = torch.randn_like(x)
    step = (lambda: torch.autograd.grad(fn(x), x, grad)) if backward else (lambda: fn(x))
    benchmark.group = f"instance_norm_act {'fwd+bwd' if backward else 'fwd'} {shape} {dtype} {device}"
    benchmark.extra_info["bytes"] = minimal_bytes(shape, dtype, backward)
    with torch.set_grad_enabled(backward):
        benchmark.pedantic(lambda: (step(), sync()), warmup_rounds=2, rounds=10)
