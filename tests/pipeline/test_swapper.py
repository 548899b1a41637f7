"""pipeline.swapper on ../shared/data photos with a tiny checkpoint: sources, face selection,
batching (one generator call and one paste_faces call per batch), and every bad input."""
import functools
import os
import tempfile
import warnings

import cv2
import numpy as np
import pytest
import torch

from wscswap_fast.pipeline import swapper as S
from wscswap_fast.pipeline.detect import DlibDetector


@functools.lru_cache(maxsize=None)
def tiny_checkpoint() -> str:
    """A width-0.125, 128-pixel generator (random weights) saved with the trainer's checkpoint
    format, once per test process: the quick stand-in for most pipeline tests."""
    from wscswap_fast.models.generator import Generator, GeneratorConfig
    from wscswap_fast.train.checkpoint import save_checkpoint
    from wscswap_fast.train.config import load_config

    out = tempfile.mkdtemp(prefix="wscswap-pipeline-ckpt-")
    cfg = load_config(None, ["data.resolution=128", "model.generator_width=0.125", "model.identity_arch=iresnet18",
                             "model.regressor_arch=resnet18", f"run.out_dir={out}", "run.device=cpu"])
    torch.manual_seed(0)
    gen = Generator(GeneratorConfig.for_resolution(128, 0.125))
    return str(save_checkpoint(out, 1, {"generator": gen, "generator_ema": gen}, {}, {"step": 1}, cfg))


