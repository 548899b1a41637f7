"""Training checkpoints: safetensors weights plus JSON state, written atomically, loaded without pickle.

A checkpoint is a directory ``<out_dir>/checkpoints/step_<8 digits>/`` holding

- ``<module>.safetensors`` per module (e.g. generator, generator_ema, discriminator, adversary);
- ``optimizers.safetensors`` + ``optimizers.json``: every optimizer's state dict, tensors in the
  first, the rest (param_groups, non-tensor state) in the second;
- ``state.safetensors`` + ``state.json``: the step, the RNG states (python, numpy, torch CPU and
  every CUDA device) and whatever the trainer adds, plus a manifest of every file's SHA-256;
- ``config.json``: the resolved :class:`~wscswap_fast.train.config.TrainConfig`;
- ``generator_config.json``: the generator's ``GeneratorConfig`` when the module has one.

It is written into a temporary directory beside it, then renamed (a crash leaves no step
directory, only possibly a hidden ``.tmp-*`` one that nothing reads), and the newest
``keep`` step directories are kept. Loading reads only safetensors and JSON (no pickle: a
checkpoint from an untrusted source cannot run code), checks every file against the manifest,
and checks every tensor name and shape before anything is modified.

Non-tensor values are stored as JSON with small markers that keep what JSON cannot say:
``{"__tensor__": key}`` (a tensor in the matching .safetensors file), ``{"__tuple__": [...]}``,
``{"__ndarray__": [...], "dtype": ..., "shape": ...}`` and ``{"__dict__": [[key, value], ...]}``
(a dict whose keys are not all strings, such as an optimizer's per-parameter state).
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np
import torch
from torch import nn

from .config import TrainConfig, save_config

STEP_DIR = re.compile(r"^step_(\d{8,})$")
FORMAT_VERSION = 1


def checkpoint_dir(out_dir: str | os.PathLike, step: int) -> Path:
    """``<out_dir>/checkpoints/step_<8 digits>``."""
    return Path(out_dir) / "checkpoints" / f"step_{step:08d}"


# ---- RNG states ----

def rng_state() -> dict:
    """The RNG states of python's random, numpy's global generator, torch's CPU generator and
    every CUDA device's (when CUDA is initialised or available)."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping) -> None:
    """Set the generators :func:`rng_state` recorded (a CUDA state is restored only where this
    machine has CUDA, and then must list as many devices)."""
    if not isinstance(state, Mapping):
        raise TypeError(f"state must be the dict rng_state() returns, got {type(state).__name__}")
    missing = [k for k in ("python", "numpy", "torch") if k not in state]
    if missing:
        raise ValueError(f"RNG state lacks {missing}")
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    np_state = state["numpy"]
    np.random.set_state((np_state[0], np.asarray(np_state[1], dtype=np.uint32), *np_state[2:]))
    torch.set_rng_state(torch.as_tensor(state["torch"], dtype=torch.uint8).cpu())
    if "cuda" in state and torch.cuda.is_available():
        cuda = list(state["cuda"])
        if len(cuda) != torch.cuda.device_count():
            raise ValueError(f"the RNG state holds {len(cuda)} CUDA device(s), this machine has "
                             f"{torch.cuda.device_count()}")
        torch.cuda.set_rng_state_all([torch.as_tensor(s, dtype=torch.uint8).cpu() for s in cuda])


# ---- JSON + tensors encoding ----

def _encode(obj: Any, key: str, tensors: dict) -> Any:
    if isinstance(obj, torch.Tensor):
        tensors[key] = obj.detach().to("cpu", copy=True).contiguous()
        return {"__tensor__": key}
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": obj.tolist(), "dtype": str(obj.dtype), "shape": list(obj.shape)}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, f"{key}.{i}", tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, f"{key}.{i}", tensors) for i, v in enumerate(obj)]
    if isinstance(obj, Mapping):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: _encode(v, f"{key}.{k}", tensors) for k, v in obj.items()}
        for k in obj:
            if not isinstance(k, (str, int, float, bool)) and k is not None:
                raise TypeError(f"{key}: cannot store a dict key of type {type(k).__name__}")
        return {"__dict__": [[k, _encode(v, f"{key}.{k}", tensors)] for k, v in obj.items()]}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"{key}: cannot store a {type(obj).__name__} in a checkpoint (tensors, numbers, strings, "
                    "lists, tuples, dicts and numpy arrays only)")


