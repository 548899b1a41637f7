"""pytest bench/ --benchmark-only -k blend: blend forward+backward, each contender in one group."""
import pytest
import torch

from wscswap_fast import ops
from wscswap_fast.benchmarks.blend import SHAPES, _inputs, _step, minimal_bytes
from wscswap_fast.ops.blend import reference

CONTENDERS = ["eager", "torch.compile", "cpu", "cuda", "triton"]


@pytest.mark.parametrize("contender", CONTENDERS)
@pytest.mark.parametrize("shape", SHAPES["full"], ids=str)
def test_blend_forward_backward(benchmark, device, sync, skip_unless_native, contender, shape):
    skip_unless_native(contender, device)
    fn = {"eager": reference, "torch.compile": torch.compile(reference)}.get(
        contender, lambda f, b, m: ops.blend(f, b, m, backend=contender))
    step = _step(fn, *_inputs(shape, torch.float32, device))
    benchmark.group = f"blend fwd+bwd {shape} {device}"
    benchmark.extra_info["bytes"] = minimal_bytes(shape, torch.float32)
    benchmark.pedantic(lambda: (step(), sync()), warmup_rounds=3, rounds=30)
