"""The 3DMM camera: Deep3DFaceRecon's rotation, the sign of each angle, both projections."""
import math

import pytest
import torch

from wscswap_fast.models import camera


def _axis_matrices(angles):
    """Rx, Ry, Rz written out one by one, as Deep3DFaceRecon's compute_rotation does."""
    out = []
    for axis in range(3):
        c, s = torch.cos(angles[:, axis]), torch.sin(angles[:, axis])
        one, zero = torch.ones_like(c), torch.zeros_like(c)
        rows = {0: [one, zero, zero, zero, c, -s, zero, s, c],
                1: [c, zero, s, zero, one, zero, -s, zero, c],
                2: [c, -s, zero, s, c, zero, zero, zero, one]}[axis]
        out.append(torch.stack(rows, 1).reshape(-1, 3, 3))
    return out


def _random_angles(n, limit=1.4):
    return (torch.rand(n, 3, dtype=torch.float64) * 2 - 1) * limit


def test_rotation_is_rz_ry_rx():
    angles = _random_angles(7, 3.0)
    rx, ry, rz = _axis_matrices(angles)
    r = camera.rotation_matrix(angles)
    torch.testing.assert_close(r, rz @ ry @ rx, rtol=0, atol=1e-14)
    torch.testing.assert_close(r @ r.transpose(1, 2), torch.eye(3, dtype=torch.float64).expand(7, 3, 3), rtol=0, atol=1e-14)
    torch.testing.assert_close(torch.linalg.det(r), torch.ones(7, dtype=torch.float64))


def test_angles_from_rotation_inverts_rotation_matrix():
    angles = _random_angles(50)
    torch.testing.assert_close(camera.angles_from_rotation(camera.rotation_matrix(angles)), angles, rtol=0, atol=1e-12)


def test_angles_from_rotation_at_gimbal_lock_gives_the_same_matrix():
    angles = torch.tensor([[0.3, math.pi / 2, 0.0], [-0.2, -math.pi / 2, 0.0]], dtype=torch.float64)
    back = camera.angles_from_rotation(camera.rotation_matrix(angles))
    torch.testing.assert_close(camera.rotation_matrix(back), camera.rotation_matrix(angles), rtol=0, atol=1e-7)


def _project_one(point, angles):
    """Pixel position of one model point under a frontal-ish perspective camera."""
    v = torch.tensor([[point]], dtype=torch.float64)
    cam = camera.transform(v, torch.tensor([angles], dtype=torch.float64), torch.zeros(1, 3, dtype=torch.float64))
    return camera.perspective(cam, 1000.0, 100.0, 100.0, 10.0)[0, 0]


@pytest.mark.parametrize("which, moves", [
    ("yaw", "nose to the image's right"),
    ("pitch", "nose down"),
    ("roll", "subject's right eye down"),
])
def test_angle_signs(which, moves):
    nose, right_eye = (0.0, 0.0, 1.0), (-1.0, 0.5, 0.0)  # model x points to the subject's left
    angles = {"pitch": [0.2, 0, 0], "yaw": [0, 0.2, 0], "roll": [0, 0, 0.2]}[which]
    if which == "yaw":
        assert _project_one(nose, angles)[0] > _project_one(nose, [0, 0, 0])[0]
    elif which == "pitch":
        assert _project_one(nose, angles)[1] > _project_one(nose, [0, 0, 0])[1]
    else:
        assert _project_one(right_eye, angles)[1] > _project_one(right_eye, [0, 0, 0])[1]


def test_perspective_matches_deep3dfacerecon_pipeline():
    """Deep3DFaceRecon: v @ R^T + t, z -> 10 - z, (x, y, z) @ K^T / z with focal 1015 and
    centre 112 in a y-up image, then its landmarks flip y as 223 - y."""
    g = torch.Generator().manual_seed(1)
    n, v = 3, 11
    verts = torch.randn(n, v, 3, generator=g, dtype=torch.float64)
    angles, trans = _random_angles(n, 0.5), torch.randn(n, 3, generator=g, dtype=torch.float64) * 0.2
    rx, ry, rz = _axis_matrices(angles)
    shape = verts @ (rz @ ry @ rx).transpose(1, 2) + trans[:, None]
    shape = torch.cat([shape[..., :2], 10.0 - shape[..., 2:]], -1)
    k = torch.tensor([[1015.0, 0, 112.0], [0, 1015.0, 112.0], [0, 0, 1]], dtype=torch.float64)
    proj = shape @ k.T
    theirs = proj[..., :2] / proj[..., 2:]
    theirs = torch.stack([theirs[..., 0], 223.0 - theirs[..., 1]], -1)
    ours = camera.perspective(camera.transform(verts, angles, trans), 1015.0, 112.0, 111.0, 10.0)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-9)


