"""`wscswap train`: --help, a tiny run with key=value overrides and a config file, --resume,
clear errors for bad settings, and the same command under torchrun with 2 CPU processes."""
import json
import os
import subprocess
import sys

import pytest

from tests.train.test_trainer import make_folder, tiny_overrides
from wscswap_fast.cli import main


def test_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for word in ("--config", "--resume", "section.key=value", "torchrun"):
        assert word in out


def test_tiny_run_then_resume(tmp_path, capsys):
    img_dir, mask_dir = make_folder(str(tmp_path / "data"))
    out_dir = tmp_path / "run"
    overrides = tiny_overrides(img_dir, mask_dir, str(out_dir), steps=1)
    # half the settings from a YAML file, the rest (and one that wins over the file) as overrides
    config = tmp_path / "train.yaml"
    config.write_text("data:\n  resolution: 256\n  batch_size: 2\nloss:\n  identity: 2.5\n")
    assert main(["train", "--config", str(config), *overrides, "data.resolution=128"]) == 0
    assert "done, step 1" in capsys.readouterr().out
    saved = json.load(open(out_dir / "config.json"))
    assert saved["loss"]["identity"] == 2.5 and saved["data"]["resolution"] == 128
    assert os.path.isdir(out_dir / "checkpoints" / "step_00000001")
    # --resume continues from step 1 to run.steps=2
    assert main(["train", "--resume", *overrides, "run.steps=2"]) == 0
    captured = capsys.readouterr()
    assert "resumed from" in captured.err and "done, step 2" in captured.out
    assert [json.loads(line)["step"] for line in open(out_dir / "log.jsonl")] == [1, 2]
    # --resume with only the run folder: its saved config is the base
    assert main(["train", "--resume", f"run.out_dir={out_dir}", "run.steps=3"]) == 0
    assert "done, step 3" in capsys.readouterr().out
    assert json.load(open(out_dir / "config.json"))["loss"]["identity"] == 2.5


@pytest.mark.parametrize("args, message", [
    (["data.resolution=100"], "data.resolution=100: must be one of"),
    (["loss.nonsense=1"], "unknown key 'loss.nonsense'"),
    (["run.steps"], "expected section.key=value"),
    (["--config", "/nonexistent/train.yaml"], "config file not found"),
    (["data.root="], "data.root is not set"),
    (["data.root=/nonexistent/faces", "run.device=cpu"], "/nonexistent/faces"),
])
def test_bad_settings_are_clear_errors(tmp_path, args, message):
    with pytest.raises(SystemExit) as e:
        main(["train", f"run.out_dir={tmp_path / 'run'}", "data.resolution=128", "model.identity_arch=iresnet18",
              "model.regressor_arch=resnet18", "model.generator_width=0.125", *args])
    assert str(e.value).startswith("wscswap train: ") and message in str(e.value)


@pytest.mark.slow
def test_torchrun_two_cpu_processes(tmp_path):
    img_dir, mask_dir = make_folder(str(tmp_path / "data"))
    out_dir = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "wscswap_fast.cli", "train", *tiny_overrides(img_dir, mask_dir, str(out_dir), steps=2)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300,
                          cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    assert proc.returncode == 0, proc.stderr[-3000:]
    # rank 0 alone reports and writes: one summary line, one log line per step, one warning
    assert proc.stdout.count("done, step 2") == 1
    assert proc.stderr.count("training with frozen RANDOM encoders") == 1
    assert [json.loads(line)["step"] for line in open(out_dir / "log.jsonl")] == [1, 2]
    state = json.load(open(out_dir / "checkpoints" / "step_00000002" / "state.json"))
    assert state["state"]["world_size"] == 2
