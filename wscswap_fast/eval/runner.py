"""`wscswap eval`: swap every source onto every target, measure, and write the report.

Per (source, target) pair, on the swap result Y (the largest face of each input image):
- identity, for each embedder (dlib always, ArcFace with --arcface): cosine similarity and
  Euclidean distance of Y to its source, same-identity rate (dlib: distance < 0.6), retrieval
  top-1/top-5 of the source among all sources, target leakage (Y's similarity and distance to
  its target, and how often Y counts as the target's identity);
- 3DMM (the Surrey model fitted to dlib's 68 landmarks): pose error (degrees) and expression
  error of Y against its target, shape (identity coefficient) error against its source;
- identity consistency: per source, the mean pairwise cosine similarity of its results over the
  targets, and its spread (std);
- reconstruction: each target swapped onto itself, PSNR and SSIM of Y against the target on the
  224x224 ArcFace-aligned crop of the target's face (the same warp for both).
Images that cannot be read or where dlib finds no face are reported and skipped, with counts.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time

import numpy as np

from ..atomic import atomic_write_bytes, atomic_write_text
from . import metrics

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
# The Surrey Face Model beside the checkout (../shared/data/morphable/sfm), used when --morphable is not given.
DEFAULT_MORPHABLE = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data",
                                                  "morphable", "sfm"))
CROP_SIZE = 224      # the aligned crop PSNR/SSIM are measured on
THUMB = 112          # pixels per grid cell


@dataclasses.dataclass
class EvalOptions:
    """Arguments of :func:`evaluate` (the command line's, by the same names)."""
    checkpoint: str
    sources: str
    targets: str
    out: str
    limit: int | None = None
    arcface: str | None = None
    arcface_arch: str = "iresnet50"
    device: str = "auto"
    backend: str = "auto"
    morphable: str | None = None
    progress: bool = True


def list_images(folder: str, what: str) -> list[str]:
    """Sorted image files (by suffix) directly in ``folder``; a missing folder is an error naming ``what``."""
    if not isinstance(folder, (str, os.PathLike)):
        raise TypeError(f"{what} must be a folder path, got {type(folder).__name__}")
    folder = os.fspath(folder)
    if not os.path.exists(folder):
        raise FileNotFoundError(f"{what} folder does not exist: {folder}")
    if not os.path.isdir(folder):
        raise NotADirectoryError(f"{what} must be a folder, got a file: {folder}")
    return sorted(os.path.join(folder, n) for n in os.listdir(folder)
                  if n.lower().endswith(IMAGE_SUFFIXES) and os.path.isfile(os.path.join(folder, n)))


def read_bgr(path: str) -> np.ndarray | None:
    """A BGR uint8 (H, W, 3) image, or None when OpenCV cannot read it; gray and alpha are converted."""
    import cv2

    img = cv2.imread(path, cv2.IMREAD_COLOR)   # IMREAD_COLOR: 3 channels whatever the file has
    if img is None or img.size == 0:
        return None
    return np.ascontiguousarray(img)


@dataclasses.dataclass
class _Input:
    name: str
    image: np.ndarray
    face: object  # faces.FaceRecord


def _load_inputs(paths: list[str], what: str, analyzer, limit: int | None, bar) -> tuple[list[_Input], dict]:
    """Read and analyse images until ``limit`` usable ones; report counts and skipped names."""
    used, unreadable, no_face = [], [], []
    for path in paths:
        if limit is not None and len(used) >= limit:
            break
        name = os.path.basename(path)
        img = read_bgr(path)
        if img is None:
            unreadable.append(name)
        else:
            face = analyzer.analyse(img)
            if face is None:
                no_face.append(name)
            else:
                used.append(_Input(name, img, face))
        bar.update(1)
    info = {"images": len(paths), "examined": len(used) + len(unreadable) + len(no_face), "used": len(used),
            "skipped_unreadable": len(unreadable), "skipped_no_face": len(no_face),
            "unreadable": unreadable, "no_face": no_face}
    if not paths:
        info["note"] = f"the {what} folder holds no image ({', '.join(IMAGE_SUFFIXES)})"
    return used, info


def _aligned_crop(bgr: np.ndarray, landmarks68: np.ndarray) -> np.ndarray:
    """The CROP_SIZE ArcFace-aligned crop (float [0, 1], (3, S, S)) of the face with these landmarks."""
    from ..pipeline.align import align_face
    from ..pipeline.detect import five_from_68

    crop, _ = align_face(bgr, five_from_68(landmarks68), CROP_SIZE, "arcface")
    return np.ascontiguousarray(crop[:, :, ::-1]).transpose(2, 0, 1).astype(np.float64) / 255.0


def _thumb(bgr: np.ndarray, box) -> np.ndarray:
    """A THUMB x THUMB square around a face box (1.6x its size), edge-padded at the image border."""
    import cv2

    x0, y0, x1, y1 = box
    cx, cy, half = (x0 + x1) / 2, (y0 + y1) / 2, 0.8 * max(x1 - x0, y1 - y0)
    m = np.array([[THUMB / (2 * half), 0, THUMB / 2 - cx * THUMB / (2 * half)],
                  [0, THUMB / (2 * half), THUMB / 2 - cy * THUMB / (2 * half)]])
    return cv2.warpAffine(bgr, m, (THUMB, THUMB), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_CONSTANT,
                          borderValue=(255, 255, 255))


def build_grid(sources: list[_Input], targets: list[_Input], cells: dict) -> np.ndarray:
    """BGR grid: first row the targets, first column the sources, cell (i, j) source i on target j
    (``cells[(i, j)]``: the THUMB x THUMB thumbnail of that result at the target's face)."""
    rows, cols = len(sources) + 1, len(targets) + 1
    grid = np.full((rows * THUMB, cols * THUMB, 3), 255, dtype=np.uint8)
    for j, t in enumerate(targets, 1):
        grid[:THUMB, j * THUMB:(j + 1) * THUMB] = _thumb(t.image, t.face.box)
    for i, s in enumerate(sources, 1):
        grid[i * THUMB:(i + 1) * THUMB, :THUMB] = _thumb(s.image, s.face.box)
        for j in range(1, cols):
            grid[i * THUMB:(i + 1) * THUMB, j * THUMB:(j + 1) * THUMB] = cells[(i - 1, j - 1)]
    return grid


def _json_safe(x):
    """inf/nan as strings (JSON has neither), numpy scalars as Python numbers."""
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, (np.floating, np.integer, np.bool_)):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return "inf" if x > 0 else ("-inf" if x < 0 else "nan")
    return x


