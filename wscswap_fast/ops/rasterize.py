"""Differentiable triangle rasterizer: z-buffered triangles -> triangle id, barycentrics, depth.

Backends: cpu (C++, tiled by 16x16 screen bins, OpenMP over tiles), cuda (tile-binned: count,
scan and fill the bins, then one block per tile with the z-buffer in registers) and reference
(plain PyTorch, brute force over every pixel-triangle pair: small sizes only). There are no
Triton kernels: backend='triton' raises BackendUnavailable. float32 on every backend, float64 on
cpu and reference (for gradcheck).

Conventions (shared by every backend, see kernels/rasterize.h):
  - screen_vertices[n, v] = (x, y, depth): x to the right and y down, in pixels. Pixel (row i,
    column j) has its centre at (j + 0.5, i + 0.5), i.e. it covers [j, j+1) x [i, i+1); with the
    camera of wscswap_fast.models.camera (u = cx + focal*X/Zc, cx = width/2) the principal point
    is the image centre, as in Deep3DFaceRecon's nvdiffrast renderer.
  - A pixel is covered when its centre is inside the triangle. Coverage is computed on vertices
    snapped to 1/256 pixel with exact integer edge functions and the top-left fill rule, so a
    pixel centre on an edge shared by two triangles is covered by exactly one of them, and every
    backend covers exactly the same pixels.
  - Both windings are rendered (no back-face culling). Triangles with zero area (snapped or in
    floating point), a non-finite coordinate, or |x| or |y| beyond 2^21 pixels are skipped.
    There is no clipping: vertices are already in screen space.
  - Barycentrics (b0, b1, b2) belong to the triangle's vertices in the order of `triangles[f]`;
    they are screen-space (affine) barycentrics of the pixel centre p: b1 = cross(p-v0, v2-v0)/A,
    b2 = cross(v1-v0, p-v0)/A, b0 = 1 - b1 - b2, A = cross(v1-v0, v2-v0). Within 1/512 pixel of
    an edge one may be slightly negative (coverage uses the snapped vertices).
  - depth = b0*z0 + b1*z1 + b2*z2, interpolated linearly in screen space. SMALLER DEPTH IS
    NEARER: the smallest depth wins the z-test, and an exact tie goes to the lower triangle index.
    With the perspective camera pass Zc (or -1/Zc, which is affine in screen space and so makes
    the z-test exact for interpenetrating triangles).
  - Background pixels: triangle id -1, barycentrics and depth 0.

Gradients: barycentrics and depth are differentiable in screen_vertices (interior gradients, as
in Deep3DFaceRecon's renderer; no silhouette antialiasing: coverage is piecewise constant). The
triangle id is not differentiable. The backward is fused: each covered pixel recomputes its
barycentrics and scatters the gradient to its three vertices (CUDA: atomics. CPU: with at least
as many samples as threads each thread owns whole samples, so a sample's gradient is one
sequential sum whatever the thread count; with fewer, per-thread buffers summed in thread order,
deterministic for a given thread count).

Work (cpu/cuda): setup ~100 operations per triangle; per (triangle, pixel of its bounding box)
three int64 edge tests (incremental adds on the CPU), plus ~12 flops for barycentrics and depth
when covered; per pixel one write of 4 + 16 bytes (id, 3 barycentrics, depth in fp32). The
reference evaluates all H*W*F pairs.
"""
import torch

from .._ext import extension
from . import _checks
from ._backends import BackendUnavailable, cuda_stream, on_device, requested_backend, resolve

VERTEX_DTYPES = (torch.float32, torch.float64)
INDEX_DTYPES = (torch.int32, torch.int64)
SUPPORTED = {"cpu": VERTEX_DTYPES, "reference": VERTEX_DTYPES, "cuda": (torch.float32,), "triton": ()}
SNAP = 256.0  # sub-pixel grid of the coverage test
GUARD_BAND = 2.0**21  # pixels; triangles with a vertex beyond it are skipped
MAX_IMAGE_SIDE = 2**21
MAX_COUNT = 2**31 - 1  # vertices and triangles are indexed with int32
_REFERENCE_PAIRS = 1 << 22  # pixel-triangle pairs the brute-force reference evaluates at once


def check_image_size(height, width) -> None:
    for name, v in (("height", height), ("width", width)):
        if isinstance(v, bool) or not isinstance(v, (int, torch.SymInt)):
            raise TypeError(f"{name} must be an int, got {v!r}")
        if not 1 <= v <= MAX_IMAGE_SIDE:
            raise ValueError(f"{name} must be in [1, 2^21], got {v}")


