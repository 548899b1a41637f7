"""pytest bench/ --benchmark-only -k landmark_loss: landmark_loss forward+backward at batch 64 on the
SFM-sized and BFM-sized synthetic models of benchmarks/landmark_loss.py, each contender in one group."""
import pytest
import torch

from wscswap_fast.benchmarks.landmark_loss import BATCH, MODELS, contenders, flops, gathered_eager, make_case, make_model

CONTENDERS = ["eager full mesh", "eager", "torch.compile", "cpu", "cuda", "triton"]
_COMPILED = torch.compile(gathered_eager, dynamic=False)


@pytest.mark.parametrize("contender", CONTENDERS)
@pytest.mark.parametrize("model_name", list(MODELS))
def test_landmark_loss_forward_backward(benchmark, device, sync, skip_unless_native, contender, model_name):
    skip_unless_native(contender, device)
    model = make_model(*MODELS[model_name], device)
    leaves, rest = make_case(model, BATCH["full"], device)
    step = contenders(model, leaves, rest, device, _COMPILED)[contender]
    benchmark.group = f"landmark_loss fwd+bwd {model_name} N={BATCH['full']} {device}"
    benchmark.extra_info["flops"] = flops(model, BATCH["full"])
    slow = contender == "eager full mesh"
    benchmark.pedantic(lambda: (step(), sync()), warmup_rounds=2 if slow else 10, rounds=20 if slow else 200)
