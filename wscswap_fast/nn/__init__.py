"""Layers built on the fused ops."""
from .ain import AIN

__all__ = ["AIN"]
