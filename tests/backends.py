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


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """|a - b| / |b| over the whole tensor, in float64."""
    a, b = a.detach().double(), b.detach().double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def assert_gradients_close(g_fast: dict, g_ref: dict, g_64: dict, min_strict: float) -> None:
    """Fused gradients against the fp32 reference: within 1e-4 where the reference itself is within
    1e-5 of float64 (well conditioned), else within 10x the reference's own rounding; at least
    min_strict of the gradients must be well conditioned."""
    strict = 0
    for name, grad in g_ref.items():
        assert grad is not None and g_fast[name] is not None, f"{name} got no gradient"
        rounding = relative_error(grad, g_64[name])
        if rounding <= 1e-5:
            strict += 1
            assert relative_error(g_fast[name], grad) <= 1e-4, name
        else:
            assert relative_error(g_fast[name], grad) <= max(1e-4, 10 * rounding), (name, rounding)
    assert strict >= min_strict * len(g_ref), f"only {strict}/{len(g_ref)} gradients are well conditioned"
