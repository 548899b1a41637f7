"""wscswap_fast: WSC-swap face swapping accelerated by fused C++/CUDA/Triton kernels.

The fused ops live in :mod:`wscswap_fast.ops`; each has a plain-PyTorch reference backend, so the
package works (slowly) even when the compiled extension ``wscswap_fast._C`` is missing.
"""
from . import ops
from ._ext import extension, extension_error

__version__ = "0.1.0"
__all__ = ["ops", "extension", "extension_error", "__version__"]
