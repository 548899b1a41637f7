"""Training data: a folder of aligned face crops, source/target pairs, augmentation, and a loader
whose batches depend only on (seed, step).

Folder layout (``root``):
  - flat: ``root/*.jpg`` -- every image is its own identity, so a same-identity pair is the same
    image twice (the reconstruction target);
  - per identity: ``root/<identity>/*.jpg`` -- same-identity pairs draw the source from the
    target's sub-folder (any of its images, the target included). Images directly in ``root``
    beside sub-folders are each their own identity. Deeper folders belong to their top sub-folder.

Images (.jpg .jpeg .png .bmp .webp) are aligned crops on the ArcFace template (any square size,
e.g. SimSwap's 224 crops), resized to ``resolution``. Grayscale images are replicated to RGB; the
alpha channel of RGBA images is dropped; 16-bit images are scaled to 8 bits; EXIF orientation is
not applied (aligned crops are written upright). A non-square image is
an error naming the file (an aligned crop is square; resizing it would distort the face). A file
that is not a readable image is an error naming it: found at construction when its signature is
not an image's (and, without a mask folder, when it does not decode), else when it is loaded. Such
files are not skipped, because skipping would change which image every later index means.

Masks: with ``mask_root``, ``mask_root/<same relative path and stem>.{png,jpg,jpeg,bmp}``, grayscale
(a colour mask is converted to gray), 255 = face; every image must have one. Without it, the mask
is the convex hull of dlib's 68 landmarks (:func:`wscswap_fast.pipeline.masks.hull_mask`), the
landmarks found once per image and cached in ``cache_dir`` (default ``~/.cache/wscswap_fast``;
nothing is written into the data folder, which may be read-only). The crops are aligned, so no
face detection is needed: dlib's shape predictor runs on a fixed box derived from the ArcFace
template (:data:`ALIGNED_FACE_BOX`) -- on the 24 shared crops it lands as close to the template's
eye, nose and mouth points as dlib's HOG detector boxes do, and it never misses a face (HOG found
none in one of them).

Randomness: every item draws from ``numpy.random.default_rng([seed, epoch, index, tag])``, and the
batch order from a per-epoch permutation, so a batch depends only on (seed, step): not on the
number of workers, nor on where a run was resumed.
"""
from __future__ import annotations

import hashlib
import multiprocessing
import os
import warnings
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..pipeline.masks import hull_mask

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
MASK_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
# The box (left, top, right, bottom) dlib's 68-point predictor runs on, in the 112-pixel ArcFace
# template's coordinates (multiplied by S/112 for an S-pixel crop): the mean HOG detection on
# aligned 224 crops, enlarged slightly upward, where the predicted eyes, nose and mouth corners
# land closest to the template's five points.
ALIGNED_FACE_BOX = (15.0, 25.0, 97.0, 107.0)
LANDMARK_CACHE_VERSION = "dlib68-box-v1-fraction"  # part of every cache key: change it when the method changes
_TAG_ITEM, _TAG_EPOCH = 0x17E4, 0x0E70C  # keep the item and permutation streams apart


def default_cache_dir() -> str:
    return os.path.join(os.path.expanduser("~"), ".cache", "wscswap_fast")


def read_image(path: str | os.PathLike) -> np.ndarray:
    """An image file as RGB uint8 (H, W, 3): grayscale replicated, alpha dropped, 16 bits scaled.
    ValueError naming the file when it cannot be decoded."""
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ValueError(f"cannot read image {path}: not an image file, or corrupt")
    img = _to_uint8(img, path)
    if img.ndim == 2 or img.shape[2] == 1:
        return cv2.cvtColor(img.reshape(img.shape[:2]), cv2.COLOR_GRAY2RGB)
    if img.shape[2] == 3:
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    if img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    raise ValueError(f"image {path} has {img.shape[2]} channels; expected 1 (gray), 3 (colour) or 4 (with alpha)")


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """A mask file as float32 (H, W) in [0, 1] (a colour mask is converted to gray)."""
    import cv2

    m = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if m is None:
        raise ValueError(f"cannot read mask {path}: not an image file, or corrupt")
    scale = 65535.0 if m.dtype == np.uint16 else 255.0
    if m.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"mask {path} has pixel type {m.dtype}; expected 8 or 16 bits")
    if m.ndim == 3 and m.shape[2] == 1:
        m = m[:, :, 0]
    elif m.ndim == 3:
        m = cv2.cvtColor(m[:, :, :3], cv2.COLOR_BGR2GRAY)
    return m.astype(np.float32) / scale


