"""Filters, dry runs, incremental runs and destination options, through the CLI."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from tests.conftest import Buckets, S3Server
from tests.helpers import (
    MiB,
    bucket_digest,
    cli_args,
    list_keys,
    load_json,
    numbered_objects,
    put_multipart,
    put_objects,
    run_cli,
)


def _args(s3_server: S3Server, buckets: Buckets, base: Path, *extra: str) -> list[str]:
    return ["data", *cli_args(s3_server.endpoint, base, buckets.source, buckets.dest), *extra]


def test_include_and_exclude(
    s3_server: S3Server, s3: Any, buckets: Buckets, tmp_path: Path
) -> None:
    keys = ["data/a.csv", "data/sub/b.csv", "data/c.json", "data/tmp/d.csv", "data/e.txt"]
    put_objects(s3, buckets.source, {k: b"x" for k in keys})
    result = run_cli(
        _args(
            s3_server,
            buckets,
            tmp_path,
            "--include",
            "*.csv",
            "--include",
            "*.json",
            "--exclude",
            "tmp/*",
        )
    )
    assert result.returncode == 0, result.stderr
    assert sorted(list_keys(s3, buckets.dest)) == ["data/a.csv", "data/c.json", "data/sub/b.csv"]


def test_resume_with_other_filters_is_refused(
    s3_server: S3Server, s3: Any, buckets: Buckets, tmp_path: Path
) -> None:
    put_objects(s3, buckets.source, {"data/a.csv": b"1", "data/b.txt": b"2"})
    # A run that stops with an error keeps its checkpoint: make one fail for good.
    s3.put_object(Bucket=buckets.source, Key="data/zz.csv", Body=b"3")
    first = run_cli(_args(s3_server, buckets, tmp_path, "--include", "*.csv", "--dry-run"))
    assert first.returncode == 0
    checkpoint = tmp_path / "checkpoints" / f"{buckets.source}_data.checkpoint"
    assert not checkpoint.exists()  # the dry run wrote nothing
    # Leave a checkpoint behind with the filters recorded: interrupt by hand-making one.
    run = run_cli(_args(s3_server, buckets, tmp_path, "--include", "*.csv", "--on-complete",
                        "delete"))  # fmt: skip
    assert run.returncode == 0, run.stderr
    state_file = tmp_path / "checkpoints" / "keep.json"
    assert not state_file.exists()
    # Re-create the situation of an unfinished job: a checkpoint made with --include '*.csv'.
    from asyncbackup.checkpoint import CheckpointState
    from asyncbackup.checkpoint_manager import CheckpointManager

    state = CheckpointState.new(
        source_bucket=buckets.source,
        source_path="data",
        dest_bucket=buckets.dest,
        config={"include": ["*.csv"], "exclude": []},
    )
    manager = CheckpointManager(checkpoint)
    manager.flush(state)
    manager.close()
    refused = run_cli(_args(s3_server, buckets, tmp_path, "--include", "*.txt"))
    assert refused.returncode == 2
    assert "--include '*.csv'" in refused.stderr and "--ignore-checkpoints" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    same = run_cli(_args(s3_server, buckets, tmp_path, "--include", "*.csv"))
    assert same.returncode == 0, same.stderr


def test_dry_run_lists_and_touches_nothing(
    s3_server: S3Server, s3: Any, buckets: Buckets, tmp_path: Path
) -> None:
    objects = numbered_objects(30)
    put_objects(s3, buckets.source, objects)
    report = tmp_path / "plan.json"
    base = tmp_path / "scratch"
    result = run_cli(_args(s3_server, buckets, base, "--dry-run", "--report", str(report)))
    assert result.returncode == 0, result.stderr
    total = sum(map(len, objects.values()))
    assert f"would copy 30 files ({total} bytes)" in result.stdout
    assert sorted(objects)[0] in result.stdout and "... and 10 more" in result.stdout
    assert list_keys(s3, buckets.dest) == []
    assert not base.exists()
    plan = load_json(report)
    assert plan["copy_files"] == 30 and len(plan["first_keys"]) == 20


def test_skip_existing_copies_only_new_and_changed(
    s3_server: S3Server, s3: Any, buckets: Buckets, tmp_path: Path
) -> None:
    objects = numbered_objects(200)
    put_objects(s3, buckets.source, objects)
    put_multipart(s3, buckets.source, "data/big.bin", (5 * MiB, 5 * MiB, 10))
    # An empty object uploaded in one empty part ("...-1") is copied as a plain empty object,
    # whose ETag differs: zero bytes are zero bytes, so it counts as unchanged all the same.
    put_multipart(s3, buckets.source, "data/empty-multipart", (0,))
    # A single-part source above the threshold is uploaded in parts: its ETag cannot match.
    s3.put_object(Bucket=buckets.source, Key="data/single.bin", Body=os.urandom(6 * MiB))
    first = run_cli(_args(s3_server, buckets, tmp_path, "--multipart-threshold", "5MiB"))
    assert first.returncode == 0, first.stderr
    # The bucket gains 1% new objects and one object changes.
    put_objects(s3, buckets.source, {f"data/new/{i}.bin": os.urandom(100) for i in range(2)})
    changed = sorted(objects)[7]
    s3.put_object(Bucket=buckets.source, Key=changed, Body=b"changed content")
    report = tmp_path / "report.json"
    second = run_cli(
        _args(s3_server, buckets, tmp_path, "--skip-existing", "--report", str(report))
    )
    assert second.returncode == 0, second.stderr
    summary = load_json(report)
    # two new, one changed, and the single-part object that was uploaded in parts
    assert summary["copied_files"] == 4
    assert summary["unchanged_files"] == 201  # the multipart copy kept its source ETag
    assert bucket_digest(s3, buckets.source) == bucket_digest(s3, buckets.dest)
    # The second run (default 8 MiB threshold) sent the 6 MiB object as one PUT: now it matches.
    plan = run_cli(_args(s3_server, buckets, tmp_path, "--skip-existing", "--dry-run"))
    assert "would copy 0 files" in plan.stdout, plan.stdout


def test_multipart_copy_keeps_the_source_etag(
    s3_server: S3Server, s3: Any, buckets: Buckets, tmp_path: Path
) -> None:
    put_multipart(s3, buckets.source, "data/layout.bin", (6 * MiB, 6 * MiB, 1234))
    result = run_cli(_args(s3_server, buckets, tmp_path))  # default 8 MiB parts
    assert result.returncode == 0, result.stderr
    source = s3.head_object(Bucket=buckets.source, Key="data/layout.bin")["ETag"]
    copy = s3.head_object(Bucket=buckets.dest, Key="data/layout.bin")["ETag"]
    assert source == copy and source.strip('"').endswith("-3")


def test_dest_prefix_storage_class_and_sse(
    s3_server: S3Server, s3: Any, buckets: Buckets, tmp_path: Path
) -> None:
    put_objects(s3, buckets.source, {"data/x/1.txt": b"one", "data/2.txt": b"two"})
    result = run_cli(
        _args(
            s3_server,
            buckets,
            tmp_path,
            "--dest-prefix",
            "archive/2024",
            "--storage-class",
            "STANDARD_IA",
            "--sse",
            "AES256",
        )
    )
    assert result.returncode == 0, result.stderr
    assert sorted(list_keys(s3, buckets.dest)) == ["archive/2024/2.txt", "archive/2024/x/1.txt"]
    head = s3.head_object(Bucket=buckets.dest, Key="archive/2024/x/1.txt")
    assert head["StorageClass"] == "STANDARD_IA"
    assert head["ServerSideEncryption"] == "AES256"
    body = s3.get_object(Bucket=buckets.dest, Key="archive/2024/x/1.txt")["Body"].read()
    assert body == b"one"


def test_max_bandwidth_is_enforced(
    s3_server: S3Server, s3: Any, buckets: Buckets, tmp_path: Path
) -> None:
    put_objects(s3, buckets.source, {f"data/{i}": os.urandom(256 * 1024) for i in range(8)})
    started = time.monotonic()
    result = run_cli(_args(s3_server, buckets, tmp_path, "--max-bandwidth", "1MB/s"))
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    # 2 MiB each way at 1 MB/s cannot take less than ~1.8 s, whatever the machine.
    assert elapsed >= 1.8, elapsed
    assert len(list_keys(s3, buckets.dest)) == 8


def test_direct_copy_is_server_side_and_keeps_etags(
    s3_server: S3Server, s3: Any, buckets: Buckets, tmp_path: Path
) -> None:
    put_objects(s3, buckets.source, numbered_objects(25), ContentType="text/plain",
                Metadata={"team": "a"})  # fmt: skip
    layout_etag = put_multipart(s3, buckets.source, "data/big.bin", (5 * MiB, 5 * MiB, 77))
    base = tmp_path / "scratch"
    result = run_cli(_args(s3_server, buckets, base, "--direct", "--storage-class", "STANDARD_IA"))
    assert result.returncode == 0, result.stderr
    assert bucket_digest(s3, buckets.source) == bucket_digest(s3, buckets.dest)
    assert s3.head_object(Bucket=buckets.dest, Key="data/big.bin")["ETag"] == layout_etag
    some = "data/d0/obj-00000.bin"
    head = s3.head_object(Bucket=buckets.dest, Key=some)
    assert head["ContentType"] == "text/plain" and head["Metadata"] == {"team": "a"}
    assert head["StorageClass"] == "STANDARD_IA"
    assert not (base / buckets.source).exists()  # nothing was staged
    archived = next((base / "checkpoints" / "archive").iterdir())
    assert load_json(archived)["processed_files"] == 26


def test_direct_copy_needs_one_set_of_credentials(
    s3_server: S3Server, buckets: Buckets, tmp_path: Path
) -> None:
    result = run_cli(_args(s3_server, buckets, tmp_path, "--direct", "--dest-profile", "dst"))
    assert result.returncode == 2
    assert "--direct" in result.stderr and len(result.stderr.strip().splitlines()) == 1
