"""The `wscswap` command."""
import argparse
import importlib
import platform
import sys

import torch


# Each of these modules defines register(subparsers): it adds its subcommand(s) and sets func.
# They must import quickly: heavy imports go inside the command functions.
SUBCOMMAND_MODULES = ("wscswap_fast.train.cli", "wscswap_fast.pipeline.cli", "wscswap_fast.eval.cli")


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise SystemExit(f"wscswap bench: --device must be cpu, cuda or auto, got {name!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("wscswap bench: --device cuda was asked for, but torch sees no CUDA GPU")
    return dev


def _machine(device: torch.device, copy_gbps: float) -> dict:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine())
    return {"device": str(device), "device_name": name, "threads": torch.get_num_threads(),
            "torch": torch.__version__, "copy_gbps": round(copy_gbps, 1)}


def bench(args) -> int:
    from . import ops
    from .benchmarks import suites as bench_suites
    from .benchmarks.harness import copy_bandwidth, markdown_table, text_table, tune_cpu_allocator, write_csv

    suites = bench_suites()
    wanted = args.ops.split(",") if args.ops else list(suites)
    unknown = [o for o in wanted if o not in suites]
    if unknown:
        raise SystemExit(f"wscswap bench: unknown op(s) {unknown}; choose from {list(suites)}")
    device = _device(args.device)
    tuned = device.type == "cpu" and not args.no_tune_malloc and tune_cpu_allocator()
    copy_gbps = copy_bandwidth(device, 64 if args.quick else 512)
    machine = _machine(device, copy_gbps)
    print(f"wscswap bench on {machine['device_name']} ({device}, {machine['threads']} threads, torch {torch.__version__})")
    print(f"copy bandwidth {copy_gbps:.1f} GB/s; backends: "
          + ", ".join(f"{b}={'yes' if ok is True else 'no'}" for b, ok in ops.available().items()))
    if tuned:
        print("glibc malloc set to keep freed memory mapped for all contenders (--no-tune-malloc to skip)")
    rows = []
    for name in wanted:
        rows += suites[name].run(device, quick=args.quick, copy_gbps=copy_gbps, seconds=0.3 if args.quick else 1.5)
    print()
    print(text_table(rows))
    print("\nvs eager: against the plain-PyTorch eager version of each op (for paste_faces, the OpenCV "
          "pipeline face-swap tools run); vs compile: torch.compile of that eager version. GB/s on each op's "
          "minimal byte count, stated in its module in wscswap_fast/benchmarks/.")
    for name in wanted:  # suites whose columns mean something else say so
        legend = getattr(suites[name], "LEGEND", None)
        if legend:
            print(legend)
    if args.csv:
        write_csv(args.csv, rows, machine)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(f"# wscswap bench: {machine['device_name']} ({device})\n\n"
                    f"copy bandwidth {copy_gbps:.1f} GB/s, torch {torch.__version__}\n\n{markdown_table(rows)}\n")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="wscswap", description="WSC-swap face swapping, accelerated.")
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("bench", help="benchmark the fused ops against eager PyTorch, torch.compile and OpenCV")
    b.add_argument("--device", default="auto", help="cpu, cuda or auto (default: cuda when present)")
    b.add_argument("--ops", default="", help="comma-separated ops to run (default: all)")
    b.add_argument("--csv", help="write the results to this CSV file")
    b.add_argument("--markdown", help="write the results to this Markdown file")
    b.add_argument("--quick", action="store_true", help="tiny shapes, a few seconds: a smoke test")
    b.add_argument("--no-tune-malloc", action="store_true", help="leave glibc malloc's trim/mmap thresholds alone")
    b.set_defaults(func=bench)
    for module in SUBCOMMAND_MODULES:
        importlib.import_module(module).register(sub)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