def _identity_metrics(name: str, pairs: list[dict], src_emb: np.ndarray, tgt_emb: np.ndarray,
                      res_emb: np.ndarray, si: np.ndarray, ti: np.ndarray, num_targets: int,
                      source_names: list[str]) -> dict:
    """Similarity, distance, retrieval, consistency and leakage for one embedder; fills ``pairs``."""
    sim = metrics.cosine_similarity(res_emb, src_emb[si]).numpy()
    dist = metrics.euclidean_distance(res_emb, src_emb[si]).numpy()
    leak = metrics.cosine_similarity(res_emb, tgt_emb[ti]).numpy()
    leak_dist = metrics.euclidean_distance(res_emb, tgt_emb[ti]).numpy()
    threshold = metrics.DLIB_SAME_IDENTITY_DISTANCE if name == "dlib" else None
    for k, p in enumerate(pairs):
        entry = {"similarity": float(sim[k]), "distance": float(dist[k]),
                 "target_similarity": float(leak[k]), "target_distance": float(leak_dist[k])}
        if threshold is not None:
            entry["same_identity"] = bool(dist[k] < threshold)
            entry["same_identity_as_target"] = bool(leak_dist[k] < threshold)
        p[name] = entry
    # dlib is trained on Euclidean distance: retrieve by it; ArcFace by cosine.
    metric = "euclidean" if name == "dlib" else "cosine"
    out = {
        "id_similarity": metrics.summarise(sim), "id_distance": metrics.summarise(dist),
        "retrieval": {**metrics.retrieval_accuracy(res_emb, src_emb, si, ks=(1, 5), metric=metric),
                      "gallery": int(len(src_emb)), "by": metric, "chance_top1": 1.0 / len(src_emb)},
        "target_leakage": metrics.summarise(leak), "target_leakage_distance": metrics.summarise(leak_dist),
    }
    if threshold is not None:
        out["same_identity_threshold"] = threshold
        out["same_identity_rate"] = float(np.mean(dist < threshold))
        out["target_same_identity_rate"] = float(np.mean(leak_dist < threshold))
    if num_targets >= 2:
        per_source = {}
        for s, sname in enumerate(source_names):
            mean, std = metrics.identity_consistency(res_emb[si == s])
            per_source[sname] = {"mean": mean, "std": std}
        means = [v["mean"] for v in per_source.values()]
        stds = [v["std"] for v in per_source.values()]
        out["consistency"] = {"mean": float(np.mean(means)), "std": float(np.mean(stds)),
                              "targets_per_source": num_targets, "per_source": per_source}
    else:
        out["consistency"] = {"mean": None, "std": None, "targets_per_source": num_targets,
                              "note": "identity consistency needs at least 2 targets"}
    return out


