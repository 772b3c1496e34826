"""``run_backup()``: build source and destination from the config and run the pipeline."""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .bandwidth import TokenBucket
from .checkpoint import CheckpointState, checkpoint_path, corrupt_checkpoint, read_checkpoint
from .checkpoint_identity import (
    check_dest_endpoint,
    check_identity,
    endpoint_for_checkpoint,
    recorded_patterns,
    recorded_text,
)
from .checkpoint_manager import CheckpointManager, in_thread_to_the_end
from .config import BackupConfig
from .encryption import stored_unencrypted
from .errors import CheckpointMismatchError, ConfigError, FatalRunError, ObjectError
from .etags import OPAQUE_ETAG_SSE
from .fasts3 import FastS3, open_fast_s3
from .filters import KeyFilter
from .incremental import LeftOut, filtered, mark_unchanged
from .keptkeys import kept_key_checked
from .listing import PROBES
from .partfeed import ByteBudget
from .pipeline import (
    Pipeline,
    Process,
    SourceGone,
    StartedListing,
    WorkItem,
    done_before,
    listing_or_stop,
    primary_error,
)
from .progress import Observer
from .report import BackupReport, conclude
from .retry import (
    ACCESS_DENIED,
    MISSING_CODES,
    AdaptiveLimiter,
    RetryLog,
    RetryPolicy,
    is_outage,
    raise_if_fatal,
    worth_another_copy,
)
from .s3client import (
    S3Client,
    UploadCheck,
    check_bucket,
    client_endpoint,
    open_client,
    open_destination,
    start_and_abort,
)
from .sinks.s3 import S3Sink
from .sinks.s3copy import ServerSideCopier
from .sources.s3 import S3Source
from .staged import StagedCopier
from .staging import Staging
from .stamps import StampReader
from .uploads import SECTION as UPLOADS_SECTION
from .uploads import UploadJournal, abort_recorded_uploads, last_try_at_uploads
from .workerpool import budget_share, share_of, start_worker_processes

log = logging.getLogger("asyncbackup")

_OBJECT_ATTEMPTS = 3
#: a run stops (exit 3) once this many objects in a row, and at least twice as many as are in
#: flight, failed after all their retries with a failure of the servers or the network
#: (``retry.is_outage``), none copied in between: every later one would fail the same way,
#: each after its minutes of retries
_OUTAGE_OBJECTS = 16


def _warn_keys_outside(state: CheckpointState, config: BackupConfig, path: Path) -> None:
    """Say so when no file of a resumed checkpoint is under SOURCE_PATH: a checkpoint written
    by hand with keys relative to it (the spec's example may read so) marks nothing done,
    and every object would be copied again without a word."""
    prefix = config.source_prefix
    if not prefix or not state.files or any(key.startswith(prefix) for key in state.files):
        return
    first = next(iter(state.files))
    log.warning(
        "none of the %d files in %s is under %r: its keys are taken as full keys, as runs "
        "write them (%r would be %r), so none of them counts as done; write full keys, or "
        "leave it to the run",
        len(state.files),
        path,
        prefix,
        first,
        prefix + first,
    )


async def _refuse_emptied_destination(
    state: CheckpointState, config: BackupConfig, path: Path, dest_client: S3Client
) -> None:
    """Refuse to resume a checkpoint that marks files done into a destination with no object
    under the job's prefix (one ListObjectsV2 of one key): the bucket was emptied, or deleted
    and made again, since. The resume would skip every file marked done, complete, and archive
    a checkpoint that calls them copied. Not checked: a checkpoint written by hand (or by a
    version before ``config.dest_endpoint_url``, as ``check_dest_endpoint``), whose files may
    be marked done with nothing copied yet; ``--dest-write-only``, which reads nothing there.
    A listing that fails leaves it to the run's own requests. The files marked done are
    counted only then, with the destination found empty: not a walk of a million-file map at
    the start of every resume."""
    if (
        not state.processed_files  # no file marked done, under the prefix or not
        or config.dest_write_only
        or "dest_endpoint_url" not in state.config
    ):
        return
    listing = functools.partial(
        dest_client.list_objects_v2,
        Bucket=config.dest_bucket,
        MaxKeys=1,
        Prefix=config.dest_list_prefix,
    )
    try:
        page = await RetryPolicy(config.max_attempts).call(listing)
    except ObjectError as exc:
        log.debug("could not look for the copies at the destination: %s", exc)
        return
    if page.get("Contents") or page.get("KeyCount"):
        return
    prefix = config.source_prefix
    done = sum(1 for key, ok in state.files.items() if ok and key.startswith(prefix))
    if not done:
        return
    raise CheckpointMismatchError(
        f"checkpoint {path} marks {done} files done, but the destination "
        f"s3://{config.dest_bucket}/{config.dest_list_prefix} holds no object: it was emptied, "
        "or deleted and made again, since; to copy them again, run `asyncbackup checkpoint "
        f"verify {path} --mark-pending`, then this command (or start over with "
        "--ignore-checkpoints)"
    )


