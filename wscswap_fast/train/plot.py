"""Loss curves of a training run as a PNG, from the run's JSONL log (``<out_dir>/log.jsonl``,
one record per logged step with every loss), drawn with OpenCV (no plotting library needed),
plus a small JSON summary (steps, time, images/s, each loss at the start and the end).

    python -m wscswap_fast.train.plot RUN_DIR --out docs/train_128_losses.png \\
        --summary docs/train_128_summary.json --title "wscswap train 128^2"

Each panel shows one loss (or a group sharing a scale): the logged values faint, an
exponential moving average over them bold (of log10 of the values on a log scale). Panels whose
values span more than a factor 30 use a log scale.
"""
from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path

import numpy as np
from ..atomic import atomic_write_bytes, atomic_write_text

# (panel title, [(log key, legend label)])
PANELS = [
    ("generator total", [("generator_total", "G total")]),
    ("identity 1-cos (weight 5)", [("identity", "identity")]),
    ("reconstruction L1 (10)", [("reconstruction", "reconstruction")]),
    ("hinge adversarial (1)", [("adversarial", "G"), ("discriminator", "D")]),
    ("feature matching (10)", [("feature_matching", "feature matching")]),
    ("identity removal (1)", [("identity_removal", "adversary 1-cos")]),
    ("mask L1 (1)", [("mask", "mask")]),
    ("3DMM non-identity", [("3dmm_expression", "expression"), ("3dmm_pose", "pose"),
                           ("3dmm_lighting", "lighting"), ("3dmm_landmark", "landmark")]),
]
COLOURS = [(180, 90, 30), (40, 40, 200), (40, 150, 40), (150, 40, 150)]  # BGR
PANEL_W, PANEL_H, COLS = 420, 300, 4
MARGIN_L, MARGIN_R, MARGIN_T, MARGIN_B = 62, 14, 34, 36


def read_log(path: str | os.PathLike) -> list[dict]:
    """The records of a JSONL log (lines that are not JSON objects are skipped)."""
    path = Path(path)
    if path.is_dir():
        path = path / "log.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"training log not found: {path}")
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and "step" in record:
            records.append(record)
    if not records:
        raise ValueError(f"{path} holds no log records")
    return records


def ema(values: np.ndarray, alpha: float) -> np.ndarray:
    out = np.empty_like(values)
    acc = values[0]
    for i, v in enumerate(values):
        acc = alpha * v + (1 - alpha) * acc
        out[i] = acc
    return out


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 100 or abs(v) < 0.01:
        return f"{v:.0e}".replace("e-0", "e-").replace("e+0", "e")
    return f"{v:.3g}"