@functools.lru_cache(maxsize=None)
def trained_checkpoint() -> str:
    """A real training run, once per test process: one step of `train()` on the 24 aligned crops
    at 128^2, generator width 0.125, iresnet18 / resnet18 encoders (random: no weights offline).
    The pipeline's plumbing does not depend on what the network has learned."""
    from tests.backends import SHARED_DATA
    from wscswap_fast.train.config import load_config
    from wscswap_fast.train.trainer import train

    faces = os.path.join(SHARED_DATA, "faces", "aligned")
    if not os.path.isdir(faces):
        pytest.skip("../shared/data is not beside this checkout")
    out = tempfile.mkdtemp(prefix="wscswap-pipeline-run-")
    cfg = load_config(None, [f"data.root={faces}", "data.resolution=128", "data.batch_size=2", "data.workers=0",
                             f"data.cache_dir={out}/cache", "model.generator_width=0.125",
                             "model.identity_arch=iresnet18", "model.regressor_arch=resnet18", f"run.out_dir={out}",
                             "run.device=cpu", "run.steps=1", "run.log_every=1", "run.image_every=0",
                             "run.save_every=0"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random encoders
        summary = train(cfg, progress=False)
    return str(summary["checkpoint"])


@functools.lru_cache(maxsize=None)
def shared_detector() -> DlibDetector:
    return DlibDetector()


def make_swapper(checkpoint: str | None = None, **options) -> S.Swapper:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the random identity encoder warns that identity will not transfer
        return S.Swapper(checkpoint or tiny_checkpoint(), device="cpu", options=S.SwapOptions(**options),
                         detector=shared_detector())


def photo(shared_data, name):
    return os.path.join(shared_data, "faces", "photos", name)


@pytest.fixture(scope="module")
def swapper():
    sw = make_swapper()
    return sw


@pytest.fixture
def sourced(swapper, shared_data):
    swapper.options.faces = "all"
    swapper.options.label = None
    swapper.set_source(photo(shared_data, "obama.jpg"))
    return swapper


def _changed_boxes(before, after, faces, margin=0.15):
    """Which face boxes changed, and whether anything far outside all boxes changed."""
    diff = np.abs(after.astype(np.int16) - before.astype(np.int16)).max(axis=2) > 0
    changed = []
    outside = np.ones(diff.shape, bool)
    for f in faces:
        x0, y0, x1, y1 = f.box
        w, h = x1 - x0, y1 - y0
        inner = (slice(int(y0 + margin * h), int(y1 - margin * h)), slice(int(x0 + margin * w), int(x1 - margin * w)))
        changed.append(bool(diff[inner].any()))
        outside[max(0, int(y0 - h)):int(y1 + h), max(0, int(x0 - w)):int(x1 + w)] = False
    return changed, bool(diff[outside].any())


def test_swap_image_all_faces(sourced, shared_data):
    img = cv2.imread(photo(shared_data, "two_people.jpg"))
    out = sourced.swap_image(img.copy())
    assert out.shape == img.shape and out.dtype == np.uint8
    changed, outside = _changed_boxes(img, out, shared_detector().detect(img))
    assert changed == [True, True] and not outside


def test_largest_face_only(sourced, shared_data):
    img = cv2.imread(photo(shared_data, "simswap_multi_people.jpg"))
    faces = shared_detector().detect(img)
    sourced.options.faces = "largest"
    out = sourced.swap_image(img)
    changed, _ = _changed_boxes(img, out, faces, margin=0.3)
    largest = int(np.argmax([f.area for f in faces]))
    assert changed == [i == largest for i in range(len(faces))]


def test_reference_face_only(sourced, shared_data):
    # obama and biden side by side; the reference (another photo of obama) picks obama only
    a, b = cv2.imread(photo(shared_data, "obama.jpg")), cv2.imread(photo(shared_data, "biden.jpg"))
    b = b[:int(b.shape[0] * 0.45)]  # biden.jpg is a tall portrait: keep the head
    h = 500
    a = cv2.resize(a, (round(a.shape[1] * h / a.shape[0]), h))
    b = cv2.resize(b, (round(b.shape[1] * h / b.shape[0]), h))
    img = np.ascontiguousarray(np.concatenate([a, b], axis=1))
    faces = sorted(shared_detector().detect(img), key=lambda f: f.box[0])
    assert len(faces) == 2
    sourced.options.faces = "reference"
    sourced.set_reference(photo(shared_data, "obama2.jpg"))
    changed, _ = _changed_boxes(img, sourced.swap_image(img), faces, margin=0.2)
    assert changed == [True, False]
    sourced.options.threshold = 0.01  # nobody is that close: nothing swapped
    try:
        assert np.array_equal(sourced.swap_image(img), img)
    finally:
        sourced.options.threshold = 0.6


def test_sources_are_averaged(swapper, shared_data):
    a = swapper.set_source(photo(shared_data, "obama.jpg")).clone()
    b = swapper.set_source(photo(shared_data, "obama2.jpg")).clone()
    both = swapper.set_source([photo(shared_data, "obama.jpg"), cv2.imread(photo(shared_data, "obama2.jpg"))])
    expect = torch.nn.functional.normalize(a + b, dim=1)
    torch.testing.assert_close(both, expect, rtol=1e-4, atol=1e-5)
    assert both.shape == (1, 512)


def test_one_model_call_and_one_paste_per_batch(sourced, shared_data, monkeypatch):
    from wscswap_fast import ops

    img1 = cv2.imread(photo(shared_data, "two_people.jpg"))
    img2 = np.ascontiguousarray(img1[:, ::-1])
    det = shared_detector()
    faces = [det.detect(img1), det.detect(img2)]
    singles = [sourced.swap_faces([img], [f])[0] for img, f in zip((img1, img2), faces)]
    calls = {"paste": 0, "model": 0}
    real_paste, real_forward = ops.paste_faces, sourced.generator.forward

    def counting_paste(*a, **k):
        calls["paste"] += 1
        return real_paste(*a, **k)

    def counting_forward(xt, mt, z):
        calls["model"] += 1
        assert xt.shape[0] == 4  # 2 faces x 2 frames in one call
        return real_forward(xt, mt, z)

    monkeypatch.setattr(ops, "paste_faces", counting_paste)
    monkeypatch.setattr(sourced.generator, "forward", counting_forward)
    batched = sourced.swap_faces([img1, img2], faces)
    assert calls == {"paste": 1, "model": 1}
    for s, b in zip(singles, batched):  # batching changes nothing (instance norm is per sample)
        assert np.abs(s.astype(int) - b.astype(int)).max() <= 1


def test_no_face_in_target_passes_through(sourced, shared_data, tmp_path):
    blank = np.full((200, 300, 3), 90, np.uint8)
    assert np.array_equal(sourced.swap_image(blank), blank)
    path = tmp_path / "blank.png"
    cv2.imwrite(str(path), blank)
    stats = sourced.swap_image_file(str(path), str(tmp_path / "out.png"))
    assert stats.frames_without_face == 1 and stats.faces_swapped == 0
    assert "no face" in stats.summary()
    assert np.array_equal(cv2.imread(str(tmp_path / "out.png")), blank)


def test_swap_image_file_writes_tagged_png_and_jpeg(sourced, shared_data, tmp_path):
    from wscswap_fast.pipeline.provenance import TAG, read_tag

    for name in ("out.png", "out.jpg"):
        stats = sourced.swap_image_file(photo(shared_data, "obama2.jpg"), str(tmp_path / name))
        assert stats.faces_swapped == 1 and stats.frames == 1
        assert TAG in read_tag(str(tmp_path / name))
        assert cv2.imread(str(tmp_path / name)).shape == cv2.imread(photo(shared_data, "obama2.jpg")).shape
    assert sorted(os.listdir(tmp_path)) == ["out.jpg", "out.png"]  # no temp files left


def test_visible_label(sourced, shared_data):
    img = cv2.imread(photo(shared_data, "obama2.jpg"))
    plain = sourced.swap_image(img)
    sourced.options.label = "generated by wscswap_fast"
    try:
        labelled = sourced.swap_image(img)
    finally:
        sourced.options.label = None
    diff = np.abs(labelled.astype(int) - plain.astype(int)).max(axis=2) > 0
    ys, xs = np.nonzero(diff)
    assert len(ys) and ys.min() > img.shape[0] * 0.8 and xs.min() < 10  # bottom-left band only


def test_bad_inputs(swapper, shared_data, tmp_path):
    blank = tmp_path / "blank.jpg"
    cv2.imwrite(str(blank), np.full((120, 120, 3), 200, np.uint8))
    with pytest.raises(ValueError, match=r"no face found in source image .*blank\.jpg"):
        swapper.set_source(str(blank))
    with pytest.raises(ValueError, match=r"no face found in source image .*blank\.jpg"):
        swapper.set_source([photo(shared_data, "obama.jpg"), str(blank)])
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        swapper.set_source(str(tmp_path / "missing.jpg"))
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image")
    with pytest.raises(ValueError, match="junk.png"):
        swapper.set_source(str(junk))
    with pytest.raises(ValueError, match="at least one"):
        swapper.set_source([])
    with pytest.raises(TypeError, match="source image"):
        swapper.set_source([3])
    with pytest.raises(ValueError, match=r"no face found in reference image .*blank\.jpg"):
        swapper.set_reference(str(blank))
    with pytest.raises(ValueError, match="output image must end"):
        swapper.swap_image_file(photo(shared_data, "obama.jpg"), str(tmp_path / "out.gif"))
    with pytest.raises(FileNotFoundError, match="output folder does not exist"):
        swapper.swap_image_file(photo(shared_data, "obama.jpg"), str(tmp_path / "nope" / "out.png"))
    with pytest.raises(FileNotFoundError, match="target image not found"):
        swapper.swap_image_file(str(tmp_path / "missing.png"), str(tmp_path / "out.png"))
    assert not (tmp_path / "out.png").exists()


def test_swap_needs_a_source_and_a_reference(shared_data):
    sw = make_swapper()
    img = cv2.imread(photo(shared_data, "obama2.jpg"))
    with pytest.raises(ValueError, match="set_source"):
        sw.swap_image(img)
    sw.set_source(img)
    sw.options.faces = "reference"
    with pytest.raises(ValueError, match="set_reference"):
        sw.swap_image(img)


def test_constructor_errors(tmp_path):
    ck = tiny_checkpoint()
    with pytest.raises(FileNotFoundError, match="nowhere"):
        S.Swapper(str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="device"):
        S.Swapper(ck, device="tpu")
    with pytest.raises(ValueError, match="backend"):
        S.Swapper(ck, device="cpu", backend="fast")
    with pytest.raises(TypeError, match="dtype"):
        S.Swapper(ck, device="cpu", dtype=torch.int8)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="needs a CUDA device"):
            S.Swapper(ck, device="cpu", dtype=torch.float16)
    for bad in (dict(faces="some"), dict(detect_every=0), dict(batch_frames=0), dict(smoothing="kalman"),
                dict(smooth_alpha=0.0), dict(threshold=0.0), dict(align_mode="dlib"), dict(tracking="kalman")):
        with pytest.raises(ValueError, match=next(iter(bad))):
            S.SwapOptions(**bad).validate()


@pytest.mark.cuda
def test_cuda_half_precision_swap(shared_data):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sw = S.Swapper(tiny_checkpoint(), device="cuda", dtype=torch.float16, detector=shared_detector())
    sw.set_source(photo(shared_data, "obama.jpg"))
    img = cv2.imread(photo(shared_data, "two_people.jpg"))
    out = sw.swap_image(img)
    changed, outside = _changed_boxes(img, out, shared_detector().detect(img))
    assert changed == [True, True] and not outside


def test_paste_mask_is_the_hull_grown_by_a_disc(shared_data):
    from wscswap_fast.pipeline.align import estimate_affine, transform_points
    from wscswap_fast.pipeline.masks import hull_mask

    img = cv2.imread(photo(shared_data, "obama2.jpg"))
    f = shared_detector().detect(img)[0]
    lm = transform_points(estimate_affine(f.landmarks5, 256), f.landmarks68)
    hull = hull_mask(lm, 256)
    grown = S.grown_hull_mask(lm, 256, 16)
    assert (grown >= hull).all()
    expect = cv2.dilate((hull * 255).astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (33, 33))) > 127
    got = grown > 0.5
    assert (got & expect).sum() / (got | expect).sum() > 0.98  # IoU with a true dilation
    same = S.grown_hull_mask(lm, 256, 0) > 0.5  # grow 0: the hull itself
    assert (same ^ (hull > 0.5)).sum() < 0.01 * (hull > 0.5).sum()
