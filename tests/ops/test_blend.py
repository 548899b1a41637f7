"""blend against a float64 plain-PyTorch reference, on every backend."""
import pytest
import torch

from wscswap_fast.ops import BackendUnavailable, blend
from wscswap_fast.ops.blend import reference

from ..backends import ALL_BACKENDS, conditioned_error, require

SHAPES = [(1, 3, 17, 31), (2, 5, 1, 1), (3, 1, 7, 13), (2, 4, 9, 8)]
TOLERANCE = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2, torch.float64: 1e-12}
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _inputs(shape, dtype, device, layout="contiguous", seed=None):
    g = torch.Generator().manual_seed(seed if seed is not None else torch.seed())
    n, c, h, w = shape
    face = torch.randn(shape, generator=g, dtype=torch.float64) + 0.5
    bg = torch.randn(shape, generator=g, dtype=torch.float64) - 0.5
    mask = torch.rand((n, 1, h, w), generator=g, dtype=torch.float64) * 0.9 + 0.05
    grad = torch.randn(shape, generator=g, dtype=torch.float64)
    out = []
    for t in (face, bg, mask, grad):
        t = t.to(device=device, dtype=dtype)
        if layout == "channels_last":
            t = t.contiguous(memory_format=torch.channels_last)
        elif layout == "noncontiguous":  # every other column of a wider tensor
            t = torch.cat([t, t], dim=3)[..., ::2]
            assert not t.is_contiguous() or t.shape[3] == 1
        out.append(t)
    return out


