"""`pspnet train`: start a run from a config, or continue one with `--resume RUN_DIR`."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import ConfigError
from .common import add_set

RUN_CONFIG = "config.yaml"


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "train",
        help="train a model",
        description="Train PSPNet as CONFIG describes, or continue a run: `pspnet train --resume RUN_DIR` (its "
        "config.yaml, with --set changes such as a larger train.max_iters).",
        epilog="Exit status: 0 when the run finished, 130 (Ctrl-C) or 143 (SIGTERM) when it was stopped after "
        "saving (continue it with --resume), 2 on bad input.",
    )
    parser.add_argument("config", nargs="?", help="YAML config (see configs/); optional with --resume RUN_DIR")
    add_set(parser)
    parser.add_argument("--out", help="run directory (default: runs/<config name>)")
    parser.add_argument(
        "--resume",
        nargs="?",
        const=True,
        metavar="RUN_DIR",
        help="continue the run in RUN_DIR (or --out) from its last checkpoint",
    )
    parser.add_argument(
        "--nproc-per-node",
        type=int,
        metavar="N",
        help="train on N processes of this machine (one per GPU, or CPU processes over gloo): runs "
        "torchrun's launcher; for several machines use torchrun itself (see the README)",
    )
    parser.set_defaults(run=run)


def resolve_run(args: argparse.Namespace) -> tuple[Path, str | Path]:
    """The run directory and the config file of a `train` command line."""
    resume_dir = args.resume if isinstance(args.resume, str) else None
    if resume_dir and args.out and Path(resume_dir) != Path(args.out):
        raise ConfigError(f"--resume {resume_dir} and --out {args.out} name different run directories")
    if args.config is None:
        if resume_dir is None:
            raise ConfigError("give a CONFIG to start a run, or --resume RUN_DIR to continue one")
        return Path(resume_dir), Path(resume_dir) / RUN_CONFIG
    return Path(resume_dir or args.out or Path("runs") / Path(args.config).stem), args.config


def without_option(argv: list[str], option: str) -> list[str]:
    """`argv` without `option VALUE` (or `option=VALUE`)."""
    kept, skip = [], False
    for item in argv:
        if skip:
            skip = False
        elif item == option:
            skip = True
        elif not item.startswith(option + "="):
            kept.append(item)
    return kept


def launch(args: argparse.Namespace) -> int:
    """`pspnet train --nproc-per-node N ...`: the same command on N processes through torchrun's launcher."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError  # heavy: only when launching
    from torch.distributed.run import main as torchrun

    if args.nproc_per_node < 1:
        raise ConfigError(f"--nproc-per-node: expected a positive number of processes, got {args.nproc_per_node}")
    command = without_option(args.argv, "--nproc-per-node")
    try:
        torchrun(["--standalone", "--nproc-per-node", str(args.nproc_per_node), "-m", "pspnet", *command])
    except ChildFailedError as exc:
        codes = {failure.exitcode for failure in exc.failures.values()}
        return codes.pop() if len(codes) == 1 else 1  # e.g. 2 for bad input, 130/143 when stopped
    return 0


def run(args: argparse.Namespace) -> int:
    from ..config import load_config
    from ..report.table import format_table
    from ..system import distributed  # heavy (torch, timm): only when training runs
    from ..system.environment import command_line
    from ..training.run_report import report_run
    from ..training.trainer import Trainer

    if args.nproc_per_node and not distributed.launched_by_torchrun():
        return launch(args)
    run_dir, config_path = resolve_run(args)
    if args.config is None and not Path(config_path).is_file():
        raise ConfigError(f"--resume {run_dir}: no run there ({config_path} is missing)")
    config = load_config(config_path, args.overrides)
    with distributed.session(config.train.device) as context:
        trainer = Trainer(
            config,
            run_dir,
            resume=bool(args.resume),
            progress=not args.quiet,
            distributed=context,
            command=command_line(["pspnet", *args.argv]),
        )
        result = trainer.train()
    if not context.is_main:
        return 128 + result.stop_signal if result.stop_signal else 0
    if result.metrics is not None:
        print(format_table(result.metrics, trainer.classes.names, title=f"validation at iteration {result.iteration}"))
    print(f"run directory:   {result.run_dir}")
    print(f"last checkpoint: {result.last_checkpoint}")
    if result.best_checkpoint:
        print(f"best checkpoint: {result.best_checkpoint} (val mIoU {100 * result.best_miou:.2f})")
    if result.skipped is not None and result.skipped.count:
        print(result.skipped.summary())
    if result.timings:
        print(f"time:            {result.time_shares()}")
    if result.stopped_early:
        print(f"stopped at iteration {result.iteration}; continue with: pspnet train --resume {run_dir}")
        return 128 + result.stop_signal if result.stop_signal else 0
    report = report_run(run_dir, device=config.train.device, progress=not args.quiet, validation=result.validation)
    print(f"report:          {report}  (curves: {result.run_dir / 'curves.png'})")
    return 0
