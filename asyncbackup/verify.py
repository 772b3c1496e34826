"""``asyncbackup checkpoint verify``: are the copies a checkpoint marks done at the destination,
with the source's content?

One listing of each side under the job's prefix (ListObjectsV2, 1,000 keys a request, never one
HEAD per object) gives every done key's size and ETag there and at the source; the two are
walked side by side in key order, a few pages of each in memory, however large the bucket. A
copy is
checked by content where the ETags can tell: asyncbackup gives a copy its source's ETag (one
PUT: the MD5; a multipart source: its own layout), so equal ETags are the same bytes. Two
single-part ETags that differ are two contents unless an encryption makes them opaque
(SSE-KMS, SSE-C), which only the objects' HEADs tell: those pairs alone are looked at. Where the
ETags are of different kinds (a single-part source above ``--multipart-threshold`` uploaded in
parts, a layout the source's parts did not allow) the copy is compared by size only, and says
so.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .checkpoint import CheckpointState
from .checkpoint_identity import recorded_text
from .checkpoint_tool import is_github, live_path, load
from .config import BackupConfig
from .errors import ConfigError, FatalRunError, ObjectError
from .etags import clean_etag, etag_is_digest, is_md5_etag
from .pipeline import WorkItem, close_listing, for_each_bounded
from .printable import printable
from .retry import ACCESS_DENIED, MISSING_CODES, RetryPolicy
from .s3client import S3Client, check_bucket, open_client, profile_flag
from .sources.s3 import S3Source

#: how many HEADs of suspect copies (single-part ETags that differ) are in flight at once
_HEADS_AT_ONCE = 8


@dataclass(frozen=True, slots=True)
class Listed:
    size: int
    etag: str


@dataclass(frozen=True, slots=True)
class Mismatch:
    """A copy whose size differs from the source's, or whose content does (same size)."""

    key: str
    source: Listed
    dest: Listed

    @property
    def same_size(self) -> bool:
        return self.source.size == self.dest.size

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "source_size": self.source.size,
            "dest_size": self.dest.size,
            "source_etag": self.source.etag,
            "dest_etag": self.dest.etag,
        }


@dataclass(slots=True)
class VerifyResult:
    """Every key the checkpoint marks done, checked against listings of both buckets."""

    checked: int = 0
    missing: list[str] = field(default_factory=list)
    different: list[Mismatch] = field(default_factory=list)
    not_in_source: list[str] = field(default_factory=list)
    #: copies found with the source's content (same ETag, or both empty)
    content_checked: int = 0
    #: copies of the source's size whose content the ETags cannot compare
    size_only: list[str] = field(default_factory=list)
    source_listed: int = 0
    dest_listed: int = 0

    @property
    def ok(self) -> bool:
        return not self.missing and not self.different

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "checked": self.checked,
            "missing": self.missing,
            "different": [m.to_dict() for m in self.different],
            "not_in_source": self.not_in_source,
            "content_checked": self.content_checked,
            "size_only": self.size_only,
            "source_listed": self.source_listed,
            "dest_listed": self.dest_listed,
        }


def job_config(state: CheckpointState) -> BackupConfig:
    """The parts of the job's configuration that say where its copies are."""
    dest_prefix = state.config.get("dest_prefix")
    # one bucket name on two endpoints is two buckets (BackupConfig's same-bucket check)
    source_endpoint, dest_endpoint = (
        value if isinstance(value := state.config.get(name), str) else None
        for name in ("source_endpoint_url", "dest_endpoint_url")
    )
    return BackupConfig(
        source_bucket=state.source_bucket,
        source_path=state.source_path,
        dest_bucket=state.dest_bucket,
        base_local_path=Path(str(state.config.get("base_local_path") or ".")),
        dest_prefix=dest_prefix if isinstance(dest_prefix, str) else None,
        source_endpoint_url=source_endpoint,
        dest_endpoint_url=dest_endpoint,
    )


