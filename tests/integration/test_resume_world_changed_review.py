"""Review: a resume after the world changed between the stopped run and the next one.

Backups of large buckets are stopped (SIGKILL, Ctrl-C, a crash) and resumed hours or days
later: meanwhile a lifecycle rule aborted the upload left in progress, the source object was
replaced, someone tidied the staging folder, deleted copies at the destination, emptied the
destination bucket, moved the staging folder, added and removed thousands of source objects,
or the clock went back. Every resume ends with the destination identical to the source, or
with one line, a non-zero exit and a checkpoint that loads and marks done only what is at the
destination.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest

from asyncbackup.checkpoint import CheckpointState
from tests.conftest import Buckets
from tests.helpers import cli_args, list_keys, put_multipart
from tests.proxy import Rule, S3Proxy
from tests.reliability import (
    checkpoint_file,
    kill,
    read_valid,
    run_cli,
    start_cli,
    wait_for,
)

MiB = 1024 * 1024
MULTIPART = ("--multipart-threshold", "5MiB", "--part-size", "5MiB")


def _uploads(s3: Any, bucket: str) -> list[dict[str, Any]]:
    uploads: list[dict[str, Any]] = s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    return uploads


def _kill_after_two_parts(proxy: S3Proxy, args: list[str], path: Path, key: str) -> CheckpointState:
    """Run the CLI and SIGKILL it once two parts of ``key`` are at the destination and its
    third crawls: the upload is left in progress, recorded in the checkpoint."""
    proxy.add_rule(Rule("latency", method="PUT", query="partNumber=3", delay=5))
    process = start_cli(args)
    try:
        wait_for(
            lambda: (
                len(
                    [
                        r
                        for r in proxy.seen(method="PUT", path=f"/{key}$")
                        if "partNumber" in r.query and r.status == 200
                    ]
                )
                >= 2
            ),
            timeout=60,
        )
        wait_for(lambda: path.exists() and bool(_recorded_upload(read_valid(path), key)))
    finally:
        kill(process, signal.SIGKILL)
        process.communicate(timeout=30)
    proxy.clear_faults()
    return read_valid(path)


def _same_bytes(s3: Any, buckets: Buckets) -> int:
    """The destination holds exactly the source's keys, each with the source's bytes."""
    keys = list_keys(s3, buckets.source)
    assert list_keys(s3, buckets.dest) == keys
    for key in keys:
        source = s3.get_object(Bucket=buckets.source, Key=key)["Body"].read()
        assert s3.get_object(Bucket=buckets.dest, Key=key)["Body"].read() == source, key
    return len(keys)


def _recorded_upload(state: CheckpointState, key: str) -> str:
    return str(state.extra.get("multipart_uploads", {}).get(key) or "")


@pytest.mark.parametrize(
    "change", ["aborted", "aborted_and_replaced_same_size", "replaced_other_size"]
)
def test_an_upload_left_in_progress_then_changed_meanwhile_is_started_again(
    proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path, change: str
) -> None:
    """Killed with two parts of ``m/big`` uploaded. Meanwhile a lifecycle rule
    (AbortIncompleteMultipartUpload) aborts the upload, and/or the source object is replaced.
    The resume aborts what is left (NoSuchUpload counts as gone), copies the object again from
    the start: one version, the source's current one, ETag checked; nothing left in progress."""
    old = os.urandom(11 * MiB)
    s3.put_object(Bucket=buckets.source, Key="m/big", Body=old)
    s3.put_object(Bucket=buckets.source, Key="m/small", Body=b"s" * 100)
    args = ["m", *cli_args(proxy.endpoint, tmp_path, buckets.source, buckets.dest, "--quiet")]
    args += [*MULTIPART, "--concurrency", "1"]
    path = checkpoint_file(tmp_path, buckets.source, "m")
    state = _kill_after_two_parts(proxy, args, path, "m/big")
    upload_id = _recorded_upload(state, "m/big")
    assert [u["UploadId"] for u in _uploads(s3, buckets.dest)] == [upload_id]
    new = old
    if change.startswith("aborted"):
        s3.abort_multipart_upload(Bucket=buckets.dest, Key="m/big", UploadId=upload_id)
    if "replaced" in change:
        size = 11 * MiB if change.endswith("same_size") else 13 * MiB + 7
        new = os.urandom(size)
        s3.put_object(Bucket=buckets.source, Key="m/big", Body=new)
    resumed = run_cli(args)
    assert resumed.returncode == 0, resumed.stderr
    assert _same_bytes(s3, buckets) == 2
    assert s3.get_object(Bucket=buckets.dest, Key="m/big")["Body"].read() == new
    assert _uploads(s3, buckets.dest) == []


def _abort_every_upload(s3: Any, bucket: str) -> None:
    for upload in _uploads(s3, bucket):
        s3.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])


@pytest.mark.parametrize(
    "step", ["part", "complete", "direct_part"], ids=["part", "complete", "direct-part"]
)
def test_an_upload_aborted_by_a_lifecycle_rule_during_the_run_is_started_again(
    proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path, step: str
) -> None:
    """A lifecycle rule aborts the upload while the run is sending it: the next UploadPart
    (UploadPartCopy with --direct) or the CompleteMultipartUpload is answered NoSuchUpload, as
    S3 answers it (moto answers 500). No request of that upload can succeed any more, but the
    object can, with a new upload: it was recorded as a NoSuchUpload error (exit 1), left for
    the next run, which may be a day later."""
    args = ["m", *cli_args(proxy.endpoint, tmp_path, buckets.source, buckets.dest, "--quiet")]
    args += [*MULTIPART, "--concurrency", "1"]
    if step == "direct_part":
        put_multipart(s3, buckets.source, "m/big", [5 * MiB, 5 * MiB, MiB])
        args.append("--direct")
    else:
        s3.put_object(Bucket=buckets.source, Key="m/big", Body=os.urandom(11 * MiB))
    rule = proxy.add_rule(
        Rule(
            "no_such_upload",
            method="POST" if step == "complete" else "PUT",
            path="/m/big$",
            query="uploadId=" if step == "complete" else "partNumber=2",
            times=1,
            action=lambda: _abort_every_upload(s3, buckets.dest),
        )
    )
    done = run_cli(args)
    assert done.returncode == 0, done.stderr
    assert rule.hits == 1
    assert "retrying m/big after NoSuchUpload" in done.stderr
    assert _same_bytes(s3, buckets) == 1
    assert _uploads(s3, buckets.dest) == []
