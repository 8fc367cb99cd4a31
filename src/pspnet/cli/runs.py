"""`pspnet runs`: the run directories under a folder as one table, or what differs between some of them; read
from the run directories alone (no tracking server needed)."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from ..errors import ConfigError

SORT_KEYS = ("name", "encoder", "iterations", "miou", "time", "ended")
LAST_METRICS = (("miou", "mIoU"), ("macc", "mAcc"), ("aacc", "aAcc"))
"""The metrics of a run's last validation that `--diff` shows (val_log.csv's columns)."""


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "runs",
        help="list the training runs under a folder, or compare some",
        description="One line per run directory under ROOT: encoder, iterations, best val mIoU, wall time and how "
        "its last session ended (finished, interrupted, failed, running), read from each run's config.yaml, "
        "run.json and CSV logs. With --diff: the config keys that differ between the given runs, and their metrics.",
    )
    parser.add_argument("root", nargs="?", default="runs", help="folder searched for run directories (default: runs)")
    parser.add_argument(
        "--sort",
        type=str.lower,
        choices=SORT_KEYS,
        default="name",
        help="order of the table: name (default), encoder, iterations, mIoU (best first), time (longest first), ended",
    )
    parser.add_argument(
        "--diff",
        nargs="+",
        metavar="RUN",
        help="compare these runs (paths, or names relative to ROOT): only the config keys that differ, then metrics",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..training.run_index import find_runs, read_run

    root = Path(args.root)
    if args.diff:
        if len(args.diff) < 2:
            raise ConfigError("--diff: name two or more runs to compare")
        runs = [read_run(_resolve(name, root), root if root.is_dir() else None) for name in args.diff]
        print(_diff_table(runs))
        return 0
    if not root.is_dir():
        raise ConfigError(f"runs: {root} is not a folder (give the folder that holds the run directories)")
    runs = [read_run(path, root) for path in find_runs(root)]
    if not runs:
        print(f"no run directories under {root}")
        return 0
    print(_runs_table(_sorted(runs, args.sort)))
    for summary in runs:
        if summary.problem:
            print(f"{summary.name}: {summary.problem}")
    return 0


def _resolve(name: str, root: Path) -> Path:
    """The run directory `name` (a path, else a name under `root`)."""
    from ..training.run_index import is_run_dir

    for path in (Path(name), root / name):
        if is_run_dir(path):
            return path
    raise ConfigError(f"--diff: {name} is not a run directory (nor is {root / name})")


def _sorted(runs: list, key: str) -> list:
    if key == "miou":
        return sorted(runs, key=lambda r: -r.best_miou if r.best_miou is not None else math.inf)
    if key == "time":
        return sorted(runs, key=lambda r: -r.wall_seconds)
    if key == "iterations":
        return sorted(runs, key=lambda r: -r.iteration)
    attribute = {"name": "name", "encoder": "encoder", "ended": "ended"}[key]
    return sorted(runs, key=lambda r: str(getattr(r, attribute) or ""))


def _runs_table(runs: list) -> str:
    rows = [["run", "encoder", "iterations", "best mIoU", "wall time", "ended"]]
    for summary in runs:
        rows.append(
            [
                summary.name,
                summary.encoder or "?",
                _iterations(summary),
                _percent(summary.best_miou),
                _duration(summary.wall_seconds),
                summary.ended,
            ]
        )
    return _format(rows, right=frozenset({2, 3, 4}))


def _diff_table(runs: list) -> str:
    from ..training.run_index import differing_keys

    header = ["", *(summary.name for summary in runs)]
    flat = [summary.flat_config() for summary in runs]
    rows = [header]
    keys = differing_keys(runs)
    rows += [[key, *(_value(config.get(key, "(unset)")) for config in flat)] for key in keys]
    if not keys:
        rows.append(["(the configs are the same)", *("" for _ in runs)])
    rows.append(["", *("" for _ in runs)])
    last = [summary.last_validation for summary in runs]
    rows += [
        ["iterations", *(_iterations(summary) for summary in runs)],
        ["best mIoU", *(_percent(summary.best_miou) for summary in runs)],
        *[[f"last {label}", *(_percent(values.get(key)) for values in last)] for key, label in LAST_METRICS],
        ["wall time", *(_duration(summary.wall_seconds) for summary in runs)],
        ["ended", *(summary.ended for summary in runs)],
    ]
    return _format(rows)


def _iterations(summary) -> str:
    return f"{summary.iteration}/{summary.max_iters if summary.max_iters is not None else '?'}"


def _percent(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{100 * value:.2f}"


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


def _value(value) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _format(rows: list[list[str]], right: frozenset[int] = frozenset()) -> str:
    """Rows as aligned columns (those in `right` aligned right), two spaces apart."""
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [cell.rjust(w) if i in right else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)
