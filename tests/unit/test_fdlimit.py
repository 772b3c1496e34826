"""The command line's open-file limit (``fdlimit.py``): raised to the hard one, or to macOS's
``OPEN_MAX`` where the system refuses more; the objects in flight that a low limit leaves
room for."""

from __future__ import annotations

import resource

from asyncbackup.fdlimit import (
    FILES_PER_DIRECT_OBJECT,
    OPEN_MAX,
    concurrency_within,
    raise_open_file_limit,
)


class System:
    """RLIMIT_NOFILE as a kernel keeps it: ``setrlimit`` refuses a soft limit above
    ``refuse_above`` with a ValueError, as macOS's does above OPEN_MAX."""

    def __init__(self, soft: int, hard: int, refuse_above: int) -> None:
        self.limits = (soft, hard)
        self.refuse_above = refuse_above
        self.asked: list[int] = []

    def get(self) -> tuple[int, int]:
        return self.limits

    def set(self, limits: tuple[int, int]) -> None:
        self.asked.append(limits[0])
        if limits[0] > self.refuse_above:
            raise ValueError("current limit exceeds maximum limit")
        self.limits = limits


def test_macos_unlimited_hard_limit_is_raised_to_open_max() -> None:
    """macOS: 256, an unlimited hard limit, and setrlimit refusing more than OPEN_MAX. The
    soft limit stayed 256, below what the default 128 objects in flight hold."""
    macos = System(256, resource.RLIM_INFINITY, refuse_above=OPEN_MAX)
    assert raise_open_file_limit(macos.get, macos.set) == OPEN_MAX
    assert macos.limits == (OPEN_MAX, resource.RLIM_INFINITY)
    assert macos.asked == [1 << 20, OPEN_MAX]


def test_linux_soft_limit_is_raised_to_the_hard_one() -> None:
    linux = System(1024, 524_288, refuse_above=1 << 20)
    assert raise_open_file_limit(linux.get, linux.set) == 524_288
    assert linux.asked == [524_288]


def test_a_limit_refused_altogether_is_kept() -> None:
    jailed = System(256, 100_000, refuse_above=0)
    assert raise_open_file_limit(jailed.get, jailed.set) == 256
    assert jailed.limits == (256, 100_000)


def test_a_soft_limit_at_the_hard_one_is_left() -> None:
    container = System(120, 120, refuse_above=0)
    assert raise_open_file_limit(container.get, container.set) == 120
    assert container.asked == []


def test_no_soft_limit_is_no_limit() -> None:
    unlimited = System(resource.RLIM_INFINITY, resource.RLIM_INFINITY, refuse_above=0)
    assert raise_open_file_limit(unlimited.get, unlimited.set) is None
    assert concurrency_within(None, 128) == 128


def test_concurrency_within_a_limit() -> None:
    assert concurrency_within(OPEN_MAX, 128) == 128
    assert concurrency_within(448, 128) == 128  # 64 + 3 per object in flight
    assert concurrency_within(447, 128) == 127
    assert concurrency_within(256, 128) == 64
    assert concurrency_within(256, 128, processes=2) == 128  # each process its own files
    # --direct: a multipart copy's 4 parts at once, each on its connection
    assert concurrency_within(256, 128, 1, FILES_PER_DIRECT_OBJECT) == 48
    assert concurrency_within(10, 128) == 1  # the run tries; it fails in one line if it must