def _fmt(v, digits=3) -> str:
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    if isinstance(v, float) and math.isinf(v):
        return "inf"
    return f"{v:.{digits}f}"


def _mean_std(s: dict, digits=3) -> str:
    if s.get("mean") is None:
        return "-"
    text = f"{_fmt(s['mean'], digits)} ± {_fmt(s['std'], digits)}"
    if s.get("infinite"):
        text += f" ({s['infinite']} of {s['count']} inf)"
    return text


def markdown_report(report: dict) -> str:
    """report.md: the inputs and skips, one table of every summary metric, per-source consistency."""
    m = report["metrics"]
    lines = ["# wscswap eval", "", f"checkpoint `{report['checkpoint']}`, device {report['device']}, "
             f"{report['counts']['pairs']} pairs ({report['counts']['sources']} sources x "
             f"{report['counts']['targets']} targets), {report['seconds']:.1f} s", ""]
    lines += ["| input | folder | images | used | skipped: unreadable | skipped: no face |", "|---|---|---|---|---|---|"]
    for what in ("sources", "targets"):
        i = report["inputs"][what]
        lines.append(f"| {what} | `{i['folder']}` | {i['images']} | {i['used']} | {i['skipped_unreadable']} | "
                     f"{i['skipped_no_face']} |")
    lines += ["", f"Result faces found by dlib: {report['counts']['result_face_detected']} of "
              f"{report['counts']['pairs']} (the others: landmarks in the target's face box).", ""]
    if not report["counts"]["pairs"]:
        lines.append("Nothing to evaluate: no usable source or target.")
        return "\n".join(lines) + "\n"
    lines += ["| metric | value |", "|---|---|"]
    for name in report["embedders"]:
        e = m[name]
        lines.append(f"| {name} ID similarity to source (cosine, mean ± std) | {_mean_std(e['id_similarity'])} |")
        lines.append(f"| {name} ID distance to source (Euclidean) | {_mean_std(e['id_distance'])} |")
        if "same_identity_rate" in e:
            lines.append(f"| {name} same identity as source (distance < {e['same_identity_threshold']}) | "
                         f"{_fmt(e['same_identity_rate'])} |")
        r = e["retrieval"]
        lines.append(f"| {name} ID retrieval top-1 / top-5 (of {r['gallery']} sources, by {r['by']}; "
                     f"chance top-1 {_fmt(r['chance_top1'])}) | {_fmt(r['top1'])} / {_fmt(r['top5'])} |")
        c = e["consistency"]
        lines.append(f"| {name} identity consistency (mean pairwise cosine, mean spread) | "
                     f"{_fmt(c['mean'])} ± {_fmt(c['std'])} |")
        lines.append(f"| {name} target leakage (cosine to target) | {_mean_std(e['target_leakage'])} |")
        if "target_same_identity_rate" in e:
            lines.append(f"| {name} same identity as target (distance < {e['same_identity_threshold']}) | "
                         f"{_fmt(e['target_same_identity_rate'])} |")
    if "pose_error_deg" in m:
        lines.append(f"| pose error vs target (degrees, L2 of pitch/yaw/roll) | {_mean_std(m['pose_error_deg'], 2)} |")
        lines.append(f"| expression error vs target (L2 of coefficients) | {_mean_std(m['expression_error'])} |")
        lines.append(f"| shape error vs source (L2 of identity coefficients) | {_mean_std(m['shape_error'])} |")
    else:
        lines.append(f"| pose / expression / shape error | - ({m.get('morphable_note', 'no morphable model')}) |")
    rec = m["reconstruction"]
    lines.append(f"| reconstruction PSNR (dB, target onto itself, aligned {CROP_SIZE} crop) | {_mean_std(rec['psnr'], 2)} |")
    lines.append(f"| reconstruction SSIM | {_mean_std(rec['ssim'], 4)} |")
    lines += ["", "dlib's descriptors are not centred: different people's cosine similarities are often 0.8-0.9, "
              "so dlib's same/different identity decisions use the Euclidean distance (same person below 0.6). "
              "Retrieval: top-k capped at the number of sources."]
    for name in report["embedders"]:
        per = m[name]["consistency"].get("per_source")
        if per:
            lines += ["", f"Identity consistency per source ({name}):", "", "| source | mean cosine | std |", "|---|---|---|"]
            lines += [f"| {s} | {_fmt(v['mean'])} | {_fmt(v['std'])} |" for s, v in per.items()]
    return "\n".join(lines) + "\n"


