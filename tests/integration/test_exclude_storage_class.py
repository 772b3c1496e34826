"""``--exclude-storage-class CLASS``: objects a lifecycle rule moved to GLACIER or DEEP_ARCHIVE
cannot be read until restored (InvalidObjectState): each was an error at every run, and a job
with one never completed. Left out by the storage class the listing gives, they are neither
read nor errors; a checkpoint whose run failed on them completes when resumed with the flag."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from asyncbackup.checkpoint import read_checkpoint
from tests.conftest import Buckets, S3Server
from tests.helpers import cli_args
from tests.reliability import checkpoint_file, listing, run_cli

ARCHIVED = {"p/cold/a": "GLACIER", "p/cold/b": "GLACIER", "p/deep": "DEEP_ARCHIVE"}
WARM = {"p/w0": "STANDARD", "p/w1": "STANDARD_IA", "p/w2": "GLACIER_IR"}


def fill(s3: Any, buckets: Buckets) -> None:
    for key, storage_class in {**ARCHIVED, **WARM}.items():
        s3.put_object(
            Bucket=buckets.source, Key=key, Body=key.encode() * 10, StorageClass=storage_class
        )


@pytest.mark.parametrize("mode", [(), ("--no-fast-path",), ("--direct",)])
def test_archived_classes_fail_the_run_and_the_resume_that_leaves_them_out_completes(
    s3_server: S3Server, s3: Any, buckets: Buckets, tmp_path: Path, mode: tuple[str, ...]
) -> None:
    fill(s3, buckets)
    args = ["p", *cli_args(s3_server.endpoint, tmp_path, buckets.source, buckets.dest), *mode]
    first = run_cli(args)
    assert first.returncode == 1, first.stderr
    state = read_checkpoint(checkpoint_file(tmp_path, buckets.source, "p"))
    assert sorted(state.errors) == sorted(ARCHIVED), state.errors

    resumed = run_cli(
        [*args, "--exclude-storage-class", "glacier", "--exclude-storage-class", "DEEP_ARCHIVE"]
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "3 of 3 files done" in resumed.stderr, resumed.stderr
    assert "left out 3 objects" in resumed.stderr and "GLACIER" in resumed.stderr
    assert sorted(listing(s3, buckets.dest)) == sorted(WARM)
    (archived,) = (tmp_path / "checkpoints" / "archive").iterdir()
    done = read_checkpoint(archived)
    assert sorted(done.files) == sorted(WARM) and not done.errors
    assert done.config["exclude_storage_classes"] == ["DEEP_ARCHIVE", "GLACIER"]


def test_dry_run_leaves_them_out_too(
    s3_server: S3Server, s3: Any, buckets: Buckets, tmp_path: Path
) -> None:
    fill(s3, buckets)
    args = ["p", *cli_args(s3_server.endpoint, tmp_path, buckets.source, buckets.dest)]
    planned = run_cli([*args, "--dry-run", "--exclude-storage-class", "GLACIER"])
    assert planned.returncode == 0, planned.stderr
    assert planned.stdout.startswith("dry run: would copy 4 files"), planned.stdout
    assert "p/cold/" not in planned.stdout


@pytest.mark.parametrize("value", ["", "GLACIER DEEP", "glacier,deep"])
def test_a_storage_class_that_is_no_name_is_refused(tmp_path: Path, value: str) -> None:
    args = cli_args("http://127.0.0.1:9", tmp_path, "a", "b")
    done = run_cli(["p", *args, "--exclude-storage-class", value])
    assert done.returncode == 2, done.stderr
    assert "--exclude-storage-class" in done.stderr, done.stderr
    assert len([line for line in done.stderr.splitlines() if line.strip()]) == 1


def test_a_job_whose_objects_are_all_left_out_says_which_flag(
    s3_server: S3Server, s3: Any, buckets: Buckets, tmp_path: Path
) -> None:
    for key in ARCHIVED:
        s3.put_object(Bucket=buckets.source, Key=key, Body=b"x", StorageClass="GLACIER")
    args = ["p", *cli_args(s3_server.endpoint, tmp_path, buckets.source, buckets.dest)]
    done = run_cli([*args, "--exclude-storage-class", "GLACIER"])
    assert done.returncode == 0, done.stderr
    assert "nothing to back up" in done.stderr, done.stderr
    assert "check SOURCE_PATH or --exclude-storage-class" in done.stderr, done.stderr
