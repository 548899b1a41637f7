"""nn.Conv2d: torch's layer with the same parameters, running eligible convolutions by Winograd."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from wscswap_fast.nn import Conv2d, set_backend
from wscswap_fast.ops import BackendUnavailable

from ..backends import relative_error


def _layer(*args, **kwargs):
    torch.manual_seed(0)
    return Conv2d(*args, **kwargs)


def test_same_parameters_and_state_dict_as_torch():
    ours, theirs = _layer(64, 96, 3, padding=1), nn.Conv2d(64, 96, 3, padding=1)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()}
    theirs.load_state_dict(ours.state_dict(), strict=True)
    assert isinstance(ours, nn.Conv2d)


@pytest.mark.parametrize(
    "args, kwargs, shape, expect",
    [
        ((64, 64, 3), dict(padding=1), (2, 64, 16, 16), "cpu"),
        ((64, 128, 4), dict(padding=1), (2, 64, 16, 16), "cpu"),
        ((64, 128, 4), dict(stride=2, padding=1), (2, 64, 32, 32), "cpu"),
        ((32, 64, 3), dict(padding=1), (2, 32, 16, 16), None),  # too few channels to pay
        ((64, 64, 3), dict(padding=1), (2, 64, 7, 7), None),  # output under 8x8: mostly padding tiles
        ((64, 64, 3), dict(stride=2, padding=1), (2, 64, 32, 32), None),  # 3x3 stride 2
        ((64, 64, 1), {}, (2, 64, 16, 16), None),
        ((64, 64, 7), dict(padding=3), (2, 64, 16, 16), None),
        ((64, 64, 3), dict(padding=1, dilation=2), (2, 64, 16, 16), None),
        ((64, 64, 3), dict(padding=1, groups=2), (2, 64, 16, 16), None),
        ((64, 64, 3), dict(padding=1, padding_mode="reflect"), (2, 64, 16, 16), None),
        ((64, 64, 3), dict(padding=(1, 0)), (2, 64, 16, 16), None),
    ],
)
def test_which_convolutions_use_winograd(args, kwargs, shape, expect):
    layer = _layer(*args, **kwargs)
    x = torch.randn(shape)
    assert layer.winograd_backend(x) == expect
    assert relative_error(layer(x), F.conv2d(x.double(), layer.weight.double(), layer.bias.double(),
                                             layer.stride, layer.padding, layer.dilation, layer.groups)
                          if layer.padding_mode == "zeros" else layer._conv_forward(x, layer.weight, layer.bias)) < 1e-5


def test_backend_choice():
    layer = _layer(64, 64, 3, padding=1)
    x = torch.randn(2, 64, 12, 12)
    for name, expect in (("reference", None), ("plain", None), ("cpu", "cpu"), ("auto", "cpu")):
        set_backend(layer, name)
        assert layer.winograd_backend(x) == expect, name
    assert layer.winograd_backend(x.half()) is None  # half precision: F.conv2d
    set_backend(layer, "auto")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer.winograd_backend(x) is None
    with pytest.raises(ValueError, match="backend must be one of"):
        set_backend(layer, "fast")


def test_explicit_backend_that_cannot_serve_raises():
    if torch.cuda.is_available():
        pytest.skip("needs a machine without a GPU")
    layer = set_backend(_layer(64, 64, 3, padding=1), "cuda")
    with pytest.raises(BackendUnavailable, match="cuda"):
        layer(torch.randn(1, 64, 12, 12))


def test_gradients_match_torch_layer():
    layer = set_backend(_layer(64, 80, 4, stride=2, padding=1), "cpu")
    ref = nn.Conv2d(64, 80, 4, stride=2, padding=1).double()
    ref.load_state_dict(layer.state_dict())
    x = torch.randn(2, 64, 18, 18).contiguous(memory_format=torch.channels_last).requires_grad_()
    xr = x.detach().double().requires_grad_()
    out, want = layer(x), ref(xr)
    grad = torch.randn_like(want)
    got = torch.autograd.grad(out, (x, layer.weight, layer.bias), grad.float())
    exp = torch.autograd.grad(want, (xr, ref.weight, ref.bias), grad)
    assert relative_error(out, want) < 1e-5
    for a, b in zip(got, exp):
        assert relative_error(a, b) < 1e-5


def test_models_use_it_for_their_big_convolutions():
    from wscswap_fast.models import IdentityAdversary, MultiScaleDiscriminator
    from wscswap_fast.models.iresnet import IResNet

    d = MultiScaleDiscriminator(num_scales=1)
    x = torch.randn(1, 3, 64, 64)
    used = []
    hooks = [m.register_forward_pre_hook(lambda m, a: used.append(m.winograd_backend(a[0])))
             for m in d.modules() if isinstance(m, Conv2d)]
    d(x)
    for h in hooks:
        h.remove()
    assert used.count("cpu") >= 2  # the stride-2 64->128 and the 256->512 stride-1 layers
    assert any(isinstance(m, Conv2d) for m in IdentityAdversary(64).modules())
    assert sum(isinstance(m, Conv2d) for m in IResNet((1, 1, 1, 1)).modules()) >= 8
