"""Tests written by a mutation audit: each kills a mutant the rest of the suite let live (its
docstring names the mutant), where the mutant would change what a user gets."""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp
import pytest
from botocore.exceptions import ClientError, NoCredentialsError, ParamValidationError

from asyncbackup.checkpoint import CheckpointState, load_checkpoint, read_checkpoint
from asyncbackup.checkpoint_manager import CheckpointManager
from asyncbackup.credprocess import CredentialProcessTimeout
from asyncbackup.errors import CheckpointCorruptError
from asyncbackup.etags import clean_etag, is_md5_etag, multipart_parts
from asyncbackup.journal import Changes, JournalWriter, journal_path
from asyncbackup.retry import NOT_REFRESHED, STILL_EXPIRED, Backoff, classify, is_throttle
from asyncbackup.staging import Staging
from tests.unit.test_checkpoint import SEED_EXAMPLE


def test_an_upper_case_etag_is_still_an_md5_and_a_part_count() -> None:
    """Mutant: ``clean_etag`` without ``.lower()``. Some S3-compatible servers write the hex
    digits of an ETag in upper case: it must still be read as the object's MD5 (a download is
    checked against it; taken for an opaque ETag, a corrupted download would go unchecked) and
    compare equal to our own (lower-case) MD5 of the bytes, or every good copy is refused."""
    upper = '"9E107D9D372BB6826BD81D3542A419D6"'
    assert clean_etag(upper) == "9e107d9d372bb6826bd81d3542a419d6"
    assert is_md5_etag(upper)
    assert multipart_parts('"9E107D9D372BB6826BD81D3542A419D6-3"') == 3


@pytest.mark.parametrize("config", [[], "cleanup", 7, None])
def test_a_config_that_is_no_object_is_a_corrupt_checkpoint(tmp_path: Path, config: object) -> None:
    """Mutants: the check that ``config`` is an object dropped, or a bad one replaced by
    ``{}``. The config records where the copies went (``dest_prefix``, the endpoints): a
    hand edit that broke it must stop the run with the corrupt-checkpoint advice, not be
    forgotten (the resume then checks no endpoint, and verify looks for the copies in the
    wrong place) nor crash the run later on a list's missing ``.get``."""
    data = json.loads(SEED_EXAMPLE)
    data["config"] = config
    path = tmp_path / "bad.checkpoint"
    path.write_text(json.dumps(data))
    with pytest.raises(CheckpointCorruptError, match="'config'"):
        read_checkpoint(path)


async def test_a_garbled_last_line_of_the_journal_is_cut_off_exactly(tmp_path: Path) -> None:
    """Mutant: ``end -= len(torn) + 1`` in ``read_journal`` as ``end -= len(torn)``. A last
    journal line that did not make it whole is left out, and the next run cuts the journal
    back to its complete lines before appending (``JournalWriter.adopt``). One byte off, the
    garbled line's first byte stays and the next line appended is glued to it: a journal
    that no later load can read (a corrupt checkpoint, the done marks lost)."""
    path = tmp_path / "x.checkpoint"
    manager = CheckpointManager(path)
    manager.open()
    state = CheckpointState.new(source_bucket="b", source_path="p", dest_bucket="d", config={})
    state.files = {"k1": False, "k2": False}
    manager.flush(state)
    changes = Changes()
    state.files["k1"] = changes.files["k1"] = True
    await manager.save_async(state, changes)
    manager._writer.shutdown(wait=True)  # a SIGKILL: the files as they are
    manager.journal.close()
    journal = journal_path(path)
    whole = journal.read_bytes()
    journal.write_bytes(whole + b'{"files": {"k2": tr\n')  # a line garbled on its way down
    loaded = load_checkpoint(path)
    assert loaded.journal_batches == 1 and loaded.state.files == {"k1": True, "k2": False}
    assert loaded.journal_valid_bytes == len(whole)
    writer = JournalWriter(journal)
    writer.adopt(loaded.journal_valid_bytes)
    writer.append(b'{"files": {"k2": true}}\n')
    writer.close()
    assert load_checkpoint(path).state.files == {"k1": True, "k2": True}


@pytest.mark.parametrize(
    ("key", "twin"),
    [("a/./b", "a/b"), ("%2E%2E/x", "../x"), ("%2E", "."), ("a/%/b", "a//b"), ("x%5Cy", "x\\y")],
)
def test_keys_a_naive_encoding_would_merge_keep_their_own_staged_bytes(
    tmp_path: Path, key: str, twin: str
) -> None:
    """Mutants: ``.`` dropped from the special segments (pathlib then folds ``a/./b`` into
    ``a/b``), or ``%`` no longer percent-encoded (``%2E%2E`` then spells the encoding of
    ``..``). Two keys staged at one path: the second one's bytes replace the first one's
    staged file, which is uploaded under the first key - a wrong copy, marked done."""
    staging = Staging(tmp_path, "bucket")
    staging.prepare()
    first = staging.store(key, b"bytes of " + key.encode())
    second = staging.store(twin, b"bytes of " + twin.encode())
    assert first != second
    assert first.read_bytes() == b"bytes of " + key.encode()
    assert second.read_bytes() == b"bytes of " + twin.encode()


