"""TrainConfig: files, overrides, typing, validation, atomic saving."""
import json
import os

import pytest
import yaml

from wscswap_fast.train import config as config_mod
from wscswap_fast.train.config import TrainConfig, apply_overrides, load_config, save_config


def test_defaults_are_valid_and_round_trip():
    cfg = load_config(None)
    assert cfg == TrainConfig()
    d = cfg.to_dict()
    assert json.loads(json.dumps(d)) == d  # JSON-able
    assert TrainConfig.from_dict(d) == cfg
    assert set(d) == {"data", "model", "loss", "optim", "run"}
    assert d["optim"]["betas"] == [0.0, 0.99]
    # DESIGN.md's default weights
    assert (cfg.loss.identity, cfg.loss.reconstruction, cfg.loss.adversarial, cfg.loss.feature_matching,
            cfg.loss.identity_removal, cfg.loss.landmark) == (5.0, 10.0, 1.0, 10.0, 1.0, 0.5)


@pytest.mark.parametrize("suffix", [".yaml", ".yml", ".json"])
def test_load_file(tmp_path, suffix):
    d = {"data": {"root": "/faces", "resolution": 128, "flip": False}, "optim": {"betas": [0.5, 0.999], "lr_g": 1e-3},
         "run": {"steps": 7}}
    path = tmp_path / f"c{suffix}"
    path.write_text(json.dumps(d) if suffix == ".json" else yaml.safe_dump(d))
    cfg = load_config(path)
    assert cfg.data.root == "/faces" and cfg.data.resolution == 128 and cfg.data.flip is False
    assert cfg.optim.betas == (0.5, 0.999) and cfg.optim.lr_g == 1e-3 and cfg.run.steps == 7
    assert cfg.data.batch_size == TrainConfig().data.batch_size  # untouched keys keep defaults


def test_empty_yaml_gives_defaults(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("")
    assert load_config(path) == TrainConfig()


def test_overrides_are_typed():
    cfg = load_config(None, ["data.flip=no", "data.resolution=512", "data.same_identity_ratio=0.5",
                             "data.mask_root=/m", "optim.betas=(0.1, 0.2)", "run.device=cuda:1",
                             "model.identity_checkpoint=null", "loss.identity=2"])
    assert cfg.data.flip is False and cfg.data.resolution == 512 and cfg.data.same_identity_ratio == 0.5
    assert cfg.data.mask_root == "/m" and cfg.optim.betas == (0.1, 0.2) and cfg.run.device == "cuda:1"
    assert cfg.model.identity_checkpoint is None and cfg.loss.identity == 2.0
    assert isinstance(cfg.loss.identity, float)
    for text, want in [("true", True), ("1", True), ("ON", True), ("False", False), ("0", False)]:
        assert load_config(None, [f"data.flip={text}"]).data.flip is want
    assert load_config(None, ["optim.betas=0.3,0.4"]).optim.betas == (0.3, 0.4)
    assert load_config(None, ["data.mask_root=none"]).data.mask_root is None
    # the value may hold '='
    assert load_config(None, ["data.root=/a=b"]).data.root == "/a=b"


def test_overrides_apply_on_top_of_file(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"run": {"steps": 3, "seed": 4}}))
    cfg = load_config(path, ["run.steps=9"])
    assert cfg.run.steps == 9 and cfg.run.seed == 4


@pytest.mark.parametrize("override, words", [
    ("nosuch.key=1", ["nosuch"]),
    ("data.nosuch=1", ["data.nosuch"]),
    ("data.resolution", ["data.resolution", "section.key=value"]),
    ("resolution=128", ["section.key"]),
    ("data.resolution=big", ["data.resolution", "big"]),
    ("data.flip=maybe", ["data.flip", "maybe"]),
    ("optim.betas=0.1", ["optim.betas", "2 values"]),
    ("optim.lr_g=nan", ["optim.lr_g", "finite"]),
    ("run.steps=1.5", ["run.steps", "1.5"]),
])
def test_bad_overrides(override, words):
    with pytest.raises(ValueError) as e:
        load_config(None, [override])
    for w in words:
        assert w in str(e.value)


