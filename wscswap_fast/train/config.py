"""The training configuration: nested dataclasses, loaded from YAML or JSON plus ``section.key=value``
overrides, validated, and saved atomically beside the checkpoints.

Every value is typed by its dataclass field: file values and command-line strings are converted to
that type (``bool``: true/false/yes/no/on/off/1/0; ``Optional``: none/null -> None; tuples:
``0.5,0.99`` or ``[0.5, 0.99]``). Unknown sections or keys, and values that do not convert or are out
of range, raise ``ValueError`` naming them.
"""
from __future__ import annotations

import dataclasses
import json
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional
from ..atomic import atomic_write_text

RESOLUTIONS = (128, 256, 512)
AMP_MODES = ("none", "bf16", "fp16")
BACKENDS = ("auto", "cuda", "triton", "cpu", "reference")
MEMORY_FORMATS = ("channels_last", "contiguous")
# the architectures wscswap_fast.models.iresnet / .regressor build (kept here so the config imports no model code)
IDENTITY_ARCHS = ("iresnet18", "iresnet34", "iresnet50", "iresnet100")
REGRESSOR_ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101")


def _default_morphable_model() -> Optional[str]:
    """../shared/data/morphable/sfm beside the checkout, when it is there."""
    path = Path(__file__).resolve().parents[3] / "shared" / "data" / "morphable" / "sfm"
    return str(path) if path.is_dir() else None


@dataclass
class DataConfig:
    """The image folder and how batches are made from it (see :class:`wscswap_fast.train.data.FaceFolder`)."""
    root: str = ""  # folder of aligned face crops (flat, or one sub-folder per identity)
    mask_root: Optional[str] = None  # masks with the same file stems; None -> dlib 68-point hull masks
    resolution: int = 256  # 128, 256 or 512: crops are resized to this
    same_identity_ratio: float = 0.2  # fraction of pairs whose source and target share identity
    flip: bool = True  # random horizontal flips
    color_jitter: float = 0.1  # strength of brightness/contrast/saturation jitter (0 = off)
    workers: int = 2  # DataLoader worker processes (0 = load in the main process)
    batch_size: int = 4  # per process
    cache_dir: Optional[str] = None  # hull-mask cache; None -> ~/.cache/wscswap_fast
    mask_forehead: float = 0.2  # hull masks: forehead extension above the brows, fraction of face height
    mask_blur: int = 0  # hull masks: Gaussian blur radius in pixels at the training resolution (0 = hard edge)


@dataclass
class ModelConfig:
    """Network sizes and the frozen encoders' checkpoints."""
    generator_width: float = 1.0  # scales every generator channel count (tests use 0.125)
    discriminator_channels: int = 64  # first-layer channels of each PatchGAN scale
    discriminator_scales: int = 3
    discriminator_layers: int = 4
    identity_arch: str = "iresnet50"
    identity_checkpoint: Optional[str] = None  # arcface_torch backbone.pth; None -> seeded random (warning)
    regressor_arch: str = "resnet50"
    regressor_checkpoint: Optional[str] = None  # Deep3DFaceRecon epoch_*.pth; None -> seeded random (warning)
    morphable_model: Optional[str] = field(default_factory=_default_morphable_model)  # SFM dir or BFM .mat


@dataclass
class LossConfig:
    """Loss weights (DESIGN.md's defaults)."""
    identity: float = 5.0
    reconstruction: float = 10.0
    adversarial: float = 1.0
    feature_matching: float = 10.0
    identity_removal: float = 1.0
    expression: float = 1.0  # 3DMM non-identity terms
    pose: float = 1.0
    lighting: float = 1.0
    landmark: float = 0.5
    photometric: float = 0.0  # optional; needs a morphable model with albedo
    mask: float = 1.0
    mask_dilate: int = 4  # pixels (at the training resolution) the target mask is dilated by for the mask loss


@dataclass
class OptimConfig:
    """Adam for G and D, the generator's EMA and mixed precision."""
    lr_g: float = 2e-4
    lr_d: float = 2e-4
    betas: tuple[float, float] = (0.0, 0.99)
    ema_decay: float = 0.999
    amp: str = "none"  # "none", "bf16" or "fp16" (AMP runs on GPU only)


@dataclass
class RunConfig:
    """Where a run writes, how long it runs and how often it logs and saves."""
    out_dir: str = "runs/wscswap"
    steps: int = 1000
    log_every: int = 10
    image_every: int = 100  # 0 = no image grids
    save_every: int = 500  # 0 = only the final checkpoint
    keep_checkpoints: int = 3  # the newest K step directories are kept
    seed: int = 0
    device: str = "auto"  # "auto", "cpu", "cuda" or "cuda:N"
    backend: str = "auto"  # fused-op backend: auto, cuda, triton, cpu, reference
    # activations and conv weights: channels_last (NHWC) is oneDNN's and cuDNN's native conv layout
    # (a 256^2 CPU step ~10% faster than contiguous NCHW); every fused op takes both
    memory_format: str = "channels_last"