@pytest.mark.parametrize("length", [255, 256, 260])
def test_a_key_segment_just_past_the_file_name_limit_is_staged(tmp_path: Path, length: int) -> None:
    """Mutant: segments cut only past 260 bytes (``_MAX_SEGMENT_BYTES + 20``) instead of
    240. A file name holds 255 bytes: a key with a 256-260 byte segment (a valid S3 key)
    would fail to stage (ENAMETOOLONG) on every run, never backed up."""
    staging = Staging(tmp_path, "bucket")
    staging.prepare()
    key = "folder/" + "n" * length
    staged = staging.store(key, b"data")
    assert staged.read_bytes() == b"data"
    assert all(len(part.encode()) <= 255 for part in staged.parts)


def _client_error(code: str | None, status: int) -> ClientError:
    error = {"Code": code, "Message": "happened"} if code else {}
    return ClientError(
        {"Error": error, "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject"
    )


@pytest.mark.parametrize(
    ("code", "status"),
    [
        ("Throttling", 400),  # throttling named by its code alone, at a 4xx status
        ("RequestLimitExceeded", 400),
        (None, 429),  # a bare 429 from a proxy or a load balancer: no S3 body, no code
        ("BadDigest", 400),  # a body damaged on the way: sent again, whole
        ("RequestTimeout", 400),  # S3's idle timeout on a slow upload
        ("IncompleteBody", 400),
        ("XAmzContentSHA256Mismatch", 400),
        ("OperationAborted", 409),  # a conflicting operation on the bucket, in progress
    ],
)
def test_failures_another_attempt_mends_are_retried(code: str | None, status: int) -> None:
    """Mutants: a throttle code, a transient code or the bare 429 dropped from what
    ``classify`` retries. Each is a failure of the request, not of the object: not retried,
    the object fails for this run (and a throttled run fails object after object)."""
    assert classify(_client_error(code, status)).retryable


def test_failures_no_other_attempt_mends_are_not_retried() -> None:
    """Mutants: a credential process that timed out (after minutes), or a request botocore
    refuses before sending it (a ``BotoCoreError``: a bad parameter, no region...), taken
    for retryable. Each attempt fails the same way: eight attempts with backoff for every
    object - with a credential process, minutes each - a run that seems hung."""
    timeout = CredentialProcessTimeout(provider="custom-process", seconds=60)
    assert not classify(timeout).retryable
    assert not classify(ParamValidationError(report="Invalid bucket name")).retryable


def test_a_server_asking_for_an_hour_s_pause_is_not_obeyed_whole() -> None:
    """Mutant: ``Backoff.delay`` taking a ``Retry-After`` hint as it is, uncapped. A
    server (or a proxy) answering ``Retry-After: 3600`` would hold the object's worker an
    hour per attempt; the wait stays within three times the cap."""
    backoff = Backoff(cap=20.0)
    assert backoff.delay(1, hint=3600.0) <= 60.0
    assert backoff.delay(1, hint=30.0) >= 30.0  # a hint within it is honoured


def test_a_refused_refresh_of_the_credentials_is_the_runs_not_an_objects() -> None:
    """Mutant: ``classify`` without its branch for the credential operations. STS refusing
    the ``AssumeRole`` that refreshes a profile's credentials is the credentials' failure:
    retried like a request, then the run stops (``raise_if_fatal``). Taken for the S3
    request's own ``AccessDenied``, every object left fails one by one, no retry."""
    refused = ClientError(
        {"Error": {"Code": "AccessDenied", "Message": "not allowed"}}, "AssumeRole"
    )
    error = classify(refused)
    assert error.code == NOT_REFRESHED and error.retryable
    assert "AssumeRole" in error.message


def test_a_bare_503_is_throttling_for_the_concurrency_limit() -> None:
    """Mutant: ``is_throttle`` without the 503 status. S3 answers a throttled HEAD 503 with
    no body, hence no ``SlowDown`` code: the adaptive limit must still halve, or the run
    keeps every worker hammering a prefix S3 asks it to slow down on."""
    assert is_throttle(_client_error(None, 503))


def test_credentials_that_are_not_there_or_expired_on_arrival_are_named() -> None:
    """Mutants: no credentials taken for retryable (eight attempts an object, each failing
    the same way), and botocore's bare RuntimeError for credentials refreshed but expired
    already no longer recognised (it escaped ``classify``: the run ended on an unexpected
    error instead of stopping on credentials that cannot be refreshed, with its advice)."""
    assert not classify(NoCredentialsError()).retryable
    expired = classify(RuntimeError(f"{STILL_EXPIRED}."))
    assert expired.code == NOT_REFRESHED and "clock" in expired.message


def test_an_aiohttp_failure_mid_body_is_retried() -> None:
    """Mutant: ``_aiohttp_error`` answering False. aiobotocore's and GitHub's client raise
    aiohttp's own errors - a body cut short mid-download (``ClientPayloadError``), a
    connection dropped: worth another attempt; unrecognised, they escaped ``classify``
    (re-raised as they are), never retried."""
    for exc in (
        aiohttp.ClientPayloadError("Response payload is not completed"),
        aiohttp.ServerDisconnectedError(),
    ):
        assert classify(exc).retryable