def _decode(obj: Any, tensors: Mapping[str, torch.Tensor], where: str) -> Any:
    if isinstance(obj, list):
        return [_decode(v, tensors, where) for v in obj]
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            key = obj["__tensor__"]
            if key not in tensors:
                raise ValueError(f"{where}: tensor {key!r} is missing from its .safetensors file")
            return tensors[key]
        if "__tuple__" in obj:
            return tuple(_decode(v, tensors, where) for v in obj["__tuple__"])
        if "__ndarray__" in obj:
            return np.asarray(obj["__ndarray__"], dtype=obj["dtype"]).reshape(obj["shape"])
        if "__dict__" in obj:
            return {k: _decode(v, tensors, where) for k, v in obj["__dict__"]}
        return {k: _decode(v, tensors, where) for k, v in obj.items()}
    return obj


# ---- files ----

def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _write_json(path: Path, obj: Any) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1)
        f.flush()
        os.fsync(f.fileno())


def _write_tensors(path: Path, tensors: dict) -> None:
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata={"format": "pt"})


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file missing: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"checkpoint file {path} is corrupt (not valid JSON: {e})") from None


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file missing: {path}")
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"checkpoint file {path} is corrupt (not a readable safetensors file: {e})") from None


def _unwrap(module: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel / torch.compile wrappers (their state-dict keys
    carry a prefix the plain module has not)."""
    while True:
        if isinstance(module, nn.parallel.DistributedDataParallel) or type(module).__name__ == "DataParallel":
            module = module.module
        elif hasattr(module, "_orig_mod") and isinstance(module._orig_mod, nn.Module):
            module = module._orig_mod
        else:
            return module


def _check_name(name: str, what: str) -> None:
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", name) or name in (
            "optimizers", "state", "config", "generator_config"):
        raise ValueError(f"{what} name {name!r} must be letters, digits, '_', '.', '-' and not a reserved file name")


# ---- save ----

def save_checkpoint(out_dir: str | os.PathLike, step: int, modules: Mapping[str, nn.Module],
                    optimizers: Optional[Mapping[str, torch.optim.Optimizer]] = None, state: Optional[dict] = None,
                    config: Optional[TrainConfig] = None, *, keep: Optional[int] = None) -> str:
    """Write the checkpoint of ``step`` (see the module docstring) and return its directory.

    ``state`` is stored with ``step`` and, unless it has an ``"rng"`` entry, the current
    :func:`rng_state`. ``keep`` (default ``config.run.keep_checkpoints``, else 3): how many step
    directories to keep, newest first. Saving a step that exists replaces it.
    """
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise ValueError(f"step must be an int >= 0, got {step!r}")
    if not modules:
        raise ValueError("modules is empty: nothing to save")
    for name in modules:
        _check_name(name, "module")
    optimizers = dict(optimizers or {})
    for name in optimizers:
        _check_name(name, "optimizer")
    if config is not None and not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    if keep is None:
        keep = config.run.keep_checkpoints if config is not None else 3
    if not isinstance(keep, int) or keep < 1:
        raise ValueError(f"keep must be an int >= 1, got {keep!r}")
    state = dict(state or {})
    state.setdefault("rng", rng_state())
    state["step"] = step

    final = checkpoint_dir(out_dir, step)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
    try:
        for name, module in modules.items():
            module = _unwrap(module)
            tensors = {}
            for key, value in module.state_dict().items():
                if not isinstance(value, torch.Tensor):
                    raise TypeError(f"module {name!r}: state entry {key!r} is a {type(value).__name__}, not a tensor")
                tensors[key] = value.detach().to("cpu", copy=True).contiguous()
            _write_tensors(tmp / f"{name}.safetensors", tensors)
            gen_cfg = getattr(module, "cfg", None)
            if name in ("generator", "generator_ema") and hasattr(gen_cfg, "to_dict") and \
                    not (tmp / "generator_config.json").exists():
                _write_json(tmp / "generator_config.json", gen_cfg.to_dict())
        opt_tensors: dict = {}
        opt_json = {name: _encode(opt.state_dict(), name, opt_tensors) for name, opt in optimizers.items()}
        _write_tensors(tmp / "optimizers.safetensors", opt_tensors)
        _write_json(tmp / "optimizers.json", opt_json)
        state_tensors: dict = {}
        encoded_state = _encode(state, "state", state_tensors)
        _write_tensors(tmp / "state.safetensors", state_tensors)
        if config is not None:
            save_config(config, tmp / "config.json")
        manifest = {p.name: _sha256(p) for p in sorted(tmp.iterdir())}
        _write_json(tmp / "state.json", {"format": FORMAT_VERSION, "step": step, "modules": list(modules),
                                         "optimizers": list(optimizers), "files": manifest,
                                         "state": encoded_state})
        _fsync_dir(tmp)
        if final.exists():  # re-saving a step: move the old one aside, then drop it
            old = Path(tempfile.mkdtemp(prefix=f".old-{final.name}-", dir=final.parent))
            os.rename(final, old / final.name)
            os.rename(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, final)
        _fsync_dir(final.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _prune(final.parent, keep)
    return str(final)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems cannot sync directories
    finally:
        os.close(fd)


def _step_dirs(ckpt_root: Path) -> list[tuple[int, Path]]:
    if not ckpt_root.is_dir():
        return []
    found = []
    for p in ckpt_root.iterdir():
        m = STEP_DIR.match(p.name)
        if m and (p / "state.json").is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def _prune(ckpt_root: Path, keep: int) -> None:
    for _, p in _step_dirs(ckpt_root)[:-keep]:
        shutil.rmtree(p, ignore_errors=True)


# ---- find ----

def latest_checkpoint(out_dir: str | os.PathLike) -> Optional[str]:
    """The newest complete step directory under ``<out_dir>/checkpoints``, or None."""
    found = _step_dirs(Path(out_dir) / "checkpoints")
    return str(found[-1][1]) if found else None


def resolve_checkpoint(path: str | os.PathLike) -> str:
    """A step directory from a step directory, a file inside one, a run's out_dir or its
    ``checkpoints`` folder (the latter two: the newest step). FileNotFoundError otherwise."""
    p = Path(path)
    if p.is_file() and (p.parent / "state.json").is_file():
        return str(p.parent)
    if p.is_dir():
        if (p / "state.json").is_file():
            return str(p)
        found = _step_dirs(p / "checkpoints") or _step_dirs(p)
        if found:
            return str(found[-1][1])
        raise FileNotFoundError(f"no checkpoint in {p} (expected step_XXXXXXXX directories with a state.json, "
                                "or a checkpoints/ folder holding them)")
    raise FileNotFoundError(f"checkpoint not found: {p}")


# ---- load ----

def _verify(ckpt: Path, manifest: Mapping[str, str], names) -> None:
    for name in names:
        path = ckpt / name
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint file missing: {path}")
        want = manifest.get(name)
        if want is not None and _sha256(path) != want:
            raise ValueError(f"checkpoint file {path} is corrupt (its SHA-256 differs from the one recorded when "
                             "it was written)")


def _mismatches(name: str, saved: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor],
                strict: bool) -> list[str]:
    out = []
    for k, v in expected.items():
        if k not in saved:
            if strict:
                out.append(f"{name}.{k}: missing from the checkpoint (model {tuple(v.shape)})")
        elif tuple(saved[k].shape) != tuple(v.shape):
            out.append(f"{name}.{k}: checkpoint {tuple(saved[k].shape)} vs model {tuple(v.shape)}")
    if strict:
        out += [f"{name}.{k}: in the checkpoint {tuple(v.shape)}, not in the model" for k, v in saved.items()
                if k not in expected]
    return out


def _mismatch_error(ckpt: Path, problems: list[str]) -> ValueError:
    shown = "\n  ".join(problems[:40])
    more = f"\n  ... and {len(problems) - 40} more" if len(problems) > 40 else ""
    return ValueError(f"checkpoint {ckpt} does not fit these modules (another config?): {len(problems)} "
                      f"mismatched tensor(s):\n  {shown}{more}")


def load_checkpoint(path: str | os.PathLike, modules: Mapping[str, nn.Module],
                    optimizers: Optional[Mapping[str, torch.optim.Optimizer]] = None, *, strict: bool = True,
                    restore_rng: bool = False) -> dict:
    """Load the named modules (and optimizers) from a checkpoint; return its state dict (with
    ``step`` and ``rng``). ``path``: anything :func:`resolve_checkpoint` takes.

    Only safetensors and JSON are read (weights only, no pickle). Every tensor name and shape is
    checked before any module changes: a mismatch (e.g. a checkpoint of another config) raises
    ValueError listing each mismatched tensor with both shapes. strict=False tolerates missing
    and extra tensors (never a shape mismatch). restore_rng=True also calls
    :func:`restore_rng_state` on the saved RNG states.
    """
    ckpt = Path(resolve_checkpoint(path))
    meta = _read_json(ckpt / "state.json")
    if not isinstance(meta, dict) or "state" not in meta or "files" not in meta:
        raise ValueError(f"checkpoint file {ckpt / 'state.json'} is not a wscswap checkpoint state")
    manifest = meta["files"]
    optimizers = dict(optimizers or {})
    missing = [n for n in modules if n not in meta.get("modules", [])]
    if missing:
        raise ValueError(f"checkpoint {ckpt} has no module(s) {missing}; it holds {meta.get('modules')}")
    missing = [n for n in optimizers if n not in meta.get("optimizers", [])]
    if missing:
        raise ValueError(f"checkpoint {ckpt} has no optimizer(s) {missing}; it holds {meta.get('optimizers')}")
    files = [f"{n}.safetensors" for n in modules] + ["state.safetensors"]
    if optimizers:
        files += ["optimizers.safetensors", "optimizers.json"]
    _verify(ckpt, manifest, files)

    # read and check everything first, then load
    weights, problems = {}, []
    for name, module in modules.items():
        saved = _read_tensors(ckpt / f"{name}.safetensors")
        problems += _mismatches(name, saved, _unwrap(module).state_dict(), strict)
        weights[name] = saved
    opt_states = {}
    if optimizers:
        opt_tensors = _read_tensors(ckpt / "optimizers.safetensors")
        opt_json = _read_json(ckpt / "optimizers.json")
        for name, opt in optimizers.items():
            sd = _decode(opt_json[name], opt_tensors, str(ckpt / "optimizers.json"))
            problems += _optimizer_mismatches(name, sd, opt)
            opt_states[name] = sd
    if problems:
        raise _mismatch_error(ckpt, problems)

    for name, module in modules.items():
        _unwrap(module).load_state_dict(weights[name], strict=strict)
    for name, opt in optimizers.items():
        opt.load_state_dict(opt_states[name])
        _match_parameter_layout(opt)
    state = _decode(meta["state"], _read_tensors(ckpt / "state.safetensors"), str(ckpt / "state.json"))
    if restore_rng:
        restore_rng_state(state["rng"])
    return state


def _match_parameter_layout(opt: torch.optim.Optimizer) -> None:
    """Give restored per-parameter state its parameter's strides. Checkpoints store contiguous
    tensors, and a fused optimizer walks a channels_last parameter and its state as one flat
    buffer each: mismatched strides would pair the wrong elements."""
    for group in opt.param_groups:
        for p in group["params"]:
            state = opt.state.get(p, {})
            for k, v in state.items():
                if isinstance(v, torch.Tensor) and v.shape == p.shape and v.stride() != p.stride():
                    state[k] = torch.empty_like(p, dtype=v.dtype).copy_(v)


def _optimizer_mismatches(name: str, sd: dict, opt: torch.optim.Optimizer) -> list[str]:
    groups = opt.param_groups
    saved_groups = sd.get("param_groups", [])
    if len(saved_groups) != len(groups):
        return [f"optimizer {name}: {len(saved_groups)} parameter group(s) in the checkpoint, {len(groups)} here"]
    out = []
    params = []
    for i, (g, sg) in enumerate(zip(groups, saved_groups)):
        if len(g["params"]) != len(sg["params"]):
            out.append(f"optimizer {name} group {i}: {len(sg['params'])} parameters in the checkpoint, "
                       f"{len(g['params'])} here")
        params += list(zip(sg["params"], g["params"]))
    if out:
        return out
    for pid, p in params:
        for k, v in sd.get("state", {}).get(pid, {}).items():
            if isinstance(v, torch.Tensor) and v.dim() > 0 and tuple(v.shape) != tuple(p.shape):
                out.append(f"optimizer {name} state[{pid}].{k}: checkpoint {tuple(v.shape)} vs parameter {tuple(p.shape)}")
    return out


def load_config_from_checkpoint(path: str | os.PathLike) -> TrainConfig:
    """The TrainConfig saved in a checkpoint (``config.json``)."""
    ckpt = Path(resolve_checkpoint(path))
    d = _read_json(ckpt / "config.json")
    try:
        return TrainConfig.from_dict(d)
    except ValueError as e:
        raise ValueError(f"checkpoint file {ckpt / 'config.json'}: {e}") from None


def load_generator(path: str | os.PathLike, device: str | torch.device = "cpu", ema: bool = True):
    """(Generator in eval mode with frozen parameters on ``device``, TrainConfig) from a checkpoint:
    the EMA weights (``generator_ema``) when ema=True, else the raw ``generator``. The network is
    built from the saved ``generator_config.json``, or else from the TrainConfig
    (``GeneratorConfig.for_resolution(data.resolution, width=model.generator_width)``)."""
    from ..models.generator import Generator, GeneratorConfig

    ckpt = Path(resolve_checkpoint(path))
    cfg = load_config_from_checkpoint(ckpt)
    gen_json = ckpt / "generator_config.json"
    if gen_json.is_file():
        try:
            gcfg = GeneratorConfig.from_dict(_read_json(gen_json))
        except (TypeError, ValueError) as e:
            raise ValueError(f"checkpoint file {gen_json}: {e}") from None
    else:
        gcfg = GeneratorConfig.for_resolution(cfg.data.resolution, width=cfg.model.generator_width)
    name = "generator_ema" if ema else "generator"
    if not (ckpt / f"{name}.safetensors").is_file():
        raise FileNotFoundError(f"checkpoint file missing: {ckpt / f'{name}.safetensors'}"
                                + (" (pass ema=False for the raw generator)" if ema else ""))
    gen = Generator(gcfg)
    load_checkpoint(ckpt, {name: gen})
    gen.requires_grad_(False)
    return gen.to(device).eval(), cfg
