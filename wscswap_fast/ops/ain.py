"""Attribute-injection normalization (AIN): the decoder layer through which identity and target
attributes enter the generator, fused into one op.

    hn  = instance_norm(h)                                  (biased variance, eps)
    m   = sigmoid(sum_c mask_weight[c] * hn[:, c] + mask_bias)        (N, 1, H, W)
    out = (1 - m) * (gamma_att * hn + beta_att) + m * (gamma_id * hn + beta_id)

Backends: cuda, triton, cpu (C++), reference (plain PyTorch). fp32, fp16, bf16 with fp32
accumulation (fp64 too on cpu and reference); contiguous NCHW or channels_last. The forward saves
only the per-(n, c) mean and rstd and the per-pixel mask (fp32), never hn.

Passes over an (N, C, H, W) tensor E of element size s (the minimal count the benchmark uses
reads h, gamma_att, beta_att once and writes out once: 4 E forward; backward reads dout, h,
gamma_att, beta_att and writes dh, dgamma_att, dbeta_att: 7 E):
  cpu:       forward 5 E (statistics, then per pixel block: logit and output from one h read,
             the second channel loop hits L2); backward 10 E (sweep 1: logit gradient, the
             attribute gradients and per-plane sums; sweep 2: dh).
  cuda/triton: see their sources.
"""
import torch

from .._ext import extension
from . import _checks
from ._backends import cuda_stream, on_device, resolve

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
SUPPORTED = {"cpu": FLOAT_DTYPES + (torch.float64,), "reference": FLOAT_DTYPES + (torch.float64,), "*": FLOAT_DTYPES}


def _stats_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def reference_forward(h, gamma_id, beta_id, gamma_att, beta_att, mask_weight, mask_bias, eps=1e-5):
    """Plain PyTorch, computed in fp32 (fp64 for fp64 inputs). Returns out, m, mean, rstd."""
    st = _stats_dtype(h.dtype)
    x = h.to(st)
    mean = x.mean(dim=(2, 3))
    var = (x - mean[:, :, None, None]).square().mean(dim=(2, 3))  # biased, as instance_norm
    rstd = torch.rsqrt(var + eps)
    hn = (x - mean[:, :, None, None]) * rstd[:, :, None, None]
    logit = (hn * mask_weight.to(st)[None, :, None, None]).sum(dim=1, keepdim=True) + mask_bias.to(st)
    m = torch.sigmoid(logit)
    att = gamma_att.to(st) * hn + beta_att.to(st)
    ident = gamma_id.to(st)[:, :, None, None] * hn + beta_id.to(st)[:, :, None, None]
    out = (1 - m) * att + m * ident
    return out.to(h.dtype), m, mean, rstd


def reference(h, gamma_id, beta_id, gamma_att, beta_att, mask_weight, mask_bias, eps=1e-5):
    """The definition every backend is tested against: (out, m) in h's dtype."""
    out, m, _, _ = reference_forward(h, gamma_id, beta_id, gamma_att, beta_att, mask_weight, mask_bias, eps)
    return out, m.to(h.dtype)


def check_inputs(h, gamma_id, beta_id, gamma_att, beta_att, mask_weight, mask_bias, eps) -> None:
    """Validate once, here: every backend may assume what this guarantees."""
    _checks.tensor("h", h, dims=4, dtypes=FLOAT_DTYPES + (torch.float64,))
    n, c, hh, ww = h.shape
    if hh * ww == 0:
        raise ValueError(f"h must have H*W >= 1 to normalise over, got {_checks.describe(h)}")
    args = {"gamma_id": (gamma_id, (n, c), "(N,C)"), "beta_id": (beta_id, (n, c), "(N,C)"),
            "gamma_att": (gamma_att, (n, c, hh, ww), "(N,C,H,W) like h"),
            "beta_att": (beta_att, (n, c, hh, ww), "(N,C,H,W) like h"),
            "mask_weight": (mask_weight, (c,), "(C,)"), "mask_bias": (mask_bias, (1,), "(1,)")}
    for name, (t, shape, meaning) in args.items():
        _checks.tensor(name, t, dims=len(shape), device=h.device)
        _checks.shape(name, t, shape, meaning)
        if t.dtype != h.dtype:
            raise TypeError(f"{name} must have h's dtype {h.dtype}, got {_checks.describe(t)}")
    if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not eps > 0:
        raise ValueError(f"eps must be a positive number, got {eps!r}")


def memory_format(h: torch.Tensor) -> torch.memory_format:
    """channels_last when h is (and is not also plain contiguous), else contiguous."""
    if h.shape[1] > 1 and not h.is_contiguous() and h.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


# The CUDA kernels keep a channels_last pixel's channels in one warp group's registers: up to
# 1024 channels (kernels/ain.cu). Wider channels_last inputs run the NCHW kernels on a copy.
CUDA_CHANNELS_LAST_MAX_C = 1024


