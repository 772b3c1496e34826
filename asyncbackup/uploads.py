"""Multipart uploads a crash leaves behind: recorded in the checkpoint, aborted on the next run.

A multipart upload that is neither completed nor aborted keeps its parts (and their cost) at
the destination for ever. The sink records each one in the checkpoint's ``multipart_uploads``
section, keyed by destination key, *before* it can be lost:

- ``""`` (durably, before CreateMultipartUpload is sent): an upload of this key may exist;
- the upload id (durably, as soon as it is known);
- nothing once the upload is completed or aborted.

At the start of the next run ``abort_recorded_uploads()`` aborts every upload of a recorded key
(the recorded id, and whatever ListMultipartUploads shows for exactly that key, which covers a
CreateMultipartUpload whose answer was lost), so nothing leaks, a SIGKILL included.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import shlex
from collections.abc import AsyncIterator, Awaitable
from typing import Any, Protocol

from botocore.exceptions import ClientError

from .checkpoint import CheckpointState
from .checkpoint_manager import CheckpointManager
from .errors import ObjectError
from .loglimit import FirstFew
from .pipeline import for_each_bounded
from .retry import ACCESS_DENIED, RetryPolicy, error_code
from .s3client import S3Client, upload_id_of

log = logging.getLogger("asyncbackup")

SECTION = "multipart_uploads"
PENDING = ""
_GONE = ("NoSuchUpload", "404")
#: recorded uploads aborted at once at the start (and end) of a run
_ABORTS_AT_ONCE = 16
#: how long cleaning up after a failed (or cancelled) upload may take
ABORT_TIMEOUT = 10.0


class Notes(Protocol):
    """What the journal needs of the pipeline: its checkpoint notes."""

    def note(self, section: str, key: str, value: Any) -> None: ...

    async def note_durably(self, section: str, key: str, value: Any) -> None: ...


class UploadJournal:
    """The sink's record of multipart uploads in flight, kept in the checkpoint."""

    def __init__(self, notes: Notes) -> None:
        self.notes = notes
        #: keys that may have an upload not aborted (its abort failed or was cut short, or
        #: its create was, its id unknown): still recorded, and a later upload of the same
        #: key must not let the checkpoint forget them
        self.unaborted: set[str] = set()
        #: failed aborts, said for the first few: a run stopping on credentials or an
        #: outage has one per upload in flight, a run of failing objects one per object
        self.abort_failures = FirstFew(
            logging.WARNING,
            "more multipart uploads could not be aborted (logged at debug level): each "
            "stays recorded in the checkpoint, and the next run of the job aborts it",
            shown=3,
        )

    async def starting(self, key: str) -> None:
        await self.notes.note_durably(SECTION, key, PENDING)

    async def started(self, key: str, upload_id: str) -> None:
        await self.notes.note_durably(SECTION, key, upload_id)

    def finished(self, key: str) -> None:
        self.notes.note(SECTION, key, None)


async def run_to_completion(awaitable: Awaitable[None], limit: float) -> None:
    """Finish ``awaitable`` even if the caller is cancelled meanwhile (bounded by ``limit``).
    Its outcome is dropped, a timeout included: the caller's own failure (or cancellation)
    is what goes on. (``await shield(task)`` raised the task's ``TimeoutError``, an
    ``OSError``, which replaced a cancellation and was taken for a local I/O failure.)"""
    task = asyncio.ensure_future(asyncio.wait_for(awaitable, limit))
    while not task.done():
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait({task})  # returns once it is done, raises nothing of it
    with contextlib.suppress(Exception, asyncio.CancelledError):
        task.result()


