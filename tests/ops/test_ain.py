"""ain against a float64 plain-PyTorch reference, on every backend."""
import pytest
import torch

from wscswap_fast.ops import ain
from wscswap_fast.ops.ain import reference

from ..backends import ALL_BACKENDS, require

TOLERANCE = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2, torch.float64: 1e-12}
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
NAMES = ("h", "gamma_id", "beta_id", "gamma_att", "beta_att", "mask_weight", "mask_bias")


def _inputs(shape, dtype, device, layout="contiguous", h_mean=0.5, h_std=2.0, seed=None):
    g = torch.Generator().manual_seed(seed if seed is not None else torch.seed())
    n, c, hh, ww = shape
    t = {
        "h": torch.randn(shape, generator=g, dtype=torch.float64) * h_std + h_mean,
        "gamma_id": torch.randn((n, c), generator=g, dtype=torch.float64) + 1,
        "beta_id": torch.randn((n, c), generator=g, dtype=torch.float64),
        "gamma_att": torch.randn(shape, generator=g, dtype=torch.float64) + 1,
        "beta_att": torch.randn(shape, generator=g, dtype=torch.float64),
        "mask_weight": torch.randn((c,), generator=g, dtype=torch.float64) / max(c, 1) ** 0.5,
        "mask_bias": torch.randn((1,), generator=g, dtype=torch.float64),
    }
    grads = (torch.randn(shape, generator=g, dtype=torch.float64), torch.randn((n, 1, hh, ww), generator=g, dtype=torch.float64))
    out = []
    for name in NAMES:
        x = t[name].to(device=device, dtype=dtype)
        if x.dim() == 4 and layout == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
        elif x.dim() == 4 and layout == "noncontiguous":
            x = x.transpose(2, 3).contiguous().transpose(2, 3)  # same values, strides of the transpose
        out.append(x)
    return out, [x.to(device=device, dtype=dtype) for x in grads]


def _rel_err(x, ref):
    return ((x.double() - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()


def _check_against_reference(args, grads, backend, tol, return_mask=True):
    leaves = [a.detach().requires_grad_() for a in args]
    out, m = ain(*leaves, return_mask=True, backend=backend)
    got = torch.autograd.grad((out, m) if return_mask else (out,), leaves,
                              tuple(grads) if return_mask else (grads[0],))
    ref_leaves = [a.detach().double().requires_grad_() for a in args]
    ref_out, ref_m = reference(*ref_leaves)
    want = torch.autograd.grad((ref_out, ref_m) if return_mask else (ref_out,), ref_leaves,
                               tuple(g.double() for g in grads) if return_mask else (grads[0].double(),))
    assert out.dtype == args[0].dtype and m.shape == (args[0].shape[0], 1, *args[0].shape[2:])
    assert torch.isfinite(out).all() and torch.isfinite(m).all()
    assert _rel_err(out, ref_out) < tol, "out"
    assert _rel_err(m, ref_m) < tol, "m"
    for name, a, b in zip(NAMES, got, want):
        assert a.shape == b.shape and a.dtype == args[0].dtype, name
        assert torch.isfinite(a).all(), name
        if name != "mask_bias":
            assert _rel_err(a, b) < tol * 4, name
    # mask_bias's gradient is one sum over every pixel whose terms cancel: judge its error against
    # the terms' magnitude (sum |t_p|), from the float64 reference with a per-pixel bias.
    per_pixel_bias = ref_leaves[6].detach().expand(args[0].shape[0], 1, *args[0].shape[2:]).clone().requires_grad_()
    ref_out, ref_m = reference(*ref_leaves[:6], per_pixel_bias)
    (terms,) = torch.autograd.grad((ref_out, ref_m) if return_mask else (ref_out,), per_pixel_bias,
                                   tuple(g.double() for g in grads) if return_mask else (grads[0].double(),))
    assert (got[6].double() - want[6]).abs().item() <= tol * 4 * max(terms.abs().sum().item(), 1e-30), "mask_bias"


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "noncontiguous"])
@pytest.mark.parametrize("shape", [(2, 3, 7, 13), (1, 3, 1, 1), (3, 5, 4, 4), (2, 16, 9, 11)], ids=str)
def test_forward_and_gradients_match_float64_reference(backend, dtype, layout, shape):
    device = require(backend)
    args, grads = _inputs(shape, dtype, device, layout)
    _check_against_reference(args, grads, backend, TOLERANCE[dtype])


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_without_mask_gradient(backend):
    device = require(backend)
    args, grads = _inputs((2, 4, 5, 6), torch.float32, device)
    _check_against_reference(args, grads, backend, 1e-5, return_mask=False)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_statistics_keep_precision_when_mean_dwarfs_std(backend, layout):
    """mean 1e3, std 1e-1: E[x^2] - E[x]^2 in fp32 would lose every digit of the variance."""
    device = require(backend)
    args, grads = _inputs((2, 4, 16, 16), torch.float32, device, layout, h_mean=1e3, h_std=1e-1)
    out, m = ain(*args, return_mask=True, backend=backend)
    ref_out, ref_m = reference(*[a.double() for a in args])
    # The fp32 input itself is only known to ~6e-5 relative to 1e3, i.e. ~6e-4 of one std.
    assert _rel_err(out, ref_out) < 1e-3
    assert _rel_err(m, ref_m) < 1e-3


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_single_pixel_gives_finite_reference_values(backend):
    device = require(backend)
    args, grads = _inputs((3, 5, 1, 1), torch.float32, device)
    _check_against_reference(args, grads, backend, 1e-5)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_channels_last_in_channels_last_out(backend):
    device = require(backend)
    args, _ = _inputs((2, 3, 5, 6), torch.float32, device, "channels_last")
    assert ain(*args, backend=backend).is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_gradcheck_float64(backend, layout):
    args, _ = _inputs((2, 3, 4, 5), torch.float64, "cpu", layout)
    leaves = tuple(a.requires_grad_() for a in args)
    assert torch.autograd.gradcheck(lambda *a: ain(*a, return_mask=True, backend=backend), leaves)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_cpu_large_streaming_path(dtype):
    """Outputs of 8 MiB and more take the streaming-store path of the CPU kernels."""
    args, grads = _inputs((2, 8, 367, 401), dtype, "cpu")
    _check_against_reference(args, grads, "cpu", TOLERANCE[dtype])


