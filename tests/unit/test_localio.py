"""``LocalIO``: small file operations inline while the disk is fast, in threads once not."""

from __future__ import annotations

import threading
import time

import pytest

from asyncbackup.localio import LocalIO


def where() -> int:
    return threading.get_ident()


async def test_fast_operations_run_on_the_event_loop_thread() -> None:
    local = LocalIO()
    for _ in range(50):
        assert await local.run(where) == threading.get_ident()
    assert local.inline


async def test_a_slow_disk_moves_operations_to_threads() -> None:
    local = LocalIO(slow_after=0.002)

    def slow() -> int:
        time.sleep(0.004)
        return where()

    calls = 0
    while local.inline:
        calls += 1
        assert await local.run(slow) == threading.get_ident()
        assert calls < 100
    assert calls > 5  # one slow call is not enough: the average has to pass the limit
    assert await local.run(where) != threading.get_ident()


async def test_one_stall_moves_operations_to_threads_at_once() -> None:
    local = LocalIO(stall_after=0.01)
    await local.run(time.sleep, 0.02)
    assert not local.inline
    assert await local.run(where) != threading.get_ident()


async def test_errors_propagate_and_are_timed() -> None:
    local = LocalIO(stall_after=0.01)

    def failing() -> None:
        time.sleep(0.02)
        raise FileNotFoundError("gone")

    with pytest.raises(FileNotFoundError):
        await local.run(failing)
    assert not local.inline
