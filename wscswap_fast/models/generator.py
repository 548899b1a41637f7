"""The WSC-swap generator: two target encoders, an AIN decoder, face and mask heads, and the
mask-guided blend.

    face_code = E_face(Xt * Mt)                              (N, Cf, 16, 16), the compressed code
    bg_s      = E_bg(cat(Xt * (1 - dilate(Mt)), Mt))         one map per scale s = R/2 .. 16
    att_s     = lrelu(bg_proj_s(bg_s) + up_s(face_proj_s(face_code)))
    h         = AIN(face_code; z_id, att_16)                 the code enters normalised, through AIN
    h         = AIN-ResBlk_s(h; z_id, att_s), upsampling x2 between scales, 16 .. R
    F, M      = sigmoid(conv(h)), sigmoid(conv(h))
    Y         = blend(F, Xt, M) = M*F + (1-M)*Xt

There are no long skip connections: the only path from E_face into the decoder goes through
AIN (as the normalised activation, or as attribute modulations). The full-resolution block's
attributes use E_bg's R/2 map upsampled (E_bg's maps span R/2 .. 16); the background pixels
themselves come back through the blend.

`python -m wscswap_fast.models.generator` prints parameter counts and GFLOPs per resolution.
"""
from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from ..nn import AIN, Conv2d
from ..nn import set_backend as set_layer_backend
from ..ops.ain import reference as ain_reference
from ..ops.blend import reference as blend_reference
from ..pipeline.masks import dilate_mask

RESOLUTIONS = (128, 256, 512)
CODE_SIZE = 16
LEAK = 0.2
# "plain": no custom ops at all, the ops' plain-PyTorch definitions inline (torch.compile can
# fuse through them; ONNX export can trace them). Every other name is an ops backend.
PLAIN = "plain"


