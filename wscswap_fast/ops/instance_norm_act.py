"""Instance norm (no affine) followed by LeakyReLU, fused: the PatchGAN discriminator's layer
(``nn.InstanceNorm2d(C)`` then ``nn.LeakyReLU(0.2)``).

    xhat = (x - mean) / sqrt(var + eps)     per (n, c) plane, biased variance
    y    = leaky_relu(xhat, negative_slope)

Backend: cuda, triton, cpu (C++), reference (plain PyTorch). cpu: fp32, fp64; cuda/triton: fp32,
fp16, bf16 with fp32 statistics; reference: any float dtype. Contiguous NCHW or channels_last
(PyTorch's CPU instance norm runs NCHW and copies channels_last input there and back). The
forward saves the per-(n, c) mean and rstd; the backward recomputes xhat from x.

Passes over the (N, C, H, W) tensor E: forward 3 E (statistics, then x in and y out), backward
5 E (the plane sums of the gradient read dy and x, then dx); unfused, InstanceNorm2d plus
LeakyReLU move ~5 E forward and ~9 E backward, plus the layout copies.
"""
import torch
import torch.nn.functional as F

from .._ext import extension
from . import _checks
from ._backends import cuda_stream, on_device, resolve

HALF_DTYPES = (torch.float16, torch.bfloat16)
FLOAT_DTYPES = (torch.float32, torch.float64) + HALF_DTYPES
SUPPORTED = {"cpu": (torch.float32, torch.float64), "reference": FLOAT_DTYPES,
             "*": (torch.float32,) + HALF_DTYPES}


def reference(x, eps: float = 1e-5, negative_slope: float = 0.2):
    """The definition every backend is tested against."""
    return F.leaky_relu(F.instance_norm(x, eps=eps), negative_slope)


def _stats_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _reference_forward(x, eps, slope):
    xs = x.to(_stats_dtype(x))
    mean = xs.mean(dim=(2, 3))
    rstd = torch.rsqrt((xs - mean[:, :, None, None]).square().mean(dim=(2, 3)) + eps)  # biased; H*W = 1 too
    xhat = (xs - mean[:, :, None, None]) * rstd[:, :, None, None]
    return F.leaky_relu(xhat, slope).to(x.dtype), mean, rstd


def _reference_backward(grad, x, mean, rstd, slope):
    xs = x.to(mean.dtype)
    xhat = (xs - mean[:, :, None, None]) * rstd[:, :, None, None]
    g = grad.to(mean.dtype)
    gp = torch.where(xhat > 0, g, g * slope)
    dx = rstd[:, :, None, None] * (gp - gp.mean(dim=(2, 3), keepdim=True)
                                   - xhat * (gp * xhat).mean(dim=(2, 3), keepdim=True))
    return dx.to(x.dtype)


def check_inputs(x, eps, negative_slope) -> None:
    """Validate once, here: every backend may assume what this guarantees."""
    _checks.tensor("x", x, dims=4, dtypes=FLOAT_DTYPES)
    if x.shape[2] * x.shape[3] == 0 and x.shape[0] * x.shape[1] > 0:
        raise ValueError(f"x must have H*W >= 1 to normalise over, got {_checks.describe(x)}")
    if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not eps > 0:
        raise ValueError(f"eps must be a positive number, got {eps!r}")
    if not isinstance(negative_slope, (int, float)) or isinstance(negative_slope, bool):
        raise ValueError(f"negative_slope must be a number, got {negative_slope!r}")


def memory_format(x: torch.Tensor) -> torch.memory_format:
    """channels_last when x is (and is not also plain contiguous), else contiguous."""
    if x.shape[1] > 1 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def _stats_buffers(x, backend):
    """The saved mean and rstd: the input's dtype on the cpu backend (fp32 or fp64), else fp32
    (fp64 for the reference's fp64)."""
    dtype = x.dtype if backend == "cpu" else _stats_dtype(x)
    n, c = x.shape[:2]
    return x.new_empty((n, c), dtype=dtype), x.new_empty((n, c), dtype=dtype)


