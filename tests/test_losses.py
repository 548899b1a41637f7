"""The 3DMM non-identity loss on a small synthetic face model."""
import math

import pytest
import torch

from wscswap_fast.losses import FaceCoefficients, NonIdentityLoss
from wscswap_fast.models.morphable import MorphableModel

K_ID, K_EXP, K_TEX = 7, 5, 4


def _face_model(with_albedo=True, seed=0):
    """A sphere cap of radius 1 (decimetres, as the BFM) facing +z, random smooth bases."""
    g = torch.Generator().manual_seed(seed)
    rows, cols = 14, 14
    theta = torch.linspace(-0.9, 0.9, cols)
    phi = torch.linspace(-0.9, 0.9, rows)
    pp, tt = torch.meshgrid(phi, theta, indexing="ij")
    mean = torch.stack([torch.sin(tt) * torch.cos(pp), torch.sin(pp), torch.cos(tt) * torch.cos(pp)], -1).reshape(-1, 3)
    v = mean.shape[0]
    tris = []
    for r in range(rows - 1):
        for c in range(cols - 1):
            i = r * cols + c
            tris += [[i, i + 1, i + cols], [i + 1, i + cols + 1, i + cols]]
    basis = lambda k, s: torch.randn((v, 3, k), generator=g) * s  # noqa: E731
    kwargs = dict(albedo_mean=torch.full((v, 3), 0.6), albedo_basis=basis(K_TEX, 0.05)) if with_albedo else {}
    lm = torch.randperm(v, generator=g)[:68]
    return MorphableModel(mean, basis(K_ID, 0.02), basis(K_EXP, 0.02), torch.tensor(tris), lm, torch.ones(68),
                          name="synthetic cap", **kwargs)


def _coeffs(n, seed, model):
    g = torch.Generator().manual_seed(seed)
    k = model.num_id + model.num_exp + model.num_albedo
    parts = [torch.randn((n, k), generator=g), (torch.rand((n, 3), generator=g) - 0.5) * 0.4,
             torch.randn((n, 27), generator=g) * 0.1, torch.randn((n, 3), generator=g) * 0.05]
    return torch.cat(parts, dim=1)


def _with(coeffs, model, **parts):
    """coeffs with some parts replaced by another sample's."""
    c = FaceCoefficients.split(coeffs.clone(), model.num_id, model.num_exp, model.num_albedo)
    for name, value in parts.items():
        getattr(c, name).copy_(value)
    return torch.cat([c.identity, c.expression, c.texture, c.angles, c.lighting, c.translation], dim=1)


def test_zero_when_result_has_source_shape_and_target_expression_pose_lighting():
    model = _face_model()
    loss = NonIdentityLoss(model)
    target, source = _coeffs(3, 1, model), _coeffs(3, 2, model)
    t = loss.split(target)
    result = _with(source, model, expression=t.expression, angles=t.angles, translation=t.translation,
                   lighting=t.lighting)
    terms = loss(result, target, source)
    for name in ("expression", "pose", "lighting"):
        assert terms[name].item() == 0, name
    assert terms["landmark"].item() < 1e-10
    # Y keeping the target's own shape is penalised: the landmark loss is shape-aware
    assert loss(target, target, source)["landmark"].item() > 1e-6


def test_gradients_reach_only_the_result():
    model = _face_model()
    loss = NonIdentityLoss(model, photometric=1.0, image_size=32)
    result, target, source = (_coeffs(2, s, model).requires_grad_() for s in (3, 4, 5))
    image = torch.rand(2, 3, 32, 32, requires_grad=True)
    terms = loss(result, target, source, result_image=image, face_mask=torch.ones(2, 1, 32, 32))
    assert set(terms) == {"expression", "pose", "lighting", "landmark", "photometric", "total"}
    assert all(torch.isfinite(v) for v in terms.values())
    terms["total"].backward()
    assert result.grad is not None and result.grad.abs().sum() > 0 and image.grad.abs().sum() > 0
    assert target.grad is None and source.grad is None
    expected = sum(w * terms[n] for n, w in loss.weights.items())
    torch.testing.assert_close(terms["total"], expected)


def test_landmark_descent_moves_identity_towards_source():
    model = _face_model()
    loss = NonIdentityLoss(model, expression=0, pose=0, lighting=0, landmark=1)
    target, source = _coeffs(1, 6, model), _coeffs(1, 7, model)
    result = target.clone().requires_grad_()
    opt = torch.optim.Adam([result], lr=0.05)
    first = loss(result, target, source)["landmark"].item()
    for _ in range(60):
        opt.zero_grad()
        loss(result, target, source)["landmark"].backward()
        opt.step()
    assert loss(result, target, source)["landmark"].item() < 0.2 * first


def test_bad_inputs():
    model = _face_model(with_albedo=False)
    with pytest.raises(ValueError, match="albedo"):
        NonIdentityLoss(model, photometric=1.0)
    loss = NonIdentityLoss(model)
    good = _coeffs(2, 8, model)
    with pytest.raises(ValueError, match=r"coefficients must have shape \(N, 45\)"):
        loss(good[:, 1:], good, good)
    assert not math.isnan(loss(good, good, good)["total"].item())


# ---------------------------------------------------------------------------------------------
# The other training losses, against plain formulas in float64.
import torch.nn.functional as F  # noqa: E402