def test_torch_compile_fullgraph_no_graph_break():
    torch._dynamo.reset()
    args, grads = _inputs((2, 3, 6, 5), torch.float32, "cpu")
    leaves = [a.requires_grad_() for a in args]

    def step(*a):
        out, m = ain(*a, return_mask=True)
        return out * 2, m

    explanation = torch._dynamo.explain(step)(*leaves)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    out, m = torch.compile(step, fullgraph=True)(*leaves)
    ref_out, ref_m = reference(*leaves)
    torch.testing.assert_close(out, ref_out * 2, rtol=1e-5, atol=1e-5)
    got = torch.autograd.grad((out, m), leaves, (grads[0], grads[1]))
    want = torch.autograd.grad((ref_out * 2, ref_m), leaves, (grads[0], grads[1]))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def _bad(i, value):
    args, _ = _inputs((2, 3, 4, 4), torch.float32, "cpu", seed=7)
    args[i] = value(args[i]) if callable(value) else value
    return args


@pytest.mark.parametrize(
    "args, exc, words",
    [
        (lambda: _bad(0, lambda t: t[0]), ValueError, ["h", "4-D", "(3, 4, 4)"]),
        (lambda: _bad(1, lambda t: t[:, :2]), ValueError, ["gamma_id", "(2, 2)", "(N,C)"]),
        (lambda: _bad(3, lambda t: t[:, :, :3]), ValueError, ["gamma_att", "(2, 3, 3, 4)"]),
        (lambda: _bad(5, lambda t: torch.ones(4)), ValueError, ["mask_weight", "(4,)"]),
        (lambda: _bad(6, lambda t: torch.ones(2)), ValueError, ["mask_bias", "(1,)"]),
        (lambda: _bad(4, lambda t: t.double()), TypeError, ["beta_att", "torch.float64"]),
        (lambda: _bad(0, lambda t: t.int()), TypeError, ["h", "torch.int32"]),
        (lambda: _bad(2, lambda t: t.to("meta")), ValueError, ["beta_id", "device"]),
        (lambda: _bad(0, lambda t: t[:, :, :0]), ValueError, ["h", "H*W"]),
        (lambda: _bad(1, lambda t: t.numpy()), TypeError, ["gamma_id", "ndarray"]),
    ],
)
def test_bad_inputs_name_the_argument(args, exc, words):
    with pytest.raises(exc) as info:
        ain(*args())
    for w in words:
        assert w in str(info.value), str(info.value)


def test_bad_eps():
    args, _ = _inputs((1, 3, 2, 2), torch.float32, "cpu", seed=8)
    with pytest.raises(ValueError, match="eps"):
        ain(*args, eps=0.0)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("shape", [(0, 3, 4, 4), (2, 0, 3, 3), (33, 2, 1, 1), (1, 2, 40, 50)], ids=str)
def test_edge_shapes(backend, shape):
    """No images, no channels (m = sigmoid(bias)), many images of one pixel, and a plane split
    across many tiles."""
    device = require(backend)
    args, grads = _inputs(shape, torch.float32, device)
    leaves = [a.detach().requires_grad_() for a in args]
    out, m = ain(*leaves, return_mask=True, backend=backend)
    got = torch.autograd.grad((out, m), leaves, tuple(grads))
    ref_leaves = [a.detach().double().requires_grad_() for a in args]
    want = torch.autograd.grad(reference(*ref_leaves), ref_leaves, tuple(g.double() for g in grads))
    for name, a, b in zip(NAMES, got, want):
        assert a.shape == b.shape and torch.isfinite(a).all(), name
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_backward_is_deterministic(backend):
    device = require(backend)
    args, grads = _inputs((2, 6, 33, 35), torch.float32, device)
    leaves = [a.requires_grad_() for a in args]
    runs = [torch.autograd.grad(ain(*leaves, return_mask=True, backend=backend), leaves, tuple(grads))
            for _ in range(2)]
    for a, b in zip(*runs):
        assert torch.equal(a, b)
