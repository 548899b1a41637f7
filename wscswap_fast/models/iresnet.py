"""ArcFace identity encoder: the iresnet backbones of insightface's arcface_torch, with the same
module, parameter and buffer names and shapes, so published `backbone.pth` files load with
strict=True (tests/models/data/iresnet_keys.json records the expected key/shape lists).

Layout (facts of arcface_torch's definition): conv1 3x3/64 (no bias), bn1, prelu; layer1..4 of
IBasicBlocks (bn1, conv1 3x3, bn2, prelu, conv2 3x3 with the stride, bn3; downsample =
conv1x1 + BN on the first block of each layer, every layer strides 2); bn2, dropout, fc from
512*7*7 (112x112 inputs), features = BatchNorm1d(512). Every BN has eps 1e-5.
"""
from __future__ import annotations

import os
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from ..nn.conv import Conv2d

ARCFACE_SIZE = 112
LAYERS = {"iresnet18": (2, 2, 2, 2), "iresnet34": (3, 4, 6, 3), "iresnet50": (3, 4, 14, 3),
          "iresnet100": (3, 13, 30, 3)}
BN_EPS = 1e-5


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


class IBasicBlock(nn.Module):
    """BN -> conv3x3 -> BN -> PReLU -> conv3x3 (strided) -> BN, plus the (downsampled) input."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=BN_EPS)
        self.conv1 = _conv3x3(inplanes, planes)
        self.bn2 = nn.BatchNorm2d(planes, eps=BN_EPS)
        self.prelu = nn.PReLU(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn3 = nn.BatchNorm2d(planes, eps=BN_EPS)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        return out + (self.downsample(x) if self.downsample is not None else x)


class IResNet(nn.Module):
    """insightface arcface_torch IResNet. forward(x (N,3,112,112) normalised to [-1,1]) -> (N,
    num_features), not normalised. fp16=True runs the trunk under CUDA autocast, as
    arcface_torch does; fc and features stay fp32."""

    fc_scale = 7 * 7

    def __init__(self, layers: tuple[int, int, int, int], dropout: float = 0.0, num_features: int = 512,
                 fp16: bool = False):
        super().__init__()
        if len(layers) != 4 or not all(isinstance(n, int) and n > 0 for n in layers):
            raise ValueError(f"layers must be 4 positive ints, got {layers!r}")
        self.fp16 = fp16
        self.inplanes = 64
        self.conv1 = _conv3x3(3, 64)
        self.bn1 = nn.BatchNorm2d(64, eps=BN_EPS)
        self.prelu = nn.PReLU(64)
        self.layer1 = self._make_layer(64, layers[0])
        self.layer2 = self._make_layer(128, layers[1])
        self.layer3 = self._make_layer(256, layers[2])
        self.layer4 = self._make_layer(512, layers[3])
        self.bn2 = nn.BatchNorm2d(512, eps=BN_EPS)
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(512 * self.fc_scale, num_features)
        self.features = nn.BatchNorm1d(num_features, eps=BN_EPS)
        nn.init.constant_(self.features.weight, 1.0)
        self.features.weight.requires_grad = False  # as arcface_torch: the feature scale is fixed
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0, 0.1)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_layer(self, planes: int, blocks: int) -> nn.Sequential:
        # every layer strides 2, so the first block always has a projection shortcut
        downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes, 1, stride=2, bias=False),
                                   nn.BatchNorm2d(planes, eps=BN_EPS))
        layers = [IBasicBlock(self.inplanes, planes, 2, downsample)]
        self.inplanes = planes
        layers += [IBasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cuda", enabled=self.fp16 and x.is_cuda):
            x = self.prelu(self.bn1(self.conv1(x)))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            x = self.dropout(torch.flatten(self.bn2(x), 1))
        x = self.fc(x.float() if self.fp16 else x)
        return self.features(x)


def iresnet18(**kwargs) -> IResNet:
    return IResNet(LAYERS["iresnet18"], **kwargs)


def iresnet34(**kwargs) -> IResNet:
    return IResNet(LAYERS["iresnet34"], **kwargs)


def iresnet50(**kwargs) -> IResNet:
    return IResNet(LAYERS["iresnet50"], **kwargs)


def iresnet100(**kwargs) -> IResNet:
    return IResNet(LAYERS["iresnet100"], **kwargs)


class IdentityEncoder(nn.Module):
    """z_id = normalize(ArcFace(crop)). forward(x (N,3,H,W) RGB [0,1] aligned crop of any size)
    -> (N, 512) unit vectors; the crop is resized to 112x112 (bilinear) and mapped to [-1, 1]."""

    def __init__(self, backbone: IResNet):
        super().__init__()
        if not isinstance(backbone, nn.Module):
            raise TypeError(f"backbone must be an nn.Module, got {type(backbone).__name__}")
        self.backbone = backbone

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"x must be (N, 3, H, W) RGB in [0, 1], got "
                             f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
        if tuple(x.shape[-2:]) != (ARCFACE_SIZE, ARCFACE_SIZE):
            x = F.interpolate(x, size=(ARCFACE_SIZE, ARCFACE_SIZE), mode="bilinear", align_corners=False,
                              antialias=False)
        return F.normalize(self.backbone((x - 0.5) / 0.5).float(), dim=1)


def read_state_dict(path: str, what: str) -> dict:
    """A state dict from a torch checkpoint (weights_only) or a .safetensors file."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{what} checkpoint must be a path, got {type(path).__name__}")
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} checkpoint {path!r} does not exist or is not a file")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path, device="cpu")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - report which file and why
        raise ValueError(f"{what} checkpoint {path!r} could not be read as a weights-only torch file: {e}") from e
    if not isinstance(obj, dict):
        raise ValueError(f"{what} checkpoint {path!r} holds a {type(obj).__name__}, not a state dict")
    return obj