def _bandwidth(config: BackupConfig) -> TokenBucket | None:
    return TokenBucket(config.max_bandwidth) if config.max_bandwidth else None


def _checkpoint_config(
    config: BackupConfig, source_endpoint: str | None, dest_endpoint: str | None
) -> dict[str, Any]:
    """What the checkpoint records of the configuration (never a secret); the endpoints are
    the clients' (``client_endpoint``): given by a flag, the environment or the profile."""
    return {
        "cleanup": config.cleanup,
        "base_local_path": str(config.base_local_path),
        "checkpoint_interval": config.checkpoint_interval,
        "concurrency": config.concurrency,
        "checksum": config.checksum,
        "source_profile": config.source_profile,
        "dest_profile": config.dest_profile,
        "include": list(config.include),
        "exclude": list(config.exclude),
        "exclude_storage_classes": list(config.exclude_storage_classes),
        "dest_prefix": config.dest_prefix,
        "source_endpoint_url": endpoint_for_checkpoint(source_endpoint),
        "dest_endpoint_url": endpoint_for_checkpoint(dest_endpoint),
        "skip_existing": config.skip_existing,
        "direct": config.direct,
        "copy_tags": config.copy_tags,
        "storage_class": config.storage_class,
        "sse": config.sse,
        "sse_kms_key_id": config.sse_kms_key_id,
        "request_payer": config.request_payer,
    }


#: what a copy is stored with, as the checkpoint's config records it: the flag that sets it
_STORED_WITH = {
    "storage_class": "--storage-class",
    "sse": "--sse",
    "sse_kms_key_id": "--sse-kms-key-id",
    "copy_tags": "--copy-tags",
}


def _stored_with(flag: str, value: str | bool | None) -> str:
    if isinstance(value, bool):
        return f"{'with' if value else 'without'} {flag}"
    return f"with {flag} {value!r}" if value else f"with no {flag}"


def _check_stored_with(state: CheckpointState, config: BackupConfig, path: Path) -> None:
    """The files a checkpoint marks done were copied with its storage class, encryption and
    tags: a resume with others would end a backup stored half one way, half the other, and
    call it complete. A checkpoint with none done (a first run stopped by a bucket policy that
    wants ``--sse``, say) takes the new options."""
    done = sum(1 for value in state.files.values() if value is True)
    if not done:
        return
    stored = state.config
    for name, flag in _STORED_WITH.items():
        if name not in stored:
            continue  # written by hand or by an older tool: nothing to compare
        before: str | bool | None
        now: str | bool | None = getattr(config, name)
        if name == "copy_tags":
            before = stored[name]
            if not isinstance(before, bool):
                raise corrupt_checkpoint(path, f"field 'config.{name}' must be true or false")
        else:  # '' sends no header: none
            before, now = recorded_text(path, stored, name, "a string") or None, now or None
        if before != now:
            raise CheckpointMismatchError(
                f"checkpoint {path} was made {_stored_with(flag, before)} (the {done:,} files it "
                f"marks done were copied so), this run is {_stored_with(flag, now)}; resume "
                "with the same options, or start over with --ignore-checkpoints"
            )


def _check_filters(state: CheckpointState, config: BackupConfig, path: Path) -> None:
    """A resume must use the destination prefix the checkpoint was made with (and the
    destination endpoint: ``check_dest_endpoint``, once the client is made), and filters
    that let through no key the checkpoint's did not: the same, or ones that leave more out
    (an ``--exclude`` added for an object that fails every run), whose files now left out
    leave the checkpoint at the end of the listing (``forget_unlisted``)."""
    stored = state.config
    _check_dest_prefix(stored, config, path)
    _check_stored_with(state, config, path)
    if "include" not in stored and "exclude" not in stored:
        return  # written by hand or by an older tool: nothing to compare
    before = KeyFilter(
        recorded_patterns(path, stored, "include"), recorded_patterns(path, stored, "exclude")
    )
    now = KeyFilter(config.include, config.exclude)
    if before.selection == now.selection:
        return
    if not now.within(before):
        raise CheckpointMismatchError(
            f"checkpoint {path} was made with {before.describe()}, this run has "
            f"{now.describe()}; resume with the same filters (or ones that only leave more "
            "out: an --exclude added, an --include removed), or start over with "
            "--ignore-checkpoints"
        )
    log.info(
        "checkpoint %s was made with %s; %s leave more out: the files left out leave the job",
        path,
        before.describe(),
        now.describe(),
    )


