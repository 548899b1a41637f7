"""`wscswap eval`: swap every source onto every target and write the metric report.

Import is cheap on purpose: the heavy modules load inside `run_eval`.
"""
from __future__ import annotations

import argparse


def register(subparsers) -> None:
    """Add the `eval` subcommand to the `wscswap` argument parser."""
    p = subparsers.add_parser(
        "eval", help="evaluate a checkpoint: ID similarity/retrieval, pose/expression/shape error, consistency",
        description="Swap each source face onto each target face and report identity, pose, expression, "
                    "shape, consistency, leakage and reconstruction metrics.")
    p.add_argument("--checkpoint", required=True, help="checkpoint step directory or run directory")
    p.add_argument("--sources", required=True, help="folder of source images (one identity each)")
    p.add_argument("--targets", required=True, help="folder of target images")
    p.add_argument("--out", required=True, help="output folder for report.json, report.md and grid.png")
    p.add_argument("--limit", type=int, default=None, help="use at most N sources and N targets")
    p.add_argument("--arcface", default=None, help="ArcFace backbone checkpoint (iresnet) for a second embedding")
    p.add_argument("--arcface-arch", default="iresnet50", help="architecture of --arcface (default iresnet50)")
    p.add_argument("--morphable", default=None,
                   help="3DMM for pose/expression/shape error: Surrey model folder, BFM_model_front.mat or .npz "
                        "(default: ../shared/data/morphable/sfm beside the checkout, when present)")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")
    p.add_argument("--backend", default="auto", help="fused-op backend for the generator (default auto)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_eval)


def run_eval(args: argparse.Namespace) -> int:
    """Entry point of `wscswap eval`."""
    from .runner import EvalOptions, evaluate

    opts = EvalOptions(checkpoint=args.checkpoint, sources=args.sources, targets=args.targets, out=args.out,
                       limit=args.limit, arcface=args.arcface, arcface_arch=args.arcface_arch,
                       device=args.device, backend=args.backend, morphable=args.morphable,
                       progress=not args.no_progress)
    if args.limit is not None and args.limit < 1:
        raise SystemExit(f"wscswap eval: --limit must be a positive integer, got {args.limit}")
    try:
        report = evaluate(opts)
    except (FileNotFoundError, NotADirectoryError, ValueError, TypeError) as e:
        raise SystemExit(f"wscswap eval: {e}") from None
    if not report["counts"]["pairs"]:
        print("wscswap eval: nothing to evaluate (no usable source or target); the report says why")
        return 1
    return 0
