"""Experiment tracking in MLflow (`train.loggers: [csv, tensorboard, mlflow]`, extra `pspnet[mlflow]`).

The trainer talks to a `Tracker`: `log_metrics(step, values)`, `checkpointed(step)` and `close(outcome)`. The
base class records nothing (the other ranks of a distributed run, runs without the `mlflow` logger);
`MlflowTracker` sends from a thread of its own, so that a slow or absent tracking server never holds up
training:

- Where: MLFLOW_TRACKING_URI, else `sqlite:///<parent of RUN_DIR>/mlflow.db` with the artifacts in
  `mlartifacts/` beside it; the experiment MLFLOW_EXPERIMENT_NAME, else the config file's name, else `pspnet`.
  The MLflow run's id is kept in RUN_DIR/mlflow.json, so that `--resume` continues the same MLflow run.
- What: every resolved config key as a parameter, tags (pspnet version, git commit, command line, hardware),
  the train and val metrics of the CSV logs (`train/loss`, `train/lr`, `val/mIoU`, `val/IoU/<class>`, ...)
  with the iteration as the step, and the config, curves.png (and the best checkpoint with
  `train.mlflow_log_checkpoint`) as artifacts; `pspnet train` adds report.html (`log_run_artifacts`).
- When: metric values wait in a bounded buffer until a checkpoint holds them (`checkpointed`). A killed run
  resumes from its last checkpoint, and its CSV logs drop the rows after it; MLflow, which cannot take a value
  back, so never gets a step twice. When a run is opened again, the values of the CSV logs that MLflow lacks
  are sent: the CSV logs are the record, MLflow a copy of it.
- Failures: the first is a warning, and sending is retried with a growing pause (at most RETRY_MAX_S) while
  training goes on; `close` gives the thread a last try of at most CLOSE_TIMEOUT_S. A tracking failure never
  stops a run, and the CSV logs never depend on MLflow.

MLflow's telemetry is off unless MLFLOW_DISABLE_TELEMETRY is set, and its HTTP requests are not retried by
MLflow itself (MLFLOW_HTTP_REQUEST_MAX_RETRIES 0, MLFLOW_HTTP_REQUEST_TIMEOUT 10 s, unless set): the tracker
retries on its own schedule.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import re
import subprocess
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .. import __version__
from ..config import Config
from ..errors import ConfigError
from ..io.files import write_json
from ..io.weights import file_sha256
from .run_dir import RunDirectory
from .run_index import flatten_config, read_csv

log = logging.getLogger(__name__)

RECORD = "mlflow.json"
"""The file of a run directory that names its MLflow run: tracking_uri (null: the default store beside the run
directory), experiment and run_id (null until MLflow answered)."""
DEFAULT_EXPERIMENT = "pspnet"
DEFAULT_ROOT = Path("runs")
"""Where the default store of an evaluated checkpoint that lies in no run directory is (`runs/mlflow.db`)."""
ENVIRONMENT = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}
"""MLflow settings pspnet sets for the process unless they are set already."""
MAX_BUFFERED = 100_000
"""Metric values held for MLflow at most; past it the oldest are dropped (the CSV logs keep them, and the
next time the run is opened they are sent)."""
RETRY_FIRST_S, RETRY_MAX_S = 1.0, 60.0
"""The pause before sending again after a failure, doubled after each failure up to RETRY_MAX_S."""
CLOSE_TIMEOUT_S = 30.0
"""How long `close` waits for the last values and artifacts to be sent."""
MAX_PARAM_LENGTH = 6000
"""MLflow's limit on a parameter value's length; longer values are cut (the full config is an artifact)."""
BATCH_METRICS, BATCH_PARAMS = 1000, 100
"""MLflow's limits on the metrics and on the params or tags of one batch."""
STATUS = {"finished": "FINISHED", "stopped": "KILLED", "interrupted": "KILLED", "failed": "FAILED"}
"""The MLflow run status of how a training session ended (run.json's outcome)."""
MAX_TAG_LENGTH, MAX_KEY_LENGTH = 8000, 250
"""MLflow's limits on a tag value's and on a key's length."""
VAL_NAMES = {"miou": "mIoU", "macc": "mAcc", "aacc": "aAcc"}
"""MLflow's names of val_log.csv's summary columns."""
NAME_PATTERN = re.compile(r"[^\w\-. :]")
"""Characters replaced in a part of a metric or param name: those MLflow refuses, and the slash (a class
named `a/b` stays one part)."""