def _to_uint8(img: np.ndarray, path) -> np.ndarray:
    if img.dtype == np.uint8:
        return img
    if img.dtype == np.uint16:
        return (img.astype(np.float32) / 257.0 + 0.5).astype(np.uint8)
    raise ValueError(f"image {path} has pixel type {img.dtype}; expected 8 or 16 bits")


def _check_square(shape, path) -> int:
    h, w = shape[:2]
    if h != w:
        raise ValueError(f"image {path} is {w}x{h}: aligned face crops must be square (the ArcFace "
                         "template is square; align the face first, e.g. with wscswap_fast.pipeline.align)")
    return h


def _resize(img: np.ndarray, size: int) -> np.ndarray:
    import cv2

    if img.shape[0] == size:
        return img
    interp = cv2.INTER_AREA if img.shape[0] > size else cv2.INTER_LINEAR  # area: no aliasing when shrinking
    return cv2.resize(img, (size, size), interpolation=interp)


def _dlib_model() -> str:
    try:
        from ..pipeline.detect import dlib_model_path
    except ImportError:  # pipeline.detect not present: the same file, found the same way
        from ..models.eos_comparison import dlib_landmark_model

        return dlib_landmark_model()
    return dlib_model_path("shape_predictor_68_face_landmarks.dat")


class AlignedLandmarks:
    """dlib's 68 landmarks of an aligned crop, from the predictor on :data:`ALIGNED_FACE_BOX`."""

    def __init__(self):
        import dlib

        self._dlib = dlib
        self.predictor = dlib.shape_predictor(_dlib_model())

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        """(68, 2) float32 pixel positions in an S x S RGB uint8 crop."""
        s = rgb.shape[0] / 112.0
        box = self._dlib.rectangle(*(int(round(v * s)) for v in ALIGNED_FACE_BOX))
        shape = self.predictor(np.ascontiguousarray(rgb), box)
        return np.array([(shape.part(i).x, shape.part(i).y) for i in range(68)], dtype=np.float32)


def _cache_key(path: str) -> str:
    st = os.stat(path)
    text = f"{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}|{LANDMARK_CACHE_VERSION}"
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def _atomic_save_npy(path: str, array: np.ndarray) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "wb") as f:
            np.save(f, array)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def cached_landmarks(paths: Sequence[str], cache_dir: Optional[str] = None, progress: bool = False) -> np.ndarray:
    """(N, 68, 2) float32 landmarks of aligned crops, as fractions of the crop's side ((pixel + 0.5)
    / side, so they serve any resolution the crop is resized to), computed once per
    file and cached under ``cache_dir/landmarks68/<sha1 of path|size|mtime|method>.npy``.
    A cache that cannot be written only costs recomputation (a warning says so)."""
    folder = os.path.join(cache_dir or default_cache_dir(), "landmarks68")
    writable = True
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        warnings.warn(f"landmark cache {folder} cannot be created ({e}); landmarks are recomputed each run")
        writable = False
    out = np.zeros((len(paths), 68, 2), dtype=np.float32)
    todo = []
    for i, p in enumerate(paths):
        f = os.path.join(folder, _cache_key(p) + ".npy")
        try:
            lm = np.load(f, allow_pickle=False)
            if lm.shape == (68, 2) and np.isfinite(lm).all():
                out[i] = lm
                continue
        except (OSError, ValueError):
            pass  # absent or damaged: recompute
        todo.append((i, p, f))
    if todo:
        landmarker = AlignedLandmarks()
        it = todo
        if progress:
            from tqdm import tqdm

            it = tqdm(todo, desc="face masks (dlib landmarks, cached)", unit="img")
        for i, p, f in it:
            rgb = read_image(p)
            _check_square(rgb.shape, p)
            out[i] = (landmarker(rgb) + 0.5) / rgb.shape[0]  # pixel centres -> fractions
            if writable:
                try:
                    _atomic_save_npy(f, out[i])
                except OSError as e:
                    warnings.warn(f"landmark cache {folder} is not writable ({e}); landmarks are recomputed each run")
                    writable = False
    return out


