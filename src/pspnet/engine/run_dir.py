"""A training run's directory: what it holds, whether a run may start or resume there, and its logs.

    config.yaml                      the resolved config
    checkpoints/last.safetensors     latest weights + metadata (what `pspnet evaluate/predict` read)
    checkpoints/best.safetensors     weights with the best validation mIoU
    checkpoints/last.resume.pt       model, optimizer, scheduler, RNG and iteration (for --resume)
    train_log.csv, val_log.csv       metrics; tensorboard/ has the same as TensorBoard events

Each file is written atomically, the resume state before `last.safetensors`, so that a kill at any
moment leaves a directory that `--resume` continues (or, before the first save, starts over).
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

import torch
import yaml

from ..config import Config, dump_yaml
from ..errors import CheckpointError, ConfigError
from ..io.files import atomic_path, remove_stale_temp_files
from ..checkpoint.native import read_metadata
from ..io.weights import load_torch_file

log = logging.getLogger(__name__)

RESUMABLE_CHANGES = {
    "train.log_interval", "train.eval_interval", "train.checkpoint_interval", "train.device", "data.num_workers",
    "train.max_iters",
}
"""Config keys that may differ between a run and its --resume: settings that do not change the result,
and `train.max_iters` (a longer schedule: the poly policy is evaluated with the new value from the
resumed iteration on)."""


class RunDirectory:
    """The files of one training run (see the module docstring)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.config_path = self.path / "config.yaml"
        self.checkpoints = self.path / "checkpoints"
        self.last = self.checkpoints / "last.safetensors"
        self.best = self.checkpoints / "best.safetensors"
        self.resume_state = self.checkpoints / "last.resume.pt"

    def checkpoint(self) -> Path:
        """The run's best checkpoint, else its last; CheckpointError when it has neither."""
        for path in (self.best, self.last):
            if path.is_file():
                return path
        raise CheckpointError(f"{self.path} is a folder but holds no checkpoint ({self.best.relative_to(self.path)} or "
                              f"{self.last.relative_to(self.path)})")

    def check_new(self) -> None:
        """ConfigError when the directory already holds a run."""
        if self.last.exists() or self.resume_state.exists():
            raise ConfigError(f"{self.path} already holds a run; continue it with `pspnet train --resume {self.path}` "
                              "or choose another --out")

    def saved_config(self) -> Config:
        """The config the run was started with."""
        if not self.config_path.is_file():
            raise CheckpointError(f"--resume: {self.path} holds no run ({self.config_path.name} is missing)")
        return Config.from_dict(yaml.safe_load(self.config_path.read_text()), source=str(self.config_path))

    def can_resume(self) -> bool:
        """Whether a complete resume state exists (else `--resume` starts the run over)."""
        return self.resume_state.is_file()

    def check_resume(self, config: Config) -> Config:
        """`config` with what the run resolved at its start (num_classes) filled in; ConfigError when the
        run cannot be resumed with it."""
        saved = self.saved_config()
        if config.model.num_classes is None:
            config = config.replace([f"model.num_classes={saved.model.num_classes}"])
        changed = sorted(k for k in diff_keys(saved.to_dict(), config.to_dict()) if k not in RESUMABLE_CHANGES)
        if changed:
            raise ConfigError(
                f"--resume: the config differs from the run's {self.config_path} in {', '.join(changed)}; "
                "resume with the same config (or start a new run with --out)"
            )
        return config

    def create(self, config: Config) -> None:
        """Make the directory (once the run can start), remove what killed writes left, write the config."""
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        for path in remove_stale_temp_files(self.path, safetensors=True):
            log.info("removed %s, left by an interrupted write", path)
        self.write_config(config)

    def write_config(self, config: Config) -> None:
        with atomic_path(self.config_path) as tmp:
            tmp.write_text(dump_yaml(config))

    def save_resume_state(self, state: dict[str, Any]) -> None:
        with atomic_path(self.resume_state) as tmp:
            torch.save(state, tmp)

    def load_resume_state(self) -> dict[str, Any]:
        return load_torch_file(self.resume_state)

    def last_iteration(self) -> int | None:
        """The iteration `last.safetensors` was saved at (None when there is none)."""
        if not self.last.is_file():
            return None
        return read_metadata(self.last).get("iteration")


class RunLog:
    """The CSV and TensorBoard logs of a run; rows after `start_iteration` (written after the checkpoint a
    resumed run restarts from) are dropped."""

    def __init__(self, run: RunDirectory, start_iteration: int):
        from torch.utils.tensorboard import SummaryWriter  # heavy (tensorboard, protobuf): only when a run starts

        self.path = run.path
        for name in ("train_log.csv", "val_log.csv"):
            _truncate_csv(self.path / name, start_iteration)
        self.tensorboard = SummaryWriter(str(self.path / "tensorboard"), purge_step=start_iteration or None)

    def _append(self, name: str, row: dict[str, Any]) -> None:
        path = self.path / name
        new = not path.exists()
        with open(path, "a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(row))
            if new:
                writer.writeheader()
            writer.writerow(row)

    def train(self, iteration: int, values: dict[str, float]) -> None:
        """One row of training values (losses, lr, timing)."""
        self._append("train_log.csv", {"iteration": iteration, **values})
        for key, value in values.items():
            self.tensorboard.add_scalar(f"train/{key}", value, iteration)

    def validation(self, iteration: int, values: dict[str, float]) -> None:
        """One row of validation metrics (miou, macc, aacc)."""
        self._append("val_log.csv", {"iteration": iteration, **values})
        for key, value in values.items():
            self.tensorboard.add_scalar(f"val/{key}", value, iteration)

    def close(self) -> None:
        self.tensorboard.close()


def diff_keys(a: dict, b: dict, prefix: str = "") -> set[str]:
    """Dotted keys whose values differ between two config dicts (free-form dicts compared whole)."""
    keys = set()
    for key in set(a) | set(b):
        left, right = a.get(key), b.get(key)
        if isinstance(left, dict) and isinstance(right, dict) and key not in ("encoder_kwargs", "options"):
            keys |= diff_keys(left, right, f"{prefix}{key}.")
        elif left != right:
            keys.add(f"{prefix}{key}")
    return keys


def _truncate_csv(path: Path, iteration: int) -> None:
    if not path.exists():
        return
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    kept = [rows[0]] + [row for row in rows[1:] if int(row[0]) <= iteration] if rows else []
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as handle:
            csv.writer(handle).writerows(kept)
