"""photometric_loss against the plain-PyTorch float64 reference, SH lighting, normals, gradients, bad inputs."""
import math

import pytest
import torch

from wscswap_fast.ops import BackendUnavailable, photometric_loss
from wscswap_fast.ops.photometric_loss import loss_from_ids, reference, sh_basis, sh_vertex_colors, vertex_normals
from wscswap_fast.ops.rasterize import reference_triangle_ids

from ..backends import ALL_BACKENDS, require
from .meshes import scene, triangle_soup

PHOTO_BACKENDS = [b for b in ALL_BACKENDS if b.values[0] != "triton"]
DTYPES = {"reference": [torch.float32, torch.float64], "cpu": [torch.float32, torch.float64], "cuda": [torch.float32]}
TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-12}
SIZES = [(1, 24, 31, 40), (2, 17, 16, 25), (3, 1, 1, 6), (2, 33, 7, 30)]  # (N, H, W, soup triangles)


def _rel_err(x, ref):
    return ((x.double() - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()


def _inputs(n, h, w, f, seed, dtype=torch.float64, cell=5.0):
    vertices, triangles = scene(n, f, h, w, seed=seed, dtype=dtype, cell=cell)
    g = torch.Generator().manual_seed(seed)
    image = torch.rand((n, 3, h, w), generator=g, dtype=torch.float64).to(dtype)
    colors = torch.rand((n, vertices.shape[1], 3), generator=g, dtype=torch.float64).to(dtype)
    mask = (0.1 + 0.9 * torch.rand((n, 1, h, w), generator=g, dtype=torch.float64)).to(dtype)
    return image, vertices, triangles, colors, mask


def _float64_truth(image, vertices, triangles, colors, mask, tri_id, grad, eps=1.0):
    """Per-sample loss and the gradients of (image, vertices, colors, mask) in float64 for the given z-buffer."""
    leaves = [t.detach().double().requires_grad_() for t in (image, vertices, colors, mask)]
    loss, _ = loss_from_ids(leaves[0], leaves[1], triangles, leaves[2], leaves[3][:, 0], tri_id, eps)
    return loss.detach(), torch.autograd.grad(loss, leaves, grad.double())


@pytest.mark.parametrize("backend", PHOTO_BACKENDS)
@pytest.mark.parametrize("size", SIZES, ids=str)
def test_loss_and_gradients_match_float64_reference(backend, size):
    device = require(backend)
    n, h, w, f = size
    for dtype in DTYPES[backend]:
        image, vertices, triangles, colors, mask = _inputs(n, h, w, f, torch.seed() % 2**31, dtype)
        grad = torch.randn(n, dtype=torch.float64)
        leaves = [t.to(device).requires_grad_() for t in (image, vertices, colors, mask)]
        loss = photometric_loss(leaves[0], leaves[1], triangles.to(device), vertex_colors=leaves[2], mask=leaves[3],
                                reduction="none", backend=backend)
        grads = torch.autograd.grad(loss, leaves, grad.to(device, dtype))
        tri_id = reference_triangle_ids(vertices, triangles, h, w)
        want, want_grads = _float64_truth(image, vertices, triangles, colors, mask, tri_id, grad)
        tol = TOLERANCE[dtype]
        assert loss.dtype == dtype and loss.shape == (n,)
        assert _rel_err(loss.cpu(), want) < tol
        for name, got, ref in zip(("image", "vertices", "colors", "mask"), grads, want_grads):
            assert got.dtype == dtype and got.shape == ref.shape, name
            assert _rel_err(got.cpu(), ref) < tol, name
        assert grads[1][..., 2].abs().max() == 0  # depth only decides visibility


@pytest.mark.parametrize("backend", PHOTO_BACKENDS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("mask_shape", ["none", "N1HW", "NHW"])
def test_reductions_and_mask_shapes(backend, reduction, mask_shape):
    device = require(backend)
    image, vertices, triangles, colors, mask = (t.to(device) for t in _inputs(2, 12, 13, 8, 11, torch.float32))
    m = {"none": None, "N1HW": mask, "NHW": mask[:, 0]}[mask_shape]
    got = photometric_loss(image, vertices, triangles, vertex_colors=colors, mask=m, reduction=reduction,
                           backend=backend)
    per_sample = reference(image.cpu().double(), vertices.cpu().double(), triangles.cpu(), colors.cpu().double(),
                           None if m is None else mask[:, 0].cpu().double())
    want = {"mean": per_sample.mean(), "sum": per_sample.sum(), "none": per_sample}[reduction]
    assert got.shape == want.shape
    assert _rel_err(got.cpu(), want) < 1e-5


def test_sh_basis_constants():
    """Deep3DFaceRecon's basis: pi/sqrt(4 pi) = sqrt(pi)/2 for band 0, sqrt(pi) for band 1, and
    (pi/sqrt 2)(3 sqrt 5/sqrt(12 pi)) = 2.427032 for band 2."""
    a0c0, a1c1, a2c2 = math.sqrt(math.pi) / 2, math.sqrt(math.pi), 2.4270324
    n = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.6, 0.0, 0.8]], dtype=torch.float64)
    y = sh_basis(n)
    want = torch.tensor([
        [a0c0, 0, a1c1, 0, 0, 0, a2c2 / math.sqrt(3), 0, 0],
        [a0c0, 0, 0, -a1c1, 0, 0, -0.5 * a2c2 / math.sqrt(3), 0, 0.5 * a2c2],
        [a0c0, -a1c1, 0, 0, 0, 0, -0.5 * a2c2 / math.sqrt(3), 0, -0.5 * a2c2],
        [a0c0, 0, 0.8 * a1c1, -0.6 * a1c1, 0, 0, 0.5 * a2c2 / math.sqrt(3) * (3 * 0.64 - 1), -0.48 * a2c2,
         0.5 * a2c2 * 0.36],
    ], dtype=torch.float64)
    torch.testing.assert_close(y, want, atol=1e-6, rtol=0)