def check_mesh(screen_vertices, triangles, vertices_name="screen_vertices") -> None:
    """Static checks of the mesh; the index range is data-dependent and checked in the op."""
    _checks.tensor(vertices_name, screen_vertices, dims=3, dtypes=VERTEX_DTYPES)
    _checks.shape(vertices_name, screen_vertices, (None, None, 3), "(N,V,3) [x_pixel, y_pixel, depth]")
    _checks.tensor("triangles", triangles, dims=2, dtypes=INDEX_DTYPES, device=screen_vertices.device)
    _checks.shape("triangles", triangles, (None, 3), "(F,3) vertex indices")
    if screen_vertices.shape[1] > MAX_COUNT or triangles.shape[0] > MAX_COUNT:
        raise ValueError(f"at most 2^31-1 vertices and triangles, got V={screen_vertices.shape[1]}, "
                         f"F={triangles.shape[0]}")


def check_inputs(screen_vertices, triangles, height, width) -> None:
    """Validate once, here: every backend may assume what this guarantees."""
    check_mesh(screen_vertices, triangles)
    check_image_size(height, width)


def check_triangle_range(triangles: torch.Tensor, num_vertices: int) -> None:
    """Every index in [0, V). Reads the data (one device sync on the GPU), so it runs inside the ops."""
    if triangles.numel() == 0:
        return
    lo, hi = (int(v) for v in torch.aminmax(triangles))
    if lo < 0 or hi >= num_vertices:
        raise ValueError(f"triangles must index vertices in [0, {num_vertices}) (screen_vertices has "
                         f"V={num_vertices}), got indices from {lo} to {hi}")


# ---------------------------------------------------------------------------------------------
# The plain-PyTorch reference (brute force).

def pixel_centres(height: int, width: int, dtype, device):
    """x and y of every pixel centre, (H*W,) each, row-major."""
    ys, xs = torch.meshgrid(torch.arange(height, device=device, dtype=dtype),
                            torch.arange(width, device=device, dtype=dtype), indexing="ij")
    return xs.reshape(-1) + 0.5, ys.reshape(-1) + 0.5


def _snap(c: torch.Tensor):
    """Coordinates on the 1/256-pixel grid (int64, round half to even) and whether each is usable."""
    d = c.double()
    ok = (d >= -GUARD_BAND) & (d <= GUARD_BAND)
    return torch.round(torch.where(ok, d, torch.zeros_like(d)) * SNAP).long(), ok


def _float_area(tv: torch.Tensor) -> torch.Tensor:
    x, y = tv[..., 0], tv[..., 1]
    return (x[..., 1] - x[..., 0]) * (y[..., 2] - y[..., 0]) - (y[..., 1] - y[..., 0]) * (x[..., 2] - x[..., 0])


def _edge_functions(tv: torch.Tensor):
    """Per triangle (F,3,3 vertices): int64 edge coefficients ea, eb, ec (F,3) with the top-left
    rule folded into ec, and whether the triangle is rasterized at all (F,)."""
    X, okx = _snap(tv[..., 0])
    Y, oky = _snap(tv[..., 1])
    usable = (okx & oky & torch.isfinite(tv[..., 2])).all(-1)
    area = (X[:, 1] - X[:, 0]) * (Y[:, 2] - Y[:, 0]) - (Y[:, 1] - Y[:, 0]) * (X[:, 2] - X[:, 0])
    valid = usable & (area != 0) & (_float_area(tv) != 0)
    # Orient every triangle so its snapped area is positive, then edge k runs from vertex k to k+1.
    order = torch.where((area < 0)[:, None], torch.tensor([0, 2, 1], device=tv.device),
                        torch.tensor([0, 1, 2], device=tv.device))
    xa, ya = X.gather(1, order), Y.gather(1, order)
    xb, yb = xa.roll(-1, dims=1), ya.roll(-1, dims=1)
    dx, dy = xb - xa, yb - ya
    top_left = (dy < 0) | ((dy == 0) & (dx > 0))
    return -dy, dx, dy * xa - dx * ya - (~top_left).long(), valid


def _barycentrics(tv: torch.Tensor, px: torch.Tensor, py: torch.Tensor):
    """Barycentrics (..., 3) of points (px, py) in triangles tv (..., 3, 3), with the kernels'
    operations in the kernels' order (kernels/rasterize.h): affine in p - v0."""
    x, y = tv[..., 0], tv[..., 1]
    inv_area = _float_area(tv).reciprocal()
    c0, c1 = (y[..., 2] - y[..., 0]) * inv_area, -(x[..., 2] - x[..., 0]) * inv_area
    c2, c3 = -(y[..., 1] - y[..., 0]) * inv_area, (x[..., 1] - x[..., 0]) * inv_area
    dx, dy = px - x[..., 0], py - y[..., 0]
    b1 = c0 * dx + c1 * dy
    b2 = c2 * dx + c3 * dy
    return torch.stack([1 - b1 - b2, b1, b2], dim=-1)


