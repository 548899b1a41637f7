"""Face detection and landmarks: dlib's HOG detector with its 5- and 68-point shape predictors
(offline: the model files ship in the face-recognition-models package), or an ONNX detector
(YuNet through ``cv2.FaceDetectorYN``, SCRFD through onnxruntime) when the user has a model file.

Every detector takes a BGR uint8 (H, W, 3) image (OpenCV's layout) and returns :class:`Face`
objects in that image's pixel coordinates. Detection runs on a copy downscaled so that its longer
side is at most ``max_side``; the boxes are mapped back and the landmarks are fitted on the full
image, so small detection sizes cost no landmark precision.

``Face.landmarks5`` are the five points of insightface's ArcFace template, in its order: the eye
on the image's left, the eye on the image's right, the nose tip, the mouth corner on the image's
left, the one on the image's right. dlib's own 5-point predictor gives eye *corners* and the
point under the nose, not these, so with 68 landmarks they are derived from them
(:func:`five_from_68`): eye centres = mean of the six points of each eye (36-41, 42-47), nose tip
= point 30, mouth corners = points 48 and 54.
"""
from __future__ import annotations

import functools
import importlib.util
import os
from dataclasses import dataclass, field
from typing import Protocol, Sequence, runtime_checkable

import numpy as np

MODEL_FILES = ("shape_predictor_68_face_landmarks.dat", "shape_predictor_5_face_landmarks.dat",
               "dlib_face_recognition_resnet_model_v1.dat", "mmod_human_face_detector.dat")


def dlib_model_path(name: str) -> str:
    """Path of one of dlib's model files inside the face-recognition-models package.

    Found through importlib's package search locations, without importing the package (its
    ``__init__`` imports pkg_resources, which needs setuptools < 81).
    """
    if name not in MODEL_FILES:
        raise ValueError(f"name must be one of {MODEL_FILES}, got {name!r}")
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"dlib model {name} comes from the face-recognition-models package, "
                                "which is not installed (pip install face-recognition-models)")
    for root in spec.submodule_search_locations:
        path = os.path.join(root, "models", name)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(f"dlib model {name} not found under {list(spec.submodule_search_locations)}")


@dataclass
class Face:
    """One detected face, in the pixel coordinates of the image it was found in."""

    box: tuple[float, float, float, float]  # x0, y0, x1, y1
    score: float
    landmarks5: np.ndarray  # (5, 2) float64, ArcFace order (see the module docstring)
    landmarks68: np.ndarray | None = None  # (68, 2) float64, iBUG order, or None
    extra: dict = field(default_factory=dict)

    @property
    def area(self) -> float:
        x0, y0, x1, y1 = self.box
        return max(0.0, x1 - x0) * max(0.0, y1 - y0)


@runtime_checkable
class Detector(Protocol):
    """Anything with ``detect(image_bgr_uint8) -> list[Face]``."""

    def detect(self, image: np.ndarray) -> list[Face]: ...


def check_image(image, name: str = "image") -> np.ndarray:
    """A BGR uint8 (H, W, 3) ndarray, or a clear error."""
    if not isinstance(image, np.ndarray):
        raise TypeError(f"{name} must be a numpy uint8 (H,W,3) BGR array, got {type(image).__name__}")
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"{name} must be a uint8 (H,W,3) BGR array, got dtype {image.dtype} shape {image.shape}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"{name} is empty: shape {image.shape}")
    return image


def five_from_68(lm68: np.ndarray) -> np.ndarray:
    """ArcFace's five points from the 68 iBUG landmarks: (..., 68, 2) -> (..., 5, 2)."""
    lm68 = np.asarray(lm68, dtype=np.float64)
    return np.stack([lm68[..., 36:42, :].mean(axis=-2), lm68[..., 42:48, :].mean(axis=-2),
                     lm68[..., 30, :], lm68[..., 48, :], lm68[..., 54, :]], axis=-2)


def box_from_landmarks(lm68: np.ndarray) -> tuple[float, float, float, float]:
    """A HOG-like face box around 68 landmarks (to track a face between detections).

    Measured on the 38 faces HOG finds in ../shared/data/faces (photos and aligned crops): the
    HOG box is a square of 1.02 x the landmarks' larger extent, centred 0.09 x that extent above
    the centre of their bounding box (spread 0.05-0.08).
    """
    lm68 = np.asarray(lm68, dtype=np.float64)
    lo, hi = lm68.min(axis=0), lm68.max(axis=0)
    extent = float(max(hi - lo))
    cx, cy = (lo + hi) / 2
    cy -= 0.09 * extent
    half = 0.51 * extent
    return (float(cx - half), float(cy - half), float(cx + half), float(cy + half))


