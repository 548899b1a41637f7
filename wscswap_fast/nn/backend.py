"""set_backend: the backend of every fused layer of a model (Conv2d, InstanceNormLeakyReLU)."""
from torch import nn

from ..ops import BACKENDS
from .conv import Conv2d
from .instance_norm_act import InstanceNormLeakyReLU

LAYERS = (Conv2d, InstanceNormLeakyReLU)


def set_backend(module: nn.Module, name: str) -> nn.Module:
    """Set the backend of every Conv2d and InstanceNormLeakyReLU in `module` ('auto', 'cuda',
    'triton', 'cpu', 'reference' or 'plain'); returns the module."""
    choices = BACKENDS + ("auto", "plain")
    if name not in choices:
        raise ValueError(f"backend must be one of {choices}, got {name!r}")
    for m in module.modules():
        if isinstance(m, LAYERS):
            m.backend = name
    return module
