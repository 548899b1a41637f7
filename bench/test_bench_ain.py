"""pytest bench/ --benchmark-only -k ain: ain forward and forward+backward at the decoder's shapes."""
import pytest
import torch

from wscswap_fast import ops
from wscswap_fast.benchmarks.ain import SHAPES, _eager, _inputs, minimal_bytes

CONTENDERS = ["eager", "torch.compile", "cpu", "cuda", "triton"]


@pytest.mark.parametrize("backward", [False, True], ids=["fwd", "fwd+bwd"])
@pytest.mark.parametrize("contender", CONTENDERS)
@pytest.mark.parametrize("shape", SHAPES["full"], ids=str)
def test_ain(benchmark, device, sync, skip_unless_native, contender, shape, backward):
    skip_unless_native(contender, device)
    fn = {"eager": _eager, "torch.compile": torch.compile(_eager)}.get(
        contender, lambda *a: ops.ain(*a, backend=contender))
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    args = _inputs(shape, dtype, device, backward)
    grad = torch.randn(shape, device=device, dtype=dtype)
    step = (lambda: torch.autograd.grad(fn(*args), args, grad)) if backward else (lambda: fn(*args))
    benchmark.group = f"ain {'fwd+bwd' if backward else 'fwd'} {shape} {dtype} {device}"
    benchmark.extra_info["bytes"] = minimal_bytes(shape, dtype, backward)
    with torch.set_grad_enabled(backward):
        benchmark.pedantic(lambda: (step(), sync()), warmup_rounds=2, rounds=10)
