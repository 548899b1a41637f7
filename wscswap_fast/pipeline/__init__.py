"""Inference: detect -> align -> swap -> paste back, for images, video and webcam.

Names are imported lazily (PEP 562): ``wscswap`` imports ``pipeline.cli`` at start-up, which must
not pull in torch models, dlib or OpenCV.
"""
from .._lazy import lazy_exports

_EXPORTS = {
    "Face": "detect", "Detector": "detect", "DlibDetector": "detect", "OnnxDetector": "detect",
    "dlib_model_path": "detect", "landmarks68": "detect", "five_from_68": "detect",
    "umeyama": "align", "arcface_template": "align", "align_face": "align", "estimate_affine": "align",
    "invert_affine": "align", "transform_points": "align", "warp_face": "align",
    "hull_mask": "masks", "dilate_mask": "masks",
    "Swapper": "swapper", "SwapOptions": "swapper", "SwapStats": "swapper",
    "FaceTracker": "tracking", "StageProfile": "profile", "run_live": "live",
    "TAG": "provenance", "read_tag": "provenance",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)
