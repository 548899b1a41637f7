"""The OpenCV paste-back pipeline that face-swap tools run, one face at a time over the whole
frame: erode + GaussianBlur the mask, warpAffine crop and mask back with WARP_INVERSE_MAP, blend
in float. It is the baseline paste_faces is benchmarked against and must agree with."""
import cv2
import numpy as np


def opencv_paste(frames: np.ndarray, crops: np.ndarray, masks: np.ndarray, affines: np.ndarray,
                 frame_idx: np.ndarray, feather: int = 0) -> np.ndarray:
    """frames (B,H,W,3) uint8; crops (K,3,S,S) float in [0,1] or uint8; masks (K,1,S,S);
    affines (K,2,3) frame->crop; frame_idx (K,). Returns new frames."""
    out = frames.copy()
    h, w = frames.shape[1:3]
    scale = 1.0 if crops.dtype == np.uint8 else 255.0
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    for k in range(crops.shape[0]):
        crop = np.ascontiguousarray(crops[k].transpose(1, 2, 0), dtype=np.float32) * np.float32(scale)
        mask = masks[k, 0].astype(np.float32)
        if feather:
            mask = cv2.erode(mask, np.ones((feather, feather), np.uint8))
            mask = cv2.GaussianBlur(mask, (2 * feather + 1, 2 * feather + 1), 0)
        a = affines[k].astype(np.float64)
        warped = cv2.warpAffine(crop, a, (w, h), flags=flags, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        m = cv2.warpAffine(mask, a, (w, h), flags=flags, borderMode=cv2.BORDER_CONSTANT, borderValue=0)[..., None]
        b = int(frame_idx[k])
        blended = m * warped + (1.0 - m) * out[b].astype(np.float32)
        out[b] = np.clip(np.floor(blended + 0.5), 0, 255).astype(np.uint8)
    return out
