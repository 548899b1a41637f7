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


def conditioned_error(got: torch.Tensor, want: torch.Tensor, magnitude: torch.Tensor) -> float:
    """|got - want| / |magnitude| in float64, magnitude being the result computed on the terms'
    absolute values: the error of a sum relative to the size of its terms (its conditioning)."""
    d = got.detach().double() - want.detach().double()
    return (d.norm() / magnitude.detach().double().norm().clamp_min(1e-30)).item()


def assert_gradients_close(g_fast: dict, g_ref: dict, g_64: dict, min_strict: float) -> None:
    """Fused gradients against the fp32 reference, each judged by how well conditioned it is:
    within 1e-4 of the reference where the reference itself is within 1e-5 of float64, else
    within 10x the reference's own error or 3x the model's median fp32 error (a model whose fp32
    gradients are ~1e-3 off float64 moves any one of them by that much under a change of
    rounding: a Winograd convolution upstream rounds ~5x more than a direct one, and a few
    activations near LeakyReLU's kink switch sides). On the whole set, the fused gradients'
    median error against float64 is at most 2x the reference's. A mask projection's bias
    gradient is one sum whose terms cancel (tests/ops/test_ain.py): 1e-3 at least there. At
    least min_strict of the gradients must be well conditioned."""
    import statistics

    ref_errors = {n: relative_error(g, g_64[n]) for n, g in g_ref.items()}
    median_ref = statistics.median(ref_errors.values())
    strict = 0
    for name, grad in g_ref.items():
        assert grad is not None and g_fast[name] is not None, f"{name} got no gradient"
        rounding = ref_errors[name]
        floor = 1e-3 if name.endswith("mask.bias") else 1e-4
        if rounding <= 1e-5:
            strict += 1
            assert relative_error(g_fast[name], grad) <= max(floor, 3 * median_ref), name
        else:
            assert relative_error(g_fast[name], grad) <= max(floor, 10 * rounding, 3 * median_ref), (name, rounding)
    median_fast = statistics.median(relative_error(g_fast[n], g_64[n]) for n in g_ref)
    assert median_fast <= 2 * median_ref + 1e-6, (median_fast, median_ref)
    assert strict >= min_strict * len(g_ref), f"only {strict}/{len(g_ref)} gradients are well conditioned"
