"""`pspnet train`: start a run from a config, or continue one with `--resume RUN_DIR` (or `--resume auto`:
continue the run the directory holds, else start it; what torchrun's restarted workers do)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import ConfigError
from .common import add_set

RUN_CONFIG = "config.yaml"
AUTO = "auto"


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
        help="continue the run in RUN_DIR (or --out) from its last checkpoint; `--resume auto`: continue the "
        "run --out holds if it is this config's, else start it (the default when torchrun restarts workers)",
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
    resume_dir = args.resume if isinstance(args.resume, str) and args.resume != AUTO else None
    if resume_dir and args.out and Path(resume_dir) != Path(args.out):
        raise ConfigError(f"--resume {resume_dir} and --out {args.out} name different run directories")
    if args.config is None:
        run_dir = resume_dir or (args.out if args.resume == AUTO else None)
        if run_dir is None:
            raise ConfigError("give a CONFIG to start a run, or --resume RUN_DIR to continue one")
        return Path(run_dir), Path(run_dir) / RUN_CONFIG
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


def resume_command(run_dir: Path, world_size: int, slurm: bool = False) -> str:
    """The command that continues the run in `run_dir` on `world_size` processes: of one machine, or as the tasks
    of a SLURM job step (`slurm`)."""
    if slurm:
        return f"srun --ntasks {world_size} pspnet train --resume {run_dir}"
    return f"pspnet train --resume {run_dir}" + (f" --nproc-per-node {world_size}" if world_size > 1 else "")


def run(args: argparse.Namespace) -> int:
    from ..config import load_config
    from ..report.table import format_table
    from ..system import distributed  # heavy (torch, timm): only when training runs
    from ..system.environment import command_line
    from ..training.run_dir import RunDirectory
    from ..training.run_report import report_run
    from ..training.trainer import Trainer

    if args.nproc_per_node and not distributed.launched_by_torchrun():
        return launch(args)
    run_dir, config_path = resolve_run(args)
    if args.config is None and not Path(config_path).is_file():
        raise ConfigError(f"--resume {run_dir}: no run there ({config_path} is missing)")
    config = load_config(config_path, args.overrides)
    trainer = None
    try:
        with distributed.session(config.train.device) as context:
            resume = bool(args.resume) and args.resume != AUTO
            if not resume and (args.resume == AUTO or distributed.restarted()):
                # rank 0 looks, every rank follows: the Trainer then refuses another config's run
                resume = distributed.broadcast(context, context.is_main and RunDirectory(run_dir).holds_run())
            trainer = Trainer(
                config,
                run_dir,
                resume=resume,
                progress=not args.quiet,
                distributed=context,
                command=command_line(["pspnet", *args.argv]),
                experiment=Path(args.config).stem if args.config else None,
            )
            result = trainer.train()
    except distributed.LostProcess as exc:  # every process reports it: each may be the last one left
        where = f"iteration {trainer.iteration}" if trainer is not None else "startup"
        left = distributed.restarts_left()
        then = (
            f"torchrun restarts the workers (restarts left: {left})"
            if left > 0
            else f"continue the run with: {resume_command(run_dir, context.world_size, distributed.started_by_srun())}"
        )
        print(f"error: rank {context.rank}: {exc} at {where}; {then}", file=sys.stderr)
        return 1
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
    if "mlflow" in trainer.config.train.loggers:
        from ..training.tracking import log_run_artifacts

        log_run_artifacts(run_dir, [report])
    return 0
