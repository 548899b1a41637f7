"""hull_mask (68-point hull with the forehead) and dilate_mask / erode_mask."""
import numpy as np
import pytest
import torch

from wscswap_fast.pipeline.masks import dilate_mask, erode_mask, hull_mask, hull_points


def synthetic_face(cx=64.0, cy=70.0, a=30.0, b=36.0, seed=0):
    """68 dlib-ordered points: jaw (0-16) on the lower half of an ellipse, chin at 8, brows (17-26)
    on a line above the centre, the rest scattered inside."""
    rng = np.random.default_rng(seed)
    t = np.linspace(np.pi, 0.0, 17)
    jaw = np.stack([cx + a * np.cos(t), cy + b * np.sin(t)], axis=1)
    brows = np.stack([np.linspace(cx - 0.8 * a, cx + 0.8 * a, 10), np.full(10, cy - 0.4 * b)], axis=1)
    inner = np.stack([cx + rng.uniform(-0.5, 0.5, 41) * a, cy + rng.uniform(-0.3, 0.7, 41) * b], axis=1)
    return np.concatenate([jaw, brows, inner])


def rotate(points, degrees, centre):
    r = np.deg2rad(degrees)
    rot = np.array([[np.cos(r), -np.sin(r)], [np.sin(r), np.cos(r)]])
    return (points - centre) @ rot.T + centre


def test_hull_covers_landmarks_and_stays_inside_bounds():
    lm = synthetic_face()
    m = hull_mask(lm, 128, forehead=0.0)
    assert m.shape == (128, 128) and m.dtype == np.float32
    assert set(np.unique(m)) <= {0.0, 1.0}
    xs, ys = np.round(lm[:, 0]).astype(int), np.round(lm[:, 1]).astype(int)
    interior = lm[27:]  # points strictly inside the hull
    assert m[np.round(interior[:, 1]).astype(int), np.round(interior[:, 0]).astype(int)].min() == 1.0
    rows, cols = np.nonzero(m)
    assert rows.min() >= ys.min() - 1 and rows.max() <= ys.max() + 1
    assert cols.min() >= xs.min() - 1 and cols.max() <= xs.max() + 1


def test_hull_area_matches_polygon_area():
    import cv2

    lm = synthetic_face()
    m = hull_mask(lm, 128, forehead=0.0)
    area = cv2.contourArea(cv2.convexHull(lm.astype(np.float32)))
    assert abs(m.sum() - area) / area < 0.05


def test_forehead_extends_upward_by_fraction_of_height():
    lm = synthetic_face()
    height = lm[8, 1] - lm[17:27, 1].mean()
    top0 = np.nonzero(hull_mask(lm, 128, forehead=0.0))[0].min()
    top = np.nonzero(hull_mask(lm, 128, forehead=0.25))[0].min()
    assert abs((top0 - top) - 0.25 * height) <= 1.5
    bottom = np.nonzero(hull_mask(lm, 128, forehead=0.25))[0].max()
    assert bottom == np.nonzero(hull_mask(lm, 128, forehead=0.0))[0].max()  # the chin does not move


def test_forehead_follows_tilted_face():
    lm = synthetic_face()
    centre = np.array([64.0, 64.0])
    # a face rolled by 90 degrees: its "up" is +x (image right), so the forehead grows sideways
    tilted = rotate(lm, 90, centre)
    flat = hull_mask(tilted, 128, forehead=0.0)
    ext = hull_mask(tilted, 128, forehead=0.25)
    grown = ext - flat
    assert grown.min() >= 0
    ys, xs = np.nonzero(grown)
    brows_x = tilted[17:27, 0].mean()
    chin_x = tilted[8, 0]
    assert np.sign(xs.mean() - brows_x) == np.sign(brows_x - chin_x)
    assert np.ptp(ys) > 3 * max(np.ptp(xs), 1) / 2  # a band along the brows


def test_hull_points_shape():
    lm = synthetic_face()
    pts = hull_points(lm, 0.2)
    assert pts.shape == (78, 2)
    np.testing.assert_allclose(pts[:68], lm)


def test_rectangular_size_and_clipping():
    lm = synthetic_face(cx=20.0, cy=30.0)  # partly outside a small image
    m = hull_mask(lm, (40, 30))
    assert m.shape == (40, 30)
    assert m.max() == 1.0


