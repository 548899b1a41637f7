"""Which backends the tests run, and on which device."""
import os

import pytest
import torch

from wscswap_fast.ops import available

SHARED_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")



def _backend_param(name):
    marks = [pytest.mark.cuda] if name == "cuda" else []
    return pytest.param(name, marks=marks, id=name)


ALL_BACKENDS = [_backend_param(b) for b in ("reference", "cpu", "triton", "cuda")]


def device_for(backend: str) -> torch.device:
    """The device a backend's tests run on: the GPU where there is one, else the CPU."""
    if backend == "cuda" or (backend == "triton" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def require(backend: str) -> torch.device:
    """Skip when a backend cannot run here for a reason outside the project (no GPU, no triton);
    the cpu backend must always be built, so a missing extension fails its tests instead."""
    why = available()[backend]
    if why is not True and backend in ("cuda", "triton"):
        pytest.skip(f"{backend}: {why}")
    return device_for(backend)