def test_sh_vertex_colors_layout_and_ambient():
    """sh_coeffs are (channel, band): a pure band-0 light of channel c scales only channel c, and the
    default ambient 0.8 is added to band 0 of every channel."""
    albedo = torch.rand((1, 4, 3), dtype=torch.float64) + 0.1
    normals = torch.nn.functional.normalize(torch.randn((1, 4, 3), dtype=torch.float64), dim=-1)
    gamma = torch.zeros((1, 27), dtype=torch.float64)
    gamma[0, 9] = 0.5  # band 0 of green
    colors = sh_vertex_colors(albedo, normals, gamma)
    band0 = math.sqrt(math.pi) / 2
    torch.testing.assert_close(colors / albedo, torch.tensor([0.8, 1.3, 0.8], dtype=torch.float64).expand(1, 4, 3)
                               * band0)
    gamma[0, 9 + 2] = 0.3  # band 2 (n_z) of green
    delta = sh_vertex_colors(albedo, normals, gamma, ambient=0.0) - sh_vertex_colors(albedo, normals, gamma * 0,
                                                                                   ambient=0.0)
    want_green = albedo[..., 1] * (0.5 * band0 + 0.3 * math.sqrt(math.pi) * normals[..., 2])
    torch.testing.assert_close(delta[..., 1], want_green)
    assert delta[..., 0].abs().max() == 0 and delta[..., 2].abs().max() == 0


