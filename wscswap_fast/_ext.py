"""Loads the compiled extension once; without it the package runs on the reference backend."""
import warnings

extension = None
extension_error = None

try:
    from . import _C as extension
except Exception as exc:  # ImportError, or an undefined-symbol OSError from a stale build
    extension_error = f"{type(exc).__name__}: {exc}"
    warnings.warn(
        "wscswap_fast._C could not be loaded, so only the 'reference' (and 'triton') backends are available "
        f"({extension_error}). Build it with `pip install --no-build-isolation -e .`.",
        RuntimeWarning,
        stacklevel=2,
    )
