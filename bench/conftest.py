import pytest
import torch

from wscswap_fast.benchmarks.harness import tune_cpu_allocator

# The same allocator setting as `wscswap bench`, for every contender alike.
tune_cpu_allocator()


def pytest_generate_tests(metafunc):
    if "device" in metafunc.fixturenames:
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
        metafunc.parametrize("device", [torch.device(d) for d in devices], ids=devices)


@pytest.fixture
def sync(device):
    return (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