def _downscale(image: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    import cv2

    longest = max(image.shape[:2])
    if max_side <= 0 or longest <= max_side:
        return image, 1.0
    scale = max_side / longest
    small = cv2.resize(image, (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale))),
                       interpolation=cv2.INTER_AREA)
    return small, scale


@functools.lru_cache(maxsize=None)
def _dlib_model(name: str):
    """Each dlib model file is read once per process (the 68-point one is 100 MB, ~1 s): the
    models are read-only after loading, so detectors share them."""
    import dlib

    if name == "dlib_face_recognition_resnet_model_v1.dat":
        return dlib.face_recognition_model_v1(dlib_model_path(name))
    return dlib.shape_predictor(dlib_model_path(name))


class DlibLandmarker:
    """dlib's shape predictors and 128-d face descriptor on given boxes (no detection)."""

    def __init__(self):
        import dlib

        self._dlib = dlib
        self.predictor68 = _dlib_model("shape_predictor_68_face_landmarks.dat")

    @property
    def predictor5(self):
        return _dlib_model("shape_predictor_5_face_landmarks.dat")

    def _rect(self, box):
        # our boxes end one past the last pixel; dlib's rectangles include their right/bottom pixel
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        return self._dlib.rectangle(x0, y0, x1 - 1, y1 - 1)

    def landmarks68(self, rgb: np.ndarray, box) -> np.ndarray:
        """(68, 2) float64 landmarks of the face in ``box`` of an RGB uint8 image."""
        shape = self.predictor68(rgb, self._rect(box))
        return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float64)

    def dlib5(self, rgb: np.ndarray, box) -> np.ndarray:
        """dlib's own 5 points (two corners of each eye, the point under the nose), (5, 2)."""
        shape = self.predictor5(rgb, self._rect(box))
        return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float64)

    def descriptor(self, rgb: np.ndarray, box) -> np.ndarray:
        """dlib's 128-d face-recognition embedding (same person: distance under about 0.6)."""
        shape = self.predictor5(rgb, self._rect(box))
        encoder = _dlib_model("dlib_face_recognition_resnet_model_v1.dat")
        return np.asarray(encoder.compute_face_descriptor(rgb, shape), dtype=np.float64)


class DlibDetector:
    """dlib's HOG face detector (no model file) + the 68-point shape predictor.

    upsample: how many times dlib doubles the (downscaled) image before detecting; each doubling
    finds faces half as large (HOG's window is 80 px) and costs about 4x. max_side: detect on a
    copy whose longer side is at most this many pixels (0: full size). threshold: dlib's
    adjust_threshold (higher: fewer, surer faces). landmarks: compute the 68 landmarks (needed
    for the face mask); without them landmarks5 come from dlib's 5-point predictor through
    :func:`five_from_dlib5`.
    """

    def __init__(self, upsample: int = 1, max_side: int = 640, threshold: float = 0.0, landmarks: bool = True):
        import dlib

        if not isinstance(upsample, int) or upsample < 0:
            raise ValueError(f"upsample must be an int >= 0, got {upsample!r}")
        if not isinstance(max_side, int) or max_side < 0:
            raise ValueError(f"max_side must be an int >= 0 (0: no downscaling), got {max_side!r}")
        self.upsample, self.max_side, self.threshold, self.with68 = upsample, max_side, float(threshold), landmarks
        self.hog = dlib.get_frontal_face_detector()
        self.landmarker = DlibLandmarker()

    def boxes(self, image: np.ndarray) -> list[tuple[tuple[float, float, float, float], float]]:
        """[(box in full-image pixels, score)] from the HOG detector on the downscaled RGB copy."""
        import cv2

        small, scale = _downscale(check_image(image), self.max_side)
        rgb = cv2.cvtColor(small, cv2.COLOR_BGR2RGB)
        rects, scores, _ = self.hog.run(rgb, self.upsample, self.threshold)
        return [((r.left() / scale, r.top() / scale, (r.right() + 1) / scale, (r.bottom() + 1) / scale), float(s))
                for r, s in zip(rects, scores)]

    def face_in_box(self, rgb: np.ndarray, box, score: float = 1.0) -> Face:
        """Landmarks for a known box of the full-size RGB image (detection skipped: tracking)."""
        if self.with68:
            lm68 = self.landmarker.landmarks68(rgb, box)
            return Face(tuple(float(v) for v in box), score, five_from_68(lm68), lm68)
        return Face(tuple(float(v) for v in box), score, five_from_dlib5(self.landmarker.dlib5(rgb, box)), None)

    def detect(self, image: np.ndarray) -> list[Face]:
        """Every face of a BGR uint8 image, highest score first."""
        import cv2

        found = self.boxes(image)
        if not found:
            return []
        rgb = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        faces = [self.face_in_box(rgb, box, score) for box, score in found]
        return sorted(faces, key=lambda f: -f.score)

    def landmarks68(self, image: np.ndarray, box) -> np.ndarray:
        """(68, 2) landmarks of the face in ``box`` of a BGR uint8 image."""
        import cv2

        return self.landmarker.landmarks68(cv2.cvtColor(check_image(image), cv2.COLOR_BGR2RGB), box)


