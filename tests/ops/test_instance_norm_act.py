"""instance_norm_act against a float64 plain-PyTorch reference, on every backend."""
import pytest
import torch
import torch.nn.functional as F

from wscswap_fast.nn import InstanceNormLeakyReLU, set_backend
from wscswap_fast.ops import BackendUnavailable, instance_norm_act
from wscswap_fast.ops.instance_norm_act import reference

from ..backends import ALL_BACKENDS, relative_error, require

SHAPES = [(2, 5, 7, 9), (3, 17, 13, 11), (2, 64, 31, 31), (1, 1, 4, 4)]
TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-12, torch.float16: 1e-2, torch.bfloat16: 2e-2}


def _dtypes(backend):
    if backend == "cpu":
        return [torch.float32, torch.float64]
    if backend == "reference":
        return [torch.float32, torch.float64, torch.bfloat16]
    return [torch.float32, torch.float16, torch.bfloat16]


KINK_MARGIN = {torch.float32: 1e-4, torch.float64: 1e-4, torch.float16: 2e-2, torch.bfloat16: 5e-2}


def _away_from_the_kink(x, dtype):
    """x (float64) with no normalised value within rounding distance of 0, where LeakyReLU's
    slope jumps: there the dtype's rounding, not the kernel, decides which slope an element's
    gradient takes (one element in ~10^5 lands there in fp32), and the result of either side is
    right. Elements too near are pushed out; moving them barely moves the plane's statistics."""
    margin = KINK_MARGIN[dtype]
    for _ in range(10):
        xq = x.to(dtype).double()  # the values the kernel will see
        xh = (xq - xq.mean((2, 3), keepdim=True)) / xq.std((2, 3), unbiased=False, keepdim=True).clamp_min(1e-12)
        near = xh.abs() < margin
        if not near.any():
            break
        std = x.std((2, 3), unbiased=False, keepdim=True).expand_as(x)
        x = torch.where(near, x + 3 * margin * std * torch.where(xh < 0, -1.0, 1.0), x)
    return x


def _input(shape, dtype, device, layout="contiguous", seed=None, mean=0.5, std=2.0):
    g = torch.Generator().manual_seed(seed if seed is not None else torch.seed())
    x = torch.randn(shape, generator=g, dtype=torch.float64) * std + mean
    if shape[2] * shape[3] > 1:
        x = _away_from_the_kink(x, dtype)
    x = x.to(device=device, dtype=dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "noncontiguous":
        x = torch.cat([x, x], dim=3)[..., ::2]
    return x


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "noncontiguous"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_forward_and_gradient_match_float64_reference(backend, layout, shape):
    device = require(backend)
    for dtype in _dtypes(backend):
        x = _input(shape, dtype, device, layout).requires_grad_()
        out = instance_norm_act(x, 1e-5, 0.2, backend=backend)
        grad = torch.randn_like(out)
        (gx,) = torch.autograd.grad(out, x, grad)
        xr = x.detach().double().requires_grad_()
        ref = reference(xr, 1e-5, 0.2)
        (rx,) = torch.autograd.grad(ref, xr, grad.double())
        tol = TOLERANCE[dtype]
        assert out.dtype == dtype and out.shape == x.shape
        assert relative_error(out, ref) < tol, dtype
        assert gx.dtype == dtype and relative_error(gx, rx) < tol, dtype


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_statistics_keep_precision_when_mean_dwarfs_std(backend):
    device = require(backend)
    for layout in ("contiguous", "channels_last"):
        x = _input((2, 6, 9, 10), torch.float32, device, layout, seed=1, mean=1e3, std=0.1)
        ref = reference(x.double())
        assert relative_error(instance_norm_act(x, backend=backend), ref) < 1e-3, layout


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_output_keeps_the_input_memory_format(backend):
    device = require(backend)
    x = _input((2, 6, 5, 5), torch.float32, device, "channels_last", seed=2)
    assert instance_norm_act(x, backend=backend).is_contiguous(memory_format=torch.channels_last)
    assert instance_norm_act(x.contiguous(), backend=backend).is_contiguous()


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_single_pixel_and_empty(backend):
    """One pixel: xhat is 0 (F.instance_norm refuses it while training); an empty batch."""
    device = require(backend)
    x = torch.randn(2, 3, 1, 1, device=device).requires_grad_()
    out = instance_norm_act(x, backend=backend)
    (gx,) = torch.autograd.grad(out.sum(), x)
    assert torch.count_nonzero(out) == 0 and torch.count_nonzero(gx) == 0
    empty = torch.randn(0, 3, 4, 4, device=device).requires_grad_()
    assert instance_norm_act(empty, backend=backend).shape == empty.shape


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_gradcheck_float64(backend, layout):
    x = _input((2, 4, 5, 6), torch.float64, "cpu", layout, seed=3).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: instance_norm_act(x, 1e-5, 0.2, backend=backend), (x,))


