"""One inference worker: a thread that runs jobs one at a time, in arrival order, behind a bounded line.

At most `capacity` requests are admitted at once (the one running and those waiting); `admit()`
refuses more at once (`QueueFull`) instead of letting the line, and the memory of its uploads,
grow without bound. The model is only ever called from the worker's thread.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

SMOOTHING = 0.2
"""Weight of the newest job in the running mean of job durations (used to suggest a retry delay)."""


class QueueFull(Exception):
    """Every slot of the line is taken; `retry_after` is a suggested wait in whole seconds."""

    def __init__(self, retry_after: int):
        super().__init__(f"the inference queue is full; retry in {retry_after} s")
        self.retry_after = retry_after


class Ticket:
    """A slot in the line, held from admission until its job has run; released at once if no job is submitted."""

    def __init__(self, worker: InferenceWorker):
        self._worker = worker
        self._submitted = False

    def submit(self, job: Callable[[], Any]) -> Future:
        """Run `job` on the worker; the slot is freed when it ends (or is skipped, when cancelled first)."""
        self._submitted = True
        return self._worker.enqueue(job, holds_slot=True)

    def __enter__(self) -> Ticket:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if not self._submitted:
            self._worker.release()


class InferenceWorker:
    """Runs submitted jobs on one thread; `capacity` bounds the admitted requests (running and waiting)."""

    def __init__(self, capacity: int):
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.capacity = capacity
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._admitted = 0
        self._mean_seconds = 0.0
        self._thread = threading.Thread(target=self._run, name="pspnet-inference", daemon=True)

    @property
    def depth(self) -> int:
        """Admitted requests not finished yet: the one running and those waiting."""
        return self._admitted

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def start(self) -> None:
        self._thread.start()

    def admit(self) -> Ticket:
        """A slot for one request, or QueueFull with a suggested retry delay when all are taken."""
        with self._lock:
            if self._admitted >= self.capacity:
                raise QueueFull(max(1, math.ceil(self._admitted * self._mean_seconds)))
            self._admitted += 1
        return Ticket(self)

    def release(self) -> None:
        with self._lock:
            self._admitted -= 1

    def enqueue(self, job: Callable[[], Any], holds_slot: bool = False) -> Future:
        """Run `job` after those already waiting; its result (or exception) lands in the returned future."""
        future: Future = Future()
        self._jobs.put((job, future, holds_slot))
        return future

    def close(self) -> None:
        """Finish the jobs already submitted (cancelled ones are skipped), then stop the thread."""
        self._jobs.put(None)
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        while (item := self._jobs.get()) is not None:
            job, future, holds_slot = item
            result, error = None, None
            if future.set_running_or_notify_cancel():  # False: its request went away while it waited
                start = time.perf_counter()
                try:
                    result = job()
                except BaseException as exc:  # handed to the waiting request, which answers with it
                    error = exc
                self._mean_seconds += SMOOTHING * (time.perf_counter() - start - self._mean_seconds)
            if holds_slot:  # freed before the answer is handed over: a finished job is no longer in the line
                self.release()
            if error is not None:
                future.set_exception(error)
            elif future.running():
                future.set_result(result)