def _check_dest_prefix(stored: dict[str, Any], config: BackupConfig, path: Path) -> None:
    """The files a checkpoint marks done are where its ``--dest-prefix`` put them: a resume
    that puts copies elsewhere would skip them and leave its own prefix without them."""
    if "dest_prefix" not in stored:
        return  # written by hand or by an older tool: nothing to compare
    recorded = recorded_text(path, stored, "dest_prefix", "a key prefix")
    # not a BackupConfig of its own: the recorded job may be one this version refuses
    recorded_prefix = config.list_prefix_with(recorded)
    if recorded_prefix != config.dest_list_prefix:
        was = "no --dest-prefix" if recorded is None else f"--dest-prefix {recorded!r}"
        now = "none" if config.dest_prefix is None else repr(config.dest_prefix)
        where = repr(recorded_prefix) if recorded_prefix else "the bucket root"
        raise CheckpointMismatchError(
            f"checkpoint {path} was made with {was} (the copies it marks done are under "
            f"{where}), this run has --dest-prefix {now}; resume with the same --dest-prefix, "
            "or start over with --ignore-checkpoints"
        )


def _dest_params(config: BackupConfig) -> dict[str, str]:
    params: dict[str, str] = {}
    if config.storage_class:
        params["StorageClass"] = config.storage_class
    if config.sse:
        params["ServerSideEncryption"] = config.sse
    if config.sse_kms_key_id:
        params["SSEKMSKeyId"] = config.sse_kms_key_id
    return params


async def open_job_destination(
    stack: contextlib.AsyncExitStack,
    config: BackupConfig,
    *,
    check: bool = True,
    dry_run: bool = False,
    worker: bool = False,
    answers: list[dict[str, Any]] | None = None,
) -> S3Client:
    """The destination client of ``config``'s job, its bucket checked as the job's options
    say: under the job's prefix, through the fast path, or by an upload started and aborted
    with ``--dest-write-only``; and the job's upload settings (SSE-KMS key, storage class)
    by such an upload, unless ``dry_run`` (which writes nothing), whose answer is added to
    ``answers``. A ``worker`` process starts no such upload (the main process did; a worker
    stopped between its start and its abort would leave it): a write-only destination goes
    unchecked there, another is listed."""
    probes = not (dry_run or worker)
    return await open_destination(
        stack,
        config,
        fast_path=config.fast_path,
        write_probe=config.dest_write_probe,
        settings_probe=config.dest_settings_probe if probes else None,
        upload_params=_dest_params(config),
        check=check and not (worker and config.dest_write_only),
        prefix=config.dest_list_prefix,
        # --direct's copies read the source, as do the HEADs of its part layouts
        request_payer=config.request_payer if config.direct else None,
        answers=answers,
    )


async def _open_stores(
    stack: contextlib.AsyncExitStack,
    config: BackupConfig,
    *,
    dry_run: bool = False,
    worker: bool = False,
    answers: list[dict[str, Any]] | None = None,
) -> tuple[S3Client, S3Client]:
    """Both clients, and both buckets checked, or one clear error (the source's when both
    fail). The source bucket is checked while the destination's client is made and its
    bucket checked: one round trip less before the first transfer. A dry run does not check
    a ``--dest-write-only`` destination: its check is an upload, and a dry run writes
    nothing (nor could it list there). The answers to the uploads the destination's check
    started: in ``answers``."""
    source_client = await open_client(
        stack,
        role="source",
        profile=config.source_profile,
        endpoint_url=config.effective_source_endpoint,
        region=config.region,
        max_pool_connections=config.concurrency + 8,
        connect_timeout=config.connect_timeout,
        read_timeout=config.read_timeout,
        request_payer=config.request_payer,
    )

    async def destination() -> tuple[S3Client | None, Exception | None]:
        try:  # a failure here waits for the source's check, whose failure is reported first
            check = not (dry_run and config.dest_write_only)
            opened = await open_job_destination(
                stack, config, check=check, dry_run=dry_run, worker=worker, answers=answers
            )
            return opened, None
        except Exception as exc:
            return None, exc

    try:
        async with asyncio.TaskGroup() as tg:
            timeouts = (config.connect_timeout, config.read_timeout) if config.fast_path else None
            tg.create_task(
                check_bucket(
                    source_client,
                    config.source_bucket,
                    role="source",
                    fast_timeouts=timeouts,
                    prefix=config.source_prefix,
                )
            )
            opening = tg.create_task(destination())
    except BaseExceptionGroup as group:
        raise primary_error(group) from None
    dest_client, failure = opening.result()
    if failure is not None:
        raise failure
    # the endpoints a profile or the environment gave, which the flags did not show
    config.check_not_onto_source(client_endpoint(source_client), client_endpoint(dest_client))
    config.check_direct_endpoints(client_endpoint(source_client), client_endpoint(dest_client))
    return source_client, dest_client


