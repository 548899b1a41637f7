"""landmark_loss against a float64 plain-PyTorch reference (autograd for the gradients), on every backend."""
import math
import os

import pytest
import torch

from wscswap_fast.models import camera
from wscswap_fast.ops import BackendUnavailable, landmark_loss
from wscswap_fast.ops.landmark_loss import landmark_loss_for, reference

from ..backends import ALL_BACKENDS, require

CAMERA = dict(focal=1015.0, cx=112.0, cy=112.0, camera_distance=10.0)  # Deep3DFaceRecon's 224x224 crops
L = 68
TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-10}
GRAD_NAMES = ("id_coeff", "exp_coeff", "angles", "translation", "target")


def _generator(seed=None):
    return torch.Generator().manual_seed(seed if seed is not None else torch.seed())


def _model(k_id, k_exp, g, num_landmarks=L):
    """Landmark rows of a face-sized model in decimetres (Deep3DFaceRecon's BFM units)."""
    box = torch.tensor([0.55, 0.6, 0.25], dtype=torch.float64)  # half-extent of a face, x right, y up, z out
    mean = (torch.rand(num_landmarks, 3, generator=g, dtype=torch.float64) * 2 - 1) * box
    id_basis = torch.randn(num_landmarks, 3, k_id, generator=g, dtype=torch.float64) * 0.02 / math.sqrt(k_id)
    exp_basis = torch.randn(num_landmarks, 3, k_exp, generator=g, dtype=torch.float64) * 0.02 / math.sqrt(k_exp)
    return mean, id_basis, exp_basis


def _inputs(n, k_id, k_exp, g, weights_kind="shared", num_landmarks=L):
    """Coefficients of realistic scale, angles up to 40 degrees, small translations: every landmark
    projects inside the 224 image. Targets are the true projections moved by 0.5 to ~10 pixels in
    each coordinate, so no residual is near 0 (where L1's gradient jumps)."""
    mean, id_basis, exp_basis = _model(k_id, k_exp, g, num_landmarks)
    id_coeff = torch.randn(n, k_id, generator=g, dtype=torch.float64)
    exp_coeff = torch.randn(n, k_exp, generator=g, dtype=torch.float64)
    angles = (torch.rand(n, 3, generator=g, dtype=torch.float64) * 2 - 1) * math.radians(40)
    translation = (torch.rand(n, 3, generator=g, dtype=torch.float64) * 2 - 1) * torch.tensor([0.1, 0.1, 0.3],
                                                                                                dtype=torch.float64)
    with torch.no_grad():
        points = mean + torch.einsum("lck,nk->nlc", id_basis, id_coeff) + torch.einsum("lck,nk->nlc", exp_basis, exp_coeff)
        uv = camera.perspective(camera.transform(points, angles, translation), **CAMERA)
    assert bool(((uv > 0) & (uv < 224)).all())
    offset = torch.randn(n, num_landmarks, 2, generator=g, dtype=torch.float64) * 4
    target = uv + torch.sign(offset) * 0.5 + offset
    shape = (num_landmarks,) if weights_kind == "shared" else (n, num_landmarks)
    weights = torch.rand(shape, generator=g, dtype=torch.float64)
    weights[weights < 0.2] = 0  # some landmarks unmapped or unseen
    return [id_coeff, exp_coeff, angles, translation, target, weights, mean, id_basis, exp_basis]


def _noncontiguous(t):
    """The same values in a strided view: every other element of a wider buffer (last dim)."""
    wide = torch.stack([t, torch.full_like(t, float("nan"))], dim=-1)
    view = wide[..., 0]
    assert view.numel() <= 1 or not view.is_contiguous()
    return view


