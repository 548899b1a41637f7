"""Triton kernels for instance norm (no affine) + LeakyReLU and its gradient (formulas in
kernels/instance_norm_act.h; the same algorithm as kernels/instance_norm_act_cpu.cpp).

Element (n, c, p), p = y*W + x, lives at n*C*HW + c*c_stride + p*p_stride: (HW, 1) for NCHW,
(1, C) for NHWC. Triton specialises a stride of 1, so each layout compiles its own variant whose
[BLOCK_C, BLOCK_P] (channels x pixels) tiles are contiguous along that layout's unit-stride axis.

The statistics and the gradient's plane means are one reduction over each (n, c) plane with
different terms, so one kernel computes both (GRAD selects the terms):
  _plane_sums_kernel  per (n, channel block[, pixel split]) loops over the pixels, summing in
                      fp32 lanes reduced once at the end.
                      statistics: x - x0 and (x - x0)^2 around the plane's first value x0 (the
                      image's first pixel's in NHWC; keeps the variance accurate when
                      |mean| >> std), turned into mean and rstd = 1/sqrt(var + eps) in fp64.
                      gradient: gp = dy * (xhat > 0 ? 1 : slope) and gp * xhat, divided by H*W.
  _finalize_kernel    only when planes were split across programs (too few (n, c) groups to
                      fill the GPU): adds the splits' partial sums in split order, then as above.
  Every sum is taken in a fixed order, without atomics: results are deterministic.
Then an elementwise pass, a [BLOCK_C, BLOCK_P] tile per program:
  _forward_kernel     y = leaky(xhat).
  _backward_kernel    dx = rstd * (gp - mean(gp) - xhat * mean(gp * xhat)).

Bytes moved, E = N*C*H*W*s for element size s (plus 16*N*C*splits of partial sums):
  forward:  the statistics read x (1 E); the output pass reads x and writes y (2 E): 3 E.
  backward: the sums read dy and x (2 E); the dx pass reads dy, x and writes dx (3 E): 5 E.
Arithmetic is fp32 (fp64 for each plane's final mean and variance), with FMA contraction off
(enable_fp_fusion=False) so that the per-element operations round as the CPU loops do.
"""
import torch
import triton
import triton.language as tl

NUM_WARPS = 4
TILE = 1024  # elements per [BLOCK_C, BLOCK_P] tile: a few loads per thread of 4 warps per tensor
SUM_PROGRAMS = 1024  # the plane sums split planes across programs to reach about this many


@triton.jit
def _finish(x_ptr, plane, s1, s2, HW, eps, GRAD: tl.constexpr):
    """The plane's two results from its sums: (mean(gp), mean(gp * xhat)) or (mean, rstd)."""
    if GRAD:
        r1 = s1 / HW
        r2 = s2 / HW
    else:
        shift = tl.load(x_ptr + plane).to(tl.float64)
        d = s1.to(tl.float64) / HW
        var = tl.maximum(s2.to(tl.float64) / HW - d * d, 0.0)
        r1 = (shift + d).to(tl.float32)
        r2 = (1.0 / tl.sqrt(var + eps)).to(tl.float32)
    return r1, r2