def _scan(root: Path) -> tuple[list[str], list[str]]:
    """Image paths sorted by (identity, path), and each one's identity."""
    items = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel_dir = Path(dirpath).relative_to(root)
        for name in sorted(filenames):
            if name.startswith(".") or not name.lower().endswith(IMAGE_SUFFIXES):
                continue
            rel = rel_dir / name
            identity = rel.parts[0] if len(rel.parts) > 1 else str(rel)  # top sub-folder, or the file itself
            items.append((identity, str(rel)))
    items.sort()
    return [str(root / rel) for _, rel in items], [ident for ident, _ in items]


class FaceFolder(Dataset):
    """Source/target pairs of aligned faces (see the module docstring for layouts and bad inputs).

    Index with ``(epoch, index)`` (what :class:`StepBatchSampler` yields) or a plain ``index``
    (epoch 0). Item ``index`` has target image ``index``; its source is another identity's image,
    or with probability ``same_identity_ratio`` an image of the same identity. Items are dicts:
    ``source``, ``target`` (3, R, R) float32 RGB in [0, 1], ``target_mask`` (1, R, R) in [0, 1],
    ``same`` () float32 1.0 for a same-identity pair.

    Augmentation, drawn independently for source and target: a horizontal flip (``flip``; the
    target's mask flips with it) and colour jitter (``color_jitter`` = s: brightness, contrast and
    saturation factors uniform in [1 - s, 1 + s], applied in that order, each clipped to [0, 1]).
    """

    def __init__(self, root: str | os.PathLike, resolution: int, mask_root: str | os.PathLike | None = None, *,
                 same_identity_ratio: float = 0.2, flip: bool = True, color_jitter: float = 0.1, seed: int = 0,
                 cache_dir: str | None = None, mask_forehead: float = 0.2, mask_blur: int = 0,
                 progress: bool = False):
        import cv2

        if not isinstance(resolution, int) or isinstance(resolution, bool) or resolution < 8:
            raise ValueError(f"resolution must be an int >= 8 (128, 256 or 512), got {resolution!r}")
        if not 0.0 <= same_identity_ratio <= 1.0:
            raise ValueError(f"same_identity_ratio must be in [0, 1], got {same_identity_ratio}")
        if not 0.0 <= color_jitter <= 1.0:
            raise ValueError(f"color_jitter must be in [0, 1], got {color_jitter}")
        if not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"data folder not found: {self.root}")
        self.paths, self.identities = _scan(self.root)
        if not self.paths:
            raise ValueError(f"data folder {self.root} holds no images ({', '.join(IMAGE_SUFFIXES)}), "
                             "neither directly nor in sub-folders")
        not_images = [p for p in self.paths if not cv2.haveImageReader(p)]
        if not_images:
            raise ValueError(f"not readable as images: {not_images[:5]}" + (f" and {len(not_images) - 5} more"
                                                                           if len(not_images) > 5 else ""))
        self.resolution = resolution
        self.same_identity_ratio = float(same_identity_ratio)
        self.flip = bool(flip)
        self.color_jitter = float(color_jitter)
        self.seed = seed
        self.mask_forehead = float(mask_forehead)
        self.mask_blur = int(mask_blur)
        # identity blocks: the paths are sorted by identity, so each is a contiguous range
        names, self.identity_index = np.unique(np.array(self.identities), return_inverse=True)
        starts = np.searchsorted(self.identity_index, np.arange(len(names)), side="left")
        ends = np.searchsorted(self.identity_index, np.arange(len(names)), side="right")
        self._block = np.stack([starts[self.identity_index], ends[self.identity_index]], axis=1)
        self.num_identities = len(names)

        self.mask_paths: Optional[list[str]] = None
        self.landmarks: Optional[np.ndarray] = None
        if mask_root is not None:
            self.mask_root = Path(mask_root)
            if not self.mask_root.is_dir():
                raise FileNotFoundError(f"mask folder not found: {self.mask_root}")
            self.mask_paths, missing = [], []
            for p in self.paths:
                stem = self.mask_root / Path(p).relative_to(self.root).with_suffix("")
                found = next((str(stem) + s for s in MASK_SUFFIXES if os.path.isfile(str(stem) + s)), None)
                if found is None:
                    missing.append(f"{p} (looked for {stem}{{{','.join(MASK_SUFFIXES)}}})")
                self.mask_paths.append(found)
            if missing:
                raise ValueError(f"{len(missing)} image(s) have no mask in {self.mask_root}: {missing[:3]}")
        else:
            self.mask_root = None
            self.landmarks = cached_landmarks(self.paths, cache_dir, progress=progress)

    def __len__(self) -> int:
        return len(self.paths)

    def rng(self, epoch: int, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, epoch, index, _TAG_ITEM])

    def pair(self, epoch: int, index: int) -> tuple[int, bool, np.random.Generator]:
        """(source index, same identity?, the item's generator positioned after the pair draws)."""
        rng = self.rng(epoch, index)
        start, end = self._block[index]
        n_same, n = end - start, len(self.paths)
        same = rng.random() < self.same_identity_ratio or n_same == n  # one identity only: every pair is same
        if same:
            source = int(start + rng.integers(n_same))
        else:
            k = int(rng.integers(n - n_same))
            source = k if k < start else k + n_same
        return source, bool(same), rng

    def load_image(self, index: int) -> np.ndarray:
        """Image ``index`` as RGB uint8 (R, R, 3)."""
        path = self.paths[index]
        img = read_image(path)
        _check_square(img.shape, path)
        return _resize(img, self.resolution)

    def load_mask(self, index: int) -> np.ndarray:
        """Mask ``index`` as float32 (R, R) in [0, 1]."""
        if self.mask_paths is not None:
            path = self.mask_paths[index]
            m = read_mask(path)
            _check_square(m.shape, path)
            return np.clip(_resize(m, self.resolution), 0.0, 1.0)
        # cached landmarks are fractions of the crop side, so any square crop size maps the same way
        return hull_mask(self.landmarks[index] * self.resolution - 0.5, self.resolution, forehead=self.mask_forehead,
                         blur=self.mask_blur)

    def _augment(self, img: np.ndarray, rng: np.random.Generator, mask: np.ndarray | None = None):
        flip = self.flip and rng.random() < 0.5
        s = self.color_jitter
        factors = rng.uniform(1.0 - s, 1.0 + s, size=3) if s > 0 else None
        x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float().div_(255.0)
        if flip:
            x = x.flip(-1)
            if mask is not None:
                mask = mask[:, ::-1]
        if factors is not None:
            x = color_jitter(x, *(float(f) for f in factors))
        return x.contiguous(), mask

    def __getitem__(self, key) -> dict:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        index = int(index)
        if not 0 <= index < len(self.paths):
            raise IndexError(f"index {index} out of range for {len(self.paths)} images")
        source, same, rng = self.pair(int(epoch), index)
        target_img = self.load_image(index)
        mask = self.load_mask(index)
        target, mask = self._augment(target_img, rng, mask)
        src, _ = self._augment(self.load_image(source), rng)
        return {"source": src, "target": target,
                "target_mask": torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None],
                "same": torch.tensor(1.0 if same else 0.0)}


