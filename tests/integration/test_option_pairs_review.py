"""Options where two meet (review): a resume that changes how copies are stored, a dry run
over a pending checkpoint, and a server-side copy with a prefix, filters, tags and a class."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import orjson
import pytest

from asyncbackup.checkpoint import read_checkpoint
from asyncbackup.journal import journal_path
from tests.conftest import Buckets, S3Server
from tests.helpers import (
    MiB,
    assert_same_objects,
    cli_args,
    list_keys,
    load_json,
    numbered_objects,
    put_multipart,
    run_cli,
)
from tests.proxy import S3Proxy
from tests.reliability import checkpoint_file, kill, put_parallel, start_cli, wait_for


def _args(s3_server: S3Server, buckets: Buckets, base: Path, *extra: str) -> list[str]:
    return ["data", *cli_args(s3_server.endpoint, base, buckets.source, buckets.dest, *extra)]


STORED_WITH = ("--storage-class", "STANDARD_IA", "--sse", "AES256")


def _pending_job(s3: Any, buckets: Buckets) -> None:
    """Three objects, one of them archived (its GET fails): a first run ends with exit 1 and
    leaves its checkpoint with two files done."""
    for name in ("a", "b"):
        s3.put_object(Bucket=buckets.source, Key=f"data/{name}", Body=b"x", Tagging="k=v")
    s3.put_object(
        Bucket=buckets.source, Key="data/cold", Body=b"c", StorageClass="GLACIER", Tagging="k=v"
    )


def _tree(base: Path) -> dict[str, tuple[int, int]]:
    return {
        str(path.relative_to(base)): (path.stat().st_size, path.stat().st_mtime_ns)
        for path in base.rglob("*")
        if path.is_file()
    }


def test_a_resume_that_changes_how_copies_are_stored_is_refused(
    s3_server: S3Server, s3: Any, buckets: Buckets, tmp_path: Path
) -> None:
    """The files a checkpoint marks done were copied with its storage class, encryption and
    tags: a resume with others would finish a backup half one way, half the other, and say
    "completed" (an audit of the class or the encryption finds the rest later)."""
    _pending_job(s3, buckets)
    first = run_cli(_args(s3_server, buckets, tmp_path))
    assert first.returncode == 1, first.stderr
    s3.put_object(Bucket=buckets.source, Key="data/cold", Body=b"c", Tagging="k=v")  # restored
    checkpoint = next((tmp_path / "checkpoints").glob("*.checkpoint"))
    before = checkpoint.read_bytes()
    for change, shown in (
        (["--storage-class", "STANDARD_IA"], "--storage-class"),
        (["--sse", "AES256"], "--sse"),
        (["--copy-tags"], "--copy-tags"),
    ):
        for mode in ([], ["--dry-run"]):
            refused = run_cli(_args(s3_server, buckets, tmp_path, *change, *mode))
            assert refused.returncode == 2, (change, mode, refused.stderr)
            assert shown in refused.stderr and "--ignore-checkpoints" in refused.stderr
            assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert checkpoint.read_bytes() == before
    assert sorted(list_keys(s3, buckets.dest)) == ["data/a", "data/b"]
    # what the resume is checked against keeps its type: a hand edit that breaks it is named
    edited = orjson.loads(before)
    edited["config"]["copy_tags"] = "yes"
    checkpoint.write_bytes(orjson.dumps(edited))
    corrupt = run_cli(_args(s3_server, buckets, tmp_path))
    assert corrupt.returncode == 2 and "config.copy_tags" in corrupt.stderr, corrupt.stderr
    checkpoint.write_bytes(before)
    # The same options resume (an empty class is none); starting over applies the new ones
    # to every copy.
    same = run_cli(_args(s3_server, buckets, tmp_path, "--storage-class", ""))
    assert same.returncode == 0, same.stderr
    over = run_cli(
        _args(s3_server, buckets, tmp_path, *STORED_WITH, "--copy-tags", "--ignore-checkpoints")
    )
    assert over.returncode == 0, over.stderr
    for key in ("data/a", "data/b", "data/cold"):
        head = s3.head_object(Bucket=buckets.dest, Key=key)
        assert (head.get("StorageClass"), head.get("ServerSideEncryption")) == (
            "STANDARD_IA",
            "AES256",
        ), key
        tags = s3.get_object_tagging(Bucket=buckets.dest, Key=key)["TagSet"]
        assert tags == [{"Key": "k", "Value": "v"}], key


@pytest.mark.parametrize(
    "extra",
    [
        ["--ignore-checkpoints"],
        ["--skip-existing", "--ignore-checkpoints"],
        ["--processes", "2", "--concurrency", "4", "--direct"],
    ],
    ids=["ignore-checkpoints", "skip-existing", "processes-direct"],
)
def test_a_dry_run_over_a_pending_checkpoint_touches_nothing(
    s3_server: S3Server, s3: Any, buckets: Buckets, tmp_path: Path, extra: list[str]
) -> None:
    _pending_job(s3, buckets)
    first = run_cli(_args(s3_server, buckets, tmp_path))
    assert first.returncode == 1, first.stderr
    before, dest = _tree(tmp_path), sorted(list_keys(s3, buckets.dest))
    report = tmp_path.parent / f"{tmp_path.name}-plan.json"
    plan = run_cli(_args(s3_server, buckets, tmp_path, "--dry-run", "--report", str(report)))
    assert plan.returncode == 0, plan.stderr
    dry = run_cli(_args(s3_server, buckets, tmp_path, "--dry-run", *extra))
    assert dry.returncode == 0, dry.stderr
    assert _tree(tmp_path) == before  # no checkpoint set aside, no staging, no lock
    assert sorted(list_keys(s3, buckets.dest)) == dest
    assert s3.list_multipart_uploads(Bucket=buckets.dest).get("Uploads", []) == []
    assert load_json(report)["copy_files"] == 1  # the resume's plan: the archived one
    would = 3 if extra == ["--ignore-checkpoints"] else 1
    assert f"would copy {would} files" in dry.stdout, dry.stdout


DIRECT_PAIRS = [
    *("--direct", "--processes", "2", "--concurrency", "4", "--dest-prefix", "bk/x"),
    *("--exclude", "tmp/*", "--copy-tags", "--storage-class", "STANDARD_IA"),
    *("--log-format", "json"),
]


def test_direct_with_prefix_filters_tags_and_class_in_two_processes(
    s3_server: S3Server, s3: Any, buckets: Buckets, tmp_path: Path
) -> None:
    """Server-side copies under another prefix, filtered, with tags and a storage class,
    shared by two processes: single-part (CopyObject) and multipart (UploadPartCopy) alike."""
    for i in range(6):
        s3.put_object(
            Bucket=buckets.source,
            Key=f"data/d{i % 2}/o{i}.bin",
            Body=os.urandom(100 + i),
            Metadata={"n": str(i)},
            Tagging=f"t=v{i}",
        )
    s3.put_object(Bucket=buckets.source, Key="data/tmp/x.bin", Body=b"tmp")
    put_multipart(s3, buckets.source, "data/big.bin", (5 * MiB, MiB), Tagging="k=big")
    result = run_cli(_args(s3_server, buckets, tmp_path, *DIRECT_PAIRS))
    assert result.returncode == 0, result.stderr
    records = [orjson.loads(line) for line in result.stderr.splitlines()]  # JSON, every one
    assert records[-1]["message"] == "summary" and records[-1]["files_copied"] == 7
    expected = [f"d{i % 2}/o{i}.bin" for i in range(6)] + ["big.bin"]
    assert sorted(list_keys(s3, buckets.dest)) == sorted(f"bk/x/{k}" for k in expected)
    for name in expected:
        source = s3.head_object(Bucket=buckets.source, Key=f"data/{name}")
        copy = s3.head_object(Bucket=buckets.dest, Key=f"bk/x/{name}")
        assert copy["ETag"] == source["ETag"] and copy["Metadata"] == source["Metadata"]
        assert copy.get("StorageClass") == "STANDARD_IA", name
        tags = s3.get_object_tagging(Bucket=buckets.source, Key=f"data/{name}")["TagSet"]
        assert s3.get_object_tagging(Bucket=buckets.dest, Key=f"bk/x/{name}")["TagSet"] == tags


def test_a_dry_run_after_a_crash_reads_the_journal_and_touches_nothing(
    proxy: S3Proxy, s3: Any, buckets: Buckets, tmp_path: Path
) -> None:
    """A run of two processes SIGKILLed mid-run leaves its checkpoint with a journal and a
    lock file: a dry run (also one that ignores the checkpoint, or compares the destination)
    counts what the journal says is done, and neither folds it in nor sets anything aside."""
    put_parallel(s3, buckets.source, numbered_objects(120, size=64))
    args = ["data", *cli_args(proxy.endpoint, tmp_path, buckets.source, buckets.dest)]
    args += ["--quiet", "--concurrency", "2", "--processes", "2"]
    path = checkpoint_file(tmp_path, buckets.source, "data")
    proxy.latency = 0.03
    process = start_cli(args)
    try:
        wait_for(lambda: path.exists() and read_checkpoint(path).processed_files >= 20, 60)
    finally:
        kill(process, signal.SIGKILL)
        process.communicate(timeout=30)
    proxy.latency = 0.0
    done = read_checkpoint(path).processed_files  # the JSON file and the journal
    assert journal_path(path).exists() and load_json(path)["processed_files"] < done
    before, dest = _tree(tmp_path), sorted(list_keys(s3, buckets.dest))
    for extra, would in (([], 120 - done), (["--ignore-checkpoints"], 120)):
        dry = run_cli([*args, "--dry-run", *extra])
        assert dry.returncode == 0, dry.stderr
        assert f"would copy {would} files" in dry.stdout, (done, dry.stdout)
    dry = run_cli([*args, "--dry-run", "--skip-existing"])
    assert dry.returncode == 0 and f"{done} already done per checkpoint" in dry.stdout, dry.stdout
    assert _tree(tmp_path) == before
    assert sorted(list_keys(s3, buckets.dest)) == dest
    resumed = run_cli(args)
    assert resumed.returncode == 0, resumed.stderr
    assert assert_same_objects(s3, buckets.source, buckets.dest, "data/") == 120
