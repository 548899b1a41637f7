"""The benchmark picks, per device, only backends that run natively there."""
import torch

from wscswap_fast import ops
from wscswap_fast.benchmarks.harness import fused_backends


def test_fused_backends_serve_their_device():
    assert fused_backends(torch.device("cpu")) == ["cpu"]  # never the Triton interpreter
    on_gpu = fused_backends(torch.device("cuda"))
    assert "cpu" not in on_gpu and "reference" not in on_gpu
    assert set(on_gpu) == {b for b in ("cuda", "triton") if ops.available()[b] is True}
