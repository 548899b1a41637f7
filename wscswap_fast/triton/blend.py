"""Triton kernels for the mask-guided blend ``Y = M*F + (1-M)*B`` and its gradients.

One pass over memory each way. A program owns BLOCK pixels of one image and loops over the
channels, so each mask value is read once and the mask gradient's sum over channels stays in
registers (no atomics, no second pass). Bytes moved, s = element size:
  forward:  reads F, B and M, writes Y:            (3*N*C*H*W + N*H*W) * s
  backward: reads dY, F, B and M, writes dF, dB, dM: (5*N*C*H*W + 2*N*H*W) * s
Element (n, c, p), p = y*W + x, lives at n*C*HW + c*c_stride + p*p_stride: (HW, 1) for NCHW,
(1, C) for NHWC. Triton specialises a stride of 1, so each layout gets its own compiled variant
with contiguous (vectorised) accesses along its unit-stride axis.
"""
import torch
import triton
import triton.language as tl

BLOCK = 1024
NUM_WARPS = 4


@triton.jit
def _blend_forward_kernel(face_ptr, bg_ptr, mask_ptr, out_ptr, C, HW, c_stride, p_stride,
                          BLOCK: tl.constexpr):
    n = tl.program_id(0).to(tl.int64)  # int64: N*C*H*W may exceed 2^31
    p = tl.program_id(1).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    in_image = p < HW
    m = tl.load(mask_ptr + n * HW + p, mask=in_image).to(tl.float32)
    image = n * C * HW
    for c in range(C):
        # Recomputed from c (not carried through the loop) so the compiler keeps p's contiguity.
        offs = image + c * c_stride + p * p_stride
        f = tl.load(face_ptr + offs, mask=in_image).to(tl.float32)
        b = tl.load(bg_ptr + offs, mask=in_image).to(tl.float32)
        tl.store(out_ptr + offs, (m * f + (1.0 - m) * b).to(out_ptr.dtype.element_ty), mask=in_image)


@triton.jit
def _blend_backward_kernel(grad_ptr, face_ptr, bg_ptr, mask_ptr, grad_face_ptr, grad_bg_ptr, grad_mask_ptr,
                           C, HW, c_stride, p_stride, BLOCK: tl.constexpr):
    n = tl.program_id(0).to(tl.int64)
    p = tl.program_id(1).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    in_image = p < HW
    m = tl.load(mask_ptr + n * HW + p, mask=in_image).to(tl.float32)
    image = n * C * HW
    grad_mask = tl.zeros([BLOCK], dtype=tl.float32)
    for c in range(C):
        offs = image + c * c_stride + p * p_stride
        g = tl.load(grad_ptr + offs, mask=in_image).to(tl.float32)
        f = tl.load(face_ptr + offs, mask=in_image).to(tl.float32)
        b = tl.load(bg_ptr + offs, mask=in_image).to(tl.float32)
        tl.store(grad_face_ptr + offs, (g * m).to(grad_face_ptr.dtype.element_ty), mask=in_image)
        tl.store(grad_bg_ptr + offs, (g * (1.0 - m)).to(grad_bg_ptr.dtype.element_ty), mask=in_image)
        grad_mask += g * (f - b)
    tl.store(grad_mask_ptr + n * HW + p, grad_mask.to(grad_mask_ptr.dtype.element_ty), mask=in_image)


def _geometry(face: torch.Tensor, channels_last: bool):
    n, c, h, w = face.shape
    hw = h * w
    c_stride, p_stride = (1, c) if channels_last else (hw, 1)
    # The batch goes on grid axis 0 (up to 2^31-1); pixel blocks on axis 1, which CUDA caps at 65535.
    blocks = triton.cdiv(hw, BLOCK)
    if blocks > 65535:
        raise ValueError(f"triton blend: H*W = {hw} exceeds {65535 * BLOCK} pixels per image")
    return (n, blocks), (c, hw, c_stride, p_stride)


def blend_forward(face, background, mask, out, channels_last: bool) -> None:
    """out = mask*face + (1-mask)*background. All dense in one layout (mask (N,1,H,W)), one dtype."""
    if mask.numel() == 0:
        return
    grid, sizes = _geometry(face, channels_last)
    # No FMA contraction: the same float operations as the CPU loops, so results match them.
    _blend_forward_kernel[grid](face, background, mask, out, *sizes, BLOCK=BLOCK, num_warps=NUM_WARPS,
                                enable_fp_fusion=False)


def blend_backward(grad, face, background, mask, grad_face, grad_background, grad_mask, channels_last: bool) -> None:
    """grad_face = grad*mask, grad_background = grad*(1-mask), grad_mask = sum_c grad*(face-background)."""
    if mask.numel() == 0:  # C == 0 still runs: grad_mask must be written (as zeros)
        return
    grid, sizes = _geometry(face, channels_last)
    _blend_backward_kernel[grid](grad, face, background, mask, grad_face, grad_background, grad_mask, *sizes,
                                 BLOCK=BLOCK, num_warps=NUM_WARPS, enable_fp_fusion=False)
