"""Jobs as operating-system processes: a queue that runs at most `max_jobs` at once, in arrival order.

Each job is a `pspnet` command line (a training, an evaluation, an export, a dataset check) started in its
own session with its output in `WORKSPACE/jobs/<id>/output.log`; it is never run inside the web server.
Stop sends SIGINT, the CLI's own Ctrl-C path, so a training saves before it exits. On Linux a job also
gets SIGINT when the playground dies, so no run goes on unwatched; a playground started again marks the
jobs whose process is gone as interrupted, and they can be resumed.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from .store import ACTIVE, Job, Store, new_id

POLL_SECONDS = 0.25
INTERRUPTED_CODES = (130, 143, -signal.SIGINT, -signal.SIGTERM)
"""Exit statuses of a process stopped by Ctrl-C or SIGTERM (the CLI saves and exits 130/143)."""


def _die_with_parent() -> None:
    """In the child before exec: SIGINT when the playground's process dies (Linux `PR_SET_PDEATHSIG`)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGINT)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def error_line(log: Path) -> str | None:
    """The message of a failed job: its last `error: ...` line, else its last line."""
    if not log.is_file():
        return None
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    return (errors or lines or [None])[-1]


class JobRunner:
    """Starts queued jobs, watches running ones and records each state change in the store."""

    def __init__(self, store: Store, max_jobs: int = 1):
        if max_jobs < 1:
            raise ValueError(f"max_jobs must be at least 1, got {max_jobs}")
        self.store = store
        self.max_jobs = max_jobs
        self._processes: dict[str, subprocess.Popen] = {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="pspnet-playground-jobs", daemon=True)
        self._recover()

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        """Stop watching; running jobs get SIGINT (they save) and are waited for a few seconds."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join()
        for process in list(self._processes.values()):
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
        deadline = time.monotonic() + 20
        for process in self._processes.values():
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
        self._reap()

    def log_path(self, job: Job) -> Path:
        return self.store.jobs_dir / job.id / "output.log"

    def submit(self, kind: str, run: str, argv: list[str]) -> Job:
        """Queue `pspnet argv...` as a job of `run`."""
        job = self.store.add_job(Job(new_id(kind), kind, run, "queued", argv))
        self._wake.set()
        return job

    def stop(self, job: Job) -> Job:
        """A queued job is dropped (interrupted); a running one gets SIGINT and is `stopping` until it exits."""
        with self._lock:
            process = self._processes.get(job.id)
            if job.state == "queued":
                job.state, job.ended = "interrupted", time.time()
            elif job.state == "running" and process is not None:
                os.killpg(process.pid, signal.SIGINT)
                job.state = "stopping"
            self.store.update_job(job)
        return job

    def _recover(self) -> None:
        """Jobs the index shows active from an earlier playground: queued ones stay queued, the others are
        interrupted once their process is gone (waited for: a stopped training may still be saving)."""
        for job in self.store.jobs(states=("running", "stopping")):
            deadline = time.monotonic() + 30
            while job.pid is not None and _alive(job.pid) and time.monotonic() < deadline:
                time.sleep(POLL_SECONDS)
            job.state, job.ended = "interrupted", time.time()
            job.error = "the playground stopped while this job ran"
            self.store.update_job(job)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._reap()
            self._launch()
            self._wake.wait(POLL_SECONDS)
            self._wake.clear()

    def _launch(self) -> None:
        with self._lock:
            running = sum(process.poll() is None for process in self._processes.values())
            for job in self.store.jobs(states=("queued",))[: max(0, self.max_jobs - running)]:
                folder = self.store.jobs_dir / job.id
                folder.mkdir(parents=True, exist_ok=True)
                with open(folder / "output.log", "ab") as log:
                    process = subprocess.Popen(
                        [sys.executable, "-m", "pspnet", "--quiet", *job.argv],
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        cwd=self.store.workspace,
                        start_new_session=True,
                        preexec_fn=_die_with_parent,
                    )
                self._processes[job.id] = process
                job.state, job.pid, job.started = "running", process.pid, time.time()
                self.store.update_job(job)

    def _reap(self) -> None:
        with self._lock:
            for job in self.store.jobs(states=ACTIVE):
                process = self._processes.get(job.id)
                if process is None or process.poll() is None:
                    continue
                job.returncode, job.ended = process.returncode, time.time()
                if process.returncode == 0:
                    job.state = "finished"
                elif process.returncode in INTERRUPTED_CODES or job.state == "stopping":
                    job.state = "interrupted"
                else:
                    job.state, job.error = "failed", error_line(self.log_path(job))
                self.store.update_job(job)
                del self._processes[job.id]
