"""InstanceNormLeakyReLU: ``nn.InstanceNorm2d(C)`` (no affine, no running statistics) followed
by ``nn.LeakyReLU(slope)`` as one layer on the fused ``ops.instance_norm_act``. It has no
parameters or buffers, so it replaces the pair in a model without changing its state dict."""
import torch
import torch.nn.functional as F
from torch import nn

from ..ops import instance_norm_act


class InstanceNormLeakyReLU(nn.Module):
    """forward(x (N, C, H, W)) -> leaky_relu(instance_norm(x), negative_slope). `backend` as in
    the ops ('plain': the two torch functions, for torch.compile to see through)."""

    backend = "auto"  # set per layer by wscswap_fast.nn.set_backend

    def __init__(self, num_features: int, negative_slope: float = 0.2, eps: float = 1e-5):
        super().__init__()
        self.num_features, self.negative_slope, self.eps = num_features, negative_slope, eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.num_features:
            raise ValueError(f"x must be (N, {self.num_features}, H, W), got {tuple(x.shape)}")
        if self.backend == "plain":
            return F.leaky_relu(F.instance_norm(x, eps=self.eps), self.negative_slope)
        return instance_norm_act(x, self.eps, self.negative_slope, backend=self.backend)

    def extra_repr(self) -> str:
        return f"{self.num_features}, negative_slope={self.negative_slope}, eps={self.eps}"