def _describe(v) -> str:
    return str(tuple(v.shape)) if isinstance(v, torch.Tensor) else f"(a {type(v).__name__}, not a tensor)"


def load_strict(module: nn.Module, state: dict, what: str) -> None:
    """load_state_dict(strict=True) with one ValueError that names every missing, unexpected
    and wrong-shaped key. A missing BatchNorm num_batches_tracked is allowed (old checkpoints)."""
    own = module.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    extra = [k for k in state if k not in own]
    bad = [f"{k} {_describe(state[k])} (expected {tuple(own[k].shape)})" for k in own
           if k in state and (not isinstance(state[k], torch.Tensor) or state[k].shape != own[k].shape)]
    if missing or extra or bad:
        parts = [f"missing keys {missing}" if missing else "", f"unexpected keys {extra}" if extra else "",
                 f"wrong shapes {bad}" if bad else ""]
        raise ValueError(f"{what} state dict does not match: " + "; ".join(p for p in parts if p))
    full = dict(state)
    for k, v in own.items():
        if k not in full:  # num_batches_tracked of checkpoints saved without it
            full[k] = v
    module.load_state_dict(full, strict=True)


def freeze(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        p.requires_grad_(False)
    return module.eval()


def seeded_init(module: nn.Module, seed: int) -> None:
    """Re-draw every parameter from a torch.Generator seeded with `seed` (same values on every
    machine, so inference can rebuild the training-time random encoder)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.dim() > 1:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g) * (2.0 / fan_in) ** 0.5)
            elif name.endswith("weight") and not isinstance(_owner(module, name), nn.PReLU):
                p.fill_(1.0)
            elif isinstance(_owner(module, name), nn.PReLU):
                p.fill_(0.25)
            else:
                p.zero_()


def _owner(module: nn.Module, name: str) -> nn.Module:
    return module.get_submodule(name.rsplit(".", 1)[0]) if "." in name else module


def load_identity_encoder(checkpoint: str | None, arch: str = "iresnet50", seed: int = 0) -> IdentityEncoder:
    """A frozen (eval, requires_grad False) IdentityEncoder. `checkpoint`: an arcface_torch
    backbone.pth (or .safetensors) for `arch`; None gives seeded random weights with a warning."""
    if arch not in LAYERS:
        raise ValueError(f"arch must be one of {sorted(LAYERS)}, got {arch!r}")
    backbone = IResNet(LAYERS[arch])
    if checkpoint is None:
        warnings.warn(f"no ArcFace checkpoint given: the {arch} identity encoder has random weights (seed {seed}); "
                      "identity will not transfer", stacklevel=2)
        seeded_init(backbone, seed)
    else:
        load_strict(backbone, read_state_dict(checkpoint, f"ArcFace {arch}"), f"ArcFace {arch} ({checkpoint})")
    return freeze(IdentityEncoder(backbone))