def check_available(setting: str = "train.loggers") -> None:
    """ConfigError unless MLflow is installed (what the `mlflow` logger and `evaluate --mlflow` need)."""
    if importlib.util.find_spec("mlflow") is None:
        raise ConfigError(
            f"{setting}: mlflow is not installed; install the extra with pip install 'pspnet[mlflow]' "
            f"(or leave out {'mlflow' if setting == 'train.loggers' else setting})"
        )


def tracked_metrics(kind: str, values: Mapping[str, float]) -> dict[str, float]:
    """A CSV log row (without its iteration) under MLflow's names: `train/<column>` for the train log,
    `val/mIoU`, `val/mAcc`, `val/aAcc` and `val/IoU/<class>` for the val log."""
    names = VAL_NAMES if kind == "val" else {}
    return {
        "/".join([kind, *(clean_name(part) for part in names.get(key, key).split("/", 1))]): float(value)
        for key, value in values.items()
        if key != "iteration"
    }


def clean_name(text: str) -> str:
    """`text` as one part of an MLflow key: refused characters as `_`, cut to MLflow's key length."""
    text = NAME_PATTERN.sub("_", text)[:MAX_KEY_LENGTH]
    return text if text.strip(". ") else "_"


def param_values(config: Config) -> dict[str, str]:
    """Every resolved config key (`model.encoder`, `model.encoder_kwargs.channels`, ...) with its value as text
    (YAML-like: `true`, `null`, `[1, 2]`), cut to MLflow's length limit."""
    texts = {
        key: value if isinstance(value, str) else json.dumps(value)
        for key, value in flatten_config(config.to_dict()).items()
    }
    return {NAME_PATTERN.sub("_", key)[:MAX_KEY_LENGTH]: text[:MAX_PARAM_LENGTH] for key, text in texts.items()}


def default_uri(root: Path) -> str:
    """The SQLite store of the runs under `root`."""
    return f"sqlite:///{root.resolve() / 'mlflow.db'}"


def git_commit() -> str | None:
    """The commit checked out in the current directory (None outside a git working tree)."""
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0:
        return None
    return done.stdout.strip() or None


def _prepare_environment() -> None:
    for name, value in ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    logging.getLogger("alembic").setLevel(logging.WARNING)  # the SQLite store's schema migrations


def _client(uri: str):
    """An MlflowClient of `uri` (a SQLite file's folder is made first)."""
    _prepare_environment()
    from mlflow import MlflowClient

    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=uri)


def _experiment_id(client, uri: str, name: str) -> str:
    """The id of the experiment `name`, created if it is new (a SQLite store's artifacts go beside the file)."""
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = None
    if uri.startswith("sqlite:///"):
        location = (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").resolve().as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
    except Exception:  # another process created it in between
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def _read_record(run: RunDirectory) -> dict[str, Any]:
    path = run.path / RECORD
    if not path.is_file():
        return {}
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        log.warning("%s: unreadable (%s); the run gets a new MLflow run", path, exc)
        return {}
    return record if isinstance(record, dict) else {}


def _record_uri(run: RunDirectory, record: dict[str, Any]) -> str:
    """The store a run directory's record names: its own, else the default beside the run directory."""
    return record.get("tracking_uri") or default_uri(run.path.parent)


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300] if text else ''}"


def _batches(items: list, size: int) -> list[list]:
    return [items[start : start + size] for start in range(0, len(items), size)]


class Tracker:
    """What the trainer reports to an experiment tracker; this one records nothing."""

    def log_metrics(self, step: int, values: Mapping[str, float]) -> None:
        """Values of iteration `step` (MLflow names: `tracked_metrics`)."""

    def checkpointed(self, step: int) -> None:
        """A checkpoint holds the run up to iteration `step`: its values may be sent."""

    def close(self, outcome: str) -> None:
        """The session ended as `outcome` (finished, stopped, interrupted, failed)."""


def open_tracker(
    run: RunDirectory,
    config: Config,
    start_iteration: int,
    experiment: str | None = None,
    tags: Mapping[str, str] | None = None,
) -> Tracker:
    """The tracker of a training session of `run` that starts at `start_iteration`: an `MlflowTracker` when
    `train.loggers` names mlflow, else one that records nothing."""
    if "mlflow" not in config.train.loggers:
        return Tracker()
    return MlflowTracker(run, config, start_iteration, experiment, tags)


