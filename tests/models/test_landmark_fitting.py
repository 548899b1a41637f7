"""fit_landmarks: recovery of known faces, batch independence, weights, bad inputs, and the
comparison with eos's fit_shape_and_pose on dlib landmarks of the real faces."""
import os

import pytest
import torch

from wscswap_fast.models import camera
from wscswap_fast.models.landmark_fitting import FOCAL_PER_PIXEL, LandmarkFit, fit_landmarks
from wscswap_fast.models.morphable import CONTOUR_LANDMARKS_LEFT, CONTOUR_LANDMARKS_RIGHT, load_sfm

from ..backends import SHARED_DATA

SFM_DIR = os.path.join(SHARED_DATA, "morphable", "sfm")
FACES_DIR = os.path.join(SHARED_DATA, "faces")
CONTOUR = list(CONTOUR_LANDMARKS_RIGHT + CONTOUR_LANDMARKS_LEFT)
SIZE = 224


@pytest.fixture(scope="module")
def sfm():
    pytest.importorskip("eos")
    if not os.path.isdir(SFM_DIR):
        pytest.skip("../shared/data/morphable/sfm is not beside this checkout")
    return load_sfm(SFM_DIR).to(dtype=torch.float64)


def _known_faces(model, n, seed):
    """Random faces, poses and their exact landmarks under fit_landmarks' default camera; the
    contour landmarks sit on every other model contour vertex."""
    g = torch.Generator().manual_seed(seed)
    id_coeff = torch.randn(n, model.num_id, generator=g, dtype=torch.float64) * 0.7
    exp_coeff = torch.rand(n, model.num_exp, generator=g, dtype=torch.float64) * 0.5
    angles = (torch.rand(n, 3, generator=g, dtype=torch.float64) * 2 - 1) * torch.tensor([0.3, 0.6, 0.2], dtype=torch.float64)
    translation = torch.randn(n, 3, generator=g, dtype=torch.float64) * torch.tensor([10.0, 10.0, 50.0], dtype=torch.float64)
    pixels = camera.perspective(camera.transform(model.vertices(id_coeff, exp_coeff), angles, translation),
                                FOCAL_PER_PIXEL * SIZE, SIZE / 2, SIZE / 2, model.units_per_metre)
    landmarks = pixels[:, model.landmark_indices]
    landmarks[:, list(CONTOUR_LANDMARKS_RIGHT)] = pixels[:, model.contour_right[0:16:2]]
    landmarks[:, list(CONTOUR_LANDMARKS_LEFT)] = pixels[:, model.contour_left[0:16:2]]
    return landmarks, angles


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_recovers_the_pose_of_known_faces(sfm, backend):
    landmarks, angles = _known_faces(sfm, 6, seed=torch.seed() % 2**31)
    fixed_only = torch.ones(68, dtype=torch.float64)
    fixed_only[CONTOUR] = 0
    fit = fit_landmarks(sfm, landmarks, SIZE, landmark_weights=fixed_only, lambda_id=0, lambda_exp=0,
                        nonnegative_expression=True, backend=backend)
    assert isinstance(fit, LandmarkFit)
    assert fit.error.max() < 0.5  # pixels, exact landmarks
    # Shape, expression and pitch trade off a little on 50 points; the pose stays within degrees.
    assert torch.rad2deg((fit.angles - angles).abs()).median() < 2.0
    torch.testing.assert_close(fit.project(sfm)[:, sfm.landmark_weights > 0], landmarks[:, sfm.landmark_weights > 0],
                               rtol=0, atol=2.0)
    assert bool((fit.exp_coeff >= 0).all())


def test_contour_landmarks_are_matched_per_face(sfm):
    landmarks, angles = _known_faces(sfm, 4, seed=5)
    fit = fit_landmarks(sfm, landmarks, SIZE)
    assert fit.error.max() < 3.0
    right, left = list(CONTOUR_LANDMARKS_RIGHT), list(CONTOUR_LANDMARKS_LEFT)
    assert bool(torch.isin(fit.vertex_indices[:, right], sfm.contour_right).all())
    assert bool(torch.isin(fit.vertex_indices[:, left], sfm.contour_left).all())
    assert bool((fit.weights[:, [60, 64]] == 0).all())
    # A side is used unless the head turned away from it by more than 15 degrees of yaw
    # (yaw > 0 turns towards the right side, ibug 1-8).
    yaw = torch.rad2deg(fit.angles[:, 1])
    assert (yaw.abs() > 16).any() and (yaw.abs() < 14).any()
    torch.testing.assert_close(fit.weights[:, right], (yaw >= -15).double()[:, None].expand(-1, 8))
    torch.testing.assert_close(fit.weights[:, left], (yaw <= 15).double()[:, None].expand(-1, 8))
    # Chosen per face: different poses pick different vertices.
    assert len({tuple(row.tolist()) for row in fit.vertex_indices[:, CONTOUR]}) > 1


