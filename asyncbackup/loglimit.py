"""Log lines of a kind that can come by the thousand in one run (whole-object retries during
an outage, objects deleted from a live source): the first few at their own level, one a line,
then a single line saying the rest are logged at debug level."""

from __future__ import annotations

import logging

log = logging.getLogger("asyncbackup")


class FirstFew:
    """Counts one kind of line: ``level()`` is ``shown_level`` for the first ``shown``, then
    ``logging.DEBUG``; the first time it turns to debug it logs ``more`` at ``shown_level``."""

    def __init__(self, shown_level: int, more: str, shown: int = 10) -> None:
        self.shown_level = shown_level
        self.more = more
        self.shown = shown
        self.count = 0

    def level(self) -> int:
        """The level of the next line of this kind."""
        self.count += 1
        if self.count <= self.shown:
            return self.shown_level
        if self.count == self.shown + 1:  # said once there are more, not before
            log.log(self.shown_level, self.more)
        return logging.DEBUG
