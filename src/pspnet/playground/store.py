"""The playground's state on disk: a workspace folder of ordinary run directories plus a small SQLite index.

    WORKSPACE/runs/<id>/          one `pspnet train` run directory per run (resume, evaluate, report it as usual)
    WORKSPACE/jobs/<job id>/      each job's command line, config file and output log
    WORKSPACE/datasets/<name>/    the output of a dataset's check and its preview picture
    WORKSPACE/playground.db       the index: jobs (kind, run, state, process id) and added datasets

The index only says what the playground did; everything about a run is read from its directory, so a
playground restarted (even after `kill -9`) lists every run as it is.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError

SCHEMA = """
create table if not exists jobs (
    id text primary key, kind text not null, run text not null, state text not null, argv text not null,
    pid integer, returncode integer, error text, created real not null, started real, ended real
);
create table if not exists datasets (
    name text primary key, format text not null, root text, classes_file text, options text not null
);
"""

STATES = ("queued", "running", "stopping", "finished", "failed", "interrupted")
ACTIVE = ("queued", "running", "stopping")


class OutsideError(ConfigError):
    """A path that leaves the workspace and the data roots (answered 403)."""


@dataclass
class Job:
    """One process the playground runs: a training, an evaluation, an export or a dataset check."""

    id: str
    kind: str
    run: str
    """The run id (or, for a dataset check, the dataset name) the job belongs to."""
    state: str
    argv: list[str]
    pid: int | None = None
    returncode: int | None = None
    error: str | None = None
    created: float = field(default_factory=time.time)
    started: float | None = None
    ended: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "run": self.run,
            "state": self.state,
            "error": self.error,
            "returncode": self.returncode,
            "created": self.created,
            "started": self.started,
            "ended": self.ended,
        }


def new_id(name: str) -> str:
    """A short unique id that keeps a readable part of `name`: `deeplab-try-3f2a9c`."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:32] or "run"
    return f"{slug}-{uuid.uuid4().hex[:6]}"


class Store:
    """The workspace folders and the SQLite index, safe to use from several threads."""

    def __init__(self, workspace: str | Path, data_roots: list[str | Path]):
        self.workspace = Path(workspace).resolve()
        self.runs = self.workspace / "runs"
        self.jobs_dir = self.workspace / "jobs"
        self.datasets_dir = self.workspace / "datasets"
        for folder in (self.runs, self.jobs_dir, self.datasets_dir):
            folder.mkdir(parents=True, exist_ok=True)
        self.data_roots = [Path(root).resolve() for root in data_roots]
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.workspace / "playground.db", check_same_thread=False)
        self._db.executescript(SCHEMA)

    # paths

    def inside(self, text: str | Path, roots: list[Path] | None = None) -> Path:
        """`text` resolved (symlinks followed), if it lies in the workspace or a data root; else OutsideError.
        Relative paths are taken relative to the first data root."""
        roots = roots if roots is not None else [self.workspace, *self.data_roots]
        path = Path(text)
        if not path.is_absolute():
            path = (self.data_roots[0] if self.data_roots else self.workspace) / path
        resolved = path.resolve()
        if not any(resolved == root or root in resolved.parents for root in roots):
            allowed = ", ".join(str(root) for root in roots)
            raise OutsideError(f"{text} is outside the workspace and the data roots ({allowed})")
        return resolved

    def run_dir(self, run_id: str) -> Path:
        """The directory of run `run_id` (an id, never a path: no separators, no `..`)."""
        if not re.fullmatch(r"[a-z0-9][a-z0-9-]*", run_id):
            raise OutsideError(f"invalid run id {run_id!r}")
        return self.runs / run_id

    # jobs

    def add_job(self, job: Job) -> Job:
        with self._lock, self._db:
            self._db.execute(
                "insert into jobs values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (job.id, job.kind, job.run, job.state, json.dumps(job.argv), job.pid, job.returncode, job.error,
                 job.created, job.started, job.ended),
            )  # fmt: skip
        return job

    def update_job(self, job: Job) -> None:
        with self._lock, self._db:
            self._db.execute(
                "update jobs set state = ?, pid = ?, returncode = ?, error = ?, started = ?, ended = ? where id = ?",
                (job.state, job.pid, job.returncode, job.error, job.started, job.ended, job.id),
            )

    def jobs(self, run: str | None = None, states: tuple[str, ...] | None = None) -> list[Job]:
        """Jobs in creation order, optionally of one run and in some states."""
        query, values = "select * from jobs", []
        clauses = []
        if run is not None:
            clauses.append("run = ?")
            values.append(run)
        if states is not None:
            clauses.append(f"state in ({', '.join('?' for _ in states)})")
            values.extend(states)
        if clauses:
            query += " where " + " and ".join(clauses)
        with self._lock:
            rows = self._db.execute(query + " order by created", values).fetchall()
        return [Job(row[0], row[1], row[2], row[3], json.loads(row[4]), *row[5:]) for row in rows]

    def delete_jobs(self, run: str) -> None:
        with self._lock, self._db:
            self._db.execute("delete from jobs where run = ?", (run,))

    # datasets

    def add_dataset(self, name: str, data: dict[str, Any]) -> None:
        with self._lock, self._db:
            self._db.execute(
                "insert or replace into datasets values (?, ?, ?, ?, ?)",
                (name, data["format"], data.get("root"), data.get("classes_file"), json.dumps(data.get("options", {}))),
            )

    def datasets(self) -> dict[str, dict[str, Any]]:
        """Added datasets by name: their `data` config sections."""
        with self._lock:
            rows = self._db.execute("select * from datasets order by name").fetchall()
        return {
            name: {"format": fmt, "root": root, "classes_file": classes, "options": json.loads(options)}
            for name, fmt, root, classes, options in rows
        }