_LISTING_ADVICE = "check the credentials' access to it, the endpoint and the network"


def _listing(
    config: BackupConfig,
    source: S3Source,
    dest_client: S3Client,
    errors: Mapping[str, str],
    left_out: LeftOut,
    stack: contextlib.AsyncExitStack,
    dest_fast: FastS3 | None = None,
) -> AsyncIterator[Sequence[WorkItem]]:
    """What to copy: the source listing, filtered (what is left out counted in
    ``left_out``), and marked against the destination (but for the objects the checkpoint's
    ``errors`` say it stored without ``--sse``: there with the source's size and ETag, they
    are copied again). Both listings start now (``StartedListing``, closed by ``stack``):
    their first pages are on the way while the caller gets ready to read them."""
    # --skip-existing walks both listings side by side: both must come in key order
    streams = 1 if config.skip_existing else config.list_streams
    listing: AsyncIterator[Sequence[WorkItem]] = _started(
        stack,
        listing_or_stop(
            source.list(
                config.source_prefix,
                streams=streams,
                skip_classes=frozenset(config.exclude_storage_classes),
                left_out=left_out.storage_class,
            ),
            f"the source bucket {config.source_bucket!r} under {config.source_prefix!r}",
            _LISTING_ADVICE,
        ),
    )
    key_filter = KeyFilter(config.include, config.exclude)
    if key_filter.active:
        listing = filtered(listing, key_filter, len(config.source_prefix), left_out.filters)
    if config.skip_existing:
        dest = S3Source(dest_client, config.dest_bucket, source.retry)
        dest.fast = dest_fast  # its listing without botocore, as the source's
        src_strip, dst_strip = len(config.source_prefix), len(config.dest_list_prefix)
        dest_listing = _started(
            stack,
            listing_or_stop(
                dest.list(config.dest_list_prefix),
                f"the destination bucket {config.dest_bucket!r} under {config.dest_list_prefix!r}",
                _LISTING_ADVICE,
            ),
        )
        listing = mark_unchanged(
            listing,
            dest_listing,
            lambda key: key[src_strip:],
            lambda key: key[dst_strip:],
            stored_unencrypted(errors),
            opaque=config.sse in OPAQUE_ETAG_SSE,
            stamp=StampReader(dest_client, config.dest_bucket, source.retry).stamp,
            limit=config.concurrency,
        )
    return listing


def _started(
    stack: contextlib.AsyncExitStack, listing: AsyncIterator[Sequence[WorkItem]]
) -> StartedListing:
    started = StartedListing(listing)
    stack.push_async_callback(started.aclose)
    return started


