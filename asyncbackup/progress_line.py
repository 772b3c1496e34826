"""A plain progress line every few seconds, for output that is not a terminal (logs, CI).

The CLI plugs it in as the run's ``Observer`` when stderr is not a tty, and runs ``run()`` next
to the backup, so a line comes every ``every`` seconds even while no object completes (a
large one in flight). With ``emit`` the line goes there, with its figures as fields, instead
of to the stream (the CLI's ``--log-format json`` makes it a JSON log record).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, TextIO

Emit = Callable[[str, dict[str, Any]], None]
_UNITS = (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3))


def _unit(size: float) -> tuple[str, float]:
    for name, factor in _UNITS:
        if size >= factor:
            return name, factor
    return "B", 1.0


def sizes(done: float, total: float) -> str:
    """``done/total unit`` in the unit of ``total``: ``410.2/800.0 MB``."""
    name, factor = _unit(max(done, total))
    if factor == 1.0:
        return f"{done:,.0f}/{total:,.0f} B"
    return f"{done / factor:,.1f}/{total / factor:,.1f} {name}"


def rate(per_second: float) -> str:
    name, factor = _unit(per_second)
    return f"{per_second / factor:,.1f} {name}/s"


class ProgressLine:
    """Counts what the run reports and prints one line at most every ``every`` seconds."""

    def __init__(
        self,
        stream: TextIO,
        *,
        enabled: bool = True,
        every: float = 5.0,
        emit: Emit | None = None,
    ) -> None:
        self.stream = stream
        self.enabled = enabled
        self.every = every
        self.emit = emit
        self.started = time.monotonic()
        self._last = self.started
        self.total_files = self.total_bytes = 0
        self.done_files = self.done_bytes = 0
        self.skipped_files = 0
        self.failed = 0
        self.listing_done = False
        self.lines = 0

    def on_listed(self, files: int, size: int, skipped: int, skipped_bytes: int) -> None:
        self.total_files += files
        self.total_bytes += size
        self.skipped_files += skipped

    def on_listing_done(self) -> None:
        self.listing_done = True

    def on_done(self, key: str, size: int) -> None:
        self.done_files += 1
        self.done_bytes += size
        self._maybe_print()

    def on_failed(self, key: str, error: str) -> None:
        self.failed += 1
        self._maybe_print()

    def on_flush(self, processed: int) -> None:
        pass

    def start(self) -> None:
        pass

    async def run(self) -> None:
        """Print a line every ``every`` seconds until cancelled (a heartbeat while stalled)."""
        if not self.enabled:
            return
        while True:
            await asyncio.sleep(max(self._last + self.every - time.monotonic(), 0.01))
            self._maybe_print()

    def _maybe_print(self) -> None:
        now = time.monotonic()
        if self.enabled and now - self._last >= self.every:
            self._last = now
            self.print_line(now)

    def print_line(self, now: float | None = None) -> None:
        self.lines += 1
        if self.emit is not None:
            self.emit(self.line(now), self.fields(now))
            return
        try:
            self.stream.write(self.line(now) + "\n")
            self.stream.flush()
        except OSError:  # nobody reads it any more (a closed pipe): the run goes on, silent
            self.enabled = False

    def fields(self, now: float | None = None) -> dict[str, Any]:
        elapsed = max((now or time.monotonic()) - self.started, 1e-9)
        return {
            "files_done": self.done_files,
            "files_total": self.total_files,
            "bytes_done": self.done_bytes,
            "bytes_total": self.total_bytes,
            "files_skipped": self.skipped_files,
            "errors": self.failed,
            "listing_done": self.listing_done,
            "elapsed_seconds": round(elapsed, 3),
            "files_per_second": round(self.done_files / elapsed, 3),
            "bytes_per_second": round(self.done_bytes / elapsed, 1),
        }

    def line(self, now: float | None = None) -> str:
        elapsed = max((now or time.monotonic()) - self.started, 1e-9)
        more = "" if self.listing_done else "+"
        return (
            f"progress: {self.done_files}/{self.total_files}{more} files, "
            f"{sizes(self.done_bytes, self.total_bytes)}{more}, "
            f"{self.done_files / elapsed:.1f} files/s, {rate(self.done_bytes / elapsed)}, "
            f"{self.failed} errors"
        )

    def close(self) -> None:
        pass
