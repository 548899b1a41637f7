"""Backend selection shared by every op.

Backends: 'cuda' (our CUDA kernels), 'triton', 'cpu' (our C++ kernels) and 'reference' (plain
PyTorch). A call picks one with ``backend=`` or the WSCSWAP_BACKEND environment variable; 'auto'
(the default) takes the fastest one that can serve the inputs' device and dtype. An explicit
backend that cannot serve a call raises BackendUnavailable with every reason, never falls back.
"""
import contextlib
import functools
import importlib.util
import os

import torch

from .._ext import extension, extension_error

BACKENDS = ("cuda", "triton", "cpu", "reference")
# 'auto' preference per device type. Triton on the CPU is its interpreter: correct, never fast.
AUTO_ORDER = {"cuda": ("cuda", "triton", "reference"), "cpu": ("cpu", "reference")}


class BackendUnavailable(RuntimeError):
    """An explicitly requested backend cannot serve the call; the message says why."""


def triton_interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@functools.lru_cache(maxsize=None)
def _triton_installed():
    return importlib.util.find_spec("triton") is not None


def _unavailable_reason(backend: str):
    """Why a backend can serve nothing on this machine, or None when it is usable."""
    if backend == "reference":
        return None
    if backend == "cpu":
        return None if extension is not None else f"the extension wscswap_fast._C is not built or failed to load ({extension_error})"
    if backend == "cuda":
        if extension is None:
            return f"the extension wscswap_fast._C is not built or failed to load ({extension_error})"
        if not extension.with_cuda:
            return "wscswap_fast._C was built without CUDA (CPU-only torch, no nvcc, or WSCSWAP_NO_CUDA=1)"
        if not torch.cuda.is_available():
            return "no CUDA GPU is available"
        return None
    if backend == "triton":
        if not _triton_installed():
            return "the triton package is not installed (pip install triton)"
        if not torch.cuda.is_available() and not triton_interpret():
            return "no CUDA GPU is available (set TRITON_INTERPRET=1 to run Triton kernels on the CPU)"
        return None
    raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS + ('auto',)}")


def available():
    """Per backend, True or the reason it is unavailable on this machine."""
    return {b: _unavailable_reason(b) or True for b in BACKENDS}


def requested_backend(backend: str) -> str:
    """The backend a call asked for: the argument, else WSCSWAP_BACKEND, else 'auto'."""
    if backend is None or backend == "auto":
        backend = os.environ.get("WSCSWAP_BACKEND", "auto") or "auto"
    if not isinstance(backend, str) or backend not in BACKENDS + ("auto",):
        raise ValueError(f"backend must be one of {BACKENDS + ('auto',)}, got {backend!r}")
    return backend


def _serve_reasons(backend: str, device: torch.device, dtypes, supported) -> list:
    """Every reason a backend cannot serve a call; empty when it can."""
    reasons = []
    why = _unavailable_reason(backend)
    if why:
        reasons.append(why)
    devices = {"cuda": ("cuda",), "cpu": ("cpu",), "reference": ("cpu", "cuda"),
               "triton": ("cuda", "cpu") if triton_interpret() else ("cuda",)}[backend]
    if device.type not in devices:
        hint = " (set TRITON_INTERPRET=1 to interpret Triton kernels on the CPU)" if backend == "triton" else ""
        reasons.append(f"inputs are on {device.type}, which it does not serve{hint}")
    ok = supported.get(backend, supported.get("*"))
    for name, dt in dtypes.items():
        if dt not in ok:
            reasons.append(f"{name} dtype {dt} is not supported (supported: {', '.join(str(d) for d in ok)})")
    return reasons


def resolve(op: str, backend: str, device: torch.device, dtypes: dict, supported: dict) -> str:
    """The backend that runs this call.

    dtypes maps argument names to the dtypes a backend must handle; supported maps backend
    names (or '*' for all others) to the set of dtypes each can handle.
    """
    backend = requested_backend(backend)
    if backend != "auto":
        why = _serve_reasons(backend, device, dtypes, supported)
        if why:
            raise BackendUnavailable(f"{op}: backend {backend!r} cannot serve this call: " + "; ".join(why))
        return backend
    reasons = []
    for candidate in AUTO_ORDER.get(device.type, ("reference",)):
        why = _serve_reasons(candidate, device, dtypes, supported)
        if not why:
            return candidate
        reasons.append(f"{candidate}: " + ", ".join(why))
    raise BackendUnavailable(f"{op}: no backend can serve this call: " + "; ".join(reasons))


def on_device(device: torch.device):
    """Make a tensor's GPU current while its kernels launch (tensors on cuda:1 with cuda:0 current)."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def cuda_stream(device: torch.device) -> int:
    """The raw handle of the current stream on a device, 0 for the CPU (passed to _C)."""
    return torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0
