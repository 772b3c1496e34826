"""Review of what the end of a run tells a monitor (``--report``, the summary): a run that
copied nothing because its filters let nothing through must not read as one whose prefix
is empty."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Buckets, S3Server
from tests.helpers import cli_args, load_json, run_cli

OBJECTS = {
    "p/a.csv": "STANDARD",
    "p/b.csv": "STANDARD",
    "p/c.txt": "STANDARD",
    "p/cold/d.csv": "GLACIER",
    "p/cold/e.txt": "GLACIER",
}


def _fill(s3: Any, bucket: str) -> None:
    for key, storage_class in OBJECTS.items():
        s3.put_object(Bucket=bucket, Key=key, Body=key.encode() * 3, StorageClass=storage_class)


@pytest.mark.parametrize("mode", [(), ("--processes", "2"), ("--direct",)])
def test_the_report_counts_the_objects_the_filters_and_storage_classes_left_out(
    s3_server: S3Server, s3: Any, buckets: Buckets, tmp_path: Path, mode: tuple[str, ...]
) -> None:
    _fill(s3, buckets.source)
    report = tmp_path / "report.json"
    common = [*cli_args(s3_server.endpoint, tmp_path, buckets.source, buckets.dest), *mode]
    common += ["--report", str(report)]
    # every object left out: 3 by the filter, the 2 others (GLACIER) by their storage class
    done = run_cli(["p", *common, "--include", "*.zip", "--exclude-storage-class", "GLACIER"])
    assert done.returncode == 0, done.stderr
    left_out = load_json(report)
    assert left_out["files_copied"] == left_out["job_files_total"] == 0
    assert left_out["files_filtered_out"] == 3, left_out
    assert left_out["files_excluded_by_storage_class"] == 2, left_out
    assert "3 left out by --include/--exclude" in done.stderr, done.stderr
    assert "2 left out by --exclude-storage-class" in done.stderr, done.stderr
    # a prefix that holds nothing: the same zeros, and nothing left out
    empty = run_cli(["q", *common])
    assert empty.returncode == 0, empty.stderr
    nothing = load_json(report)
    assert nothing["files_copied"] == nothing["job_files_total"] == 0
    assert nothing["files_filtered_out"] == nothing["files_excluded_by_storage_class"] == 0
    assert "left out by" not in empty.stderr, empty.stderr
    # a filter that lets some through: those copied, the others counted
    some = run_cli(["p", *common, "--ignore-checkpoints", "--include", "*.csv"])
    assert some.returncode == 1, some.stderr  # p/cold/d.csv is in GLACIER
    counted = load_json(report)
    assert counted["files_copied"] == 2 and counted["error_count"] == 1, counted
    assert counted["files_filtered_out"] == 2, counted
    assert counted["files_excluded_by_storage_class"] == 0, counted


def test_a_dry_runs_report_counts_them_too(
    s3_server: S3Server, s3: Any, buckets: Buckets, tmp_path: Path
) -> None:
    _fill(s3, buckets.source)
    report = tmp_path / "plan.json"
    args = ["p", *cli_args(s3_server.endpoint, tmp_path, buckets.source, buckets.dest)]
    flags = ["--exclude", "*.txt", "--exclude-storage-class", "GLACIER"]
    done = run_cli([*args, "--dry-run", "--report", str(report), *flags])
    assert done.returncode == 0, done.stderr
    plan = load_json(report)
    assert plan["copy_files"] == plan["listed_files"] == 2, plan
    assert plan["filtered_files"] == 1, plan
    assert plan["class_excluded_files"] == 2, plan
    assert "1 left out by --include/--exclude" in done.stdout, done.stdout
    assert "2 left out by --exclude-storage-class" in done.stdout, done.stdout
