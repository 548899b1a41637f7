"""The Swapper: detect -> align -> generator -> paste back, for images and video.

All faces of all frames in a batch go through the generator in one call, and the batch is
pasted back with one ``ops.paste_faces`` call. The target face mask fed to the generator is the
convex hull of the face's 68 landmarks (with forehead) in crop coordinates, like training's.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
import torch

from .align import MODES, estimate_affine, transform_points, warp_face
from .detect import DlibDetector, Face, check_image
from .masks import hull_mask, hull_points
from .profile import StageProfile
from .tracking import SMOOTHING, TRACKING, FaceTracker

FACE_MODES = ("all", "largest", "reference")


@dataclass
class SwapOptions:
    """How faces are found, chosen, tracked and pasted (defaults suit 640-pixel video)."""

    faces: str = "all"  # all | largest | reference
    threshold: float = 0.6  # dlib embedding distance under which a face matches the reference
    detect_every: int = 1  # video: detect every k frames, track landmarks in between
    detect_when_empty: bool = False  # video: detect every frame while no face is tracked
    tracking: str = "refit"  # video, between detections: "refit" 68 landmarks or optical "flow"
    smoothing: str = "ema"  # none | ema | one_euro (landmarks over time)
    smooth_alpha: float = 0.6  # ema: weight of the newest landmarks
    one_euro_min_cutoff: float = 1.0
    one_euro_beta: float = 0.05
    detect_max_side: int = 640  # detect on a copy at most this large (0: full size)
    detect_upsample: int = 1  # dlib upsampling: 1 finds faces down to ~40 px of the detection copy
    batch_frames: int = 8  # video: frames per generator / paste_faces batch
    align_mode: str = "arcface"  # the template training used
    feather: int | None = None  # paste_faces feather (crop pixels); None: resolution // 16
    mask_grow: int | None = None  # paste mask: hull dilated by this (crop pixels); None: resolution // 16
    label: str | None = None  # visible label text drawn on every output, or None
    queue_size: int = 16  # bounded queues between the pipeline's threads
    channels_last: bool = True  # NHWC generator: ~1.4x faster convolutions on CPU (oneDNN)

    def validate(self) -> "SwapOptions":
        if self.faces not in FACE_MODES:
            raise ValueError(f"faces must be one of {FACE_MODES}, got {self.faces!r}")
        if not 0 < self.threshold < 2:
            raise ValueError(f"threshold must be in (0, 2), got {self.threshold}")
        for name in ("detect_every", "batch_frames", "queue_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        if self.smoothing not in SMOOTHING:
            raise ValueError(f"smoothing must be one of {SMOOTHING}, got {self.smoothing!r}")
        if not 0 < self.smooth_alpha <= 1:
            raise ValueError(f"smooth_alpha must be in (0, 1], got {self.smooth_alpha}")
        if self.tracking not in TRACKING:
            raise ValueError(f"tracking must be one of {TRACKING}, got {self.tracking!r}")
        if self.align_mode not in MODES:
            raise ValueError(f"align_mode must be one of {MODES}, got {self.align_mode!r}")
        return self


@dataclass
class SwapStats:
    """What a swap did; ``summary()`` is the line the CLI prints at the end."""

    frames: int = 0
    faces_swapped: int = 0
    frames_without_face: int = 0
    profile: StageProfile = field(default_factory=StageProfile)

    def summary(self) -> str:
        fps = self.frames / self.profile.wall if self.profile.wall > 0 else 0.0
        line = (f"swapped {self.faces_swapped} face(s) in {self.frames} frame(s) "
                f"({self.profile.wall:.2f} s, {fps:.2f} fps)")
        if self.frames_without_face:
            line += f"; {self.frames_without_face} frame(s) had no face to swap and were left unchanged"
        return line


def _device(name) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be cpu, cuda, cuda:N or auto, got {name!r}") from None
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be cpu, cuda, cuda:N or auto, got {name!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device cuda was asked for, but torch sees no CUDA GPU")
    return dev


def read_image(path, what: str = "image") -> np.ndarray:
    """BGR uint8 image from a path (or an array passed through), with errors naming the file."""
    import cv2

    if isinstance(path, np.ndarray):
        return check_image(path, what)
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{what} must be a path or a BGR uint8 array, got {type(path).__name__}")
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} not found: {path}")
    img = cv2.imread(path, cv2.IMREAD_COLOR)  # grayscale/RGBA files come back as 3-channel BGR
    if img is None:
        raise ValueError(f"{what} {path} could not be read as an image")
    return img


class Swapper:
    """Face swapping with a trained WSC-swap generator.

    checkpoint: a training checkpoint (step directory or run directory, see
    ``train.checkpoint.resolve_checkpoint``). device: "auto", "cpu", "cuda", "cuda:N". backend: the
    fused-op backend for the generator and paste_faces. dtype: generator precision (float16 and
    bfloat16 need CUDA). detector: any ``detect.Detector`` returning faces with 68 landmarks
    (default: ``DlibDetector`` with the options' detection size and upsampling).
    """

    def __init__(self, checkpoint, device="auto", backend: str = "auto", dtype: torch.dtype = torch.float32,
                 options: SwapOptions | None = None, detector=None):
        from ..models import load_identity_encoder
        from ..ops import BACKENDS
        from ..train.checkpoint import load_generator

        self.options = (options or SwapOptions()).validate()
        self.device = _device(device)
        if backend not in BACKENDS + ("auto",):
            raise ValueError(f"backend must be one of {BACKENDS + ('auto',)}, got {backend!r}")
        if dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise TypeError(f"dtype must be torch.float32, float16 or bfloat16, got {dtype}")
        if dtype != torch.float32 and self.device.type != "cuda":
            raise ValueError(f"dtype {dtype} needs a CUDA device; on {self.device} use torch.float32")
        if checkpoint is None or not os.path.exists(os.fspath(checkpoint)):
            raise FileNotFoundError(f"checkpoint not found: {checkpoint}")
        self.backend, self.dtype = backend, dtype
        gen, cfg = load_generator(os.fspath(checkpoint), device=str(self.device))
        self.generator = gen.to(device=self.device, dtype=dtype).eval()
        self.memory_format = torch.channels_last if self.options.channels_last else torch.contiguous_format
        self.generator.to(memory_format=self.memory_format)
        self.generator.set_backend(backend)
        self.config = cfg
        self.resolution = int(gen.cfg.resolution)
        self.identity = load_identity_encoder(cfg.model.identity_checkpoint, cfg.model.identity_arch,
                                              seed=cfg.run.seed).to(self.device).eval()
        o = self.options
        self.detector = detector or DlibDetector(upsample=o.detect_upsample, max_side=o.detect_max_side)
        self.feather = o.feather if o.feather is not None else max(1, self.resolution // 16)
        self.mask_grow = o.mask_grow if o.mask_grow is not None else max(1, self.resolution // 16)
        self.z_id: torch.Tensor | None = None
        self.reference: np.ndarray | None = None

    # ------------------------------------------------------------ identity
    def _largest_face(self, img: np.ndarray, name: str) -> Face:
        faces = self.detector.detect(img)
        if not faces:
            raise ValueError(f"no face found in {name}")
        return max(faces, key=lambda f: f.area)

    def set_source(self, images) -> torch.Tensor:
        """The source identity from one or more images (paths or BGR uint8 arrays): each image's
        largest face is aligned and embedded; the embeddings are averaged and re-normalised."""
        if isinstance(images, (str, os.PathLike, np.ndarray)):
            images = [images]
        images = list(images)
        if not images:
            raise ValueError("images must hold at least one source image")
        crops = []
        for i, src in enumerate(images):
            name = f"source image {os.fspath(src)}" if isinstance(src, (str, os.PathLike)) else f"source image #{i}"
            img = read_image(src, name)
            face = self._largest_face(img, name)
            crops.append(warp_face(img, estimate_affine(face.landmarks5, self.resolution, self.options.align_mode),
                                   self.resolution))
        x = self._to_tensor(crops).float()
        with torch.inference_mode():
            emb = self.identity(x)
        z = torch.nn.functional.normalize(emb.mean(dim=0, keepdim=True), dim=1)
        self.z_id = z.to(self.dtype)
        return self.z_id

    def set_reference(self, image) -> np.ndarray:
        """The face to swap when options.faces == 'reference': its dlib 128-d embedding."""
        import cv2

        name = f"reference image {os.fspath(image)}" if isinstance(image, (str, os.PathLike)) else "reference image"
        img = read_image(image, name)
        face = self._largest_face(img, name)
        self.reference = self.detector.landmarker.descriptor(cv2.cvtColor(img, cv2.COLOR_BGR2RGB), face.box)
        return self.reference

    def _matches_reference(self, rgb: np.ndarray, face: Face) -> bool:
        d = self.detector.landmarker.descriptor(rgb, face.box)
        return float(np.linalg.norm(d - self.reference)) < self.options.threshold

    def select(self, frame_bgr: np.ndarray, faces: Sequence[Face]) -> list[Face]:
        """The faces to swap among those found, by options.faces."""
        import cv2

        mode = self.options.faces
        if mode == "all" or not faces:
            return list(faces)
        if mode == "largest":
            return [max(faces, key=lambda f: f.area)]
        if self.reference is None:
            raise ValueError("faces='reference' needs set_reference(image) first")
        rgb = cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2RGB)
        return [f for f in faces if self._matches_reference(rgb, f)]

    # ------------------------------------------------------------ the batch
    def _to_tensor(self, crops_bgr: list[np.ndarray]) -> torch.Tensor:
        """(K,R,R,3) BGR uint8 crops -> (K,3,R,R) RGB float in [0,1] on the device."""
        x = torch.from_numpy(np.stack(crops_bgr)).to(self.device, non_blocking=True)
        return x.permute(0, 3, 1, 2).flip(1).to(self.dtype).div_(255)

    def swap_faces(self, frames: list[np.ndarray], faces: list[list[Face]], profile: StageProfile | None = None
                   ) -> list[np.ndarray]:
        """Swap the given faces of a batch of BGR frames (same size): one generator call and one
        paste_faces call for the whole batch. Returns new frames (inputs untouched)."""
        from ..ops import paste_faces

        if self.z_id is None:
            raise ValueError("no source identity: call set_source(images) first")
        prof = profile or StageProfile()
        r = self.resolution
        if not any(faces):
            return [f.copy() for f in frames]
        with prof.stage("align"):
            crops, masks, paste_masks, affines, idx = [], [], [], [], []
            for b, (frame, fs) in enumerate(zip(frames, faces)):
                for f in fs:
                    if f.landmarks68 is None:
                        raise ValueError("the swap needs 68 landmarks per face (for its mask); the detector gave none")
                    m = estimate_affine(f.landmarks5, r, self.options.align_mode)
                    crops.append(warp_face(frame, m, r))
                    lm = transform_points(m, f.landmarks68)
                    masks.append(hull_mask(lm, r))
                    paste_masks.append(grown_hull_mask(lm, r, self.mask_grow))
                    affines.append(m)
                    idx.append(b)
            xt = self._to_tensor(crops).contiguous(memory_format=self.memory_format)
            mt = torch.from_numpy(np.stack(masks))[:, None].to(self.device, self.dtype)
            mt = mt.contiguous(memory_format=self.memory_format)
            paste_mask = torch.from_numpy(np.stack(paste_masks))[:, None].to(self.device)
        with prof.stage("model"), torch.inference_mode():
            y = self.generator(xt, mt, self.z_id.expand(len(crops), -1)).result
        with prof.stage("paste"), torch.inference_mode():
            frames_t = torch.from_numpy(np.stack(frames)).to(self.device)
            out = paste_faces(frames_t, y.flip(1).float(), paste_mask,
                              torch.from_numpy(np.stack(affines)).to(self.device),
                              torch.tensor(idx, dtype=torch.int64, device=self.device),
                              feather=self.feather, backend=self.backend)
            out = out.cpu().numpy()
        return list(out)

    # ------------------------------------------------------------ images
    def swap_image(self, image, profile: StageProfile | None = None) -> np.ndarray:
        """Swap the selected faces of one image (BGR uint8 array or path); returns a new image
        (a copy of the input if no face was found)."""
        out, _ = self._swap_image(read_image(image, "target image"), profile)
        return out

    def _swap_image(self, img: np.ndarray, profile: StageProfile | None):
        from .provenance import draw_label

        prof = profile or StageProfile()
        with prof.stage("detect"):
            faces = self.select(img, self.detector.detect(img))
        out = self.swap_faces([img], [faces], prof)[0]
        if self.options.label:
            draw_label(out, self.options.label)
        return out, len(faces)

    def swap_image_file(self, src: str, dst: str) -> SwapStats:
        """Read ``src``, swap, write ``dst`` (PNG/JPEG, tagged, atomically)."""
        from .provenance import IMAGE_SUFFIXES, write_image

        if os.path.splitext(dst)[1].lower() not in IMAGE_SUFFIXES:
            raise ValueError(f"output image must end in one of {IMAGE_SUFFIXES}, got {dst!r}")
        check_output_path(dst)
        stats = SwapStats()
        t0 = time.perf_counter()
        with stats.profile.stage("decode"):
            img = read_image(src, "target image")
        out, n = self._swap_image(img, stats.profile)
        with stats.profile.stage("encode"):
            write_image(dst, out)
        stats.frames, stats.faces_swapped, stats.frames_without_face = 1, n, int(n == 0)
        stats.profile.frames, stats.profile.wall = 1, time.perf_counter() - t0
        return stats

    # ------------------------------------------------------------ video
    def tracker(self, fps: float = 30.0) -> FaceTracker:
        o = self.options
        return FaceTracker(self.detector, o.detect_every, o.smoothing, o.smooth_alpha, fps,
                           o.one_euro_min_cutoff, o.one_euro_beta, o.detect_when_empty, o.tracking)

    def find_faces(self, frame: np.ndarray, tracker: FaceTracker, profile: StageProfile) -> list[Face]:
        """One video frame's faces to swap: track (detect every k frames), then select."""
        import cv2

        tracks = tracker.update(frame, profile)
        if self.options.faces == "reference" and tracks:
            if self.reference is None:
                raise ValueError("faces='reference' needs set_reference(image) first")
            pending = [tr for tr in tracks if tr.selected is None]
            if pending:  # once per track, not per frame: the embedding costs more than detection
                with profile.stage("detect"):
                    rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
                    for tr in pending:
                        tr.selected = self._matches_reference(rgb, tr.extra["face"])
            return [tr.extra["face"] for tr in tracks if tr.selected]
        if self.options.faces == "largest" and tracks:
            return [max((tr.extra["face"] for tr in tracks), key=lambda f: f.area)]
        return [tr.extra["face"] for tr in tracks]

    def render_batch(self, frames: list[np.ndarray], faces: list[list[Face]], profile: StageProfile
                     ) -> list[np.ndarray]:
        """Swap (one model + one paste_faces call for the batch), then the optional label."""
        from .provenance import draw_label

        outs = self.swap_faces(frames, faces, profile)
        if self.options.label:
            for o in outs:
                draw_label(o, self.options.label)
        return outs

    def process_batch(self, frames: list[np.ndarray], tracker: FaceTracker, profile: StageProfile
                      ) -> tuple[list[np.ndarray], list[int]]:
        """Consecutive video frames: track, select, swap, label (what the threaded pipeline does
        in two stages). Returns the output frames and the number of faces swapped in each."""
        chosen = [self.find_faces(frame, tracker, profile) for frame in frames]
        return self.render_batch(frames, chosen, profile), [len(c) for c in chosen]

    def swap_video(self, src: str, dst: str, progress: bool = True, max_frames: int = 0) -> SwapStats:
        """Swap every frame of a video file into ``dst`` (.mp4/.mov/.m4v), keeping fps and size,
        tagged, written atomically; audio copied when ffmpeg is on PATH (else a warning)."""
        from .video import swap_video

        return swap_video(self, src, dst, progress=progress, max_frames=max_frames)

    def swap_frames(self, frames: Iterable[np.ndarray], fps: float = 30.0) -> Iterable[np.ndarray]:
        """Swap an iterable of frames one batch at a time (no threads): a generator of frames."""
        tracker, prof, batch = self.tracker(fps), StageProfile(), []
        for frame in frames:
            batch.append(check_image(frame, "frame"))
            if len(batch) == self.options.batch_frames:
                yield from self.process_batch(batch, tracker, prof)[0]
                batch = []
        if batch:
            yield from self.process_batch(batch, tracker, prof)[0]


def grown_hull_mask(landmarks68: np.ndarray, size: int, grow: int) -> np.ndarray:
    """The paste mask: the same hull as :func:`masks.hull_mask`, grown by ``grow`` pixels (the
    filled hull plus its outline drawn 2*grow+1 wide, i.e. its dilation by a disc), so that
    paste_faces' feathering (erode, blur) fades out around the face, not inside it. Drawing the
    outline costs ~0.1 ms where a 33x33 max filter on the mask cost ~80 ms a face at 256^2."""
    import cv2

    hull = cv2.convexHull(hull_points(landmarks68).astype(np.float32)).reshape(-1, 2)
    pts = np.round(hull * 16).astype(np.int32)  # 4 fractional bits
    mask = np.zeros((size, size), np.uint8)
    cv2.fillConvexPoly(mask, pts, 255, lineType=cv2.LINE_8, shift=4)
    if grow > 0:
        cv2.polylines(mask, [pts], True, 255, thickness=2 * grow + 1, lineType=cv2.LINE_8, shift=4)
    return mask.astype(np.float32) / 255.0


def check_output_path(path: str) -> None:
    """Fail early (before any work) when ``path``'s folder is missing or not writable."""
    import tempfile

    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"output folder does not exist: {folder}")
    if os.path.isdir(path):
        raise IsADirectoryError(f"output {path} is a directory")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".wscswap-check-", dir=folder)
    except OSError as e:
        raise PermissionError(f"output {path} cannot be written: {e.strerror}") from None
    os.close(fd)
    os.unlink(tmp)
