import os

import pytest
import torch

# Triton kernels run on the CPU through the interpreter; it must be on before triton is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from .backends import SHARED_DATA  # noqa: E402

# The tests hold fp32 results to 1e-4 of each other and of float64: TF32 convolutions and
# matmuls (cuDNN's default on Ampere and later) round to 10 mantissa bits.
torch.backends.cudnn.allow_tf32 = False
torch.backends.cuda.matmul.allow_tf32 = False


@pytest.fixture
def shared_data():
    if not os.path.isdir(SHARED_DATA):
        pytest.skip("../shared/data is not beside this checkout")
    return SHARED_DATA
