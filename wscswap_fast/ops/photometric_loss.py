"""Photometric loss: a z-buffered mesh rendered with per-vertex colours, masked L2 against an image.

    rendered[n, :, p] = sum_k b_k(p) * colour[n, triangles[id(p), k]]       (covered pixels)
    w[n, p]           = mask[n, p] * covered[n, p]
    loss[n]           = sum_p w[n, p] * ||rendered[n, :, p] - image[n, :, p]||^2 / max(sum_p w[n, p], eps)
    result            = mean over n ('mean', the default), sum over n ('sum') or loss itself ('none')

The squared norm sums the three channels. eps (default 1.0, in pixels, as Deep3DFaceRecon's
max(sum(mask), 1)) keeps an empty mask or an off-screen mesh from dividing by zero (loss 0).
Rasterization, coverage, barycentrics and depth follow wscswap_fast.ops.rasterize exactly
(pixel centres at +0.5, smaller depth nearer, top-left rule, both windings).

Vertex colours are given (`vertex_colors`) or computed from albedo and spherical-harmonics
lighting as Deep3DFaceRecon's `compute_color`: 27 coefficients = 9 SH bands x RGB, laid out
channel-major (sh_coeffs.view(N, 3, 9)[n, c, j] is band j of channel c), `sh_ambient` (0.8,
Deep3DFaceRecon's initial lighting) added to band 0 of every channel; colour = albedo * (Y(n) @ gamma)
with the basis Y of `sh_basis` evaluated at the unit vertex normals in the camera frame (x right,
y up, z towards the camera, i.e. the model frame after rotation; see `vertex_normals`).

What is fused: the custom op (backends cpu, cuda, reference) takes screen vertices and vertex
colours and does rasterization + interpolation + masked L2 + per-sample reduction in one pass
(no barycentric or rendered-image tensor is written), and its backward, one more pass, gives
the gradients of screen x and y (depth only decides visibility: its gradient is zero), vertex
colours, the image and the mask. The SH shading and the vertex normals around it are plain
PyTorch, so gradients reach albedo, normals and the 27 coefficients through autograd.

Bytes per pixel (cpu/cuda, fp32): forward reads the image (12) and mask (4) and writes the
triangle id (4); backward reads them again and writes the image/mask gradients only when needed.
"""
import math

import torch
import torch.nn.functional as F

from .._ext import extension
from . import _checks
from . import rasterize as _raster
from ._backends import cuda_stream, on_device

REDUCTIONS = ("mean", "sum", "none")
SH_COEFFICIENTS = 27

# Deep3DFaceRecon's SH constants: a_l = the Lambertian kernel's band factors, c_l = the real SH
# normalisation of bands 0, 1, 2.
_A = (math.pi, 2 * math.pi / math.sqrt(3.0), 2 * math.pi / math.sqrt(8.0))
_C = (1 / math.sqrt(4 * math.pi), math.sqrt(3.0) / math.sqrt(4 * math.pi), 3 * math.sqrt(5.0) / math.sqrt(12 * math.pi))


def vertex_normals(vertices: torch.Tensor, triangles: torch.Tensor) -> torch.Tensor:
    """Unit vertex normals (N, V, 3): the sum of the unit normals of the triangles around each
    vertex (right-hand rule over triangles[f]: cross(v1 - v0, v2 - v0)), normalised, as
    Deep3DFaceRecon's compute_norm. vertices: (N, V, 3) in 3-D (the camera-frame mesh, not screen
    coordinates). A vertex in no triangle gets the zero vector. Plain PyTorch, differentiable."""
    tri = triangles.long()
    v0, v1, v2 = vertices[:, tri[:, 0]], vertices[:, tri[:, 1]], vertices[:, tri[:, 2]]
    face = F.normalize(torch.cross(v1 - v0, v2 - v0, dim=-1), dim=-1)
    summed = torch.zeros_like(vertices)
    for k in range(3):
        summed = summed.index_add(1, tri[:, k], face)
    return F.normalize(summed, dim=-1)