class _Walk:
    """One side's listing under the job's prefix, walked in key order beside the other: only
    the page being read is held (and the two the listing reads ahead), never a map of the
    bucket. ``to_key`` maps a listed key to its checkpoint key (an order-keeping change of
    prefix)."""

    def __init__(self, side: S3Source, prefix: str, to_key: Callable[[str], str], role: str):
        self.side, self.prefix, self.role = side, prefix, role
        self.to_key = to_key
        self.listed = 0
        self._pages = side.list(prefix)
        self._page: Sequence[WorkItem] = ()
        self._index = 0
        self._current: tuple[str, WorkItem] | None = None
        self._ended = False

    async def find(self, key: str) -> Listed | None:
        """The listed object of checkpoint key ``key``; asked in key order."""
        while not self._ended and (self._current is None or self._current[0] < key):
            await self._advance()
        if self._current is None or self._current[0] != key:
            return None
        return Listed(self._current[1].size, clean_etag(self._current[1].etag))

    async def drain(self) -> None:
        """Walk to the end, for the count of objects listed."""
        while not self._ended:
            await self._advance()

    async def close(self) -> None:
        await close_listing(self._pages)

    async def _advance(self) -> None:
        while self._index >= len(self._page):
            try:
                page = await anext(self._pages, None)
            except ObjectError as exc:
                flag = profile_flag(self.role)
                raise FatalRunError(
                    f"cannot list the {self.role} bucket {self.side.bucket!r} under "
                    f"{self.prefix!r}: {exc}; nothing was verified - check the access of "
                    f"{flag}'s credentials to it, the endpoint and the network, then verify "
                    "again"
                ) from exc
            if page is None:
                self._ended, self._current = True, None
                return
            self._page, self._index = page, 0
            self.listed += len(page)
        item = self._page[self._index]
        self._index += 1
        key = self.to_key(item.key)
        if self._current is not None and key <= self._current[0]:
            raise FatalRunError(
                f"the {self.role} bucket {self.side.bucket!r} listed {printable(item.key)!r} "
                "after a key that sorts after it: verify walks both listings in key order, "
                "as S3 lists them, and this server does not (an S3 Express directory bucket "
                "does not); nothing was verified"
            )
        self._current = (key, item)


async def verify_state(
    state: CheckpointState,
    *,
    source_client: S3Client,
    dest_client: S3Client,
    retry: RetryPolicy | None = None,
) -> VerifyResult:
    """Compare the keys ``state`` marks done with listings of the source and destination.

    Copies are looked for where the job put them (under ``--dest-prefix`` if the checkpoint
    records one). The sizes come from the source listing; a done key that is no longer in the
    source is only checked for presence at the destination.
    """
    job = job_config(state)
    policy = retry or RetryPolicy(8)
    source = S3Source(source_client, state.source_bucket, policy)
    dest = S3Source(dest_client, state.dest_bucket, policy)
    dest_prefix = job.dest_list_prefix

    def from_dest(key: str) -> str:
        # the inverse of ``job.dest_key`` (SOURCE_PATH/ itself has no key under
        # --dest-prefix '': never listed, reported missing)
        return job.source_prefix + key[len(dest_prefix) :]

    done = sorted(key for key, value in state.files.items() if value)
    result = VerifyResult(checked=len(done))
    suspects: list[Mismatch] = []
    in_source = _Walk(source, job.source_prefix, str, "source")
    at_dest = _Walk(dest, dest_prefix, str if job.dest_prefix is None else from_dest, "destination")
    try:
        for key in done:
            source_copy = await in_source.find(key)
            dest_copy = await at_dest.find(key)
            if dest_copy is None:
                result.missing.append(key)
            elif source_copy is None:
                result.not_in_source.append(key)
            else:
                pair = Mismatch(key, source_copy, dest_copy)
                if not pair.same_size:
                    result.different.append(pair)
                elif pair.source.etag == pair.dest.etag or pair.source.size == 0:
                    result.content_checked += 1
                elif is_md5_etag(pair.source.etag) and is_md5_etag(pair.dest.etag):
                    suspects.append(pair)
                else:
                    result.size_only.append(key)
        await in_source.drain()
        await at_dest.drain()
    finally:
        await in_source.close()
        await at_dest.close()
    result.source_listed, result.dest_listed = in_source.listed, at_dest.listed
    if suspects:
        await _look_closer(suspects, result, source, dest, job.dest_key)
    return result


