"""Progress of a run: a tqdm bar (rows/s, ETA) on a terminal, else a plain line every few seconds (for logs)."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from tqdm import tqdm

PLAIN_EVERY_SECONDS = 5.0


class Progress:
    def __init__(
        self, total: int | None, *, done: int = 0, stream: TextIO | None = None, tty: bool | None = None
    ) -> None:
        self.stream = stream or sys.stderr
        self.total = total
        self.done = done
        self.rejected = 0
        self.started = time.monotonic()
        self._start_rows = done
        self._last = self.started
        interactive = self.stream.isatty() if tty is None else tty
        self._bar: tqdm[None] | None = None
        if interactive:
            self._bar = tqdm(total=total, initial=done, unit=" rows", unit_scale=True, file=self.stream, smoothing=0.1)

    def advance(self, rows: int, rejected: int) -> None:
        self.done += rows
        self.rejected += rejected
        if self._bar is not None:
            self._bar.update(rows)
            if rejected:
                self._bar.set_postfix(rejected=self.rejected, refresh=False)
            return
        now = time.monotonic()
        if now - self._last >= PLAIN_EVERY_SECONDS:
            self._last = now
            self.stream.write(self.line() + "\n")
            self.stream.flush()

    def rate(self) -> float:
        elapsed = time.monotonic() - self.started
        return (self.done - self._start_rows) / elapsed if elapsed > 0 else 0.0

    def line(self) -> str:
        of = f" of {self.total:,}" if self.total is not None else ""
        return f"tabserve score: {self.done:,}{of} rows, {self.rejected:,} rejected, {self.rate():,.0f} rows/s"

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
