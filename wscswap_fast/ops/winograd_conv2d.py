"""Winograd convolution: a 2x2, 3x3 or 4x4 convolution with zero padding as three transforms
around batched GEMMs, F(4x4, rxr) (kernels/winograd.h has the algebra).

    y = conv2d(x, weight, bias, padding, stride)    x (N, C, H, W), weight (K, C, r, r), r in {2, 3, 4}

Stride 2 (4x4 kernels, the PatchGAN's downsampling layers) is a space-to-depth rearrangement:
each of the 4 phases (row parity, column parity) of the padded input becomes a channel group, and
the 4x4 stride-2 convolution is a 2x2 stride-1 one over 4C channels, which Winograd F(4x4, 2x2)
serves (2.56x fewer multiplies). The rearrangement is plain tensor reshaping, differentiated by
autograd.

A direct convolution does r*r multiply-adds per output and channel pair; Winograd does
alpha^2 / 16 of them (alpha = r + 3): 1.56 instead of 4 for 2x2, 2.25 instead of 9 for 3x3,
3.06 instead of 16 for 4x4,
as P = alpha^2 independent GEMMs (T tiles x C) @ (C x K), which run at the machine's GEMM rate.
The transforms around them are memory-bound passes over (P/16)x the input and output. These are
the convolutions that dominate a training step: the PatchGAN's 256->512 4x4 layer, the
generator's and the frozen ArcFace/ResNet encoders' 3x3 layers.

Backward is the transpose of the same algebra: the gradient transform A dy AT feeds both the
input gradient (GEMM with the transformed weights, then B Z BT added over overlapping tiles)
and the weight gradient (GEMM with the transformed input over all tiles, then GT S G).

Accuracy: fp32 results differ from a direct fp32 convolution by ~1e-6 (2x2, 3x3) and ~2.5e-6
(4x4) of the output's norm (direct fp32 itself: ~3e-7); the tests hold every backend to 1e-5 of a
float64 reference.

Backends: cuda (our transform kernels + cuBLAS), triton (Triton transforms + cuBLAS), cpu (C++
transforms + MKL), reference (F.conv2d). fp32 (fp64 too on cpu and reference; reference takes
any float dtype). Any input layout; the kernels work in channels_last and the output comes back
in the input's memory format.
"""
import torch
import torch.nn.functional as F

from .._ext import extension
from . import _checks
from ._backends import cuda_stream, on_device, resolve

KERNEL_SIZES = (2, 3, 4)
STRIDE2_KERNEL_SIZES = (4,)  # even kernels: space-to-depth to a stride-1 kernel of half the size
TILE = 4  # outputs per tile side (kernels/winograd.h kWinogradTile)
FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
SUPPORTED = {"cpu": (torch.float32, torch.float64), "reference": FLOAT_DTYPES, "*": (torch.float32,)}


def reference(x, weight, bias=None, padding: int = 1, stride: int = 1):
    """The definition every backend is tested against."""
    return F.conv2d(x, weight, bias, stride=stride, padding=padding)


def output_size(size: int, r: int, padding: int, stride: int) -> int:
    return (size + 2 * padding - r) // stride + 1