def _depth(b: torch.Tensor, tv: torch.Tensor) -> torch.Tensor:
    z = tv[..., 2]
    return b[..., 0] * z[..., 0] + b[..., 1] * z[..., 1] + b[..., 2] * z[..., 2]


def reference_triangle_ids(screen_vertices: torch.Tensor, triangles: torch.Tensor, height: int, width: int):
    """The z-buffer by brute force over every (pixel, triangle) pair: (N,H,W) int32, -1 background."""
    n_samples, device = screen_vertices.shape[0], screen_vertices.device
    n_tris = triangles.shape[0]
    ids = torch.full((n_samples, height * width), -1, dtype=torch.int64, device=device)
    if n_tris == 0:
        return ids.view(n_samples, height, width).to(torch.int32)
    with torch.no_grad():
        px, py = pixel_centres(height, width, screen_vertices.dtype, device)
        cols = torch.arange(width, device=device).repeat(height) * 256 + 128
        rows = torch.arange(height, device=device).repeat_interleave(width) * 256 + 128
        chunk = max(1, _REFERENCE_PAIRS // (height * width))
        tri = triangles.long()
        for n in range(n_samples):
            tv = screen_vertices[n][tri]  # (F,3,3)
            ea, eb, ec, valid = _edge_functions(tv)
            best = torch.full((height * width,), float("inf"), dtype=screen_vertices.dtype, device=device)
            for f0 in range(0, n_tris, chunk):
                sl = slice(f0, f0 + chunk)
                e = ea[sl] * cols[:, None, None] + eb[sl] * rows[:, None, None] + ec[sl]  # (P,c,3)
                covered = (e >= 0).all(-1) & valid[sl]
                tvc = tv[sl].expand(height * width, -1, -1, -1)
                z = _depth(_barycentrics(tvc, px[:, None].expand(-1, tvc.shape[1]),
                                         py[:, None].expand(-1, tvc.shape[1])), tvc)
                z = torch.where(covered, z, torch.full_like(z, float("inf")))
                zmin, arg = z.min(dim=1)  # the first (lowest-index) minimum on ties
                win = zmin < best  # strict: an earlier chunk keeps a tie
                best = torch.where(win, zmin, best)
                ids[n] = torch.where(win, arg + f0, ids[n])
    return ids.view(n_samples, height, width).to(torch.int32)


def interpolate(screen_vertices: torch.Tensor, triangles: torch.Tensor, tri_id: torch.Tensor):
    """Barycentrics (N,H,W,3) and depth (N,H,W) of every pixel in its triangle tri_id (zeros where
    tri_id is -1): the differentiable part of the reference, plain PyTorch."""
    n_samples, height, width = tri_id.shape
    covered = tri_id >= 0
    dtype = screen_vertices.dtype
    if triangles.shape[0] == 0:
        return screen_vertices.new_zeros((n_samples, height, width, 3)), screen_vertices.new_zeros(tri_id.shape)
    vidx = triangles.long()[tri_id.long().clamp_min(0)]  # (N,H,W,3)
    tv = torch.gather(screen_vertices, 1, vidx.reshape(n_samples, height * width * 3, 1).expand(-1, -1, 3))
    tv = tv.view(n_samples, height, width, 3, 3)
    px, py = pixel_centres(height, width, dtype, screen_vertices.device)
    # Background pixels borrow a unit-area triangle so that no NaN reaches the gradients.
    unit = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=dtype, device=tv.device)
    tv = torch.where(covered[..., None, None], tv, unit)
    b = _barycentrics(tv, px.view(height, width), py.view(height, width))
    depth = _depth(b, tv)
    return torch.where(covered[..., None], b, 0), torch.where(covered, depth, 0)


def reference(screen_vertices: torch.Tensor, triangles: torch.Tensor, height: int, width: int):
    """The plain-PyTorch definition every backend is tested against; differentiable in screen_vertices."""
    tri_id = reference_triangle_ids(screen_vertices.detach(), triangles, height, width)
    bary, depth = interpolate(screen_vertices, triangles, tri_id)
    return tri_id, bary, depth


# ---------------------------------------------------------------------------------------------
# The custom op.

def _run(name: str, device: torch.device, *args):
    with on_device(device):
        getattr(extension, name)(*args, cuda_stream(device))


