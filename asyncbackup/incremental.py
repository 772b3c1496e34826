"""Listing transforms: filters, and ``--skip-existing`` against a listing of the destination.

``--skip-existing`` walks the source and destination listings side by side (both come sorted
by key, UTF-8 byte order, which is code point order), so it needs no HEAD per object and no
map of the destination in memory. An object is unchanged when the destination has the same
size and ETag: asyncbackup gives every copy its source's ETag (single PUT with the same MD5, or
multipart with the same part layout), so its own earlier copies match. Empty objects are the
exception: an empty source uploaded in one empty part (ETag ``...-1``) is copied as a plain
empty object, so two empty objects count as the same whatever their ETags.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Collection, Sequence
from dataclasses import dataclass, field, replace

from .etags import clean_etag, is_md5_etag, multipart_parts
from .filters import KeyFilter
from .pipeline import WorkItem, close_listing

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
) -> Listing:
    """Flag source items whose copy at the destination has the same size and ETag
    (``present``), or is there with another size, or an ETag that could have been the
    source's and is not (``changed``: a copy a resumed checkpoint marks done is made again);
    never present: those of ``not_copies`` (keys whose object there is known to be no good
    copy). ``opaque``: the destination's ETags are no MD5s (``--sse aws:kms``)."""
    dest_iter = _items(dest)
    try:
        current = await anext(dest_iter, None)
        async for page in source:
            out: list[WorkItem] = []
            for item in page:
                name = source_relative(item.key)
                while current is not None and dest_relative(current.key) < name:
                    current = await anext(dest_iter, None)
                if current is not None and dest_relative(current.key) == name:
                    if item.key not in not_copies and _same(item, current):
                        item = replace(item, present=True)
                    elif item.key in not_copies or _differs(item, current, opaque):
                        item = replace(item, changed=True)
                out.append(item)
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