def check_inputs(x, weight, bias, padding, stride=1) -> None:
    """Validate once, here: every backend may assume what this guarantees."""
    _checks.tensor("input", x, dims=4, dtypes=FLOAT_DTYPES)
    _checks.tensor("weight", weight, dims=4, device=x.device)
    k, c, kh, kw = weight.shape
    if kh != kw or kh not in KERNEL_SIZES:
        raise ValueError(f"weight must be (K, C, r, r) with r in {KERNEL_SIZES}, got {_checks.describe(weight)}")
    if x.shape[1] == 0 or k == 0:  # F.conv2d rejects K = 0 and returns K = 0 maps for C = 0
        raise ValueError(f"input and weight need at least one channel, got input {_checks.describe(x)} and "
                         f"weight {_checks.describe(weight)}")
    if c != x.shape[1]:
        raise ValueError(f"weight must have input's {x.shape[1]} input channels, got {_checks.describe(weight)}")
    if weight.dtype != x.dtype:
        raise TypeError(f"weight must have input's dtype {x.dtype}, got {_checks.describe(weight)}")
    if bias is not None:
        _checks.tensor("bias", bias, dims=1, device=x.device)
        _checks.shape("bias", bias, (k,), "(K,): one per output channel")
        if bias.dtype != x.dtype:
            raise TypeError(f"bias must have input's dtype {x.dtype}, got {_checks.describe(bias)}")
    if not isinstance(padding, int) or isinstance(padding, bool) or not 0 <= padding < kh:
        raise ValueError(f"padding must be an int in [0, {kh}) for a {kh}x{kh} kernel, got {padding!r}")
    if stride not in (1, 2) or isinstance(stride, bool):
        raise ValueError(f"stride must be 1 or 2, got {stride!r}")
    if stride == 2 and kh not in STRIDE2_KERNEL_SIZES:
        raise ValueError(f"stride 2 needs a kernel size in {STRIDE2_KERNEL_SIZES}, got a {kh}x{kh} weight")
    ho, wo = (output_size(s, kh, padding, stride) for s in x.shape[2:])
    if ho < 1 or wo < 1:
        raise ValueError(f"input is too small for a {kh}x{kh} kernel with padding {padding}, stride {stride}: the "
                         f"output would be "
                         f"{ho}x{wo} ({_checks.describe(x)})")


def memory_format(x: torch.Tensor) -> torch.memory_format:
    """channels_last when x is (and is not also plain contiguous), else contiguous."""
    if x.shape[1] > 1 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def _padded_rows(tiles: int, widths, element_size: int) -> int:
    """Rows of a (P, rows, width) plane buffer: the tile count, plus a few zero rows when a plane
    would be a multiple of 4 KiB. The transforms touch one channel of a tile in all P planes at
    once, and at a 4 KiB-multiple distance those all map to one cache set (measured: transforms
    up to 30x slower). Padding rows, not the plane stride, keeps the buffers contiguous, which
    torch.bmm needs for its batched GEMM."""
    rows = tiles
    while any(rows * w * element_size % 4096 == 0 for w in widths if w * element_size % 4096) and rows < tiles + 64:
        rows += 1
    return rows