def test_sh_vertex_colors_equal_the_basis_expansion():
    """The quadratic-form evaluation is the 9-band sum, for any normals (unit or not) and channel."""
    normals = torch.randn((2, 40, 3), dtype=torch.float64)
    albedo = torch.rand((2, 40, 3), dtype=torch.float64)
    sh = torch.randn((2, 27), dtype=torch.float64)
    gamma = sh.view(2, 3, 9).clone()
    gamma[:, :, 0] += 0.6
    want = albedo * torch.einsum("nvj,ncj->nvc", sh_basis(normals), gamma)
    torch.testing.assert_close(sh_vertex_colors(albedo, normals, sh, ambient=0.6), want, atol=1e-12, rtol=0)


def test_vertex_normals():
    """A regular octahedron with outward triangles: each vertex normal is its own direction. A flat
    counter-clockwise (seen from +z) grid: every normal is +z."""
    p = torch.tensor([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], dtype=torch.float64)
    faces = []
    for x in (0, 1):
        for y in (2, 3):
            for z in (4, 5):
                tri = [x, y, z]
                if torch.dot(torch.linalg.cross(p[y] - p[x], p[z] - p[x]), p[x] + p[y] + p[z]) < 0:
                    tri = [x, z, y]
                faces.append(tri)
    rot = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64))[0]
    verts = (p @ rot.T)[None]
    torch.testing.assert_close(vertex_normals(verts, torch.tensor(faces)), verts)
    grid = torch.tensor([[[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0]]])
    n = vertex_normals(grid, torch.tensor([[0, 1, 3], [0, 3, 2]]))
    torch.testing.assert_close(n, torch.tensor([0.0, 0, 1]).expand(1, 4, 3))


@pytest.mark.parametrize("backend", PHOTO_BACKENDS)
def test_sh_lighting_path_matches_reference(backend):
    device = require(backend)
    n, h, w = 2, 14, 15
    image, vertices, triangles, _, mask = _inputs(n, h, w, 10, torch.seed() % 2**31, torch.float32)
    g = torch.Generator().manual_seed(7)
    v = vertices.shape[1]
    albedo = torch.rand((n, v, 3), generator=g)
    normals = torch.nn.functional.normalize(torch.randn((n, v, 3), generator=g), dim=-1)
    sh = 0.3 * torch.randn((n, 27), generator=g)
    leaves = [t.to(device).requires_grad_() for t in (albedo, normals, sh, vertices)]
    got = photometric_loss(image.to(device), leaves[3], triangles.to(device), albedo=leaves[0], normals=leaves[1],
                           sh_coeffs=leaves[2], mask=mask.to(device), sh_ambient=0.7, backend=backend)
    grads = torch.autograd.grad(got, leaves)
    ref_leaves = [t.double().requires_grad_() for t in (albedo, normals, sh, vertices)]
    colors = sh_vertex_colors(ref_leaves[0], ref_leaves[1], ref_leaves[2], ambient=0.7)
    want = reference(image.double(), ref_leaves[3], triangles, colors, mask[:, 0].double()).mean()
    want_grads = torch.autograd.grad(want, ref_leaves)
    assert _rel_err(got.detach().cpu(), want.detach()) < 1e-5
    for name, a, b in zip(("albedo", "normals", "sh_coeffs", "vertices"), grads, want_grads):
        assert _rel_err(a.cpu(), b) < 1e-5, name


@pytest.mark.parametrize("backend", PHOTO_BACKENDS)
def test_empty_mask_and_off_screen_mesh_give_zero_without_nan(backend):
    device = require(backend)
    image, vertices, triangles, colors, mask = (t.to(device) for t in _inputs(2, 9, 10, 6, 3, torch.float32))
    for v, m in ((vertices, torch.zeros_like(mask)), (vertices + 1000, mask)):
        leaves = [t.clone().requires_grad_() for t in (image, v, colors, m)]
        loss = photometric_loss(leaves[0], leaves[1], triangles, vertex_colors=leaves[2], mask=leaves[3],
                                reduction="none", backend=backend)
        assert torch.equal(loss, torch.zeros_like(loss))
        for g in torch.autograd.grad(loss.sum(), leaves):
            assert torch.isfinite(g).all()


