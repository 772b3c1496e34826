"""A check, after a copy, of the keys an S3-compatible store that keeps keys as file paths may
not keep while its PUT answers 200 with the data's MD5 (SeaweedFS): a key ending in "/" with
data, and a key with "//". One listing at the destination, for those keys only."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from .config import BackupConfig
from .errors import ObjectError
from .pipeline import Process, WorkItem
from .retry import RetryPolicy


def kept_key_checked(
    copy: Process, config: BackupConfig, list_objects_v2: Callable[..., Awaitable[dict[str, Any]]]
) -> Process:
    """``copy``, and then, for the keys a store that keeps keys as file paths may not keep
    while its PUT answers 200 with the data's MD5, one listing at the destination; a copy
    not kept is an error, not done. Not with ``--dest-write-only``, whose credentials may
    not list. SeaweedFS makes a key ending in "/" a folder (an empty object kept, or the
    data under ``key + name``), and folds ``a//b`` into ``a/b`` (a HEAD or a listing of
    ``a//b`` itself answers as if it were there; one of ``a//`` lists ``a/b``)."""
    if config.dest_write_only:
        return copy
    retry = RetryPolicy(config.max_attempts, side="destination")  # named in a fatal error

    async def first_listed(prefix: str) -> dict[str, Any]:
        answer = await retry.call(
            lambda: list_objects_v2(Bucket=config.dest_bucket, Prefix=prefix, MaxKeys=1)
        )
        return dict((answer.get("Contents") or [{}])[0])

    async def copy_and_check(item: WorkItem) -> int:
        size = await copy(item)
        key = config.dest_key(item.key)
        if size and key.endswith("/"):
            listed = await first_listed(key)
            if listed.get("Key") != key or listed.get("Size") != size:
                raise ObjectError(
                    "IntegrityError",
                    f"the destination answered the copy of {key!r} ({size} bytes) but lists "
                    f"{listed.get('Key')!r} ({listed.get('Size')} bytes) there: it does not "
                    "keep data under a key ending in '/' (SeaweedFS makes it a folder)",
                )
        if "//" in key:
            folder = key[: key.rindex("//") + 2]
            listed = await first_listed(folder)
            if not str(listed.get("Key", "")).startswith(folder):
                raise ObjectError(
                    "IntegrityError",
                    f"the destination answered the copy of {key!r} but lists "
                    f"{listed.get('Key')!r} under {folder!r}: it does not keep keys with "
                    "'//' (SeaweedFS folds them into '/')",
                )
        return size

    return copy_and_check
