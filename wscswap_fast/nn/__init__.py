"""Layers built on the fused ops."""
from .ain import AIN
from .conv import Conv2d, set_backend

__all__ = ["AIN", "Conv2d", "set_backend"]
