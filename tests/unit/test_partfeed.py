"""``ByteBudget``: the bytes of multipart parts held in memory, across all objects."""

from __future__ import annotations

import asyncio

import pytest

from asyncbackup.partfeed import ByteBudget


async def test_parts_wait_for_bytes_and_are_served_in_order() -> None:
    budget = ByteBudget(100)
    await budget.acquire(60)
    order: list[str] = []

    async def take(name: str, size: int) -> None:
        await budget.acquire(size)
        order.append(name)

    async with asyncio.TaskGroup() as tg:
        big = tg.create_task(take("big", 80))  # waits: 40 free
        await asyncio.sleep(0)
        small = tg.create_task(take("small", 10))  # would fit, but the big one is first
        await asyncio.sleep(0.01)
        assert order == [] and not big.done() and not small.done()
        budget.release(60)
    assert order == ["big", "small"]
    assert budget.free == 10


async def test_a_part_larger_than_the_budget_takes_all_of_it() -> None:
    budget = ByteBudget(100)
    async with budget.hold(10**9):
        assert budget.free == 0
    assert budget.free == 100


async def test_a_cancelled_waiter_leaves_the_budget_whole() -> None:
    budget = ByteBudget(100)
    await budget.acquire(100)
    waiter = asyncio.ensure_future(budget.acquire(50))
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    budget.release(100)
    assert budget.free == 100
    await asyncio.wait_for(budget.acquire(100), 1)  # nobody holds a stale share


async def test_a_waiter_cancelled_as_bytes_come_back_is_just_cancelled() -> None:
    """Cancelled while waiting, then bytes released in the same loop turn: the release drops
    the cancelled waiter, and the waiter must still end with CancelledError (it raised
    ValueError, which escaped a stopping run as its error)."""
    budget = ByteBudget(10)
    await budget.acquire(10)
    waiter = asyncio.ensure_future(budget.acquire(5))
    await asyncio.sleep(0)
    waiter.cancel()
    budget.release(10)
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert budget.free == 10
