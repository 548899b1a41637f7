"""One training step (generator, discriminator and identity-adversary steps, forward and
backward, Adam, EMA) at 256^2, batch 4: the fused backend against the reference backend and
against torch.compile, plus the peak memory of a step.

Cases (full mode: the default 256^2 model, width 1, iresnet50 ArcFace, resnet50 regressor,
3-scale PatchGAN of 64 channels; quick mode: 128^2, batch 1, width 0.125, iresnet18/resnet18,
8-channel PatchGAN):
  full step   what `wscswap train` runs per step: the frozen ArcFace on Xs, Xt and Y, the frozen
              3DMM regressor on Xs, Xt and Y (backward through the two for Y), G, D, adversary.
  G+D step    the same step with the frozen encoders' outputs for Xs and Xt cached and the
              terms that backpropagate through them (identity, 3DMM) off: what the backends
              change, without the frozen networks that are the same for every contender.

Contenders (all channels_last, the trainer's default run.memory_format, unless named NCHW):
  reference       every fused op on its plain-PyTorch reference (eager); the "vs eager" column.
  reference NCHW  the same with run.memory_format=contiguous, for users' plain-PyTorch layout.
  torch.compile   the reference-backend step with the generator and the discriminator compiled
                  (Inductor); the "vs compile" column.
  cpu / cuda      the fused backend of the device (eager).
  cpu+compile     the fused backend with the same modules compiled (the ops are custom ops,
                  no graph break).
Peak memory (note column): on the CPU, in a fresh subprocess per contender, the peak resident
set over the first two steps (sampled every millisecond) and its growth over the resident set
before them (models, optimisers and batch built); on a GPU torch.cuda.max_memory_allocated of a
step and its growth over the memory allocated before it.

The frozen encoders and the discriminator are ordinary convolutions: the same work for every
contender. The note column gives the share of the full step that the G+D step is.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import torch

from .. import ops
from .harness import Row, finish_rows, sync, time_interleaved

LEGEND = ("train_step: vs eager = the reference backend; vs compile = that step with G and D compiled; "
          "note = images/s, peak memory, and the G+D step's share of the full step")

SETTINGS = {
    "full": dict(resolution=256, batch=4, width=1.0, identity_arch="iresnet50", regressor_arch="resnet50",
                 d_channels=64),
    "quick": dict(resolution=128, batch=1, width=0.125, identity_arch="iresnet18", regressor_arch="resnet18",
                  d_channels=8),
}


def make_config(setting: dict, backend: str, device: torch.device, memory_format: str = "channels_last"):
    from ..train.config import TrainConfig, apply_overrides

    overrides = [f"data.resolution={setting['resolution']}", f"data.batch_size={setting['batch']}",
                 f"model.generator_width={setting['width']}", f"model.identity_arch={setting['identity_arch']}",
                 f"model.regressor_arch={setting['regressor_arch']}",
                 f"model.discriminator_channels={setting['d_channels']}", f"run.device={device.type}",
                 f"run.backend={backend}", f"run.memory_format={memory_format}"]
    cfg = apply_overrides(TrainConfig(), overrides)
    if cfg.model.morphable_model is None:  # no Surrey model beside the checkout: no 3DMM terms
        for key in ("expression", "pose", "lighting", "landmark"):
            setattr(cfg.loss, key, 0.0)
    return cfg


def make_trainer(setting: dict, backend: str, device: torch.device, compiled: bool = False,
                 memory_format: str = "channels_last"):
    """A Trainer (writes nothing) whose G and D are optionally torch.compile'd."""
    import contextlib
    import io
    import warnings

    from ..train.distributed import DistInfo
    from ..train.trainer import Trainer

    cfg = make_config(setting, backend, device, memory_format)
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):  # the random-encoder warnings
        warnings.simplefilter("ignore")
        trainer = Trainer(cfg, dist_info=DistInfo(device=device), progress=False)
    if compiled:
        trainer.g_train = torch.compile(trainer.generator)
        trainer.discriminator = trainer.d_train = torch.compile(trainer.discriminator)
    return trainer


def make_batch(setting: dict, device: torch.device, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    n, r = setting["batch"], setting["resolution"]
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, r), torch.linspace(-1, 1, r), indexing="ij")
    mask = ((1.0 - (xx ** 2 / 0.35 + yy ** 2 / 0.5)) * 8).clamp(0, 1)
    batch = {"source": torch.rand(n, 3, r, r, generator=g), "target": torch.rand(n, 3, r, r, generator=g),
             "target_mask": mask.expand(n, 1, r, r).contiguous(),
             "same": torch.tensor([float(i % 4 == 0) for i in range(n)])}
    return {k: v.to(device) for k, v in batch.items()}


def step_fn(trainer, batch: dict, encoders: bool):
    """A callable running one training step; without `encoders`, the frozen encoders' outputs
    for the batch are computed once and the terms through them are off (for that call only, so
    one trainer, compiled once, serves both cases)."""
    if encoders:
        return lambda: trainer.train_step(batch)
    import dataclasses

    weights = dataclasses.replace(trainer.weights, identity=0.0, expression=0.0, pose=0.0, lighting=0.0,
                                  landmark=0.0, photometric=0.0)
    xs, xt, _, _ = trainer._inputs(batch)
    frozen = trainer._frozen_features(xs, xt)
    frozen.pop("coeff_target", None)
    frozen.pop("coeff_source", None)

    def step():
        full, trainer.weights = trainer.weights, weights
        try:
            return trainer.train_step(batch, frozen=frozen)
        finally:
            trainer.weights = full

    return step


