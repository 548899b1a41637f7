"""The AIN layer: owns the projections that turn identity and attribute features into the
modulations, and calls the fused op. Numerically it is a FaceShifter-style AAD block with
instance norm (tests/nn/test_ain_module.py checks that)."""
import torch
from torch import nn

from ..ops import ain


class AIN(nn.Module):
    """Attribute-injection normalization.

    Args:
        channels: C, the channels of the activation h being normalised.
        id_dim: size of the identity embedding z_id (512 for ArcFace).
        att_channels: channels of the attribute feature map (same H, W as h).
        eps: instance-norm epsilon.

    forward(h (N,C,H,W), z_id (N,id_dim), att (N,att_channels,H,W), return_mask=False, backend=...)
    """

    def __init__(self, channels: int, id_dim: int, att_channels: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.att_gamma = nn.Conv2d(att_channels, channels, kernel_size=1)
        self.att_beta = nn.Conv2d(att_channels, channels, kernel_size=1)
        self.id_gamma = nn.Linear(id_dim, channels)
        self.id_beta = nn.Linear(id_dim, channels)
        self.mask = nn.Conv2d(channels, 1, kernel_size=1)  # the per-pixel C -> 1 mask projection

    def forward(self, h: torch.Tensor, z_id: torch.Tensor, att: torch.Tensor, *, return_mask: bool = False,
                backend: str = "auto"):
        if att.shape[-2:] != h.shape[-2:]:
            raise ValueError(f"att must have h's spatial size {tuple(h.shape[-2:])}, got {tuple(att.shape)}")
        return ain(*self.op_inputs(h, z_id, att), eps=self.eps, return_mask=return_mask, backend=backend)

    def op_inputs(self, h: torch.Tensor, z_id: torch.Tensor, att: torch.Tensor) -> tuple:
        """The seven tensors the op takes, in h's dtype: under autocast the projections give
        bf16/fp16 while the mask projection's parameters stay fp32, and the op wants one dtype."""
        dt = h.dtype
        return (h, self.id_gamma(z_id).to(dt), self.id_beta(z_id).to(dt), self.att_gamma(att).to(dt),
                self.att_beta(att).to(dt), self.mask.weight.reshape(-1).to(dt), self.mask.bias.to(dt))
