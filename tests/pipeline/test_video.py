"""The video pipeline end to end on a 30-frame clip of ../shared/data/video/short_hamilton_clip.mp4
with a tiny checkpoint trained here (one step of train()); live mode with that file as the camera; tracking and smoothing; errors."""
import os
import warnings

import cv2
import numpy as np
import pytest

from tests.backends import SHARED_DATA
from wscswap_fast.pipeline import tracking as T
from wscswap_fast.pipeline import video as V
from wscswap_fast.pipeline.live import run_live
from wscswap_fast.pipeline.provenance import TAG, read_tag

from .test_swapper import make_swapper, shared_detector, trained_checkpoint

CLIP = os.path.join(SHARED_DATA, "video", "short_hamilton_clip.mp4")
FIRST = 140  # frames 140-169 show a face HOG finds in every frame (upsample 1)


def _frames(path, start=0, count=None):
    cap = cv2.VideoCapture(path)
    cap.set(cv2.CAP_PROP_POS_FRAMES, start)
    out = []
    while count is None or len(out) < count:
        ok, f = cap.read()
        if not ok:
            break
        out.append(f)
    fps = cap.get(cv2.CAP_PROP_FPS)
    cap.release()
    return out, fps


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    if not os.path.isfile(CLIP):
        pytest.skip("../shared/data is not beside this checkout")
    frames, fps = _frames(CLIP, FIRST, 30)
    path = tmp_path_factory.mktemp("clip") / "clip30.mp4"
    h, w = frames[0].shape[:2]
    wr = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    for f in frames:
        wr.write(f)
    wr.release()
    return str(path)


@pytest.fixture(scope="module")
def swapper():
    if not os.path.isfile(CLIP):
        pytest.skip("../shared/data is not beside this checkout")
    sw = make_swapper(trained_checkpoint(), detect_every=3, batch_frames=4)  # a real (1-step) training run
    sw.set_source(os.path.join(SHARED_DATA, "faces", "photos", "obama.jpg"))
    return sw


@pytest.mark.slow
def test_video_end_to_end(swapper, clip, tmp_path):
    out = tmp_path / "out.mp4"
    with pytest.warns(UserWarning, match="ffmpeg is not on PATH"):
        stats = swapper.swap_video(clip, str(out), progress=False)
    src, src_fps = _frames(clip)
    got, got_fps = _frames(str(out))
    assert len(got) == len(src) == 30 == stats.frames
    assert got_fps == pytest.approx(src_fps) and got[0].shape == src[0].shape
    assert TAG in read_tag(str(out))
    assert stats.faces_swapped == 30 and stats.frames_without_face == 0
    # the face region changed, the corners did not (beyond the codec's noise)
    faces = shared_detector().detect(src[0])
    x0, y0, x1, y1 = (int(v) for v in faces[0].box)
    face_diff = np.abs(got[0][y0:y1, x0:x1].astype(int) - src[0][y0:y1, x0:x1].astype(int)).mean()
    corner_diff = np.abs(got[0][:40, :40].astype(int) - src[0][:40, :40].astype(int)).mean()
    assert face_diff > 3 * corner_diff + 1
    assert os.listdir(tmp_path) == ["out.mp4"]
    rows = {r["stage"]: r for r in stats.profile.rows()}
    assert rows["decode"]["calls"] >= 30 and rows["model"]["calls"] == 8  # batches of 4 frames
    assert rows["paste"]["calls"] == 8  # one paste_faces call per batch
    assert "fps" in stats.profile.table()


def test_copy_audio_warns_without_ffmpeg(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no ffmpeg here
    video = tmp_path / "v.mp4"
    video.write_bytes(b"x")
    with pytest.warns(UserWarning, match="ffmpeg is not on PATH"):
        assert V.copy_audio(str(video), str(video)) is False
    assert video.read_bytes() == b"x"


def test_frames_without_face_pass_through(swapper, tmp_path):
    path = tmp_path / "blank.mp4"
    wr = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (96, 64))
    for i in range(5):
        wr.write(np.full((64, 96, 3), 40 * i, np.uint8))
    wr.release()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stats = swapper.swap_video(str(path), str(tmp_path / "out.mp4"), progress=False)
    assert stats.frames == 5 and stats.frames_without_face == 5 and "5 frame(s) had no face" in stats.summary()
    a, _ = _frames(str(path))
    b, _ = _frames(str(tmp_path / "out.mp4"))
    assert len(b) == 5 and all(np.abs(x.astype(int) - y.astype(int)).mean() < 4 for x, y in zip(a, b))  # mp4v re-encode


