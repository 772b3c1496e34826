"""A plain progress line on a stream every few seconds: the observer the CLI plugs in."""

from __future__ import annotations

import time
from typing import TextIO


class ProgressLine:
    """Counts what the run reports and prints one line at most every ``every`` seconds."""

    def __init__(self, stream: TextIO, *, enabled: bool = True, every: float = 5.0) -> None:
        self.stream = stream
        self.enabled = enabled
        self.every = every
        self.started = time.monotonic()
        self._last = self.started
        self.total_files = self.total_bytes = 0
        self.done_files = self.done_bytes = 0
        self.failed = 0
        self.listing_done = False

    def on_listed(self, files: int, size: int, skipped: int, skipped_bytes: int) -> None:
        self.total_files += files
        self.total_bytes += size

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

    def _maybe_print(self) -> None:
        now = time.monotonic()
        if self.enabled and now - self._last >= self.every:
            self._last = now
            self.stream.write(self.line(now) + "\n")
            self.stream.flush()

    def line(self, now: float | None = None) -> str:
        elapsed = max((now or time.monotonic()) - self.started, 1e-9)
        total = f"{self.total_files}" + ("" if self.listing_done else "+")
        return (
            f"progress: {self.done_files}/{total} files, "
            f"{self.done_bytes / 1e6:.1f}/{self.total_bytes / 1e6:.1f} MB, "
            f"{self.done_files / elapsed:.0f} files/s, {self.done_bytes / elapsed / 1e6:.1f} MB/s, "
            f"{self.failed} errors"
        )

    def close(self) -> None:
        pass
