"""Triton kernels for attribute-injection normalization (AIN) and its gradient (formulas in
kernels/ain.h; the same algorithm as kernels/ain_cpu.cpp).

Element (n, c, p), p = y*W + x, lives at n*C*HW + c*c_stride + p*p_stride: (HW, 1) for NCHW,
(1, C) for NHWC. Triton specialises a stride of 1, so each layout compiles its own variant whose
tiles are contiguous (vectorised, coalesced) along that layout's unit-stride axis. Tiles are
[BLOCK_C, BLOCK_P] (channels x pixels) in both layouts; only the block sizes differ.

Kernels and passes over an (N, C, H, W) tensor; E = N*C*H*W*s bytes for element size s,
P = N*H*W pixels.
Forward: 5 E + 4P bytes (mask), 2 passes over h.
  _stats_kernel           per (n, channel block[, pixel split]): sums of h around the plane's
                          first value (shifted sums: exact when |mean| >> std). Reads h: 1 E.
  _stats_finalize_kernel  only when planes were split across programs (too few (n, c) groups
                          to fill the GPU): adds the splits' partial sums in split order.
  _forward_kernel         a program owns a pixel tile of one image and loops over its channel
                          blocks twice: the logit (a reduction over C), then the outputs. The
                          tile's h (C*BLOCK_P*s, tens of KB) is still in L1/L2 for the second
                          loop, so h leaves HBM once here. Reads h, g_att, b_att, writes out and
                          the mask: 4 E.
Backward: 10 E + 8P (dz written, read) + 40*C*P/BLOCK_P (partial sums) bytes, 2 passes over h.
  _backward_sweep1_kernel per pixel tile: loop 1 reads dout, h, g_att, b_att for the logit
                          gradient dz (stored, fp32); loop 2 (dout, h, g_att again, from cache)
                          writes dg_att, db_att and the tile's per-channel sums to scratch: 6 E.
  _backward_plane_sums_kernel, _backward_param_sums_kernel
                          reduce the partials in a fixed order (deterministic, no atomics):
                          per-plane means of dhn and dhn*hn, dg_id, db_id; then dw, db.
  _backward_sweep2_kernel reads dout, h, g_att, writes dh (dhn recomputed: exact in every
                          dtype, no E-sized scratch): 4 E.
The benchmark's minimal count is 4 E forward (read h, g_att, b_att, write out) and 7 E backward;
the extra passes (the statistics' read of h, sweep 2's rereads of dout, h, g_att) follow from the
reductions over H*W (the statistics, the plane means of dhn) that must finish before anything
that depends on them is written.

Arithmetic is fp32 (fp64 for the final mean/variance of each plane), with FMA contraction off
(enable_fp_fusion=False) so that the per-element operations round as the CPU loops do.
"""
import torch
import triton
import triton.language as tl

NUM_WARPS = 4
TILE = 1024  # elements per [BLOCK_C, BLOCK_P] tile: a few loads per thread of 4 warps per tensor
MIN_PROGRAMS = 1024  # below this many programs the tile is shrunk to spread work over the GPU
STATS_PROGRAMS = 1024  # the statistics split planes across programs to reach about this many
SUM_ROWS = 32  # partial-sum rows each reduction step loads
# Per-(tile, channel) sums of the backward: dhn, dhn*hn, g*m*hn (dg_id), g*m (db_id), dz*hn (dw).
N_SUMS = tl.constexpr(5)


@triton.jit
def _plane_stats(h_ptr, plane, s1, s2, HW, eps):
    """mean and 1/sqrt(var + eps) from sums of (x - x0), (x - x0)^2 over a plane, x0 its first value."""
    shift = tl.load(h_ptr + plane).to(tl.float64)
    d = s1.to(tl.float64) / HW
    var = tl.maximum(s2.to(tl.float64) / HW - d * d, 0.0)
    return shift + d, 1.0 / tl.sqrt(var + eps)


