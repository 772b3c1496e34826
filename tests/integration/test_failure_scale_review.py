"""Failure at scale: what a run prints and records when many objects fail or are left over.

Scaled-down sizes; each test asserts the shape of the output (a bounded number of lines),
which a per-object line would break at any size.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from asyncbackup import run_github_backup
from tests.conftest import Buckets, S3Server
from tests.github_server import FakeRepo
from tests.helpers import cli_args, load_json, numbered_objects, run_cli
from tests.integration.github_org import config, running_org
from tests.proxy import Rule, S3Proxy
from tests.reliability import put_parallel


def _seed_checkpoint(
    path: Path,
    source: str,
    dest: str,
    errors: dict[str, str],
    files: dict[str, bool] | None = None,
    **sections: Any,
) -> None:
    """A checkpoint of job ``job`` written by hand: its ``files`` (by default the failed ones,
    all in ``errors``) and other top-level ``sections``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    files = dict.fromkeys(errors, False) if files is None else files
    document = {
        "backup_id": "hand-written",
        "source_bucket": source,
        "source_path": "job",
        "dest_bucket": dest,
        "start_time": "2024-04-06T12:00:00",
        "last_update": "2024-04-06T13:15:30",
        "total_files": len(files),
        "processed_files": 0,
        "total_bytes": 0,
        "processed_bytes": 0,
        "files": files,
        "errors": errors,
        "config": {},
        **sections,
    }
    path.write_text(json.dumps(document))


def test_many_stale_errors_are_dropped_in_one_line_not_one_per_key(
    s3_server: S3Server, s3: Any, buckets: Buckets, tmp_path: Path
) -> None:
    # 400 objects failed at an earlier run, then their folder was deleted from the source: a
    # resume drops their errors. It said so once per key (30,000 failed files, 30,000 lines).
    s3.put_object(Bucket=buckets.source, Key="job/kept", Body=b"k")
    errors = {f"job/gone/{i:04d}": "AccessDenied: Access Denied" for i in range(400)}
    checkpoint = tmp_path / "checkpoints" / f"{buckets.source}_job.checkpoint"
    _seed_checkpoint(checkpoint, buckets.source, buckets.dest, errors)
    args = ["job", *cli_args(s3_server.endpoint, tmp_path, buckets.source, buckets.dest)]
    result = run_cli(args)
    assert result.returncode == 0, result.stderr
    stale = [line for line in result.stderr.splitlines() if "stale error" in line]
    assert len(stale) == 1, stale[:5]
    assert "400" in stale[0] and "job/gone/" in stale[0]
    assert len(result.stderr.splitlines()) < 20, result.stderr[:2000]
    archived = next((tmp_path / "checkpoints" / "archive").iterdir())
    assert load_json(archived)["errors"] == {}


def test_a_source_failing_every_object_logs_a_few_retries_not_two_per_object(
    proxy: S3Proxy, s3: Any, buckets: Buckets, tmp_path: Path
) -> None:
    # A source whose every GET body arrives corrupted (a bad middlebox): each object is tried
    # three times, and each whole-object retry was a warning - 2 lines an object, 60,000 for
    # 30,000. (Not an outage of 5xx answers, which stops the run: test_throttling_review.)
    put_parallel(s3, buckets.source, numbered_objects(60))
    proxy.add_rule(Rule("corrupt", method="GET", path=r"/data/"))
    args = ["data", *cli_args(proxy.endpoint, tmp_path, buckets.source, buckets.dest)]
    result = run_cli([*args, "--max-attempts", "1", "--concurrency", "4"])
    assert result.returncode == 1, result.stderr
    lines = result.stderr.splitlines()
    retried = [line for line in lines if " retrying " in line]
    assert 1 <= len(retried) <= 10, len(retried)
    assert any("--debug" in line for line in lines), result.stderr[-2000:]
    assert "errors by code: IntegrityError 60" in result.stderr
    assert len(lines) < 40, result.stderr[:3000]


async def test_github_failing_every_artifact_logs_a_few_retries_not_two_per_artifact(
    tmp_path: Path,
    s3_server: S3Server,
    buckets: Buckets,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # GitHub answering 500 for 30 repositories (an outage): each artifact is tried three
    # times, and each retry was a warning - two lines an artifact, tens of thousands for an
    # organisation of thousands of repositories.
    async with running_org(tmp_path / "git") as github:
        for i in range(30):
            github.add_repo(FakeRepo(f"down-{i:02d}", has_wiki=False, status=500))
        clock = github.clock
        options = config(github, s3_server.endpoint, buckets.dest, tmp_path / "work")
        options["include"] = ("down-*",)
        with caplog.at_level(logging.INFO, logger="asyncbackup"):
            report = await run_github_backup(clock=clock, sleep=clock.sleep, **options)
    assert report.status == "completed_with_errors"
    assert len(report.errors) >= 30
    retried = [r for r in caplog.records if r.getMessage().startswith("retrying ")]
    assert 1 <= len(retried) <= 10, len(retried)


def test_the_uploads_a_crash_left_are_aborted_several_at_a_time(
    s3: Any, buckets: Buckets, tmp_path: Path, proxy: S3Proxy
) -> None:
    """A crash at --concurrency 256 leaves up to 256 recorded uploads, and the next run
    aborted them one after another (the abort, then a listing of the key's uploads): about
    15 s of start-up against a store 30 ms away. Several at a time now; all aborted, none kept."""
    s3.put_object(Bucket=buckets.source, Key="job/x", Body=b"1")
    uploads = {
        f"job/big-{i:02d}": s3.create_multipart_upload(Bucket=buckets.dest, Key=f"job/big-{i:02d}")[
            "UploadId"
        ]
        for i in range(24)
    }
    checkpoint = tmp_path / "checkpoints" / f"{buckets.source}_job.checkpoint"
    _seed_checkpoint(
        checkpoint,
        buckets.source,
        buckets.dest,
        errors={},
        files={"job/x": False},
        multipart_uploads=uploads,
    )
    proxy.latency = 0.05
    args = ["job", *cli_args(proxy.endpoint, tmp_path, buckets.source, buckets.dest)]
    done = run_cli([*args, "--quiet"])
    assert done.returncode == 0, done.stderr
    assert not s3.list_multipart_uploads(Bucket=buckets.dest).get("Uploads")
    aborts = [r for r in proxy.requests if r.method == "DELETE" and "uploadId" in r.query]
    assert len(aborts) == len(uploads)
    overlapping = sum(
        1 for a in aborts for b in aborts if a is not b and a.started < b.started < a.finished
    )
    assert overlapping >= len(uploads), overlapping  # not one after another
