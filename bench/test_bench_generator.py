"""pytest bench/ --benchmark-only -k generator: generator inference (batch 8, 128^2 and 256^2),
each contender in one group per resolution and device."""
import pytest
import torch

from wscswap_fast import ops
from wscswap_fast.benchmarks.generator import CASES, _infer, _inputs, build

CONTENDERS = ["reference", "torch.compile", "torch.compile (plain)", "cpu", "cuda", "triton"]


@pytest.mark.parametrize("contender", CONTENDERS)
@pytest.mark.parametrize("case", CASES["full"], ids=lambda c: f"{c[0]}px-b{c[1]}-w{c[2]:g}")
def test_generator_inference(benchmark, device, sync, contender, case):
    if contender in ops.BACKENDS and ops.available()[contender] is not True:
        pytest.skip(f"{contender}: {ops.available()[contender]}")
    if contender in ("cuda", "triton") and device.type != "cuda" or contender == "cpu" and device.type != "cpu":
        pytest.skip(f"{contender} does not run on {device}")
    res, batch, width = case
    if contender == "torch.compile":
        model = torch.compile(build(res, width, "reference", device))
    elif contender == "torch.compile (plain)":
        model = torch.compile(build(res, width, "plain", device))
    else:
        model = build(res, width, contender, device)
    step = _infer(model, _inputs(res, batch, device))
    benchmark.group = f"generator inference {res}x{res} batch {batch} {device}"
    benchmark.extra_info["faces_per_call"] = batch
    benchmark.pedantic(lambda: (step(), sync()), warmup_rounds=2, rounds=10)