async def run_backup(
    config: BackupConfig | None = None,
    *,
    observer: Observer | None = None,
    stop: asyncio.Event | None = None,
    **options: Any,
) -> BackupReport:
    """Copy everything under ``source_path`` of the source bucket to the destination bucket.

    Pass a ``BackupConfig``, or its fields as keyword arguments named like the CLI flags
    (``source_bucket=..., source_path=..., dest_bucket=..., base_local_path=...``).
    Setting ``stop`` asks the run to finish the objects in flight and return with status
    ``"stopped"``; cancelling the awaiting task stops at once. Either way the checkpoint is
    flushed and valid. Raises an ``AsyncBackupError`` when the run cannot start or go on.
    """
    if config is None:
        config = BackupConfig(**options)
    elif options:
        raise TypeError("pass either a BackupConfig or keyword options, not both")
    started = time.monotonic()
    path = checkpoint_path(
        base_local_path=config.base_local_path,
        source_bucket=config.source_bucket,
        source_path=config.source_path,
        checkpoint_dir=config.checkpoint_dir,
    )
    manager = CheckpointManager(path)
    async with contextlib.AsyncExitStack() as stack:
        stack.callback(manager.close)  # first: a cancelled open_async() leaves a lock to release
        await manager.open_async()
        answers: list[dict[str, Any]] = []  # to the uploads the start-up check started
        source_client, dest_client = await _open_stores(stack, config, answers=answers)
        endpoints = client_endpoint(source_client), client_endpoint(dest_client)
        state, resumed = await in_thread_to_the_end(
            manager.load_or_create,
            source_bucket=config.source_bucket,
            source_path=config.source_path,
            dest_bucket=config.dest_bucket,
            config=_checkpoint_config(config, *endpoints),
            ignore_existing=config.ignore_checkpoints,
            carry=(UPLOADS_SECTION,),
        )
        if resumed:
            _check_filters(state, config, path)
            check_dest_endpoint(path, state.config, endpoints[1])
            await _refuse_emptied_destination(state, config, path, dest_client)
        state.config.update(_checkpoint_config(config, *endpoints))
        if resumed:
            log.info(
                "resuming %s: %d of %d files already done",
                path,
                state.processed_files,
                max(state.total_files, len(state.files)),  # a hand-written one may lack it
            )
            _warn_keys_outside(state, config, path)
        # Multipart uploads a crashed run left behind: aborted before anything else.
        await abort_recorded_uploads(state.extra, dest_client, config)
        source = S3Source(
            source_client,
            config.source_bucket,
            RetryPolicy(config.max_attempts, limiter=AdaptiveLimiter(config.concurrency)),
        )
        if config.fast_path:  # the listing's own connections: the copies do not hold it up
            connections = config.list_streams + PROBES
            source.fast = await _open_fast(
                config, source_client, config.source_bucket, stack, connections
            )
        dest_fast = await _dest_listing_fast(config, dest_client, stack)
        left_out = LeftOut()
        # started now: the listings' round trips overlap the encryption's probe and the
        # copiers' making; nothing is compared or copied before the probe has answered
        listing = _listing(config, source, dest_client, state.errors, left_out, stack, dest_fast)
        pipeline = Pipeline(
            manager=manager,
            state=state,
            concurrency=config.concurrency,
            interval=config.checkpoint_interval,
            max_age=config.checkpoint_max_age,
            observer=observer,
            stop=stop,
            forget_unlisted=True,  # a complete listing is the whole source
        )
        journal = UploadJournal(pipeline)
        share = share_of(config, config.processes)  # this process's share of the copying
        upload_check = _upload_check(config, dest_client)
        opaque = await opaque_dest_etags(config, dest_fast or dest_client, answers)
        process = (
            await _direct_copier(
                share, dest_client, stack, journal, upload_check, opaque_etags=opaque
            )
            if config.direct
            else await _staged_copier(
                share,
                source_client,
                dest_client,
                journal,
                stack,
                part_buffer_bytes=budget_share(config.processes),
                upload_check=upload_check,
                opaque_etags=opaque,
            )
        )
        if config.processes > 1:  # a share of the copying in worker processes
            process = await start_worker_processes(
                stack, config, pipeline, process, opaque_etags=opaque
            )
        await pipeline.run(listing, unless_deleted(process, source))
        if pipeline.result.listing_complete and pipeline.result.listed_files == 0:
            _warn_nothing_listed(config)
        stopped = pipeline.result.stopped
        await last_try_at_uploads(state, manager, dest_client, config, stopped=stopped)
        report = await in_thread_to_the_end(
            conclude,
            manager,
            state,
            pipeline.result,
            on_complete=config.on_complete,
            keep_archives=config.keep_archives,
            resumed=resumed,
            duration=time.monotonic() - started,
        )
        return replace(
            report,
            filtered_files=left_out.filters[0],
            class_excluded_files=left_out.storage_class[0],
        )
    raise AssertionError("unreachable")  # pragma: no cover - the with block always returns


async def opaque_dest_etags(
    config: BackupConfig,
    dest_client: S3Client | FastS3,
    answers: Sequence[Mapping[str, Any]] = (),
) -> bool:
    """Whether the copies' ETags will be no MD5s: SSE-KMS, asked (``--sse``) or, for
    ``--skip-existing`` (which compares ETags, and stamps copies whose ETag cannot be their
    source's: ``stamps.py``), the destination bucket's default encryption, which the answer
    to an upload of the write-check key, started and aborted, names: one of ``answers``
    (the start-up check's, with a storage class), else one started now (through the fast
    path, given: no aiobotocore client made for it). A check that fails is said in one
    warning, and taken for no SSE-KMS."""
    if config.sse is not None or not config.skip_existing:
        return config.sse in OPAQUE_ETAG_SSE
    if answers:
        return answers[-1].get("ServerSideEncryption") in OPAQUE_ETAG_SSE
    probe = functools.partial(
        start_and_abort,
        dest_client,
        config.dest_bucket,
        config.write_check_key,
        _dest_params(config),
        config.max_attempts,
    )
    try:
        answer = await RetryPolicy(config.max_attempts).call(probe)
    except ObjectError as exc:
        log.warning(
            "cannot tell the destination's encryption (an upload of %r, started to ask it: "
            "%s): where the bucket encrypts with SSE-KMS by default, this run's copies carry "
            "no source ETag (--skip-existing) and the next run copies them again; give --sse "
            "aws:kms if it does",
            config.write_check_key,
            exc,
        )
        return False
    return answer.get("ServerSideEncryption") in OPAQUE_ETAG_SSE


