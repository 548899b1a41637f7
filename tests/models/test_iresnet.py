"""ArcFace iresnet: arcface_torch key names and shapes (recorded list), strict loading with clear
errors, the forward against a plain functional twin, IdentityEncoder preprocessing."""
import json
import os
import warnings

import pytest
import torch
import torch.nn.functional as F

from wscswap_fast.models import IdentityEncoder, iresnet18, iresnet34, iresnet50, iresnet100, load_identity_encoder
from wscswap_fast.models.iresnet import IResNet

KEYS = os.path.join(os.path.dirname(__file__), "data", "iresnet_keys.json")
BUILDERS = {"iresnet18": iresnet18, "iresnet34": iresnet34, "iresnet50": iresnet50, "iresnet100": iresnet100}


def _recorded(arch):
    with open(KEYS) as f:
        return json.load(f)[arch]


def _fake_checkpoint(arch, seed=0):
    """A backbone.pth-like state dict: exactly the recorded keys and shapes, random values."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in _recorded(arch).items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(7)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=g) + 0.5
        else:
            state[key] = torch.randn(shape, generator=g) * 0.05
    return state


@pytest.mark.parametrize("arch", list(BUILDERS))
def test_state_dict_matches_arcface_torch(arch):
    own = {k: list(v.shape) for k, v in BUILDERS[arch]().state_dict().items()}
    recorded = _recorded(arch)
    assert list(own) == list(recorded)  # names and order
    assert own == recorded


def test_checkpoint_loads_strictly(tmp_path):
    state = _fake_checkpoint("iresnet50")
    path = tmp_path / "backbone.pth"
    torch.save(state, path)
    enc = load_identity_encoder(str(path), "iresnet50")
    loaded = enc.backbone.state_dict()
    for k, v in state.items():
        assert torch.equal(loaded[k], v), k
    assert not enc.training and not any(p.requires_grad for p in enc.parameters())


def test_safetensors_and_missing_batch_counters(tmp_path):
    from safetensors.torch import save_file

    state = {k: v for k, v in _fake_checkpoint("iresnet18").items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "backbone.safetensors"
    save_file(state, str(path))
    enc = load_identity_encoder(str(path), "iresnet18")
    assert torch.equal(enc.backbone.fc.weight, state["fc.weight"])


@pytest.mark.parametrize("change, message", [
    (lambda s: s.pop("layer2.0.conv1.weight"), r"missing keys \['layer2.0.conv1.weight'\]"),
    (lambda s: s.__setitem__("head.weight", torch.zeros(3)), r"unexpected keys \['head.weight'\]"),
    (lambda s: s.__setitem__("fc.weight", torch.zeros(512, 100)), r"wrong shapes \['fc.weight \(512, 100\)"),
    (lambda s: s.__setitem__("fc.bias", [0.0] * 512), r"wrong shapes \['fc.bias \(a list, not a tensor\)"),
])
def test_mismatched_checkpoint_names_the_keys(tmp_path, change, message):
    state = _fake_checkpoint("iresnet18")
    change(state)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match=message):
        load_identity_encoder(str(path), "iresnet18")


def test_bad_arguments(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_identity_encoder(str(tmp_path / "nope.pth"))
    with pytest.raises(ValueError, match="arch"):
        load_identity_encoder(None, "iresnet7")
    torch.save(torch.zeros(3), tmp_path / "tensor.pth")
    with pytest.raises(ValueError, match="not a state dict"):
        load_identity_encoder(str(tmp_path / "tensor.pth"), "iresnet18")
    with pytest.warns(UserWarning):
        enc = load_identity_encoder(None, "iresnet18")
    with pytest.raises(ValueError, match="x must be"):
        enc(torch.rand(1, 1, 112, 112))


def test_random_encoder_is_seeded_and_warns():
    with pytest.warns(UserWarning, match="identity will not transfer"):
        a = load_identity_encoder(None, "iresnet18", seed=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        b = load_identity_encoder(None, "iresnet18", seed=3)
        c = load_identity_encoder(None, "iresnet18", seed=4)
    x = torch.rand(2, 3, 112, 112)
    torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)
    assert not torch.equal(a(x), c(x))
    # random images give distinct embeddings (the random net is not degenerate)
    e = a(x)
    assert (e[0] @ e[1]).abs() < 0.999


def _bn(x, s, p):
    return F.batch_norm(x, s[p + ".running_mean"], s[p + ".running_var"], s[p + ".weight"], s[p + ".bias"],
                        training=False, eps=1e-5)


def _functional_iresnet(x, s, blocks):
    """arcface_torch's forward written against the state dict: conv1-bn1-prelu; per block
    bn1, conv1, bn2, prelu, conv2 (stride), bn3 + shortcut; bn2, flatten, fc, features."""
    x = F.prelu(_bn(F.conv2d(x, s["conv1.weight"], padding=1), s, "bn1"), s["prelu.weight"])
    for li, n in enumerate(blocks, start=1):
        for b in range(n):
            p = f"layer{li}.{b}"
            stride = 2 if b == 0 else 1
            out = F.conv2d(_bn(x, s, p + ".bn1"), s[p + ".conv1.weight"], padding=1)
            out = F.prelu(_bn(out, s, p + ".bn2"), s[p + ".prelu.weight"])
            out = _bn(F.conv2d(out, s[p + ".conv2.weight"], stride=stride, padding=1), s, p + ".bn3")
            if b == 0:
                x = _bn(F.conv2d(x, s[p + ".downsample.0.weight"], stride=2), s, p + ".downsample.1")
            x = out + x
    x = torch.flatten(_bn(x, s, "bn2"), 1)
    x = F.linear(x, s["fc.weight"], s["fc.bias"])
    return _bn(x, s, "features")


def test_forward_matches_functional_twin_and_preprocessing():
    state = _fake_checkpoint("iresnet18", seed=1)
    net = IResNet((2, 2, 2, 2))
    net.load_state_dict(state)
    net.eval()
    x = torch.rand(2, 3, 112, 112) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(net(x), _functional_iresnet(x, state, (2, 2, 2, 2)), rtol=1e-4, atol=1e-4)
        enc = IdentityEncoder(net).eval()
        crop = torch.rand(2, 3, 224, 224)
        small = F.interpolate(crop, size=(112, 112), mode="bilinear", align_corners=False)
        want = F.normalize(_functional_iresnet(small * 2 - 1, state, (2, 2, 2, 2)), dim=1)
        got = enc(crop)
    assert got.shape == (2, 512)
    torch.testing.assert_close(got.norm(dim=1), torch.ones(2))
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
