"""``asyncbackup checkpoint verify``: are the copies a checkpoint marks done at the destination?

One listing of each side under the job's prefix (ListObjectsV2, 1,000 keys a request, never one
HEAD per object) gives every done key's size and ETag there and at the source.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .checkpoint import CheckpointState
from .checkpoint_tool import is_github, load
from .config import BackupConfig
from .errors import ConfigError, FatalRunError, ObjectError
from .pipeline import primary_error
from .printable import printable
from .retry import RetryPolicy
from .s3client import S3Client, check_bucket, open_client
from .sources.s3 import S3Source


@dataclass(frozen=True, slots=True)
class SizeMismatch:
    key: str
    source_size: int
    dest_size: int

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "source_size": self.source_size, "dest_size": self.dest_size}


@dataclass(slots=True)
class VerifyResult:
    """Every key the checkpoint marks done, checked against listings of both buckets."""

    checked: int = 0
    missing: list[str] = field(default_factory=list)
    different: list[SizeMismatch] = field(default_factory=list)
    not_in_source: list[str] = field(default_factory=list)
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


async def _sizes(
    source: S3Source, prefix: str, wanted: Callable[[str], str | None], role: str
) -> tuple[dict[str, int], int]:
    """``wanted`` maps a listed key to its checkpoint key (None: not wanted).

    Returns checkpoint key -> listed size, and how many objects were listed.
    """
    sizes: dict[str, int] = {}
    listed = 0
    try:
        async for page in source.list(prefix):
            listed += len(page)
            for item in page:
                key = wanted(item.key)
                if key is not None:
                    sizes[key] = item.size
    except ObjectError as exc:
        flag = "--source-profile" if role == "source" else "--dest-profile"
        raise FatalRunError(
            f"cannot list the {role} bucket {source.bucket!r} under {prefix!r}: {exc}; "
            f"nothing was verified - check the access of {flag}'s credentials to it, the "
            "endpoint and the network, then verify again"
        ) from exc
    return sizes, listed


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
    done = [key for key, value in state.files.items() if value]
    policy = retry or RetryPolicy(8)
    source = S3Source(source_client, state.source_bucket, policy)
    dest = S3Source(dest_client, state.dest_bucket, policy)
    done_keys = set(done)
    mapped = (
        # SOURCE_PATH/ itself has no key under --dest-prefix '' (dest_key): reported missing
        {job.dest_key(k): k for k in done if job.dest_prefix or k != job.source_prefix}
        if job.dest_prefix is not None
        else None
    )

    def in_job(key: str) -> str | None:
        return key if key in done_keys else None

    at_dest_key = in_job if mapped is None else mapped.get
    try:
        async with asyncio.TaskGroup() as tg:
            in_source = tg.create_task(_sizes(source, job.source_prefix, in_job, "source"))
            at_dest = tg.create_task(_sizes(dest, job.dest_list_prefix, at_dest_key, "destination"))
    except BaseExceptionGroup as group:  # the failed listing's own error, not a group of one
        raise primary_error(group) from None
    source_sizes, source_listed = in_source.result()
    dest_sizes, dest_listed = at_dest.result()
    result = VerifyResult(checked=len(done), source_listed=source_listed, dest_listed=dest_listed)
    for key in sorted(done):
        if key not in dest_sizes:
            result.missing.append(key)
        elif key not in source_sizes:
            result.not_in_source.append(key)
        elif source_sizes[key] != dest_sizes[key]:
            result.different.append(SizeMismatch(key, source_sizes[key], dest_sizes[key]))
    return result


@dataclass(frozen=True, kw_only=True, slots=True)
class Endpoints:
    """Where the two buckets are, as the ``s3`` command takes it."""

    source_profile: str | None = None
    dest_profile: str | None = None
    endpoint_url: str | None = None
    source_endpoint_url: str | None = None
    dest_endpoint_url: str | None = None
    region: str | None = None


async def verify_checkpoint(path: Path, where: Endpoints) -> VerifyResult:
    """Open clients for the checkpoint's buckets and run ``verify_state()``.

    The profiles and endpoints default to the ones the checkpoint recorded for its run: the
    copies are on that store (one bucket name on two endpoints is two buckets), wherever the
    environment or a profile points now.
    """
    state = await asyncio.to_thread(load, path)
    if is_github(state):
        raise ConfigError(
            f"{path} is the checkpoint of a GitHub backup; verify compares an S3 source with "
            "its copies - check a GitHub backup by restoring a bundle (see the README)"
        )
    recorded = state.config
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
        lines.append(
            f"different  {printable(m.key)}  (source {m.source_size} bytes, dest {m.dest_size})"
        )
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
        f"{len(result.different):,} with a different size at the destination"
        + (
            f", {len(result.not_in_source):,} no longer in the source"
            if result.not_in_source
            else ""
        )
    )
    if not result.ok:
        lines.append(
            "to copy them again on the next run: asyncbackup checkpoint verify "
            f"{path} --mark-pending (with the same endpoint options), or mark them one by one "
            f"with: asyncbackup checkpoint mark {path} --pending KEY"
        )
    return "\n".join(lines)