def _panel(title: str, series: list[tuple[str, np.ndarray, np.ndarray]], steps_max: int):
    import cv2

    img = np.full((PANEL_H, PANEL_W, 3), 255, np.uint8)
    x0, x1, y0, y1 = MARGIN_L, PANEL_W - MARGIN_R, MARGIN_T, PANEL_H - MARGIN_B
    cv2.putText(img, title, (x0, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    values = np.concatenate([v for _, _, v in series])
    positive = values[values > 0]
    log = positive.size == values.size and positive.size and positive.max() / positive.min() > 30
    tf = np.log10 if log else (lambda a: a)
    lo, hi = (tf(positive.min()), tf(positive.max())) if log else (values.min(), values.max())
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5, hi + 0.5
    pad = 0.05 * (hi - lo)
    lo, hi = lo - pad, hi + pad

    def to_px(steps, vals):
        xs = x0 + (steps / max(steps_max, 1)) * (x1 - x0)
        ys = y1 - (tf(vals) - lo) / (hi - lo) * (y1 - y0)
        return np.stack([xs, ys], 1).round().astype(np.int32)

    cv2.rectangle(img, (x0, y0), (x1, y1), (0, 0, 0), 1)
    for i in range(5):  # y ticks
        t = lo + (hi - lo) * i / 4
        y = int(round(y1 - (t - lo) / (hi - lo) * (y1 - y0)))
        cv2.line(img, (x0, y), (x1, y), (225, 225, 225), 1)
        cv2.putText(img, _fmt(10 ** t if log else t), (4, y + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.38, (0, 0, 0), 1,
                    cv2.LINE_AA)
    for i in range(5):  # x ticks
        s = steps_max * i / 4
        x = int(round(x0 + i / 4 * (x1 - x0)))
        cv2.putText(img, f"{s:.0f}", (x - 10, y1 + 16), cv2.FONT_HERSHEY_SIMPLEX, 0.38, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, "step" + ("   (log scale)" if log else ""), (x0 + (x1 - x0) // 2 - 40, PANEL_H - 4),
                cv2.FONT_HERSHEY_SIMPLEX, 0.38, (80, 80, 80), 1, cv2.LINE_AA)
    for k, (label, steps, vals) in enumerate(series):
        colour = COLOURS[k % len(COLOURS)]
        faint = tuple(int(c + 0.7 * (255 - c)) for c in colour)
        ok = vals > 0 if log else np.ones_like(vals, bool)
        cv2.polylines(img, [to_px(steps[ok], vals[ok])], False, faint, 1, cv2.LINE_AA)
        # smoothed where it is drawn: in log10 on a log scale, so early large values do not dominate
        alpha = max(0.05, min(0.5, 20.0 / max(len(vals), 1)))
        smooth = 10 ** ema(np.log10(vals[ok]), alpha) if log else ema(vals[ok], alpha)
        cv2.polylines(img, [to_px(steps[ok], smooth)], False, colour, 2, cv2.LINE_AA)
        if len(series) > 1:
            cv2.putText(img, label, (x1 - 110, y0 + 16 + 15 * k), cv2.FONT_HERSHEY_SIMPLEX, 0.4, colour, 1,
                        cv2.LINE_AA)
    return img


def plot_losses(records: list[dict], out_png: str | os.PathLike, title: str = "") -> str:
    """Draw every panel whose losses appear in the records; write the PNG atomically."""
    import cv2

    steps_max = max(r["step"] for r in records)
    panels = []
    for name, keys in PANELS:
        series = []
        for key, label in keys:
            pts = [(r["step"], r[key]) for r in records if key in r and math.isfinite(r[key])]
            if pts:
                s, v = map(np.asarray, zip(*pts))
                series.append((label, s.astype(np.float64), v.astype(np.float64)))
        if series:
            panels.append(_panel(name, series, steps_max))
    if not panels:
        raise ValueError("the log has none of the known losses")
    rows = math.ceil(len(panels) / COLS)
    blank = np.full_like(panels[0], 255)
    panels += [blank] * (rows * COLS - len(panels))
    grid = np.concatenate([np.concatenate(panels[r * COLS:(r + 1) * COLS], 1) for r in range(rows)], 0)
    header = np.full((40, grid.shape[1], 3), 255, np.uint8)
    cv2.putText(header, title, (12, 28), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (0, 0, 0), 1, cv2.LINE_AA)
    image = np.concatenate([header, grid], 0)
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    ok, data = cv2.imencode(".png", image)
    if not ok:
        raise ValueError(f"could not encode {out_png}")
    atomic_write_bytes(out_png, data.tobytes())
    return str(out_png)


def summarise(records: list[dict], window: float = 0.1) -> dict:
    """Steps, time, mean images/s, and each loss averaged over the first and the last `window`
    of the records (at least one record each)."""
    n = max(1, int(round(window * len(records))))
    keys = sorted({k for r in records for k in r} - {"step", "time", "images_per_s"})
    losses = {}
    for k in keys:
        first = [r[k] for r in records[:n] if k in r]
        last = [r[k] for r in records[-n:] if k in r]
        if first and last:
            losses[k] = {"start": float(np.mean(first)), "end": float(np.mean(last))}
    speeds = [r["images_per_s"] for r in records if "images_per_s" in r]
    return {"steps": records[-1]["step"], "seconds": records[-1].get("time"), "records": len(records),
            "window_records": n, "images_per_s_mean": float(np.mean(speeds)) if speeds else None, "losses": losses}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m wscswap_fast.train.plot", description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="a run's out_dir (or its log.jsonl)")
    p.add_argument("--out", required=True, help="PNG to write")
    p.add_argument("--summary", help="JSON summary to write")
    p.add_argument("--title", default="", help="title line of the figure")
    p.add_argument("--command", default="", help="the training command, stored in the summary")
    args = p.parse_args(argv)
    records = read_log(args.run)
    plot_losses(records, args.out, args.title)
    if args.summary:
        summary = summarise(records)
        if args.command:
            summary["command"] = args.command
        Path(args.summary).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.summary, json.dumps(summary, indent=2) + "\n")
    print(f"wrote {args.out}" + (f" and {args.summary}" if args.summary else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