def _kernel_format(h: torch.Tensor, backend: str) -> torch.memory_format:
    fmt = memory_format(h)
    if backend == "cuda" and fmt == torch.channels_last and h.shape[1] > CUDA_CHANNELS_LAST_MAX_C:
        return torch.contiguous_format
    return fmt


def _forward(h, gamma_id, beta_id, gamma_att, beta_att, mask_weight, mask_bias, eps, backend):
    fmt = memory_format(h)
    if backend == "reference":
        out, m, mean, rstd = reference_forward(h, gamma_id, beta_id, gamma_att, beta_att, mask_weight, mask_bias, eps)
        return out.contiguous(memory_format=fmt), m.contiguous(), mean, rstd
    kfmt = _kernel_format(h, backend)
    h, gamma_att, beta_att = (t.contiguous(memory_format=kfmt) for t in (h, gamma_att, beta_att))
    gamma_id, beta_id, mask_weight, mask_bias = (t.contiguous() for t in (gamma_id, beta_id, mask_weight, mask_bias))
    n, c, hh, ww = h.shape
    st = _stats_dtype(h.dtype)
    out = torch.empty_like(h, memory_format=kfmt)
    m = torch.empty((n, 1, hh, ww), dtype=st, device=h.device)
    mean = torch.empty((n, c), dtype=st, device=h.device)
    rstd = torch.empty((n, c), dtype=st, device=h.device)
    args = (h, gamma_id, beta_id, gamma_att, beta_att, mask_weight, mask_bias, out, m, mean, rstd, float(eps),
            kfmt == torch.channels_last)
    with on_device(h.device):
        if backend == "triton":
            from ..triton import ain as triton_ain

            triton_ain.ain_forward(*args)
        else:
            extension.ain_forward(*args, cuda_stream(h.device))
    return out.contiguous(memory_format=fmt), m, mean, rstd


def _backward(grad_out, grad_mask, h, gamma_id, beta_id, gamma_att, beta_att, mask_weight, mask_bias, m, mean, rstd,
              backend):
    fmt = memory_format(h)
    if backend == "reference":
        grads = reference_backward(grad_out, grad_mask, h, gamma_id, beta_id, gamma_att, beta_att, mask_weight, m,
                                   mean, rstd)
        inputs = (h, gamma_id, beta_id, gamma_att, beta_att, mask_weight, mask_bias)
        return tuple(g.to(t.dtype).contiguous(memory_format=fmt) if g.dim() == 4 else g.to(t.dtype)
                     for g, t in zip(grads, inputs))
    kfmt = _kernel_format(h, backend)
    grad_out, h, gamma_att, beta_att = (t.contiguous(memory_format=kfmt) for t in (grad_out, h, gamma_att, beta_att))
    gamma_id, beta_id, mask_weight = (t.contiguous() for t in (gamma_id, beta_id, mask_weight))
    grad_mask = None if grad_mask is None else grad_mask.to(h.dtype).contiguous()
    grads = [torch.empty_like(h, memory_format=kfmt), torch.empty_like(gamma_id), torch.empty_like(beta_id),
             torch.empty_like(h, memory_format=kfmt), torch.empty_like(h, memory_format=kfmt),
             torch.empty_like(mask_weight), torch.empty_like(mask_bias)]
    args = (grad_out, grad_mask, h, gamma_id, beta_id, gamma_att, beta_att, mask_weight, m, mean, rstd, *grads,
            kfmt == torch.channels_last)
    with on_device(h.device):
        if backend == "triton":
            from ..triton import ain as triton_ain

            triton_ain.ain_backward(*args)
        else:
            extension.ain_backward(*args, cuda_stream(h.device))
    return tuple(g.contiguous(memory_format=fmt) if g.dim() == 4 else g for g in grads)


def reference_backward(grad_out, grad_mask, h, gamma_id, beta_id, gamma_att, beta_att, mask_weight, m, mean, rstd):
    """The fused backward's formulas (kernels/ain.h) in plain PyTorch, in the stats dtype.
    grad_mask may be None. Returns the gradients of h, gamma_id, beta_id, gamma_att, beta_att,
    mask_weight and mask_bias."""
    st = _stats_dtype(h.dtype)
    plane = (slice(None), slice(None), None, None)
    rs = rstd.to(st)[plane]
    hn = (h.to(st) - mean.to(st)[plane]) * rs
    gi, bi = gamma_id.to(st)[plane], beta_id.to(st)[plane]
    ga, ba = gamma_att.to(st), beta_att.to(st)
    w = mask_weight.to(st)[None, :, None, None]
    g, m = grad_out.to(st), m.to(st)
    mask_grad = (g * ((gi * hn + bi) - (ga * hn + ba))).sum(dim=1, keepdim=True)
    if grad_mask is not None:
        mask_grad = mask_grad + grad_mask.to(st)
    dz = mask_grad * m * (1 - m)
    dhn = g * ((1 - m) * ga + m * gi) + dz * w
    dh = rs * (dhn - dhn.mean(dim=(2, 3), keepdim=True) - hn * (dhn * hn).mean(dim=(2, 3), keepdim=True))
    return (dh, (g * m * hn).sum(dim=(2, 3)), (g * m).sum(dim=(2, 3)), g * (1 - m) * hn, g * (1 - m),
            (dz * hn).sum(dim=(0, 2, 3)), dz.sum().reshape(1))