# Where dlib's 5-point predictor's points land in ArcFace's 112-pixel template: the mean over
# the 23 crops of ../shared/data/faces/aligned that HOG detects (each aligned with the 68-point
# derivation above; spread 1-3 px): image-right eye outer/inner corner, image-left eye
# outer/inner corner, the point under the nose.
_DLIB5_IN_ARCFACE112 = np.array([[80.49, 51.91], [66.65, 52.73], [31.87, 52.17], [45.39, 52.93], [55.51, 79.92]])


def five_from_dlib5(dlib5: np.ndarray) -> np.ndarray:
    """ArcFace's five points estimated from dlib's 5-point predictor: the similarity that maps
    dlib's points onto their mean template positions is inverted to place the template's five."""
    from .align import arcface_template, umeyama

    m = umeyama(np.asarray(dlib5, dtype=np.float64), _DLIB5_IN_ARCFACE112)  # image -> template
    inv = np.linalg.inv(np.vstack([m, [0, 0, 1]]))[:2]
    t = arcface_template(112)
    return t @ inv[:, :2].T + inv[:, 2]


def landmarks68(image: np.ndarray, box) -> np.ndarray:
    """(68, 2) landmarks of the face in ``box`` of a BGR uint8 image (a shared landmarker)."""
    global _SHARED
    if _SHARED is None:
        _SHARED = DlibLandmarker()
    import cv2

    return _SHARED.landmarks68(cv2.cvtColor(check_image(image), cv2.COLOR_BGR2RGB), box)


_SHARED: DlibLandmarker | None = None


def detect(image: np.ndarray, detector: Detector | None = None) -> list[Face]:
    """Faces of a BGR uint8 image with the given detector (default: a shared DlibDetector())."""
    global _DEFAULT
    if detector is None:
        if _DEFAULT is None:
            _DEFAULT = DlibDetector()
        detector = _DEFAULT
    return detector.detect(check_image(image))


_DEFAULT: DlibDetector | None = None


class OnnxDetector:
    """A face detector from an ONNX file the user provides (none ships offline).

    kind "yunet" (OpenCV's YuNet, through ``cv2.FaceDetectorYN``) or "scrfd" (insightface's SCRFD
    with keypoints, through onnxruntime); "auto" picks by file name (contains "scrfd" -> scrfd,
    else yunet). Both models give ArcFace's five points directly. landmarks68: also fit dlib's 68
    landmarks in each box (needed for the swap's face mask).
    """

    def __init__(self, model_path: str, kind: str = "auto", score_threshold: float = 0.6,
                 nms_threshold: float = 0.4, max_side: int = 640, landmarks68: bool = True,
                 input_size: int = 640):
        if not isinstance(model_path, (str, os.PathLike)):
            raise TypeError(f"model_path must be a path to an .onnx file, got {type(model_path).__name__}")
        model_path = os.fspath(model_path)
        if not os.path.isfile(model_path):
            raise FileNotFoundError(f"ONNX detector model not found: {model_path}")
        if kind == "auto":
            kind = "scrfd" if "scrfd" in os.path.basename(model_path).lower() else "yunet"
        if kind not in ("yunet", "scrfd"):
            raise ValueError(f"kind must be 'auto', 'yunet' or 'scrfd', got {kind!r}")
        if not 0 <= score_threshold <= 1:
            raise ValueError(f"score_threshold must be in [0, 1], got {score_threshold}")
        self.model_path, self.kind = model_path, kind
        self.score_threshold, self.nms_threshold, self.max_side = score_threshold, nms_threshold, max_side
        self.input_size = input_size
        self.landmarker = DlibLandmarker() if landmarks68 else None
        if kind == "yunet":
            import cv2

            try:
                self._yunet = cv2.FaceDetectorYN.create(model_path, "", (320, 320), score_threshold, nms_threshold, 5000)
            except cv2.error as e:
                raise ValueError(f"cannot load YuNet model {model_path}: {e}") from None
        else:
            import onnxruntime as ort

            try:
                self._session = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
            except Exception as e:  # onnxruntime raises its own exception types
                raise ValueError(f"cannot load SCRFD model {model_path}: {e}") from None
            outs = self._session.get_outputs()
            if len(outs) != 9:
                raise ValueError(f"SCRFD model {model_path} must have 9 outputs (scores, boxes, keypoints "
                                 f"for strides 8, 16, 32), it has {len(outs)}")
            self._input_name = self._session.get_inputs()[0].name

    def _raw(self, small: np.ndarray) -> list[tuple[np.ndarray, float, np.ndarray]]:
        """[(box x0y0x1y1, score, five points)] in the downscaled image's pixels."""
        if self.kind == "yunet":
            self._yunet.setInputSize((small.shape[1], small.shape[0]))
            _, rows = self._yunet.detect(small)
            if rows is None:
                return []
            return [(np.array([r[0], r[1], r[0] + r[2], r[1] + r[3]]), float(r[14]),
                     np.asarray(r[4:14], dtype=np.float64).reshape(5, 2)) for r in rows]
        return scrfd_decode(self._session, self._input_name, small, self.input_size,
                            self.score_threshold, self.nms_threshold)

    def detect(self, image: np.ndarray) -> list[Face]:
        import cv2

        small, scale = _downscale(check_image(image), self.max_side)
        raw = self._raw(small)
        rgb = cv2.cvtColor(image, cv2.COLOR_BGR2RGB) if raw and self.landmarker is not None else None
        faces = []
        for box, score, five in raw:
            box = tuple(float(v) / scale for v in box)
            lm68 = self.landmarker.landmarks68(rgb, box) if rgb is not None else None
            faces.append(Face(box, score, np.asarray(five, dtype=np.float64) / scale, lm68))
        return sorted(faces, key=lambda f: -f.score)


