"""pytest bench/ --benchmark-only -k pipeline: one batch of 8 frames of the shared clip through
the swap pipeline (track, align, model, paste) at 128^2 and 256^2, detection every frame or every
5th frame with tracking; skips when ../shared/data is missing."""
import os
import warnings

import pytest

from wscswap_fast.benchmarks import pipeline as P

pytest.importorskip("dlib")


@pytest.fixture(scope="module")
def frames():
    if not os.path.isfile(P.CLIP):
        pytest.skip(f"the shared data is missing: {P.CLIP}")
    import cv2

    cap = cv2.VideoCapture(P.CLIP)
    cap.set(cv2.CAP_PROP_POS_FRAMES, P.START)
    out = [cap.read()[1] for _ in range(8)]
    cap.release()
    return out


@pytest.mark.parametrize("setting", list(P.SETTINGS))
@pytest.mark.parametrize("resolution", [128, 256])
def test_pipeline_batch(benchmark, device, frames, resolution, setting):
    from wscswap_fast.pipeline.profile import StageProfile
    from wscswap_fast.pipeline.swapper import SwapOptions, Swapper

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sw = Swapper(P.checkpoint(resolution, 1.0), device=str(device), options=SwapOptions(**P.SETTINGS[setting]))
    sw.set_source(P.SOURCE)
    tracker = sw.tracker(30.0)
    benchmark.group = f"pipeline 8 frames 640x360 {resolution}^2 {device}"
    benchmark.extra_info["frames"] = len(frames)
    _, counts = sw.process_batch(frames, tracker, StageProfile())
    assert counts == [1] * len(frames)  # a face in every frame of the segment
    benchmark.pedantic(lambda: sw.process_batch(frames, tracker, StageProfile()), warmup_rounds=1, rounds=3)


def test_suite_quick_rows(device):
    if not os.path.isfile(P.CLIP):
        pytest.skip(f"the shared data is missing: {P.CLIP}")
    rows = P.run(device, quick=True)
    stages = [r.case.rsplit(": ", 1)[1] for r in rows[1:]]
    assert stages == ["decode", "detect", "align", "model", "paste", "encode"]
    assert rows[0].median_ms > 0 and "fps" in rows[0].note