from wscswap_fast.losses import (LossWeights, feature_matching_loss, hinge_discriminator_loss,  # noqa: E402
                                 hinge_generator_loss, identity_loss, identity_removal_generator_loss,
                                 identity_removal_loss, mask_loss, reconstruction_loss)


def _unit(n, d=512, seed=0):
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=1)


def test_identity_losses_are_one_minus_cosine():
    a, b = _unit(5, seed=1), _unit(5, seed=2)
    expected = (1 - (a.double() * b.double()).sum(1)).mean()
    torch.testing.assert_close(identity_loss(a, b).double(), expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(identity_removal_loss(a, b), identity_loss(a, b))
    torch.testing.assert_close(identity_removal_generator_loss(a, b), -identity_loss(a, b))
    assert identity_loss(a, a).abs().item() < 1e-6
    assert abs(identity_loss(a, -a).item() - 2) < 1e-6
    # not normalised inputs: still a cosine
    torch.testing.assert_close(identity_loss(3 * a, b), identity_loss(a, b))


def test_reconstruction_only_on_same_identity_pairs():
    g = torch.Generator().manual_seed(3)
    y, xt = torch.rand(4, 3, 8, 8, generator=g, requires_grad=True), torch.rand(4, 3, 8, 8, generator=g)
    same = torch.tensor([1.0, 0.0, 1.0, 0.0])
    loss = reconstruction_loss(y, xt, same)
    expected = (y.double() - xt.double()).abs()[[0, 2]].mean()
    torch.testing.assert_close(loss.double(), expected)
    loss.backward()
    assert y.grad[[1, 3]].abs().sum() == 0 and y.grad[[0, 2]].abs().sum() > 0
    assert reconstruction_loss(y, xt, torch.zeros(4)).item() == 0  # no same pair: 0, not NaN


def test_hinge_losses_over_scales():
    g = torch.Generator().manual_seed(4)
    real = [[torch.randn(2, 4, 6, 6, generator=g), torch.randn(2, 1, 5, 5, generator=g)],
            [torch.randn(2, 4, 3, 3, generator=g), torch.randn(2, 1, 2, 2, generator=g)]]
    fake = [[torch.randn_like(t) for t in s] for s in real]
    d = sum(F.relu(1 - r[-1]).mean() + F.relu(1 + f[-1]).mean() for r, f in zip(real, fake)) / 2
    torch.testing.assert_close(hinge_discriminator_loss(real, fake), d)
    torch.testing.assert_close(hinge_generator_loss(fake), -(fake[0][-1].mean() + fake[1][-1].mean()) / 2)
    # a bare logits tensor works too
    torch.testing.assert_close(hinge_generator_loss(fake[0][-1]), -fake[0][-1].mean())
    fm = (F.l1_loss(fake[0][0], real[0][0]) + F.l1_loss(fake[1][0], real[1][0])) / 2
    torch.testing.assert_close(feature_matching_loss(real, fake), fm)


def test_feature_matching_treats_real_features_as_constants():
    real = [[torch.randn(2, 3, 4, 4, requires_grad=True), torch.randn(2, 1, 3, 3)]]
    fake = [[torch.randn(2, 3, 4, 4, requires_grad=True), torch.randn(2, 1, 3, 3)]]
    feature_matching_loss(real, fake).backward()
    assert real[0][0].grad is None and fake[0][0].grad.abs().sum() > 0


def test_mask_loss_is_l1():
    m, t = torch.rand(2, 1, 8, 8), (torch.rand(2, 1, 8, 8) > 0.5).float()
    torch.testing.assert_close(mask_loss(m, t), (m - t).abs().mean())


def test_loss_weights_defaults_and_config():
    w = LossWeights()
    assert (w.identity, w.reconstruction, w.adversarial, w.feature_matching, w.identity_removal) == (5, 10, 1, 10, 1)
    assert (w.expression, w.pose, w.lighting, w.landmark) == (1, 1, 1, 0.5)

    class Section:  # a config's loss section: extra keys are ignored
        identity, landmark, mask_dilate = 2.0, 0.25, 4

    w = LossWeights.from_config(Section())
    assert w.identity == 2.0 and w.landmark == 0.25 and w.reconstruction == 10
    assert w.non_identity() == dict(expression=1.0, pose=1.0, lighting=1.0, landmark=0.25, photometric=0.0)
    with pytest.raises(ValueError, match="LossWeights.mask"):
        LossWeights(mask=-1)
    with pytest.raises(ValueError, match="LossWeights.identity"):
        LossWeights(identity=float("nan"))


def test_bad_loss_inputs():
    with pytest.raises(ValueError, match="emb"):
        identity_loss(torch.randn(2, 512), torch.randn(3, 512))
    with pytest.raises(ValueError, match="same"):
        reconstruction_loss(torch.rand(2, 3, 4, 4), torch.rand(2, 3, 4, 4), torch.ones(3))
    with pytest.raises(ValueError, match="mask"):
        mask_loss(torch.rand(2, 1, 4, 4), torch.rand(2, 1, 5, 5))
    with pytest.raises(ValueError, match="scales"):
        hinge_discriminator_loss([torch.randn(2, 1)], [torch.randn(2, 1), torch.randn(2, 1)])
    with pytest.raises(TypeError, match="fake_logits"):
        hinge_generator_loss("logits")