async def _look_closer(
    suspects: list[Mismatch],
    result: VerifyResult,
    source: S3Source,
    dest: S3Source,
    dest_key: Callable[[str], str],
) -> None:
    """HEAD both sides of each pair of single-part ETags that differ: other content, unless an
    encryption makes an ETag opaque or the object changed since it was listed."""
    verdicts: dict[str, str] = {}

    async def look(pair: Mismatch) -> None:
        verdicts[pair.key] = await _verdict(pair, source, dest, dest_key(pair.key))

    await for_each_bounded(suspects, _HEADS_AT_ONCE, look)
    for pair in suspects:  # still in key order
        verdict = verdicts[pair.key]
        if verdict == "different":
            result.different.append(pair)
        elif verdict == "same":
            result.content_checked += 1
        elif verdict == "missing":
            result.missing.append(pair.key)
        elif verdict == "not_in_source":
            result.not_in_source.append(pair.key)
        else:
            result.size_only.append(pair.key)
    for keys in (result.missing, result.not_in_source, result.size_only):
        keys.sort()


async def _verdict(pair: Mismatch, source: S3Source, dest: S3Source, dest_key: str) -> str:
    source_head = await _head(source, pair.key, "source")
    dest_head = await _head(dest, dest_key, "destination")
    if dest_head is None:
        return "missing"
    if source_head is None:
        return "not_in_source"
    if not source_head or not dest_head:  # a HEAD refused: nothing more to tell
        return "size_only"
    if not (etag_is_digest(source_head) and etag_is_digest(dest_head)):
        return "size_only"
    source_etag = clean_etag(str(source_head.get("ETag", "")))
    dest_etag = clean_etag(str(dest_head.get("ETag", "")))
    if source_etag == dest_etag:
        return "same"  # changed on one side since the listing, and the same again
    if is_md5_etag(source_etag) and is_md5_etag(dest_etag):
        return "different"
    return "size_only"


async def _head(side: S3Source, key: str, role: str) -> dict[str, Any] | None:
    """The object's HEAD; None when it is gone, ``{}`` when the credentials may not read it
    (a destination writer may list without ``s3:GetObject``)."""
    try:
        answer: dict[str, Any] = await side.retry.call(
            functools.partial(side.client.head_object, Bucket=side.bucket, Key=key)
        )
    except ObjectError as exc:
        if exc.code in MISSING_CODES:
            return None
        if exc.code in ACCESS_DENIED:
            return {}
        flag = profile_flag(role)
        raise FatalRunError(
            f"cannot read the {role} object {printable(key)!r} of bucket {side.bucket!r}: "
            f"{exc}; check the access of {flag}'s credentials to it, the endpoint and the "
            "network, then verify again"
        ) from exc
    return answer


@dataclass(frozen=True, kw_only=True, slots=True)
class Endpoints:
    """Where the two buckets are, as the ``s3`` command takes it."""

    source_profile: str | None = None
    dest_profile: str | None = None
    endpoint_url: str | None = None
    source_endpoint_url: str | None = None
    dest_endpoint_url: str | None = None
    region: str | None = None