@triton.jit
def _stats_kernel(h_ptr, mean_ptr, rstd_ptr, part_ptr, C, HW, c_stride, p_stride, c_blocks, splits, split_pixels,
                  NC, eps: tl.float64, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr, DIRECT: tl.constexpr):
    pid = tl.program_id(0)
    split = pid % splits
    cb = (pid // splits) % c_blocks
    n = (pid // splits // c_blocks).to(tl.int64)  # int64: N*C*H*W may exceed 2^31
    c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = c < C
    plane = n * C * HW + c.to(tl.int64) * c_stride
    shift = tl.load(h_ptr + plane, mask=c_ok, other=0.0).to(tl.float32)
    s1 = tl.zeros([BLOCK_C, BLOCK_P], dtype=tl.float32)
    s2 = tl.zeros([BLOCK_C, BLOCK_P], dtype=tl.float32)
    p_begin = split * split_pixels
    p_end = tl.minimum(HW, p_begin + split_pixels)
    for p0 in range(p_begin, p_end, BLOCK_P):
        p = p0 + tl.arange(0, BLOCK_P)
        ok = c_ok[:, None] & (p < p_end)[None, :]
        x = tl.load(h_ptr + plane[:, None] + p.to(tl.int64)[None, :] * p_stride, mask=ok, other=0.0)
        d = tl.where(ok, x.to(tl.float32) - shift[:, None], 0.0)
        s1 += d
        s2 += d * d
    s1_sum = tl.sum(s1, axis=1)
    s2_sum = tl.sum(s2, axis=1)
    if DIRECT:
        mean, rstd = _plane_stats(h_ptr, tl.where(c_ok, plane, 0), s1_sum, s2_sum, HW, eps)  # lanes past C: in bounds
        tl.store(mean_ptr + n * C + c, mean.to(tl.float32), mask=c_ok)
        tl.store(rstd_ptr + n * C + c, rstd.to(tl.float32), mask=c_ok)
    else:  # part is (2, splits, N*C)
        at = split.to(tl.int64) * NC + n * C + c
        tl.store(part_ptr + at, s1_sum, mask=c_ok)
        tl.store(part_ptr + splits * NC + at, s2_sum, mask=c_ok)


@triton.jit
def _stats_finalize_kernel(h_ptr, part_ptr, mean_ptr, rstd_ptr, C, HW, c_stride, NC, splits, eps: tl.float64,
                           BLOCK: tl.constexpr):
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = i < NC
    s1 = tl.zeros([BLOCK], dtype=tl.float32)
    s2 = tl.zeros([BLOCK], dtype=tl.float32)
    for s in range(splits):  # in split order: deterministic
        s1 += tl.load(part_ptr + s * NC + i, mask=ok, other=0.0)
        s2 += tl.load(part_ptr + (splits + s) * NC + i, mask=ok, other=0.0)
    plane = (i // C) * C * HW + (i % C) * c_stride
    mean, rstd = _plane_stats(h_ptr, tl.where(ok, plane, 0), s1, s2, HW, eps)
    tl.store(mean_ptr + i, mean.to(tl.float32), mask=ok)
    tl.store(rstd_ptr + i, rstd.to(tl.float32), mask=ok)


@triton.jit
def _channel_block(h_ptr, mean_ptr, rstd_ptr, n, c0, p, p_ok, C, HW, c_stride, p_stride, BLOCK_C: tl.constexpr):
    """Offsets, validity and hn of the [BLOCK_C, BLOCK_P] tile of channels c0.. at pixels p.
    Lanes outside the image get hn = 0, so they add nothing to any sum."""
    c = c0 + tl.arange(0, BLOCK_C)
    c_ok = c < C
    ok = c_ok[:, None] & p_ok[None, :]
    offs = n * C * HW + c.to(tl.int64)[:, None] * c_stride + p[None, :] * p_stride
    mean = tl.load(mean_ptr + n * C + c, mask=c_ok, other=0.0)
    rstd = tl.load(rstd_ptr + n * C + c, mask=c_ok, other=0.0)
    x = tl.load(h_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    hn = tl.where(ok, (x - mean[:, None]) * rstd[:, None], 0.0)
    return c, c_ok, ok, offs, rstd, hn


@triton.jit
def _forward_kernel(h_ptr, g_id_ptr, b_id_ptr, g_att_ptr, b_att_ptr, w_ptr, b_ptr, out_ptr, mask_ptr, mean_ptr,
                    rstd_ptr, C, HW, c_stride, p_stride, tiles, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    pid = tl.program_id(0)
    n = (pid // tiles).to(tl.int64)
    p = (pid % tiles).to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
    p_ok = p < HW
    z = tl.zeros([BLOCK_P], dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):  # the logit: a reduction over all channels of each pixel
        c, c_ok, ok, offs, rstd, hn = _channel_block(h_ptr, mean_ptr, rstd_ptr, n, c0, p, p_ok, C, HW, c_stride,
                                                     p_stride, BLOCK_C)
        w = tl.load(w_ptr + c, mask=c_ok, other=0.0).to(tl.float32)
        z += tl.sum(w[:, None] * hn, axis=0)
    bias = tl.load(b_ptr).to(tl.float32)
    m = 1.0 / (1.0 + tl.exp(-(z + bias)))
    tl.store(mask_ptr + n * HW + p, m, mask=p_ok)
    for c0 in range(0, C, BLOCK_C):  # the outputs; this tile's h is still in cache
        c, c_ok, ok, offs, rstd, hn = _channel_block(h_ptr, mean_ptr, rstd_ptr, n, c0, p, p_ok, C, HW, c_stride,
                                                     p_stride, BLOCK_C)
        g_id = tl.load(g_id_ptr + n * C + c, mask=c_ok, other=0.0).to(tl.float32)
        b_id = tl.load(b_id_ptr + n * C + c, mask=c_ok, other=0.0).to(tl.float32)
        g_att = tl.load(g_att_ptr + offs, mask=ok, other=0.0).to(tl.float32)
        b_att = tl.load(b_att_ptr + offs, mask=ok, other=0.0).to(tl.float32)
        out = (1.0 - m[None, :]) * (g_att * hn + b_att) + m[None, :] * (g_id[:, None] * hn + b_id[:, None])
        tl.store(out_ptr + offs, out.to(out_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _backward_sweep1_kernel(grad_ptr, grad_mask_ptr, h_ptr, g_id_ptr, b_id_ptr, g_att_ptr, b_att_ptr, w_ptr, mask_ptr,
                            mean_ptr, rstd_ptr, grad_g_att_ptr, grad_b_att_ptr, dz_ptr, part_ptr, part_bias_ptr,
                            C, HW, c_stride, p_stride, tiles, HAS_GRAD_MASK: tl.constexpr, BLOCK_C: tl.constexpr,
                            BLOCK_P: tl.constexpr):
    pid = tl.program_id(0)
    n = (pid // tiles).to(tl.int64)
    p = (pid % tiles).to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
    p_ok = p < HW
    m = tl.load(mask_ptr + n * HW + p, mask=p_ok, other=0.0)
    if HAS_GRAD_MASK:
        dm = tl.load(grad_mask_ptr + n * HW + p, mask=p_ok, other=0.0).to(tl.float32)
    else:
        dm = tl.zeros([BLOCK_P], dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):  # dL/dm: a reduction over all channels of each pixel
        c, c_ok, ok, offs, rstd, hn = _channel_block(h_ptr, mean_ptr, rstd_ptr, n, c0, p, p_ok, C, HW, c_stride,
                                                     p_stride, BLOCK_C)
        g_id = tl.load(g_id_ptr + n * C + c, mask=c_ok, other=0.0).to(tl.float32)
        b_id = tl.load(b_id_ptr + n * C + c, mask=c_ok, other=0.0).to(tl.float32)
        g = tl.load(grad_ptr + offs, mask=ok, other=0.0).to(tl.float32)
        g_att = tl.load(g_att_ptr + offs, mask=ok, other=0.0).to(tl.float32)
        b_att = tl.load(b_att_ptr + offs, mask=ok, other=0.0).to(tl.float32)
        dm += tl.sum(g * ((g_id[:, None] * hn + b_id[:, None]) - (g_att * hn + b_att)), axis=0)
    dz = tl.where(p_ok, dm * m * (1.0 - m), 0.0)
    tl.store(dz_ptr + n * HW + p, dz, mask=p_ok)
    tl.store(part_bias_ptr + pid, tl.sum(dz, axis=0))
    row = pid.to(tl.int64) * N_SUMS * C  # part is (N*tiles, N_SUMS, C)
    for c0 in range(0, C, BLOCK_C):  # the attribute gradients and this tile's per-channel sums
        c, c_ok, ok, offs, rstd, hn = _channel_block(h_ptr, mean_ptr, rstd_ptr, n, c0, p, p_ok, C, HW, c_stride,
                                                     p_stride, BLOCK_C)
        g_id = tl.load(g_id_ptr + n * C + c, mask=c_ok, other=0.0).to(tl.float32)
        w = tl.load(w_ptr + c, mask=c_ok, other=0.0).to(tl.float32)
        g = tl.load(grad_ptr + offs, mask=ok, other=0.0).to(tl.float32)
        g_att = tl.load(g_att_ptr + offs, mask=ok, other=0.0).to(tl.float32)
        g_not_m = g * (1.0 - m[None, :])
        g_m = g * m[None, :]
        tl.store(grad_g_att_ptr + offs, (g_not_m * hn).to(grad_g_att_ptr.dtype.element_ty), mask=ok)
        tl.store(grad_b_att_ptr + offs, g_not_m.to(grad_b_att_ptr.dtype.element_ty), mask=ok)
        dhn = g * ((1.0 - m[None, :]) * g_att + m[None, :] * g_id[:, None]) + dz[None, :] * w[:, None]
        tl.store(part_ptr + row + c, tl.sum(dhn, axis=1), mask=c_ok)
        tl.store(part_ptr + row + C + c, tl.sum(dhn * hn, axis=1), mask=c_ok)
        tl.store(part_ptr + row + 2 * C + c, tl.sum(g_m * hn, axis=1), mask=c_ok)
        tl.store(part_ptr + row + 3 * C + c, tl.sum(g_m, axis=1), mask=c_ok)
        tl.store(part_ptr + row + 4 * C + c, tl.sum(dz[None, :] * hn, axis=1), mask=c_ok)


@triton.jit
def _backward_plane_sums_kernel(part_ptr, part_bias_ptr, mean_dhn_ptr, mean_dhn_hn_ptr, grad_g_id_ptr, grad_b_id_ptr,
                                w_part_ptr, bias_part_ptr, C, HW, tiles, c_blocks, BLOCK_T: tl.constexpr,
                                BLOCK_C: tl.constexpr):
    """Per (n, c): the sums over the image's tiles, in tile order."""
    n = (tl.program_id(0) // c_blocks).to(tl.int64)
    cb = tl.program_id(0) % c_blocks
    c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = c < C
    s_dhn = tl.zeros([BLOCK_T, BLOCK_C], dtype=tl.float32)
    s_dhn_hn = tl.zeros([BLOCK_T, BLOCK_C], dtype=tl.float32)
    s_g_id = tl.zeros([BLOCK_T, BLOCK_C], dtype=tl.float32)
    s_b_id = tl.zeros([BLOCK_T, BLOCK_C], dtype=tl.float32)
    s_w = tl.zeros([BLOCK_T, BLOCK_C], dtype=tl.float32)
    for t0 in range(0, tiles, BLOCK_T):
        t = t0 + tl.arange(0, BLOCK_T)
        ok = (t < tiles)[:, None] & c_ok[None, :]
        at = part_ptr + ((n * tiles + t) * N_SUMS * C)[:, None] + c[None, :]
        s_dhn += tl.load(at, mask=ok, other=0.0)
        s_dhn_hn += tl.load(at + C, mask=ok, other=0.0)
        s_g_id += tl.load(at + 2 * C, mask=ok, other=0.0)
        s_b_id += tl.load(at + 3 * C, mask=ok, other=0.0)
        s_w += tl.load(at + 4 * C, mask=ok, other=0.0)
    tl.store(mean_dhn_ptr + n * C + c, tl.sum(s_dhn, axis=0) / HW, mask=c_ok)
    tl.store(mean_dhn_hn_ptr + n * C + c, tl.sum(s_dhn_hn, axis=0) / HW, mask=c_ok)
    tl.store(grad_g_id_ptr + n * C + c, tl.sum(s_g_id, axis=0).to(grad_g_id_ptr.dtype.element_ty), mask=c_ok)
    tl.store(grad_b_id_ptr + n * C + c, tl.sum(s_b_id, axis=0).to(grad_b_id_ptr.dtype.element_ty), mask=c_ok)
    tl.store(w_part_ptr + n * C + c, tl.sum(s_w, axis=0), mask=c_ok)
    if cb == 0:
        s_bias = tl.zeros([BLOCK_T], dtype=tl.float32)
        for t0 in range(0, tiles, BLOCK_T):
            t = t0 + tl.arange(0, BLOCK_T)
            s_bias += tl.load(part_bias_ptr + n * tiles + t, mask=t < tiles, other=0.0)
        tl.store(bias_part_ptr + n, tl.sum(s_bias, axis=0))


@triton.jit
def _backward_param_sums_kernel(w_part_ptr, bias_part_ptr, grad_w_ptr, grad_b_ptr, N, C, BLOCK_N: tl.constexpr,
                                BLOCK_C: tl.constexpr):
    """dw and db: sums over the batch, in image order."""
    cb = tl.program_id(0)
    c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = c < C
    s_w = tl.zeros([BLOCK_N, BLOCK_C], dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        ok = (n < N)[:, None] & c_ok[None, :]
        s_w += tl.load(w_part_ptr + n.to(tl.int64)[:, None] * C + c[None, :], mask=ok, other=0.0)
    tl.store(grad_w_ptr + c, tl.sum(s_w, axis=0).to(grad_w_ptr.dtype.element_ty), mask=c_ok)
    if cb == 0:
        s_b = tl.zeros([BLOCK_N], dtype=tl.float32)
        for n0 in range(0, N, BLOCK_N):
            n = n0 + tl.arange(0, BLOCK_N)
            s_b += tl.load(bias_part_ptr + n, mask=n < N, other=0.0)
        tl.store(grad_b_ptr, tl.sum(s_b, axis=0).to(grad_b_ptr.dtype.element_ty))


@triton.jit
def _backward_sweep2_kernel(grad_ptr, h_ptr, g_id_ptr, g_att_ptr, w_ptr, mask_ptr, mean_ptr, rstd_ptr, dz_ptr,
                            mean_dhn_ptr, mean_dhn_hn_ptr, grad_h_ptr, C, HW, c_stride, p_stride, tiles,
                            BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    pid = tl.program_id(0)
    n = (pid // tiles).to(tl.int64)
    p = (pid % tiles).to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
    p_ok = p < HW
    m = tl.load(mask_ptr + n * HW + p, mask=p_ok, other=0.0)
    dz = tl.load(dz_ptr + n * HW + p, mask=p_ok, other=0.0)
    for c0 in range(0, C, BLOCK_C):
        c, c_ok, ok, offs, rstd, hn = _channel_block(h_ptr, mean_ptr, rstd_ptr, n, c0, p, p_ok, C, HW, c_stride,
                                                     p_stride, BLOCK_C)
        g_id = tl.load(g_id_ptr + n * C + c, mask=c_ok, other=0.0).to(tl.float32)
        w = tl.load(w_ptr + c, mask=c_ok, other=0.0).to(tl.float32)
        mean_dhn = tl.load(mean_dhn_ptr + n * C + c, mask=c_ok, other=0.0)
        mean_dhn_hn = tl.load(mean_dhn_hn_ptr + n * C + c, mask=c_ok, other=0.0)
        g = tl.load(grad_ptr + offs, mask=ok, other=0.0).to(tl.float32)
        g_att = tl.load(g_att_ptr + offs, mask=ok, other=0.0).to(tl.float32)
        dhn = g * ((1.0 - m[None, :]) * g_att + m[None, :] * g_id[:, None]) + dz[None, :] * w[:, None]
        dh = rstd[:, None] * (dhn - mean_dhn[:, None] - hn * mean_dhn_hn[:, None])
        tl.store(grad_h_ptr + offs, dh.to(grad_h_ptr.dtype.element_ty), mask=ok)


def _pow2(x: int) -> int:
    return triton.next_power_of_2(max(int(x), 1))


def _strides(C: int, HW: int, channels_last: bool):
    return (1, C) if channels_last else (HW, 1)


def _pixel_tiles(N: int, C: int, HW: int, channels_last: bool):
    """(BLOCK_C, BLOCK_P) of the kernels whose programs own a pixel tile of one image: about
    TILE elements, long along the unit-stride axis (>= 32 bytes of a 2-byte dtype), shrunk
    while there are fewer than MIN_PROGRAMS tiles."""
    if channels_last:
        block_c = min(_pow2(C), 64)
        block_p, floor = min(TILE // block_c, _pow2(HW)), 4
    else:
        block_p, floor = min(64, _pow2(HW)), 16
    while block_p > floor and N * triton.cdiv(HW, block_p) < MIN_PROGRAMS:
        block_p //= 2
    if not channels_last:
        block_c = min(_pow2(C), TILE // block_p)
    return block_c, block_p


def _stats_tiles(N: int, C: int, HW: int, channels_last: bool):
    """(BLOCK_C, BLOCK_P, splits, split_pixels) of the statistics: planes are split along the
    pixels when there are too few (n, channel block) groups to fill the GPU."""
    if channels_last:
        block_c = min(_pow2(C), 64)
        block_p = min(TILE // block_c, _pow2(HW))
    else:
        block_p = min(256, _pow2(HW))
        block_c = min(_pow2(C), TILE // block_p)
    groups = N * triton.cdiv(C, block_c)
    pixel_blocks = triton.cdiv(HW, block_p)
    splits = max(1, min(triton.cdiv(STATS_PROGRAMS, groups), pixel_blocks // 4))  # >= 4 tiles per split
    split_pixels = triton.cdiv(pixel_blocks, splits) * block_p
    return block_c, block_p, triton.cdiv(HW, split_pixels), split_pixels


def _statistics(h, mean, rstd, eps, channels_last):
    N, C, H, W = h.shape
    HW = H * W
    c_stride, p_stride = _strides(C, HW, channels_last)
    block_c, block_p, splits, split_pixels = _stats_tiles(N, C, HW, channels_last)
    c_blocks = triton.cdiv(C, block_c)
    programs = N * c_blocks * splits
    direct = splits == 1
    part = mean if direct else torch.empty((2, splits, N * C), dtype=torch.float32, device=h.device)
    _stats_kernel[(programs,)](h, mean, rstd, part, C, HW, c_stride, p_stride, c_blocks, splits, split_pixels, N * C,
                               eps, BLOCK_C=block_c, BLOCK_P=block_p, DIRECT=direct, num_warps=NUM_WARPS,
                               enable_fp_fusion=False)
    if not direct:
        _stats_finalize_kernel[(triton.cdiv(N * C, TILE),)](h, part, mean, rstd, C, HW, c_stride, N * C, splits, eps,
                                                           BLOCK=TILE, num_warps=NUM_WARPS, enable_fp_fusion=False)


def ain_forward(h, gamma_id, beta_id, gamma_att, beta_att, mask_weight, mask_bias, out, mask, mean, rstd,
                eps: float, channels_last: bool) -> None:
    """Writes out (h's layout), mask (N,1,H,W) and the per-(n, c) mean and rstd (fp32).
    h, gamma_att, beta_att, out dense in one layout; the small tensors contiguous; one dtype."""
    N, C, H, W = h.shape
    HW = H * W
    if N * HW == 0:
        return
    if C > 0:
        _statistics(h, mean, rstd, eps, channels_last)
    c_stride, p_stride = _strides(C, HW, channels_last)
    block_c, block_p = _pixel_tiles(N, C, HW, channels_last)
    tiles = triton.cdiv(HW, block_p)
    _forward_kernel[(N * tiles,)](h, gamma_id, beta_id, gamma_att, beta_att, mask_weight, mask_bias, out, mask, mean,
                                  rstd, C, HW, c_stride, p_stride, tiles, BLOCK_C=block_c, BLOCK_P=block_p,
                                  num_warps=NUM_WARPS, enable_fp_fusion=False)


def ain_backward(grad_out, grad_mask, h, gamma_id, beta_id, gamma_att, beta_att, mask_weight, mask, mean, rstd,
                 grad_h, grad_gamma_id, grad_beta_id, grad_gamma_att, grad_beta_att, grad_mask_weight,
                 grad_mask_bias, channels_last: bool) -> None:
    """Writes the seven gradients. grad_mask (N,1,H,W) is None when no gradient reached the mask."""
    N, C, H, W = h.shape
    HW = H * W
    if N == 0:  # the batch sums are empty
        grad_mask_weight.zero_()
        grad_mask_bias.zero_()
        return
    c_stride, p_stride = _strides(C, HW, channels_last)
    block_c, block_p = _pixel_tiles(N, C, HW, channels_last)
    tiles = triton.cdiv(HW, block_p)
    f32 = dict(dtype=torch.float32, device=h.device)
    dz = torch.empty(N * HW, **f32)
    part = torch.empty((N * tiles, N_SUMS.value, C), **f32)
    part_bias = torch.empty(N * tiles, **f32)
    has_grad_mask = grad_mask is not None
    launch = dict(num_warps=NUM_WARPS, enable_fp_fusion=False)
    _backward_sweep1_kernel[(N * tiles,)](grad_out, grad_mask if has_grad_mask else dz, h, gamma_id, beta_id,
                                          gamma_att, beta_att, mask_weight, mask, mean, rstd, grad_gamma_att,
                                          grad_beta_att, dz, part, part_bias, C, HW, c_stride, p_stride, tiles,
                                          HAS_GRAD_MASK=has_grad_mask, BLOCK_C=block_c, BLOCK_P=block_p, **launch)

    sum_c = min(_pow2(C), 64)
    c_blocks = max(1, triton.cdiv(C, sum_c))  # a program even when C == 0: it writes db
    mean_dhn = torch.empty((N, C), **f32)
    mean_dhn_hn = torch.empty((N, C), **f32)
    w_part = torch.empty((N, C), **f32)
    bias_part = torch.empty(N, **f32)
    _backward_plane_sums_kernel[(N * c_blocks,)](part, part_bias, mean_dhn, mean_dhn_hn, grad_gamma_id, grad_beta_id,
                                                 w_part, bias_part, C, HW, tiles, c_blocks, BLOCK_T=SUM_ROWS,
                                                 BLOCK_C=sum_c, **launch)
    _backward_param_sums_kernel[(c_blocks,)](w_part, bias_part, grad_mask_weight, grad_mask_bias, N, C,
                                             BLOCK_N=SUM_ROWS, BLOCK_C=sum_c, **launch)
    if C > 0:
        _backward_sweep2_kernel[(N * tiles,)](grad_out, h, gamma_id, gamma_att, mask_weight, mask, mean, rstd, dz,
                                              mean_dhn, mean_dhn_hn, grad_h, C, HW, c_stride, p_stride, tiles,
                                              BLOCK_C=block_c, BLOCK_P=block_p, **launch)
