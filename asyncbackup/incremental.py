"""Listing transforms: filters, and ``--skip-existing`` against a listing of the destination.

``--skip-existing`` walks the source and destination listings side by side (both come sorted
by key, UTF-8 byte order, which is code point order), so it needs no HEAD per object and no
map of the destination in memory. An object is unchanged when the destination has the same
size and ETag: asyncbackup gives every copy its source's ETag (single PUT with the same MD5, or
multipart with the same part layout), so its own earlier copies match. Empty objects are the
exception: an empty source uploaded in one empty part (ETag ``...-1``) is copied as a plain
empty object, so two empty objects count as the same whatever their ETags. A copy of the
source's size whose ETag is not the source's (SSE-KMS at the destination, a single-part source
copied in parts) is asked for the source ETag it was stamped with (``stamps.py``): one HEAD
each, a page's at once, ``limit`` in flight.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, field, replace

from .etags import clean_etag, is_md5_etag, multipart_parts
from .filters import KeyFilter
from .pipeline import WorkItem, close_listing, for_each_bounded

Listing = AsyncIterator[Sequence[WorkItem]]


@dataclass(slots=True)
class LeftOut:
    """The objects a listing left out of the job, ``[objects, bytes]`` each: by
    ``--include``/``--exclude`` (``filters``) and by ``--exclude-storage-class``."""

    filters: list[int] = field(default_factory=lambda: [0, 0])
    storage_class: list[int] = field(default_factory=lambda: [0, 0])


async def filtered(
    listing: Listing, key_filter: KeyFilter, strip: int, left_out: list[int] | None = None
) -> Listing:
    """Only the items whose key, less its first ``strip`` characters, passes the filter;
    the others counted in ``left_out`` (objects, bytes)."""
    try:
        async for page in listing:
            kept = [item for item in page if key_filter.matches(item.key[strip:])]
            if left_out is not None and len(kept) < len(page):
                left_out[0] += len(page) - len(kept)
                left_out[1] += sum(item.size for item in page) - sum(item.size for item in kept)
            if kept or not page:
                yield kept
    finally:
        await close_listing(listing)


async def mark_unchanged(
    source: Listing,
    dest: Listing,
    source_relative: Callable[[str], str],
    dest_relative: Callable[[str], str],
    not_copies: Collection[str] = (),
    opaque: bool = False,
    stamp: Callable[[str], Awaitable[str | None]] | None = None,
    limit: int = 1,
) -> Listing:
    """Flag source items whose copy at the destination has the same size and ETag
    (``present``), or is there with another size, or an ETag that could have been the
    source's and is not (``changed``: a copy a resumed checkpoint marks done is made again);
    never present: those of ``not_copies`` (keys whose object there is known to be no good
    copy). ``opaque``: the destination's ETags are no MD5s (``--sse aws:kms``). ``stamp``:
    the source ETag a destination key's copy was made of (a HEAD), asked, ``limit`` at a time,
    of the copies of the source's size but not its ETag: present when it is the source's
    ETag, changed when it is another."""
    dest_iter = _items(dest)
    try:
        current = await anext(dest_iter, None)
        async for page in source:
            out: list[WorkItem] = []
            unsure: list[tuple[int, str]] = []  # (index in out, destination key)
            for item in page:
                name = source_relative(item.key)
                while current is not None and dest_relative(current.key) < name:
                    current = await anext(dest_iter, None)
                if current is not None and dest_relative(current.key) == name:
                    if item.key not in not_copies and _same(item, current):
                        item = replace(item, present=True)
                    else:
                        if item.key in not_copies or _differs(item, current, opaque):
                            item = replace(item, changed=True)
                        if stamp is not None and _stamp_may_tell(item, current, not_copies):
                            unsure.append((len(out), current.key))
                out.append(item)
            if unsure and stamp is not None:
                await _read_stamps(out, unsure, stamp, limit)
            yield out
    finally:
        await close_listing(source)
        await close_listing(dest_iter)


def _same(item: WorkItem, copy: WorkItem) -> bool:
    """Whether ``copy`` (the destination's object of ``item``'s name) has its size and ETag;
    any two empty objects are the same."""
    if copy.size != item.size:
        return False
    return item.size == 0 or (bool(item.etag) and clean_etag(copy.etag) == clean_etag(item.etag))


def _stamp_may_tell(item: WorkItem, copy: WorkItem, not_copies: Collection[str]) -> bool:
    """Whether ``copy``'s stamp can show it is ``item``'s: of its size, not one of
    ``not_copies`` (no good copy, whatever it says), and ``item`` has an ETag to compare."""
    return copy.size == item.size and bool(item.etag) and item.key not in not_copies


async def _read_stamps(
    out: list[WorkItem],
    unsure: list[tuple[int, str]],
    stamp: Callable[[str], Awaitable[str | None]],
    limit: int,
) -> None:
    """Each item of ``out`` at an index of ``unsure``: present where its copy's stamp is its
    ETag, changed where the stamp is another ETag (a copy of another version), as it was where
    there is none."""

    async def read(entry: tuple[int, str]) -> None:
        index, dest_key = entry
        item = out[index]
        stamped = await stamp(dest_key)
        if stamped is None:
            return
        same = stamped == clean_etag(item.etag)
        out[index] = replace(item, present=same, changed=not same)

    await for_each_bounded(unsure, limit, read)


def _differs(item: WorkItem, copy: WorkItem, opaque: bool) -> bool:
    """Whether ``copy`` (not ``_same``) is known to be of other content than ``item``: its
    size differs, or its ETag is of the kind the source's is (both one MD5, or both of as
    many parts) on a destination whose ETags are MD5s. ETags of two kinds (a single-part
    source copied in parts, above ``--multipart-threshold``; parts of another count) or
    opaque ones (SSE-KMS) tell nothing: such a copy a resumed checkpoint marks done stays
    done, as a plain resume leaves it."""
    if copy.size != item.size:
        return True
    if opaque or not item.etag:
        return False
    parts = multipart_parts(item.etag)
    if parts is not None:
        return multipart_parts(copy.etag) == parts
    return is_md5_etag(item.etag) and is_md5_etag(copy.etag)


async def _items(listing: Listing) -> AsyncIterator[WorkItem]:
    try:
        async for page in listing:
            for item in page:
                yield item
    finally:
        await close_listing(listing)
