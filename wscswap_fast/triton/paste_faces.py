"""Triton kernels for paste_faces: mask feathering and the composite of K crops into B frames.

The float operations (and their order) are those of kernels/paste_faces.h, without FMA
contraction, so the output matches the CPU loops byte for byte.

feather_masks: four separable passes over the (K,S,S) masks (erode rows, erode columns, blur
rows, blur columns), each reading one plane and writing one: 8*K*S*S bytes per pass, with the
2*feather+1 (or feather) taps of a line served from cache.

paste_faces: a program owns a TILE_H x TILE_W tile of one frame's union box (the union of its
faces' boxes). It reads the tile's pixels once, composites the frame's faces over them in index
order in registers (rounding to uint8 after each face, like the CPU loops), and writes back
only the pixels some face changed. Bytes moved: 3 read + at most 3 written per union-box pixel,
plus, per face, its crop and mask (4 planes of S*S elements) gathered through the cache.
"""
import torch
import triton
import triton.language as tl

FEATHER_BLOCK = 1024
TILE_H, TILE_W = 16, 32
NUM_WARPS = 4
ERODE_INIT = tl.constexpr(3.4e38)  # erode_1d's start value: what an empty window yields


@triton.jit
def _feather_pass_kernel(src_ptr, dst_ptr, kernel_ptr, total, S, stride, feather, period,
                         BLUR: tl.constexpr, BLOCK: tl.constexpr):
    """One separable pass over lines of S elements `stride` apart (1: rows, S: columns)."""
    e = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    live = e < total
    i = (e // stride) % S  # position along the line
    line = src_ptr + (e - i * stride)
    if BLUR:
        # blur_1d: Gaussian taps in ascending order, reflect-101 borders.
        value = tl.zeros([BLOCK], dtype=tl.float32)
        for j in range(-feather, feather + 1):
            q = tl.abs(i + j) % period  # reflect-101 is even and (2S-2)-periodic; S == 1 gives period 1
            q = tl.where(q >= S, period - q, q)
            value += tl.load(kernel_ptr + (j + feather)) * tl.load(line + q * stride, mask=live)
    else:
        # erode_1d: min over [i - feather//2, i + feather - 1 - feather//2], outside samples ignored.
        value = tl.full([BLOCK], ERODE_INIT, dtype=tl.float32)
        lo = i - feather // 2
        for j in range(feather):
            q = lo + j
            sample = tl.load(line + q * stride, mask=live & (q >= 0) & (q < S), other=ERODE_INIT)
            value = tl.minimum(value, sample)
    tl.store(dst_ptr + e, value, mask=live)


def feather_masks(masks, out, scratch, kernel, feather: int) -> None:
    """Erode then Gaussian-blur float32 (K,1,S,S) masks into out; scratch is overwritten."""
    total = masks.numel()
    if total == 0:
        return
    s = masks.shape[-1]
    period = max(2 * s - 2, 1)
    grid = (triton.cdiv(total, FEATHER_BLOCK),)
    passes = ((masks, scratch, 1, False), (scratch, out, s, False), (out, scratch, 1, True), (scratch, out, s, True))
    for src, dst, stride, blur in passes:
        _feather_pass_kernel[grid](src, dst, kernel, total, s, stride, feather, period, BLUR=blur,
                                   BLOCK=FEATHER_BLOCK, num_warps=NUM_WARPS, enable_fp_fusion=False)


@triton.jit
def _sample(plane_ptr, tap, S, ax, ay, x0_in, x1_in, y0_in, y1_in, live):
    """bilinear_taps + sample: taps outside the crop contribute zero; the CPU's summation order."""
    value = ((1.0 - ax) * (1.0 - ay)) * tl.load(plane_ptr + tap, mask=live & x0_in & y0_in, other=0).to(tl.float32)
    value += (ax * (1.0 - ay)) * tl.load(plane_ptr + tap + 1, mask=live & x1_in & y0_in, other=0).to(tl.float32)
    value += ((1.0 - ax) * ay) * tl.load(plane_ptr + tap + S, mask=live & x0_in & y1_in, other=0).to(tl.float32)
    value += (ax * ay) * tl.load(plane_ptr + tap + S + 1, mask=live & x1_in & y1_in, other=0).to(tl.float32)
    return value


@triton.jit
def _composite_channel(plane_ptr, tap, S, ax, ay, x0_in, x1_in, y0_in, y1_in, apply, m, crop_scale, pixel):
    """One channel of composite_pixel, rounded half up to uint8 like round_to_u8 (kept as float)."""
    v = _sample(plane_ptr, tap, S, ax, ay, x0_in, x1_in, y0_in, y1_in, apply) * crop_scale
    blended = m * v + (1.0 - m) * pixel
    return tl.where(apply, tl.floor(tl.minimum(tl.maximum(blended, 0.0), 255.0) + 0.5), pixel)


@triton.jit
def _paste_faces_kernel(frames_ptr, crops_ptr, masks_ptr, affines_ptr, face_boxes_ptr, faces_by_frame_ptr,
                        frame_offsets_ptr, frame_boxes_ptr, H, W, S, crop_scale, tiles_x,
                        TILE_H: tl.constexpr, TILE_W: tl.constexpr):
    frame = tl.program_id(1)
    tile = tl.program_id(0)
    box_x0 = tl.load(frame_boxes_ptr + 4 * frame)
    box_y0 = tl.load(frame_boxes_ptr + 4 * frame + 1)
    box_x1 = tl.load(frame_boxes_ptr + 4 * frame + 2)
    box_y1 = tl.load(frame_boxes_ptr + 4 * frame + 3)
    tile_x0 = box_x0 + (tile % tiles_x) * TILE_W
    tile_y0 = box_y0 + (tile // tiles_x) * TILE_H
    # The grid covers the largest union box; smaller ones (and faceless frames) leave tiles idle.
    if (tile_x0 >= box_x1) | (tile_y0 >= box_y1):
        return
    y = tile_y0 + tl.arange(0, TILE_H)[:, None]
    x = tile_x0 + tl.arange(0, TILE_W)[None, :]
    live = (y < box_y1) & (x < box_x1)
    pixel_ptr = frames_ptr + ((frame.to(tl.int64) * H + y) * W + x) * 3  # int64: B*H*W*3 may exceed 2^31
    red = tl.load(pixel_ptr, mask=live).to(tl.float32)
    green = tl.load(pixel_ptr + 1, mask=live).to(tl.float32)
    blue = tl.load(pixel_ptr + 2, mask=live).to(tl.float32)
    touched = tl.zeros([TILE_H, TILE_W], dtype=tl.int1)
    xf = x.to(tl.float32)
    yf = y.to(tl.float32)
    plane = S * S
    for j in range(tl.load(frame_offsets_ptr + frame), tl.load(frame_offsets_ptr + frame + 1)):
        k = tl.load(faces_by_frame_ptr + j)
        face_box = face_boxes_ptr + 4 * k
        in_box = (live & (x >= tl.load(face_box)) & (y >= tl.load(face_box + 1))
                  & (x < tl.load(face_box + 2)) & (y < tl.load(face_box + 3)))
        affine = affines_ptr + 6 * k
        xc = tl.load(affine) * xf + tl.load(affine + 1) * yf + tl.load(affine + 2)
        yc = tl.load(affine + 3) * xf + tl.load(affine + 4) * yf + tl.load(affine + 5)
        hit = in_box & (xc > -1.0) & (xc < S) & (yc > -1.0) & (yc < S)
        # Keep far-away coordinates out of the int conversion below; those lanes load nothing.
        xc = tl.where(hit, xc, 0.0)
        yc = tl.where(hit, yc, 0.0)
        fx0 = tl.floor(xc)
        fy0 = tl.floor(yc)
        ax = xc - fx0
        ay = yc - fy0
        tx = fx0.to(tl.int32)
        ty = fy0.to(tl.int32)
        # In (-1, S) the first tap lies in [-1, S-1]: only these four edge tests can fail.
        x0_in = tx >= 0
        x1_in = tx + 1 < S
        y0_in = ty >= 0
        y1_in = ty + 1 < S
        tap = ty * S + tx
        m = _sample(masks_ptr + k.to(tl.int64) * plane, tap, S, ax, ay, x0_in, x1_in, y0_in, y1_in, hit)
        apply = hit & (m > 0.0)  # m == 0 leaves the pixel exactly as it was
        crop = crops_ptr + k.to(tl.int64) * 3 * plane
        red = _composite_channel(crop, tap, S, ax, ay, x0_in, x1_in, y0_in, y1_in, apply, m, crop_scale, red)
        green = _composite_channel(crop + plane, tap, S, ax, ay, x0_in, x1_in, y0_in, y1_in, apply, m,
                                   crop_scale, green)
        blue = _composite_channel(crop + 2 * plane, tap, S, ax, ay, x0_in, x1_in, y0_in, y1_in, apply, m,
                                  crop_scale, blue)
        touched = touched | apply
    tl.store(pixel_ptr, red.to(tl.uint8), mask=touched)
    tl.store(pixel_ptr + 1, green.to(tl.uint8), mask=touched)
    tl.store(pixel_ptr + 2, blue.to(tl.uint8), mask=touched)


def paste_faces(frames, crops, masks, affines, face_boxes, faces_by_frame, frame_offsets, frame_boxes,
                max_rows: int, max_cols: int) -> None:
    """Composite crops (K,3,S,S) with feathered float32 masks (K,1,S,S) into uint8 frames (B,H,W,3) in place.

    affines (K,2,3) float32 map frame pixels to crop pixels; the int32 plan tensors (face_boxes,
    faces_by_frame, frame_offsets, frame_boxes, max_rows, max_cols) come from ops.paste_faces.plan.
    """
    b, h, w, _ = frames.shape
    k, _, s, _ = crops.shape
    if b == 0 or k == 0 or max_rows <= 0 or max_cols <= 0:
        return
    crop_scale = 1.0 if crops.dtype == torch.uint8 else 255.0
    tiles_x = triton.cdiv(max_cols, TILE_W)
    grid = (triton.cdiv(max_rows, TILE_H) * tiles_x, b)
    _paste_faces_kernel[grid](frames, crops, masks, affines, face_boxes, faces_by_frame, frame_offsets, frame_boxes,
                              h, w, s, crop_scale, tiles_x, TILE_H=TILE_H, TILE_W=TILE_W, num_warps=NUM_WARPS,
                              enable_fp_fusion=False)
