"""Faces across video frames: detection every k frames, landmark tracking in between, and
temporal smoothing of the landmarks (EMA or the One-Euro filter).

Tracking ("refit", the default) re-fits dlib's 68 landmarks in a box derived from the face's
previous landmarks (:func:`detect.box_from_landmarks`): the shape predictor costs about 2 ms a
face against 30-100 ms for a HOG detection of a 640-pixel frame. "flow" moves the previous
landmarks with pyramidal Lucas-Kanade optical flow instead (points that fail follow the median
motion; a face whose points mostly fail is dropped). On detection frames each new face continues the
track whose box it overlaps most (IoU > 0.3), so its filter state and its reference-face
decision carry over; unmatched tracks end.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .detect import DlibDetector, Face, box_from_landmarks, five_from_68

SMOOTHING = ("none", "ema", "one_euro")
TRACKING = ("refit", "flow")


class EmaFilter:
    """x_s = alpha * x + (1 - alpha) * x_s_prev (alpha = 1: no smoothing)."""

    def __init__(self, alpha: float):
        if not 0 < alpha <= 1:
            raise ValueError(f"smooth_alpha must be in (0, 1], got {alpha}")
        self.alpha, self.state = alpha, None

    def __call__(self, x: np.ndarray, t: float) -> np.ndarray:
        self.state = x.copy() if self.state is None else self.alpha * x + (1 - self.alpha) * self.state
        return self.state


class OneEuroFilter:
    """Casiez et al.'s One-Euro filter, per coordinate: a low-pass whose cutoff rises with the
    speed, so a still face does not jitter and a moving one does not lag.

    cutoff = min_cutoff + beta * |dx/dt| (Hz); alpha = 1 / (1 + 1 / (2 pi cutoff dt)).
    """

    def __init__(self, min_cutoff: float = 1.0, beta: float = 0.05, d_cutoff: float = 1.0):
        if min_cutoff <= 0 or beta < 0 or d_cutoff <= 0:
            raise ValueError(f"One-Euro needs min_cutoff > 0, beta >= 0, d_cutoff > 0; got {min_cutoff}, {beta}, {d_cutoff}")
        self.min_cutoff, self.beta, self.d_cutoff = min_cutoff, beta, d_cutoff
        self.x = self.dx = self.t = None

    @staticmethod
    def _alpha(cutoff, dt):
        return 1.0 / (1.0 + 1.0 / (2 * math.pi * cutoff * dt))

    def __call__(self, x: np.ndarray, t: float) -> np.ndarray:
        if self.x is None:
            self.x, self.dx, self.t = x.copy(), np.zeros_like(x), t
            return self.x
        dt = max(t - self.t, 1e-6)
        a_d = self._alpha(self.d_cutoff, dt)
        self.dx = a_d * (x - self.x) / dt + (1 - a_d) * self.dx
        a = self._alpha(self.min_cutoff + self.beta * np.abs(self.dx), dt)
        self.x = a * x + (1 - a) * self.x
        self.t = t
        return self.x


class _NoFilter:
    def __call__(self, x, t):
        return x


def make_filter(kind: str, alpha: float = 0.6, min_cutoff: float = 1.0, beta: float = 0.05):
    if kind == "none":
        return _NoFilter()
    if kind == "ema":
        return EmaFilter(alpha)
    if kind == "one_euro":
        return OneEuroFilter(min_cutoff, beta)
    raise ValueError(f"smoothing must be one of {SMOOTHING}, got {kind!r}")


def iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


@dataclass
class Track:
    raw68: np.ndarray  # the last fitted (unsmoothed) landmarks: the next frame's box comes from them
    box: tuple
    score: float
    filter: object
    selected: bool | None = None  # reference-face decision, made once per track
    extra: dict = field(default_factory=dict)


class FaceTracker:
    """Faces of consecutive frames: detection every ``detect_every`` frames, tracking between."""

    def __init__(self, detector: DlibDetector, detect_every: int = 1, smoothing: str = "ema",
                 alpha: float = 0.6, fps: float = 30.0, min_cutoff: float = 1.0, beta: float = 0.05,
                 detect_when_empty: bool = False, tracking: str = "refit"):
        if not isinstance(detect_every, int) or detect_every < 1:
            raise ValueError(f"detect_every must be an int >= 1, got {detect_every!r}")
        make_filter(smoothing, alpha, min_cutoff, beta)  # validates
        self.detector, self.detect_every = detector, detect_every
        # False: a strict schedule (detection cost / k even in stretches without a face; a face
        # that appears waits up to k-1 frames). True: detect every frame while nothing is tracked.
        self.detect_when_empty = detect_when_empty
        if tracking not in TRACKING:
            raise ValueError(f"tracking must be one of {TRACKING}, got {tracking!r}")
        self.tracking = tracking
        self._prev_gray = None
        self.smoothing, self.alpha, self.min_cutoff, self.beta = smoothing, alpha, min_cutoff, beta
        self.fps = fps if fps and fps > 0 else 30.0
        self.tracks: list[Track] = []
        self.index = 0

    def _new_filter(self):
        return make_filter(self.smoothing, self.alpha, self.min_cutoff, self.beta)

    def update(self, frame_bgr: np.ndarray, profile=None) -> list[Track]:
        """The tracks of this frame (smoothed landmarks in ``track.extra['face']``)."""
        import cv2

        t = self.index / self.fps
        gray = cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2GRAY) if self.tracking == "flow" else None
        detect_now = self.index % self.detect_every == 0 or (self.detect_when_empty and not self.tracks)
        self.index += 1
        if detect_now:
            faces = _timed(profile, "detect", self.detector.detect, frame_bgr)
            tracks = []
            free = list(self.tracks)
            for f in faces:
                best = max(free, key=lambda tr: iou(tr.box, f.box), default=None)
                if best is not None and iou(best.box, f.box) > 0.3:
                    free.remove(best)
                    best.raw68, best.box, best.score = f.landmarks68, f.box, f.score
                    tracks.append(best)
                else:
                    tracks.append(Track(f.landmarks68, f.box, f.score, self._new_filter()))
            self.tracks = tracks
        else:
            def refit():
                rgb = cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2RGB)
                h, w = frame_bgr.shape[:2]
                kept = []
                for tr in self.tracks:
                    tr.box = box_from_landmarks(tr.raw68)
                    # a face leaving the frame: stop tracking it once its box is mostly outside
                    if iou(tr.box, (max(tr.box[0], 0), max(tr.box[1], 0), min(tr.box[2], w), min(tr.box[3], h))) < 0.5:
                        continue
                    tr.raw68 = self.detector.landmarker.landmarks68(rgb, tr.box)
                    kept.append(tr)
                self.tracks = kept

            def flow():
                kept = []
                for tr in self.tracks:
                    pts = tr.raw68.astype(np.float32).reshape(-1, 1, 2)
                    new, status, _ = cv2.calcOpticalFlowPyrLK(self._prev_gray, gray, pts, None,
                                                              winSize=(21, 21), maxLevel=3)
                    ok = status.reshape(-1).astype(bool)
                    if ok.mean() < 0.5:
                        continue
                    moved = new.reshape(-1, 2).astype(np.float64)
                    shift = np.median(moved[ok] - tr.raw68[ok], axis=0)
                    tr.raw68 = np.where(ok[:, None], moved, tr.raw68 + shift)
                    tr.box = box_from_landmarks(tr.raw68)
                    kept.append(tr)
                self.tracks = kept

            if self.tracks:
                _timed(profile, "detect", flow if self.tracking == "flow" else refit)
        self._prev_gray = gray
        for tr in self.tracks:
            lm = tr.filter(tr.raw68, t)
            tr.extra["face"] = Face(tr.box, tr.score, five_from_68(lm), lm)
        return self.tracks


def _timed(profile, stage, fn, *args):
    if profile is None:
        return fn(*args)
    with profile.stage(stage):
        return fn(*args)