class MlflowTracker(Tracker):
    """Sends a training session to MLflow from a background thread (see the module docstring)."""

    def __init__(
        self,
        run: RunDirectory,
        config: Config,
        start_iteration: int,
        experiment: str | None = None,
        tags: Mapping[str, str] | None = None,
    ):
        check_available()
        _prepare_environment()
        importlib.import_module("mlflow")  # here, not in the thread: the import takes seconds and takes locks

        self.run, self.config = run, config
        self.record = _read_record(run)
        if self.record.get("run_id"):
            self.uri = _record_uri(run, self.record)
        else:  # no MLflow run yet: where to make it (a record without an id keeps the experiment's name)
            given = os.environ.get("MLFLOW_TRACKING_URI") or self.record.get("tracking_uri")
            experiment = (
                os.environ.get("MLFLOW_EXPERIMENT_NAME")
                or self.record.get("experiment")
                or experiment
                or DEFAULT_EXPERIMENT
            )
            self.record = {"tracking_uri": given, "experiment": experiment, "run_id": None}
            self.uri = given or default_uri(run.path.parent)
            write_json(run.path / RECORD, self.record)
        self.tags = {
            "pspnet.version": __version__,
            "pspnet.run_dir": str(run.path.resolve()),
            **{f"pspnet.{key}": str(value)[:MAX_TAG_LENGTH] for key, value in (tags or {}).items()},
        }
        commit = git_commit()
        if commit:
            self.tags["mlflow.source.git.commit"] = commit
        # what MLflow may lack of the CSV logs up to the resumed checkpoint (read now: training appends later)
        self.backlog = [
            (key, int(row["iteration"]), value)
            for kind, path in (("train", run.train_log), ("val", run.val_log))
            for row in read_csv(path)
            if row.get("iteration", math.inf) <= start_iteration
            for key, value in tracked_metrics(kind, row).items()
        ]
        self.client = None
        self.run_id: str | None = self.record.get("run_id")
        self.opened = False
        self.warned = False
        self.dropped = 0
        self.sequence = 0
        self.pending: deque[tuple[int, Any]] = deque()  # (sequence number, mlflow Metric)
        self.released = start_iteration
        self.artifacts: deque[tuple[Path, str | None]] = deque([(run.config_path, None)])
        self.status: str | None = None
        self.closing = False
        self.condition = threading.Condition()
        self.thread = threading.Thread(target=self._work, name="pspnet-mlflow", daemon=True)
        self.thread.start()

    # ------------------------------------------------------------ the trainer's side (never blocks for long)
    def log_metrics(self, step: int, values: Mapping[str, float]) -> None:
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        with self.condition:
            for key, value in values.items():
                self.sequence += 1
                self.pending.append((self.sequence, Metric(key, float(value), stamp, step)))
            while len(self.pending) > MAX_BUFFERED:
                self.pending.popleft()
                self.dropped += 1
            if step <= self.released:
                self.condition.notify()

    def checkpointed(self, step: int) -> None:
        with self.condition:
            self.released = max(self.released, step)
            self.condition.notify()

    def close(self, outcome: str) -> None:
        """Queue the curves (and the best checkpoint) and the run's status; wait at most CLOSE_TIMEOUT_S for
        the thread to send them, then warn about what MLflow did not get."""
        with self.condition:
            if self.run.curves.is_file():
                self.artifacts.append((self.run.curves, None))
            if self.config.train.mlflow_log_checkpoint and self.run.best.is_file():
                self.artifacts.append((self.run.best, "checkpoints"))
            self.status = STATUS.get(outcome.split(":")[0], "FAILED")
            self.closing = True
            self.condition.notify()
        self.thread.join(CLOSE_TIMEOUT_S)
        with self.condition:
            values = sum(1 for _, metric in self.pending if metric.step <= self.released) + self.dropped
            files = len(self.artifacts)
        if values or files or self.run_id is None:
            log.warning(
                "MLflow (%s) did not get %d metric values and %d files of %s; the run directory has them "
                "(train_log.csv, val_log.csv), and a --resume sends the values",
                self.uri,
                values,
                files,
                self.run.path,
            )

    # ------------------------------------------------------------ the thread's side
    def _work(self) -> None:
        delay = RETRY_FIRST_S
        while True:
            try:
                self._send()
            except Exception as exc:  # whatever the store or the network did: training goes on
                self._failed(exc)
                with self.condition:
                    if self.closing:
                        return
                    deadline = time.monotonic() + delay
                    while not self.closing and time.monotonic() < deadline:
                        self.condition.wait(deadline - time.monotonic())
                delay = min(2 * delay, RETRY_MAX_S)
                continue
            if self.warned and delay > RETRY_FIRST_S:
                log.info("MLflow (%s) answers again", self.uri)
            delay = RETRY_FIRST_S
            with self.condition:
                while not self._ready() and not self.closing:
                    self.condition.wait()
                if self.closing and not self._ready():
                    return

    def _ready(self) -> bool:
        """Whether the thread has something to send (call with the condition held)."""
        return (
            not self.opened
            or bool(self.artifacts)
            or self.status is not None
            or bool(self.pending and self.pending[0][1].step <= self.released)
        )

    def _failed(self, exc: Exception) -> None:
        if self.warned:
            log.debug("MLflow (%s) failed again: %s", self.uri, _short(exc))
            return
        self.warned = True
        log.warning(
            "MLflow tracking at %s failed (%s); training goes on, train_log.csv and val_log.csv keep every value, "
            "and MLflow gets them once it answers",
            self.uri,
            _short(exc),
        )

    def _send(self) -> None:
        if not self.opened:
            self._open()
        while True:
            with self.condition:
                batch = []
                for sequence, metric in self.pending:
                    if metric.step > self.released or len(batch) == BATCH_METRICS:
                        break
                    batch.append((sequence, metric))
            if not batch:
                break
            self.client.log_batch(self.run_id, metrics=[metric for _, metric in batch])
            with self.condition:
                while self.pending and self.pending[0][0] <= batch[-1][0]:
                    self.pending.popleft()
        while self.artifacts:
            path, folder = self.artifacts[0]
            if path.is_file():
                self.client.log_artifact(self.run_id, str(path), artifact_path=folder)
            with self.condition:
                self.artifacts.popleft()
        if self.status is not None:
            self.client.set_terminated(self.run_id, self.status)
            with self.condition:
                self.status = None

    def _open(self) -> None:
        """Create the MLflow run (or find the run directory's again), write mlflow.json, log the params and
        tags, and send what MLflow lacks of the CSV logs."""
        from mlflow.entities import Metric, Param, RunTag
        from mlflow.exceptions import MlflowException

        if self.client is None:
            self.client = _client(self.uri)
        existing = None
        if self.run_id is not None:
            try:
                existing = self.client.get_run(self.run_id)
            except MlflowException as exc:
                if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                    raise
                log.warning(
                    "MLflow (%s) has no run %s any more; %s gets a new one", self.uri, self.run_id, self.run.path
                )
                self.run_id = None
        if existing is None:
            experiment = _experiment_id(self.client, self.uri, self.record["experiment"])
            self.run_id = self.client.create_run(experiment, run_name=self.run.path.name).info.run_id
            write_json(self.run.path / RECORD, {**self.record, "run_id": self.run_id})
        else:
            self.client.update_run(self.run_id, status="RUNNING")
        logged = existing.data.params if existing is not None else {}
        params = param_values(self.config)
        tags = dict(self.tags)
        tags.update({f"pspnet.resumed_with.{k}": v for k, v in params.items() if k in logged and logged[k] != v})
        for batch in _batches([Param(k, v) for k, v in params.items() if k not in logged], BATCH_PARAMS):
            self.client.log_batch(self.run_id, params=batch)
        for batch in _batches([RunTag(k, v) for k, v in tags.items()], BATCH_PARAMS):
            self.client.log_batch(self.run_id, tags=batch)
        have: dict[str, set[int]] = {}
        if existing is not None:
            for key in {key for key, _, _ in self.backlog}:
                have[key] = {metric.step for metric in self.client.get_metric_history(self.run_id, key)}
        stamp = int(time.time() * 1000)
        missing = [Metric(k, v, stamp, step) for k, step, v in self.backlog if step not in have.get(k, ())]
        for batch in _batches(missing, BATCH_METRICS):
            self.client.log_batch(self.run_id, metrics=batch)
        self.backlog = []
        self.opened = True