def _resolve_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.split(":")[0] not in ("cpu", "cuda"):
        raise ValueError(f"--device must be cpu, cuda or auto, got {name!r}")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but torch sees no CUDA GPU")
    return name


def _morphable(path: str | None):
    """(model or None, its path, why not): the model given, else the default one when it is there
    and loads (without eos-py the Surrey model cannot: its metrics are then left out, with the reason)."""
    from ..models.morphable import load_morphable_model

    if path is not None:
        if not os.path.exists(path):
            raise FileNotFoundError(f"--morphable does not exist: {path}")
        try:
            return load_morphable_model(path), path, None
        except ImportError as e:
            raise ValueError(f"--morphable {path}: {e}") from None
    if not os.path.isdir(DEFAULT_MORPHABLE):
        return None, None, "no morphable model (give --morphable; ../shared/data/morphable/sfm not found)"
    try:
        return load_morphable_model(DEFAULT_MORPHABLE), DEFAULT_MORPHABLE, None
    except ImportError as e:
        return None, None, f"the default Surrey Face Model did not load: {e}"


def evaluate(opts: EvalOptions) -> dict:
    """Run the evaluation described in the module docstring; write report.json, report.md and
    grid.png into ``opts.out`` and return the report (a dict)."""
    import cv2
    import torch
    from tqdm import tqdm

    from .embeddings import ArcFaceEmbedder, DlibEmbedder
    from .faces import FaceAnalyzer, fit_faces

    start = time.time()
    if opts.limit is not None and (not isinstance(opts.limit, int) or opts.limit < 1):
        raise ValueError(f"--limit must be a positive integer, got {opts.limit!r}")
    source_paths = list_images(opts.sources, "--sources")
    target_paths = list_images(opts.targets, "--targets")
    if not os.path.exists(opts.checkpoint):
        raise FileNotFoundError(f"--checkpoint does not exist: {opts.checkpoint}")
    if opts.arcface is not None and not os.path.isfile(opts.arcface):
        raise FileNotFoundError(f"--arcface checkpoint not found: {opts.arcface}")
    model, morphable_path, morphable_note = _morphable(opts.morphable)
    device = _resolve_device(opts.device)
    os.makedirs(opts.out, exist_ok=True)

    from ..pipeline.swapper import SwapOptions, Swapper

    embedders = [DlibEmbedder()]
    if opts.arcface is not None:
        embedders.append(ArcFaceEmbedder(opts.arcface, opts.arcface_arch, device))
    analyzer = FaceAnalyzer(embedders)
    names = [e.name for e in embedders]

    # One detector for the swapper and the metrics: both see the same faces. The swapper swaps the
    # largest face, the one the metrics measure; no visible label (it would change the pixels).
    swapper = Swapper(opts.checkpoint, device=device, backend=opts.backend,
                      options=SwapOptions(faces="largest", label=None), detector=analyzer.detector)
    n_src = len(source_paths) if opts.limit is None else min(opts.limit, len(source_paths))
    n_tgt = len(target_paths) if opts.limit is None else min(opts.limit, len(target_paths))
    bar = tqdm(total=len(source_paths) + len(target_paths) + n_src * n_tgt + n_tgt, desc="wscswap eval",
               unit="img", disable=not opts.progress, file=sys.stderr)
    bar.set_postfix_str("reading inputs")
    sources, src_info = _load_inputs(source_paths, "--sources", analyzer, opts.limit, bar)
    targets, tgt_info = _load_inputs(target_paths, "--targets", analyzer, opts.limit, bar)
    src_info["folder"], tgt_info["folder"] = os.fspath(opts.sources), os.fspath(opts.targets)
    # the bar's total assumed every listed image would be examined and usable
    bar.total = src_info["examined"] + tgt_info["examined"] + len(sources) * len(targets) + len(targets)
    bar.refresh()

    pairs, results, result_faces = [], {}, []
    bar.set_postfix_str("swapping")
    for i, s in enumerate(sources):
        swapper.set_source([s.image])
        for j, t in enumerate(targets):
            y = swapper.swap_image(t.image)
            results[(i, j)] = _thumb(y, t.face.box)   # keep only the grid cell, not S x T full images
            face = analyzer.analyse_at(y, t.face.box)
            result_faces.append(face)
            pairs.append({"source": s.name, "target": t.name, "result_face": "detected" if face.detected else "target_box"})
            bar.update(1)
    recon_psnr, recon_ssim, recon_rows = [], [], []
    bar.set_postfix_str("reconstruction")
    for t in targets:
        swapper.set_source([t.image])
        y = swapper.swap_image(t.image)
        a = torch.from_numpy(_aligned_crop(y, t.face.landmarks68))
        b = torch.from_numpy(_aligned_crop(t.image, t.face.landmarks68))
        p, q = float(metrics.psnr(a, b)), float(metrics.ssim(a, b))
        recon_psnr.append(p)
        recon_ssim.append(q)
        recon_rows.append({"target": t.name, "psnr": p, "ssim": q})
        bar.update(1)
    bar.close()

    report = {
        "checkpoint": os.fspath(opts.checkpoint), "device": device, "backend": opts.backend,
        "embedders": names, "arcface": opts.arcface, "morphable_model": morphable_path, "limit": opts.limit,
        "inputs": {"sources": src_info, "targets": tgt_info},
        "counts": {"sources": len(sources), "targets": len(targets), "pairs": len(pairs),
                   "result_face_detected": sum(f.detected for f in result_faces),
                   "result_face_from_target_box": sum(not f.detected for f in result_faces)},
        "metrics": {}, "pairs": pairs, "reconstruction": recon_rows,
    }
    m = report["metrics"]
    m["reconstruction"] = {"psnr": metrics.summarise(recon_psnr), "ssim": metrics.summarise(recon_ssim),
                           "crop": CROP_SIZE}
    if pairs:
        si = np.repeat(np.arange(len(sources)), len(targets))
        ti = np.tile(np.arange(len(targets)), len(sources))
        for name in names:
            src_emb = np.stack([s.face.embeddings[name] for s in sources])
            tgt_emb = np.stack([t.face.embeddings[name] for t in targets])
            res_emb = np.stack([f.embeddings[name] for f in result_faces])
            m[name] = _identity_metrics(name, pairs, src_emb, tgt_emb, res_emb, si, ti, len(targets),
                                        [s.name for s in sources])
        if model is not None:
            lms = [s.face.landmarks68 for s in sources] + [t.face.landmarks68 for t in targets] + \
                  [f.landmarks68 for f in result_faces]
            fits = fit_faces(model, lms)
            ns, nt = len(sources), len(targets)
            s_id = fits.identity[:ns]
            t_ang, t_exp = fits.angles[ns:ns + nt], fits.expression[ns:ns + nt]
            r_ang, r_exp, r_id = fits.angles[ns + nt:], fits.expression[ns + nt:], fits.identity[ns + nt:]
            diff = metrics.angle_differences(r_ang, t_ang[ti])
            pose = diff.norm(dim=1)
            expr = metrics.coefficient_error(r_exp, t_exp[ti])
            shape = metrics.coefficient_error(r_id, s_id[si])
            for k, p in enumerate(pairs):
                p.update(pose_error_deg=float(pose[k]), pose_difference_deg=[float(v) for v in diff[k]],
                         expression_error=float(expr[k]), shape_error=float(shape[k]),
                         fit_error_px=float(fits.error[ns + nt + k]))
            m["pose_error_deg"] = metrics.summarise(pose)
            m["pose_abs_difference_deg"] = {a: float(diff[:, c].abs().mean()) for c, a in enumerate(("pitch", "yaw", "roll"))}
            m["expression_error"] = metrics.summarise(expr)
            m["shape_error"] = metrics.summarise(shape)
            m["morphable"] = {"name": model.name, "num_id": model.num_id, "num_exp": model.num_exp,
                              "fit_error_px": metrics.summarise(fits.error)}
        else:
            m["morphable_note"] = morphable_note
    report["seconds"] = time.time() - start

    atomic_write_text(os.path.join(opts.out, "report.json"), json.dumps(_json_safe(report), indent=2, allow_nan=False))
    atomic_write_text(os.path.join(opts.out, "report.md"), markdown_report(report))
    if pairs:
        ok, png = cv2.imencode(".png", build_grid(sources, targets, results))
    else:
        ok, png = cv2.imencode(".png", np.full((THUMB, THUMB, 3), 255, np.uint8))
    if not ok:
        raise RuntimeError("OpenCV could not encode grid.png")
    atomic_write_bytes(os.path.join(opts.out, "grid.png"), png.tobytes())
    for what, info in (("sources", src_info), ("targets", tgt_info)):
        print(f"{what}: {info['images']} images, {info['used']} used, skipped {info['skipped_unreadable']} "
              f"unreadable and {info['skipped_no_face']} without a face"
              + (f" ({info['note']})" if "note" in info else ""))
    print(f"wrote {os.path.join(opts.out, 'report.json')}, report.md and grid.png ({len(pairs)} pairs)")
    return report