@pytest.mark.parametrize("n, h, w", [(1, 130, 128), (2, 96, 90)], ids=["shared-sample", "sample-per-thread"])
def test_cpu_large_image_multithreaded_and_deterministic(n, h, w):
    image, vertices, triangles, colors, mask = _inputs(n, h, w, 150, torch.seed() % 2**31, torch.float32, cell=12.0)
    grad = torch.randn(n)

    def run():
        leaves = [t.clone().requires_grad_() for t in (image, vertices, colors, mask)]
        loss = photometric_loss(leaves[0], leaves[1], triangles, vertex_colors=leaves[2], mask=leaves[3],
                                reduction="none", backend="cpu")
        return loss, torch.autograd.grad(loss, leaves, grad)

    loss, grads = run()
    want, want_grads = _float64_truth(image, vertices, triangles, colors, mask,
                                      reference_triangle_ids(vertices, triangles, h, w), grad)
    assert _rel_err(loss, want) < 1e-5
    for got, ref in zip(grads, want_grads):
        assert _rel_err(got, ref) < 1e-5
    again = run()
    assert torch.equal(loss, again[0]) and all(torch.equal(a, b) for a, b in zip(grads, again[1]))


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_gradcheck_float64(backend):
    """Vertices at (k + 0.25)/256 pixel and separated depths: coverage and z-order stay fixed under
    the finite-difference steps. Fast mode on the brute-force reference (see test_rasterize)."""
    n, h, w = 2, 8, 9
    vertices, triangles = triangle_soup(n, 4, h, w, seed=torch.seed() % 2**31)
    g = torch.Generator().manual_seed(1)
    image = torch.rand((n, 3, h, w), generator=g, dtype=torch.float64)
    colors = torch.rand((n, vertices.shape[1], 3), generator=g, dtype=torch.float64)
    mask = 0.2 + torch.rand((n, h, w), generator=g, dtype=torch.float64)
    args = tuple(t.requires_grad_() for t in (image, vertices, colors, mask))

    def f(i, v, c, m):
        return photometric_loss(i, v, triangles, vertex_colors=c, mask=m, reduction="none", backend=backend)

    assert torch.autograd.gradcheck(f, args, fast_mode=backend == "reference")
    albedo, normals = colors.detach().requires_grad_(), torch.randn_like(colors).requires_grad_()
    sh = (0.2 * torch.randn((n, 27), dtype=torch.float64)).requires_grad_()

    def f_sh(a, nn, s):
        unit = torch.nn.functional.normalize(nn, dim=-1)
        return photometric_loss(image.detach(), vertices.detach(), triangles, albedo=a, normals=unit, sh_coeffs=s,
                                backend=backend)

    assert torch.autograd.gradcheck(f_sh, (albedo, normals, sh), fast_mode=backend == "reference")


def test_torch_compile_fullgraph_no_graph_break():
    """The fused op and the plain-PyTorch SH shading around it compile as one graph."""
    torch._dynamo.reset()
    image, vertices, triangles, colors, mask = _inputs(2, 12, 14, 8, 5, torch.float32)
    normals = torch.nn.functional.normalize(torch.randn_like(colors), dim=-1)
    sh = 0.3 * torch.randn((2, 27))
    leaves = [t.requires_grad_() for t in (vertices, colors, sh)]

    def step(v, c, s):
        return photometric_loss(image, v, triangles, albedo=c * 0.5 + 0.25, normals=normals, sh_coeffs=s,
                                mask=mask) * 3

    explanation = torch._dynamo.explain(step)(*leaves)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    out = torch.compile(step, fullgraph=True)(*leaves)
    want = step(*leaves)
    torch.testing.assert_close(out, want)
    for a, b in zip(torch.autograd.grad(out, leaves), torch.autograd.grad(want, leaves)):
        torch.testing.assert_close(a, b)


# ---------------------------------------------------------------------------------------------
# Bad inputs and backend choice.