def test_orthographic_matches_eos_affine_camera():
    eos = pytest.importorskip("eos")
    import numpy as np

    g = torch.Generator().manual_seed(2)
    model_points = torch.randn(20, 3, generator=g, dtype=torch.float64) * 50
    width, height = 640, 480
    # A real scaled orthographic pose from eos's own estimator, on points of a known projection.
    angles = torch.tensor([[0.2, -0.3, 0.1]], dtype=torch.float64)
    truth = camera.orthographic(camera.transform(model_points[None], angles, torch.tensor([[5.0, -3.0, 0.0]], dtype=torch.float64)),
                                2.0, 0.0, float(height))[0]
    sop = eos.fitting.estimate_orthographic_projection_linear(
        [np.asarray(p, dtype=np.float32) for p in truth.numpy()],
        [np.append(p, 1.0).astype(np.float32) for p in model_points.numpy()], True, height)
    params = eos.fitting.RenderingParameters(sop, width, height)
    affine = torch.tensor(np.asarray(eos.fitting.get_3x4_affine_camera_matrix(params, width, height)), dtype=torch.float64)
    theirs = (torch.cat([model_points, torch.ones(20, 1, dtype=torch.float64)], 1) @ affine.T)[:, :2]
    r = torch.tensor(np.asarray(sop.R), dtype=torch.float64)
    angles_eos = camera.angles_from_rotation(r[None])
    ours = camera.orthographic(camera.transform(model_points[None], angles_eos, torch.tensor([[sop.tx, sop.ty, 0.0]], dtype=torch.float64)),
                               float(sop.s), 0.0, float(height))[0]
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-2)  # eos works in float32
    torch.testing.assert_close(angles_eos, angles, rtol=0, atol=1e-4)  # and recovers the pose


def test_orthographic_per_sample_scale():
    pts = torch.randn(2, 5, 3, dtype=torch.float64)
    out = camera.orthographic(pts, torch.tensor([1.0, 3.0], dtype=torch.float64), 4.0, 6.0)
    for i, s in enumerate((1.0, 3.0)):
        torch.testing.assert_close(out[i], torch.stack([4.0 + s * pts[i, :, 0], 6.0 - s * pts[i, :, 1]], -1))


def test_gradcheck_transform_and_perspective():
    verts = torch.randn(2, 4, 3, dtype=torch.float64, requires_grad=True)
    angles = _random_angles(2, 0.6).requires_grad_()
    trans = (torch.randn(2, 3, dtype=torch.float64) * 0.1).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda v, a, t: camera.perspective(camera.transform(v, a, t), 900.0, 100.0, 90.0, 10.0), (verts, angles, trans))


@pytest.mark.parametrize("call, words", [
    (lambda: camera.rotation_matrix(torch.zeros(3)), ["angles", "(N, 3)", "(3,)"]),
    (lambda: camera.transform(torch.zeros(2, 5, 3), torch.zeros(2, 3), torch.zeros(2, 2)), ["translation", "(N, 3)"]),
    (lambda: camera.transform(torch.zeros(3, 5, 3), torch.zeros(2, 3), torch.zeros(2, 3)), ["vertices", "N = 2"]),
    (lambda: camera.angles_from_rotation(torch.zeros(3, 3)), ["rotation", "(N, 3, 3)"]),
])
def test_bad_inputs_name_the_argument(call, words):
    with pytest.raises(ValueError) as info:
        call()
    for word in words:
        assert word in str(info.value)


@pytest.mark.parametrize("axis", [0, 1, 2], ids=["pitch", "yaw", "roll"])
def test_single_axis_angles_equal_eos_yaw_pitch_roll(axis):
    """Same signs as eos's get_yaw_pitch_roll (whose order is yaw, pitch, roll)."""
    eos = pytest.importorskip("eos")
    import numpy as np

    points = torch.randn(30, 3, dtype=torch.float64) * 50
    angles = torch.zeros(1, 3, dtype=torch.float64)
    angles[0, axis] = 0.2
    image = camera.orthographic(camera.transform(points[None], angles, torch.zeros(1, 3, dtype=torch.float64)), 2.0, 100.0, 400.0)[0]
    sop = eos.fitting.estimate_orthographic_projection_linear(
        [p.astype(np.float32) for p in image.numpy()], [np.append(p, 1.0).astype(np.float32) for p in points.numpy()], True, 480)
    yaw, pitch, roll = eos.fitting.RenderingParameters(sop, 640, 480).get_yaw_pitch_roll()
    np.testing.assert_allclose([pitch, yaw, roll], np.rad2deg(angles[0].numpy()), atol=1e-3)