def test_dilate_and_blur():
    lm = synthetic_face()
    base = hull_mask(lm, 128)
    dil = hull_mask(lm, 128, dilate=3)
    assert (dil >= base).all() and dil.sum() > base.sum()
    # an elliptical 3-pixel dilation adds roughly perimeter * 3 pixels
    import cv2
    perimeter = cv2.arcLength(cv2.convexHull(hull_points(lm).astype(np.float32)), True)
    assert abs((dil.sum() - base.sum()) / perimeter - 3) < 0.6
    soft = hull_mask(lm, 128, blur=4)
    assert 0.0 <= soft.min() and soft.max() <= 1.0
    assert ((soft > 0) & (soft < 1)).sum() > 0.5 * perimeter
    assert abs(soft.sum() - base.sum()) / base.sum() < 0.03  # blurring preserves the area


@pytest.mark.parametrize("kwargs, exc, words", [
    (dict(landmarks68=np.zeros((67, 2)), size=64), ValueError, "(68, 2)"),
    (dict(landmarks68=np.full((68, 2), np.nan), size=64), ValueError, "NaN"),
    (dict(size=0), ValueError, "size"),
    (dict(size=(64,)), TypeError, "size"),
    (dict(size=64.0), TypeError, "size"),
    (dict(size=64, dilate=-1), ValueError, "dilate"),
    (dict(size=64, blur=1.5), TypeError, "blur"),
    (dict(size=64, forehead=2.0), ValueError, "forehead"),
])
def test_hull_bad_inputs(kwargs, exc, words):
    kwargs.setdefault("landmarks68", synthetic_face())
    with pytest.raises(exc, match=words.replace("(", r"\(").replace(")", r"\)")):
        hull_mask(**kwargs)


def dilate_reference(mask, p):
    """Max over every shift in a (2p+1)^2 window, positions outside the image ignored."""
    n, c, h, w = mask.shape
    padded = torch.full((n, c, h + 2 * p, w + 2 * p), -torch.inf, dtype=mask.dtype)
    padded[:, :, p:p + h, p:p + w] = mask
    out = torch.full_like(mask, -torch.inf)
    for dy in range(2 * p + 1):
        for dx in range(2 * p + 1):
            out = torch.maximum(out, padded[:, :, dy:dy + h, dx:dx + w])
    return out


@pytest.mark.parametrize("p", [1, 2, 3, 5, 8, 13])
def test_dilate_mask_matches_reference(p):
    mask = torch.rand(2, 1, 23, 17, dtype=torch.float64)
    torch.testing.assert_close(dilate_mask(mask, p), torch.nn.functional.max_pool2d(mask, 2 * p + 1, 1, p), rtol=0, atol=0)
    torch.testing.assert_close(dilate_mask(mask, p), dilate_reference(mask, p), rtol=0, atol=0)
    torch.testing.assert_close(erode_mask(mask, p), -dilate_reference(-mask, p), rtol=0, atol=0)


def test_dilate_mask_zero_and_gradient():
    mask = torch.rand(1, 1, 8, 8, requires_grad=True)
    assert dilate_mask(mask, 0) is mask
    out = dilate_mask(mask, 1)
    out.sum().backward()
    assert mask.grad is not None and mask.grad.sum() == out.numel()


def test_dilate_binary_square():
    mask = torch.zeros(1, 1, 9, 9)
    mask[0, 0, 4, 4] = 1
    out = dilate_mask(mask, 2)
    assert out.sum() == 25 and out[0, 0, 2:7, 2:7].min() == 1
    assert erode_mask(out, 2).sum() == 1


@pytest.mark.parametrize("mask, pixels, exc", [
    (np.zeros((1, 1, 4, 4), np.float32), 1, TypeError),
    (torch.zeros(1, 4, 4), 1, ValueError),
    (torch.zeros(1, 1, 4, 4, dtype=torch.uint8), 1, TypeError),
    (torch.zeros(1, 1, 4, 4), -1, ValueError),
    (torch.zeros(1, 1, 4, 4), 1.0, TypeError),
])
def test_dilate_mask_bad_inputs(mask, pixels, exc):
    with pytest.raises(exc):
        dilate_mask(mask, pixels)