@pytest.mark.parametrize("override, key", [
    ("data.resolution=300", "data.resolution"),
    ("data.same_identity_ratio=1.5", "data.same_identity_ratio"),
    ("data.same_identity_ratio=-0.1", "data.same_identity_ratio"),
    ("data.color_jitter=2", "data.color_jitter"),
    ("data.batch_size=0", "data.batch_size"),
    ("data.workers=-1", "data.workers"),
    ("model.generator_width=0", "model.generator_width"),
    ("loss.identity=-1", "loss.identity"),
    ("model.identity_arch=vit", "model.identity_arch"),
    ("model.regressor_arch=resnet7", "model.regressor_arch"),
    ("optim.amp=fp8", "optim.amp"),
    ("optim.betas=1.0,0.5", "optim.betas"),
    ("optim.ema_decay=1.1", "optim.ema_decay"),
    ("optim.lr_d=0", "optim.lr_d"),
    ("run.device=tpu", "run.device"),
    ("run.backend=fast", "run.backend"),
    ("run.memory_format=nhwc", "run.memory_format"),
    ("run.keep_checkpoints=0", "run.keep_checkpoints"),
    ("run.log_every=0", "run.log_every"),
])
def test_validation(override, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        load_config(None, [override])


def test_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        load_config(tmp_path / "missing.yaml")
    p = tmp_path / "c.toml"
    p.write_text("x = 1")
    with pytest.raises(ValueError, match="suffix"):
        load_config(p)
    p = tmp_path / "bad.yaml"
    p.write_text("data: [unclosed")
    with pytest.raises(ValueError, match="bad.yaml"):
        load_config(p)
    p = tmp_path / "bad.json"
    p.write_text("{")
    with pytest.raises(ValueError, match="bad.json"):
        load_config(p)
    p = tmp_path / "list.yaml"
    p.write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="mapping"):
        load_config(p)
    p = tmp_path / "unknown.yaml"
    p.write_text(yaml.safe_dump({"data": {"root": "x", "colour": 1}, "extra": {}}))
    with pytest.raises(ValueError, match="extra"):
        load_config(p)
    p.write_text(yaml.safe_dump({"data": {"root": "x", "colour": 1}}))
    with pytest.raises(ValueError, match="data.colour"):
        load_config(p)
    p.write_text(yaml.safe_dump({"data": {"resolution": "high"}}))
    with pytest.raises(ValueError, match="unknown.yaml.*data.resolution"):
        load_config(p)
    p.write_text(yaml.safe_dump({"data": {"flip": 3}}))
    with pytest.raises(ValueError, match="data.flip"):
        load_config(p)
    p.write_text(yaml.safe_dump({"data": 5}))
    with pytest.raises(ValueError, match="data"):
        load_config(p)


def test_archs_match_the_models():
    from wscswap_fast.models import iresnet, regressor

    assert set(config_mod.IDENTITY_ARCHS) == set(iresnet.LAYERS)
    assert set(config_mod.REGRESSOR_ARCHS) == set(regressor.ARCHS)


def test_yaml_number_for_string_field(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("run:\n  out_dir: 2024\n")
    assert load_config(p).run.out_dir == "2024"


@pytest.mark.parametrize("name", ["config.json", "config.yaml"])
def test_save_and_reload(tmp_path, name):
    cfg = apply_overrides(TrainConfig(), ["data.root=/x", "optim.betas=0.5,0.9", "model.morphable_model=none"])
    path = save_config(cfg, tmp_path / "sub" / name)
    assert os.path.isfile(path)
    assert load_config(path) == cfg
    assert sorted(os.listdir(tmp_path / "sub")) == [name]  # no temp file left


def test_save_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "config.json"
    save_config(TrainConfig(), path)
    before = path.read_text()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(config_mod.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        save_config(apply_overrides(TrainConfig(), ["run.steps=3"]), path)
    assert path.read_text() == before  # the old file is intact
    assert os.listdir(tmp_path) == ["config.json"]  # and the temp file is gone