class Geometry:
    """Sizes of one call: the kernels' shape list and the transformed tensors' sizes."""

    def __init__(self, x_shape, weight_shape, padding: int, element_size: int = 4):
        self.n, self.c, self.h, self.w = (int(v) for v in x_shape)
        self.k, _, self.r, _ = (int(v) for v in weight_shape)
        self.padding = padding
        self.ho, self.wo = self.h + 2 * padding - self.r + 1, self.w + 2 * padding - self.r + 1
        self.tiles = self.n * -(-self.ho // TILE) * -(-self.wo // TILE)
        self.rows = _padded_rows(self.tiles, (self.c, self.k), element_size)
        self.planes = (TILE + self.r - 1) ** 2
        self.dims = [self.n, self.h, self.w, self.c, self.k, padding, self.r]

    def tile_planes(self, like: torch.Tensor, width: int) -> torch.Tensor:
        """An empty (P, rows, width) buffer whose padding rows are zero (they enter the weight
        gradient's sum over tiles)."""
        buf = like.new_empty((self.planes, self.rows, width))
        if self.rows > self.tiles:
            buf[:, self.tiles:].zero_()
        return buf


class _Kernels:
    """The six transforms of a backend: _C's (cpu, cuda) or the Triton module's."""

    def __init__(self, backend: str, device: torch.device):
        self.device = device
        if backend == "triton":
            from ..triton import winograd_conv2d as module

            self.call = lambda name, *args: getattr(module, name)(*args)
        else:
            stream = cuda_stream(device)
            self.call = lambda name, *args: getattr(extension, f"winograd_{name}")(*args, stream)


def _transform_input(kern, x_cl, g):
    u = g.tile_planes(x_cl, g.c)
    kern.call("input_transform", x_cl, u, g.dims)
    return u


def weight_format(weight: torch.Tensor) -> torch.memory_format:
    """channels_last for a channels_last weight (models converted to channels_last hold their
    conv weights so), else contiguous: the layouts the kernels read, and the weight gradient's."""
    if not weight.is_contiguous() and weight.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def _transform_weight(kern, weight, g):
    v = weight.new_empty((g.planes, g.c, g.k))
    kern.call("weight_transform", weight.contiguous(memory_format=weight_format(weight)), v, g.dims)
    return v


def _forward(x, weight, bias, padding, backend):
    fmt = memory_format(x)
    if backend == "reference":
        return reference(x, weight, bias, padding).contiguous(memory_format=fmt)
    g = Geometry(x.shape, weight.shape, padding, x.element_size())
    y = torch.empty((g.n, g.k, g.ho, g.wo), dtype=x.dtype, device=x.device, memory_format=torch.channels_last)
    with on_device(x.device):
        kern = _Kernels(backend, x.device)
        u = _transform_input(kern, x.contiguous(memory_format=torch.channels_last), g)
        v = _transform_weight(kern, weight, g)
        m = torch.bmm(u, v)  # (P, T, C) @ (P, C, K): one GEMM per plane
        del u
        kern.call("output_transform", m, None if bias is None else bias.contiguous(), y, g.dims)
    return y.contiguous(memory_format=fmt)


def _backward(grad, x, weight, padding, need_input, need_weight, need_bias, backend):
    """(grad_input, grad_weight, grad_bias), each an empty tensor when not asked for."""
    def empty():  # a new one per slot: custom op outputs must not alias each other
        return x.new_empty(0)

    grad_bias = grad.sum(dim=(0, 2, 3)) if need_bias else empty()
    if backend == "reference":
        grad_input, grad_weight, _ = torch.ops.aten.convolution_backward(
            grad, x, weight, None, (1, 1), (padding, padding), (1, 1), False, (0, 0), 1,
            (need_input, need_weight, False))
        return (grad_input.contiguous(memory_format=memory_format(x)) if need_input else empty(),
                grad_weight.contiguous(memory_format=weight_format(weight)) if need_weight else empty(), grad_bias)
    g = Geometry(x.shape, weight.shape, padding, x.element_size())
    grad_input, grad_weight = empty(), empty()
    with on_device(x.device):
        kern = _Kernels(backend, x.device)
        yh = g.tile_planes(grad, g.k)
        kern.call("grad_transform", grad.contiguous(memory_format=torch.channels_last), yh, g.dims)
        if need_weight:
            u = _transform_input(kern, x.contiguous(memory_format=torch.channels_last), g)
            s = torch.bmm(u.transpose(1, 2), yh)  # (P, C, T) @ (P, T, K): summed over tiles
            del u
            grad_weight = torch.empty_like(weight, memory_format=weight_format(weight))
            kern.call("weight_grad_transform", s, grad_weight, g.dims)
            del s
        if need_input:
            v = _transform_weight(kern, weight, g)
            z = torch.bmm(yh, v.transpose(1, 2))  # (P, T, K) @ (P, K, C)
            del v, yh
            grad_input = torch.empty((g.n, g.c, g.h, g.w), dtype=x.dtype, device=x.device,
                                     memory_format=torch.channels_last)
            kern.call("input_grad_transform", z, grad_input, g.dims)
            grad_input = grad_input.contiguous(memory_format=memory_format(x))
    return grad_input, grad_weight, grad_bias


@torch.library.custom_op("wscswap::winograd_conv2d", mutates_args=())
def _conv_op(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding: int,
             backend: str) -> torch.Tensor:
    return _forward(x, weight, bias, padding, backend)


@_conv_op.register_fake
def _(x, weight, bias, padding, backend):
    g = Geometry(x.shape, weight.shape, padding)
    return x.new_empty((g.n, g.k, g.ho, g.wo)).contiguous(memory_format=memory_format(x))


@torch.library.custom_op("wscswap::winograd_conv2d_backward", mutates_args=())
def _conv_backward_op(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, padding: int, need_input: bool,
                      need_weight: bool, need_bias: bool, backend: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _backward(grad, x, weight, padding, need_input, need_weight, need_bias, backend)


@_conv_backward_op.register_fake
def _(grad, x, weight, padding, need_input, need_weight, need_bias, backend):
    return (torch.empty_like(x, memory_format=memory_format(x)) if need_input else x.new_empty(0),
            torch.empty_like(weight, memory_format=weight_format(weight)) if need_weight else x.new_empty(0),
            weight.new_empty(weight.shape[0]) if need_bias else x.new_empty(0))


def _setup_context(ctx, inputs, output):
    x, weight, bias, padding, backend = inputs
    ctx.save_for_backward(x, weight)
    ctx.padding, ctx.backend, ctx.has_bias = padding, backend, bias is not None


def _autograd_backward(ctx, grad):
    x, weight = ctx.saved_tensors
    need_input, need_weight, need_bias = ctx.needs_input_grad[:3]
    grad_input, grad_weight, grad_bias = _conv_backward_op(
        grad, x, weight, ctx.padding, need_input, need_weight, need_bias and ctx.has_bias, ctx.backend)
    return (grad_input if need_input else None, grad_weight if need_weight else None,
            grad_bias if need_bias and ctx.has_bias else None, None, None)


_conv_op.register_autograd(_autograd_backward, setup_context=_setup_context)


@torch.compiler.assume_constant_result
def _pick(backend: str, device: torch.device, dtype: torch.dtype) -> str:
    return resolve("winograd_conv2d", backend, device, {"input": dtype}, SUPPORTED)


def _space_to_depth(x, weight, padding):
    """A stride-2 convolution of x as a stride-1 one: (x', w') with x' (N, 4C, Hp/2, Wp/2) the
    phases of the zero-padded input (channel (pa, pb, c) = xpad[c, 2i+pa, 2j+pb]) in
    channels_last, and w' (K, 4C, r/2, r/2) with w'[k, (pa, pb, c), a, b] = w[k, c, 2a+pa, 2b+pb].
    An odd padded size gets one more zero row/column (it only adds outputs that are cut off)."""
    n, c, h, w = x.shape
    k, _, r, _ = weight.shape
    hp, wp = h + 2 * padding, w + 2 * padding
    xp = F.pad(x, (padding, padding + wp % 2, padding, padding + hp % 2))
    h2, w2 = xp.shape[2] // 2, xp.shape[3] // 2
    nhwc = xp.permute(0, 2, 3, 1).reshape(n, h2, 2, w2, 2, c).permute(0, 1, 3, 2, 4, 5).reshape(n, h2, w2, 4 * c)
    ws = weight.reshape(k, c, r // 2, 2, r // 2, 2).permute(0, 3, 5, 1, 2, 4).reshape(k, 4 * c, r // 2, r // 2)
    return nhwc.permute(0, 3, 1, 2), ws


def winograd_conv2d(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, padding: int = 1,
                    stride: int = 1, *, backend: str = "auto") -> torch.Tensor:
    """``F.conv2d(input, weight, bias, stride=stride, padding=padding)`` by Winograd F(4x4, rxr):
    stride 1 with 2x2, 3x3 or 4x4 kernels, stride 2 with 4x4 kernels.

    Args:
        input: (N, C, H, W), fp32 (fp64 on cpu/reference; fp16/bf16 on reference only).
        weight: (K, C, r, r), r in (2, 3, 4), input's dtype.
        bias: (K,) or None.
        padding: zero padding on every side, 0 <= padding < r.
        stride: 1, or 2 for a 4x4 kernel.
        backend: 'auto', 'cuda', 'triton', 'cpu' or 'reference' (default: WSCSWAP_BACKEND or 'auto').

    Returns (N, K, (H + 2*padding - r) // stride + 1, (W + ...) // stride + 1) in input's memory
    format. Differentiable in input, weight and bias.
    """
    check_inputs(input, weight, bias, padding, stride)
    backend = _pick(backend, input.device, input.dtype)
    if stride == 1:
        return _conv_op(input, weight, bias, padding, backend)
    if backend == "reference":
        return reference(input, weight, bias, padding, stride).contiguous(memory_format=memory_format(input))
    r = weight.shape[2]
    ho, wo = (output_size(s, r, padding, stride) for s in input.shape[2:])
    xs, ws = _space_to_depth(input, weight, padding)
    y = _conv_op(xs, ws, bias, 0, backend)[:, :, :ho, :wo]
    return y.contiguous(memory_format=memory_format(input))