def log_run_artifacts(run_dir: str | Path, paths: Sequence[str | Path]) -> bool:
    """Upload files (the report of `pspnet train`) to the MLflow run of a run directory; False when it has none
    or MLflow failed (with a warning: the files stay in the run directory)."""
    run = RunDirectory(run_dir)
    record = _read_record(run)
    if not record.get("run_id"):
        return False
    uri = _record_uri(run, record)
    try:
        client = _client(uri)
        for path in paths:
            client.log_artifact(record["run_id"], str(path))
    except Exception as exc:  # a tracking failure is never a training failure
        log.warning("MLflow (%s) did not take %s: %s", uri, ", ".join(map(str, paths)), _short(exc))
        return False
    return True


def log_evaluation(
    checkpoint: str | Path,
    metrics: Mapping[str, Any],
    class_names: Sequence[str],
    split: str = "val",
    iteration: int | None = None,
    experiment: str | None = None,
) -> str | None:
    """Log an evaluation to MLflow; returns the MLflow run id (None when MLflow failed, with a warning).

    `metrics` is `pspnet.report.results.metrics_to_dict`'s summary (miou, macc, aacc, per_class, protocol:
    None for undefined values, which are left out). They are logged as `eval/<split>/mIoU`, `.../mAcc`,
    `.../aAcc`, `.../IoU/<class>` and `.../Acc/<class>` (classes in `class_names` order) at step `iteration`
    (0 if None), with the protocol as the tag `eval/<split>/protocol`. The run: that of the checkpoint's run
    directory (its mlflow.json), else the one tagged with the checkpoint's SHA-256, else a new one, in
    MLFLOW_TRACKING_URI (else the default store beside the checkpoint's run directory, or runs/mlflow.db) and
    MLFLOW_EXPERIMENT_NAME (else `experiment`, else `pspnet`).
    """
    _prepare_environment()
    from mlflow.entities import Metric, RunTag

    checkpoint = Path(checkpoint)
    run = RunDirectory.holding(checkpoint)
    record = _read_record(run) if run is not None else {}
    run_id = record.get("run_id")
    if run_id:
        uri = _record_uri(run, record)
    else:
        uri = os.environ.get("MLFLOW_TRACKING_URI") or default_uri(run.path.parent if run else DEFAULT_ROOT)
    prefix = f"eval/{clean_name(split)}"
    values = {f"{prefix}/{VAL_NAMES[key]}": metrics.get(key) for key in VAL_NAMES}
    per_class = metrics.get("per_class") or {}
    for name in class_names:
        entry = per_class.get(name) or {}
        clean = clean_name(name)
        values.update({f"{prefix}/IoU/{clean}": entry.get("iou"), f"{prefix}/Acc/{clean}": entry.get("acc")})
    stamp, step = int(time.time() * 1000), iteration or 0
    try:
        client = _client(uri)
        if not run_id:
            run_id = _evaluation_run(client, uri, checkpoint, run, experiment)
        points = [Metric(key, float(value), stamp, step) for key, value in values.items() if value is not None]
        for batch in _batches(points, BATCH_METRICS):
            client.log_batch(run_id, metrics=batch)
        if metrics.get("protocol"):
            client.log_batch(run_id, tags=[RunTag(f"{prefix}/protocol", str(metrics["protocol"]))])
    except Exception as exc:  # the evaluation's own results are written already
        log.warning("MLflow (%s) did not take the evaluation of %s: %s", uri, checkpoint, _short(exc))
        return None
    return run_id


def _evaluation_run(client, uri: str, checkpoint: Path, run: RunDirectory | None, experiment: str | None) -> str:
    """The MLflow run of a checkpoint tracked by no run directory: found by its SHA-256 tag, else created."""
    sha = file_sha256(checkpoint)
    name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or experiment or DEFAULT_EXPERIMENT
    experiment_id = _experiment_id(client, uri, name)
    found = client.search_runs([experiment_id], f"tags.`pspnet.checkpoint_sha256` = '{sha}'", max_results=1)
    if found:
        return found[0].info.run_id
    tags = {
        "pspnet.version": __version__,
        "pspnet.checkpoint": str(checkpoint.resolve()),
        "pspnet.checkpoint_sha256": sha,
    }
    if run is not None:
        tags["pspnet.run_dir"] = str(run.path.resolve())
    commit = git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
    created = client.create_run(experiment_id, run_name=run.path.name if run else checkpoint.stem, tags=tags)
    client.set_terminated(created.info.run_id, "FINISHED")
    return created.info.run_id
