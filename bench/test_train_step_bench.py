"""pytest bench/ --benchmark-only -k train_step: one training step (G, D and adversary, forward
and backward) at 256^2 batch 4, fused backend vs reference backend vs torch.compile, with and
without the frozen encoders (see wscswap_fast/benchmarks/train_step.py)."""
import pytest

from wscswap_fast.benchmarks.train_step import SETTINGS, make_batch, make_trainer, peak_memory, step_fn

CL = "channels_last"
# (name, backend, compiled, memory format)
CONTENDERS = [("reference", "reference", False, CL), ("reference NCHW", "reference", False, "contiguous"),
              ("torch.compile", "reference", True, CL), ("cpu", "cpu", False, CL), ("cpu+compile", "cpu", True, CL),
              ("cuda", "cuda", False, CL), ("cuda+compile", "cuda", True, CL)]


@pytest.mark.parametrize("encoders", [True, False], ids=["full step", "G+D step"])
@pytest.mark.parametrize("contender", CONTENDERS, ids=[c[0] for c in CONTENDERS])
def test_train_step(benchmark, device, sync, skip_unless_native, contender, encoders):
    name, backend, compiled, memory_format = contender
    skip_unless_native(backend, device)
    setting = SETTINGS["full"]
    trainer = make_trainer(setting, backend, device, compiled, memory_format)
    step = step_fn(trainer, make_batch(setting, device), encoders)
    benchmark.group = f"train_step {'full' if encoders else 'G+D'} {setting['resolution']}^2 batch {setting['batch']} {device}"
    if not compiled:
        benchmark.extra_info.update(peak_memory("full", backend, device, encoders, memory_format) or {})
    benchmark.pedantic(lambda: (step(), sync()), warmup_rounds=3, rounds=5)