@torch.library.custom_op("wscswap::rasterize", mutates_args=())
def _rasterize_op(screen_vertices: torch.Tensor, triangles: torch.Tensor, height: int, width: int,
                  backend: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    check_triangle_range(triangles, screen_vertices.shape[1])
    if backend == "reference":
        return reference(screen_vertices, triangles, height, width)
    verts = screen_vertices.contiguous()
    n = verts.shape[0]
    tri_id = torch.empty((n, height, width), dtype=torch.int32, device=verts.device)
    bary = verts.new_empty((n, height, width, 3))
    depth = verts.new_empty((n, height, width))
    _run("rasterize_forward", verts.device, verts, triangles.to(torch.int32).contiguous(), height, width,
         tri_id, bary, depth)
    return tri_id, bary, depth


@_rasterize_op.register_fake
def _(screen_vertices, triangles, height, width, backend):
    n = screen_vertices.shape[0]
    return (screen_vertices.new_empty((n, height, width), dtype=torch.int32),
            screen_vertices.new_empty((n, height, width, 3)), screen_vertices.new_empty((n, height, width)))


@torch.library.custom_op("wscswap::rasterize_backward", mutates_args=())
def _rasterize_backward_op(grad_bary: torch.Tensor, grad_depth: torch.Tensor, screen_vertices: torch.Tensor,
                           triangles: torch.Tensor, tri_id: torch.Tensor, backend: str) -> torch.Tensor:
    if backend == "reference":
        _, vjp = torch.func.vjp(lambda v: interpolate(v, triangles, tri_id), screen_vertices)
        return vjp((grad_bary, grad_depth))[0]
    verts = screen_vertices.contiguous()
    grad_vertices = torch.empty_like(verts)
    _run("rasterize_backward", verts.device, grad_bary.contiguous(), grad_depth.contiguous(), verts,
         triangles.to(torch.int32).contiguous(), tri_id.contiguous(), grad_vertices)
    return grad_vertices


@_rasterize_backward_op.register_fake
def _(grad_bary, grad_depth, screen_vertices, triangles, tri_id, backend):
    return torch.empty_like(screen_vertices, memory_format=torch.contiguous_format)


def _setup_context(ctx, inputs, output):
    screen_vertices, triangles, _, _, backend = inputs
    ctx.save_for_backward(screen_vertices, triangles, output[0])
    ctx.backend = backend


def _autograd_backward(ctx, grad_tri_id, grad_bary, grad_depth):
    screen_vertices, triangles, tri_id = ctx.saved_tensors
    grad = _rasterize_backward_op(grad_bary, grad_depth, screen_vertices, triangles, tri_id, ctx.backend)
    return grad, None, None, None, None


_rasterize_op.register_autograd(_autograd_backward, setup_context=_setup_context)


def pick_backend(op: str, backend: str, device: torch.device, dtype: torch.dtype) -> str:
    """The backend of a rasterizer call; 'triton' is refused with its reason (there are no Triton kernels)."""
    if requested_backend(backend) == "triton":
        raise BackendUnavailable(f"{op}: backend 'triton' cannot serve this call: {op} has no Triton kernels "
                                 "(its backends are cuda, cpu and reference)")
    return resolve(op, backend, device, {"screen_vertices": dtype}, SUPPORTED)


@torch.compiler.assume_constant_result
def _pick(backend: str, device: torch.device, dtype: torch.dtype) -> str:
    return pick_backend("rasterize", backend, device, dtype)


def rasterize(screen_vertices: torch.Tensor, triangles: torch.Tensor, height: int, width: int, *,
              backend: str = "auto"):
    """Rasterize triangle meshes with a z-buffer (see the module docstring for every convention).

    Args:
        screen_vertices: (N, V, 3) float32 (float64 on cpu/reference): [x_pixel, y_pixel, depth],
            x right, y down, pixel centres at +0.5; smaller depth is nearer.
        triangles: (F, 3) int32 or int64 vertex indices in [0, V), shared by the batch.
        height, width: the image size in pixels, each in [1, 2^21].
        backend: 'auto', 'cuda', 'cpu' or 'reference' (default: WSCSWAP_BACKEND or 'auto');
            'triton' raises BackendUnavailable.

    Returns (triangle_id, barycentrics, depth):
        triangle_id: (N, H, W) int32, the nearest covering triangle, -1 for background;
        barycentrics: (N, H, W, 3), weights of the vertices triangles[id, 0..2] (0 on background);
        depth: (N, H, W), interpolated depth (0 on background).
    barycentrics and depth are differentiable in screen_vertices; triangle_id is not.
    """
    check_inputs(screen_vertices, triangles, height, width)
    return _rasterize_op(screen_vertices, triangles, height, width,
                         _pick(backend, screen_vertices.device, screen_vertices.dtype))
