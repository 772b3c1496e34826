"""Listing a prefix in key ranges, several streams at once, when one stream cannot keep up.

ListObjectsV2 answers 1,000 keys at a time, in UTF-8 byte order (which is code point order,
Python's ``str`` order), and each page needs the previous one's continuation token: one stream
lists 1,000 keys per round trip, whatever the bandwidth. When the pipeline has consumed every
page and waits for the next (a resume of a bucket that is mostly done, small objects on a
distant store), that round trip is the bottleneck.

So the key space is cut into ranges ``(after, upto]``, each listed by a stream of its own
(``StartAfter=after``, keeping the keys up to ``upto``). It starts as one range, the whole
prefix. When the consumer is waiting for pages and a stream's page came back full, that
stream's remaining range is split: probes (``StartAfter=candidate``, ``MaxKeys=1``) at
candidate keys just past the stream's position find where keys really are, the stream keeps
the range up to the first boundary that has keys after it, and new streams take the ranges
between the next ones. Wherever the boundaries fall, the ranges stay contiguous and disjoint:
every key is listed once. The candidates only decide how even the split is.

That holds only on a server that lists in key order and honours ``StartAfter``, as S3 does;
some S3-compatible servers do neither. So every answer is checked: a probe's key must come
after its candidate, a page's keys after the stream's position and each other. A server that
fails this before the listing split is listed as by one stream (no split, every key as it
comes); one that fails it after a split ends the listing with an error, rather than a key
missed or listed twice.

Pages from all streams come out as they arrive, in no particular order across ranges; with one
stream they come out in key order (what ``--skip-existing``'s side-by-side walk needs).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import FatalRunError
from .pipeline import WorkItem, primary_error

log = logging.getLogger("asyncbackup")

#: ``list_page(params)``: one ListObjectsV2 under the prefix with these extra parameters
#: (``MaxKeys``, ``StartAfter``, ``ContinuationToken``), retried; its answer as botocore gives it
ListPage = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]

PAGE_KEYS = 1000
#: the very first page is smaller: the copying starts a page's round trip and parse sooner
#: (1,000 keys: 25-30 ms on SeaweedFS; 100: 4-6 ms)
FIRST_PAGE_KEYS = 100
#: probes of one split, all sent at once (one round trip)
PROBES = 48
#: character positions one split probes at most: the shallowest and the deepest that vary
_LEVELS = 8
#: the characters keys are most often made of, by class: candidates come from the class of
#: the character they follow first (``0`` -> ``1``..``9``), then a few from the others
_CLASSES = (
    "0123456789",
    "ABCDEFGHIJKLMNOPQRSTUVWXYZ",
    "abcdefghijklmnopqrstuvwxyz",
    "!$&'()*+,-./:;=@_~",
)


@dataclass(slots=True)
class _Range:
    """Keys ``after < key <= upto`` (``None``: unbounded), listed by one stream."""

    after: str | None
    upto: str | None
    #: the first key after ``upto``, as the probe at ``upto`` found it: the next range's first
    upto_first: str | None = None
    #: the first key after ``after``, as the probe at ``after`` found it (the range before
    #: lists the keys between ``after`` and it: ``upto_first``)
    after_first: str | None = None
    position: str | None = None  # the last key listed
    done: bool = False

    @property
    def low(self) -> str | None:
        return self.position if self.position is not None else self.after


@dataclass(frozen=True, slots=True)
class _End:
    failure: BaseException | None = None


class RangeLister:
    """The pages of one prefix, listed by up to ``streams`` streams over key ranges."""

    def __init__(
        self,
        list_page: ListPage,
        prefix: str,
        *,
        streams: int = 1,
        page_keys: int | None = None,
        skip_classes: frozenset[str] = frozenset(),
        left_out: list[int] | None = None,
    ) -> None:
        if streams < 1:
            raise ValueError("streams must be at least 1")
        self.list_page = list_page
        self.prefix = prefix
        self.streams = streams
        #: objects of these storage classes are left out (``--exclude-storage-class``),
        #: counted in ``left_out`` (objects, bytes; the caller's list, when it gives one)
        self.skip_classes = skip_classes
        self.left_out = left_out if left_out is not None else [0, 0]
        self.page_keys = page_keys or PAGE_KEYS
        #: ranges listed so far (1 when the listing never split), and probe requests sent
        self.ranges_started = 0
        self.probes_sent = 0
        self._queue: asyncio.Queue[Sequence[WorkItem] | _End] = asyncio.Queue()
        self._room = asyncio.Semaphore(max(2, streams))  # pages listed ahead of the consumer
        self._group: asyncio.TaskGroup | None = None  # owns every stream and split
        self._owner: asyncio.Task[None] | None = None  # the task running that group
        self._split_task: asyncio.Task[None] | None = None  # the last split attempt
        self._active = 0
        self._pages_to_split = 1  # pages before the next split attempt
        self._fruitless = 0  # split attempts in a row that found nothing
        self._starved = False  # the consumer waits for a page, after it had two
        self._first = True  # the next request is the listing's first
        self._ordered = True  # the server answers in key order and honours StartAfter

    async def pages(self) -> AsyncGenerator[Sequence[WorkItem], None]:
        """Every key under the prefix once, page by page, as the streams list them."""
        self._owner = asyncio.ensure_future(self._own())
        delivered = 0
        try:
            while True:
                # after the small first page and a full one: the consumer keeps up
                self._starved = delivered >= 2 and self._queue.empty()
                entry = await self._queue.get()
                self._starved = False
                if isinstance(entry, _End):
                    if entry.failure is not None:
                        raise entry.failure
                    if self.left_out[0]:
                        log.info(
                            "left out %d objects (%d bytes) in storage class %s "
                            "(--exclude-storage-class)",
                            self.left_out[0],
                            self.left_out[1],
                            " or ".join(sorted(self.skip_classes)),
                        )
                    return
                self._room.release()
                delivered += 1
                yield entry
        finally:  # done, failed, or the consumer stopped early: no stream outlives it
            self._owner.cancel()
            await asyncio.wait({self._owner})

    async def _own(self) -> None:
        """One TaskGroup owns every stream and split; the listing ends when it does."""
        try:
            async with asyncio.TaskGroup() as group:
                self._group = group
                self._start(_Range(None, None))
        except Exception as exc:  # a stream failed (the others were cancelled)
            failure = primary_error(exc) if isinstance(exc, BaseExceptionGroup) else exc
            self._queue.put_nowait(_End(failure))
            return
        self._queue.put_nowait(_End())

    def _start(self, key_range: _Range) -> None:
        assert self._group is not None
        self._active += 1
        self.ranges_started += 1
        self._group.create_task(self._stream(key_range))

    async def _stream(self, key_range: _Range) -> None:
        try:
            await self._walk(key_range)
        finally:
            key_range.done = True
            self._active -= 1
            if self._active == 0 and self._split_task is not None:
                self._split_task.cancel()  # nothing left to split: the group may end

    async def _walk(self, key_range: _Range) -> None:
        token: str | None = None
        tokens: set[bytes] = set()  # digests of the tokens this stream was given
        start_after, after_first = key_range.after, key_range.after_first
        while True:
            params: dict[str, Any] = {"MaxKeys": self.page_keys}
            if self._first:
                self._first = False
                params["MaxKeys"] = min(self.page_keys, FIRST_PAGE_KEYS)
            if token:
                params["ContinuationToken"] = token
            elif start_after is not None:
                params["StartAfter"] = start_after
            answer = await self.list_page(params)
            # read after the answer: a split may have moved them
            upto, upto_first = key_range.upto, key_range.upto_first
            items: list[WorkItem] = []
            ours: str | None = None  # the page's last key of this range
            skip = self.skip_classes
            beyond = False
            previous = key_range.low
            for entry in answer.get("Contents", ()):
                key = entry["Key"]
                if not key.startswith(self.prefix):
                    self._outside_prefix(key)
                # the whole page is checked: a key past the end may hide one before it
                if previous is not None and key <= previous:
                    self._out_of_order(key, previous)
                previous = key
                # Past the end is from the next range's first key on, as its probe found it:
                # keys between the end and it are this stream's. A server whose StartAfter
                # skips the folder it names (SeaweedFS: after a/b, nothing under a/b/) lists
                # them to no other stream; on S3 there are none but keys added since, which
                # the next stream, after the same bound, lists too: it leaves them to this one.
                if upto is not None and key > upto and (upto_first is None or key >= upto_first):
                    beyond = True
                elif not beyond and (after_first is None or key >= after_first):
                    ours = key
                    size = int(entry.get("Size", 0))
                    if skip and entry.get("StorageClass", "STANDARD") in skip:
                        self.left_out[0] += 1
                        self.left_out[1] += size
                        continue
                    items.append(WorkItem(key, size, entry.get("ETag", "")))
            if ours is not None:  # listed, left out or not: a split goes on after it
                key_range.position = ours
            token = answer.get("NextContinuationToken")
            last = beyond or not answer.get("IsTruncated")
            if not last and token:
                # a token this stream was given before (the one just sent, as botocore's
                # paginator refuses it, or one of a cycle): the listing would never end
                digest = hashlib.blake2b(token.encode(), digest_size=16).digest()
                if digest in tokens:
                    raise FatalRunError(
                        "the source server answered a listing page with a continuation "
                        "token it gave before: the listing would never end; check "
                        "--endpoint-url points at an S3 server that supports ListObjectsV2"
                    )
                tokens.add(digest)  # 16 bytes a page (of 1,000 keys), not the token
            if not last and not token:  # truncated, no token: go on after the page's last key
                if previous is None or previous == start_after:
                    raise FatalRunError(
                        "the source server said the listing goes on but gave neither a "
                        "continuation token nor a key to go on from"
                    )
                start_after = previous
            if items or self.ranges_started == 1:  # one range: every page, as one stream
                await self._room.acquire()
                self._queue.put_nowait(items)
            if last:
                return
            if (
                self._starved
                and self._ordered
                and (self._split_task is None or self._split_task.done())
                and self._active < self.streams
            ):
                self._pages_to_split -= 1
                if self._pages_to_split <= 0:
                    assert self._group is not None
                    first = items[0].key if items else None
                    self._split_task = self._group.create_task(self._split(key_range, first))

    # -- splitting ----------------------------------------------------------------------

    async def _split(self, key_range: _Range, page_first: str | None) -> None:
        try:
            bounds = await self._boundaries(key_range, page_first)
        except Exception as exc:  # the streams go on as they are; their errors are reported
            log.debug("listing: no split of %r: %s", key_range, exc)
            bounds = []
        if not self._ordered:
            return
        # where the stream is now
        low, upto, upto_first = key_range.low, key_range.upto, key_range.upto_first
        bounds = [
            (b, first)
            for b, first in bounds
            if (low is None or b > low) and (upto is None or b < upto)
        ]
        room = self.streams - self._active
        if key_range.done or not bounds or room < 1:
            self._fruitless += 1  # try again later, and less often each time
            self._pages_to_split = 2**self._fruitless
            return
        self._fruitless = 0
        # the bounds at the shallowest positions first: they cut the biggest ranges
        bounds = sorted(sorted(bounds, key=lambda bound: len(bound[0]))[:room])
        key_range.upto, key_range.upto_first = bounds[0]
        for (start, start_first), (end, end_first) in zip(
            bounds, [*bounds[1:], (upto, upto_first)], strict=True
        ):
            self._start(_Range(start, end, end_first, after_first=start_first))
        log.debug("listing: %d streams after a split at %s", self._active, [b for b, _ in bounds])

    async def _boundaries(self, key_range: _Range, page_first: str | None) -> list[tuple[str, str]]:
        """Keys past the range's position that have keys after them within the range, each
        with the first of those: probes of candidates at the character positions from the
        prefix's end to the deepest one where the last page's keys differed, all at once."""
        low = key_range.low or self.prefix
        upto = key_range.upto
        top = max(len(self.prefix), _common_length(low, upto) if upto is not None else 0)
        varied = _common_length(page_first, low) if page_first is not None else len(low) - 1
        levels = list(range(top, max(top, min(varied, len(low) - 1)) + 1))
        if len(levels) > _LEVELS:
            levels = levels[: _LEVELS // 2] + levels[-(_LEVELS // 2) :]
        each = max(4, PROBES // len(levels))
        candidates: set[str] = set()
        for level in levels:
            base = low[:level]
            after = low[level] if level < len(low) else None
            bounded = upto is not None and len(upto) > level and upto.startswith(base)
            before = upto[level] if upto is not None and bounded else None
            candidates.update(base + c for c in _candidates(after, before, each))
        ordered = sorted(candidates)
        # a group, not gather: a probe that fails cancels the others, none outlives the split
        async with asyncio.TaskGroup() as probes:
            tasks = [probes.create_task(self._probe(c)) for c in ordered]
        firsts = [task.result() for task in tasks]
        for candidate, first in zip(ordered, firsts, strict=True):
            if first is not None and first <= candidate:
                self._out_of_order(first, candidate)  # StartAfter ignored
                return []
        return _useful(ordered, firsts, upto)

    def _outside_prefix(self, key: str) -> None:
        """The server listed ``key``, not under the prefix asked for: it ignores Prefix, and
        the key has no destination (its name would be cut at the prefix's length)."""
        raise FatalRunError(
            f"the server listed {key!r}, outside the prefix {self.prefix!r}: it ignores "
            "the listing's Prefix, so what it lists cannot be mapped to destination keys; "
            "check --endpoint-url points at an S3 server that supports ListObjectsV2 Prefix"
        )

    def _out_of_order(self, key: str, after: str) -> None:
        """The server answered ``key`` after ``after``: not in key order, or StartAfter
        ignored. Before any split: no split ever; after one: the listing cannot go on."""
        if self.ranges_started > 1:
            raise FatalRunError(
                f"the source server listed {key!r} after {after!r}: it does not list in key "
                "order or ignores StartAfter, so the listing cannot be split; run again with "
                "--list-streams 1"
            )
        if self._ordered:
            log.debug("listing: %r came after %r: no split", key, after)
        self._ordered = False

    async def _probe(self, candidate: str) -> str | None:
        """The first key after ``candidate``, or None."""
        self.probes_sent += 1
        answer = await self.list_page({"StartAfter": candidate, "MaxKeys": 1})
        contents = answer.get("Contents") or ()
        return str(contents[0]["Key"]) if contents else None


def _common_length(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _candidates(after: str | None, before: str | None, most: int) -> list[str]:
    """Up to ``most`` characters strictly between ``after`` and ``before``: the rest of
    ``after``'s class first (digits after a digit), then an even spread of the others."""

    def between(chars: str) -> list[str]:
        return [c for c in chars if (after is None or c > after) and (before is None or c < before)]

    own = next((chars for chars in _CLASSES if after is not None and after in chars), "")
    first = _spread(between(own), most)
    others = _spread([c for chars in _CLASSES if chars != own for c in between(chars)], most)
    return first + others[: max(0, most - len(first))]


def _spread(chars: list[str], most: int) -> list[str]:
    if len(chars) <= most:
        return chars
    return [chars[(i * len(chars)) // most] for i in range(most)]


def _useful(
    candidates: list[str], firsts: Sequence[str | None], upto: str | None
) -> list[tuple[str, str]]:
    """The candidates that start a range with keys in it (from ``c`` to the next kept one),
    each with the first key after it."""
    kept: list[tuple[str, str]] = []
    for candidate, first in zip(candidates, firsts, strict=True):
        if first is None or (upto is not None and first > upto):
            break  # no key after this candidate within the range: none after later ones
        while kept and kept[-1][1] > candidate:
            kept.pop()  # nothing between that one and this: its range would be empty
        kept.append((candidate, first))
    return kept