def _forward(x, eps, slope, backend):
    fmt = memory_format(x)
    if backend == "reference":
        y, mean, rstd = _reference_forward(x, eps, slope)
        return y.contiguous(memory_format=fmt), mean, rstd
    x = x.contiguous(memory_format=fmt)
    y = torch.empty_like(x, memory_format=fmt)
    mean, rstd = _stats_buffers(x, backend)
    channels_last = fmt == torch.channels_last
    with on_device(x.device):
        if backend == "triton":
            from ..triton import instance_norm_act as kernels

            kernels.instance_norm_act_forward(x, y, mean, rstd, float(eps), float(slope), channels_last)
        else:
            extension.instance_norm_act_forward(x, y, mean, rstd, float(eps), float(slope), channels_last,
                                                cuda_stream(x.device))
    return y, mean, rstd


def _backward(grad, x, mean, rstd, slope, backend):
    fmt = memory_format(x)
    if backend == "reference":
        return _reference_backward(grad, x, mean, rstd, slope).contiguous(memory_format=fmt)
    grad, x = grad.contiguous(memory_format=fmt), x.contiguous(memory_format=fmt)
    dx = torch.empty_like(x, memory_format=fmt)
    channels_last = fmt == torch.channels_last
    with on_device(x.device):
        if backend == "triton":
            from ..triton import instance_norm_act as kernels

            kernels.instance_norm_act_backward(grad, x, mean, rstd, dx, float(slope), channels_last)
        else:
            extension.instance_norm_act_backward(grad, x, mean, rstd, dx, float(slope), channels_last,
                                                 cuda_stream(x.device))
    return dx


@torch.library.custom_op("wscswap::instance_norm_act", mutates_args=())
def _forward_op(x: torch.Tensor, eps: float, negative_slope: float,
                backend: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _forward(x, eps, negative_slope, backend)


@_forward_op.register_fake
def _(x, eps, negative_slope, backend):
    return (torch.empty_like(x, memory_format=memory_format(x)),) + _stats_buffers(x, backend)


@torch.library.custom_op("wscswap::instance_norm_act_backward", mutates_args=())
def _backward_op(grad: torch.Tensor, x: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor, negative_slope: float,
                 backend: str) -> torch.Tensor:
    return _backward(grad, x, mean, rstd, negative_slope, backend)


@_backward_op.register_fake
def _(grad, x, mean, rstd, negative_slope, backend):
    return torch.empty_like(x, memory_format=memory_format(x))


def _setup_context(ctx, inputs, output):
    x, _, slope, backend = inputs
    _, mean, rstd = output
    ctx.save_for_backward(x, mean, rstd)
    ctx.slope, ctx.backend = slope, backend


def _autograd_backward(ctx, grad, _grad_mean, _grad_rstd):
    x, mean, rstd = ctx.saved_tensors
    return _backward_op(grad, x, mean, rstd, ctx.slope, ctx.backend), None, None, None


_forward_op.register_autograd(_autograd_backward, setup_context=_setup_context)


@torch.compiler.assume_constant_result
def _pick(backend: str, device: torch.device, dtype: torch.dtype) -> str:
    return resolve("instance_norm_act", backend, device, {"x": dtype}, SUPPORTED)


def instance_norm_act(x: torch.Tensor, eps: float = 1e-5, negative_slope: float = 0.2, *,
                      backend: str = "auto") -> torch.Tensor:
    """``leaky_relu(instance_norm(x, eps), negative_slope)`` in one op.

    Args:
        x: (N, C, H, W), H*W >= 1.
        eps: added to the variance.
        negative_slope: LeakyReLU's slope below zero.
        backend: 'auto', 'cuda', 'triton', 'cpu' or 'reference' (default: WSCSWAP_BACKEND or 'auto').

    Returns (N, C, H, W) in x's memory format, differentiable in x.
    """
    check_inputs(x, eps, negative_slope)
    return _forward_op(x, float(eps), float(negative_slope), _pick(backend, x.device, x.dtype))[0]
