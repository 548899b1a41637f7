"""Checkpoints: exact round trips (weights, Adam, RNG), atomic writes, pruning, mismatch and
corruption errors, weights-only loading, load_generator."""
import json
import math
import os
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from wscswap_fast.train import checkpoint as ckpt_mod
from wscswap_fast.train.checkpoint import (latest_checkpoint, load_checkpoint, load_config_from_checkpoint,
                                           load_generator, resolve_checkpoint, restore_rng_state, rng_state,
                                           save_checkpoint)
from wscswap_fast.train.config import load_config


def net(hidden=8, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Linear(hidden, 3))


def trained(steps=3, hidden=8, seed=0):
    """A model and its Adam after a few steps (so exp_avg, exp_avg_sq, step and BN buffers are set)."""
    model = net(hidden, seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, betas=(0.5, 0.9))
    g = torch.Generator().manual_seed(seed + 100)
    for _ in range(steps):
        x = torch.randn(16, 5, generator=g)
        loss = model(x).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model, opt


def step_once(model, opt, seed=7):
    x = torch.randn(16, 5, generator=torch.Generator().manual_seed(seed))
    opt.zero_grad()
    model(x).square().mean().backward()
    opt.step()


def assert_same_state(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


def assert_same_optimizer(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa["param_groups"] == sb["param_groups"]
    assert sa["state"].keys() == sb["state"].keys()
    for pid in sa["state"]:
        for k, v in sa["state"][pid].items():
            w = sb["state"][pid][k]
            assert type(v) is type(w)
            assert torch.equal(v, w) if isinstance(v, torch.Tensor) else v == w, (pid, k)


@pytest.fixture
def cfg(tmp_path):
    return load_config(None, [f"run.out_dir={tmp_path / 'run'}", "data.resolution=128", "model.generator_width=0.125"])


def test_round_trip_is_bit_identical(tmp_path, cfg):
    model, opt = trained()
    disc, dopt = trained(hidden=4, seed=1)
    path = save_checkpoint(tmp_path / "run", 3, {"generator": model, "discriminator": disc},
                           {"g": opt, "d": dopt}, {"extra": {"ema_steps": 3}}, cfg)
    assert Path(path) == tmp_path / "run" / "checkpoints" / "step_00000003"
    names = sorted(os.listdir(path))
    assert names == sorted(["generator.safetensors", "discriminator.safetensors", "optimizers.safetensors",
                            "optimizers.json", "state.safetensors", "state.json", "config.json"])
    model2, opt2 = trained(steps=1, seed=5)
    disc2, dopt2 = trained(steps=1, hidden=4, seed=6)
    state = load_checkpoint(path, {"generator": model2, "discriminator": disc2}, {"g": opt2, "d": dopt2})
    assert state["step"] == 3 and state["extra"] == {"ema_steps": 3}
    assert_same_state(model.state_dict(), model2.state_dict())
    assert_same_state(disc.state_dict(), disc2.state_dict())
    assert_same_optimizer(opt, opt2)
    assert_same_optimizer(dopt, dopt2)
    assert opt2.state_dict()["param_groups"][0]["betas"] == (0.5, 0.9)  # a tuple again
    # the next step is the same on both: Adam's moments and step count came back exactly
    step_once(model, opt)
    step_once(model2, opt2)
    assert_same_state(model.state_dict(), model2.state_dict())
    assert load_config_from_checkpoint(path) == cfg


def test_optimizer_before_any_step(tmp_path):
    model = net()
    opt = torch.optim.Adam(model.parameters())
    path = save_checkpoint(tmp_path, 0, {"m": model}, {"opt": opt})
    model2 = net(seed=3)
    opt2 = torch.optim.Adam(model2.parameters())
    load_checkpoint(path, {"m": model2}, {"opt": opt2})
    assert_same_optimizer(opt, opt2)


def test_rng_restore_gives_same_numbers(tmp_path):
    model = net()
    path = save_checkpoint(tmp_path, 1, {"m": model})
    want = (random.random(), np.random.rand(3).tolist(), torch.rand(4).tolist(), np.random.randn())
    random.random(), np.random.rand(7), torch.rand(9)  # move every generator on
    state = load_checkpoint(path, {"m": model}, restore_rng=True)
    got = (random.random(), np.random.rand(3).tolist(), torch.rand(4).tolist(), np.random.randn())
    assert got == want
    restore_rng_state(state["rng"])
    assert (random.random(), np.random.rand(3).tolist(), torch.rand(4).tolist(), np.random.randn()) == want
    s = rng_state()
    a = torch.randn(3)
    restore_rng_state(s)
    assert torch.equal(torch.randn(3), a)
    with pytest.raises(ValueError, match="numpy"):
        restore_rng_state({"python": s["python"], "torch": s["torch"]})
    with pytest.raises(TypeError):
        restore_rng_state([1, 2])


def test_given_rng_state_is_kept(tmp_path):
    s = rng_state()
    torch.rand(5)
    path = save_checkpoint(tmp_path, 1, {"m": net()}, state={"rng": s})
    state = load_checkpoint(path, {"m": net()})
    assert torch.equal(state["rng"]["torch"], s["torch"])


def test_state_encoding_round_trip(tmp_path):
    odd = {"ints": {1: torch.arange(3), 2: "two"}, "tuple": (1, (2.5, None)), "array": np.arange(6, dtype=np.int16).reshape(2, 3),
           "inf": math.inf, "list": [torch.ones(2, 2, dtype=torch.bfloat16), {"x": True}], "np_scalar": np.float32(1.5),
           "__weird": 1}
    path = save_checkpoint(tmp_path, 2, {"m": net()}, state={"odd": odd})
    got = load_checkpoint(path, {"m": net()})["odd"]
    assert torch.equal(got["ints"][1], odd["ints"][1]) and got["ints"][2] == "two"
    assert got["tuple"] == (1, (2.5, None)) and got["inf"] == math.inf and got["np_scalar"] == 1.5
    assert got["array"].dtype == np.int16 and (got["array"] == odd["array"]).all()
    assert got["list"][0].dtype == torch.bfloat16 and got["list"][1] == {"x": True} and got["__weird"] == 1
    with pytest.raises(TypeError, match="state.bad"):
        save_checkpoint(tmp_path, 3, {"m": net()}, state={"bad": object()})
    assert latest_checkpoint(tmp_path).endswith("step_00000002")


def test_crash_mid_write_leaves_no_step_dir(tmp_path, monkeypatch):
    first = save_checkpoint(tmp_path, 1, {"generator": net(), "discriminator": net()})
    real = ckpt_mod._write_tensors
    calls = []

    def flaky(path, tensors):
        calls.append(path)
        if len(calls) == 2:  # the second module's file
            raise OSError("simulated crash")
        real(path, tensors)

    monkeypatch.setattr(ckpt_mod, "_write_tensors", flaky)
    with pytest.raises(OSError, match="simulated crash"):
        save_checkpoint(tmp_path, 2, {"generator": net(), "discriminator": net()})
    assert os.listdir(tmp_path / "checkpoints") == ["step_00000001"]  # no step_2, no temp dir
    assert latest_checkpoint(tmp_path) == first


def test_half_written_dir_is_ignored(tmp_path):
    save_checkpoint(tmp_path, 1, {"m": net()})
    (tmp_path / "checkpoints" / "step_00000009").mkdir()  # no state.json: not a checkpoint
    (tmp_path / "checkpoints" / ".tmp-step_00000010-x").mkdir()
    assert latest_checkpoint(tmp_path).endswith("step_00000001")


def test_keep_last_k(tmp_path, cfg):
    for step in range(1, 6):
        save_checkpoint(tmp_path, step * 10, {"m": net()}, keep=2)
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["step_00000040", "step_00000050"]
    cfg.run.keep_checkpoints = 1
    save_checkpoint(tmp_path, 60, {"m": net()}, config=cfg)
    assert os.listdir(tmp_path / "checkpoints") == ["step_00000060"]
    out = tmp_path / "default"
    for step in range(5):
        save_checkpoint(out, step, {"m": net()})
    assert len(os.listdir(out / "checkpoints")) == 3  # the default


def test_resave_same_step_replaces(tmp_path):
    a, b = net(seed=1), net(seed=2)
    save_checkpoint(tmp_path, 4, {"m": a})
    save_checkpoint(tmp_path, 4, {"m": b})
    c = net(seed=3)
    load_checkpoint(tmp_path, {"m": c})
    assert_same_state(c.state_dict(), b.state_dict())
    assert os.listdir(tmp_path / "checkpoints") == ["step_00000004"]


def test_resolve_and_latest(tmp_path):
    assert latest_checkpoint(tmp_path) is None
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        resolve_checkpoint(tmp_path)
    with pytest.raises(FileNotFoundError, match="nothere"):
        resolve_checkpoint(tmp_path / "nothere")
    save_checkpoint(tmp_path, 2, {"m": net()})
    last = save_checkpoint(tmp_path, 12, {"m": net()})
    assert latest_checkpoint(tmp_path) == last
    assert resolve_checkpoint(tmp_path) == last
    assert resolve_checkpoint(tmp_path / "checkpoints") == last
    step2 = str(tmp_path / "checkpoints" / "step_00000002")
    assert resolve_checkpoint(step2) == step2
    assert resolve_checkpoint(os.path.join(step2, "m.safetensors")) == step2


def test_mismatch_names_tensors(tmp_path):
    path = save_checkpoint(tmp_path, 1, {"generator": net(hidden=8)})
    other = net(hidden=16)
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(ValueError) as e:
        load_checkpoint(path, {"generator": other})
    msg = str(e.value)
    assert "another config" in msg
    for name in ("generator.0.weight", "generator.0.bias", "generator.1.running_mean", "generator.3.weight"):
        assert name in msg
    assert "checkpoint (8, 5) vs model (16, 5)" in msg
    assert_same_state(other.state_dict(), before)  # nothing was changed
    # missing / extra tensors
    bigger = nn.Sequential(*net(), nn.Linear(3, 2))
    with pytest.raises(ValueError, match=r"generator\.4\.weight: missing"):
        load_checkpoint(path, {"generator": bigger})
    smaller = nn.Sequential(*list(net())[:3])
    with pytest.raises(ValueError, match=r"generator\.3\.bias: in the checkpoint"):
        load_checkpoint(path, {"generator": smaller})
    load_checkpoint(path, {"generator": smaller}, strict=False)  # tolerated when asked ...
    with pytest.raises(ValueError, match="vs model"):
        load_checkpoint(path, {"generator": other}, strict=False)  # ... never a shape mismatch
    with pytest.raises(ValueError, match="no module"):
        load_checkpoint(path, {"discriminator": net()})


def test_optimizer_mismatch(tmp_path):
    model, opt = trained()
    path = save_checkpoint(tmp_path, 1, {"m": model}, {"opt": opt})
    m2 = net()
    two_groups = torch.optim.Adam([{"params": list(m2.parameters())[:2]}, {"params": list(m2.parameters())[2:]}])
    with pytest.raises(ValueError, match="parameter group"):
        load_checkpoint(path, {"m": m2}, {"opt": two_groups})
    m3 = net(hidden=16)
    with pytest.raises(ValueError, match=r"opt state\[0\]\.exp_avg: checkpoint \(8, 5\) vs parameter \(16, 5\)"):
        load_checkpoint(path, {}, {"opt": torch.optim.Adam(m3.parameters())})
    with pytest.raises(ValueError, match="no optimizer"):
        load_checkpoint(path, {"m": m2}, {"other": torch.optim.Adam(m2.parameters())})


def test_corrupt_and_missing_files(tmp_path):
    model = net()
    path = Path(save_checkpoint(tmp_path, 1, {"generator": model, "discriminator": net()}, {"g": torch.optim.Adam(model.parameters())}))
    gen = path / "generator.safetensors"
    data = bytearray(gen.read_bytes())
    data[-3] ^= 0xFF  # a flipped bit in the weights: still a valid safetensors file
    gen.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="generator.safetensors is corrupt"):
        load_checkpoint(path, {"generator": net()})
    load_checkpoint(path, {"discriminator": net()})  # the other module still loads
    gen.write_bytes(bytes(data[:20]))  # truncated
    with pytest.raises(ValueError, match="generator.safetensors"):
        load_checkpoint(path, {"generator": net()})
    (path / "discriminator.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="discriminator.safetensors"):
        load_checkpoint(path, {"discriminator": net()})
    (path / "optimizers.json").write_text("{broken")
    with pytest.raises(ValueError, match="optimizers.json"):
        load_checkpoint(path, {}, {"g": torch.optim.Adam(net().parameters())})
    (path / "state.json").write_text("{broken")
    with pytest.raises(ValueError, match="state.json"):
        load_checkpoint(path, {"generator": net()})


def test_safetensors_level_corruption_is_named(tmp_path):
    """Without a manifest entry (e.g. a file put there by hand), safetensors' own check names it."""
    path = Path(save_checkpoint(tmp_path, 1, {"m": net()}))
    meta = json.loads((path / "state.json").read_text())
    del meta["files"]["m.safetensors"]
    (path / "state.json").write_text(json.dumps(meta))
    (path / "m.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(ValueError, match="m.safetensors is corrupt"):
        load_checkpoint(path, {"m": net()})


def test_loading_never_unpickles(tmp_path, monkeypatch):
    model, opt = trained()
    path = save_checkpoint(tmp_path, 1, {"m": model}, {"opt": opt})

    def forbidden(*a, **k):
        raise AssertionError("pickle used while loading a checkpoint")

    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    model2, opt2 = trained(seed=4)
    load_checkpoint(path, {"m": model2}, {"opt": opt2}, restore_rng=True)
    assert_same_state(model.state_dict(), model2.state_dict())


def test_wrapped_modules_save_plain_keys(tmp_path):
    model = net()
    compiled = torch.compile(model)  # compiles lazily: no compile happens here
    path = save_checkpoint(tmp_path, 1, {"m": compiled})
    plain = net(seed=9)
    load_checkpoint(path, {"m": plain})
    assert_same_state(plain.state_dict(), model.state_dict())


@pytest.mark.parametrize("kwargs, exc, word", [
    (dict(step=-1), ValueError, "step"),
    (dict(modules={}), ValueError, "modules"),
    (dict(modules={"state": nn.Linear(2, 2)}), ValueError, "reserved"),
    (dict(modules={"a/b": nn.Linear(2, 2)}), ValueError, "a/b"),
    (dict(keep=0), ValueError, "keep"),
    (dict(config={"run": {}}), TypeError, "TrainConfig"),
])
def test_save_bad_arguments(tmp_path, kwargs, exc, word):
    args = dict(out_dir=tmp_path, step=1, modules={"m": nn.Linear(2, 2)}) | kwargs
    with pytest.raises(exc, match=word):
        save_checkpoint(**args)


def test_load_generator(tmp_path, cfg):
    from wscswap_fast.models.generator import Generator, GeneratorConfig

    gcfg = GeneratorConfig.for_resolution(128, width=0.125)
    torch.manual_seed(0)
    gen, ema = Generator(gcfg), Generator(gcfg)
    with torch.no_grad():
        for p in ema.parameters():
            p.add_(0.01)
    path = Path(save_checkpoint(tmp_path / "run", 5, {"generator": gen, "generator_ema": ema}, config=cfg))
    assert (path / "generator_config.json").is_file()
    loaded, lcfg = load_generator(tmp_path / "run")
    assert lcfg == cfg and not loaded.training
    assert all(not p.requires_grad for p in loaded.parameters())
    assert_same_state(loaded.state_dict(), ema.state_dict())
    raw, _ = load_generator(path, ema=False)
    assert_same_state(raw.state_dict(), gen.state_dict())
    # without generator_config.json the network comes from the TrainConfig
    (path / "generator_config.json").unlink()
    rebuilt, _ = load_generator(path)
    assert_same_state(rebuilt.state_dict(), ema.state_dict())
    # a config that does not match the weights: the mismatch is named
    other = load_config(None, ["data.resolution=128", "model.generator_width=0.25"])
    ckpt_mod.save_config(other, path / "config.json")
    with pytest.raises(ValueError, match="generator_ema.*vs model"):
        load_generator(path)
    (path / "generator_ema.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="generator_ema.safetensors"):
        load_generator(path)
