"""`wscswap eval` end to end on ../shared/data with a tiny checkpoint, and its input errors."""
import json
import os
import shutil

import numpy as np
import pytest
import torch

from wscswap_fast.cli import main

cv2 = pytest.importorskip("cv2")
pytest.importorskip("dlib")

pytestmark = pytest.mark.filterwarnings("ignore:no ArcFace checkpoint given")

IDENTITY_METRICS = ("id_similarity", "id_distance", "retrieval", "consistency", "target_leakage",
                    "target_leakage_distance")


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A width-0.125, 128-pixel generator saved as a training checkpoint (random weights)."""
    from wscswap_fast.models.generator import Generator, GeneratorConfig
    from wscswap_fast.train.checkpoint import save_checkpoint
    from wscswap_fast.train.config import load_config

    out = tmp_path_factory.mktemp("run")
    cfg = load_config(None, ["data.resolution=128", "model.generator_width=0.125", "model.identity_arch=iresnet18",
                             "model.regressor_arch=resnet18", f"run.out_dir={out}", "run.device=cpu"])
    torch.manual_seed(0)
    gen = Generator(GeneratorConfig.for_resolution(128, 0.125))
    return save_checkpoint(str(out), 1, {"generator": gen, "generator_ema": gen}, {}, {"step": 1}, cfg)


@pytest.fixture(scope="module")
def arcface_file(tmp_path_factory):
    """A random iresnet18 backbone.pth (the ArcFace path runs; its numbers mean nothing)."""
    from wscswap_fast.models.iresnet import iresnet18

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("arcface") / "backbone.pth"
    torch.save(iresnet18().state_dict(), path)
    return str(path)


def _folders(tmp_path, shared_data):
    photos, aligned = os.path.join(shared_data, "faces", "photos"), os.path.join(shared_data, "faces", "aligned")
    src, tgt = tmp_path / "sources", tmp_path / "targets"
    src.mkdir()
    tgt.mkdir()
    for name in ("biden.jpg", "obama.jpg", "obama2.jpg"):
        shutil.copy(os.path.join(photos, name), src / name)
    (src / "bad.jpg").write_bytes(b"not an image")                      # unreadable
    cv2.imwrite(str(src / "blank.png"), np.full((200, 200, 3), 127, np.uint8))  # no face
    for name in ("cage.jpg", "ljm3.jpg", "trump.jpg"):                 # dlib finds no face in ljm3.jpg
        shutil.copy(os.path.join(aligned, name), tgt / name)
    return src, tgt


@pytest.mark.slow
def test_eval_end_to_end_two_by_two(tmp_path, shared_data, tiny_checkpoint, arcface_file, capsys):
    src, tgt = _folders(tmp_path, shared_data)
    out = tmp_path / "out"
    rc = main(["eval", "--checkpoint", tiny_checkpoint, "--sources", str(src), "--targets", str(tgt),
               "--out", str(out), "--limit", "2", "--device", "cpu", "--arcface", arcface_file,
               "--arcface-arch", "iresnet18"])
    assert rc == 0
    printed = capsys.readouterr()
    assert "sources: 5 images, 2 used, skipped 1 unreadable and 1 without a face" in printed.out
    assert "targets: 3 images, 2 used, skipped 0 unreadable and 1 without a face" in printed.out
    assert "wscswap eval" in printed.err      # the tqdm bar
    for name in ("report.json", "report.md", "grid.png"):
        assert (out / name).is_file()
    assert not [n for n in os.listdir(out) if n.startswith(".tmp-")]

    report = json.loads((out / "report.json").read_text())
    s, t = report["inputs"]["sources"], report["inputs"]["targets"]
    assert (s["used"], s["unreadable"], s["no_face"]) == (2, ["bad.jpg"], ["blank.png"])
    assert (t["used"], t["no_face"]) == (2, ["ljm3.jpg"])
    assert report["counts"]["pairs"] == 4 and report["embedders"] == ["dlib", "arcface"]
    m = report["metrics"]
    for emb in ("dlib", "arcface"):
        for key in IDENTITY_METRICS:
            assert key in m[emb], (emb, key)
        assert m[emb]["id_similarity"]["count"] == 4
        assert set(m[emb]["retrieval"]) >= {"top1", "top5"} and m[emb]["retrieval"]["top5"] == 1.0
        assert m[emb]["consistency"]["mean"] is not None and len(m[emb]["consistency"]["per_source"]) == 2
    assert 0.0 <= m["dlib"]["same_identity_rate"] <= 1.0
    for key in ("pose_error_deg", "expression_error", "shape_error"):
        assert m[key]["count"] == 4 and m[key]["mean"] >= 0
    assert m["reconstruction"]["psnr"]["count"] == 2 and m["reconstruction"]["ssim"]["count"] == 2
    assert -1 <= m["reconstruction"]["ssim"]["mean"] <= 1
    for pair in report["pairs"]:
        assert {"source", "target", "dlib", "arcface", "pose_error_deg", "expression_error", "shape_error"} <= set(pair)
        assert isinstance(pair["dlib"]["same_identity"], bool)

    md = (out / "report.md").read_text()
    assert "| metric | value |" in md and "ID retrieval top-1 / top-5" in md and "pose error" in md
    grid = cv2.imread(str(out / "grid.png"))
    assert grid.shape == (3 * 112, 3 * 112, 3)


def test_empty_folder_is_reported_and_nothing_evaluated(tmp_path, shared_data, tiny_checkpoint, capsys):
    src, _ = _folders(tmp_path, shared_data)
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "out"
    rc = main(["eval", "--checkpoint", tiny_checkpoint, "--sources", str(src), "--targets", str(empty),
               "--out", str(out), "--limit", "1", "--device", "cpu", "--no-progress"])
    assert rc == 1
    printed = capsys.readouterr().out
    assert "targets: 0 images, 0 used" in printed and "holds no image" in printed and "nothing to evaluate" in printed
    report = json.loads((out / "report.json").read_text())
    assert report["counts"]["pairs"] == 0 and report["inputs"]["targets"]["images"] == 0
    assert report["inputs"]["sources"]["used"] == 1
    assert "Nothing to evaluate" in (out / "report.md").read_text() and (out / "grid.png").is_file()


def test_input_errors_are_clear(tmp_path):
    (tmp_path / "a").mkdir()
    base = ["eval", "--checkpoint", str(tmp_path), "--out", str(tmp_path / "out")]
    with pytest.raises(SystemExit, match="--sources folder does not exist: .*nope"):
        main(base + ["--sources", str(tmp_path / "nope"), "--targets", str(tmp_path / "a")])
    (tmp_path / "file.jpg").write_bytes(b"x")
    with pytest.raises(SystemExit, match="--targets must be a folder, got a file"):
        main(base + ["--sources", str(tmp_path / "a"), "--targets", str(tmp_path / "file.jpg")])
    with pytest.raises(SystemExit, match="--limit must be a positive integer"):
        main(base + ["--sources", str(tmp_path / "a"), "--targets", str(tmp_path / "a"), "--limit", "0"])
    with pytest.raises(SystemExit, match="--checkpoint does not exist"):
        main(["eval", "--checkpoint", str(tmp_path / "none"), "--out", str(tmp_path / "out"),
              "--sources", str(tmp_path / "a"), "--targets", str(tmp_path / "a")])
    with pytest.raises(SystemExit, match="--arcface checkpoint not found"):
        main(base + ["--sources", str(tmp_path / "a"), "--targets", str(tmp_path / "a"),
                     "--arcface", str(tmp_path / "none.pth")])
    with pytest.raises(SystemExit, match="--morphable does not exist"):
        main(base + ["--sources", str(tmp_path / "a"), "--targets", str(tmp_path / "a"),
                     "--morphable", str(tmp_path / "none")])
    with pytest.raises(SystemExit, match="unknown morphable model format"):
        main(base + ["--sources", str(tmp_path / "a"), "--targets", str(tmp_path / "a"),
                     "--morphable", str(tmp_path / "file.jpg")])
    with pytest.raises(SystemExit, match="--device must be"):
        main(base + ["--sources", str(tmp_path / "a"), "--targets", str(tmp_path / "a"), "--device", "tpu"])
