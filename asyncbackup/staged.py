"""The ``process`` step of a staged S3 backup: source to staging to destination, one object.

A small object is downloaded (and verified), staged, then uploaded. A larger single-part one
goes up in one PUT streamed as it downloads, checked by the destination against the source's
MD5 (``S3Source.fetch_and_put``). An object uploaded in parts is streamed through: each part
goes to the destination as soon as it is written to the staged file, and the upload is
completed only once the whole download has checked out (``S3Source.fetch_streamed``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Callable

from .etags import is_md5_etag
from .fetched import FetchedObject
from .partfeed import ByteBudget
from .pipeline import WorkItem
from .sinks.s3 import S3Sink
from .sources.s3 import IN_MEMORY_LIMIT, S3Source
from .staging import Staging

#: the small objects' budget is the parts' divided by this
SMALL_BUDGET_SHARE = 4


class StagedCopier:
    def __init__(
        self,
        source: S3Source,
        sink: S3Sink,
        staging: Staging,
        dest_key: Callable[[str], str],
        *,
        cleanup: bool,
    ) -> None:
        self.source = source
        self.sink = sink
        self.staging = staging
        self.dest_key = dest_key
        self.cleanup = cleanup
        #: the bytes of small objects held in memory at once (a quarter of the
        #: parts' budget: 32 MiB of 128), so that what a run holds does not grow with its
        #: concurrency. A budget of their own: a small object waits for it before its GET,
        #: holding nothing, while a download in parts waits for the parts' budget holding a
        #: slot of the source's limiter; in one budget, small objects holding all of it and
        #: waiting for that slot would wait for good.
        self.small_budget = ByteBudget(
            max(sink.part_budget.limit // SMALL_BUDGET_SHARE, IN_MEMORY_LIMIT)
        )

    async def copy_once(self, item: WorkItem) -> int:
        """Copy ``item``; return its size once the destination has it whole."""
        key = self.dest_key(item.key)
        # The source's layout (one HEAD for a multipart source), asked once for either path.
        source_part_size = await self.source.part_size(item.key, item.etag, item.size)
        part_size = self.sink.part_size_of(item.size, source_part_size)
        if part_size is not None:  # uploaded in parts: streamed through staging
            fetched = await self.source.fetch_streamed(
                item,
                self.staging,
                part_size=part_size,
                source_part_size=source_part_size,
                budget=self.sink.part_budget,
                upload=functools.partial(self.sink.put_parts, key=key, part_size=part_size),
                checksum=self.sink.checksum,
            )
            await self._clean(fetched)
            return fetched.size
        if item.size > IN_MEMORY_LIMIT and is_md5_etag(item.etag) and self.sink.can_stream():
            # One PUT streamed as the download goes, checked by the destination against
            # the source's MD5 (its ETag): nothing to hash here, and the ETag is kept.
            fetched, uploaded = await self.source.fetch_and_put(
                item,
                self.staging,
                budget=self.sink.part_budget,
                upload=functools.partial(self.sink.put_stream, key=key),
            )
            return await self._put(fetched, key, source_part_size, uploaded=uploaded)
        # a small object is held in memory from its GET to its PUT (small_budget)
        small = item.size <= IN_MEMORY_LIMIT
        async with self.small_budget.hold(item.size) if small else contextlib.nullcontext():
            fetched = await self.source.fetch(item, self.staging)
            return await self._put(fetched, key, source_part_size, uploaded=False)

    async def _put(
        self, fetched: FetchedObject, key: str, source_part_size: int | None, *, uploaded: bool
    ) -> int:
        """Put ``fetched`` (unless ``uploaded`` already), then remove its staged file."""
        fetched.source_part_size = source_part_size
        try:
            if not uploaded:
                await self.sink.put(fetched, key)
        finally:
            await self._clean(fetched)
        return fetched.size

    async def _clean(self, fetched: FetchedObject) -> None:
        if self.cleanup and fetched.data is not None:  # small: as it was staged (localio)
            await self.source.local.run(self.staging.remove, fetched.path)
        elif self.cleanup:
            await asyncio.to_thread(self.staging.remove, fetched.path)