def _rel_err(x, ref):
    return ((x.double() - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "noncontiguous"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_forward_and_gradients_match_float64_reference(backend, dtype, layout, shape):
    device = require(backend)
    face, bg, mask, grad = _inputs(shape, dtype, device, layout)
    leaves = [t.detach().requires_grad_() for t in (face, bg, mask)]
    out = blend(*leaves, backend=backend)
    grads = torch.autograd.grad(out, leaves, grad)

    ref_leaves = [t.detach().double().requires_grad_() for t in (face, bg, mask)]
    ref = reference(*ref_leaves)
    ref_grads = torch.autograd.grad(ref, ref_leaves, grad.double())

    tol = TOLERANCE[dtype]
    f, b, m, g = (t.double() for t in (face, bg, mask, grad))
    assert out.dtype == dtype and out.shape == face.shape
    # m*f + (1-m)*b cancels where f and b differ in sign: judged against m|f| + (1-m)|b|
    assert conditioned_error(out, ref, m * f.abs() + (1 - m) * b.abs()) < tol
    for name, got, want in zip(("face", "background", "mask"), grads, ref_grads):
        assert got.dtype == dtype and got.shape == want.shape, name
        if name != "mask":
            assert _rel_err(got, want) < tol, name
    # The mask gradient sums (face - background) * grad over the channels, which can cancel:
    # judged against the sum of the terms' magnitudes (each term rounds ~3 times in 16 bits).
    terms = ((f.abs() + b.abs()) * g.abs()).sum(1, keepdim=True)
    assert conditioned_error(grads[2], ref_grads[2], terms) < 3 * tol, "mask"


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_channels_last_in_channels_last_out(backend):
    device = require(backend)
    face, bg, mask, _ = _inputs((2, 3, 5, 6), torch.float32, device, "channels_last")
    out = blend(face, bg, mask, backend=backend)
    assert out.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_gradcheck_float64(backend):
    face, bg, mask, _ = _inputs((2, 3, 5, 7), torch.float64, "cpu")
    args = tuple(t.requires_grad_() for t in (face, bg, mask))
    assert torch.autograd.gradcheck(lambda f, b, m: blend(f, b, m, backend=backend), args)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("shape", [(0, 3, 4, 4), (2, 0, 3, 4)], ids=str)
def test_empty_inputs(backend, shape):
    """No images, or no channels: the mask gradient of zero channels is zero, not garbage."""
    device = require(backend)
    face, bg, mask, grad = _inputs(shape, torch.float32, device)
    leaves = [t.requires_grad_() for t in (face, bg, mask)]
    out = blend(*leaves, backend=backend)
    assert out.shape == shape
    grads = torch.autograd.grad(out, leaves, grad)
    assert grads[2].shape == mask.shape and torch.equal(grads[2], torch.zeros_like(mask))


def test_torch_compile_fullgraph_no_graph_break():
    torch._dynamo.reset()
    face, bg, mask, grad = _inputs((2, 3, 8, 9), torch.float32, "cpu")
    leaves = [t.requires_grad_() for t in (face, bg, mask)]

    def step(f, b, m):
        return blend(f, b, m) * 2 + 1

    explanation = torch._dynamo.explain(step)(*leaves)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    compiled = torch.compile(step, fullgraph=True)
    out = compiled(*leaves)
    torch.testing.assert_close(out, reference(*leaves) * 2 + 1)
    got = torch.autograd.grad(out, leaves, grad)
    want = torch.autograd.grad(reference(*leaves) * 2 + 1, leaves, grad)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize(
    "change, exc, words",
    [
        (lambda f, b, m: (f[0], b, m), ValueError, ["face", "4-D", "(3, 5, 6)"]),
        (lambda f, b, m: (f, b[:, :2], m), ValueError, ["background", "shape", "(2, 2, 5, 6)"]),
        (lambda f, b, m: (f, b, m.expand(2, 3, 5, 6)), ValueError, ["mask", "(N,1,H,W)"]),
        (lambda f, b, m: (f, b.double(), m), TypeError, ["background", "torch.float64"]),
        (lambda f, b, m: (f.int(), b, m), TypeError, ["face", "torch.int32"]),
        (lambda f, b, m: (f, b, m.to("meta")), ValueError, ["mask", "device"]),
        (lambda f, b, m: (f, b.numpy(), m), TypeError, ["background", "ndarray"]),
    ],
)
def test_bad_inputs_name_the_argument(change, exc, words):
    face, bg, mask, _ = _inputs((2, 3, 5, 6), torch.float32, "cpu", seed=1)
    with pytest.raises(exc) as info:
        blend(*change(face, bg, mask))
    for w in words:
        assert w in str(info.value)


def test_unavailable_backend_raises_with_reason(monkeypatch):
    face, bg, mask, _ = _inputs((1, 3, 4, 4), torch.float32, "cpu", seed=2)
    if torch.cuda.is_available():
        pytest.skip("needs a machine without a GPU")
    with pytest.raises(BackendUnavailable, match="'cuda'.*cannot serve"):
        blend(face, bg, mask, backend="cuda")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(BackendUnavailable, match="triton.*TRITON_INTERPRET"):
        blend(face, bg, mask, backend="triton")
    with pytest.raises(BackendUnavailable, match="float64 is not supported|dtype torch.float64"):
        blend(face.double(), bg.double(), mask.double(), backend="cuda")


def test_environment_variable_selects_backend(monkeypatch):
    face, bg, mask, _ = _inputs((1, 3, 4, 4), torch.float32, "cpu", seed=3)
    monkeypatch.setenv("WSCSWAP_BACKEND", "reference")
    torch.testing.assert_close(blend(face, bg, mask), reference(face, bg, mask))
    monkeypatch.setenv("WSCSWAP_BACKEND", "bogus")
    with pytest.raises(ValueError, match="backend must be one of"):
        blend(face, bg, mask)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
@pytest.mark.parametrize("misaligned", [False, True])
def test_cpu_streaming_path_on_large_and_misaligned_outputs(dtype, misaligned):
    """Outputs of 8 MiB and more are written with streaming stores a cache line at a time; an
    odd H*W and a base address off the 64-byte grid exercise the head and tail of each run."""
    shape = (2, 3, 1031, 1033)
    face, bg, mask, grad = _inputs(shape, dtype, "cpu")
    if misaligned:  # the same values, one element into a fresh buffer
        face, grad = (torch.empty(t.numel() + 1, dtype=dtype)[1:].view(shape).copy_(t) for t in (face, grad))
    leaves = [t.requires_grad_() for t in (face, bg, mask)]
    out = blend(*leaves, backend="cpu")
    grads = torch.autograd.grad(out, leaves, grad)
    ref_leaves = [t.detach().double().requires_grad_() for t in leaves]
    ref = reference(*ref_leaves)
    ref_grads = torch.autograd.grad(ref, ref_leaves, grad.double())
    tol = TOLERANCE[dtype]
    assert _rel_err(out, ref) < tol
    for got, want in zip(grads, ref_grads):
        assert _rel_err(got, want) < tol * 3
