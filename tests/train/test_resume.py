"""Exact resume: 4 steps straight equal 2 steps, save, resume, 2 steps, bit for bit on the CPU
(every module, the EMA, every optimiser state); the log and TensorBoard files of a run; a
checkpoint of another config is refused with the mismatched tensors named."""
import json
import os

import pytest
import torch
from safetensors.torch import load_file

from tests.train.test_trainer import SINGLE, make_folder, tiny_overrides
from wscswap_fast.train.checkpoint import latest_checkpoint
from wscswap_fast.train.config import load_config
from wscswap_fast.train.trainer import MODULE_NAMES, Trainer, train


def _run(img_dir, mask_dir, out_dir, steps, *, resume=False, extra=()):
    cfg = load_config(None, tiny_overrides(img_dir, mask_dir, out_dir, steps=steps) + ["run.save_every=2", *extra])
    return train(cfg, resume=resume, progress=False)


def _tensors(ckpt):
    files = [f"{m}.safetensors" for m in MODULE_NAMES] + ["optimizers.safetensors"]
    return {f: load_file(os.path.join(ckpt, f)) for f in files}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One straight 4-step run and one 2-step run resumed to 4, on the same data."""
    root = tmp_path_factory.mktemp("resume")
    img_dir, mask_dir = make_folder(str(root / "data"))
    straight = _run(img_dir, mask_dir, str(root / "straight"), 4)
    first = _run(img_dir, mask_dir, str(root / "split"), 2)
    resumed = _run(img_dir, mask_dir, str(root / "split"), 4, resume=True)
    return root, straight, first, resumed, (img_dir, mask_dir)


def test_resume_is_bit_identical(runs):
    root, straight, first, resumed, _ = runs
    assert straight["step"] == 4 and first["step"] == 2 and resumed["step"] == 4
    a, b = _tensors(straight["checkpoint"]), _tensors(resumed["checkpoint"])
    for name in a:
        assert a[name].keys() == b[name].keys(), name
        assert len(a[name]) > 0
        for key in a[name]:
            assert torch.equal(a[name][key], b[name][key]), f"{name}: {key} differs after resuming"
    # the optimisers' step counters and hyper-parameters too
    ja = json.load(open(os.path.join(straight["checkpoint"], "optimizers.json")))
    jb = json.load(open(os.path.join(resumed["checkpoint"], "optimizers.json")))
    assert ja == jb
    # the resumed run really continued: its loss log holds steps 1..4 once each, same values
    log_a = [json.loads(line) for line in open(os.path.join(root, "straight", "log.jsonl"))]
    log_b = [json.loads(line) for line in open(os.path.join(root, "split", "log.jsonl"))]
    assert [r["step"] for r in log_a] == [r["step"] for r in log_b] == [1, 2, 3, 4]
    for ra, rb in zip(log_a, log_b):
        assert {k: v for k, v in ra.items() if k not in ("time", "images_per_s")} == \
               {k: v for k, v in rb.items() if k not in ("time", "images_per_s")}


def test_run_writes_config_log_tensorboard_and_checkpoints(runs):
    root, straight, *_ = runs
    run = root / "straight"
    assert json.load(open(run / "config.json"))["run"]["steps"] == 4
    assert sorted(os.listdir(run / "checkpoints")) == ["step_00000002", "step_00000004"]
    assert latest_checkpoint(run) == straight["checkpoint"]
    events = [f for f in os.listdir(run / "tensorboard") if f.startswith("events.out.tfevents")]
    assert events
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    scalars = set(acc.Tags()["scalars"])
    for name in ("identity", "reconstruction", "adversarial", "feature_matching", "identity_removal",
                 "identity_removal_g", "mask", "3dmm_expression", "3dmm_pose", "3dmm_lighting", "3dmm_landmark",
                 "discriminator", "generator_total"):
        assert f"loss/{name}" in scalars, name
    assert "perf/images_per_s" in scalars
    assert [e.step for e in acc.Scalars("loss/identity")] == [1, 2, 3, 4]
    assert acc.Tags()["images"] == ["samples/source|target|result|mask"]
    first = json.loads(open(run / "log.jsonl").readline())
    assert first["step"] == 1 and first["images_per_s"] > 0 and "generator_total" in first


def test_checkpoint_of_another_config_names_mismatched_tensors(runs, tmp_path):
    root, straight, *_, (img_dir, mask_dir) = runs
    other = load_config(None, tiny_overrides(img_dir, mask_dir, str(root / "straight"), width=0.25)
                        + ["model.discriminator_channels=16"])
    trainer = Trainer(other, dist_info=SINGLE, progress=False)
    with pytest.raises(ValueError, match=r"mismatched tensor") as err:
        trainer.load(straight["checkpoint"])
    assert "generator.face_encoder.stem.weight: checkpoint (4, 3, 3, 3) vs model (8, 3, 3, 3)" in str(err.value)
    # nothing was loaded halfway
    assert trainer.step == 0
    # --resume from the CLI path: the same error, from train()
    with pytest.raises(ValueError, match="mismatched tensor"):
        train(other, resume=True, progress=False)


def test_resume_without_checkpoint_starts_at_zero(tmp_path, capsys):
    img_dir, mask_dir = make_folder(str(tmp_path / "data"), n=4)
    out = _run(img_dir, mask_dir, str(tmp_path / "fresh"), 1, resume=True)
    assert out["step"] == 1 and out["checkpoint"].endswith("step_00000001")
    assert "no checkpoint" in capsys.readouterr().err


def test_loss_plot_and_summary_from_the_log(runs, tmp_path):
    import cv2

    from wscswap_fast.train.plot import main as plot_main
    from wscswap_fast.train.plot import read_log

    root, *_ = runs
    png, summary = tmp_path / "docs" / "losses.png", tmp_path / "docs" / "summary.json"
    assert plot_main([str(root / "straight"), "--out", str(png), "--summary", str(summary), "--title", "t",
                      "--command", "wscswap train ..."]) == 0
    image = cv2.imread(str(png))
    assert image is not None and image.shape[0] > 300 and image.shape[1] > 1000
    s = json.load(open(summary))
    assert s["steps"] == 4 and s["command"] == "wscswap train ..."
    assert {"identity", "reconstruction", "discriminator", "3dmm_landmark"} <= set(s["losses"])
    assert s["losses"]["identity"]["start"] == read_log(root / "straight")[0]["identity"]
    with pytest.raises(FileNotFoundError, match="training log not found"):
        read_log(tmp_path / "nothing")
