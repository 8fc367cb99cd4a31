"""The `pspnet` entry point: builds the parser from the command modules and turns errors into one line.

Errors caused by the user's input (bad config, missing file, corrupt checkpoint) print one line
starting with `error:` and exit with status 2; a prediction run in which some inputs failed exits 1.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from .. import __version__
from ..errors import PSPNetError
from . import data, evaluate, export, info, playground, report, runs, serve, train


class VersionAction(argparse.Action):
    """`--version`: pspnet's version, torch's (imported only here: `--help` stays fast) and the device available."""

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        import torch

        device = f"cuda ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else "cpu"
        print(f"pspnet {__version__} (torch {torch.__version__}, device: {device})")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pspnet", description="PSPNet semantic segmentation toolkit.")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument(
        "--version", action=VersionAction, nargs=0, help="show the versions of pspnet and torch, and the device"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    train.add_parser(sub)
    evaluate.add_parsers(sub)
    export.add_parser(sub)
    report.add_parser(sub)
    runs.add_parser(sub)
    serve.add_parser(sub)
    playground.add_parser(sub)
    data.add_parser(sub)
    info.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    args.argv = argv
    main_process = os.environ.get("RANK", "0") == "0"  # under torchrun, rank 0 speaks for the job
    logging.basicConfig(
        level=logging.INFO if main_process else logging.ERROR, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return args.run(args)
    except PSPNetError as exc:
        if main_process:
            print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # a second Ctrl-C: files already written are complete (atomic writes)
        print("error: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into a command that stopped reading (`| head`)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