@triton.jit
def _plane_sums_kernel(x_ptr, dy_ptr, mean_ptr, rstd_ptr, out1_ptr, out2_ptr, part_ptr, C, HW, c_stride, p_stride,
                       c_blocks, splits, split_pixels, NC, eps: tl.float64, slope, GRAD: tl.constexpr,
                       DIRECT: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    pid = tl.program_id(0)
    split = pid % splits
    cb = (pid // splits) % c_blocks
    n = (pid // splits // c_blocks).to(tl.int64)  # int64: N*C*H*W may exceed 2^31
    c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = c < C
    plane = n * C * HW + c.to(tl.int64) * c_stride
    if GRAD:
        mean = tl.load(mean_ptr + n * C + c, mask=c_ok, other=0.0)
        rstd = tl.load(rstd_ptr + n * C + c, mask=c_ok, other=0.0)
    else:
        shift = tl.load(x_ptr + plane, mask=c_ok, other=0.0).to(tl.float32)
    s1 = tl.zeros([BLOCK_C, BLOCK_P], dtype=tl.float32)
    s2 = tl.zeros([BLOCK_C, BLOCK_P], dtype=tl.float32)
    p_begin = split * split_pixels
    p_end = tl.minimum(HW, p_begin + split_pixels)
    for p0 in range(p_begin, p_end, BLOCK_P):
        p = p0 + tl.arange(0, BLOCK_P)
        ok = c_ok[:, None] & (p < p_end)[None, :]
        offs = plane[:, None] + p.to(tl.int64)[None, :] * p_stride
        x = tl.load(x_ptr + offs, mask=ok, other=0.0).to(tl.float32)
        if GRAD:  # lanes outside the plane load dy = 0, so gp = 0 there
            xhat = (x - mean[:, None]) * rstd[:, None]
            dy = tl.load(dy_ptr + offs, mask=ok, other=0.0).to(tl.float32)
            t1 = tl.where(xhat > 0, dy, dy * slope)
            t2 = t1 * xhat
        else:
            t1 = tl.where(ok, x - shift[:, None], 0.0)
            t2 = t1 * t1
        s1 += t1
        s2 += t2
    s1_sum = tl.sum(s1, axis=1)
    s2_sum = tl.sum(s2, axis=1)
    if DIRECT:
        # _finish loads x at plane unmasked: lanes past C point at element 0 instead
        r1, r2 = _finish(x_ptr, tl.where(c_ok, plane, 0), s1_sum, s2_sum, HW, eps, GRAD)
        tl.store(out1_ptr + n * C + c, r1, mask=c_ok)
        tl.store(out2_ptr + n * C + c, r2, mask=c_ok)
    else:  # part is (2, splits, N*C)
        at = split.to(tl.int64) * NC + n * C + c
        tl.store(part_ptr + at, s1_sum, mask=c_ok)
        tl.store(part_ptr + splits * NC + at, s2_sum, mask=c_ok)


@triton.jit
def _finalize_kernel(x_ptr, part_ptr, out1_ptr, out2_ptr, C, HW, c_stride, NC, splits, eps: tl.float64,
                     GRAD: tl.constexpr, BLOCK: tl.constexpr):
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = i < NC
    s1 = tl.zeros([BLOCK], dtype=tl.float32)
    s2 = tl.zeros([BLOCK], dtype=tl.float32)
    for s in range(splits):  # in split order: deterministic
        s1 += tl.load(part_ptr + s * NC + i, mask=ok, other=0.0)
        s2 += tl.load(part_ptr + (splits + s) * NC + i, mask=ok, other=0.0)
    plane = (i // C) * C * HW + (i % C) * c_stride
    r1, r2 = _finish(x_ptr, tl.where(ok, plane, 0), s1, s2, HW, eps, GRAD)
    tl.store(out1_ptr + i, r1, mask=ok)
    tl.store(out2_ptr + i, r2, mask=ok)


@triton.jit
def _load_tile(x_ptr, mean_ptr, rstd_ptr, C, HW, c_stride, p_stride, c_blocks, p_tiles, BLOCK_C: tl.constexpr,
               BLOCK_P: tl.constexpr):
    """This program's [BLOCK_C, BLOCK_P] tile of one image: its offsets, validity, xhat, and the
    per-channel (n, c) index and rstd."""
    pid = tl.program_id(0)
    pt = pid % p_tiles
    cb = (pid // p_tiles) % c_blocks
    n = (pid // p_tiles // c_blocks).to(tl.int64)
    c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    p = pt.to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
    c_ok = c < C
    ok = c_ok[:, None] & (p < HW)[None, :]
    offs = n * C * HW + c.to(tl.int64)[:, None] * c_stride + p[None, :] * p_stride
    nc = n * C + c
    mean = tl.load(mean_ptr + nc, mask=c_ok, other=0.0)
    rstd = tl.load(rstd_ptr + nc, mask=c_ok, other=0.0)
    x = tl.load(x_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    return offs, ok, (x - mean[:, None]) * rstd[:, None], nc, c_ok, rstd


@triton.jit
def _forward_kernel(x_ptr, y_ptr, mean_ptr, rstd_ptr, C, HW, c_stride, p_stride, c_blocks, p_tiles, slope,
                    BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    offs, ok, xhat, nc, c_ok, rstd = _load_tile(x_ptr, mean_ptr, rstd_ptr, C, HW, c_stride, p_stride, c_blocks,
                                                p_tiles, BLOCK_C, BLOCK_P)
    y = tl.where(xhat > 0, xhat, xhat * slope)
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _backward_kernel(dy_ptr, x_ptr, mean_ptr, rstd_ptr, mean_gp_ptr, mean_gp_xhat_ptr, dx_ptr, C, HW, c_stride,
                     p_stride, c_blocks, p_tiles, slope, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    offs, ok, xhat, nc, c_ok, rstd = _load_tile(x_ptr, mean_ptr, rstd_ptr, C, HW, c_stride, p_stride, c_blocks,
                                                p_tiles, BLOCK_C, BLOCK_P)
    m1 = tl.load(mean_gp_ptr + nc, mask=c_ok, other=0.0)
    m2 = tl.load(mean_gp_xhat_ptr + nc, mask=c_ok, other=0.0)
    dy = tl.load(dy_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    gp = tl.where(xhat > 0, dy, dy * slope)
    dx = rstd[:, None] * (gp - m1[:, None] - xhat * m2[:, None])
    tl.store(dx_ptr + offs, dx.to(dx_ptr.dtype.element_ty), mask=ok)


def _pow2(x: int) -> int:
    return triton.next_power_of_2(max(int(x), 1))


def _geometry(x: torch.Tensor, channels_last: bool):
    """(N, C, HW, c_stride, p_stride) of x, and (BLOCK_C, BLOCK_P): tiles of about TILE elements,
    long along the unit-stride axis."""
    N, C, H, W = x.shape
    HW = H * W
    if channels_last:
        block_c = min(_pow2(C), 64)
        return (N, C, HW, 1, C), (block_c, min(TILE // block_c, _pow2(HW)))
    block_p = min(256, _pow2(HW))
    return (N, C, HW, HW, 1), (min(_pow2(C), TILE // block_p), block_p)


def _plane_sums(x, dy, mean, rstd, out1, out2, eps: float, slope: float, channels_last: bool) -> None:
    """out1, out2 = mean and rstd of each plane of x (dy None; mean, rstd unused), or the plane
    means of gp and gp * xhat (dy given, with x's mean and rstd)."""
    (N, C, HW, c_stride, p_stride), (block_c, block_p) = _geometry(x, channels_last)
    c_blocks = triton.cdiv(C, block_c)
    pixel_blocks = triton.cdiv(HW, block_p)
    # Split planes along the pixels when N * c_blocks programs would leave the GPU idle; >= 4 tiles per split.
    splits = max(1, min(triton.cdiv(SUM_PROGRAMS, N * c_blocks), pixel_blocks // 4))
    split_pixels = triton.cdiv(pixel_blocks, splits) * block_p
    splits = triton.cdiv(HW, split_pixels)
    direct = splits == 1
    grad = dy is not None
    part = out1 if direct else torch.empty((2, splits, N * C), dtype=torch.float32, device=x.device)
    launch = dict(num_warps=NUM_WARPS, enable_fp_fusion=False)
    _plane_sums_kernel[(N * c_blocks * splits,)](x, dy if grad else x, mean, rstd, out1, out2, part, C, HW, c_stride,
                                                  p_stride, c_blocks, splits, split_pixels, N * C, eps, slope,
                                                  GRAD=grad, DIRECT=direct, BLOCK_C=block_c, BLOCK_P=block_p,
                                                  **launch)
    if not direct:
        _finalize_kernel[(triton.cdiv(N * C, TILE),)](x, part, out1, out2, C, HW, c_stride, N * C, splits, eps,
                                                      GRAD=grad, BLOCK=TILE, **launch)


def _elementwise_launch(x, channels_last: bool):
    """The grid, size arguments and meta-parameters of the elementwise kernels: a tile per program."""
    (N, C, HW, c_stride, p_stride), (block_c, block_p) = _geometry(x, channels_last)
    c_blocks, p_tiles = triton.cdiv(C, block_c), triton.cdiv(HW, block_p)
    meta = dict(BLOCK_C=block_c, BLOCK_P=block_p, num_warps=NUM_WARPS, enable_fp_fusion=False)
    return (N * c_blocks * p_tiles,), (C, HW, c_stride, p_stride, c_blocks, p_tiles), meta


def instance_norm_act_forward(x, y, mean, rstd, eps: float, slope: float, channels_last: bool) -> None:
    """Writes y (x's layout) and the per-(n, c) mean and rstd (fp32). x, y dense in one layout."""
    if x.numel() == 0:
        return
    _plane_sums(x, None, mean, rstd, mean, rstd, eps, slope, channels_last)
    grid, sizes, meta = _elementwise_launch(x, channels_last)
    _forward_kernel[grid](x, y, mean, rstd, *sizes, slope, **meta)


def instance_norm_act_backward(dy, x, mean, rstd, dx, slope: float, channels_last: bool) -> None:
    """Writes dx from dy, x and the forward's mean and rstd. dy, x, dx dense in one layout."""
    if x.numel() == 0:
        return
    mean_gp = torch.empty_like(mean)
    mean_gp_xhat = torch.empty_like(mean)
    _plane_sums(x, dy, mean, rstd, mean_gp, mean_gp_xhat, 0.0, slope, channels_last)
    grid, sizes, meta = _elementwise_launch(x, channels_last)
    _backward_kernel[grid](dy, x, mean, rstd, mean_gp, mean_gp_xhat, dx, *sizes, slope, **meta)
