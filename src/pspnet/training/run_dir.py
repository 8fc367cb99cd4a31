"""A training run's directory: what it holds, whether a run may start or resume there, and its logs.

    config.yaml                      the resolved config
    run.json                         each `train` session: command line, software, hardware, wall time
    checkpoints/last.safetensors     latest weights + metadata (what `pspnet evaluate/predict` read)
    checkpoints/best.safetensors     weights with the best validation mIoU
    checkpoints/last.resume.pt       model, optimizer, scheduler, RNG and iteration (for --resume)
    train_log.csv, val_log.csv       metrics; tensorboard/ has the same as TensorBoard events (run_log.py)
    curves.png                       the training curves, redrawn at each validation
    report.html                      the run report (`pspnet report`), written when training ends
    mlflow.json                      the MLflow run it logs to, with the `mlflow` logger (tracking.py)

Each file is written atomically, the resume state before `last.safetensors`, so that a kill at any
moment leaves a directory that `--resume` continues (or, before the first save, starts over).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import yaml

from ..checkpoint.native import read_metadata
from ..config import Config, dump_yaml
from ..errors import CheckpointError, ConfigError
from ..io.files import atomic_path, remove_stale_temp_files, write_json
from ..io.weights import load_torch_file

log = logging.getLogger(__name__)

RESUMABLE_CHANGES = {
    "train.log_interval",
    "train.eval_interval",
    "train.checkpoint_interval",
    "train.device",
    "data.num_workers",
    "train.max_iters",
    "train.loggers",
    "train.mlflow_log_checkpoint",
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
        self.run_info = self.path / "run.json"
        self.train_log = self.path / "train_log.csv"
        self.val_log = self.path / "val_log.csv"
        self.curves = self.path / "curves.png"
        self.report = self.path / "report.html"

    @classmethod
    def holding(cls, checkpoint: str | Path) -> RunDirectory | None:
        """The run directory a checkpoint file was saved in (`RUN/checkpoints/X.safetensors`), if it is one."""
        run = cls(Path(checkpoint).parent.parent)
        return run if Path(checkpoint).parent == run.checkpoints and run.config_path.is_file() else None

    def checkpoint(self) -> Path:
        """The run's best checkpoint, else its last; CheckpointError when it has neither."""
        for path in (self.best, self.last):
            if path.is_file():
                return path
        raise CheckpointError(
            f"{self.path} is a folder but holds no checkpoint ({self.best.relative_to(self.path)} or "
            f"{self.last.relative_to(self.path)})"
        )

    def holds_run(self) -> bool:
        """Whether a run saved a checkpoint here (what `check_new` refuses and `--resume auto` continues)."""
        return self.last.exists() or self.resume_state.exists()

    def check_new(self) -> None:
        """ConfigError when the directory already holds a run."""
        if self.holds_run():
            raise ConfigError(
                f"{self.path} already holds a run; continue it with `pspnet train --resume {self.path}` "
                "or choose another --out"
            )

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
            config = config.with_num_classes(saved.model.num_classes)
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

    def sessions(self) -> list[dict[str, Any]]:
        """The `train` sessions recorded in run.json, oldest first ([] when there is none)."""
        if not self.run_info.is_file():
            return []
        try:
            return list(json.loads(self.run_info.read_text())["sessions"])
        except (ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{self.run_info}: not a run record ({exc})") from None

    @contextlib.contextmanager
    def session(self, record: dict[str, Any], iteration: Callable[[], int]) -> Iterator[dict[str, Any]]:
        """Add `record` (command, software, hardware, ...) to run.json with its start time; when the block
        ends, add the end time, wall time, `iteration()` and the outcome: what the block set in
        `record["outcome"]` (default "finished"), or "interrupted" / "failed: ..." when it raised."""
        sessions = self.sessions()
        record.update(started=_now(), finished=None, outcome="running")
        start = time.monotonic()
        write_json(self.run_info, {"sessions": [*sessions, record]})
        try:
            yield record
            if record["outcome"] == "running":
                record["outcome"] = "finished"
        except BaseException as exc:
            record["outcome"] = "interrupted" if isinstance(exc, KeyboardInterrupt) else f"failed: {exc}"
            raise
        finally:
            record.update(finished=_now(), wall_seconds=round(time.monotonic() - start, 1), end_iteration=iteration())
            write_json(self.run_info, {"sessions": [*sessions, record]})

    def last_iteration(self) -> int | None:
        """The iteration `last.safetensors` was saved at (None when there is none)."""
        if not self.last.is_file():
            return None
        return read_metadata(self.last).get("iteration")


def _now() -> str:
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")


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