def _warn_nothing_listed(config: BackupConfig) -> None:
    """A job of no objects completes, but is most often a mistyped SOURCE_PATH or filter:
    said, so a backup of nothing is not taken for a backup."""
    named = [
        *(["--include/--exclude"] if KeyFilter(config.include, config.exclude).active else []),
        *(["--exclude-storage-class"] if config.exclude_storage_classes else []),
    ]
    filters = f" or {' and '.join(named)}" if named else ""
    pattern = any(c in config.source_path for c in "*?[")
    log.warning(
        "nothing to back up: no object under s3://%s/%s%s; check SOURCE_PATH%s%s",
        config.source_bucket,
        config.source_prefix,
        " that the filters let through" if filters else "",
        filters,
        " (a folder, not a pattern: give the folder above the pattern and --include "
        "'PATTERN' relative to it)"
        if pattern
        else "",
    )


def _upload_check(config: BackupConfig, dest_client: S3Client) -> UploadCheck | None:
    """The check an upload refused (``AccessDenied``) asks, whether the destination refuses
    any upload: not where the start-up check started one already (``--dest-write-only``,
    ``--sse``, a storage class)."""
    if config.dest_write_probe or config.dest_settings_probe:
        return None
    return UploadCheck(
        dest_client,
        config.dest_bucket,
        f"{config.dest_list_prefix}.asyncbackup-write-check",
        _dest_params(config),
        config.max_attempts,
    )


async def _direct_copier(
    config: BackupConfig,
    client: S3Client,
    stack: contextlib.AsyncExitStack,
    journal: UploadJournal,
    upload_check: UploadCheck | None = None,  # None in a worker process
    *,
    opaque_etags: bool = False,
) -> Process:
    copier = ServerSideCopier(
        client,
        source_bucket=config.source_bucket,
        dest_bucket=config.dest_bucket,
        retry=RetryPolicy(
            config.max_attempts,
            limiter=AdaptiveLimiter(config.concurrency * 4),
            side="destination",  # --direct: the one set of credentials
        ),
        dest_key=config.dest_key,
        part_size_for=config.part_size_for,
        part_concurrency=config.part_concurrency,
        extra_params=_dest_params(config),
        copy_tags=config.copy_tags,
        readable=not config.dest_write_only,
        stamp=config.skip_existing,
    )
    copier.opaque_etags = opaque_etags or copier.opaque_etags
    copier.journal = journal
    if config.fast_path:  # CopyObject without botocore; the source bucket is only named in it
        copier.fast = await _open_fast(config, client, config.dest_bucket, stack)
    lister = copier.fast.list_objects_v2 if copier.fast is not None else client.list_objects_v2
    return _retried(kept_key_checked(copier.copy, config, lister), config, upload_check)


async def _staged_copier(
    config: BackupConfig,
    source_client: S3Client,
    dest_client: S3Client,
    journal: UploadJournal,
    stack: contextlib.AsyncExitStack,
    *,
    part_buffer_bytes: int,  # this process's share of the parts held in memory (budget_share)
    prepare: bool = True,  # False in a worker process: the main process prepared staging
    upload_check: UploadCheck | None = None,  # None in a worker process
    opaque_etags: bool = False,  # the destination's ETags are no MD5s (opaque_dest_etags)
) -> Process:
    staging = Staging(config.base_local_path, config.source_bucket)
    stack.callback(staging.close)
    if prepare:
        await asyncio.to_thread(staging.prepare)
    download_limit, upload_limit = _bandwidth(config), _bandwidth(config)
    source = S3Source(
        source_client,
        config.source_bucket,
        RetryPolicy(
            config.max_attempts, limiter=AdaptiveLimiter(config.concurrency), side="source"
        ),
        bandwidth=download_limit,
        copy_tags=config.copy_tags,
    )
    sink = S3Sink(
        dest_client,
        config.dest_bucket,
        RetryPolicy(
            config.max_attempts,
            limiter=AdaptiveLimiter(config.concurrency * 4),
            side="destination",
        ),
        checksum=config.checksum,
        multipart_threshold=config.multipart_threshold,
        part_size_for=config.part_size_for,
        part_concurrency=config.part_concurrency,
        part_budget=ByteBudget(part_buffer_bytes),
        extra_params=_dest_params(config),
        bandwidth=upload_limit,
        readable=not config.dest_write_only,
        stamp=config.skip_existing,
    )
    sink.opaque_etags = opaque_etags or sink.opaque_etags
    sink.journal = journal
    if config.fast_path:
        source.fast, sink.fast = await _fast_paths(config, source_client, dest_client, stack)
    copier = StagedCopier(source, sink, staging, config.dest_key, cleanup=config.cleanup)
    lister = sink.fast.list_objects_v2 if sink.fast is not None else dest_client.list_objects_v2
    return _retried(kept_key_checked(copier.copy_once, config, lister), config, upload_check)


def _retried(copy: Process, config: BackupConfig, upload_check: UploadCheck | None) -> Process:
    """``copy`` with the whole-object retries, outage stop and fatal errors of a run
    (``with_object_retries``)."""
    return functools.partial(
        with_object_retries,
        copy,
        retries=RetryLog(),
        outage=Outage(config.concurrency),
        upload_check=upload_check,
        advice=fatal_advice(config),
    )


