import pytest
import torch

from wscswap_fast import ops
from wscswap_fast.benchmarks.harness import fused_backends, tune_cpu_allocator

# The same allocator setting as `wscswap bench`, for every contender alike.
tune_cpu_allocator()


def pytest_generate_tests(metafunc):
    if "device" in metafunc.fixturenames:
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
        metafunc.parametrize("device", [torch.device(d) for d in devices], ids=devices)


@pytest.fixture
def sync(device):
    return (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)


@pytest.fixture
def skip_unless_native():
    """skip_unless_native(contender, device): skips a fused backend that cannot run natively on
    device here (harness.fused_backends: the same contenders as `wscswap bench`); other
    contenders (eager, torch.compile, the reference backend) always run."""
    def check(contender, device):
        if contender in ops.BACKENDS and contender != "reference" and contender not in fused_backends(device):
            why = ops.available()[contender]
            pytest.skip(f"{contender} does not run on {device} here" + ("" if why is True else f": {why}"))
    return check