async def settle(future: asyncio.Future[Any], limit: float) -> None:
    """Wait up to ``limit`` seconds for ``future``, even if the caller is cancelled again."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while not future.done() and (remaining := deadline - loop.time()) > 0:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait({future}, timeout=remaining)


@contextlib.asynccontextmanager
async def tracked_upload(
    client: S3Client,
    retry: RetryPolicy,
    journal: UploadJournal | None,
    create: dict[str, Any],
    *,
    what: str = "multipart upload",
) -> AsyncIterator[str]:
    """A multipart upload (CreateMultipartUpload with ``create``), its id for the block.

    The upload is recorded in ``journal`` before it can exist and once its id is known. The
    block failing (or cancelled) aborts it; the block done lets the checkpoint forget it.
    When more than one create was sent, or the only one was cut short (its connection lost,
    or cancelled and not answered within ``ABORT_TIMEOUT``), an earlier one may have made an
    upload whose answer was lost: every other upload of the key is then aborted too (kept
    recorded until then). A create cancelled on its way is waited for: the upload it made is
    aborted by its id.
    ``what`` names it in warnings.
    """
    bucket, key = create["Bucket"], create["Key"]
    creates = 0
    unanswered = False  # a create was cut short (cancelled, connection lost): made or not?
    late: str | None = None  # the upload a create made, answered after a cancellation

    async def create_upload() -> dict[str, Any]:
        nonlocal creates, unanswered, late
        creates += 1
        unanswered = True
        request = asyncio.ensure_future(client.create_multipart_upload(**create))
        try:
            result: dict[str, Any] = await asyncio.shield(request)
        except ClientError:  # the server's answer: no upload was made
            unanswered = False
            raise
        except asyncio.CancelledError:
            # Cancelled while the create is on its way: the server may be making the upload.
            # Its answer is awaited (bounded) so that the upload is aborted by its id now,
            # not left at the destination until a next run of the job, which may never come.
            await settle(request, ABORT_TIMEOUT)
            if not request.done():
                request.cancel()
            elif not request.cancelled():
                error = request.exception()
                if error is None:  # an answer without its id leaves it unanswered
                    with contextlib.suppress(ObjectError):
                        late, unanswered = upload_id_of(request.result()), False
                elif isinstance(error, ClientError):
                    unanswered = False
            raise
        # Without its id: tried again, the key swept once the upload is done
        # (``others_may_exist``).
        upload_id_of(result)
        unanswered = False
        return result

    async def forget_after(cleanup: Awaitable[Any], uploads: str) -> None:
        """Once ``cleanup`` (an abort) is done, the checkpoint forgets the key's uploads."""
        if journal is not None:  # until the abort is known to be done (not cancelled)
            journal.unaborted.add(key)
        try:
            await cleanup
        except Exception as exc:  # still recorded in the checkpoint: the next run aborts it
            level = logging.WARNING if journal is None else journal.abort_failures.level()
            log.log(level, "could not abort %s of %s: %s", uploads, key, exc)
            return
        if journal is not None:
            journal.unaborted.discard(key)
            journal.finished(key)

    def others_may_exist() -> bool:
        """Whether other uploads of the key may exist: an earlier create whose answer was
        lost, or an earlier upload of the key not aborted (this upload's record replaced its
        record, so only a sweep of the key still finds it)."""
        return creates > 1 or (journal is not None and key in journal.unaborted)

    def abort(upload_id: str) -> Awaitable[None]:
        return forget_after(abort_upload(client, bucket, key, upload_id), f"{what} {upload_id}")

    def sweep(keep: str | None) -> Awaitable[None]:
        return forget_after(sweep_key(client, bucket, key, retry, keep), f"stray {what}s")

    if journal is not None:  # durable before the upload can exist
        await journal.starting(key)
    try:
        upload = await retry.call(create_upload)
    except BaseException:
        # An earlier attempt, or this one cut short (the block's failure cancelling it while
        # the request was on its way), may have created one whose answer was lost. With a
        # journal the key stays recorded and marked: the next upload of the key sweeps it
        # once done, or the next run does (a sweep now could list the key before the server
        # has made the upload). Without one, the key is swept now.
        if creates > 1 or (unanswered and journal is None):
            await run_to_completion(sweep(None), ABORT_TIMEOUT)
        elif late is not None:
            await run_to_completion(abort(late), ABORT_TIMEOUT)
        elif journal is not None and unanswered:
            journal.unaborted.add(key)
        raise
    upload_id: str = upload["UploadId"]
    try:
        if journal is not None:
            await journal.started(key, upload_id)
        yield upload_id
    except BaseException:
        cleanup = sweep(None) if others_may_exist() else abort(upload_id)
        await run_to_completion(cleanup, ABORT_TIMEOUT)
        raise
    if others_may_exist():
        await run_to_completion(sweep(upload_id), ABORT_TIMEOUT)
    elif journal is not None:
        journal.finished(key)


async def abort_upload(client: S3Client, bucket: str, key: str, upload_id: str) -> None:
    """Abort one upload; one that is already gone counts as aborted."""
    try:
        await client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
    except ClientError as exc:
        if error_code(exc) not in _GONE:
            raise


async def uploads_of_key(client: S3Client, bucket: str, key: str, retry: RetryPolicy) -> list[str]:
    """Ids of the multipart uploads in progress for exactly ``key``."""
    ids: list[str] = []
    params: dict[str, Any] = {"Bucket": bucket, "Prefix": key}
    while True:
        page: dict[str, Any] = await retry.call(
            functools.partial(client.list_multipart_uploads, **params)
        )
        ids.extend(u["UploadId"] for u in page.get("Uploads", ()) if u.get("Key") == key)
        if not page.get("IsTruncated"):
            return ids
        params["KeyMarker"] = page.get("NextKeyMarker", "")
        params["UploadIdMarker"] = page.get("NextUploadIdMarker", "")


