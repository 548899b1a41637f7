"""Deep3DFaceRecon coefficient regressor: net_recon key names, strict checkpoint loading, the
output order FaceCoefficients.split expects, configurable head sizes."""
import json
import os
import warnings

import pytest
import torch
import torch.nn.functional as F

from wscswap_fast.losses import FaceCoefficients
from wscswap_fast.models import CoefficientRegressor, load_coefficient_regressor

KEYS = os.path.join(os.path.dirname(__file__), "data", "deep3d_net_recon_keys.json")


def _recorded():
    with open(KEYS) as f:
        return json.load(f)["resnet50"]


def _net_recon(seed=0, head_bias=None):
    """A Deep3DFaceRecon net_recon state dict: the recorded keys, random values."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in _recorded().items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(11)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=g) + 0.5
        elif key.startswith("final_layers") and head_bias is not None:
            i = int(key.split(".")[1])
            state[key] = torch.zeros(shape) if key.endswith("weight") else head_bias[i]
        else:
            state[key] = torch.randn(shape, generator=g) * 0.02
    return state


def test_state_dict_matches_reconnetwrapper():
    own = {k: list(v.shape) for k, v in CoefficientRegressor().state_dict().items()}
    recorded = _recorded()
    assert list(own) == list(recorded)
    assert own == recorded


def test_checkpoint_net_recon_loads_key_for_key(tmp_path):
    state = _net_recon()
    path = tmp_path / "epoch_20.pth"
    torch.save({"net_recon": state, "epoch": 20}, path)
    model = load_coefficient_regressor(str(path))
    loaded = model.state_dict()
    for k, v in state.items():
        assert torch.equal(loaded[k], v), k
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    out = model(torch.rand(2, 3, 256, 256))
    assert out.shape == (2, 257) and torch.isfinite(out).all()


def test_output_order_matches_face_coefficients(tmp_path):
    sizes = (80, 64, 80, 3, 27, 2, 1)
    biases = [torch.arange(k, dtype=torch.float32) + 1000 * (i + 1) for i, k in enumerate(sizes)]
    path = tmp_path / "epoch_1.pth"
    torch.save({"net_recon": _net_recon(head_bias=biases)}, path)
    model = load_coefficient_regressor(str(path))
    with torch.no_grad():
        coeffs = FaceCoefficients.split(model(torch.rand(1, 3, 224, 224)), 80, 64, 80)
    # with zero head weights every output is its head's bias: the parts must come out in order
    torch.testing.assert_close(coeffs.identity[0], biases[0])
    torch.testing.assert_close(coeffs.expression[0], biases[1])
    torch.testing.assert_close(coeffs.texture[0], biases[2])
    torch.testing.assert_close(coeffs.angles[0], biases[3])
    torch.testing.assert_close(coeffs.lighting[0], biases[4])
    torch.testing.assert_close(coeffs.translation[0], torch.cat([biases[5], biases[6]]))


def test_configurable_heads_for_the_surrey_model():
    with pytest.warns(UserWarning, match="random weights"):
        model = load_coefficient_regressor(None, "resnet18", num_id=63, num_exp=6, num_tex=0)
    out = model(torch.rand(2, 3, 128, 128))
    assert out.shape == (2, 63 + 6 + 0 + 33) == (2, model.num_coefficients)
    c = FaceCoefficients.split(out, 63, 6, 0)
    assert c.texture.shape == (2, 0) and c.translation.shape == (2, 3)
    # seeded: the same seed gives the same regressor, and the output depends on the image
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again = load_coefficient_regressor(None, "resnet18", num_id=63, num_exp=6, num_tex=0)
    x = torch.rand(2, 3, 224, 224)
    torch.testing.assert_close(model(x), again(x), rtol=0, atol=0)
    assert not torch.allclose(out[0], out[1])


def test_input_is_resized_to_224_unnormalised():
    torch.manual_seed(0)
    model = CoefficientRegressor("resnet18").eval()
    for layer in model.final_layers:
        torch.nn.init.normal_(layer.weight, std=0.1)
    x = torch.rand(1, 3, 300, 300)
    with torch.no_grad():
        want = model(F.interpolate(x, size=(224, 224), mode="bilinear", align_corners=False))
        torch.testing.assert_close(model(x), want)


@pytest.mark.parametrize("change, message", [
    (lambda s: s.pop("final_layers.6.bias"), r"missing keys \['final_layers.6.bias'\]"),
    (lambda s: s.__setitem__("backbone.fc.weight", torch.zeros(257, 2048)), r"unexpected keys \['backbone.fc.weight'\]"),
    (lambda s: s.__setitem__("final_layers.0.weight", torch.zeros(63, 2048, 1, 1)),
     r"wrong shapes \['final_layers.0.weight \(63, 2048, 1, 1\)"),
])
def test_mismatched_checkpoint_names_the_keys(tmp_path, change, message):
    state = _net_recon()
    change(state)
    torch.save({"net_recon": state}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match=message):
        load_coefficient_regressor(str(tmp_path / "bad.pth"))


def test_bad_arguments(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        load_coefficient_regressor(str(tmp_path / "missing.pth"))
    with pytest.raises(ValueError, match="arch"):
        CoefficientRegressor("resnet7")
    with pytest.raises(ValueError, match="num_exp"):
        CoefficientRegressor("resnet18", num_exp=0)
    with pytest.raises(ValueError, match="x must be"):
        CoefficientRegressor("resnet18")(torch.rand(1, 224, 224))
