"""rasterize against the brute-force float64 reference, analytic cases, gradients, bad inputs."""
from fractions import Fraction

import pytest
import torch

from wscswap_fast.ops import BackendUnavailable, rasterize
from wscswap_fast.ops.rasterize import interpolate, reference, reference_triangle_ids

from ..backends import ALL_BACKENDS, require
from .meshes import scene, triangle_soup

RASTER_BACKENDS = [b for b in ALL_BACKENDS if b.values[0] != "triton"]
DTYPES = {"reference": [torch.float32, torch.float64], "cpu": [torch.float32, torch.float64], "cuda": [torch.float32]}
TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-12}
SIZES = [(1, 24, 31, 40), (2, 17, 16, 25), (3, 1, 1, 6), (2, 33, 7, 30)]  # (N, H, W, soup triangles)


def _rel_err(x, ref):
    return ((x.double() - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()


def _grads(backend, vertices, triangles, height, width, grad_bary, grad_depth):
    v = vertices.detach().requires_grad_()
    tri_id, bary, depth = rasterize(v, triangles, height, width, backend=backend)
    (grad,) = torch.autograd.grad((bary * grad_bary).sum() + (depth * grad_depth).sum(), v)
    return tri_id, bary, depth, grad


def _float64_truth(vertices, triangles, tri_id, grad_bary, grad_depth):
    """Barycentrics, depth and the vertex gradient in float64 for a given z-buffer (autograd of
    the plain-PyTorch interpolation)."""
    v = vertices.detach().double().requires_grad_()
    bary, depth = interpolate(v, triangles, tri_id)
    (grad,) = torch.autograd.grad((bary * grad_bary.double()).sum() + (depth * grad_depth.double()).sum(), v)
    return bary, depth, grad


@pytest.mark.parametrize("backend", RASTER_BACKENDS)
@pytest.mark.parametrize("size", SIZES, ids=str)
def test_matches_brute_force_reference(backend, size):
    device = require(backend)
    n, h, w, f = size
    for dtype in DTYPES[backend]:
        vertices, triangles = scene(n, f, h, w, seed=torch.seed() % 2**31)
        grad_bary = torch.randn((n, h, w, 3), dtype=torch.float64)
        grad_depth = torch.randn((n, h, w), dtype=torch.float64)
        v = vertices.to(dtype)
        tri_id, bary, depth, grad = _grads(backend, v.to(device), triangles.to(device), h, w,
                                           grad_bary.to(device, dtype), grad_depth.to(device, dtype))
        # Coverage and the z-test: the brute force on the same (rounded) vertices, exactly.
        want_id = reference_triangle_ids(v, triangles, h, w)
        assert tri_id.dtype == torch.int32 and torch.equal(tri_id.cpu(), want_id)
        assert h * w < 100 or ((want_id >= 0).any() and (want_id < 0).any())  # both, except 1x1
        want_bary, want_depth, want_grad = _float64_truth(v, triangles, want_id, grad_bary, grad_depth)
        tol = TOLERANCE[dtype]
        assert bary.dtype == dtype and depth.dtype == dtype and grad.dtype == dtype
        assert _rel_err(bary.cpu(), want_bary) < tol
        assert _rel_err(depth.cpu(), want_depth) < tol
        assert _rel_err(grad.cpu(), want_grad) < tol  # measured: at most 2e-6 for float32


@pytest.mark.parametrize("backend", RASTER_BACKENDS)
def test_interpenetrating_triangles_differ_from_reference_only_at_near_ties(backend):
    """Random triangles over shared vertices with random depths intersect. Coverage is exact, so
    a backend may differ from the float64 brute force only where two triangles' depths tie to
    within rounding, along the intersection lines."""
    device = require(backend)
    g = torch.Generator().manual_seed(torch.seed() % 2**31)
    h, w = 24, 31
    v = torch.rand((2, 30, 3), generator=g) * torch.tensor([w + 6.0, h + 6.0, 1.0]) - 3
    triangles = torch.randint(0, 30, (40, 3), generator=g)
    tri_id = rasterize(v.to(device), triangles.to(device), h, w, backend=backend)[0].cpu()
    want_id, _, want_depth = reference(v.double(), triangles, h, w)  # the same (float32) vertices
    assert torch.equal(tri_id >= 0, want_id >= 0)
    differ = tri_id != want_id
    # A triangle drawn twice (the same three vertices, ~20% of draws) ties exactly over its whole
    # area, so either copy may win there. Elsewhere ties are lines: measured at most 0.07% of pixels
    # over 3000 seeds.
    key = triangles.sort(1).values
    drawn_twice = (key[:, None] == key[None]).all(-1).sum(1) > 1
    whole_area_tie = (want_id >= 0) & drawn_twice[want_id.clamp_min(0)]
    assert (differ & ~whole_area_tie).float().mean() < 0.01
    _, got_depth = interpolate(v.double(), triangles, tri_id)  # the backend's winner, in float64
    assert ((got_depth - want_depth).abs() * differ).max() < 1e-5


# ---------------------------------------------------------------------------------------------
# Analytic cases.

def _one_triangle(order, dtype=torch.float64):
    """Right triangle (0.5,0.5), (8.5,0.5), (0.5,6.5): pixel centres fall exactly on all three
    edges. depth 1, 2, 3 at the vertices."""
    v = torch.tensor([[[0.5, 0.5, 1.0], [8.5, 0.5, 2.0], [0.5, 6.5, 3.0]]], dtype=dtype)
    return v, torch.tensor([order])


@pytest.mark.parametrize("backend", RASTER_BACKENDS)
@pytest.mark.parametrize("order", [[0, 1, 2], [0, 2, 1], [2, 1, 0]], ids=["ccw", "cw", "cw2"])
def test_one_triangle_exact_coverage_and_barycentrics(backend, order):
    device = require(backend)
    v, tri = _one_triangle(order)
    h, w = 9, 11
    tri_id, bary, depth = rasterize(v.float().to(device), tri.to(device), h, w, backend=backend)
    # Pixel (i, j) is at (j, i) from the right angle: inside when 6j + 8i < 48. The top edge (row 0)
    # and the left edge (column 0) are top-left edges, so included; the hypotenuse is not.
    want = torch.tensor([[6 * j + 8 * i < 48 for j in range(w)] for i in range(h)])
    assert torch.equal(tri_id[0].cpu() == 0, want)
    assert torch.equal(tri_id[0].cpu()[~want], torch.full(((~want).sum().item(),), -1, dtype=torch.int32))
    for i in range(h):
        for j in range(w):
            if not want[i, j]:
                assert bary[0, i, j].abs().max() == 0 and depth[0, i, j] == 0
                continue
            b = {0: 1 - j / 8 - i / 6, 1: j / 8, 2: i / 6}  # by vertex
            expected = torch.tensor([b[k] for k in order], dtype=torch.float64)
            assert torch.allclose(bary[0, i, j].cpu().double(), expected, atol=1e-6)
            assert abs(float(depth[0, i, j]) - (b[0] + 2 * b[1] + 3 * b[2])) < 1e-5


def _covered_by_each(backend, device, vertices, triangles, h, w):
    """Which pixels each triangle covers, rasterized alone: one sample per triangle, with the other
    triangles' (private) vertices moved 10^4 pixels off-screen."""
    f = triangles.shape[0]
    v = vertices.expand(f, -1, -1).clone()
    for k in range(f):
        others = torch.ones(v.shape[1], dtype=torch.bool)
        others[triangles[k]] = False
        v[k, others, 0] += 1e4
    tri_id, _, _ = rasterize(v.to(device), triangles.to(device), h, w, backend=backend)
    return tri_id.cpu() >= 0


def _private_vertices(vertices, triangles):
    return vertices[:, triangles.reshape(-1)], torch.arange(triangles.numel()).view(-1, 3)


@pytest.mark.parametrize("backend", RASTER_BACKENDS)
def test_shared_edges_and_vertices_cover_each_pixel_once(backend):
    """A fan of 8 triangles around a vertex on a pixel centre and a square grid split by diagonals,
    every vertex on a pixel centre: every pixel centre strictly inside the convex outline is
    covered exactly once, none outside or twice."""
    device = require(backend)
    c = (10, 9)
    ring = [(6, 0), (4, 5), (0, 7), (-5, 4), (-6, -1), (-3, -6), (2, -6), (5, -4)]
    pts = [c] + [(c[0] + dx, c[1] + dy) for dx, dy in ring]
    fan = [[0, 1 + k, 1 + (k + 1) % 8] for k in range(8)]
    h, w = 20, 21
    v = torch.tensor([[(x + 0.5, y + 0.5, 1.0) for x, y in pts]], dtype=torch.float64)
    v, tri = _private_vertices(v, torch.tensor(fan))
    counts = _covered_by_each(backend, device, v.float(), tri, h, w).sum(0)
    assert counts.max() == 1

    def inside_strictly(px, py):  # convex ring, counter-clockwise on screen (y down): all crosses > 0
        s = []
        for k in range(8):
            ax, ay = pts[1 + k]
            bx, by = pts[1 + (k + 1) % 8]
            s.append((bx - ax) * (py - ay) - (by - ay) * (px - ax))
        return all(x > 0 for x in s) or all(x < 0 for x in s)

    for i in range(h):
        for j in range(w):
            if inside_strictly(j, i):
                assert counts[i, j] == 1, (i, j)

    # A 4x3-cell grid of 2-pixel cells split by alternating diagonals.
    gx, gy = 5, 4
    grid = torch.tensor([[(1.5 + 2 * x, 2.5 + 2 * y, 1.0) for y in range(gy) for x in range(gx)]],
                        dtype=torch.float64)
    tris = []
    for y in range(gy - 1):
        for x in range(gx - 1):
            a, b, cc, d = y * gx + x, y * gx + x + 1, (y + 1) * gx + x, (y + 1) * gx + x + 1
            tris += [[a, b, d], [a, d, cc]] if (x + y) % 2 else [[a, b, cc], [b, d, cc]]
    v, tri = _private_vertices(grid, torch.tensor(tris))
    counts = _covered_by_each(backend, device, v.float(), tri, 12, 13).sum(0)
    # Outline [1.5, 9.5] x [2.5, 8.5]: top and left edges included, bottom and right not.
    want = torch.zeros(12, 13, dtype=torch.long)
    want[2:8, 1:9] = 1
    assert torch.equal(counts, want)


@pytest.mark.parametrize("backend", RASTER_BACKENDS)
def test_nearest_triangle_wins(backend):
    device = require(backend)
    near = [[2.3, 1.7, 1.0], [14.1, 3.2, 1.5], [5.2, 11.8, 1.2]]
    far = [[1.1, 2.4, 5.0], [13.3, 9.1, 4.0], [3.6, 12.6, 6.0]]
    h, w = 14, 16
    for first, second, near_index in ((near, far, 0), (far, near, 1)):
        v = torch.tensor([first + second], dtype=torch.float32, device=device)
        tri = torch.tensor([[0, 1, 2], [3, 4, 5]], device=device)
        tri_id, _, depth = rasterize(v, tri, h, w, backend=backend)
        alone = [rasterize(v, tri[k:k + 1], h, w, backend=backend)[0][0] >= 0 for k in range(2)]
        both = alone[0] & alone[1]
        assert both.sum() > 20
        assert (tri_id[0][both] == near_index).all()
        assert (depth[0][both] < 2).all()
        only_far = alone[1 - near_index] & ~alone[near_index]
        assert only_far.any() and (tri_id[0][only_far] == 1 - near_index).all()


@pytest.mark.parametrize("backend", RASTER_BACKENDS)
def test_equal_depth_tie_goes_to_lower_index(backend):
    device = require(backend)
    a = [[1.2, 1.3, 2.0], [9.7, 1.9, 2.0], [2.1, 8.6, 2.0]]
    v = torch.tensor([a + a], dtype=torch.float32, device=device)
    # The same vertices in the same order: bit-identical depths at every pixel.
    tri_id, _, _ = rasterize(v, torch.tensor([[3, 4, 5], [0, 1, 2]], device=device), 10, 11, backend=backend)
    covered = tri_id[0] >= 0
    assert covered.sum() > 10 and (tri_id[0][covered] == 0).all()


@pytest.mark.parametrize("backend", RASTER_BACKENDS)
def test_triangle_partly_off_screen(backend):
    device = require(backend)
    v = torch.tensor([[[-20.3, 5.1, 1.0], [15.7, -9.4, 2.0], [12.2, 30.6, 3.0]]], dtype=torch.float64)
    tri = torch.tensor([[0, 1, 2]])
    h, w = 12, 16
    tri_id, bary, depth = rasterize(v.float().to(device), tri.to(device), h, w, backend=backend)
    # Exact point-in-triangle test on the rational coordinates (no pixel centre is near an edge).
    P = [(Fraction(str(x)), Fraction(str(y))) for x, y, _ in v[0].tolist()]

    def cross(a, b, p):
        return (b[0] - a[0]) * (p[1] - a[1]) - (b[1] - a[1]) * (p[0] - a[0])

    for i in range(h):
        for j in range(w):
            p = (Fraction(2 * j + 1, 2), Fraction(2 * i + 1, 2))
            s = [cross(P[0], P[1], p), cross(P[1], P[2], p), cross(P[2], P[0], p)]
            inside = all(x > 0 for x in s) or all(x < 0 for x in s)
            assert (int(tri_id[0, i, j]) == 0) == inside, (i, j)
            if inside:
                area = cross(P[0], P[1], P[2])
                b = [s[1] / area, s[2] / area, s[0] / area]
                assert torch.allclose(bary[0, i, j].cpu().double(), torch.tensor([float(x) for x in b],
                                      dtype=torch.float64), atol=1e-5)
    assert (tri_id >= 0).any() and (tri_id < 0).any()


@pytest.mark.parametrize("backend", RASTER_BACKENDS)
def test_degenerate_and_unusable_triangles_are_skipped_without_nan(backend):
    device = require(backend)
    nan, inf = float("nan"), float("inf")
    v = torch.tensor([[
        [0.5, 0.5, 1.0], [5.5, 5.5, 1.0], [10.5, 10.5, 1.0],   # collinear through pixel centres
        [3.5, 2.5, 1.0], [3.5, 2.5, 1.0], [9.5, 4.5, 1.0],     # a repeated vertex
        [2.0, 2.0, 1.0], [2.0 + 1e-6, 2.0, 1.0], [2.0, 2.0 + 1e-6, 1.0],  # area 1e-12: snaps to a point
        [1.0, 1.0, nan], [9.0, 1.0, 1.0], [1.0, 9.0, 1.0],     # NaN depth
        [1.0, 1.0, 1.0], [inf, 1.0, 1.0], [1.0, 9.0, 1.0],     # infinite x
        [1.0, 1.0, 1.0], [3e6, 1.0, 1.0], [1.0, 9.0, 1.0],     # beyond the 2^21-pixel guard band
        [0.3, 0.2, 9.0], [11.8, 0.4, 9.0], [5.1, 11.7, 9.0],   # a proper triangle behind them all
    ]], dtype=torch.float32, device=device, requires_grad=True)
    tri = torch.arange(21, device=device).view(7, 3)
    tri_id, bary, depth = rasterize(v, tri, 12, 12, backend=backend)
    assert set(tri_id.unique().tolist()) == {-1, 6}
    assert torch.isfinite(bary).all() and torch.isfinite(depth).all()
    (grad,) = torch.autograd.grad(bary.sum() + depth.sum(), v)
    assert torch.isfinite(grad).all() and grad[0, :18].abs().max() == 0
    assert grad[0, 18:].abs().max() > 0


@pytest.mark.parametrize("backend", RASTER_BACKENDS)
def test_empty_meshes_and_batches(backend):
    device = require(backend)
    v = torch.rand((2, 5, 3), device=device, requires_grad=True)
    tri_id, bary, depth = rasterize(v, torch.zeros((0, 3), dtype=torch.int64, device=device), 4, 5, backend=backend)
    assert (tri_id == -1).all() and (bary == 0).all() and (depth == 0).all() and bary.shape == (2, 4, 5, 3)
    (grad,) = torch.autograd.grad(bary.sum() + depth.sum(), v)
    assert torch.equal(grad, torch.zeros_like(v))
    tri_id, bary, depth = rasterize(torch.zeros((0, 5, 3), device=device), torch.tensor([[0, 1, 2]], device=device),
                                    4, 5, backend=backend)
    assert tri_id.shape == (0, 4, 5) and bary.shape == (0, 4, 5, 3)


@pytest.mark.parametrize("backend", RASTER_BACKENDS)
def test_noncontiguous_inputs(backend):
    device = require(backend)
    vertices, triangles = scene(2, 12, 13, 17, seed=5, dtype=torch.float32)
    # made strided on the device: a copy to another device of a tensor with gaps comes back contiguous
    vertices, triangles = vertices.to(device), triangles.to(device)
    strided_v = torch.stack([vertices, -vertices], dim=-1)[..., 0]
    strided_t = triangles.t().contiguous().t().int()
    assert not strided_v.is_contiguous() and not strided_t.is_contiguous()
    got = rasterize(strided_v, strided_t, 13, 17, backend=backend)
    want = rasterize(vertices, triangles, 13, 17, backend=backend)
    for a, b in zip(got, want):
        assert torch.equal(a, b)


@pytest.mark.parametrize("n, h, w", [(1, 130, 128), (2, 96, 90)], ids=["shared-sample", "sample-per-thread"])
def test_cpu_large_image_multithreaded_and_deterministic(n, h, w):
    """Above the size where the CPU loops go multi-threaded; the backward is deterministic."""
    vertices, triangles = scene(n, 150, h, w, seed=torch.seed() % 2**31, dtype=torch.float32, cell=12.0)
    grad_bary, grad_depth = torch.randn((n, h, w, 3)), torch.randn((n, h, w))
    tri_id, bary, depth, grad = _grads("cpu", vertices, triangles, h, w, grad_bary, grad_depth)
    assert torch.equal(tri_id, reference_triangle_ids(vertices, triangles, h, w))
    want_bary, want_depth, want_grad = _float64_truth(vertices, triangles, tri_id, grad_bary, grad_depth)
    assert _rel_err(bary, want_bary) < 1e-5 and _rel_err(depth, want_depth) < 1e-5
    assert _rel_err(grad, want_grad) < 1e-5
    again = _grads("cpu", vertices, triangles, h, w, grad_bary, grad_depth)[3]
    assert torch.equal(grad, again)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_gradcheck_float64(backend):
    """Vertices sit at (k + 0.25)/256 pixel, so the finite-difference steps never change coverage,
    and the triangles' depths are well separated, so they never change the z-order. The brute-force
    reference runs gradcheck's fast mode (random projections of the Jacobian): the full one takes
    one brute-force forward per vertex coordinate."""
    vertices, triangles = triangle_soup(2, 5, 9, 10, seed=torch.seed() % 2**31)
    v = vertices.requires_grad_()

    def f(x):
        _, bary, depth = rasterize(x, triangles, 9, 10, backend=backend)
        return bary, depth

    assert torch.autograd.gradcheck(f, (v,), fast_mode=backend == "reference")


def test_torch_compile_fullgraph_no_graph_break():
    torch._dynamo.reset()
    vertices, triangles = scene(2, 10, 12, 14, seed=3, dtype=torch.float32)
    v = vertices.requires_grad_()

    def step(x):
        tri_id, bary, depth = rasterize(x, triangles, 12, 14)
        return (bary * 2).sum(-1) + depth * (tri_id >= 0)

    explanation = torch._dynamo.explain(step)(v)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    out = torch.compile(step, fullgraph=True)(v)
    want = step(v)
    torch.testing.assert_close(out, want)
    grad_out = torch.randn_like(out)
    torch.testing.assert_close(torch.autograd.grad(out, v, grad_out)[0], torch.autograd.grad(want, v, grad_out)[0])


# ---------------------------------------------------------------------------------------------
# Bad inputs and backend choice.

def _good():
    v = torch.rand((2, 6, 3)) * 10
    return v, torch.tensor([[0, 1, 2], [3, 4, 5]]), 8, 9


@pytest.mark.parametrize(
    "change, exc, words",
    [
        (lambda v, t, h, w: (v[0], t, h, w), ValueError, ["screen_vertices", "3-D", "(6, 3)"]),
        (lambda v, t, h, w: (v[..., :2], t, h, w), ValueError, ["screen_vertices", "(N,V,3)", "(2, 6, 2)"]),
        (lambda v, t, h, w: (v.half(), t, h, w), TypeError, ["screen_vertices", "torch.float16"]),
        (lambda v, t, h, w: (v.int(), t, h, w), TypeError, ["screen_vertices", "torch.int32"]),
        (lambda v, t, h, w: (v, t.float(), h, w), TypeError, ["triangles", "torch.float32"]),
        (lambda v, t, h, w: (v, t[:, :2], h, w), ValueError, ["triangles", "(F,3)", "(2, 2)"]),
        (lambda v, t, h, w: (v, t.to("meta"), h, w), ValueError, ["triangles", "device"]),
        (lambda v, t, h, w: (v, t.numpy(), h, w), TypeError, ["triangles", "ndarray"]),
        (lambda v, t, h, w: (v, t, 0, w), ValueError, ["height", "0"]),
        (lambda v, t, h, w: (v, t, h, -3), ValueError, ["width", "-3"]),
        (lambda v, t, h, w: (v, t, 8.0, w), TypeError, ["height", "8.0"]),
        (lambda v, t, h, w: (v, t, h, 2**22), ValueError, ["width", "2^21"]),
    ],
)
def test_bad_inputs_name_the_argument(change, exc, words):
    with pytest.raises(exc) as info:
        rasterize(*change(*_good()))
    for w in words:
        assert w in str(info.value)


@pytest.mark.parametrize("backend", RASTER_BACKENDS)
@pytest.mark.parametrize("bad_index", [-1, 6])
def test_triangle_index_out_of_range(backend, bad_index):
    device = require(backend)
    v, t, h, w = _good()
    t[1, 2] = bad_index
    for dtype in (torch.int32, torch.int64):
        with pytest.raises(ValueError, match=r"triangles must index vertices in \[0, 6\).*" + str(bad_index)):
            rasterize(v.to(device), t.to(device, dtype), h, w, backend=backend)


def test_triton_and_unavailable_backends_raise_with_reason(monkeypatch):
    v, t, h, w = _good()
    with pytest.raises(BackendUnavailable, match="'triton'.*no Triton kernels"):
        rasterize(v, t, h, w, backend="triton")
    monkeypatch.setenv("WSCSWAP_BACKEND", "triton")
    with pytest.raises(BackendUnavailable, match="no Triton kernels"):
        rasterize(v, t, h, w)
    monkeypatch.delenv("WSCSWAP_BACKEND")
    if not torch.cuda.is_available():
        with pytest.raises(BackendUnavailable, match="'cuda'.*cannot serve"):
            rasterize(v, t, h, w, backend="cuda")
    with pytest.raises(BackendUnavailable, match="torch.float64 is not supported"):
        rasterize(v.double(), t, h, w, backend="cuda")