def color_jitter(x: torch.Tensor, brightness: float, contrast: float, saturation: float) -> torch.Tensor:
    """Brightness, contrast, saturation factors on a (3, H, W) [0, 1] image, in that order, each
    result clipped to [0, 1] (gray = ITU-R 601 luma, as image libraries use)."""
    luma = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype).view(3, 1, 1)
    x = (x * brightness).clamp_(0, 1)
    mean = (x * luma).sum(0).mean()
    x = ((x - mean) * contrast + mean).clamp_(0, 1)
    gray = (x * luma).sum(0, keepdim=True)
    return ((x - gray) * saturation + gray).clamp_(0, 1)


def face_folder_from_config(cfg, progress: bool = False) -> FaceFolder:
    """The :class:`FaceFolder` a :class:`~wscswap_fast.train.config.TrainConfig` describes (seed = run.seed)."""
    d = cfg.data
    if not d.root:
        raise ValueError("data.root is not set: give the folder of aligned face crops, e.g. data.root=faces/")
    return FaceFolder(d.root, d.resolution, d.mask_root, same_identity_ratio=d.same_identity_ratio, flip=d.flip,
                      color_jitter=d.color_jitter, seed=cfg.run.seed, cache_dir=d.cache_dir,
                      mask_forehead=d.mask_forehead, mask_blur=d.mask_blur, progress=progress)


