"""Discriminators: a multi-scale PatchGAN (hinge loss, feature matching) and the identity
adversary that tries to read the target's ArcFace embedding from E_face's code."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..nn.conv import Conv2d
from ..nn.instance_norm_act import InstanceNormLeakyReLU

LEAK = 0.2


def _positive_int(name: str, v) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise ValueError(f"{name} must be a positive int, got {v!r}")
    return v


class PatchDiscriminator(nn.Module):
    """One PatchGAN: `num_layers` 4x4 convs (stride 2 except the last), LeakyReLU, instance
    norm after the first (norm and LeakyReLU as one fused layer: no parameters, so the state
    dict is that of Conv2d, InstanceNorm2d, LeakyReLU), then a 4x4 conv to one logit per patch."""

    def __init__(self, in_channels: int = 3, base_channels: int = 64, num_layers: int = 4, max_channels: int = 512):
        super().__init__()
        layers = []
        cin = in_channels
        for i in range(num_layers):
            cout = min(base_channels * 2 ** i, max_channels)
            stride = 2 if i < num_layers - 1 else 1
            block = [Conv2d(cin, cout, 4, stride=stride, padding=1)]
            # no norm on the first layer (pix2pixHD)
            block.append(InstanceNormLeakyReLU(cout, LEAK) if i > 0 else nn.LeakyReLU(LEAK))
            layers.append(nn.Sequential(*block))
            cin = cout
        layers.append(Conv2d(cin, 1, 4, stride=1, padding=1))
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for layer in self.layers:
            x = layer(x)
            feats.append(x)
        return feats


class MultiScaleDiscriminator(nn.Module):
    """`num_scales` PatchGANs on the image and its 2x, 4x, ... average-pooled copies.

    forward(x (N, in_channels, H, W)) -> per scale (full resolution first) the list of
    intermediate features, the last entry being the patch logits (N, 1, h, w).
    """

    def __init__(self, in_channels: int = 3, num_scales: int = 3, base_channels: int = 64, num_layers: int = 4):
        super().__init__()
        for name, v in (("in_channels", in_channels), ("num_scales", num_scales), ("base_channels", base_channels),
                        ("num_layers", num_layers)):
            _positive_int(name, v)
        self.in_channels = in_channels
        self.num_layers = num_layers
        self.scales = nn.ModuleList(PatchDiscriminator(in_channels, base_channels, num_layers)
                                    for _ in range(num_scales))

    def forward(self, x: torch.Tensor) -> list[list[torch.Tensor]]:
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must be (N, {self.in_channels}, H, W), got "
                             f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
        # each PatchGAN halves the size num_layers-1 times, then two 4x4 convs take 1 pixel each
        smallest = 2 ** (self.num_layers - 1 + len(self.scales) - 1) * 3
        if min(x.shape[-2:]) < smallest:
            raise ValueError(f"x must be at least {smallest}x{smallest} for {len(self.scales)} scales of "
                             f"{self.num_layers} layers, got {tuple(x.shape)}")
        out = []
        for i, d in enumerate(self.scales):
            if i > 0:
                x = F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False)
            out.append(d(x))
        return out


class IdentityAdversary(nn.Module):
    """Predicts the target's identity embedding from E_face's code (the identity-removal
    adversary): strided convs down to 4x4, a linear layer, L2 normalisation.

    forward(face_code (N, code_channels, S, S), S >= 4) -> (N, id_dim) unit vectors.
    """

    def __init__(self, code_channels: int, id_dim: int = 512, hidden: int = 256):
        super().__init__()
        _positive_int("code_channels", code_channels)
        _positive_int("id_dim", id_dim)
        self.code_channels = code_channels
        self.convs = nn.Sequential(
            Conv2d(code_channels, hidden, 3, padding=1), nn.LeakyReLU(LEAK),
            nn.Conv2d(hidden, hidden, 4, stride=2, padding=1), nn.LeakyReLU(LEAK),
            nn.Conv2d(hidden, hidden, 4, stride=2, padding=1), nn.LeakyReLU(LEAK),
        )
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.fc = nn.Linear(hidden * 16, id_dim)

    def forward(self, face_code: torch.Tensor) -> torch.Tensor:
        if not isinstance(face_code, torch.Tensor) or face_code.dim() != 4 or face_code.shape[1] != self.code_channels:
            raise ValueError(f"face_code must be (N, {self.code_channels}, S, S), got "
                             f"{tuple(face_code.shape) if isinstance(face_code, torch.Tensor) else type(face_code).__name__}")
        x = self.pool(self.convs(face_code))
        return F.normalize(self.fc(torch.flatten(x, 1)).float(), dim=1)