def sh_basis(normals: torch.Tensor) -> torch.Tensor:
    """The 9 SH basis values (..., 9) at unit normals (..., 3), with Deep3DFaceRecon's constants and signs."""
    x, y, z = normals.unbind(-1)
    a0c0, a1c1, a2c2 = _A[0] * _C[0], _A[1] * _C[1], _A[2] * _C[2]
    return torch.stack([
        torch.full_like(x, a0c0),
        -a1c1 * y,
        a1c1 * z,
        -a1c1 * x,
        a2c2 * x * y,
        -a2c2 * y * z,
        0.5 * a2c2 / math.sqrt(3.0) * (3 * z * z - 1),
        -a2c2 * x * z,
        0.5 * a2c2 * (x * x - y * y),
    ], dim=-1)


def _sh_quadratic_basis() -> torch.Tensor:
    """B (9, 4, 4) with sh_basis(n)[j] = h^T B[j] h for h = (1, n_x, n_y, n_z): every band is a
    quadratic form in (1, n), so the irradiance of channel c is h^T (sum_j gamma_cj B[j]) h."""
    a0c0, a1c1, a2c2 = _A[0] * _C[0], _A[1] * _C[1], _A[2] * _C[2]
    k6 = 0.5 * a2c2 / math.sqrt(3.0)
    b = torch.zeros((9, 4, 4), dtype=torch.float64)
    b[0, 0, 0] = a0c0
    b[1, 0, 2] = b[1, 2, 0] = -a1c1 / 2  # -a1c1 y
    b[2, 0, 3] = b[2, 3, 0] = a1c1 / 2  # a1c1 z
    b[3, 0, 1] = b[3, 1, 0] = -a1c1 / 2  # -a1c1 x
    b[4, 1, 2] = b[4, 2, 1] = a2c2 / 2  # a2c2 x y
    b[5, 2, 3] = b[5, 3, 2] = -a2c2 / 2  # -a2c2 y z
    b[6, 3, 3], b[6, 0, 0] = 3 * k6, -k6  # k6 (3 z^2 - 1)
    b[7, 1, 3] = b[7, 3, 1] = -a2c2 / 2  # -a2c2 x z
    b[8, 1, 1], b[8, 2, 2] = 0.5 * a2c2, -0.5 * a2c2  # 0.5 a2c2 (x^2 - y^2)
    return b


_SH_QUADRATIC = _sh_quadratic_basis()  # built once; float64 on the CPU, cast per call
_BAND0 = torch.eye(9, dtype=torch.float64)[0]


def sh_vertex_colors(albedo: torch.Tensor, normals: torch.Tensor, sh_coeffs: torch.Tensor, *,
                     ambient: float = 0.8) -> torch.Tensor:
    """Per-vertex colour (N, V, 3) = albedo * SH irradiance, as Deep3DFaceRecon's compute_color:
    irradiance[n, v, c] = sum_j sh_basis(normals[n, v])[j] * gamma[n, c, j].

    albedo (N, V, 3) in [0, 1]; normals (N, V, 3) unit, camera frame; sh_coeffs (N, 27) laid out
    (N, 3 channels, 9 bands) = gamma; `ambient` is added to band 0 of each channel. Evaluated as
    the quadratic form h^T M_c h, h = (1, n), M_c = sum_j gamma_cj B_j (see _sh_quadratic_basis):
    five per-vertex tensor ops instead of the ~25 of forming the 9 basis values."""
    n_samples = sh_coeffs.shape[0]
    gamma = sh_coeffs.view(n_samples, 3, 9)
    gamma = gamma + ambient * _BAND0.to(dtype=gamma.dtype, device=gamma.device)
    m = torch.einsum("ncj,jab->nacb", gamma, _SH_QUADRATIC.to(dtype=gamma.dtype, device=gamma.device))  # (N,4,3,4)
    h = torch.cat([torch.ones_like(normals[..., :1]), normals], dim=-1)  # (N,V,4)
    hm = torch.bmm(h, m.reshape(n_samples, 4, 12)).view(n_samples, -1, 3, 4)  # h^T M_c, per channel
    return albedo * (hm * h[:, :, None, :]).sum(-1)


