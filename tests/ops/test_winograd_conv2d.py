"""winograd_conv2d against a float64 F.conv2d, on every backend."""
import pytest
import torch
import torch.nn.functional as F

from wscswap_fast.ops import BackendUnavailable, winograd_conv2d
from wscswap_fast.ops.winograd_conv2d import Geometry, reference

from ..backends import ALL_BACKENDS, conditioned_error, relative_error, require

# (N, C, H, W), K, r, padding, stride: odd sizes, sizes below one tile, every padding, C or K of 1
CASES = [
    ((2, 5, 9, 11), 6, 3, 1, 1),
    ((1, 3, 7, 13), 4, 3, 0, 1),
    ((3, 7, 10, 13), 5, 4, 1, 1),
    ((2, 4, 6, 5), 3, 4, 3, 1),
    ((1, 1, 4, 4), 1, 4, 0, 1),
    ((2, 6, 8, 7), 9, 2, 1, 1),
    ((2, 5, 12, 10), 4, 4, 1, 2),
    ((1, 3, 13, 11), 7, 4, 2, 2),
    ((2, 17, 33, 31), 19, 3, 2, 1),
]
TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-12}


def _dtypes(backend):
    return [torch.float32, torch.float64] if backend in ("cpu", "reference") else [torch.float32]


def _inputs(case, dtype, device, layout="contiguous", seed=None):
    g = torch.Generator().manual_seed(seed if seed is not None else torch.seed())
    shape, k, r, _, _ = case
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    w = torch.randn((k, shape[1], r, r), generator=g, dtype=torch.float64)
    b = torch.randn(k, generator=g, dtype=torch.float64)
    x = x.to(device=device, dtype=dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "noncontiguous":  # every other column of a wider tensor
        x = torch.cat([x, x], dim=3)[..., ::2]
    return x, w.to(device=device, dtype=dtype), b.to(device=device, dtype=dtype)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "noncontiguous"])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_forward_and_gradients_match_float64_reference(backend, layout, case):
    device = require(backend)
    _, _, _, padding, stride = case
    for dtype in _dtypes(backend):
        x, w, b = _inputs(case, dtype, device, layout)
        leaves = [t.detach().requires_grad_() for t in (x, w, b)]
        out = winograd_conv2d(*leaves, padding, stride, backend=backend)
        grad = torch.randn_like(out)
        grads = torch.autograd.grad(out, leaves, grad)

        ref_leaves = [t.detach().double().requires_grad_() for t in (x, w, b)]
        ref = reference(*ref_leaves, padding, stride)
        ref_grads = torch.autograd.grad(ref, ref_leaves, grad.double())

        # Winograd rounds relative to the size of the terms it sums, not of their sum: errors are
        # measured against the same convolution and gradients of |x|, |w|, |b| and |dy| (each
        # output the sum of its terms' magnitudes), so a result that cancels to near 0 (one
        # 1x1 output of 16 products, say) is not held to a bound its terms cannot meet.
        abs_leaves = [t.detach().double().abs().requires_grad_() for t in (x, w, b)]
        magnitude = reference(*abs_leaves, padding, stride)
        magnitude_grads = torch.autograd.grad(magnitude, abs_leaves, grad.double().abs())

        tol = TOLERANCE[dtype]
        assert out.dtype == dtype and out.shape == ref.shape
        assert conditioned_error(out, ref, magnitude) < tol
        for name, got, want, size in zip(("input", "weight", "bias"), grads, ref_grads, magnitude_grads):
            assert got.dtype == dtype and got.shape == want.shape, name
            assert conditioned_error(got, want, size) < tol, name


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_output_keeps_the_input_memory_format(backend):
    device = require(backend)
    x, w, b = _inputs(CASES[0], torch.float32, device, seed=1)
    assert winograd_conv2d(x, w, b, backend=backend).is_contiguous()
    cl = x.contiguous(memory_format=torch.channels_last)
    out = winograd_conv2d(cl, w, b, backend=backend)
    assert out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("case", [CASES[0], CASES[2], CASES[5], CASES[6]], ids=str)
