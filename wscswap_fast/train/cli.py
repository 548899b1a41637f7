"""`wscswap train`: train the WSC-swap model from a config file plus key=value overrides."""
from __future__ import annotations

import argparse
from pathlib import Path


def _train(args: argparse.Namespace) -> int:
    # Heavy imports here, so `wscswap --help` and the other subcommands start fast.
    from .config import load_config
    from .trainer import train

    try:
        cfg = load_config(args.config, list(args.overrides))
        if args.resume and args.config is None:
            # resuming without --config: the run's own saved config, with the overrides on top
            saved = Path(cfg.run.out_dir) / "config.json"
            if saved.is_file():
                cfg = load_config(saved, list(args.overrides))
    except (ValueError, TypeError, FileNotFoundError) as e:
        raise SystemExit(f"wscswap train: {e}")
    try:
        summary = train(cfg, resume=args.resume)
    except (ValueError, FileNotFoundError, TypeError) as e:
        raise SystemExit(f"wscswap train: {e}")
    if summary.get("rank", 0) == 0:  # under torchrun, rank 0 reports
        print(f"wscswap train: done, step {summary['step']}, {summary['mean_images_per_s']:.2f} images/s, "
              f"checkpoint {summary['checkpoint']}")
    return 0


def register(subparsers) -> None:
    """Add the `train` subcommand to the `wscswap` parser."""
    p = subparsers.add_parser(
        "train", help="train the face-swap model (single process, or DDP under torchrun)",
        description="Train the WSC-swap generator. Settings come from --config (YAML or JSON) and "
                    "section.key=value overrides, e.g. data.root=faces/ run.steps=1000 optim.amp=bf16. "
                    "Under torchrun every process runs this command; rank 0 writes.")
    p.add_argument("--config", default=None, help="YAML or JSON training config (default: built-in defaults)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the latest checkpoint in run.out_dir (exact: step, optimisers, EMA, RNG, "
                        "data); without --config the run's saved config.json is the base, e.g. "
                        "`wscswap train --resume run.out_dir=runs/x run.steps=2000`")
    p.add_argument("overrides", nargs="*", metavar="section.key=value",
                   help="config overrides, e.g. data.root=/faces run.steps=500 data.resolution=128")
    p.set_defaults(func=_train)
