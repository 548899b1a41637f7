"""Conv2d: torch's layer (same parameters, same state-dict keys, so published checkpoints load
unchanged) that runs the convolutions where Winograd pays through ``ops.winograd_conv2d``.

Which convolutions go through the op (``winograd_backend``): a 2x2, 3x3 or 4x4 kernel at stride
1, or a 4x4 kernel at stride 2 (the PatchGAN's downsampling), dilation 1, one group, symmetric
zero padding, fp32 (or fp64; Winograd's transforms lose too much
in 16 bits, so half-precision and autocast convolutions run as F.conv2d), at least
WINOGRAD_MIN_CHANNELS input and output channels and an output of at least WINOGRAD_MIN_SIZE on
each side. Below those sizes the transforms cost more than the GEMM saves (bench/NOTES.md has the
per-layer figures); every other convolution (3x3 strided, 1x1, 7x7, small) runs as F.conv2d, on every
backend: it is the same layer, not a fallback of the op.

The layer's backend (``set_backend(module, name)`` sets it for a whole model):
  'auto' / 'cpu'      CPU tensors: our C++ transforms + MKL GEMMs. CUDA tensors under 'auto':
                      F.conv2d, since cuDNN picks its own (Winograd included) algorithm per shape.
  'cuda' / 'triton'   the op on that backend (an explicit backend that cannot serve the tensor's
                      device raises BackendUnavailable, as every fused op does).
  'reference'/'plain' F.conv2d everywhere: the plain-PyTorch model.
"""
import torch
import torch.nn.functional as F
from torch import nn

from ..ops import winograd_conv2d
from ..ops.winograd_conv2d import KERNEL_SIZES, STRIDE2_KERNEL_SIZES, output_size
from ..ops._backends import requested_backend

WINOGRAD_MIN_CHANNELS = 64
WINOGRAD_MIN_SIZE = 8
PLAIN_BACKENDS = ("reference", "plain")


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` with the same arguments; eligible convolutions run by Winograd."""

    backend = "auto"  # set per layer by set_backend

    def _static_ok(self) -> bool:
        k = self.kernel_size
        stride_ok = self.stride == (1, 1) or (self.stride == (2, 2) and k[0] in STRIDE2_KERNEL_SIZES)
        return (k[0] == k[1] and k[0] in KERNEL_SIZES and stride_ok and self.dilation == (1, 1)
                and self.groups == 1 and self.padding_mode == "zeros" and isinstance(self.padding, tuple)
                and self.padding[0] == self.padding[1] and self.padding[0] < k[0]
                and min(self.in_channels, self.out_channels) >= WINOGRAD_MIN_CHANNELS)

    def winograd_backend(self, x: torch.Tensor) -> str | None:
        """The ops backend this call runs on, or None for F.conv2d."""
        if not self._static_ok():
            return None
        backend = self.backend if self.backend == "plain" else requested_backend(self.backend)
        if backend in PLAIN_BACKENDS:
            return None
        if x.dtype not in (torch.float32, torch.float64) or x.dtype != self.weight.dtype:
            return None
        if torch.is_autocast_enabled(x.device.type):
            return None  # autocast runs F.conv2d in bf16/fp16; the op is fp32
        pad, r, stride = self.padding[0], self.kernel_size[0], self.stride[0]
        if min(output_size(s, r, pad, stride) for s in x.shape[-2:]) < WINOGRAD_MIN_SIZE:
            return None
        if backend == "auto":
            return "cpu" if x.device.type == "cpu" else None
        return backend  # explicit: the op raises BackendUnavailable if it cannot serve x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        backend = self.winograd_backend(x) if x.dim() == 4 else None
        if backend is None:
            return super().forward(x)
        return winograd_conv2d(x, self.weight, self.bias, self.padding[0], self.stride[0], backend=backend)