def test_gradcheck_float64(backend, case):
    require(backend)
    _, _, _, padding, stride = case
    x, w, b = (t.requires_grad_() for t in _inputs(((1,) + case[0][1:3] + (6,),) + case[1:], torch.float64, "cpu", seed=2))
    assert torch.autograd.gradcheck(lambda *a: winograd_conv2d(*a, padding, stride, backend=backend), (x, w, b))


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_without_bias_and_partial_gradients(backend):
    device = require(backend)
    x, w, _ = _inputs(CASES[2], torch.float32, device, seed=3)
    want = F.conv2d(x.double(), w.double(), padding=1)
    out = winograd_conv2d(x, w, None, 1, backend=backend)
    assert relative_error(out, want) < 1e-5
    # only the weight needs a gradient (a first layer); then only the input (a frozen network)
    wl = w.detach().requires_grad_()
    (gw,) = torch.autograd.grad(winograd_conv2d(x, wl, None, 1, backend=backend).sum(), wl)
    xl = x.detach().requires_grad_()
    (gx,) = torch.autograd.grad(winograd_conv2d(xl, w, None, 1, backend=backend).sum(), xl)
    wr, xr = w.double().requires_grad_(), x.double().requires_grad_()
    gw_ref, gx_ref = torch.autograd.grad(F.conv2d(xr, wr, padding=1).sum(), (wr, xr))
    assert relative_error(gw, gw_ref) < 1e-5 and relative_error(gx, gx_ref) < 1e-5


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_empty_batch(backend):
    device = require(backend)
    x = torch.randn(0, 3, 8, 8, device=device).requires_grad_()
    w = torch.randn(4, 3, 3, 3, device=device).requires_grad_()
    out = winograd_conv2d(x, w, None, 1, backend=backend)
    assert out.shape == (0, 4, 8, 8)
    gx, gw = torch.autograd.grad(out.sum(), (x, w))
    assert gx.shape == x.shape and gw.shape == w.shape and torch.count_nonzero(gw) == 0


def test_padded_tile_rows_do_not_change_results():
    """Plane buffers get extra zero rows when a plane would be a multiple of 4 KiB (cache-set
    conflicts); those rows must not reach the weight gradient."""
    g = Geometry((4, 256, 14, 14), (256, 256, 3, 3), 1)
    assert g.tiles == 64 and g.rows > g.tiles
    x = torch.randn(4, 256, 14, 14, dtype=torch.float64).requires_grad_()
    w = torch.randn(256, 256, 3, 3, dtype=torch.float64).requires_grad_()
    out = winograd_conv2d(x, w, None, 1, backend="cpu")
    grad = torch.randn_like(out)
    gx, gw = torch.autograd.grad(out, (x, w), grad)
    xr, wr = x.detach().requires_grad_(), w.detach().requires_grad_()
    ref = F.conv2d(xr, wr, padding=1)
    rx, rw = torch.autograd.grad(ref, (xr, wr), grad)
    assert relative_error(out, ref) < 1e-12 and relative_error(gx, rx) < 1e-12 and relative_error(gw, rw) < 1e-12


def test_large_channels_last_case_matches_direct_convolution():
    """The PatchGAN's 256->512 4x4 layer at a small size: many tiles, wide channel loops."""
    x = torch.randn(2, 256, 20, 20).contiguous(memory_format=torch.channels_last)
    w = torch.randn(512, 256, 4, 4) * 0.05
    b = torch.randn(512)
    out = winograd_conv2d(x, w, b, 1, backend="cpu")
    assert relative_error(out, F.conv2d(x.double(), w.double(), b.double(), padding=1)) < 1e-5


def test_torch_compile_fullgraph_no_graph_break():
    torch._dynamo.reset()
    x, w, b = (t.requires_grad_() for t in _inputs(CASES[0], torch.float32, "cpu", seed=4))

    def layer(x, w, b):
        return torch.relu(winograd_conv2d(x, w, b, 1)) * 2

    explanation = torch._dynamo.explain(layer)(x, w, b)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    out = torch.compile(layer, fullgraph=True)(x, w, b)
    want = torch.relu(F.conv2d(x, w, b, padding=1)) * 2
    torch.testing.assert_close(out, want, rtol=1e-4, atol=1e-4)
    got = torch.autograd.grad(out.sum(), (x, w, b))
    ref = torch.autograd.grad(want.sum(), (x, w, b))
    for a, c in zip(got, ref):
        torch.testing.assert_close(a, c, rtol=1e-4, atol=1e-4)


def test_opcheck():
    x, w, b = _inputs(CASES[0], torch.float32, "cpu", seed=5)
    torch.library.opcheck(torch.ops.wscswap.winograd_conv2d.default, (x, w, b, 1, "cpu"))
    out = winograd_conv2d(x, w, b, 1)
    torch.library.opcheck(torch.ops.wscswap.winograd_conv2d_backward.default,
                          (torch.randn_like(out), x, w, 1, True, True, True, "cpu"))


