"""Mask-guided blend: ``Y = M*F + (1-M)*B``, the generator's output composite.

Backends: cuda, triton, cpu (C++), reference (plain PyTorch). fp32, fp16 and bf16 with fp32
accumulation (fp64 too on cpu and reference, for gradcheck); contiguous or channels_last.

Bytes moved (fused, per element of face, s = element size): forward reads F, B and writes Y,
plus one mask read per pixel: (3*N*C*H*W + N*H*W) * s. Backward reads dY, F, B, writes dF, dB,
plus one mask read and one dM write per pixel: (5*N*C*H*W + 2*N*H*W) * s. Each kernel makes a
single pass; the mask-gradient sum over channels stays in registers (cuda/triton) or in an
L1-sized block buffer (cpu).
"""
import torch

from .._ext import extension
from . import _checks
from ._backends import cuda_stream, on_device, resolve

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
SUPPORTED = {"cpu": FLOAT_DTYPES + (torch.float64,), "reference": FLOAT_DTYPES + (torch.float64,), "*": FLOAT_DTYPES}


def reference(face: torch.Tensor, background: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The plain-PyTorch definition every backend is tested against."""
    return mask * face + (1 - mask) * background


def reference_backward(grad, face, background, mask):
    grad_face = grad * mask
    grad_background = grad * (1 - mask)
    grad_mask = (grad * (face - background)).sum(dim=1, keepdim=True)
    return grad_face, grad_background, grad_mask


def check_inputs(face, background, mask) -> None:
    """Validate once, here: every backend may assume what this guarantees."""
    _checks.tensor("face", face, dims=4, dtypes=FLOAT_DTYPES + (torch.float64,))
    _checks.tensor("background", background, dims=4, device=face.device)
    _checks.tensor("mask", mask, dims=4, device=face.device)
    n, c, h, w = face.shape
    _checks.shape("background", background, (n, c, h, w), "(the shape of face)")
    _checks.shape("mask", mask, (n, 1, h, w), "(N,1,H,W) to broadcast over face's channels")
    for name, t in (("background", background), ("mask", mask)):
        if t.dtype != face.dtype:
            raise TypeError(f"{name} must have face's dtype {face.dtype}, got {_checks.describe(t)}")


def memory_format(face: torch.Tensor) -> torch.memory_format:
    """channels_last when face is (and is not also plain contiguous), else contiguous."""
    if face.shape[1] > 1 and not face.is_contiguous() and face.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def _dense(fmt, *tensors):
    return [t.contiguous(memory_format=fmt) for t in tensors]


def _run_kernel(backend, name, fmt, *tensors):
    channels_last = fmt == torch.channels_last
    device = tensors[0].device
    with on_device(device):
        if backend == "triton":
            from ..triton import blend as triton_blend

            getattr(triton_blend, name)(*tensors, channels_last)
        else:
            getattr(extension, name)(*tensors, channels_last, cuda_stream(device))


def _forward(face, background, mask, backend):
    fmt = memory_format(face)
    if backend == "reference":
        return reference(face, background, mask).contiguous(memory_format=fmt)
    face, background = _dense(fmt, face, background)
    mask = mask.contiguous()
    out = torch.empty_like(face, memory_format=fmt)
    _run_kernel(backend, "blend_forward", fmt, face, background, mask, out)
    return out


def _backward(grad, face, background, mask, backend):
    fmt = memory_format(face)
    if backend == "reference":
        gf, gb, gm = reference_backward(grad, face, background, mask)
        return gf.contiguous(memory_format=fmt), gb.contiguous(memory_format=fmt), gm.contiguous()
    grad, face, background = _dense(fmt, grad, face, background)
    mask = mask.contiguous()
    grad_face = torch.empty_like(face, memory_format=fmt)
    grad_background = torch.empty_like(face, memory_format=fmt)
    grad_mask = torch.empty_like(mask)
    _run_kernel(backend, "blend_backward", fmt, grad, face, background, mask, grad_face, grad_background, grad_mask)
    return grad_face, grad_background, grad_mask


@torch.library.custom_op("wscswap::blend", mutates_args=())
def _blend_op(face: torch.Tensor, background: torch.Tensor, mask: torch.Tensor, backend: str) -> torch.Tensor:
    return _forward(face, background, mask, backend)


@_blend_op.register_fake
def _(face, background, mask, backend):
    return torch.empty_like(face, memory_format=memory_format(face))


@torch.library.custom_op("wscswap::blend_backward", mutates_args=())
def _blend_backward_op(
    grad: torch.Tensor, face: torch.Tensor, background: torch.Tensor, mask: torch.Tensor, backend: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _backward(grad, face, background, mask, backend)


@_blend_backward_op.register_fake
def _(grad, face, background, mask, backend):
    fmt = memory_format(face)
    return (torch.empty_like(face, memory_format=fmt), torch.empty_like(face, memory_format=fmt),
            torch.empty_like(mask, memory_format=torch.contiguous_format))


def _setup_context(ctx, inputs, output):
    face, background, mask, backend = inputs
    ctx.save_for_backward(face, background, mask)
    ctx.backend = backend


def _autograd_backward(ctx, grad):
    face, background, mask = ctx.saved_tensors
    grad_face, grad_background, grad_mask = _blend_backward_op(grad, face, background, mask, ctx.backend)
    return grad_face, grad_background, grad_mask, None


_blend_op.register_autograd(_autograd_backward, setup_context=_setup_context)


@torch.compiler.assume_constant_result
def _pick(backend: str, device: torch.device, dtype: torch.dtype) -> str:
    return resolve("blend", backend, device, {"face": dtype}, SUPPORTED)


def blend(face: torch.Tensor, background: torch.Tensor, mask: torch.Tensor, *, backend: str = "auto") -> torch.Tensor:
    """``mask*face + (1-mask)*background``.

    Args:
        face, background: (N, C, H, W), same dtype (fp32/fp16/bf16; fp64 on cpu/reference).
        mask: (N, 1, H, W), broadcast over the channels.
        backend: 'auto', 'cuda', 'triton', 'cpu' or 'reference' (default: WSCSWAP_BACKEND or 'auto').

    Returns (N, C, H, W) in face's memory format. Differentiable in all three inputs.
    """
    check_inputs(face, background, mask)
    return _blend_op(face, background, mask, _pick(backend, face.device, face.dtype))
