"""Per-stage timers for the swap pipeline: decode, detect, align, model, paste, encode.

Stages run in different threads (reader, worker, writer), so the table shows each stage's own
busy time; the wall time is less than their sum when the stages overlap.
"""
from __future__ import annotations

import threading
import time
from contextlib import contextmanager

STAGES = ("decode", "detect", "align", "model", "paste", "encode")


class StageProfile:
    """Accumulates seconds and call counts per stage (thread-safe)."""

    # only the worker's stages run GPU work: syncing in the reader/detection threads would make
    # them wait for the model and undo the overlap
    GPU_STAGES = ("align", "model", "paste")

    def __init__(self, sync=None):
        self.seconds = {s: 0.0 for s in STAGES}
        self.calls = {s: 0 for s in STAGES}
        self.frames = 0
        self.wall = 0.0
        self._lock = threading.Lock()
        self._sync = sync  # e.g. torch.cuda.synchronize, so GPU work is charged to its stage

    def add(self, stage: str, seconds: float, calls: int = 1) -> None:
        if stage not in self.seconds:
            raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
        with self._lock:
            self.seconds[stage] += seconds
            self.calls[stage] += calls

    @contextmanager
    def stage(self, name: str):
        sync = self._sync if name in self.GPU_STAGES else None
        if sync is not None:
            sync()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            if sync is not None:
                sync()
            self.add(name, time.perf_counter() - t0)

    def rows(self) -> list[dict]:
        """One dict per stage: stage, total_s, ms_per_frame, share (of the summed stage time)."""
        total = sum(self.seconds.values()) or 1.0
        n = max(self.frames, 1)
        return [dict(stage=s, total_s=self.seconds[s], ms_per_frame=1000 * self.seconds[s] / n,
                     share=self.seconds[s] / total, calls=self.calls[s]) for s in STAGES]

    def table(self) -> str:
        """The per-stage time table as aligned text."""
        lines = [f"{'stage':<8} {'total s':>9} {'ms/frame':>9} {'share':>7} {'calls':>7}"]
        for r in self.rows():
            lines.append(f"{r['stage']:<8} {r['total_s']:>9.3f} {r['ms_per_frame']:>9.2f} "
                         f"{100 * r['share']:>6.1f}% {r['calls']:>7d}")
        fps = self.frames / self.wall if self.wall > 0 else 0.0
        lines.append(f"{self.frames} frames in {self.wall:.2f} s wall: {fps:.2f} fps "
                     f"(stages overlap across the reader, worker and writer threads)")
        return "\n".join(lines)
