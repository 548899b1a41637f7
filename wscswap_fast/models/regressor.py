"""3DMM coefficient regressor in Deep3DFaceRecon's ReconNetWrapper layout: a ResNet trunk
(torchvision names: conv1, bn1, layer1..4; no fc) and seven 1x1-conv heads `final_layers.{0..6}`
for identity, expression, texture, angles, lighting (27 SH), translation xy and z. A
Deep3DFaceRecon `epoch_*.pth` checkpoint's 'net_recon' entry loads key for key (strict).

Input: the aligned crop, RGB in [0, 1] (Deep3DFaceRecon feeds it unnormalised), resized to 224.
Output: (N, num_id + num_exp + num_tex + 3 + 27 + 3) in FaceCoefficients order.
"""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from ..nn.conv import Conv2d

from .iresnet import freeze, load_strict, read_state_dict

INPUT_SIZE = 224
ARCHS = {"resnet18": ("basic", (2, 2, 2, 2)), "resnet34": ("basic", (3, 4, 6, 3)),
         "resnet50": ("bottleneck", (3, 4, 6, 3)), "resnet101": ("bottleneck", (3, 4, 23, 3))}


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(out + (self.downsample(x) if self.downsample is not None else x))


class Bottleneck(nn.Module):
    """ResNet v1.5: the stride sits on the 3x3 conv."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + (self.downsample(x) if self.downsample is not None else x))


class ResNet(nn.Module):
    """ResNet trunk with torchvision's module names, ending in global average pooling:
    forward(x) -> (N, 512 * expansion, 1, 1)."""

    def __init__(self, arch: str = "resnet50"):
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(f"arch must be one of {sorted(ARCHS)}, got {arch!r}")
        kind, layers = ARCHS[arch]
        block = BasicBlock if kind == "basic" else Bottleneck
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.layer1 = self._make_layer(block, 64, layers[0], 1)
        self.layer2 = self._make_layer(block, 128, layers[1], 2)
        self.layer3 = self._make_layer(block, 256, layers[2], 2)
        self.layer4 = self._make_layer(block, 512, layers[3], 2)
        self.out_channels = 512 * block.expansion
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _make_layer(self, block, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride=stride, bias=False),
                                       nn.BatchNorm2d(planes * block.expansion))
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, stride=2, padding=1)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return F.adaptive_avg_pool2d(x, 1)


def _check_size(name: str, v, allow_zero: bool) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < (0 if allow_zero else 1):
        raise ValueError(f"{name} must be a {'non-negative' if allow_zero else 'positive'} int, got {v!r}")
    return v


class CoefficientRegressor(nn.Module):
    """forward(x (N,3,H,W) RGB [0,1]) -> (N, num_id + num_exp + num_tex + 33) coefficients in
    FaceCoefficients order (identity, expression, texture, angles, lighting, translation)."""

    def __init__(self, arch: str = "resnet50", num_id: int = 80, num_exp: int = 64, num_tex: int = 80):
        super().__init__()
        self.sizes = (_check_size("num_id", num_id, False), _check_size("num_exp", num_exp, False),
                      _check_size("num_tex", num_tex, True))
        self.backbone = ResNet(arch)
        c = self.backbone.out_channels
        # id, exp, tex, angles, lighting (SH 9 x RGB), translation xy, translation z
        heads = [num_id, num_exp, num_tex, 3, 27, 2, 1]
        with warnings.catch_warnings():  # num_tex = 0 (Surrey model): an empty head keeps the indices
            warnings.filterwarnings("ignore", message="Initializing zero-element tensors")
            self.final_layers = nn.ModuleList(nn.Conv2d(c, k, 1, bias=True) for k in heads)
        for m in self.final_layers:  # as Deep3DFaceRecon: the heads start at zero
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)

    @property
    def num_coefficients(self) -> int:
        return sum(self.sizes) + 33

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"x must be (N, 3, H, W) RGB in [0, 1], got "
                             f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
        if tuple(x.shape[-2:]) != (INPUT_SIZE, INPUT_SIZE):
            x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
        feat = self.backbone(x)
        # conv2d rejects zero output channels: an empty head (num_tex = 0) gives an empty part
        parts = [layer(feat) if layer.out_channels else feat.new_zeros(feat.shape[0], 0, 1, 1)
                 for layer in self.final_layers]
        return torch.flatten(torch.cat(parts, dim=1), 1)


def _seeded_init(module: nn.Module, seed: int) -> None:
    """Deterministic random weights (torch.Generator seeded with `seed`); the heads get small
    random weights instead of zeros so the random regressor's outputs depend on the image."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.numel() == 0:
                continue
            if p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=g) * (2.0 / p[0].numel()) ** 0.5
                        * (0.01 if name.startswith("final_layers") else 1.0))
            elif name.endswith("weight"):
                p.fill_(1.0)
            else:
                p.zero_()


def load_coefficient_regressor(checkpoint: str | None, arch: str = "resnet50", num_id: int = 80, num_exp: int = 64,
                               num_tex: int = 80, seed: int = 0) -> CoefficientRegressor:
    """A frozen CoefficientRegressor. `checkpoint`: a Deep3DFaceRecon `epoch_*.pth` (its
    'net_recon' entry; a bare state dict or .safetensors with the same keys works too); None
    gives seeded random weights with a warning."""
    model = CoefficientRegressor(arch, num_id, num_exp, num_tex)
    if checkpoint is None:
        warnings.warn(f"no Deep3DFaceRecon checkpoint given: the {arch} coefficient regressor has random weights "
                      f"(seed {seed}); the 3DMM non-identity losses will not be meaningful", stacklevel=2)
        _seeded_init(model, seed)
    else:
        state = read_state_dict(checkpoint, "Deep3DFaceRecon")
        if "net_recon" in state:
            state = state["net_recon"]
            if not isinstance(state, dict):
                raise ValueError(f"Deep3DFaceRecon checkpoint {checkpoint!r}: 'net_recon' is a "
                                 f"{type(state).__name__}, not a state dict")
        load_strict(model, state, f"Deep3DFaceRecon net_recon ({checkpoint})")
    return freeze(model)
