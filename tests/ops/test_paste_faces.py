"""paste_faces against the plain-PyTorch float64 reference and the OpenCV pipeline."""
import glob
import os

import cv2
import numpy as np
import pytest
import torch

from wscswap_fast.ops import paste_faces
from wscswap_fast.ops.paste_faces import feather_reference, gaussian_kernel, reference
from wscswap_fast.ops.paste_faces_opencv import opencv_paste

from ..backends import ALL_BACKENDS, require


def _similarity(scale, angle_deg, tx, ty):
    """A frame->crop affine: rotate and scale about the origin, then translate."""
    a = np.deg2rad(angle_deg)
    return [[scale * np.cos(a), -scale * np.sin(a), tx], [scale * np.sin(a), scale * np.cos(a), ty]]


def _case(b, h, w, s, affines, frame_idx, crop_dtype=torch.float32, seed=None):
    g = torch.Generator().manual_seed(seed if seed is not None else torch.seed())
    k = len(frame_idx)
    frames = torch.randint(0, 256, (b, h, w, 3), generator=g, dtype=torch.uint8)
    crops = torch.rand((k, 3, s, s), generator=g)
    if crop_dtype == torch.uint8:
        crops = (crops * 255).round().to(torch.uint8)
    else:
        crops = crops.to(crop_dtype)
    masks = torch.rand((k, 1, s, s), generator=g) * 0.8 + 0.1
    affines = torch.tensor(affines, dtype=torch.float32).reshape(k, 2, 3)
    return frames, crops, masks, affines, torch.tensor(frame_idx, dtype=torch.int64)


CASES = {
    # two overlapping faces in frame 0 (composite order matters), one in frame 1
    "overlap": (2, 40, 50, 17, [_similarity(0.9, 10, -5, -3), _similarity(1.1, 0, -20, -10), _similarity(0.8, -25, 3, 2)], [0, 1, 0]),
    # S=37, a face partly outside the frame on the left and top
    "outside": (1, 33, 41, 37, [_similarity(1.3, 5, 10, 12)], [0]),
    "one_pixel_frame_row": (1, 1, 29, 7, [_similarity(1.0, 0, -3, 0)], [0]),
    "no_faces": (2, 9, 11, 5, [], []),
    # a face entirely outside its frame touches nothing
    "offscreen": (1, 12, 12, 5, [_similarity(1.0, 0, 100, 100)], [0]),
}


