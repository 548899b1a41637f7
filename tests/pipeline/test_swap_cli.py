"""`wscswap swap` and `wscswap live` end to end with a tiny checkpoint, --help, and every bad input."""
import os
import warnings

import cv2
import numpy as np
import pytest

from wscswap_fast.cli import main
from wscswap_fast.pipeline.provenance import TAG, read_tag

from .test_swapper import tiny_checkpoint


def _photo(shared_data, name):
    return os.path.join(shared_data, "faces", "photos", name)


def _run(argv):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random identity encoder, no ffmpeg
        return main(argv)


@pytest.fixture
def base(shared_data):
    return ["--source", _photo(shared_data, "obama.jpg"), "--checkpoint", tiny_checkpoint(), "--device", "cpu",
            "--no-progress"]


@pytest.mark.parametrize("command", ["swap", "live"])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--source", "--checkpoint", "--device", "--backend", "--faces", "--reference", "--profile", "--label"):
        assert flag in out
    assert ("--camera" if command == "live" else "--target") in out


def test_swap_image_with_profile_and_label(base, shared_data, tmp_path, capsys):
    out = tmp_path / "o.png"
    assert _run(["swap", *base, "--target", _photo(shared_data, "two_people.jpg"), "--output", str(out),
                 "--profile", "--label"]) == 0
    printed = capsys.readouterr().out
    assert "swapped 2 face(s) in 1 frame(s)" in printed
    for stage in ("decode", "detect", "align", "model", "paste", "encode"):
        assert stage in printed
    assert TAG in read_tag(str(out))
    assert cv2.imread(str(out)).shape == cv2.imread(_photo(shared_data, "two_people.jpg")).shape


def test_swap_video_reports_frames_without_face(base, shared_data, tmp_path, capsys):
    clip = tmp_path / "c.mp4"
    cap = cv2.VideoCapture(os.path.join(shared_data, "video", "short_hamilton_clip.mp4"))
    frames = [cap.read()[1] for _ in range(4)]  # the clip's first frames: HOG finds no face in frames 1 (0-based)
    cap.release()
    wr = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"mp4v"), 29.97, (640, 360))
    for f in frames + [np.zeros_like(frames[0])] * 2:  # two black frames: surely no face
        wr.write(f)
    wr.release()
    out = tmp_path / "o.mp4"
    assert _run(["swap", *base, "--target", str(clip), "--output", str(out), "--batch", "3"]) == 0
    printed = capsys.readouterr().out
    assert "in 6 frame(s)" in printed and "had no face to swap and were left unchanged" in printed
    assert TAG in read_tag(str(out))


def test_live_headless_writes_the_output(base, shared_data, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    out = tmp_path / "live.mp4"
    clip = os.path.join(shared_data, "video", "short_hamilton_clip.mp4")
    assert _run(["live", *base, "--camera", clip, "--output", str(out), "--max-frames", "3"]) == 0
    assert "in 3 frame(s)" in capsys.readouterr().out
    assert TAG in read_tag(str(out))
    with pytest.raises(SystemExit, match="give --output"):
        _run(["live", *base, "--camera", clip])


def test_errors(base, shared_data, tmp_path):
    target = _photo(shared_data, "obama2.jpg")
    blank = tmp_path / "blank.png"
    cv2.imwrite(str(blank), np.full((100, 100, 3), 255, np.uint8))
    no_face = list(base)
    no_face[1] = str(blank)
    with pytest.raises(SystemExit, match=r"wscswap swap: no face found in source image .*blank\.png"):
        _run(["swap", *no_face, "--target", target, "--output", str(tmp_path / "o.png")])
    with pytest.raises(SystemExit, match="target image not found: .*nothere.png"):
        _run(["swap", *base, "--target", str(tmp_path / "nothere.png"), "--output", str(tmp_path / "o.png")])
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"garbage")
    with pytest.raises(SystemExit, match=r"junk\.jpg could not be read"):
        _run(["swap", *base, "--target", str(junk), "--output", str(tmp_path / "o.png")])
    junk_video = tmp_path / "junk.mp4"
    junk_video.write_bytes(b"garbage")
    with pytest.raises(SystemExit, match=r"junk\.mp4 could not be opened"):
        _run(["swap", *base, "--target", str(junk_video), "--output", str(tmp_path / "o.mp4")])
    with pytest.raises(SystemExit, match="output folder does not exist"):
        _run(["swap", *base, "--target", target, "--output", str(tmp_path / "no" / "o.png")])
    with pytest.raises(SystemExit, match="is a directory"):
        os.mkdir(tmp_path / "dir.png")
        _run(["swap", *base, "--target", target, "--output", str(tmp_path / "dir.png")])
    with pytest.raises(SystemExit, match="output image must end"):
        _run(["swap", *base, "--target", target, "--output", str(tmp_path / "o.tiff")])
    with pytest.raises(SystemExit, match="--faces reference needs --reference"):
        _run(["swap", *base, "--target", target, "--output", str(tmp_path / "o.png"), "--faces", "reference"])
    with pytest.raises(SystemExit, match="checkpoint not found"):
        _run(["swap", "--source", target, "--checkpoint", str(tmp_path / "ck"), "--target", target,
              "--output", str(tmp_path / "o.png")])
    with pytest.raises(SystemExit, match="--detect-every must be >= 1"):
        _run(["swap", *base, "--target", target, "--output", str(tmp_path / "o.png"), "--detect-every", "0"])
    assert sorted(os.listdir(tmp_path)) == ["blank.png", "dir.png", "junk.jpg", "junk.mp4"]  # nothing partial
