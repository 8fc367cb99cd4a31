"""`pspnet train`."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import add_set


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("train", help="train a model", description="Train PSPNet as CONFIG describes.")
    parser.add_argument("config", help="YAML config (see configs/)")
    add_set(parser)
    parser.add_argument("--out", help="run directory (default: runs/<config name>)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..config import load_config
    from ..engine.trainer import Trainer  # heavy (torch, timm): only when training runs
    from ..report.table import format_table

    config = load_config(args.config, args.overrides)
    run_dir = Path(args.out or Path("runs") / Path(args.config).stem)
    trainer = Trainer(config, run_dir, resume=args.resume, progress=not args.quiet)
    result = trainer.train()
    if result.metrics is not None:
        print(format_table(result.metrics, trainer.classes.names, title=f"validation at iteration {result.iteration}"))
    print(f"run directory:   {result.run_dir}")
    print(f"last checkpoint: {result.last_checkpoint}")
    if result.best_checkpoint:
        print(f"best checkpoint: {result.best_checkpoint} (val mIoU {100 * result.best_miou:.2f})")
    if result.stopped_early:
        print(f"stopped at iteration {result.iteration}; continue with: pspnet train {args.config} --out {run_dir} --resume")
    return 0
