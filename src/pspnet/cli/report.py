"""`pspnet report`: one self-contained HTML page about a training run."""

from __future__ import annotations

import argparse

from .common import add_device


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "report",
        help="write an HTML report of a training run",
        description="One self-contained HTML file about a run: its config, command lines, software, hardware and "
        "wall time; the training curves; the evaluation of its best (else last) checkpoint on the val "
        "split under the run's protocol (per-class chart and table, confusion matrix); and sample "
        "predictions, the worst images first. `pspnet train` writes RUN_DIR/report.html when it ends.",
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by `pspnet train`")
    parser.add_argument("--out", help="HTML file to write (default: RUN_DIR/report.html)")
    parser.add_argument("--split", help="split to evaluate (default: the config's val split)")
    parser.add_argument(
        "--samples",
        type=int,
        default=8,
        metavar="N",
        help="sample predictions to show: the worst half and a spread of the others (default 8)",
    )
    add_device(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..training.run_report import report_run  # heavy (torch, matplotlib): only when the command runs

    out = report_run(args.run_dir, args.out, args.split, args.samples, args.device, progress=not args.quiet)
    print(f"report: {out}")
    return 0
