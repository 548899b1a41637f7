"""Random screen-space meshes for the rasterizer and photometric-loss tests."""
import math

import torch


def quantise(xy: torch.Tensor) -> torch.Tensor:
    """Move coordinates to (k + 0.25)/256 pixel: the 1/256-pixel snapping of the coverage test then
    never changes under a gradcheck step (1e-6), so coverage is constant while finite differences run."""
    return (torch.floor(xy * 256) + 0.25) / 256


def triangle_soup(n_samples: int, n_tris: int, height: int, width: int, *, seed: int, margin: float = 4.0,
                  dtype=torch.float64):
    """Well-shaped triangles (radius 2-7 px, some partly off-screen), each with its own three
    vertices, at well separated depths (a permutation of 1..F, +-0.15 per vertex), so the z-order
    at every pixel is unique; half of them wound the other way. Returns (vertices (N,3F,3), triangles (F,3))."""
    g = torch.Generator().manual_seed(seed)
    shape = (n_samples, n_tris)
    cx = torch.rand(shape, generator=g, dtype=torch.float64) * (width + 2 * margin) - margin
    cy = torch.rand(shape, generator=g, dtype=torch.float64) * (height + 2 * margin) - margin
    radius = 2 + 5 * torch.rand(shape, generator=g, dtype=torch.float64)
    theta = (2 * math.pi * torch.rand(shape + (1,), generator=g, dtype=torch.float64)
             + torch.tensor([0, 2 * math.pi / 3, 4 * math.pi / 3], dtype=torch.float64)
             + 0.8 * (torch.rand(shape + (3,), generator=g, dtype=torch.float64) - 0.5))
    x = quantise(cx[..., None] + radius[..., None] * torch.cos(theta))
    y = quantise(cy[..., None] + radius[..., None] * torch.sin(theta))
    base = torch.stack([torch.randperm(n_tris, generator=g) for _ in range(n_samples)]).to(torch.float64) + 1
    z = base[..., None] + 0.3 * (torch.rand(shape + (3,), generator=g, dtype=torch.float64) - 0.5)
    vertices = torch.stack([x, y, z], dim=-1).reshape(n_samples, 3 * n_tris, 3)
    triangles = torch.arange(3 * n_tris).view(n_tris, 3)
    flip = torch.rand(n_tris, generator=g) < 0.5
    triangles[flip] = triangles[flip][:, [0, 2, 1]]
    return vertices.to(dtype), triangles


def jittered_grid(n_samples: int, height: int, width: int, *, seed: int, cell: float = 5.0, depth: float = 100.0,
                  dtype=torch.float64):
    """A connected mesh over the image (vertices shared by up to six triangles, jittered by up to
    0.3 cell so no triangle overlaps another), behind the soup (depth ~100). Returns (vertices, triangles)."""
    g = torch.Generator().manual_seed(seed)
    nx, ny = int(width // cell) + 2, int(height // cell) + 2
    gy, gx = torch.meshgrid(torch.arange(ny, dtype=torch.float64), torch.arange(nx, dtype=torch.float64), indexing="ij")
    base = torch.stack([gx * cell - 1.3, gy * cell - 1.7], dim=-1).reshape(-1, 2)
    jitter = 0.3 * cell * (torch.rand((n_samples,) + base.shape, generator=g, dtype=torch.float64) - 0.5)
    xy = quantise(base + jitter)
    z = depth + torch.rand((n_samples, base.shape[0], 1), generator=g, dtype=torch.float64)
    tris = []
    for j in range(ny - 1):
        for i in range(nx - 1):
            a, b, c, d = j * nx + i, j * nx + i + 1, (j + 1) * nx + i, (j + 1) * nx + i + 1
            tris += [[a, b, d], [a, d, c]] if (i + j) % 2 else [[a, b, c], [b, d, c]]
    return torch.cat([xy, z], dim=-1).to(dtype), torch.tensor(tris, dtype=torch.int64).reshape(-1, 3)


def scene(n_samples: int, n_tris: int, height: int, width: int, *, seed: int, dtype=torch.float64,
          cell: float = 5.0):
    """The soup in front of the grid, one mesh: both shared and private vertices, both windings,
    triangles partly off-screen, background only where neither reaches."""
    sv, st = triangle_soup(n_samples, n_tris, height, width, seed=seed, dtype=dtype)
    gv, gt = jittered_grid(n_samples, height - 3, width - 5, seed=seed + 1, cell=cell, dtype=dtype)
    return torch.cat([sv, gv], dim=1), torch.cat([st, gt + sv.shape[1]])
