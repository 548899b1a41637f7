"""Argument checks shared by the ops: every message names the argument, its shape, dtype and device."""
import torch


def describe(t) -> str:
    if isinstance(t, torch.Tensor):
        return f"shape {tuple(t.shape)}, dtype {t.dtype}, device {t.device}"
    return f"a {type(t).__name__}"


def tensor(name: str, t, *, dims=None, dtypes=None, device=None) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {describe(t)}")
    if dims is not None and t.dim() != dims:
        raise ValueError(f"{name} must be {dims}-D, got {describe(t)}")
    if dtypes is not None and t.dtype not in dtypes:
        allowed = ", ".join(str(d) for d in dtypes)
        raise TypeError(f"{name} must have dtype in ({allowed}), got {describe(t)}")
    if device is not None and t.device != device:
        raise ValueError(f"{name} must be on {device} like the other inputs, got {describe(t)}")
    return t


def shape(name: str, t: torch.Tensor, expected: tuple, meaning: str) -> None:
    """expected holds ints, or None for 'any size'."""
    ok = t.dim() == len(expected) and all(e is None or e == s for e, s in zip(expected, t.shape))
    if not ok:
        want = str(tuple("*" if e is None else e for e in expected)).replace("'", "")
        raise ValueError(f"{name} must have shape {want} {meaning}, got {describe(t)}")
