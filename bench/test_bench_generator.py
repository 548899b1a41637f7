"""pytest bench/ --benchmark-only -k generator: generator inference (batch 8, 128^2 and 256^2),
each contender in one group per resolution and device."""
import pytest
import torch

from wscswap_fast.benchmarks.generator import CASES, _infer, _inputs, build

CONTENDERS = ["reference", "torch.compile", "torch.compile (plain)", "cpu", "cuda", "triton",
              "torch.compile (cpu)", "torch.compile (cuda)", "torch.compile (triton)"]


@pytest.mark.parametrize("contender", CONTENDERS)
@pytest.mark.parametrize("case", CASES["full"], ids=lambda c: f"{c[0]}px-b{c[1]}-w{c[2]:g}")
def test_generator_inference(benchmark, device, sync, skip_unless_native, contender, case):
    compiled = contender.startswith("torch.compile")
    backend = {"torch.compile": "reference"}.get(contender, contender.removeprefix("torch.compile (").rstrip(")"))
    skip_unless_native(backend, device)
    res, batch, width = case
    model = build(res, width, backend, device)
    if compiled:
        model = torch.compile(model)
    step = _infer(model, _inputs(res, batch, device))
    benchmark.group = f"generator inference {res}x{res} batch {batch} {device}"
    benchmark.extra_info["faces_per_call"] = batch
    benchmark.pedantic(lambda: (step(), sync()), warmup_rounds=2, rounds=10)