async def _fast_paths(
    config: BackupConfig,
    source_client: S3Client,
    dest_client: S3Client,
    stack: contextlib.AsyncExitStack,
) -> tuple[FastS3 | None, FastS3 | None]:
    """The fast data path for small GETs and PUTs (``fasts3``), one per bucket, or None
    for a bucket whose requests need something only botocore does."""
    return (
        await _open_fast(config, source_client, config.source_bucket, stack),
        await _open_fast(config, dest_client, config.dest_bucket, stack),
    )


async def _open_fast(
    config: BackupConfig,
    client: S3Client,
    bucket: str,
    stack: contextlib.AsyncExitStack,
    connections: int | None = None,
) -> FastS3 | None:
    """The fast path to ``bucket``, with ``connections`` at most (the copies' by default)."""
    return await open_fast_s3(
        stack,
        client,
        bucket,
        connections=connections or config.concurrency + 8,
        connect_timeout=config.connect_timeout,
        read_timeout=config.read_timeout,
    )


async def _dest_listing_fast(
    config: BackupConfig, client: S3Client, stack: contextlib.AsyncExitStack
) -> FastS3 | None:
    """The fast path for the destination's listing (``--skip-existing``), on connections of
    its own; None without the flag or the fast path."""
    if not (config.fast_path and config.skip_existing):
        return None
    return await _open_fast(config, client, config.dest_bucket, stack, 1 + PROBES)


class Outage:
    """Counts the objects that failed in a row, after all their retries, because the servers
    or the network failed (``is_outage``); a copied object, or one failed for a reason of its
    own (the server answered about it), starts the count again. At ``threshold`` the run
    stops with a ``FatalRunError``: one line and exit 3, rather than one error per object,
    each after minutes of retries (a million objects at --concurrency 16 took weeks)."""

    def __init__(self, concurrency: int) -> None:
        self.threshold = max(_OUTAGE_OBJECTS, 2 * concurrency)
        self.failures = 0

    def succeeded(self) -> None:
        self.failures = 0

    def failed(self, exc: ObjectError, key: str) -> None:
        if not is_outage(exc):
            self.failures = 0
            return
        self.failures += 1
        if self.failures >= self.threshold:
            raise FatalRunError(
                f"stopping: {self.failures} objects in a row failed after all their retries, "
                f"the last with {exc} (on {key!r}): the servers are refusing or not answering "
                "requests; run again once they answer to resume"
            ) from exc


def unless_deleted(process: Process, source: S3Source) -> Process:
    """``process``, a source object deleted after it was listed (the copy's NoSuchKey, or
    404 from a HEAD of it) raised as ``SourceGone`` once a HEAD of the key confirms it: a
    backup of a live bucket then completes, where every object deleted during the run was
    an error (exit 1) until the next run's listing no longer had it."""

    async def copy(item: WorkItem) -> int:
        try:
            return await process(item)
        except ObjectError as exc:
            if exc.code not in MISSING_CODES or not await source.deleted(item.key):
                raise
            raise SourceGone(item.key) from exc

    return copy


#: what a run stopped by refused credentials or a missing bucket says to check (by side)
_FATAL_ADVICE: Mapping[str, str] = {"": "check the credentials and buckets"}


def fatal_advice(config: BackupConfig) -> dict[str, str]:
    """``_FATAL_ADVICE`` for ``config``'s run, by the side whose request failed: with two
    sets of credentials (two accounts), which of them to check."""
    if config.direct:  # one set of credentials reads the source and writes the destination
        return {
            "": f"check the credentials of --dest-profile (--direct copies with them: they "
            f"read bucket {config.source_bucket!r} and write bucket {config.dest_bucket!r}) "
            "and both buckets"
        }
    return {
        **_FATAL_ADVICE,
        "source": f"check the source's credentials (--source-profile) and bucket "
        f"{config.source_bucket!r}",
        "destination": f"check the destination's credentials (--dest-profile) and bucket "
        f"{config.dest_bucket!r}",
    }