async def sweep_key(
    client: S3Client, bucket: str, key: str, retry: RetryPolicy, keep: str | None = None
) -> int:
    """Abort every upload in progress for ``key`` but ``keep``; return how many were aborted."""
    aborted = 0
    for upload_id in await uploads_of_key(client, bucket, key, retry):
        if upload_id != keep:
            await retry.call(functools.partial(abort_upload, client, bucket, key, upload_id))
            aborted += 1
    return aborted


class Destination(Protocol):
    """What aborting recorded uploads needs of a run's settings (S3 or GitHub)."""

    @property
    def dest_bucket(self) -> str: ...

    @property
    def max_attempts(self) -> int: ...


async def abort_recorded_uploads(
    extra: dict[str, Any], client: S3Client, config: Destination, *, last_try: bool = False
) -> None:
    """Abort the uploads recorded in the checkpoint's sections ``extra`` (by a crashed run,
    or by an abort that failed); those that could not be aborted stay recorded.

    A run tries at its start and, for what is still recorded, once more at its end
    (``last_try``): a run that completes archives its checkpoint, and no later run would
    see the record. What outlives the last try is logged with the command that aborts it.
    """
    if not extra.get(SECTION):
        return
    bucket, retry = config.dest_bucket, RetryPolicy(config.max_attempts)
    kept: dict[str, Any] = {}
    failures = FirstFew(
        logging.WARNING,
        "more multipart uploads left behind could not be aborted (logged at debug level); "
        f"aws s3api list-multipart-uploads --bucket {bucket} lists them all",
    )

    async def abort(record: tuple[str, Any]) -> None:
        key, upload_id = record
        try:
            by_id = isinstance(upload_id, str) and bool(upload_id)
            if by_id:
                await retry.call(functools.partial(abort_upload, client, bucket, key, upload_id))
            aborted = await _sweep_if_allowed(client, bucket, key, retry, aborted_by_id=by_id)
        except ObjectError as exc:
            kept[key] = upload_id
            _not_aborted(key, exc, bucket, last_try=last_try, level=failures.level())
            return
        log.info(
            "aborted the multipart upload of %s left behind (%s, %d more found)",
            key,
            upload_id or "id not recorded",
            aborted,
        )

    # a crash at --concurrency N leaves up to N
    await for_each_bounded(list(extra[SECTION].items()), _ABORTS_AT_ONCE, abort)
    if kept:
        extra[SECTION] = kept
    else:
        del extra[SECTION]


def _not_aborted(key: str, exc: ObjectError, bucket: str, *, last_try: bool, level: int) -> None:
    if not last_try:
        log.log(
            level,
            "could not abort the multipart upload of %s left behind (%s); will try again at "
            "the end of this run",
            key,
            exc,
        )
        return
    log.log(
        level,
        "could not abort the multipart upload of %s left behind (%s); abort it by hand: "
        "aws s3api list-multipart-uploads --bucket %s --prefix %s, then "
        "aws s3api abort-multipart-upload --bucket %s --key %s --upload-id ID",
        key,
        exc,
        bucket,
        shlex.quote(key),
        bucket,
        shlex.quote(key),
    )


async def _sweep_if_allowed(
    client: S3Client, bucket: str, key: str, retry: RetryPolicy, *, aborted_by_id: bool
) -> int:
    """``sweep_key`` after the recorded upload was aborted by its id: credentials that may
    abort but not list uploads (``--dest-write-only``) are refused the sweep, which then
    finds nothing; the record is done with. Without an id, the sweep is the abort."""
    try:
        return await sweep_key(client, bucket, key, retry)
    except ObjectError as exc:
        if not aborted_by_id or exc.code not in ACCESS_DENIED:
            raise
        log.debug("could not look for other uploads of %s (%s)", key, exc)
        return 0


async def last_try_at_uploads(
    state: CheckpointState,
    manager: CheckpointManager,
    client: S3Client,
    config: Destination,
    *,
    stopped: bool,
) -> None:
    """At the end of a run that was not stopped: ``abort_recorded_uploads`` once more for
    what its start (or a failed abort during the run) left recorded, then the checkpoint
    written with what is left."""
    if stopped or not state.extra.get(SECTION):
        return
    await abort_recorded_uploads(state.extra, client, config, last_try=True)
    await asyncio.to_thread(manager.flush, state)