async def verify_checkpoint(path: Path, where: Endpoints | None = None) -> VerifyResult:
    """Open clients for the checkpoint's buckets and run ``verify_state()``.

    The profiles and endpoints default to the ones the checkpoint recorded for its run: the
    copies are on that store (one bucket name on two endpoints is two buckets), wherever the
    environment or a profile points now.
    """
    where = where or Endpoints()
    state = await asyncio.to_thread(load, path)
    if is_github(state):
        raise ConfigError(
            f"{path} is the checkpoint of a GitHub backup; verify compares an S3 source with "
            "its copies - check a GitHub backup by restoring a bundle (see the README)"
        )
    recorded = state.config
    # Where the copies are: a value a hand edit broke would have them looked for elsewhere
    # (reported missing, marked pending), as a run refuses it.
    for name, what in (("dest_prefix", "a key prefix"), ("dest_endpoint_url", "a URL")):
        if name in recorded:
            recorded_text(path, recorded, name, what)
    source_profile = where.source_profile or _str_or_none(recorded.get("source_profile"))
    dest_profile = where.dest_profile or _str_or_none(recorded.get("dest_profile"))
    source_endpoint = (
        where.source_endpoint_url
        or where.endpoint_url
        or _str_or_none(recorded.get("source_endpoint_url"))
    )
    dest_endpoint = (
        where.dest_endpoint_url
        or where.endpoint_url
        or _str_or_none(recorded.get("dest_endpoint_url"))
    )
    async with contextlib.AsyncExitStack() as stack:
        common: dict[str, Any] = {
            "region": where.region,
            "max_pool_connections": 4,
            "connect_timeout": 10.0,
            "read_timeout": 60.0,
        }
        source_client = await open_client(
            stack,
            role="source",
            profile=source_profile,
            endpoint_url=source_endpoint,
            # a Requester Pays source: its run agreed to pay (--request-payer), and so do we
            request_payer="requester" if recorded.get("request_payer") == "requester" else None,
            **common,
        )
        dest_client = await open_client(
            stack,
            role="destination",
            profile=dest_profile,
            endpoint_url=dest_endpoint,
            **common,
        )
        job = job_config(state)  # the prefixes the job lists (a policy may allow those only)
        await check_bucket(
            source_client, state.source_bucket, role="source", prefix=job.source_prefix
        )
        await check_bucket(
            dest_client, state.dest_bucket, role="destination", prefix=job.dest_list_prefix
        )
        return await verify_state(state, source_client=source_client, dest_client=dest_client)
    raise AssertionError("unreachable")  # pragma: no cover


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


# -- formatting for the CLI


def format_verify(result: VerifyResult, path: Path, limit: int = 50) -> str:
    lines: list[str] = []
    for key in result.missing[:limit]:
        lines.append(f"missing    {printable(key)}")
    for m in result.different[:limit]:
        if m.same_size:
            why = f"same size, other content: ETag {m.source.etag} at the source, {m.dest.etag}"
        else:
            why = f"source {m.source.size} bytes, dest {m.dest.size}"
        lines.append(f"different  {printable(m.key)}  ({why})")
    for key in result.not_in_source[:limit]:
        lines.append(
            f"unchecked  {printable(key)}  (no longer in the source; present at the destination)"
        )
    hidden = sum(
        max(0, len(group) - limit)
        for group in (result.missing, result.different, result.not_in_source)
    )
    if hidden:
        lines.append(f"... and {hidden:,} more (use --json for the full list)")
    verdict = "OK" if result.ok else "FAILED"
    lines.append(
        f"{verdict}: {result.checked:,} files marked done; {len(result.missing):,} missing, "
        f"{len(result.different):,} different at the destination (size or content)"
        + (
            f", {len(result.not_in_source):,} no longer in the source"
            if result.not_in_source
            else ""
        )
    )
    if result.size_only:
        lines.append(
            f"{len(result.size_only):,} compared by size only: their ETags cannot compare "
            "content (a single-part source uploaded in parts, SSE-KMS or SSE-C, or a HEAD the "
            "credentials may not make); --json lists them"
        )
    if not result.ok:
        lines.append(_next_run_advice(path))
    return "\n".join(lines)


def _next_run_advice(path: Path) -> str:
    """How to have the next run copy the bad keys again. A run reads only the live checkpoint:
    an archived one (a completed backup) is read again only once put back in its place."""
    live = live_path(path)
    if live is None:
        return (
            "to copy them again on the next run: asyncbackup checkpoint verify "
            f"{path} --mark-pending (with the same endpoint options), or mark them one by one "
            f"with: asyncbackup checkpoint mark {path} --pending KEY"
        )
    if live.exists() or live.is_symlink():
        return (
            f"this checkpoint is archived; the job's current one is {live}: to copy them again "
            f"on its next run, mark them there with: asyncbackup checkpoint mark {live} "
            "--pending KEY"
        )
    return (
        f"this checkpoint is archived, and a run reads only {live} (without it, the next run "
        "starts a new checkpoint and copies everything): to copy them alone again on the next "
        f"run, put it back with: cp {path} {live} && asyncbackup checkpoint verify {live} "
        "--mark-pending (with the same endpoint options)"
    )
