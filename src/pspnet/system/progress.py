"""Progress reporting: a tqdm bar on a terminal, a line every 10% when stderr is redirected to a log."""

from __future__ import annotations

import sys
import time
from typing import Any

from tqdm.auto import tqdm

# items/s always (tqdm would switch to s/item below 1 item/s) and the remaining time
BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_noinv_fmt}]"
LINE_STEP = 0.1
"""Without a terminal, a progress line is printed each time this fraction of the work is done."""


class LineProgress:
    """The part of tqdm's interface the engine uses, printing whole lines: for logs and pipes."""

    def __init__(self, total: int, desc: str, unit: str, initial: int = 0, stream: Any = None):
        self.total, self.desc, self.unit, self.n = total, desc, unit, initial
        self.stream = stream or sys.stderr
        self.start, self.start_n = time.monotonic(), initial
        self.postfix = ""
        self.next_report = self._next_threshold(initial)

    def _next_threshold(self, done: int) -> int:
        step = max(1, round(self.total * LINE_STEP))
        return (done // step + 1) * step

    def update(self, count: int = 1) -> None:
        self.n += count
        if self.n >= self.next_report or self.n == self.total:
            self.next_report = self._next_threshold(self.n)
            elapsed = time.monotonic() - self.start
            rate = (self.n - self.start_n) / elapsed if elapsed > 0 else 0.0
            remaining = (self.total - self.n) / rate if rate > 0 else 0.0
            percent = 100 * self.n / self.total if self.total else 100.0
            postfix = f", {self.postfix}" if self.postfix else ""
            print(
                f"{self.desc}: {percent:3.0f}% {self.n}/{self.total} {self.unit} [{elapsed:.0f}s elapsed, "
                f"{remaining:.0f}s left, {rate:.2f} {self.unit}/s{postfix}]",
                file=self.stream,
                flush=True,
            )

    def set_postfix(self, **values: Any) -> None:
        self.postfix = ", ".join(f"{key}={value}" for key, value in values.items())

    def write(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def close(self) -> None:
        pass

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class Silent(LineProgress):
    """No output at all (`--quiet`), except `write`, which still prints."""

    def update(self, count: int = 1) -> None:
        self.n += count


def progress_bar(
    total: int, desc: str, enabled: bool, unit: str = "img", initial: int = 0, leave: bool = True
) -> tqdm | LineProgress:
    """A progress bar over `total` items showing the rate and the ETA.

    When stderr is not a terminal, lines every 10% instead, and nothing for a transient bar (`leave=False`).
    """
    if not enabled or (not leave and not sys.stderr.isatty()):
        return Silent(total, desc, unit, initial)
    if not sys.stderr.isatty():
        return LineProgress(total, desc, unit, initial)
    return tqdm(
        total=total, desc=desc, unit=unit, initial=initial, leave=leave, dynamic_ncols=True, bar_format=BAR_FORMAT
    )
