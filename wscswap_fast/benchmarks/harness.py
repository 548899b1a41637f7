"""Timing, copy bandwidth and report tables shared by the per-op benchmarks."""
import csv
import ctypes
import ctypes.util
import dataclasses
import statistics
import time

import torch


@dataclasses.dataclass
class Row:
    op: str
    case: str
    backend: str
    median_ms: float
    bytes: int | None = None  # the minimal byte count of the case; GB/s is measured against it
    vs_eager: float | None = None
    vs_compile: float | None = None
    gbps: float | None = None
    pct_copy: float | None = None
    note: str = ""


def sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(contenders: dict, device: torch.device, seconds: float = 1.0, warmup: int = 3,
                     max_reps: int = 200) -> dict:
    """Median seconds per call of each contender. Calls run in rounds, one of each contender
    per round, so a noisy neighbour slows all of them alike. On a GPU a sample is a burst of
    calls between two synchronisations, at least ~2 ms of them: one synchronised call would time
    the launch latency and the host's overhead, not the op (kernels of a few microseconds)."""
    for fn in contenders.values():
        for _ in range(warmup):
            fn()
    sync(device)
    probe = {}
    for name, fn in contenders.items():
        t0 = time.perf_counter()
        fn()
        sync(device)
        probe[name] = time.perf_counter() - t0
    burst = {name: max(1, min(100, int(2e-3 / max(p, 1e-7)))) if device.type == "cuda" else 1
             for name, p in probe.items()}
    per_round = sum(probe[n] * burst[n] for n in contenders)
    rounds = int(max(5, min(max_reps, seconds / max(per_round, 1e-6))))
    samples = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, fn in contenders.items():
            t0 = time.perf_counter()
            for _ in range(burst[name]):
                fn()
            sync(device)
            samples[name].append((time.perf_counter() - t0) / burst[name])
    return {name: statistics.median(s) for name, s in samples.items()}


def fused_backends(device: torch.device) -> list:
    """The fused backends that run natively on device: cpu on the CPU; cuda and triton on a GPU
    (triton on the CPU is its interpreter, never a contender)."""
    from .. import ops

    native = {"cpu": ("cpu",), "cuda": ("cuda", "triton")}[device.type]
    return [b for b, ok in ops.available().items() if ok is True and b in native]


def copy_bandwidth(device: torch.device, megabytes: int = 512) -> float:
    """GB/s of a large tensor copy (bytes read + bytes written). The buffers together are 2x
    `megabytes`, more than the CPU's last-level cache, so this is memory bandwidth."""
    n = megabytes * 2**20
    src = torch.ones(n, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    t = time_interleaved({"copy": lambda: dst.copy_(src)}, device, seconds=0.5, warmup=2, max_reps=20)["copy"]
    return 2 * n / t / 1e9


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -3, -4


def tune_cpu_allocator() -> bool:
    """Keep freed heap memory mapped (glibc mallopt), as tcmalloc/jemalloc do and PyTorch's CPU
    tuning guide recommends: without it every fresh multi-MB output is page-faulted in again on
    each call, which costs every contender alike and swamps what the kernels do."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    libc = ctypes.CDLL(name)
    if not hasattr(libc, "mallopt"):
        return False
    # No mmap for big blocks (glibc caps the mmap threshold at 32 MiB, below a (8,256,64,64) fp32
    # tensor), and no trimming of the heap's free top; the trim threshold is an int.
    return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1))


def finish_rows(rows: list, copy_gbps: float, eager: str | None, compiled: str | None) -> list:
    """Fill the ratio and bandwidth columns of one case's rows, against the named baselines."""
    by_backend = {r.backend: r for r in rows}
    for r in rows:
        if eager in by_backend:
            r.vs_eager = by_backend[eager].median_ms / r.median_ms
        if compiled in by_backend:
            r.vs_compile = by_backend[compiled].median_ms / r.median_ms
        if r.bytes:
            r.gbps = r.bytes / (r.median_ms * 1e-3) / 1e9
            r.pct_copy = 100 * r.gbps / copy_gbps
    return rows


def _fmt(v, spec):
    return "-" if v is None else format(v, spec)


COLUMNS = ["op", "case", "backend", "median ms", "vs eager", "vs compile", "GB/s", "% copy BW", "note"]


def _cells(r: Row):
    return [r.op, r.case, r.backend, _fmt(r.median_ms, ".3f"), _fmt(r.vs_eager, ".2f") + ("x" if r.vs_eager else ""),
            _fmt(r.vs_compile, ".2f") + ("x" if r.vs_compile else ""), _fmt(r.gbps, ".1f"), _fmt(r.pct_copy, ".0f"), r.note]


def markdown_table(rows: list) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_cells(r)) + " |" for r in rows]
    return "\n".join(lines)


def text_table(rows: list) -> str:
    cells = [COLUMNS] + [_cells(r) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(c[i].ljust(widths[i]) for i in range(len(COLUMNS))).rstrip() for c in cells)


def write_csv(path: str, rows: list, machine: dict):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([f.name for f in dataclasses.fields(Row)] + list(machine))
        for r in rows:
            w.writerow(list(dataclasses.astuple(r)) + list(machine.values()))
