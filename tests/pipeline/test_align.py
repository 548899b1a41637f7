"""pipeline.align: Umeyama against a least-squares reference, templates, and the round trip
image -> crop -> image on real photos (landmarks and pixels, through ops.paste_faces)."""
import os

import cv2
import numpy as np
import pytest
import torch

from wscswap_fast.ops import paste_faces
from wscswap_fast.pipeline import align as A
from wscswap_fast.pipeline.detect import DlibDetector


def _similarity(scale, angle, tx, ty):
    c, s = scale * np.cos(angle), scale * np.sin(angle)
    return np.array([[c, -s, tx], [s, c, ty]])


def test_umeyama_recovers_an_exact_similarity():
    rng = np.random.default_rng()
    src = rng.uniform(0, 300, (5, 2))
    m = _similarity(rng.uniform(0.2, 3), rng.uniform(-3, 3), *rng.uniform(-100, 100, 2))
    np.testing.assert_allclose(A.umeyama(src, A.transform_points(m, src)), m, atol=1e-9)


def test_umeyama_is_the_least_squares_similarity():
    # A similarity is linear in (a, b, tx, ty): x' = a x - b y + tx, y' = b x + a y + ty.
    rng = np.random.default_rng()
    src, dst = rng.uniform(0, 100, (7, 2)), rng.uniform(0, 100, (7, 2))
    rows = []
    for x, y in src:
        rows += [[x, -y, 1, 0], [y, x, 0, 1]]
    (a, b, tx, ty), *_ = np.linalg.lstsq(np.array(rows), dst.reshape(-1), rcond=None)
    np.testing.assert_allclose(A.umeyama(src, dst), [[a, -b, tx], [b, a, ty]], atol=1e-9)


def test_umeyama_never_reflects():
    src = np.random.default_rng().uniform(0, 10, (5, 2)) * [3, 1]  # elongated, so the fit is not degenerate
    mirrored = src * [-1, 1]
    m = A.umeyama(src, mirrored)
    assert np.linalg.det(m[:, :2]) > 0


def test_templates():
    np.testing.assert_allclose(A.arcface_template(224), A.ARCFACE_112 * 2)
    np.testing.assert_allclose(A.arcface_template(256, "ffhq"), A.FFHQ_512 / 2)
    for mode in A.MODES:
        t = A.arcface_template(128, mode)
        assert (t > 0).all() and (t < 128).all() and t[0, 0] < t[1, 0]


def test_bad_inputs():
    with pytest.raises(ValueError, match="src and dst"):
        A.umeyama(np.zeros((5, 2)), np.zeros((4, 2)))
    with pytest.raises(ValueError, match="same point"):
        A.umeyama(np.ones((5, 2)), np.zeros((5, 2)))
    with pytest.raises(ValueError, match="finite"):
        A.umeyama(np.full((5, 2), np.nan), np.zeros((5, 2)))
    with pytest.raises(ValueError, match="mode"):
        A.arcface_template(112, "dlib")
    with pytest.raises(ValueError, match="size"):
        A.arcface_template(4)
    with pytest.raises(ValueError, match="landmarks5"):
        A.estimate_affine(np.zeros((68, 2)), 112)
    with pytest.raises(ValueError, match="image"):
        A.align_face(np.zeros((5, 5)), A.ARCFACE_112, 112)


@pytest.fixture
def obama(shared_data):
    img = cv2.imread(os.path.join(shared_data, "faces", "photos", "obama.jpg"))
    return img, DlibDetector().detect(img)[0]


def _blobs(shape, points, sigma):
    """A float image with a Gaussian blob at each (sub-pixel) point."""
    ys, xs = np.mgrid[:shape[0], :shape[1]].astype(np.float64)
    img = np.zeros(shape)
    for x, y in points:
        img += np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * sigma ** 2))
    return img


def _centroid(img, near, radius):
    x0, y0 = (int(round(v)) for v in near)
    win = img[y0 - radius:y0 + radius + 1, x0 - radius:x0 + radius + 1]
    ys, xs = np.mgrid[y0 - radius:y0 + radius + 1, x0 - radius:x0 + radius + 1]
    return np.array([(win * xs).sum(), (win * ys).sum()]) / win.sum()


@pytest.mark.parametrize("size,mode", [(256, "arcface"), (128, "arcface"), (512, "ffhq")])
def test_round_trip_landmarks_within_one_pixel(obama, size, mode):
    """Mark the photo's five landmarks with blobs, cut the crop, find the blobs in the crop and
    warp their positions back to the photo: within 1 px of where they were."""
    img, face = obama
    crop, m = A.align_face(img, face.landmarks5, size, mode)
    assert crop.shape == (size, size, 3) and crop.dtype == np.uint8
    in_crop = A.transform_points(m, face.landmarks5)
    # the five points land near the template (a similarity cannot fit five points exactly)
    assert np.abs(in_crop - A.arcface_template(size, mode)).max() < 0.08 * size
    marked = _blobs(img.shape[:2], face.landmarks5, sigma=6.0).astype(np.float32)
    crop_marks = cv2.warpAffine(marked, m, (size, size), flags=cv2.INTER_LINEAR)
    scale = np.sqrt(abs(np.linalg.det(m[:, :2])))
    radius = max(3, int(round(3 * 6.0 * scale)))
    found = np.array([_centroid(crop_marks, p, radius) for p in in_crop])
    back = A.transform_points(A.invert_affine(m), found)
    err = np.linalg.norm(back - face.landmarks5, axis=1)
    assert err.max() <= 1.0, err
    # the inverse is exact up to float rounding
    np.testing.assert_allclose(A.transform_points(A.invert_affine(m), in_crop), face.landmarks5, atol=1e-9)


def test_landmarks_found_again_in_the_crop(obama):
    """dlib on the crop, warped back, lands on dlib on the photo (a sanity bound: the predictor
    itself moves a couple of pixels with its box)."""
    img, face = obama
    crop, m = A.align_face(img, face.landmarks5, 256)
    crop_faces = DlibDetector(max_side=0).detect(crop)
    assert len(crop_faces) == 1
    back = A.transform_points(A.invert_affine(m), crop_faces[0].landmarks68)
    assert np.median(np.linalg.norm(back - face.landmarks68, axis=1)) < 4.0


def test_paste_faces_takes_the_align_matrix(obama):
    """ops.paste_faces with the align matrix puts the crop back where cv2's inverse warp does."""
    img, face = obama
    crop, m = A.align_face(img, face.landmarks5, 256)
    frames = torch.zeros(1, *img.shape, dtype=torch.uint8)
    crops = torch.from_numpy(crop).permute(2, 0, 1)[None].float() / 255
    out = paste_faces(frames, crops, torch.ones(1, 1, 256, 256), torch.from_numpy(m)[None],
                      torch.zeros(1, dtype=torch.int64))[0].numpy().astype(np.float64)
    expect = cv2.warpAffine(crop, m, (img.shape[1], img.shape[0]), flags=cv2.WARP_INVERSE_MAP | cv2.INTER_LINEAR)
    x0, y0, x1, y1 = (int(v) for v in face.box)
    inner = (slice(y0 + 20, y1 - 20), slice(x0 + 20, x1 - 20))
    assert np.abs(out[inner] - expect[inner]).mean() < 0.5
    # and the photo itself comes back, up to two bilinear resamplings of its texture
    assert np.abs(out[inner] - img[inner]).mean() < 12