def contenders(device: torch.device, quick: bool = False) -> list[tuple[str, str, bool, str]]:
    """(name, backend, compiled, memory format) of every contender that can run on device (quick
    mode: no compiled fused backend, whose compile takes minutes on a small CPU)."""
    fused = "cuda" if device.type == "cuda" else "cpu"
    cl = "channels_last"
    out = [("reference", "reference", False, cl), ("reference NCHW", "reference", False, "contiguous"),
           ("torch.compile", "reference", True, cl)]
    if ops.available()[fused] is True:
        out += [(fused, fused, False, cl)] + ([] if quick else [(f"{fused}+compile", fused, True, cl)])
    return out


def peak_memory(mode: str, backend: str, device: torch.device, encoders: bool = True,
                memory_format: str = "channels_last") -> dict | None:
    """Peak memory of a training step, MiB: {"peak_mib": growth over the memory held before the
    step, "peak_rss_mib" (CPU) / "peak_allocated_mib" (GPU): the whole peak}. CPU: in a fresh
    subprocess, the resident set sampled during two steps (see _measure_in_this_process); GPU:
    torch.cuda.max_memory_allocated of the second step. None if the subprocess failed."""
    if device.type == "cuda":
        trainer = make_trainer(SETTINGS[mode], backend, device, memory_format=memory_format)
        step = step_fn(trainer, make_batch(SETTINGS[mode], device), encoders)
        step()
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        step()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        return {"peak_mib": (peak - base) / 2**20, "peak_allocated_mib": peak / 2**20}
    cmd = [sys.executable, "-m", "wscswap_fast.benchmarks.train_step", "--peak-memory", mode, backend,
           "1" if encoders else "0", memory_format]
    env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    if proc.returncode != 0:
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _resident_kib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1024


def _measure_in_this_process(mode: str, backend: str, encoders: bool, memory_format: str) -> dict:
    """Resident set before the first step (models, optimisers, batch built) and its peak over two
    steps (the first creates Adam's state), sampled every millisecond by a thread; ru_maxrss
    bounds the sampling from above."""
    import resource
    import threading
    import time

    device = torch.device("cpu")
    trainer = make_trainer(SETTINGS[mode], backend, device, memory_format=memory_format)
    step = step_fn(trainer, make_batch(SETTINGS[mode], device), encoders)
    built = _resident_kib()
    peak, done = [built], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _resident_kib())
            time.sleep(0.001)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    step()
    step()
    done.set()
    sampler.join()
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, the whole process
    peak_kib = max(peak[0], _resident_kib())
    return {"peak_mib": (peak_kib - built) / 1024, "peak_rss_mib": peak_kib / 1024, "built_mib": built / 1024,
            "maxrss_mib": maxrss / 1024}


def run(device: torch.device, quick: bool = False, copy_gbps: float = 1.0, seconds: float = 1.5) -> list:
    mode = "quick" if quick else "full"
    setting = SETTINGS[mode]
    rows = []
    times = {}
    entries = contenders(device, quick)
    specs = {name: (backend, fmt) for name, backend, _, fmt in entries}
    batch = make_batch(setting, device)
    trainers = {name: make_trainer(setting, backend, device, compiled, fmt) for name, backend, compiled, fmt in entries}
    for encoders, label in ((True, "full step"), (False, "G+D step")):
        steps = {name: step_fn(trainer, batch, encoders) for name, trainer in trainers.items()}
        for step in steps.values():  # compile / warm up outside the timing: the allocator's heap and
            for _ in range(3):         # oneDNN's primitive cache settle over the first steps
                step()
        sync(device)
        times[label] = time_interleaved(steps, device, seconds=seconds, warmup=0, max_reps=20)
        case = (f"{label} {setting['resolution']}^2 batch {setting['batch']} width {setting['width']:g} "
                f"({setting['identity_arch']}, {setting['regressor_arch']})")
        case_rows = []
        for name, t in times[label].items():
            note = f"{setting['batch'] / t:.2f} img/s"
            if "compile" not in name:
                backend, memory_format = specs[name]
                mem = peak_memory(mode, backend, device, encoders, memory_format)
                if mem is not None:
                    total = mem.get("peak_rss_mib", mem.get("peak_allocated_mib"))
                    note += f", peak {total:.0f} MiB (+{mem['peak_mib']:.0f} in the step)"
            case_rows.append(Row("train_step", case, name, t * 1e3, note=note))
        rows += finish_rows(case_rows, copy_gbps, "reference", "torch.compile")
    full, gd = times["full step"], times["G+D step"]
    for r in rows:
        if r.case.startswith("full step") and r.backend in gd:
            r.note += f", G+D {100 * gd[r.backend] / full[r.backend]:.0f}% of it"
    return rows


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "--peak-memory":
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
        print(json.dumps(_measure_in_this_process(sys.argv[2], sys.argv[3], sys.argv[4] == "1", sys.argv[5])))
    else:
        quick = "--quick" in sys.argv
        dev = torch.device("cuda" if torch.cuda.is_available() and "--cpu" not in sys.argv else "cpu")
        from .harness import text_table, tune_cpu_allocator

        if dev.type == "cpu":
            tune_cpu_allocator()  # as `wscswap bench` does
        print(text_table(run(dev, quick=quick, seconds=0.5 if quick else 1.5)))