def _bad(**change):
    x, w, b = _inputs(((2, 3, 8, 8), 4, 3, 1, 1), torch.float32, "cpu", seed=6)
    args = dict(input=x, weight=w, bias=b, padding=1, stride=1)
    args.update(change)
    return args


@pytest.mark.parametrize(
    "change, exc, words",
    [
        (dict(input=torch.randn(3, 8, 8)), ValueError, ["input", "4-D", "(3, 8, 8)"]),
        (dict(input=torch.randint(0, 3, (2, 3, 8, 8))), TypeError, ["input", "torch.int64"]),
        (dict(weight=torch.randn(4, 3, 5, 5)), ValueError, ["weight", "(2, 3, 4)", "(4, 3, 5, 5)"]),
        (dict(weight=torch.randn(4, 3, 3, 4)), ValueError, ["weight", "(4, 3, 3, 4)"]),
        (dict(weight=torch.randn(4, 2, 3, 3)), ValueError, ["weight", "3 input channels"]),
        (dict(weight=torch.randn(4, 3, 3, 3, dtype=torch.float64)), TypeError, ["weight", "torch.float64"]),
        (dict(bias=torch.randn(5)), ValueError, ["bias", "(4,)", "(5,)"]),
        (dict(bias=torch.randn(4).to("meta")), ValueError, ["bias", "device"]),
        (dict(padding=3), ValueError, ["padding", "[0, 3)", "3"]),
        (dict(padding=-1), ValueError, ["padding"]),
        (dict(padding=1.0), ValueError, ["padding", "1.0"]),
        (dict(stride=3), ValueError, ["stride", "3"]),
        (dict(stride=2), ValueError, ["stride 2", "3x3"]),
        (dict(input=torch.randn(2, 3, 1, 8), padding=0), ValueError, ["too small", "-1x6"]),
        (dict(weight=[[1.0]]), TypeError, ["weight", "list"]),
        (dict(input=torch.randn(2, 0, 8, 8), weight=torch.randn(4, 0, 3, 3)), ValueError, ["input", "one channel"]),
        (dict(weight=torch.randn(0, 3, 3, 3), bias=None), ValueError, ["weight", "one channel", "(0, 3, 3, 3)"]),
    ],
)
def test_bad_inputs_name_the_argument(change, exc, words):
    args = _bad(**change)
    with pytest.raises(exc) as info:
        winograd_conv2d(args["input"], args["weight"], args["bias"], args["padding"], args["stride"])
    for w in words:
        assert w in str(info.value), (w, str(info.value))


def test_unavailable_backend_raises_with_reason(monkeypatch):
    x, w, b = _inputs(CASES[0], torch.float32, "cpu", seed=7)
    if torch.cuda.is_available():
        pytest.skip("needs a machine without a GPU")
    with pytest.raises(BackendUnavailable, match="'cuda'.*cannot serve"):
        winograd_conv2d(x, w, b, backend="cuda")
    with pytest.raises(BackendUnavailable, match="torch.float16"):
        winograd_conv2d(x.half(), w.half(), b.half(), backend="cpu")
    monkeypatch.setenv("WSCSWAP_BACKEND", "reference")
    torch.testing.assert_close(winograd_conv2d(x, w, b), F.conv2d(x, w, b, padding=1))


def test_reference_serves_half_precision():
    x, w, b = (t.to(torch.bfloat16) for t in _inputs(CASES[0], torch.float32, "cpu", seed=8))
    out = winograd_conv2d(x, w, b, backend="reference")
    assert out.dtype == torch.bfloat16 and relative_error(out, F.conv2d(x.double(), w.double(), b.double(), padding=1)) < 1e-2


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_channels_last_weight_gets_a_channels_last_gradient(backend):
    """Models converted to channels_last hold 4-D conv weights in that layout: the kernels read it
    as it is and write the weight gradient in it (what a fused optimizer pairs with)."""
    device = require(backend)
    x, w, b = _inputs(CASES[2], torch.float32, device, "channels_last", seed=9)
    w = w.contiguous(memory_format=torch.channels_last).requires_grad_()
    out = winograd_conv2d(x, w, b, 1, backend=backend)
    (gw,) = torch.autograd.grad(out.sum(), w)
    assert gw.is_contiguous(memory_format=torch.channels_last)
    wr = w.detach().double().requires_grad_()
    (want,) = torch.autograd.grad(F.conv2d(x.double(), wr, b.double(), padding=1).sum(), wr)
    assert relative_error(gw, want) < 1e-5
