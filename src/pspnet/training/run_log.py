"""A run's logs: train_log.csv and val_log.csv, the same as TensorBoard events (logger `tensorboard`), and
curves.png. MLflow gets them from the trainer's tracker (tracking.py)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from ..io.files import atomic_path
from ..report.plots import save_png, training_curves
from .run_dir import RunDirectory
from .run_index import read_csv


class RunLog:
    """The CSV logs of a run (and with `tensorboard` the same as TensorBoard events), and curves.png; rows after
    `start_iteration` (written after the checkpoint a resumed run restarts from) are dropped."""

    def __init__(self, run: RunDirectory, start_iteration: int, tensorboard: bool = True):
        self.run = run
        for path in (run.train_log, run.val_log):
            _truncate_csv(path, start_iteration)
        self.tensorboard = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # heavy (tensorboard, protobuf): only when a run starts

            self.tensorboard = SummaryWriter(str(run.path / "tensorboard"), purge_step=start_iteration or None)

    def train(self, iteration: int, values: dict[str, float]) -> None:
        """One row of training values (losses, lr, timing)."""
        _append_csv(self.run.train_log, {"iteration": iteration, **values})
        self._add_scalars("train", iteration, values)

    def validation(self, iteration: int, values: dict[str, float]) -> None:
        """One row of validation metrics (miou, macc, aacc, then `IoU/<class>` for each class; NaN for a class
        absent from ground truth and prediction); curves.png is redrawn."""
        _append_csv(self.run.val_log, {"iteration": iteration, **values})
        self._add_scalars("val", iteration, values)
        save_png(training_curves(read_csv(self.run.train_log), read_csv(self.run.val_log)), self.run.curves)

    def _add_scalars(self, kind: str, iteration: int, values: dict[str, float]) -> None:
        if self.tensorboard is not None:
            for key, value in values.items():
                self.tensorboard.add_scalar(f"{kind}/{key}", value, iteration)

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()


def _append_csv(path: Path, row: dict[str, Any]) -> None:
    new = not path.exists()
    with open(path, "a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)


def _truncate_csv(path: Path, iteration: int) -> None:
    if not path.exists():
        return
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    kept = [rows[0]] + [row for row in rows[1:] if int(row[0]) <= iteration] if rows else []
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as handle:
            csv.writer(handle).writerows(kept)
