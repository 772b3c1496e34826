"""``--include`` / ``--exclude`` glob patterns, applied to the key relative to SOURCE_PATH.

An object is copied when it matches at least one include pattern (or none is given) and no
exclude pattern. Patterns are ``fnmatch`` globs matched against the whole relative key, so
``*`` also matches ``/``: ``*.log`` matches ``a/b.log``; ``logs/*`` matches everything under
``logs/``; ``[!a]*`` and ``?`` work as in the shell.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable

from .errors import ConfigError


def patterns(flag: str, value: str | Iterable[str] | None) -> tuple[str, ...]:
    """``--include`` or ``--exclude`` as a config holds them: a tuple of globs. One string is
    one pattern, never its letters (``*`` among them would match every key)."""
    if value is None:
        return ()
    found = (value,) if isinstance(value, str) else tuple(value)
    for item in found:
        if not isinstance(item, str):
            raise ConfigError(f"{flag} takes glob patterns (strings), got {item!r}")
    return found


def _compile(patterns: tuple[str, ...]) -> re.Pattern[str] | None:
    if not patterns:
        return None
    return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns), re.DOTALL)


class KeyFilter:
    def __init__(self, include: tuple[str, ...] = (), exclude: tuple[str, ...] = ()) -> None:
        self.include = tuple(include)
        self.exclude = tuple(exclude)
        self._include = _compile(self.include)
        self._exclude = _compile(self.exclude)

    @property
    def selection(self) -> tuple[frozenset[str], frozenset[str]]:
        """What the filter lets through, whatever the order (or repeats) of its patterns:
        any include and no exclude."""
        return frozenset(self.include), frozenset(self.exclude)

    def within(self, other: KeyFilter) -> bool:
        """Whether every key this filter lets through ``other`` lets through too, as their
        patterns alone show: the same ones, or more excludes, or fewer includes (but some)."""
        include, exclude = self.selection
        other_include, other_exclude = other.selection
        narrower_include = not other_include or (include and include <= other_include)
        return bool(narrower_include) and exclude >= other_exclude

    @property
    def active(self) -> bool:
        return bool(self.include or self.exclude)

    def matches(self, relative_key: str) -> bool:
        if self._include is not None and not self._include.match(relative_key):
            return False
        return self._exclude is None or not self._exclude.match(relative_key)

    def describe(self) -> str:
        parts = [f"--include {p!r}" for p in self.include]
        parts += [f"--exclude {p!r}" for p in self.exclude]
        return " ".join(parts) or "no filters"
