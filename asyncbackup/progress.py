"""What a run tells the outside world while it goes: an observer protocol.

The library never prints. The CLI plugs a terminal progress display in here; an embedding
service can plug its metrics in. Every method is called on the event loop and must not block.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

log = logging.getLogger("asyncbackup")


class Observer(Protocol):
    def on_listed(self, files: int, size: int, skipped: int, skipped_bytes: int) -> None:
        """A page of the listing: ``files`` new objects, ``skipped`` already done.

        ``files`` is -1 (``size`` minus its size) for an object listed earlier and since
        deleted from the source: it leaves the totals, neither done nor failed."""

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


class GuardedObserver:
    """``observer``, its exceptions kept from the run: an observer reports progress, and one
    that raised (a metrics backend down) ended the backup, with what was copied since the
    last flush unrecorded. The first exception is logged as a warning, later ones at debug."""

    def __init__(self, observer: Observer) -> None:
        self.observer = observer
        self._warned = False

    def _call(self, method: str, *args: Any) -> None:
        try:
            getattr(self.observer, method)(*args)
        except Exception as exc:  # the caller's code, whatever it raises
            level = logging.DEBUG if self._warned else logging.WARNING
            self._warned = True
            log.log(
                level,
                "the observer's %s raised %s: %s; the backup goes on (further errors of the "
                "observer are logged at debug level)",
                method,
                type(exc).__name__,
                exc,
            )

    def on_listed(self, files: int, size: int, skipped: int, skipped_bytes: int) -> None:
        self._call("on_listed", files, size, skipped, skipped_bytes)

    def on_listing_done(self) -> None:
        self._call("on_listing_done")

    def on_done(self, key: str, size: int) -> None:
        self._call("on_done", key, size)

    def on_failed(self, key: str, error: str) -> None:
        self._call("on_failed", key, error)

    def on_flush(self, processed: int) -> None:
        self._call("on_flush", processed)