class StepBatchSampler(Sampler):
    """Batches of ``(epoch, index)`` keys for one rank, a function of (seed, step) only.

    Each epoch is a permutation of the dataset drawn from (seed, epoch); it is cut into
    ``steps_per_epoch = len // (batch_size * world_size)`` global batches (the incomplete tail
    is dropped), and rank r takes the r-th ``batch_size`` slice of each, as DistributedSampler
    shards. Iteration starts at ``start_step`` (resume) and runs until ``steps`` (exclusive), or
    forever when ``steps`` is None, across epochs.
    """

    def __init__(self, num_items: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                 start_step: int = 0, steps: Optional[int] = None):
        for name, v, lo in (("num_items", num_items, 1), ("batch_size", batch_size, 1), ("seed", seed, 0),
                            ("rank", rank, 0), ("world_size", world_size, 1), ("start_step", start_step, 0)):
            if not isinstance(v, int) or isinstance(v, bool) or v < lo:
                raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")
        if rank >= world_size:
            raise ValueError(f"rank {rank} must be < world_size {world_size}")
        if steps is not None and (not isinstance(steps, int) or steps < start_step):
            raise ValueError(f"steps must be None or an int >= start_step ({start_step}), got {steps!r}")
        self.global_batch = batch_size * world_size
        if num_items < self.global_batch:
            raise ValueError(f"the dataset has {num_items} images, fewer than one global batch "
                             f"(batch_size {batch_size} x {world_size} process(es) = {self.global_batch})")
        self.num_items, self.batch_size, self.seed = num_items, batch_size, seed
        self.rank, self.world_size, self.start_step, self.steps = rank, world_size, start_step, steps
        self.steps_per_epoch = num_items // self.global_batch
        self._perm_epoch, self._perm = -1, None

    def permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng([self.seed, epoch, 0, _TAG_EPOCH]).permutation(self.num_items)
            self._perm_epoch = epoch
        return self._perm

    def batch(self, step: int) -> list[tuple[int, int]]:
        """This rank's ``(epoch, index)`` keys at global step ``step``."""
        epoch, b = divmod(step, self.steps_per_epoch)
        lo = b * self.global_batch + self.rank * self.batch_size
        return [(epoch, int(i)) for i in self.permutation(epoch)[lo:lo + self.batch_size]]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        step = self.start_step
        while self.steps is None or step < self.steps:
            yield self.batch(step)
            step += 1

    def __len__(self) -> int:
        if self.steps is None:
            raise TypeError("this sampler runs forever (steps=None): it has no length")
        return self.steps - self.start_step


_WORKER_START = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


def _worker_init(_worker_id: int) -> None:
    import cv2

    # one thread per worker: the workers already run in parallel
    cv2.setNumThreads(1)
    torch.set_num_threads(1)


def make_loader(dataset: Dataset, batch_size: int, workers: int, seed: int, rank: int = 0, world_size: int = 1,
                start_step: int = 0, *, steps: Optional[int] = None, pin_memory: bool = False) -> DataLoader:
    """A DataLoader over ``dataset`` whose n-th batch is global step ``start_step + n``; the same
    (seed, step) gives the same batch whatever the worker count and wherever the run resumed.
    Infinite when ``steps`` is None. ``loader.batch_sampler`` is the :class:`StepBatchSampler`."""
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 0:
        raise ValueError(f"workers must be an int >= 0, got {workers!r}")
    sampler = StepBatchSampler(len(dataset), batch_size, seed, rank, world_size, start_step, steps)
    # Workers start from a fresh interpreter (forkserver), not a fork of this process: a fork
    # copies OpenCV's and OpenMP's thread pools with their locks possibly held by threads that
    # do not exist in the child, and the worker's first cv2 call can then wait forever.
    return DataLoader(dataset, batch_sampler=sampler, num_workers=workers, pin_memory=pin_memory,
                      worker_init_fn=_worker_init if workers > 0 else None, persistent_workers=workers > 0,
                      multiprocessing_context=_WORKER_START if workers > 0 else None)
