"""What a run tells the outside world while it goes: an observer protocol.

The library never prints. The CLI plugs a terminal progress display in here; an embedding
service can plug its metrics in. Every method is called on the event loop and must not block.
"""

from __future__ import annotations

from typing import Protocol


class Observer(Protocol):
    def on_listed(self, files: int, size: int, skipped: int, skipped_bytes: int) -> None:
        """A page of the listing: ``files`` new objects, ``skipped`` already done."""

    def on_listing_done(self) -> None:
        """The listing is complete; totals will not grow any more."""

    def on_done(self, key: str, size: int) -> None:
        """An object is durably at the destination."""

    def on_failed(self, key: str, error: str) -> None:
        """An object failed for good in this run; ``error`` is ``"Code: Message"``."""

    def on_flush(self, processed: int) -> None:
        """The checkpoint was written; ``processed`` objects since the previous write."""


class NullObserver:
    """An observer that ignores everything."""

    def on_listed(self, files: int, size: int, skipped: int, skipped_bytes: int) -> None:
        pass

    def on_listing_done(self) -> None:
        pass

    def on_done(self, key: str, size: int) -> None:
        pass

    def on_failed(self, key: str, error: str) -> None:
        pass

    def on_flush(self, processed: int) -> None:
        pass
