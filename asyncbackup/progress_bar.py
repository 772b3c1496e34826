"""A live progress bar on a terminal (rich), as an ``Observer``: the CLI plugs it in on a tty.

One line::

    copying ━━━━━━━━━━━━╸━━━━━━━  52% 412/1,000+ files  410.2/800.0 MB  40.1 MB/s  12 files/s
    ETA 0:00:10  3 errors

Totals grow while the listing goes on (shown with a ``+``). The percentage and the ETA count
bytes plus one unit a file, so a bucket of empty objects still moves; once every object is done
or failed the bar is full. Rates are rich's estimates over the last 30 seconds. Rich redraws
from its own thread, so the observer methods (called on the event loop) only update counters
and, at most every 0.1 s, rich's tasks.
"""

from __future__ import annotations

import time
from typing import TextIO

from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, Task, TaskProgressColumn, TextColumn
from rich.text import Text

from .progress_line import rate, sizes

_PUSH_EVERY = 0.1


def _eta(seconds: float | None) -> str:
    if seconds is None:
        return "-:--:--"
    whole = int(seconds)
    return f"{whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


class _Column(ProgressColumn):
    def __init__(self, bar: ProgressBar) -> None:
        super().__init__()
        self.bar = bar


class _Counts(_Column):
    def render(self, task: Task) -> Text:
        b = self.bar
        more = "" if b.listing_done else "+"
        return Text(
            f"{b.done_files:,}/{b.total_files:,}{more} files  "
            f"{sizes(b.done_bytes, b.total_bytes)}{more}",
            style="progress.download",
        )


class _Rates(_Column):
    def render(self, task: Task) -> Text:
        byte_rate = self.bar.speed("bytes")
        file_rate = self.bar.speed("files")
        return Text(f"{rate(byte_rate)}  {file_rate:,.0f} files/s", "progress.data.speed")


class _Eta(_Column):
    def render(self, task: Task) -> Text:
        more = "" if self.bar.listing_done else "+"
        return Text(f"ETA {_eta(task.time_remaining)}{more}", style="progress.remaining")


class _Errors(_Column):
    def render(self, task: Task) -> Text:
        count = self.bar.failed
        return Text(f"{count:,} errors", style="bold red" if count else "dim")


class ProgressBar:
    """Counts what the run reports and shows it as a live bar on ``stream`` (a terminal)."""

    def __init__(self, stream: TextIO, *, refresh_per_second: float = 4.0) -> None:
        self.total_files = self.total_bytes = 0
        self.done_files = self.done_bytes = 0
        self.skipped_files = 0
        self.failed = 0
        self.listing_done = False
        self._last_push = 0.0
        self.console = Console(file=stream, stderr=True)
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            _Counts(self),
            _Rates(self),
            _Eta(self),
            _Errors(self),
            console=self.console,
            refresh_per_second=refresh_per_second,
            # Log records written to sys.stderr are drawn above the bar, not through it.
            redirect_stdout=False,
            redirect_stderr=True,
        )
        self.main_task = self.progress.add_task("listing", total=None)
        self.files_task = self.progress.add_task("files", total=None, visible=False)
        self.bytes_task = self.progress.add_task("bytes", total=None, visible=False)
        self._main, self._files, self._bytes = self.progress.tasks
        self._started = False

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        if not self._started:
            self._started = True
            self.progress.start()

    def close(self) -> None:
        """Draw the final state and leave it on the screen."""
        if self._started:
            self._push(final=True)
            self.progress.refresh()
            self.progress.stop()
            self._started = False

    async def run(self) -> None:
        """Nothing to do on the loop: rich redraws from its own thread."""

    # -- the Observer protocol ----------------------------------------------------------

    def on_listed(self, files: int, size: int, skipped: int, skipped_bytes: int) -> None:
        self.total_files += files
        self.total_bytes += size
        self.skipped_files += skipped
        self._push(force=True)

    def on_listing_done(self) -> None:
        self.listing_done = True
        self._push(force=True)

    def on_done(self, key: str, size: int) -> None:
        self.done_files += 1
        self.done_bytes += size
        self._push()

    def on_failed(self, key: str, error: str) -> None:
        self.failed += 1
        self._push()

    def on_flush(self, processed: int) -> None:
        pass

    # -- rendering ----------------------------------------------------------------------

    def speed(self, which: str) -> float:
        task = self._files if which == "files" else self._bytes
        return task.speed or 0.0

    def description(self) -> str:
        skipped = f" ({self.skipped_files:,} already done)" if self.skipped_files else ""
        if not self.listing_done:
            return f"listing+copying{skipped}"
        if self.done_files + self.failed >= self.total_files:
            return f"finished{skipped}"
        return f"copying{skipped}"

    def _push(self, *, force: bool = False, final: bool = False) -> None:
        now = time.monotonic()
        if not (force or final) and now - self._last_push < _PUSH_EVERY:
            return
        self._last_push = now
        units_total = self.total_bytes + self.total_files
        units_done = self.done_bytes + self.done_files + self.failed
        if self.listing_done and self.done_files + self.failed >= self.total_files:
            # Every object is done or failed: nothing is left to come (a failed object's bytes,
            # which the observer is not told, would otherwise keep the bar short with an ETA).
            units_done = max(units_done, units_total)
        update = self.progress.update
        update(
            self.main_task,
            description=self.description(),
            total=units_total if (units_total or self.listing_done) else None,
            completed=units_done,
        )
        if units_done < units_total:
            # Rich marks a task finished once completed reaches total, for good; here the
            # total grows as the listing goes on, so an early "finished" is taken back.
            self._main.finished_time = None
        update(self.files_task, completed=self.done_files)
        update(self.bytes_task, completed=self.done_bytes)