def _rel_err(x, ref):
    return ((x.double() - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()


def _reference_and_grads(args, grad_out, **kw):
    leaves = [t.detach().double().requires_grad_(i < 5) for i, t in enumerate(args)]
    loss = reference(*leaves, **kw)
    return loss.detach(), torch.autograd.grad(loss, leaves[:5], grad_out.double())


def _run(backend, args, grad_seed, **kw):
    leaves = [t.detach().requires_grad_(i < 5) for i, t in enumerate(args)]
    loss = landmark_loss(*leaves, backend=backend, **kw)
    grad_out = torch.randn(loss.shape, generator=_generator(grad_seed), dtype=torch.float64).to(loss)
    return loss, torch.autograd.grad(loss, leaves[:5], grad_out), grad_out


CASES = [  # (N, K_id, K_exp, weights, layout): BFM-, SFM- and minimal-sized bases, batch 1 and 7
    (7, 80, 64, "per_sample", "contiguous"),
    (1, 80, 64, "shared", "noncontiguous"),
    (7, 63, 6, "shared", "noncontiguous"),
    (1, 63, 6, "per_sample", "contiguous"),
    (7, 1, 1, "per_sample", "noncontiguous"),
]


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("norm", ["l2", "l1"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "N{}-K{}x{}-{}-{}".format(*c))
def test_forward_and_gradients_match_float64_reference(backend, reduction, norm, case):
    device = require(backend)
    n, k_id, k_exp, weights_kind, layout = case
    args = _inputs(n, k_id, k_exp, _generator(), weights_kind)
    kw = dict(CAMERA, norm=norm, reduction=reduction)
    dev_args = [t.to(device=device, dtype=torch.float32) for t in args]
    if layout == "noncontiguous":
        dev_args = [_noncontiguous(t) for t in dev_args]
    loss, grads, grad_out = _run(backend, dev_args, None, **kw)
    ref, ref_grads = _reference_and_grads([t.float() for t in args], grad_out.cpu(), **kw)  # the same inputs

    assert loss.dtype == torch.float32 and loss.shape == ref.shape
    assert _rel_err(loss.cpu(), ref) < TOLERANCE[torch.float32]
    for name, got, want in zip(GRAD_NAMES, grads, ref_grads):
        assert got.dtype == torch.float32 and got.shape == want.shape, name
        assert _rel_err(got.cpu(), want) < TOLERANCE[torch.float32], name


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("norm", ["l2", "l1"])
@pytest.mark.parametrize("case", CASES[:3], ids=lambda c: "N{}-K{}x{}-{}-{}".format(*c))
def test_float64(backend, norm, case):
    n, k_id, k_exp, weights_kind, layout = case
    args = _inputs(n, k_id, k_exp, _generator(), weights_kind)
    kw = dict(CAMERA, norm=norm, reduction="none")
    loss, grads, grad_out = _run(backend, [_noncontiguous(t) if layout == "noncontiguous" else t for t in args],
                                 None, **kw)
    ref, ref_grads = _reference_and_grads(args, grad_out, **kw)
    assert loss.dtype == torch.float64 and _rel_err(loss, ref) < TOLERANCE[torch.float64]
    for name, got, want in zip(GRAD_NAMES, grads, ref_grads):
        assert got.dtype == torch.float64 and _rel_err(got, want) < TOLERANCE[torch.float64], name


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("norm, reduction", [("l2", "mean"), ("l1", "none"), ("l2", "sum")])
def test_gradcheck_float64(backend, norm, reduction):
    g = _generator()
    args = _inputs(3, 4, 3, g, "per_sample", num_landmarks=5)
    leaves = [t.requires_grad_() for t in args[:5]]

    def fn(*inputs):
        return landmark_loss(*inputs, *args[5:], **CAMERA, norm=norm, reduction=reduction, backend=backend)

    assert torch.autograd.gradcheck(fn, leaves)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_only_some_inputs_need_gradients(backend):
    """Fitting the pose alone (or the expression alone) skips the other gradients."""
    device = require(backend)
    args = [t.to(device=device, dtype=torch.float32) for t in _inputs(7, 63, 6, _generator())]
    angles = args[2].clone().requires_grad_()
    exp_coeff = args[1].clone().requires_grad_()
    loss = landmark_loss(args[0], exp_coeff, angles, *args[3:], **CAMERA, backend=backend)
    got_exp, got_angles = torch.autograd.grad(loss, (exp_coeff, angles))
    _, ref_grads = _reference_and_grads([t.cpu() for t in args], torch.ones(()), **CAMERA)
    assert _rel_err(got_exp.cpu(), ref_grads[1]) < TOLERANCE[torch.float32]
    assert _rel_err(got_angles.cpu(), ref_grads[2]) < TOLERANCE[torch.float32]


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_sample_with_all_weights_zero_has_zero_loss_and_gradient(backend):
    device = require(backend)
    args = [t.to(device=device, dtype=torch.float32) for t in _inputs(3, 5, 4, _generator(), "per_sample")]
    args[5][1] = 0
    loss, grads, _ = _run(backend, args, 0, **CAMERA, reduction="none")
    assert loss[1].item() == 0 and bool(torch.isfinite(loss).all())
    for name, grad in zip(GRAD_NAMES, grads):
        assert bool(torch.isfinite(grad).all()) and not bool(grad[1].any()), name


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_empty_batch(backend):
    device = require(backend)
    args = [t.to(device=device, dtype=torch.float32) for t in _inputs(0, 5, 4, _generator())]
    assert landmark_loss(*args, **CAMERA, reduction="sum", backend=backend).item() == 0
    assert math.isnan(landmark_loss(*args, **CAMERA, reduction="mean", backend=backend).item())  # torch.mean's
    assert landmark_loss(*args, **CAMERA, reduction="none", backend=backend).shape == (0,)


def _full_model(k_id, k_exp, g, vertices=301):
    """A random full model and landmark indices into it, two landmarks sharing a vertex (as the
    unmapped landmarks of a real model do)."""
    mean_shape, id_basis, exp_basis = _model(k_id, k_exp, g, num_landmarks=vertices)
    indices = torch.randperm(vertices, generator=g)[:L]
    indices[7] = indices[3]
    return mean_shape, id_basis, exp_basis, indices


def test_reference_full_mesh_matches_gathered_rows_on_cpu():
    """The reference builds the full mesh and indexes it; the cpu backend uses the gathered rows."""
    g = _generator()
    args = _inputs(5, 17, 9, g, "per_sample")
    full = _full_model(17, 9, g)
    rows = [t[full[3]].contiguous() for t in full[:3]]
    loss_full, grads_full, grad_out = _run("reference", args[:6] + rows, 1, **CAMERA, reduction="none",
                                           full_model=full)
    loss_rows, grads_rows, _ = _run("cpu", args[:6] + rows, 1, **CAMERA, reduction="none")
    assert _rel_err(loss_rows, loss_full) < 1e-12
    for name, a, b in zip(GRAD_NAMES, grads_rows, grads_full):
        assert _rel_err(a, b) < 1e-12, name
    # And the full-mesh path's hand-written backward agrees with autograd through the full mesh.
    ref, ref_grads = _reference_and_grads(args[:6] + rows, grad_out, **CAMERA, reduction="none", full_model=full)
    for name, a, b in zip(GRAD_NAMES, grads_full, ref_grads):
        assert _rel_err(a, b) < 1e-12, name


def test_reference_uses_the_camera_module():
    """The loss of one landmark, written out with wscswap_fast.models.camera's rotation and projection."""
    args = _inputs(2, 3, 2, _generator(), num_landmarks=1)
    args[5] = torch.ones(1, dtype=torch.float64)  # the one landmark counts (a random weight may be 0)
    id_coeff, exp_coeff, angles, translation, target, weights, mean, id_basis, exp_basis = args
    points = mean + torch.einsum("lck,nk->nlc", id_basis, id_coeff) + torch.einsum("lck,nk->nlc", exp_basis, exp_coeff)
    uv = camera.perspective(camera.transform(points, angles, translation), **CAMERA)
    want = ((uv - target) ** 2).sum(-1)[:, 0]
    for backend in ("reference", "cpu"):
        got = landmark_loss(*args, **CAMERA, reduction="none", backend=backend)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=0)


class _SyntheticModel:
    def __init__(self, g, k_id=11, k_exp=5):
        self.mean_shape, self.id_basis, self.exp_basis, self.landmark_indices = _full_model(k_id, k_exp, g)
        self.landmark_weights = torch.rand(L, generator=g, dtype=torch.float64)
        self.landmark_weights[:17] = 0  # the jaw contour, as the Surrey model's
        self.landmark_mean, self.landmark_id_basis, self.landmark_exp_basis = (
            t[self.landmark_indices].contiguous() for t in (self.mean_shape, self.id_basis, self.exp_basis))


def test_landmark_loss_for_a_model():
    g = _generator()
    model = _SyntheticModel(g)
    args = _inputs(4, 11, 5, g)[:5]
    user_weights = torch.rand(4, L, generator=g, dtype=torch.float64)
    got = landmark_loss_for(model, *args, user_weights, **CAMERA, reduction="none", backend="cpu")
    want = reference(*args, model.landmark_weights * user_weights, model.landmark_mean, model.landmark_id_basis,
                     model.landmark_exp_basis, **CAMERA, reduction="none")
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)
    full_mesh = landmark_loss_for(model, *args, **CAMERA, backend="reference")  # builds the full mesh
    rows = landmark_loss_for(model, *args, **CAMERA, backend="cpu")
    torch.testing.assert_close(full_mesh, rows, rtol=1e-12, atol=0)


def test_surrey_face_model(shared_data):
    """The real SFM (eos-py): the cpu backend on the gathered rows against the reference on the full mesh."""
    pytest.importorskip("eos")
    from wscswap_fast.models.morphable import load_sfm

    model = load_sfm(os.path.join(shared_data, "morphable", "sfm"))
    g = _generator()
    n = 5
    id_coeff = torch.randn(n, model.num_id, generator=g)
    exp_coeff = torch.rand(n, model.num_exp, generator=g)
    angles = (torch.rand(n, 3, generator=g) * 2 - 1) * math.radians(40)
    translation = torch.randn(n, 3, generator=g) * 10
    cam = dict(focal=1015.0, cx=112.0, cy=112.0, camera_distance=1000.0)  # millimetres: 1 m away
    target = torch.rand(n, L, 2, generator=g) * 160 + 32
    args = (id_coeff, exp_coeff, angles, translation, target)
    leaves = [t.clone().requires_grad_() for t in args]
    loss = landmark_loss_for(model, *leaves, **cam, backend="cpu")
    grads = torch.autograd.grad(loss, leaves)
    model64 = model.to(dtype=torch.float64)
    ref_leaves = [t.double().requires_grad_() for t in args]
    ref = landmark_loss_for(model64, *ref_leaves, **cam, backend="reference")  # the full mesh
    ref_grads = torch.autograd.grad(ref, ref_leaves)
    assert _rel_err(loss, ref.detach()) < TOLERANCE[torch.float32]
    for name, a, b in zip(GRAD_NAMES, grads, ref_grads):
        assert _rel_err(a, b) < TOLERANCE[torch.float32], name


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_torch_compile_fullgraph_no_graph_break(backend):
    torch._dynamo.reset()
    args = [t.float() for t in _inputs(7, 63, 6, _generator())]
    leaves = [t.requires_grad_() for t in args[:5]]

    def step(*inputs):
        return landmark_loss(*inputs, *args[5:], **CAMERA, norm="l1", backend=backend) * 2 + 1

    explanation = torch._dynamo.explain(step)(*leaves)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    compiled = torch.compile(step, fullgraph=True)
    out = compiled(*leaves)
    want = step(*leaves)
    torch.testing.assert_close(out, want)
    for a, b in zip(torch.autograd.grad(out, leaves), torch.autograd.grad(want, leaves)):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_opcheck(backend):
    """Schema, fake (meta) implementations and AOT dispatch of the two ops torch.compile traces."""
    args = [t.float() for t in _inputs(3, 5, 4, _generator(5), "per_sample")]
    settings = (*(None,) * 4, *CAMERA.values(), "l2", "none")
    for needs in ((False, False), (True, False), (True, True)):
        torch.library.opcheck(torch.ops.wscswap.landmark_loss.default, (*args, *settings, *needs, backend))
    _, (point_grads, pose_grads, target_grads) = torch.ops.wscswap.landmark_loss(*args, *settings, True, True, backend)
    grad = torch.randn(3, generator=_generator(6))
    for saved_target, need_id, need_exp in ((target_grads, True, True), (None, False, True)):
        torch.library.opcheck(torch.ops.wscswap.landmark_loss_backward.default,
                              (grad, point_grads, pose_grads, saved_target, args[7], args[8], None, None, None, "none",
                               need_id, need_exp, backend))


def _bad(change):
    args = [t.float() for t in _inputs(2, 5, 4, _generator(1))]
    kw = dict(CAMERA)
    change(args, kw)
    landmark_loss(*args, **kw)


def _set(i, value):
    def change(args, kw):
        args[i] = value(args[i]) if callable(value) else value
    return change


def _set_kw(**values):
    def change(args, kw):
        kw.update(values)
    return change


@pytest.mark.parametrize(
    "change, exc, words",
    [
        (_set(0, lambda t: t[0]), ValueError, ["id_coeff", "2-D", "(5,)"]),
        (_set(0, lambda t: t.int()), TypeError, ["id_coeff", "torch.int32"]),
        (_set(1, lambda t: t[:, :3]), ValueError, ["exp_coeff", "(N,K_exp)", "(2, 3)"]),
        (_set(7, lambda t: t[..., :4]), ValueError, ["landmark_id_basis", "K_id", "(68, 3, 4)"]),
        (_set(2, lambda t: t.double()), TypeError, ["angles", "torch.float64"]),
        (_set(3, lambda t: t.to("meta")), ValueError, ["translation", "device meta"]),
        (_set(3, lambda t: t[:1]), ValueError, ["translation", "(1, 3)"]),
        (_set(4, lambda t: t[:, :67]), ValueError, ["target", "(2, 67, 2)"]),
        (_set(5, lambda t: t[:67]), ValueError, ["weights", "(67,)"]),
        (_set(5, lambda t: t.expand(3, -1)), ValueError, ["weights", "(3, 68)"]),
        (_set(6, lambda t: t[:, :2]), ValueError, ["landmark_mean", "(68, 2)"]),
        (_set(8, lambda t: t[:67]), ValueError, ["landmark_exp_basis", "(67, 3, 4)"]),
        (_set(4, lambda t: t.numpy()), TypeError, ["target", "ndarray"]),
        (_set(5, lambda t: t.requires_grad_()), ValueError, ["weights", "requires grad"]),
        (_set_kw(norm="l3"), ValueError, ["norm", "'l3'"]),
        (_set_kw(reduction="avg"), ValueError, ["reduction", "'avg'"]),
        (_set_kw(focal="1015"), TypeError, ["focal"]),
        (_set_kw(full_model=(torch.zeros(9, 3),)), TypeError, ["full_model"]),
    ],
)
def test_bad_inputs_name_the_argument(change, exc, words):
    with pytest.raises(exc) as info:
        _bad(change)
    for w in words:
        assert w in str(info.value)


def test_full_model_is_checked_and_for_the_reference_only():
    g = _generator(2)
    args = [t.float() for t in _inputs(2, 5, 4, g)]
    full = [t.float() if t.is_floating_point() else t for t in _full_model(5, 4, g)]
    with pytest.raises(ValueError, match="full_model is for the reference backend only"):
        landmark_loss(*args, **CAMERA, full_model=full, backend="cpu")
    bad_indices = full[3].clone()
    bad_indices[0] = 301
    with pytest.raises(ValueError, match=r"full_model landmark_indices must lie in \[0, 301\)"):
        landmark_loss(*args, **CAMERA, full_model=full[:3] + [bad_indices], backend="reference")
    with pytest.raises(ValueError, match="full_model id_basis.*K_id"):
        landmark_loss(*args, **CAMERA, full_model=[full[0], full[1][..., :3], full[2], full[3]], backend="reference")
    with pytest.raises(TypeError, match="full_model landmark_indices.*int64"):
        landmark_loss(*args, **CAMERA, full_model=full[:3] + [full[3].int()], backend="reference")


def test_unavailable_backend_raises_with_reason(monkeypatch):
    args = [t.float() for t in _inputs(2, 5, 4, _generator(3))]
    if torch.cuda.is_available():
        pytest.skip("needs a machine without a GPU")
    with pytest.raises(BackendUnavailable, match="'cuda'.*cannot serve"):
        landmark_loss(*args, **CAMERA, backend="cuda")
    with pytest.raises(BackendUnavailable, match="dtype torch.float64 is not supported"):
        landmark_loss(*[t.double() for t in args], **CAMERA, backend="triton")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(BackendUnavailable, match="triton.*TRITON_INTERPRET"):
        landmark_loss(*args, **CAMERA, backend="triton")


def test_environment_variable_selects_backend(monkeypatch):
    args = [t.float() for t in _inputs(2, 5, 4, _generator(4))]
    monkeypatch.setenv("WSCSWAP_BACKEND", "reference")
    torch.testing.assert_close(landmark_loss(*args, **CAMERA), reference(*args, **CAMERA))
    monkeypatch.setenv("WSCSWAP_BACKEND", "bogus")
    with pytest.raises(ValueError, match="backend must be one of"):
        landmark_loss(*args, **CAMERA)