@torch.library.custom_op("wscswap::ain", mutates_args=())
def _ain_op(h: torch.Tensor, gamma_id: torch.Tensor, beta_id: torch.Tensor, gamma_att: torch.Tensor,
            beta_att: torch.Tensor, mask_weight: torch.Tensor, mask_bias: torch.Tensor, eps: float,
            backend: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return _forward(h, gamma_id, beta_id, gamma_att, beta_att, mask_weight, mask_bias, eps, backend)


@_ain_op.register_fake
def _(h, gamma_id, beta_id, gamma_att, beta_att, mask_weight, mask_bias, eps, backend):
    n, c, hh, ww = h.shape
    st = _stats_dtype(h.dtype)
    return (torch.empty_like(h, memory_format=memory_format(h)), h.new_empty((n, 1, hh, ww), dtype=st),
            h.new_empty((n, c), dtype=st), h.new_empty((n, c), dtype=st))


@torch.library.custom_op("wscswap::ain_backward", mutates_args=())
def _ain_backward_op(grad_out: torch.Tensor, grad_mask: torch.Tensor | None, h: torch.Tensor, gamma_id: torch.Tensor,
                     beta_id: torch.Tensor, gamma_att: torch.Tensor, beta_att: torch.Tensor, mask_weight: torch.Tensor,
                     mask_bias: torch.Tensor, m: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor,
                     backend: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                            torch.Tensor, torch.Tensor]:
    return _backward(grad_out, grad_mask, h, gamma_id, beta_id, gamma_att, beta_att, mask_weight, mask_bias, m, mean,
                     rstd, backend)


@_ain_backward_op.register_fake
def _(grad_out, grad_mask, h, gamma_id, beta_id, gamma_att, beta_att, mask_weight, mask_bias, m, mean, rstd, backend):
    fmt = memory_format(h)
    return (torch.empty_like(h, memory_format=fmt), torch.empty_like(gamma_id), torch.empty_like(beta_id),
            torch.empty_like(h, memory_format=fmt), torch.empty_like(h, memory_format=fmt),
            torch.empty_like(mask_weight), torch.empty_like(mask_bias))


def _setup_context(ctx, inputs, output):
    h, gamma_id, beta_id, gamma_att, beta_att, mask_weight, mask_bias, eps, backend = inputs
    _, m, mean, rstd = output
    ctx.save_for_backward(h, gamma_id, beta_id, gamma_att, beta_att, mask_weight, mask_bias, m, mean, rstd)
    ctx.backend = backend
    ctx.mark_non_differentiable(mean, rstd)


def _autograd_backward(ctx, grad_out, grad_m, grad_mean, grad_rstd):
    saved = ctx.saved_tensors
    grads = _ain_backward_op(grad_out, grad_m, *saved, ctx.backend)
    return (*grads, None, None)


_ain_op.register_autograd(_autograd_backward, setup_context=_setup_context)


@torch.compiler.assume_constant_result
def _pick(backend: str, device: torch.device, dtype: torch.dtype) -> str:
    return resolve("ain", backend, device, {"h": dtype}, SUPPORTED)


def ain(h: torch.Tensor, gamma_id: torch.Tensor, beta_id: torch.Tensor, gamma_att: torch.Tensor,
        beta_att: torch.Tensor, mask_weight: torch.Tensor, mask_bias: torch.Tensor, *, eps: float = 1e-5,
        return_mask: bool = False, backend: str = "auto"):
    """Attribute-injection normalization (see the module docstring for the formula).

    Args:
        h, gamma_att, beta_att: (N, C, H, W), one dtype (fp32/fp16/bf16; fp64 on cpu/reference),
            contiguous or channels_last.
        gamma_id, beta_id: (N, C). mask_weight: (C,). mask_bias: (1,).
        eps: added to the variance, as torch.nn.functional.instance_norm does.
        return_mask: also return m, (N, 1, H, W) in h's dtype (differentiable).
        backend: 'auto', 'cuda', 'triton', 'cpu' or 'reference' (default: WSCSWAP_BACKEND or 'auto').

    Returns out (N, C, H, W) in h's memory format, or (out, m). Differentiable in all seven tensors.
    """
    check_inputs(h, gamma_id, beta_id, gamma_att, beta_att, mask_weight, mask_bias, eps)
    out, m, _, _ = _ain_op(h, gamma_id, beta_id, gamma_att, beta_att, mask_weight, mask_bias, float(eps),
                           _pick(backend, h.device, h.dtype))
    return (out, m.to(h.dtype)) if return_mask else out