async def with_object_retries(
    copy: Process,
    item: WorkItem,
    *,
    retries: RetryLog | None = None,
    outage: Outage | None = None,
    upload_check: UploadCheck | None = None,
    advice: Mapping[str, str] = _FATAL_ADVICE,
) -> int:
    """Copy ``item``; retry the whole object when a retryable failure (a checksum mismatch,
    a version changed mid-copy) outlived its request-level retries; turn credential and
    bucket failures, and ``outage``'s run of failures, into a ``FatalRunError`` instead of
    one error per object, with ``advice`` (``fatal_advice``). ``retries`` logs the retries
    (a new one: every retry a warning)."""
    retries = retries or RetryLog()
    for attempt in range(1, _OBJECT_ATTEMPTS + 1):
        try:
            size = await copy(item)
        except ObjectError as exc:
            if exc.code == "InvalidStorageClass":  # the flag, not the object: say it once
                raise ConfigError(
                    f"the destination refused --storage-class ({exc}); give a storage class "
                    "it supports, then run again to resume"
                ) from exc
            raise_if_fatal(exc, item.key, advice)
            if upload_check is not None and exc.code in ACCESS_DENIED:
                refusal = await upload_check.refusal()
                if refusal is not None:  # not the object's: every upload is refused
                    raise FatalRunError(
                        f"stopping: {exc} (on {item.key!r}); {refusal}, then run again to resume"
                    ) from exc
            if not worth_another_copy(exc) or attempt == _OBJECT_ATTEMPTS:
                if outage is not None:
                    outage.failed(exc, item.key)
                raise
            retries.retrying(item.key, exc)
        else:
            if outage is not None:
                outage.succeeded()
            return size
    raise AssertionError("unreachable")


def _refused_key(config: BackupConfig, item: WorkItem) -> str | None:
    """Why the run would fail ``item`` before it sends anything (``config.dest_key``: the
    folder marker SOURCE_PATH/ with ``--dest-prefix ''``), or None."""
    try:
        config.dest_key(item.key)
    except ObjectError as exc:
        return str(exc)
    return None


@dataclass(frozen=True, slots=True)
class BackupPlan:
    """What a run would do (``--dry-run``): nothing is written, locked or copied."""

    listed_files: int
    listed_bytes: int
    done_files: int
    unchanged_files: int
    copy_files: int
    copy_bytes: int
    first_keys: list[str]
    checkpoint_path: Path
    checkpoint_exists: bool
    #: objects the listing left out: by --include/--exclude, by --exclude-storage-class
    filtered_files: int = 0
    class_excluded_files: int = 0

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {name: getattr(self, name) for name in self.__slots__}
        out["checkpoint_path"] = str(self.checkpoint_path)
        return out


async def plan_backup(
    config: BackupConfig | None = None, *, sample: int = 20, **options: Any
) -> BackupPlan:
    """List what ``run_backup`` would copy, with the same filters, checkpoint and
    ``skip_existing`` decisions, touching nothing."""
    if config is None:
        config = BackupConfig(**options)
    elif options:
        raise TypeError("pass either a BackupConfig or keyword options, not both")
    path = checkpoint_path(
        base_local_path=config.base_local_path,
        source_bucket=config.source_bucket,
        source_path=config.source_path,
        checkpoint_dir=config.checkpoint_dir,
    )
    files: dict[str, bool] = {}
    errors: dict[str, str] = {}
    exists = path.exists() and not config.ignore_checkpoints
    state: CheckpointState | None = None
    if exists:
        state = await asyncio.to_thread(read_checkpoint, path)
        # What the run would refuse: the checkpoint of another job that maps to this name.
        check_identity(path, state, config.source_bucket, config.source_path, config.dest_bucket)
        _check_filters(state, config, path)
        files, errors = state.files, state.errors
    listed = listed_bytes = done = unchanged = copy = copy_bytes = 0
    first: list[str] = []
    left_out = LeftOut()
    async with contextlib.AsyncExitStack() as stack:
        source_client, dest_client = await _open_stores(stack, config, dry_run=True)
        if state is not None:
            check_dest_endpoint(path, state.config, client_endpoint(dest_client))
            await _refuse_emptied_destination(state, config, path, dest_client)
        source = S3Source(source_client, config.source_bucket, RetryPolicy(config.max_attempts))
        dest_fast = await _dest_listing_fast(config, dest_client, stack)
        listing = _listing(config, source, dest_client, errors, left_out, stack, dest_fast)
        async for page in listing:
            for item in page:
                listed += 1
                listed_bytes += item.size
                if done_before(files, item):
                    done += 1
                elif item.present:
                    unchanged += 1
                elif (refused := _refused_key(config, item)) is not None:
                    log.warning("%s (the run would fail it)", refused)
                else:
                    copy += 1
                    copy_bytes += item.size
                    # the first keys in key order, though split listings come in any order
                    if sample > 0 and (len(first) < sample or item.key < first[-1]):
                        bisect.insort(first, item.key)
                        del first[sample:]
    if not listed:  # what the run would say: a dry run is how a filter is tried out
        _warn_nothing_listed(config)
    return BackupPlan(
        listed_files=listed,
        listed_bytes=listed_bytes,
        done_files=done,
        unchanged_files=unchanged,
        copy_files=copy,
        copy_bytes=copy_bytes,
        first_keys=first,
        checkpoint_path=path,
        checkpoint_exists=exists,
        filtered_files=left_out.filters[0],
        class_excluded_files=left_out.storage_class[0],
    )