def reduce(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


# ---------------------------------------------------------------------------------------------
# The plain-PyTorch reference.

def loss_from_ids(image, screen_vertices, triangles, vertex_colors, mask, tri_id, eps: float):
    """Per-sample loss (N,) and weight sum (N,) for a given z-buffer (N,H,W); differentiable in
    image, screen_vertices, vertex_colors and mask."""
    bary, _ = _raster.interpolate(screen_vertices, triangles, tri_id)
    covered = tri_id >= 0
    n_samples, height, width = tri_id.shape
    if triangles.shape[0]:
        vidx = triangles.long()[tri_id.long().clamp_min(0)].reshape(n_samples, height * width * 3, 1).expand(-1, -1, 3)
        colours = torch.gather(vertex_colors, 1, vidx).view(n_samples, height, width, 3, 3)
        rendered = (bary[..., None] * colours).sum(-2)  # (N,H,W,3)
    else:
        rendered = image.new_zeros((n_samples, height, width, 3))
    sq = ((rendered - image.permute(0, 2, 3, 1)) ** 2).sum(-1)
    w = covered.to(image.dtype) if mask is None else mask * covered
    weight = w.sum((1, 2))
    return (w * sq).sum((1, 2)) / weight.clamp_min(eps), weight


def reference(image, screen_vertices, triangles, vertex_colors, mask=None, eps: float = 1.0) -> torch.Tensor:
    """The per-sample loss (N,) by the brute-force reference rasterizer; plain PyTorch.
    mask: (N, H, W) or None."""
    height, width = image.shape[2:]
    tri_id = _raster.reference_triangle_ids(screen_vertices.detach(), triangles, height, width)
    return loss_from_ids(image, screen_vertices, triangles, vertex_colors, mask, tri_id, eps)[0]


# ---------------------------------------------------------------------------------------------
# The fused custom op.

@torch.library.custom_op("wscswap::photometric_loss", mutates_args=())
def _photometric_op(image: torch.Tensor, screen_vertices: torch.Tensor, triangles: torch.Tensor,
                    vertex_colors: torch.Tensor, mask: torch.Tensor | None, eps: float,
                    backend: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns the per-sample loss (N,), the weight sum (N,) and the z-buffer's triangle ids."""
    _raster.check_triangle_range(triangles, screen_vertices.shape[1])
    height, width = image.shape[2:]
    if backend == "reference":
        tri_id = _raster.reference_triangle_ids(screen_vertices, triangles, height, width)
        loss, weight = loss_from_ids(image, screen_vertices, triangles, vertex_colors, mask, tri_id, eps)
        return loss, weight, tri_id
    verts = screen_vertices.contiguous()
    n = verts.shape[0]
    tri_id = torch.empty((n, height, width), dtype=torch.int32, device=verts.device)
    loss, weight = verts.new_empty((n,)), verts.new_empty((n,))
    with on_device(verts.device):
        extension.photometric_forward(image.contiguous(), verts, triangles.to(torch.int32).contiguous(),
                                      vertex_colors.contiguous(), None if mask is None else mask.contiguous(),
                                      eps, tri_id, loss, weight, cuda_stream(verts.device))
    return loss, weight, tri_id


@_photometric_op.register_fake
def _(image, screen_vertices, triangles, vertex_colors, mask, eps, backend):
    n, _, height, width = image.shape
    return image.new_empty((n,)), image.new_empty((n,)), image.new_empty((n, height, width), dtype=torch.int32)


@torch.library.custom_op("wscswap::photometric_loss_backward", mutates_args=())
def _photometric_backward_op(grad_loss: torch.Tensor, image: torch.Tensor, screen_vertices: torch.Tensor,
                             triangles: torch.Tensor, vertex_colors: torch.Tensor, mask: torch.Tensor | None,
                             tri_id: torch.Tensor, loss: torch.Tensor, weight: torch.Tensor, eps: float, backend: str,
                             need_image: bool, need_mask: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                                         torch.Tensor]:
    """Gradients of screen_vertices, vertex_colors, image and mask; the last two are empty (0,)
    tensors unless asked for."""
    def empty():  # a fresh one each time: custom-op outputs may not alias each other
        return image.new_empty((0,))

    if backend == "reference":
        def per_sample(v, c, i, m):
            return loss_from_ids(i, v, triangles, c, m, tri_id, eps)[0]

        primals = (screen_vertices, vertex_colors, image) + ((mask,) if mask is not None else ())
        _, vjp = torch.func.vjp(lambda v, c, i, *m: per_sample(v, c, i, m[0] if m else None), *primals)
        grads = vjp(grad_loss)
        grad_mask = grads[3] if (need_mask and mask is not None) else empty()
        return grads[0], grads[1], grads[2] if need_image else empty(), grad_mask
    verts = screen_vertices.contiguous()
    grad_vertices, grad_colors = torch.empty_like(verts), torch.empty_like(verts)
    grad_image = torch.empty_like(image, memory_format=torch.contiguous_format) if need_image else None
    grad_mask = torch.empty_like(mask, memory_format=torch.contiguous_format) if need_mask and mask is not None else None
    with on_device(verts.device):
        extension.photometric_backward(grad_loss.contiguous(), image.contiguous(), verts,
                                       triangles.to(torch.int32).contiguous(), vertex_colors.contiguous(),
                                       None if mask is None else mask.contiguous(), tri_id.contiguous(), loss, weight,
                                       eps, grad_vertices, grad_colors, grad_image, grad_mask,
                                       cuda_stream(verts.device))
    return (grad_vertices, grad_colors, empty() if grad_image is None else grad_image,
            empty() if grad_mask is None else grad_mask)


@_photometric_backward_op.register_fake
def _(grad_loss, image, screen_vertices, triangles, vertex_colors, mask, tri_id, loss, weight, eps, backend,
      need_image, need_mask):
    return (torch.empty_like(screen_vertices, memory_format=torch.contiguous_format),
            torch.empty_like(vertex_colors, memory_format=torch.contiguous_format),
            torch.empty_like(image, memory_format=torch.contiguous_format) if need_image else image.new_empty((0,)),
            torch.empty_like(mask, memory_format=torch.contiguous_format) if need_mask and mask is not None
            else image.new_empty((0,)))


def _setup_context(ctx, inputs, output):
    image, screen_vertices, triangles, vertex_colors, mask, eps, backend = inputs
    loss, weight, tri_id = output
    ctx.save_for_backward(image, screen_vertices, triangles, vertex_colors, mask, tri_id, loss, weight)
    ctx.eps, ctx.backend = eps, backend


def _autograd_backward(ctx, grad_loss, grad_weight, grad_tri_id):
    # The weight sum and the triangle ids are internal outputs (photometric_loss returns the loss only).
    image, screen_vertices, triangles, vertex_colors, mask, tri_id, loss, weight = ctx.saved_tensors
    need_image, need_mask = ctx.needs_input_grad[0], ctx.needs_input_grad[4]
    gv, gc, gi, gm = _photometric_backward_op(grad_loss, image, screen_vertices, triangles, vertex_colors, mask,
                                              tri_id, loss, weight, ctx.eps, ctx.backend, need_image, need_mask)
    return (gi if need_image else None, gv, None, gc, gm if need_mask else None, None, None)


_photometric_op.register_autograd(_autograd_backward, setup_context=_setup_context)


@torch.compiler.assume_constant_result
def _pick(backend: str, device: torch.device, dtype: torch.dtype) -> str:
    return _raster.pick_backend("photometric_loss", backend, device, dtype)


def _check_like(name, t, like, expected, meaning):
    _checks.tensor(name, t, dims=len(expected), device=like.device)
    _checks.shape(name, t, expected, meaning)
    if t.dtype != like.dtype:
        raise TypeError(f"{name} must have screen_vertices' dtype {like.dtype}, got {_checks.describe(t)}")


def check_inputs(image, screen_vertices, triangles, vertex_colors, albedo, normals, sh_coeffs, mask, eps,
                 reduction) -> None:
    """Validate once, here: every backend may assume what this guarantees."""
    _raster.check_mesh(screen_vertices, triangles)
    n, v = screen_vertices.shape[:2]
    _checks.tensor("image", image, dims=4, device=screen_vertices.device)
    _check_like("image", image, screen_vertices, (n, 3, None, None), "(N,3,H,W) RGB, N as screen_vertices")
    _raster.check_image_size(image.shape[2], image.shape[3])
    height, width = image.shape[2:]
    sh_inputs = {"albedo": albedo, "normals": normals, "sh_coeffs": sh_coeffs}
    if vertex_colors is not None:
        given = [k for k, t in sh_inputs.items() if t is not None]
        if given:
            raise ValueError(f"give either vertex_colors or albedo + normals + sh_coeffs, not both (got {given})")
        _check_like("vertex_colors", vertex_colors, screen_vertices, (n, v, 3), "(N,V,3) RGB per vertex")
    else:
        missing = [k for k, t in sh_inputs.items() if t is None]
        if missing:
            raise ValueError(f"give vertex_colors, or albedo, normals and sh_coeffs (missing {missing})")
        _check_like("albedo", albedo, screen_vertices, (n, v, 3), "(N,V,3) RGB per vertex")
        _check_like("normals", normals, screen_vertices, (n, v, 3), "(N,V,3) unit normals in the camera frame")
        _check_like("sh_coeffs", sh_coeffs, screen_vertices, (n, SH_COEFFICIENTS), "(N,27): 3 channels x 9 SH bands")
    if mask is not None:
        _checks.tensor("mask", mask, device=screen_vertices.device)
        expected = (n, 1, height, width) if mask.dim() == 4 else (n, height, width)
        _check_like("mask", mask, screen_vertices, expected, "(N,1,H,W) or (N,H,W) like image")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
        raise ValueError(f"eps must be a positive number, got {eps!r}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def photometric_loss(image: torch.Tensor, screen_vertices: torch.Tensor, triangles: torch.Tensor, *,
                     vertex_colors: torch.Tensor | None = None, albedo: torch.Tensor | None = None,
                     normals: torch.Tensor | None = None, sh_coeffs: torch.Tensor | None = None,
                     mask: torch.Tensor | None = None, sh_ambient: float = 0.8, eps: float = 1.0,
                     reduction: str = "mean", backend: str = "auto") -> torch.Tensor:
    """Masked L2 between the rendered mesh and `image` (formula and conventions in the module docstring).

    Args:
        image: (N, 3, H, W), float32 (float64 on cpu/reference), the dtype of screen_vertices.
        screen_vertices: (N, V, 3) [x_pixel, y_pixel, depth] as for `rasterize` (smaller depth nearer).
        triangles: (F, 3) int32/int64 indices in [0, V).
        vertex_colors: (N, V, 3) RGB per vertex; or instead
        albedo (N, V, 3), normals (N, V, 3) (unit, camera frame) and sh_coeffs (N, 27): Deep3DFaceRecon's
            SH lighting (sh_ambient added to band 0 of each channel).
        mask: (N, 1, H, W) or (N, H, W) pixel weights (e.g. a face-skin mask), default all ones.
        eps: lower bound of the per-sample weight sum (default 1.0 pixel).
        reduction: 'mean' (over N, default), 'sum' or 'none' (the (N,) per-sample losses).
        backend: 'auto', 'cuda', 'cpu' or 'reference'; 'triton' raises BackendUnavailable.

    Differentiable in image, screen_vertices (x, y), vertex_colors (or albedo, normals, sh_coeffs) and mask.
    """
    check_inputs(image, screen_vertices, triangles, vertex_colors, albedo, normals, sh_coeffs, mask, eps, reduction)
    if vertex_colors is None:
        vertex_colors = sh_vertex_colors(albedo, normals, sh_coeffs, ambient=sh_ambient)
    if mask is not None and mask.dim() == 4:
        mask = mask[:, 0]
    loss, _, _ = _photometric_op(image, screen_vertices, triangles, vertex_colors, mask, float(eps),
                                 _pick(backend, screen_vertices.device, screen_vertices.dtype))
    return reduce(loss, reduction)