def test_faces_of_a_batch_are_fitted_independently(sfm):
    landmarks, _ = _known_faces(sfm, 3, seed=7)
    both = fit_landmarks(sfm, landmarks, SIZE, steps=60)
    alone = fit_landmarks(sfm, landmarks[1:2], SIZE, steps=60)
    for name in ("id_coeff", "exp_coeff", "angles", "translation"):
        torch.testing.assert_close(getattr(both, name)[1:2], getattr(alone, name), rtol=1e-6, atol=1e-8)


def test_zero_weight_landmark_is_ignored(sfm):
    landmarks, _ = _known_faces(sfm, 2, seed=11)
    weights = torch.ones(2, 68, dtype=torch.float64)
    weights[0, 30] = 0  # the nose tip of face 0
    moved = landmarks.clone()
    moved[0, 30] += 40.0
    a = fit_landmarks(sfm, landmarks, SIZE, landmark_weights=weights, steps=40)
    b = fit_landmarks(sfm, moved, SIZE, landmark_weights=weights, steps=40)
    torch.testing.assert_close(a.angles, b.angles, rtol=0, atol=1e-10)
    assert a.weights[0, 30] == 0 and a.weights[1, 30] == 1


def test_float32_input_gives_float32_fit(sfm):
    landmarks, angles = _known_faces(sfm, 2, seed=13)
    fit = fit_landmarks(sfm, landmarks.float(), (SIZE, SIZE), steps=100)
    assert fit.angles.dtype == torch.float32 and fit.id_coeff.dtype == torch.float32
    assert fit.error.max() < 5.0


@pytest.mark.parametrize("call, exc, words", [
    (lambda m, lm: fit_landmarks(m, lm[:, :60], SIZE), ValueError, ["landmarks_2d", "(N, 68, 2)", "(2, 60, 2)"]),
    (lambda m, lm: fit_landmarks(m, lm.round().long(), SIZE), TypeError, ["landmarks_2d", "torch.int64"]),
    (lambda m, lm: fit_landmarks(m, lm.numpy(), SIZE), ValueError, ["landmarks_2d", "ndarray"]),
    (lambda m, lm: fit_landmarks(m, lm.index_fill(1, torch.tensor([3]), float("nan")), SIZE), ValueError, ["landmarks_2d", "finite"]),
    (lambda m, lm: fit_landmarks(m, lm, (224,)), ValueError, ["image_size", "(224,)"]),
    (lambda m, lm: fit_landmarks(m, lm, 0), ValueError, ["image_size"]),
    (lambda m, lm: fit_landmarks(m, lm, SIZE, landmark_weights=torch.ones(3, 68)), ValueError, ["landmark_weights", "(2, 68)"]),
    (lambda m, lm: fit_landmarks(m, lm, SIZE, landmark_weights=-torch.ones(68)), ValueError, ["landmark_weights", "non-negative"]),
    (lambda m, lm: fit_landmarks("sfm", lm, SIZE), TypeError, ["model", "MorphableModel"]),
])
def test_bad_inputs_name_the_argument(sfm, call, exc, words):
    landmarks, _ = _known_faces(sfm, 2, seed=17)
    with pytest.raises(exc) as info:
        call(sfm, landmarks)
    for word in words:
        assert word in str(info.value)


@pytest.mark.slow
def test_agrees_with_eos_on_real_faces():
    """Issue 4's bar: median |pitch/yaw/roll| difference to eos <= 3 degrees; our reprojection
    error no worse than eos's (fixed landmarks, and fixed + contour together)."""
    for module in ("eos", "dlib", "cv2"):
        pytest.importorskip(module)
    from wscswap_fast.models import eos_comparison

    try:
        eos_comparison.dlib_landmark_model()
    except (ImportError, FileNotFoundError) as e:
        pytest.skip(str(e))
    if not os.path.isdir(FACES_DIR) or not os.path.isdir(SFM_DIR):
        pytest.skip("../shared/data is not beside this checkout")
    rows = eos_comparison.compare(FACES_DIR, SFM_DIR)
    s = eos_comparison.summary(rows)
    assert s["faces"] >= 30
    assert (s["median_abs_diff"] <= 3.0).all(), s
    assert s["ours_fixed"] <= s["eos_fixed"], s
    n_fixed, n_contour = 50, 16
    ours = sum(r["ours_fixed"] * n_fixed + r["ours_contour"] * n_contour for r in rows)
    theirs = sum(r["eos_fixed"] * n_fixed + r["eos_contour"] * n_contour for r in rows)
    assert ours <= theirs, (ours / len(rows) / 66, theirs / len(rows) / 66)
