"""pytest bench/ --benchmark-only -k paste: paste_faces at 1080p against the OpenCV pipeline."""
import pytest

from wscswap_fast import ops
from wscswap_fast.benchmarks.paste_faces import FEATHER, make_case, minimal_bytes
from wscswap_fast.ops.paste_faces_opencv import opencv_paste


@pytest.mark.parametrize("contender", ["opencv", "cpu", "cuda", "triton"])
@pytest.mark.parametrize("faces", [1, 4])
def test_paste_faces_1080p(benchmark, device, sync, skip_unless_native, contender, faces):
    skip_unless_native(contender, device)
    frames, crops, masks, affines, frame_idx = make_case(faces, 256, 1080, 1920, device)
    if contender == "opencv":
        args = [t.cpu().numpy() for t in (frames, crops, masks, affines, frame_idx)]
        fn = lambda: opencv_paste(*args, feather=FEATHER)  # noqa: E731
    else:
        fn = lambda: ops.paste_faces(frames, crops, masks, affines, frame_idx, feather=FEATHER,  # noqa: E731
                                     out=frames, backend=contender)
    benchmark.group = f"paste_faces {faces} faces 1080p {device}"
    benchmark.extra_info["bytes"] = minimal_bytes(frames, crops, affines, frame_idx)
    benchmark.pedantic(lambda: (fn(), sync()), warmup_rounds=2, rounds=20)
