"""``ByteBudget``: the bytes of multipart parts held in memory, across all objects."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from asyncbackup.checksums import Hasher
from asyncbackup.partfeed import ByteBudget
from asyncbackup.sources.receivers import PartReceiver


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


async def test_a_part_handed_to_the_upload_is_held_by_it_alone(tmp_path: Path) -> None:
    """The download must keep no reference to a part it handed over: parts are uploaded by
    several workers, so one can finish (and release its bytes in the budget) before an older
    one, and the next part is then allocated while the download waits - a part still
    referenced by the download would be a third in memory where the budget counts two."""
    budget = ByteBudget(20)  # two parts of 10 bytes
    data = bytes(range(25))
    with (tmp_path / "staged").open("wb") as out:
        receiver = PartReceiver(
            out, tmp_path / "staged", 10, budget, True, Hasher(md5=True, algorithm=None)
        )
        receiver.start({"ContentLength": len(data)})
        feed = receiver.feed
        assert feed is not None
        async with asyncio.TaskGroup() as tg:
            adding = tg.create_task(receiver.add(data))  # parts 0 and 1, then waits for room
            part1, _ = await feed.take(1)
            await asyncio.sleep(0.01)
            assert not adding.done() and budget.free == 0
            assert sys.getrefcount(part1) == 2  # this local, and getrefcount's argument
            assert part1 == data[10:20]
            del part1
            feed.release()  # part 1 uploaded before part 0: part 2 comes in
        part0, _ = await feed.take(0)
        part2, _ = await feed.take(2)
        assert (part0, part2) == (data[:10], data[20:])
    assert (tmp_path / "staged").read_bytes() == data


async def test_a_part_whose_uploader_was_cancelled_is_given_without_an_error() -> None:
    """A part upload that failed cancels its sibling workers, and one waiting in ``take()``
    cancels the part's future with it; the upload then aborts (up to 10 s) before it fails,
    and the download, still going, handed that part over: ``InvalidStateError``, which took
    the place of the upload's own (retryable) failure and ended the run "unexpected" (a
    flaky CI failure of test_chaos_review). The part now goes nowhere; the upload's failure
    is the one that stops both."""
    from asyncbackup.checksums import Digests
    from asyncbackup.partfeed import PartFeed

    feed = PartFeed(2, 4, ByteBudget(100))
    taker = asyncio.create_task(feed.take(1))
    await asyncio.sleep(0)
    taker.cancel()
    with pytest.raises(asyncio.CancelledError):
        await taker
    await feed.reserve()
    feed.give(1, bytearray(b"abcd"), Digests(md5=b"", checksum=None))  # raised before
    feed.close()
    assert feed.budget.free == 100  # what the part held is given back
