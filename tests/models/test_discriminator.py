"""Multi-scale PatchGAN shapes and feature lists; the identity adversary's normalised output."""
import pytest
import torch

from wscswap_fast.models import IdentityAdversary, MultiScaleDiscriminator


def test_multiscale_features_and_logits():
    d = MultiScaleDiscriminator(in_channels=3, num_scales=3, base_channels=8, num_layers=4)
    x = torch.rand(2, 3, 128, 128, requires_grad=True)
    out = d(x)
    assert len(out) == 3
    for k, feats in enumerate(out):
        assert len(feats) == 4 + 1  # num_layers features, then the logits
        size = 128 >> k
        channels = [8, 16, 32, 64]
        for i, f in enumerate(feats[:-1]):
            expect = size // 2 ** min(i + 1, 3) - (1 if i == 3 else 0)
            assert f.shape == (2, channels[i], expect, expect), (k, i, f.shape)
        logits = feats[-1]
        assert logits.shape[:2] == (2, 1) and logits.shape[-1] == size // 8 - 2
    sum(f[-1].mean() for f in out).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_scales_see_downsampled_images():
    d = MultiScaleDiscriminator(num_scales=2, base_channels=4, num_layers=3)
    x = torch.rand(1, 3, 64, 64)
    out = d(x)
    # the second scale's first feature is half the first scale's
    assert out[1][0].shape[-1] * 2 == out[0][0].shape[-1]


def test_discriminator_errors():
    with pytest.raises(ValueError, match="num_scales"):
        MultiScaleDiscriminator(num_scales=0)
    d = MultiScaleDiscriminator(base_channels=4)
    with pytest.raises(ValueError, match=r"x must be \(N, 3, H, W\)"):
        d(torch.rand(1, 4, 128, 128))
    with pytest.raises(ValueError, match="at least 96x96"):
        d(torch.rand(1, 3, 64, 64))


def test_identity_adversary_is_normalised():
    adv = IdentityAdversary(code_channels=8, id_dim=512)
    code = torch.randn(3, 8, 16, 16, requires_grad=True)
    e = adv(code)
    assert e.shape == (3, 512)
    torch.testing.assert_close(e.norm(dim=1), torch.ones(3))
    (1 - (e * torch.nn.functional.normalize(torch.randn(3, 512), dim=1)).sum(1)).mean().backward()
    assert code.grad is not None and code.grad.abs().sum() > 0
    with pytest.raises(ValueError, match=r"face_code must be \(N, 8, S, S\)"):
        adv(torch.randn(3, 4, 16, 16))
    with pytest.raises(ValueError, match="code_channels"):
        IdentityAdversary(0)


def test_winograd_backend_matches_reference():
    """The default 64-channel PatchGAN: its 4x4 stride-2 and 256->512 stride-1 layers run by
    Winograd on the cpu backend; features and parameter and input gradients against the
    reference backend in float64."""
    from wscswap_fast.nn import set_backend

    torch.manual_seed(0)
    d = MultiScaleDiscriminator(num_scales=2).double()
    x = torch.rand(2, 3, 96, 96, dtype=torch.float64, requires_grad=True)

    def run(backend):
        set_backend(d, backend)
        d.zero_grad(set_to_none=True)
        x.grad = None
        out = d(x)
        loss = sum((f * torch.linspace(-1, 1, f.numel(), dtype=f.dtype).view_as(f)).sum() for s in out for f in s)
        loss.backward()
        return [f.detach() for s in out for f in s], [p.grad.clone() for p in d.parameters()] + [x.grad.clone()]

    feats, grads = run("cpu")
    feats_ref, grads_ref = run("reference")
    # the biases of convs followed by an instance norm have a zero gradient in exact arithmetic
    # (~1e-12 here): measured against the largest gradient, not their own size
    scale = max(g.norm().item() for g in grads_ref)
    for a, b in zip(feats + grads, feats_ref + grads_ref):
        assert (a - b).norm().item() < 1e-8 * max(b.norm().item(), 1e-3 * scale)