def _good():
    image, vertices, triangles, colors, mask = _inputs(2, 6, 7, 2, 1, torch.float32)
    return dict(image=image, screen_vertices=vertices, triangles=triangles, vertex_colors=colors, mask=mask)


def _sh(kw):
    n, v = kw["screen_vertices"].shape[:2]
    kw = dict(kw, vertex_colors=None)
    kw.update(albedo=torch.rand(n, v, 3), normals=torch.rand(n, v, 3), sh_coeffs=torch.rand(n, 27))
    return kw


@pytest.mark.parametrize(
    "change, exc, words",
    [
        (lambda k: dict(k, image=k["image"][:, :2]), ValueError, ["image", "(N,3,H,W)", "(2, 2, 6, 7)"]),
        (lambda k: dict(k, image=k["image"][0]), ValueError, ["image", "4-D"]),
        (lambda k: dict(k, image=k["image"].double()), TypeError, ["image", "torch.float64"]),
        (lambda k: dict(k, image=k["image"].to("meta")), ValueError, ["image", "device"]),
        (lambda k: dict(k, vertex_colors=k["vertex_colors"][:, :3]), ValueError, ["vertex_colors", "(2, 3, 3)"]),
        (lambda k: dict(k, vertex_colors=k["vertex_colors"].double()), TypeError, ["vertex_colors", "float64"]),
        (lambda k: dict(k, vertex_colors=None), ValueError, ["vertex_colors", "missing", "albedo"]),
        (lambda k: dict(_sh(k), vertex_colors=k["vertex_colors"]), ValueError, ["not both"]),
        (lambda k: dict(_sh(k), normals=None), ValueError, ["missing", "normals"]),
        (lambda k: dict(_sh(k), sh_coeffs=torch.rand(2, 9)), ValueError, ["sh_coeffs", "(N,27)", "(2, 9)"]),
        (lambda k: dict(k, mask=k["mask"][:, :, :5]), ValueError, ["mask", "(2, 1, 5, 7)"]),
        (lambda k: dict(k, mask=k["mask"].double()), TypeError, ["mask", "float64"]),
        (lambda k: dict(k, triangles=k["triangles"].float()), TypeError, ["triangles", "float32"]),
        (lambda k: dict(k, screen_vertices=k["screen_vertices"][1:]), ValueError, ["image", "(2, 3, 6, 7)"]),
        (lambda k: dict(k, eps=0.0), ValueError, ["eps", "positive"]),
        (lambda k: dict(k, reduction="max"), ValueError, ["reduction", "'max'"]),
    ],
)
def test_bad_inputs_name_the_argument(change, exc, words):
    kw = change(_good())
    with pytest.raises(exc) as info:
        photometric_loss(kw.pop("image"), kw.pop("screen_vertices"), kw.pop("triangles"), **kw)
    for w in words:
        assert w in str(info.value)


@pytest.mark.parametrize("backend", PHOTO_BACKENDS)
def test_triangle_index_out_of_range(backend):
    device = require(backend)
    kw = {k: v.to(device) for k, v in _good().items()}
    kw["triangles"][0, 1] = kw["screen_vertices"].shape[1]
    with pytest.raises(ValueError, match="triangles must index vertices"):
        photometric_loss(kw.pop("image"), kw.pop("screen_vertices"), kw.pop("triangles"), backend=backend, **kw)


def test_triton_and_unavailable_backends_raise_with_reason():
    kw = _good()
    args = kw.pop("image"), kw.pop("screen_vertices"), kw.pop("triangles")
    with pytest.raises(BackendUnavailable, match="photometric_loss: backend 'triton'.*no Triton kernels"):
        photometric_loss(*args, backend="triton", **kw)
    if not torch.cuda.is_available():
        with pytest.raises(BackendUnavailable, match="'cuda'.*cannot serve"):
            photometric_loss(*args, backend="cuda", **kw)
