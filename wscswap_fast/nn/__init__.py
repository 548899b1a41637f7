"""Layers built on the fused ops."""
from .ain import AIN
from .backend import set_backend
from .conv import Conv2d
from .instance_norm_act import InstanceNormLeakyReLU

__all__ = ["AIN", "Conv2d", "InstanceNormLeakyReLU", "set_backend"]