def test_video_errors_leave_nothing(swapper, clip, tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="missing.mp4"):
        swapper.swap_video(str(tmp_path / "missing.mp4"), str(tmp_path / "o.mp4"))
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\0" * 100)
    with pytest.raises(ValueError, match="junk.mp4"):
        swapper.swap_video(str(junk), str(tmp_path / "o.mp4"))
    with pytest.raises(FileNotFoundError, match="output folder does not exist"):
        swapper.swap_video(clip, str(tmp_path / "nope" / "o.mp4"))
    with pytest.raises(ValueError, match="output video must end"):
        swapper.swap_video(clip, str(tmp_path / "o.avi"))
    # a failure half-way leaves neither the output nor a temp file
    real = swapper.render_batch
    calls = {"n": 0}

    def failing(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("model exploded")
        return real(*a, **k)

    monkeypatch.setattr(swapper, "render_batch", failing)
    with pytest.raises(RuntimeError, match="model exploded"):
        swapper.swap_video(clip, str(tmp_path / "o.mp4"), progress=False)
    assert sorted(os.listdir(tmp_path)) == ["junk.mp4"]
    monkeypatch.undo()
    # and so does a failure in the detection thread (no hang either)
    real_find = swapper.find_faces

    def failing_find(frame, *a, **k):
        calls["n"] += 1
        if calls["n"] == 10:
            raise RuntimeError("detector exploded")
        return real_find(frame, *a, **k)

    monkeypatch.setattr(swapper, "find_faces", failing_find)
    with pytest.raises(RuntimeError, match="detector exploded"):
        swapper.swap_video(clip, str(tmp_path / "o.mp4"), progress=False)
    assert sorted(os.listdir(tmp_path)) == ["junk.mp4"]


@pytest.mark.slow
def test_live_with_a_video_file_as_camera(swapper, clip, tmp_path):
    out = tmp_path / "live.mp4"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stats = run_live(swapper, clip, output=str(out), max_frames=12, display=False, progress=False)
    got, fps = _frames(str(out))
    assert stats.frames == 12 and len(got) == 12 and stats.faces_swapped == 12
    assert got[0].shape == (360, 640, 3) and TAG in read_tag(str(out))
    assert stats.profile.calls["model"] == 12  # live: one frame per batch (latency)
    with pytest.raises(ValueError, match="--output"):
        run_live(swapper, clip, output=None, display=False)
    with pytest.raises(FileNotFoundError, match="nocam.mp4"):
        run_live(swapper, str(tmp_path / "nocam.mp4"), output=str(out), display=False)


def test_headless_opencv_has_no_display(monkeypatch):
    from wscswap_fast.pipeline.live import has_display

    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    assert has_display() is False


def _counting_detector(calls: dict):
    """The shared dlib detector, counting its detect() calls in calls["n"]."""
    det = shared_detector()

    class Counting:
        landmarker = det.landmarker

        def detect(self, img):
            calls["n"] += 1
            return det.detect(img)

    return Counting()


@pytest.mark.parametrize("tracking", ["refit", "flow"])
def test_tracking_between_detections(clip, tracking):
    frames, _ = _frames(clip, 0, 7)
    calls = {"n": 0}
    tr = T.FaceTracker(_counting_detector(calls), detect_every=3, smoothing="none", tracking=tracking)
    for f in frames:
        tracks = tr.update(f)
        assert len(tracks) == 1
        tracked = tracks[0].extra["face"].landmarks68
        detected = shared_detector().detect(f)[0].landmarks68
        # within a few pixels of a fresh detection on a ~100-pixel face (flow drifts a little more)
        assert np.median(np.linalg.norm(tracked - detected, axis=1)) < (3.0 if tracking == "refit" else 4.5)
    assert calls["n"] == 3  # frames 0, 3, 6


def test_smoothing_filters():
    rng = np.random.default_rng()
    still = np.zeros((68, 2))
    for kind in ("ema", "one_euro"):
        f = T.make_filter(kind, alpha=0.5)
        noisy = [f(still + rng.normal(0, 1, still.shape), i / 30) for i in range(60)]
        assert np.std(noisy[10:]) < 0.8  # jitter of a still face is damped
    # One-Euro follows a fast move more closely than a slow EMA of the same still-face damping
    ema, euro = T.make_filter("ema", alpha=0.2), T.make_filter("one_euro", min_cutoff=1.0, beta=0.5)
    lag_ema = lag_euro = 0
    for i in range(30):
        x = np.full((68, 2), 10.0 * i)
        lag_ema, lag_euro = abs(ema(x, i / 30)[0, 0] - x[0, 0]), abs(euro(x, i / 30)[0, 0] - x[0, 0])
    assert lag_euro < lag_ema
    assert np.array_equal(T.make_filter("none")(still + 1, 0), still + 1)
    with pytest.raises(ValueError, match="smoothing"):
        T.make_filter("kalman")
    with pytest.raises(ValueError, match="smooth_alpha"):
        T.EmaFilter(1.5)
    with pytest.raises(ValueError, match="detect_every"):
        T.FaceTracker(shared_detector(), detect_every=0)
    with pytest.raises(ValueError, match="tracking"):
        T.FaceTracker(shared_detector(), tracking="kalman")


def test_is_video_path():
    assert V.is_video_path("a.MP4") and V.is_video_path("b.avi") and not V.is_video_path("c.png")


def test_swap_frames_generator(swapper, clip):
    frames, _ = _frames(clip, 0, 5)
    outs = list(swapper.swap_frames(frames, fps=29.97))
    assert len(outs) == 5 and all(o.shape == f.shape and o.dtype == np.uint8 for o, f in zip(outs, frames))
    assert any(not np.array_equal(o, f) for o, f in zip(outs, frames))
    with pytest.raises(ValueError, match="frame must be a uint8"):
        list(swapper.swap_frames([np.zeros((4, 4, 3), np.float32)]))


def test_live_preview_window_and_quit_key(swapper, clip, monkeypatch):
    """With a display: frames go to cv2.imshow; 'q' stops the stream (cv2's GUI faked here,
    since this OpenCV is headless)."""
    shown = []
    monkeypatch.setattr(cv2, "imshow", lambda name, frame: shown.append(frame.shape))
    monkeypatch.setattr(cv2, "waitKey", lambda ms: ord("q") if len(shown) >= 3 else -1)
    monkeypatch.setattr(cv2, "destroyAllWindows", lambda: None)
    stats = run_live(swapper, clip, output=None, display=True, progress=False)
    assert shown[:3] == [(360, 640, 3)] * 3
    assert 3 <= stats.frames <= 4 and len(shown) == stats.frames  # stops at the batch after 'q'


def test_detection_schedule_without_faces():
    blank = np.full((120, 160, 3), 100, np.uint8)
    for when_empty, expected in ((False, 3), (True, 7)):
        calls = {"n": 0}
        tr = T.FaceTracker(_counting_detector(calls), detect_every=3, detect_when_empty=when_empty)
        for _ in range(7):
            assert tr.update(blank) == []
        assert calls["n"] == expected  # strict: frames 0, 3, 6; else every frame


def test_track_dropped_when_the_face_leaves_the_frame(clip):
    frames, _ = _frames(clip, 0, 2)
    tr = T.FaceTracker(shared_detector(), detect_every=10, smoothing="none")
    assert len(tr.update(frames[0])) == 1
    shifted = np.zeros_like(frames[1])  # the next frame: the face is gone, and its box moved out
    tr.tracks[0].raw68 = tr.tracks[0].raw68 + [frames[1].shape[1], 0]
    assert tr.update(shifted) == []


def test_stage_profile_table_and_gpu_sync():
    from wscswap_fast.pipeline.profile import STAGES, StageProfile

    synced = []
    p = StageProfile(sync=lambda: synced.append(1))
    with p.stage("detect"):
        pass
    with p.stage("model"):
        pass
    assert len(synced) == 2  # before and after the model stage only
    p.add("decode", 0.5, calls=10)
    p.frames, p.wall = 10, 1.0
    table = p.table()
    assert all(s in table for s in STAGES) and "10 frames in 1.00 s wall: 10.00 fps" in table
    rows = {r["stage"]: r for r in p.rows()}
    assert rows["decode"]["ms_per_frame"] == pytest.approx(50.0) and rows["decode"]["calls"] == 10
    with pytest.raises(ValueError, match="stage must be one of"):
        p.add("upload", 1.0)