def _default_channels(scale: int, width: float) -> int:
    """Channels at a spatial scale: 4096/scale capped at 256 (16 at 256^2, 128 at 32^2, 256 at 16^2),
    so each scale costs about the same conv FLOPs; times `width`, at least 4."""
    return max(4, int(round(min(256, 4096 // scale) * width)))


@dataclasses.dataclass
class GeneratorConfig:
    """Sizes of the generator. `channels[i]` are the channels at scale resolution / 2**i
    (i = 0 .. log2(resolution / code_size)), shared by E_face, E_bg and the decoder."""

    resolution: int = 256
    id_dim: int = 512
    code_size: int = CODE_SIZE
    code_channels: int = 64
    channels: list[int] = dataclasses.field(default_factory=lambda: [16, 32, 64, 128, 256])
    mask_dilation: int = 8  # pixels the target mask grows before the face is blanked for E_bg
    width: float = 1.0  # informative: the multiplier the channels were built with

    def __post_init__(self):
        for name in ("resolution", "id_dim", "code_size", "code_channels", "mask_dilation"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < (0 if name == "mask_dilation" else 1):
                raise ValueError(f"GeneratorConfig.{name} must be a {'non-negative' if name == 'mask_dilation' else 'positive'} "
                                 f"int, got {v!r}")
        ratio = self.resolution / self.code_size
        if ratio < 2 or ratio != 2 ** round(math.log2(ratio)):
            raise ValueError(f"GeneratorConfig.resolution must be code_size ({self.code_size}) times a power of two >= 2 "
                             f"(e.g. 128, 256, 512), got {self.resolution}")
        self.channels = list(self.channels)
        if len(self.channels) != self.num_scales or not all(isinstance(c, int) and c > 0 for c in self.channels):
            raise ValueError(f"GeneratorConfig.channels must be {self.num_scales} positive ints (scales {self.scales}), "
                             f"got {self.channels!r}")

    @property
    def num_scales(self) -> int:
        return int(round(math.log2(self.resolution / self.code_size))) + 1

    @property
    def scales(self) -> list[int]:
        """Spatial sizes from the resolution down to the code size."""
        return [self.resolution >> i for i in range(self.num_scales)]

    @classmethod
    def for_resolution(cls, resolution: int, width: float = 1.0) -> "GeneratorConfig":
        """The default config at 128, 256 or 512 (any code_size * 2**k works); `width` scales
        every channel count (tests use 0.125)."""
        if not isinstance(width, (int, float)) or isinstance(width, bool) or not width > 0:
            raise ValueError(f"width must be a positive number, got {width!r}")
        if not isinstance(resolution, int) or isinstance(resolution, bool) or resolution < 2 * CODE_SIZE:
            raise ValueError(f"resolution must be an int >= {2 * CODE_SIZE} (128, 256 or 512), got {resolution!r}")
        n = int(round(math.log2(resolution / CODE_SIZE))) + 1
        return cls(resolution=resolution, code_channels=max(4, int(round(64 * width))),
                   channels=[_default_channels(resolution >> i, width) for i in range(n)],
                   mask_dilation=max(1, resolution // 32), width=float(width))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "GeneratorConfig":
        if not isinstance(d, dict):
            raise TypeError(f"GeneratorConfig.from_dict needs a dict, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown GeneratorConfig keys {unknown}; known: {sorted(known)}")
        return cls(**d)


class GeneratorOutput(NamedTuple):
    result: torch.Tensor  # Y (N,3,R,R)
    face: torch.Tensor  # F (N,3,R,R)
    mask: torch.Tensor  # M (N,1,R,R)
    face_code: torch.Tensor  # (N,Cf,16,16)


def _conv(cin: int, cout: int, stride: int = 1, bias: bool = True) -> nn.Conv2d:
    return Conv2d(cin, cout, 3, stride=stride, padding=1, bias=bias)


class _AIN(AIN):
    """AIN that also runs the op's plain-PyTorch definition inline for the 'plain' backend."""

    def forward(self, h, z_id, att, *, return_mask: bool = False, backend: str = "auto"):
        if backend != PLAIN:
            return super().forward(h, z_id, att, return_mask=return_mask, backend=backend)
        if att.shape[-2:] != h.shape[-2:]:
            raise ValueError(f"att must have h's spatial size {tuple(h.shape[-2:])}, got {tuple(att.shape)}")
        out, m = ain_reference(*self.op_inputs(h, z_id, att), eps=self.eps)
        return (out, m) if return_mask else out


class FaceEncoder(nn.Module):
    """E_face: the masked face down to the compressed (Cf, 16, 16) code."""

    def __init__(self, cfg: GeneratorConfig):
        super().__init__()
        ch = cfg.channels
        self.stem = _conv(3, ch[0])
        self.down = nn.ModuleList(_conv(ch[i], ch[i + 1], stride=2) for i in range(cfg.num_scales - 1))
        self.refine = _conv(ch[-1], ch[-1])
        self.to_code = nn.Conv2d(ch[-1], cfg.code_channels, 1)

    def forward(self, masked_face: torch.Tensor) -> torch.Tensor:
        x = F.leaky_relu(self.stem(masked_face), LEAK)
        for conv in self.down:
            x = F.leaky_relu(conv(x), LEAK)
        x = F.leaky_relu(self.refine(x), LEAK)
        return self.to_code(x)


class BackgroundEncoder(nn.Module):
    """E_bg: the target with the (dilated) face blanked, plus the mask, to pixel-level maps at
    R/2 .. 16 (channels[1:])."""

    def __init__(self, cfg: GeneratorConfig):
        super().__init__()
        ch = cfg.channels
        self.stem = _conv(4, ch[0])
        self.down = nn.ModuleList(_conv(ch[i], ch[i + 1], stride=2) for i in range(cfg.num_scales - 1))

    def forward(self, background: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
        x = F.leaky_relu(self.stem(torch.cat([background, mask.to(background.dtype)], dim=1)), LEAK)
        maps = []
        for conv in self.down:
            x = F.leaky_relu(conv(x), LEAK)
            maps.append(x)
        return maps  # scales R/2, R/4, ..., code_size


class AINResBlock(nn.Module):
    """AAD-ResBlk-like: AIN -> ReLU -> conv3x3, twice, plus a residual. The residual is the
    identity when channels match and `learned_skip` is False, else AIN -> ReLU -> conv3x3 (so a
    block can take a tensor that must only be seen through AIN).

    conv1 has no bias: it feeds only ain2's instance norm, where a per-channel constant cancels
    (its gradient would be zero). conv2/conv_skip have one only with `out_bias` (the last block,
    whose output goes to the heads): elsewhere their output is instance-normalised by the next
    block, and the last block's bias supplies any constant the identity residuals carry."""

    def __init__(self, cin: int, cout: int, id_dim: int, att_channels: int, learned_skip: bool = False,
                 out_bias: bool = False):
        super().__init__()
        self.ain1 = _AIN(cin, id_dim, att_channels)
        self.conv1 = _conv(cin, cout, bias=False)
        self.ain2 = _AIN(cout, id_dim, att_channels)
        self.conv2 = _conv(cout, cout, bias=out_bias)
        self.learned_skip = learned_skip or cin != cout
        if self.learned_skip:
            self.ain_skip = _AIN(cin, id_dim, att_channels)
            self.conv_skip = _conv(cin, cout, bias=False)

    def forward(self, h: torch.Tensor, z_id: torch.Tensor, att: torch.Tensor, backend: str = "auto") -> torch.Tensor:
        x = self.conv1(F.relu(self.ain1(h, z_id, att, backend=backend)))
        x = self.conv2(F.relu(self.ain2(x, z_id, att, backend=backend)))
        skip = self.conv_skip(F.relu(self.ain_skip(h, z_id, att, backend=backend))) if self.learned_skip else h
        return x + skip


class Decoder(nn.Module):
    """AIN blocks from the code size up to the resolution. Block i works at scale
    code_size * 2**i; its attribute map mixes E_bg's map and E_face's code at that scale."""

    def __init__(self, cfg: GeneratorConfig):
        super().__init__()
        ch = cfg.channels[::-1]  # code_size .. R
        bg_ch = cfg.channels[1:][::-1]  # E_bg maps code_size .. R/2
        self.num_blocks = len(ch)
        self.face_proj = nn.ModuleList(nn.Conv2d(cfg.code_channels, c, 1) for c in ch)
        # the full-resolution block reuses E_bg's R/2 map (upsampled)
        self.bg_proj = nn.ModuleList(nn.Conv2d(bg_ch[min(i, len(bg_ch) - 1)], c, 1) for i, c in enumerate(ch))
        cins = [cfg.code_channels] + ch[:-1]
        # block 0 gets the raw code: learned (AIN) skip, so the code reaches h only through AIN
        self.blocks = nn.ModuleList(AINResBlock(cin, c, cfg.id_dim, c, learned_skip=(i == 0),
                                                out_bias=(i == len(ch) - 1))
                                    for i, (cin, c) in enumerate(zip(cins, ch)))

    def forward(self, face_code: torch.Tensor, z_id: torch.Tensor, bg_maps: list[torch.Tensor],
                backend: str = "auto") -> torch.Tensor:
        bg = bg_maps[::-1]  # code_size .. R/2
        h = face_code
        for i, block in enumerate(self.blocks):
            if i > 0:
                h = F.interpolate(h, scale_factor=2, mode="bilinear", align_corners=False)
            size = h.shape[-2:]
            b = bg[min(i, len(bg) - 1)]
            b = self.bg_proj[i](b)
            if b.shape[-2:] != size:
                b = F.interpolate(b, size=size, mode="bilinear", align_corners=False)
            # 1x1 conv then upsample == upsample then 1x1 conv, at 1/scale^2 the cost
            f = self.face_proj[i](face_code)
            if f.shape[-2:] != size:
                f = F.interpolate(f, size=size, mode="bilinear", align_corners=False)
            att = F.leaky_relu(b + f, LEAK)
            h = block(h, z_id, att, backend=backend)
        return h


class Generator(nn.Module):
    """WSC-swap generator. forward(xt (N,3,R,R) in [0,1], mt (N,1,R,R) in [0,1], z_id (N,id_dim))
    -> GeneratorOutput(result, face, mask, face_code). `backend` is used for every fused op."""

    def __init__(self, cfg: GeneratorConfig):
        super().__init__()
        if not isinstance(cfg, GeneratorConfig):
            raise TypeError(f"cfg must be a GeneratorConfig, got {type(cfg).__name__}")
        self.cfg = cfg
        self.backend = "auto"
        self.face_encoder = FaceEncoder(cfg)
        self.background_encoder = BackgroundEncoder(cfg)
        self.decoder = Decoder(cfg)
        c = cfg.channels[0]
        self.face_head = _conv(c, 3)
        self.mask_head = _conv(c, 1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """He init for the LeakyReLU convs, zero biases, and AIN modulations that start at
        gamma = 1 (out = hn + small terms). PyTorch's default conv init shrinks the activations
        layer by layer until each channel is almost constant, and instance-normalising such
        channels amplifies fp32 rounding (gradients then differ by 1e-3 between two exact
        fp32 evaluations)."""
        ains = [m for m in self.modules() if isinstance(m, AIN)]
        inside_ain = {id(c) for m in ains for c in m.modules()}
        for m in self.modules():
            if isinstance(m, nn.Conv2d) and id(m) not in inside_ain:
                nn.init.kaiming_normal_(m.weight, a=LEAK, nonlinearity="leaky_relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        for m in ains:
            nn.init.ones_(m.att_gamma.bias)
            nn.init.ones_(m.id_gamma.bias)

    def set_backend(self, name: str) -> "Generator":
        """The backend of every fused op call: 'auto', 'cuda', 'triton', 'cpu', 'reference', or
        'plain' (the ops' plain-PyTorch definitions inline, no custom ops: for torch.compile
        to see through and for export)."""
        choices = ops.BACKENDS + ("auto", PLAIN)
        if name not in choices:
            raise ValueError(f"backend must be one of {choices}, got {name!r}")
        self.backend = name
        set_layer_backend(self, name)  # its 3x3 convolutions (Winograd where it pays)
        return self

    def _check(self, xt, mt, z_id=None):
        r = self.cfg.resolution
        if not isinstance(xt, torch.Tensor) or xt.dim() != 4 or tuple(xt.shape[1:]) != (3, r, r):
            raise ValueError(f"xt must be (N, 3, {r}, {r}), got {tuple(xt.shape) if isinstance(xt, torch.Tensor) else type(xt).__name__}")
        if not isinstance(mt, torch.Tensor) or tuple(mt.shape) != (xt.shape[0], 1, r, r):
            raise ValueError(f"mt must be ({xt.shape[0]}, 1, {r}, {r}), got "
                             f"{tuple(mt.shape) if isinstance(mt, torch.Tensor) else type(mt).__name__}")
        if not xt.is_floating_point() or not mt.is_floating_point():
            raise TypeError(f"xt and mt must be floating point, got {xt.dtype} and {mt.dtype}")
        if z_id is not None and (not isinstance(z_id, torch.Tensor) or tuple(z_id.shape) != (xt.shape[0], self.cfg.id_dim)):
            raise ValueError(f"z_id must be ({xt.shape[0]}, {self.cfg.id_dim}), got "
                             f"{tuple(z_id.shape) if isinstance(z_id, torch.Tensor) else type(z_id).__name__}")

    def encode_face(self, xt: torch.Tensor, mt: torch.Tensor) -> torch.Tensor:
        """E_face on the masked face xt*mt only: (N, code_channels, 16, 16)."""
        self._check(xt, mt)
        return self.face_encoder(xt * mt.to(xt.dtype))

    def forward(self, xt: torch.Tensor, mt: torch.Tensor, z_id: torch.Tensor) -> GeneratorOutput:
        self._check(xt, mt, z_id)
        mt = mt.to(xt.dtype)
        face_code = self.face_encoder(xt * mt)
        bg_maps = self.background_encoder(xt * (1 - dilate_mask(mt, self.cfg.mask_dilation)), mt)
        h = F.leaky_relu(self.decoder(face_code, z_id, bg_maps, backend=self.backend), LEAK)
        face = torch.sigmoid(self.face_head(h))
        mask = torch.sigmoid(self.mask_head(h))
        # under autocast the heads give bf16/fp16: the blend runs in the face's dtype
        if self.backend == PLAIN:
            result = blend_reference(face, xt.to(face.dtype), mask.to(face.dtype))
        else:
            result = ops.blend(face, xt.to(face.dtype), mask.to(face.dtype), backend=self.backend)
        return GeneratorOutput(result, face, mask, face_code)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def forward_gflops(cfg: GeneratorConfig) -> float:
    """GFLOPs (2 per multiply-add) of one batch-1 forward, by torch.utils.flop_counter (convs,
    linears and matmuls; the fused elementwise ops are not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    g = Generator(cfg).eval().set_backend("reference")
    r = cfg.resolution
    xt, mt, z = torch.rand(1, 3, r, r), torch.rand(1, 1, r, r), F.normalize(torch.randn(1, cfg.id_dim), dim=1)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        g(xt, mt, z)
    return counter.get_total_flops() / 1e9


def size_table(width: float = 1.0, resolutions=RESOLUTIONS) -> str:
    """Markdown table: parameters and forward GFLOPs per resolution (batch 1)."""
    lines = ["| resolution | parameters | GFLOPs (fwd, batch 1) |", "|---|---|---|"]
    for r in resolutions:
        cfg = GeneratorConfig.for_resolution(r, width)
        lines.append(f"| {r}x{r} | {count_parameters(Generator(cfg)) / 1e6:.2f} M | {forward_gflops(cfg):.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Generator parameter counts and GFLOPs per resolution.")
    parser.add_argument("--width", type=float, default=1.0)
    print(size_table(parser.parse_args().width))