@dataclass
class TrainConfig:
    """The whole training configuration; ``TrainConfig()`` holds every default."""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict:
        """A JSON-able nested dict (tuples become lists)."""
        return {s.name: {k: list(v) if isinstance(v, tuple) else v
                         for k, v in dataclasses.asdict(getattr(self, s.name)).items()}
                for s in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """The inverse of :meth:`to_dict`; missing sections or keys keep their defaults. Validated."""
        cfg = cls()
        if not isinstance(d, dict):
            raise ValueError(f"a training config must be a mapping of sections, got {type(d).__name__}")
        sections = _sections()
        unknown = sorted(str(k) for k in d if k not in sections)
        if unknown:
            raise ValueError(f"unknown config section(s) {unknown}; sections are {sorted(sections)}")
        for name, values in d.items():
            if values is None:
                continue
            if not isinstance(values, dict):
                raise ValueError(f"config section {name!r} must be a mapping of keys, got {type(values).__name__}")
            hints = _hints(sections[name])
            bad = sorted(str(k) for k in values if k not in hints)
            if bad:
                raise ValueError(f"unknown key(s) {[f'{name}.{k}' for k in bad]}; "
                                 f"{name} has {sorted(hints)}")
            section = getattr(cfg, name)
            for key, value in values.items():
                setattr(section, key, _convert(value, hints[key], f"{name}.{key}"))
        cfg.validate()
        return cfg

    def validate(self) -> "TrainConfig":
        """Raise ValueError naming the first key whose value is out of range; return self."""
        d, m, lo, o, r = self.data, self.model, self.loss, self.optim, self.run

        def check(ok: bool, key: str, value, want: str):
            if not ok:
                raise ValueError(f"{key}={value!r}: must be {want}")

        check(d.resolution in RESOLUTIONS, "data.resolution", d.resolution, f"one of {RESOLUTIONS}")
        check(0.0 <= d.same_identity_ratio <= 1.0, "data.same_identity_ratio", d.same_identity_ratio, "in [0, 1]")
        check(0.0 <= d.color_jitter <= 1.0, "data.color_jitter", d.color_jitter, "in [0, 1]")
        check(d.workers >= 0, "data.workers", d.workers, ">= 0")
        check(d.batch_size >= 1, "data.batch_size", d.batch_size, ">= 1")
        check(0.0 <= d.mask_forehead <= 1.0, "data.mask_forehead", d.mask_forehead, "in [0, 1]")
        check(d.mask_blur >= 0, "data.mask_blur", d.mask_blur, ">= 0")
        check(m.generator_width > 0, "model.generator_width", m.generator_width, "> 0")
        check(m.discriminator_channels >= 1, "model.discriminator_channels", m.discriminator_channels, ">= 1")
        check(m.discriminator_scales >= 1, "model.discriminator_scales", m.discriminator_scales, ">= 1")
        check(m.discriminator_layers >= 1, "model.discriminator_layers", m.discriminator_layers, ">= 1")
        check(m.identity_arch in IDENTITY_ARCHS, "model.identity_arch", m.identity_arch, f"one of {IDENTITY_ARCHS}")
        check(m.regressor_arch in REGRESSOR_ARCHS, "model.regressor_arch", m.regressor_arch,
              f"one of {REGRESSOR_ARCHS}")
        for f in dataclasses.fields(lo):
            v = getattr(lo, f.name)
            check(v >= 0, f"loss.{f.name}", v, ">= 0")
        check(o.lr_g > 0, "optim.lr_g", o.lr_g, "> 0")
        check(o.lr_d > 0, "optim.lr_d", o.lr_d, "> 0")
        check(len(o.betas) == 2 and all(0.0 <= b < 1.0 for b in o.betas), "optim.betas", o.betas,
              "two numbers in [0, 1)")
        check(0.0 <= o.ema_decay <= 1.0, "optim.ema_decay", o.ema_decay, "in [0, 1]")
        check(o.amp in AMP_MODES, "optim.amp", o.amp, f"one of {AMP_MODES}")
        check(bool(r.out_dir), "run.out_dir", r.out_dir, "a non-empty path")
        check(r.steps >= 0, "run.steps", r.steps, ">= 0")
        check(r.log_every >= 1, "run.log_every", r.log_every, ">= 1")
        check(r.image_every >= 0, "run.image_every", r.image_every, ">= 0 (0 = never)")
        check(r.save_every >= 0, "run.save_every", r.save_every, ">= 0 (0 = only at the end)")
        check(r.keep_checkpoints >= 1, "run.keep_checkpoints", r.keep_checkpoints, ">= 1")
        check(r.seed >= 0, "run.seed", r.seed, ">= 0")
        check(_valid_device(r.device), "run.device", r.device, "auto, cpu, cuda or cuda:N")
        check(r.backend in BACKENDS, "run.backend", r.backend, f"one of {BACKENDS}")
        check(r.memory_format in MEMORY_FORMATS, "run.memory_format", r.memory_format, f"one of {MEMORY_FORMATS}")
        return self


def _valid_device(name: str) -> bool:
    if name in ("auto", "cpu", "cuda"):
        return True
    return name.startswith("cuda:") and name[5:].isdigit()


def _sections() -> dict[str, type]:
    return {name: tp for name, tp in _hints(TrainConfig).items()}


def _hints(cls: type) -> dict[str, Any]:
    """Field name -> resolved type of a dataclass (annotations are strings under `from __future__`)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")
_NONE = ("none", "null", "~", "")


def _convert(value: Any, tp: Any, key: str) -> Any:
    """value (a parsed file value or a command-line string) as type tp; ValueError naming key."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union or (origin is not None and type(None) in args):  # Optional[X]
        inner = [a for a in args if a is not type(None)]
        if value is None or (isinstance(value, str) and value.strip().lower() in _NONE):
            return None
        return _convert(value, inner[0], key)
    if origin is tuple:
        items = value
        if isinstance(value, str):
            text = value.strip()
            if text[:1] in "([" and text[-1:] in ")]":
                text = text[1:-1]
            items = [t for t in (s.strip() for s in text.split(",")) if t]
        if not isinstance(items, (list, tuple)):
            raise ValueError(f"{key}={value!r}: expected a list of {len(args)} values")
        if len(items) != len(args):
            raise ValueError(f"{key}={value!r}: expected {len(args)} values, got {len(items)}")
        return tuple(_convert(v, a, key) for v, a in zip(items, args))
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
            return value.strip().lower() in _TRUE
        raise ValueError(f"{key}={value!r}: expected a boolean (true/false)")
    if tp is int:
        if isinstance(value, bool):
            raise ValueError(f"{key}={value!r}: expected an integer, got a boolean")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
        raise ValueError(f"{key}={value!r}: expected an integer")
    if tp is float:
        if isinstance(value, bool):
            raise ValueError(f"{key}={value!r}: expected a number, got a boolean")
        if isinstance(value, (int, float)):
            out = float(value)
        elif isinstance(value, str):
            try:
                out = float(value.strip())
            except ValueError:
                raise ValueError(f"{key}={value!r}: expected a number") from None
        else:
            raise ValueError(f"{key}={value!r}: expected a number")
        if out != out or out in (float("inf"), float("-inf")):
            raise ValueError(f"{key}={value!r}: expected a finite number")
        return out
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # e.g. a YAML folder name that parses as a number
        raise ValueError(f"{key}={value!r}: expected a string")
    raise TypeError(f"{key}: unsupported field type {tp!r}")  # a programming error in this file


def apply_overrides(cfg: TrainConfig, overrides: Iterable[str]) -> TrainConfig:
    """A copy of cfg with each ``section.key=value`` applied (typed by the field), validated."""
    d = cfg.to_dict()
    sections = _sections()
    for item in overrides:
        if not isinstance(item, str) or "=" not in item:
            raise ValueError(f"override {item!r}: expected section.key=value")
        name, value = item.split("=", 1)
        name = name.strip()
        if name.count(".") != 1:
            raise ValueError(f"override {item!r}: the key must be section.key, e.g. data.root=/faces")
        section, key = name.split(".")
        if section not in sections:
            raise ValueError(f"override {item!r}: unknown section {section!r}; sections are {sorted(sections)}")
        hints = _hints(sections[section])
        if key not in hints:
            raise ValueError(f"override {item!r}: unknown key {name!r}; {section} has {sorted(hints)}")
        d[section][key] = _convert(value, hints[key], name)
    return TrainConfig.from_dict(d)


def load_config(path: str | os.PathLike | None = None, overrides: Iterable[str] = ()) -> TrainConfig:
    """The config in a YAML (.yaml/.yml) or JSON (.json) file, or the defaults when path is None,
    with ``section.key=value`` overrides applied; validated."""
    if path is None:
        cfg = TrainConfig()
    else:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        suffix = path.suffix.lower()
        text = path.read_text(encoding="utf-8")
        if suffix in (".yaml", ".yml"):
            import yaml

            try:
                d = yaml.safe_load(text)
            except yaml.YAMLError as e:
                raise ValueError(f"config file {path}: not valid YAML: {e}") from None
        elif suffix == ".json":
            try:
                d = json.loads(text)
            except json.JSONDecodeError as e:
                raise ValueError(f"config file {path}: not valid JSON: {e}") from None
        else:
            raise ValueError(f"config file {path}: the suffix must be .yaml, .yml or .json, got {suffix!r}")
        try:
            cfg = TrainConfig.from_dict({} if d is None else d)
        except ValueError as e:
            raise ValueError(f"config file {path}: {e}") from None
    return apply_overrides(cfg, overrides).validate()


def save_config(cfg: TrainConfig, path: str | os.PathLike) -> str:
    """Write cfg as JSON (or YAML for .yaml/.yml) to a temp file beside path, then rename it there."""
    path = Path(path)
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        text = yaml.safe_dump(cfg.to_dict(), sort_keys=False)
    else:
        text = json.dumps(cfg.to_dict(), indent=2) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text)
    return str(path)