def _assert_close_u8(got, want, max_frac=1e-3, min_allowed=2):
    """At most 1 grey level apart, on at most max_frac of the values but never fewer than min_allowed.

    A value differs only where the float64 reference lands on a rounding tie (measured: within
    1e-5 grey levels of k + 0.5, where the fp32 kernels' error lies): at most 2 such values in
    4,800 draws of each larger case, and one in about 1 draw in 10^4 of one_pixel_frame_row,
    whose 87 values a fraction alone would allow none of.
    """
    diff = (got.int() - want.int()).abs()
    assert diff.max().item() <= 1, f"max difference {diff.max().item()}"
    differing = int((diff > 0).sum())
    allowed = max(max_frac * diff.numel(), min_allowed)
    assert differing <= allowed, f"{differing} of {diff.numel()} values differ (allowed {allowed:g})"


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("crop_dtype", [torch.float32, torch.uint8, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("feather", [0, 1, 2, 4])
@pytest.mark.parametrize("case", list(CASES))
def test_matches_reference(backend, crop_dtype, feather, case):
    device = require(backend)
    b, h, w, s, aff, idx = CASES[case]
    frames, crops, masks, affines, frame_idx = _case(b, h, w, s, aff, idx, crop_dtype)
    if feather >= s:
        pytest.skip("feather must be below the crop size")
    want = reference(frames, crops, masks, affines, frame_idx, feather)
    args = [t.to(device) for t in (frames, crops, masks, affines, frame_idx)]
    got = paste_faces(*args, feather=feather, backend=backend)
    assert got.dtype == torch.uint8 and got.shape == frames.shape
    _assert_close_u8(got.cpu(), want)
    assert torch.equal(args[0].cpu(), frames), "frames must not change without out="


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_in_place_and_out(backend):
    device = require(backend)
    frames, crops, masks, affines, frame_idx = (t.to(device) for t in _case(*CASES["overlap"]))
    want = paste_faces(frames, crops, masks, affines, frame_idx, backend="reference")
    out = torch.zeros_like(frames)
    assert paste_faces(frames, crops, masks, affines, frame_idx, out=out, backend=backend) is out
    _assert_close_u8(out.cpu(), want.cpu())
    inplace = frames.clone()
    assert paste_faces(inplace, crops, masks, affines, frame_idx, out=inplace, backend=backend) is inplace
    _assert_close_u8(inplace.cpu(), want.cpu())


def _every_other_column(t, dim):
    """The same values as t, as a strided view into a tensor twice as wide."""
    shape = list(t.shape)
    shape[dim] *= 2
    wide = torch.zeros(shape, dtype=t.dtype)
    wide.narrow(dim, 0, shape[dim]).unfold(dim, 1, 2).squeeze(-1).copy_(t)
    return wide.unfold(dim, 1, 2).squeeze(-1)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_non_contiguous_inputs(backend):
    device = require(backend)
    frames, crops, masks, affines, frame_idx = _case(*CASES["overlap"])
    want = reference(frames, crops, masks, affines, frame_idx, 2)
    wide = _every_other_column(frames, dim=2)
    crops_nc = crops.permute(0, 1, 3, 2).contiguous().permute(0, 1, 3, 2)
    masks_nc = _every_other_column(masks, dim=3)
    assert not (wide.is_contiguous() or crops_nc.is_contiguous() or masks_nc.is_contiguous())
    args = [t.to(device) for t in (wide, crops_nc, masks_nc, affines.double(), frame_idx)]
    _assert_close_u8(paste_faces(*args, feather=2, backend=backend).cpu(), want)


def test_fast_backend_touches_only_face_boxes():
    frames, crops, masks, affines, frame_idx = _case(*CASES["outside"])
    out = paste_faces(frames, crops, masks, affines, frame_idx, backend="cpu")
    changed = (out != frames).any(dim=3)[0]
    ys, xs = torch.nonzero(changed, as_tuple=True)
    a = affines[0].double()
    inv = torch.linalg.inv(a[:, :2])
    for x, y in zip(xs.tolist(), ys.tolist()):
        xc, yc = (a[:, :2] @ torch.tensor([x, y], dtype=torch.float64) + a[:, 2]).tolist()
        assert -1 < xc < 37 and -1 < yc < 37
    assert inv.det() != 0


def test_gaussian_kernel_matches_opencv():
    for ksize in (3, 5, 7, 9, 11, 21):
        np.testing.assert_allclose(gaussian_kernel(ksize), cv2.getGaussianKernel(ksize, 0)[:, 0], atol=1e-7)


@pytest.mark.parametrize("feather", [1, 2, 3, 6])
def test_feather_matches_opencv(feather):
    rng = np.random.default_rng()
    masks = rng.random((2, 1, 23, 23)).astype(np.float32)
    got = feather_reference(torch.from_numpy(masks), feather).numpy()
    for k in range(2):
        m = cv2.erode(masks[k, 0], np.ones((feather, feather), np.uint8))
        m = cv2.GaussianBlur(m, (2 * feather + 1, 2 * feather + 1), 0)
        np.testing.assert_allclose(got[k, 0], m, atol=1e-5)


def _real_face_case(shared_data, faces, frame_hw=(360, 640), s=224, seed=0):
    """Real aligned faces pasted back into a real video frame at rotated, scaled positions."""
    paths = sorted(glob.glob(os.path.join(shared_data, "faces", "aligned", "*.jpg")))[:faces]
    crops = np.stack([cv2.imread(p)[..., ::-1].transpose(2, 0, 1) for p in paths]).astype(np.float32) / 255
    cap = cv2.VideoCapture(os.path.join(shared_data, "video", "short_hamilton_clip.mp4"))
    ok, frame = cap.read()
    cap.release()
    assert ok
    frame = cv2.resize(frame, frame_hw[::-1])
    rng = np.random.default_rng(seed)
    affines, masks = [], []
    yy, xx = np.mgrid[0:s, 0:s]
    for k in range(faces):
        scale = rng.uniform(0.6, 1.6)
        affines.append(_similarity(scale, rng.uniform(-30, 30), -rng.uniform(0, frame_hw[1] * scale * 0.7), -rng.uniform(0, frame_hw[0] * scale * 0.5)))
        masks.append((((xx - s / 2) / (s * 0.4)) ** 2 + ((yy - s / 2) / (s * 0.48)) ** 2 < 1).astype(np.float32))
    return (frame[None], crops, np.stack(masks)[:, None], np.array(affines, dtype=np.float32), np.zeros(faces, dtype=np.int64))


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("feather", [0, 5, 11])
def test_agrees_with_opencv_pipeline_on_real_faces(backend, feather, shared_data):
    device = require(backend)
    frames, crops, masks, affines, frame_idx = _real_face_case(shared_data, faces=3)
    want = opencv_paste(frames, crops, masks, affines, frame_idx, feather)
    args = [torch.from_numpy(a).to(device) for a in (frames, crops, masks, affines, frame_idx)]
    got = paste_faces(*args, feather=feather, backend=backend).cpu().numpy()
    diff = np.abs(got.astype(int) - want.astype(int))
    assert (diff <= 1).mean() >= 0.999, f"{(diff > 1).mean():.5f} of pixels differ by more than 1"


def _bad_call(**change):
    frames, crops, masks, affines, frame_idx = _case(*CASES["overlap"], seed=5)
    kwargs = dict(frames=frames, crops=crops, masks=masks, affines=affines, frame_idx=frame_idx)
    kwargs.update(change)
    return lambda: paste_faces(**kwargs)


_nan_affine = torch.tensor([_similarity(1, 0, 0, 0)] * 3, dtype=torch.float32)
_nan_affine[1, 0, 2] = float("nan")
_singular = torch.tensor([_similarity(1, 0, 0, 0), [[1, 2, 0], [2, 4, 0]], _similarity(1, 0, 0, 0)], dtype=torch.float32)


@pytest.mark.parametrize(
    "change, exc, words",
    [
        (dict(frames=torch.zeros(2, 40, 50, 4, dtype=torch.uint8)), ValueError, ["frames", "(B,H,W,3)"]),
        (dict(frames=torch.zeros(2, 40, 50, 3)), TypeError, ["frames", "torch.float32"]),
        (dict(crops=torch.rand(3, 3, 17, 16)), ValueError, ["crops", "(3, 3, 17, 16)"]),
        (dict(crops=torch.rand(3, 3, 17, 17, dtype=torch.float64)), TypeError, ["crops", "torch.float64"]),
        (dict(masks=torch.rand(3, 1, 16, 16)), ValueError, ["masks", "(3, 1, 16, 16)"]),
        (dict(masks=torch.rand(3, 1, 17, 17, device="meta")), ValueError, ["masks", "device"]),
        (dict(affines=torch.zeros(3, 3, 3)), ValueError, ["affines", "(K,2,3)"]),
        (dict(affines=_nan_affine), ValueError, ["affines[1]", "NaN"]),
        (dict(affines=_singular), ValueError, ["affines[1]", "not invertible"]),
        (dict(frame_idx=torch.tensor([0, 2, 0])), ValueError, ["frame_idx[1]", "out of range"]),
        (dict(frame_idx=torch.tensor([0, -1, 0])), ValueError, ["frame_idx[1]", "out of range"]),
        (dict(frame_idx=torch.tensor([0, 1, 0], dtype=torch.int32)), TypeError, ["frame_idx", "torch.int32"]),
        (dict(frame_idx=torch.tensor([0, 1])), ValueError, ["frame_idx", "(3,)"]),
        (dict(feather=-1), ValueError, ["feather"]),
        (dict(feather=17), ValueError, ["feather", "[0, 17)"]),
        (dict(feather=1.5), TypeError, ["feather"]),
        (dict(out=torch.zeros(2, 40, 51, 3, dtype=torch.uint8)), ValueError, ["out", "(2, 40, 51, 3)"]),
        (dict(out=torch.zeros(2, 40, 100, 3, dtype=torch.uint8)[:, :, ::2]), ValueError, ["out", "contiguous"]),
    ],
)
def test_bad_inputs_name_the_argument(change, exc, words):
    with pytest.raises(exc) as info:
        _bad_call(**change)()
    for w in words:
        assert w in str(info.value), str(info.value)


def test_bad_input_leaves_out_untouched():
    frames, crops, masks, affines, frame_idx = _case(*CASES["overlap"], seed=6)
    out = frames.clone()
    with pytest.raises(ValueError):
        paste_faces(frames, crops, masks, _nan_affine, frame_idx, out=out, backend="cpu")
    assert torch.equal(out, frames)