SCRFD_STRIDES = (8, 16, 32)


def scrfd_decode(session, input_name: str, bgr: np.ndarray, input_size: int, score_threshold: float,
                 nms_threshold: float) -> list[tuple[np.ndarray, float, np.ndarray]]:
    """Run an SCRFD (keypoint) model and decode its anchor-free outputs.

    The image is letterboxed (top-left) into input_size^2, normalised (x - 127.5) / 128 as RGB.
    Outputs (insightface's export order): scores for strides 8, 16, 32, then boxes, then
    keypoints; each location of a stride's grid has 2 anchors; a box is the distances
    (left, top, right, bottom) from the anchor centre and keypoints are offsets, both in units
    of the stride.
    """
    import cv2

    h, w = bgr.shape[:2]
    scale = input_size / max(h, w)
    resized = cv2.resize(bgr, (max(1, round(w * scale)), max(1, round(h * scale))))
    canvas = np.zeros((input_size, input_size, 3), dtype=np.uint8)
    canvas[:resized.shape[0], :resized.shape[1]] = resized
    blob = cv2.dnn.blobFromImage(canvas, 1.0 / 128, (input_size, input_size), (127.5, 127.5, 127.5), swapRB=True)
    outs = session.run(None, {input_name: blob})
    boxes, scores, kps = [], [], []
    for i, stride in enumerate(SCRFD_STRIDES):
        n = input_size // stride
        ys, xs = np.mgrid[:n, :n]
        centres = np.repeat(np.stack([xs, ys], -1).reshape(-1, 2) * stride, 2, axis=0).astype(np.float64)
        s = np.asarray(outs[i]).reshape(-1)
        b = np.asarray(outs[i + 3]).reshape(-1, 4) * stride
        k = np.asarray(outs[i + 6]).reshape(-1, 10) * stride
        if not (len(s) == len(b) == len(k) == len(centres)):
            raise ValueError(f"SCRFD output for stride {stride} has {len(s)} scores, {len(b)} boxes, "
                             f"{len(k)} keypoint sets; expected {len(centres)} each for input {input_size}")
        keep = s >= score_threshold
        c = centres[keep]
        boxes.append(np.concatenate([c - b[keep][:, :2], c + b[keep][:, 2:]], axis=1))
        scores.append(s[keep])
        kps.append((k[keep].reshape(-1, 5, 2) + c[:, None, :]))
    boxes, scores, kps = np.concatenate(boxes), np.concatenate(scores), np.concatenate(kps)
    if not len(scores):
        return []
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
    keep = cv2.dnn.NMSBoxes(xywh.tolist(), scores.tolist(), score_threshold, nms_threshold)
    keep = np.asarray(keep, dtype=np.int64).reshape(-1)
    return [(boxes[j] / scale, float(scores[j]), kps[j] / scale) for j in keep]


def select_faces(faces: Sequence[Face], mode: str = "all") -> list[Face]:
    """'all' (as given) or 'largest' (the one face with the largest box); 'reference' is the
    Swapper's job since it needs embeddings."""
    if mode == "all":
        return list(faces)
    if mode == "largest":
        return [max(faces, key=lambda f: f.area)] if faces else []
    raise ValueError(f"mode must be 'all' or 'largest', got {mode!r}")