def test_backward_is_deterministic():
    x = _input((3, 32, 40, 41), torch.float32, "cpu", "channels_last", seed=4).requires_grad_()
    grad = torch.randn_like(x)
    runs = [torch.autograd.grad(instance_norm_act(x, backend="cpu"), x, grad)[0] for _ in range(3)]
    assert all(torch.equal(runs[0], r) for r in runs[1:])


def test_torch_compile_fullgraph_no_graph_break():
    torch._dynamo.reset()
    x = _input((2, 5, 7, 9), torch.float32, "cpu", seed=5).requires_grad_()

    def layer(x):
        return instance_norm_act(x * 2, 1e-5, 0.2) + 1

    explanation = torch._dynamo.explain(layer)(x)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    out = torch.compile(layer, fullgraph=True)(x)
    want = reference(x * 2) + 1
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.autograd.grad(out.sum(), x)[0], torch.autograd.grad(want.sum(), x)[0],
                               rtol=1e-4, atol=1e-5)


def test_opcheck():
    x = _input((2, 5, 7, 9), torch.float32, "cpu", seed=6)
    torch.library.opcheck(torch.ops.wscswap.instance_norm_act.default, (x, 1e-5, 0.2, "cpu"))
    out, mean, rstd = torch.ops.wscswap.instance_norm_act.default(x, 1e-5, 0.2, "cpu")
    torch.library.opcheck(torch.ops.wscswap.instance_norm_act_backward.default,
                          (torch.randn_like(out), x, mean, rstd, 0.2, "cpu"))


@pytest.mark.parametrize(
    "args, exc, words",
    [
        ((torch.randn(3, 4, 5),), ValueError, ["x", "4-D", "(3, 4, 5)"]),
        ((torch.randint(0, 3, (2, 3, 4, 4)),), TypeError, ["x", "torch.int64"]),
        ((torch.randn(2, 3, 0, 4),), ValueError, ["x", "H*W"]),
        ((torch.randn(2, 3, 4, 4), 0.0), ValueError, ["eps", "0.0"]),
        ((torch.randn(2, 3, 4, 4), 1e-5, "0.2"), ValueError, ["negative_slope", "'0.2'"]),
        (("x",), TypeError, ["x", "str"]),
    ],
)
def test_bad_inputs_name_the_argument(args, exc, words):
    with pytest.raises(exc) as info:
        instance_norm_act(*args)
    for w in words:
        assert w in str(info.value), (w, str(info.value))


def test_unavailable_backend_raises_with_reason():
    if torch.cuda.is_available():
        pytest.skip("needs a machine without a GPU")
    x = _input((1, 3, 4, 4), torch.float32, "cpu", seed=7)
    with pytest.raises(BackendUnavailable, match="'cuda'.*cannot serve"):
        instance_norm_act(x, backend="cuda")
    with pytest.raises(BackendUnavailable, match="torch.bfloat16"):
        instance_norm_act(x.bfloat16(), backend="cpu")


def test_layer_equals_torch_pair_and_has_no_state():
    layer = InstanceNormLeakyReLU(6, 0.2)
    assert dict(layer.state_dict()) == {}
    x = _input((2, 6, 9, 9), torch.float32, "cpu", "channels_last", seed=8)
    want = torch.nn.Sequential(torch.nn.InstanceNorm2d(6), torch.nn.LeakyReLU(0.2))(x.double())
    for backend in ("auto", "cpu", "reference", "plain"):
        set_backend(layer, backend)
        assert relative_error(layer(x), want) < 1e-5, backend
    with pytest.raises(ValueError, match=r"x must be \(N, 6, H, W\)"):
        layer(torch.randn(2, 5, 4, 4))
    assert relative_error(F.leaky_relu(F.instance_norm(x), 0.2), want) < 1e-5
