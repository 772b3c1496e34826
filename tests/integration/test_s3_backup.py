"""The S3-to-S3 backup end to end, through the CLI in a real process, against real S3."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tests.conftest import Buckets, S3Server
from tests.helpers import MiB, assert_same_objects, cli_args, list_keys, load_json, run_cli

METADATA = {
    "ContentType": "text/csv",
    "ContentEncoding": "gzip",
    "CacheControl": "max-age=60",
    "ContentDisposition": 'attachment; filename="x.csv"',
    "Metadata": {"owner": "team-a", "origin": "s3://somewhere"},
}


def _fill(s3: Any, bucket: str) -> dict[str, bytes]:
    objects = {
        "Projects/TeamA/2024Q1/report.csv": os.urandom(2048),
        "Projects/TeamA/2024Q1/nested/deeper/still/file.bin": os.urandom(10),
        "Projects/TeamA/2024Q1/ünïcødé/日本語 ファイル.txt": "こんにちは".encode(),
        "Projects/TeamA/2024Q1/with space/and  two spaces.txt": b"spaces",
        "Projects/TeamA/2024Q1/empty": b"",
        "Projects/TeamA/2024Q1/big/multipart.bin": os.urandom(11 * MiB + 123),
    }
    for key, body in objects.items():
        s3.put_object(Bucket=bucket, Key=key, Body=body, **METADATA)
    # Outside the job: a sibling folder sharing the prefix string, and another project.
    s3.put_object(Bucket=bucket, Key="Projects/TeamA/2024Q10/not-me.txt", Body=b"no")
    s3.put_object(Bucket=bucket, Key="Projects/TeamB/x.txt", Body=b"no")
    return objects


def test_full_backup_copies_bytes_and_metadata(
    s3_server: S3Server, s3: Any, buckets: Buckets, tmp_path: Path
) -> None:
    objects = _fill(s3, buckets.source)
    base = tmp_path / "scratch"
    args = cli_args(s3_server.endpoint, base, buckets.source, buckets.dest)
    result = run_cli(
        ["Projects/TeamA/2024Q1", *args, "--multipart-threshold", "5MiB", "--part-size", "5MiB"]
    )
    assert result.returncode == 0, result.stderr
    assert sorted(list_keys(s3, buckets.dest)) == sorted(objects)
    assert assert_same_objects(s3, buckets.source, buckets.dest, "Projects/TeamA/2024Q1/") == 6
    for key in objects:
        head = s3.head_object(Bucket=buckets.dest, Key=key)
        for field in ("ContentType", "ContentEncoding", "CacheControl", "ContentDisposition"):
            assert head[field] == METADATA[field], (key, field)
        assert head["Metadata"] == METADATA["Metadata"]
    big = s3.head_object(Bucket=buckets.dest, Key="Projects/TeamA/2024Q1/big/multipart.bin")
    assert big["ETag"].strip('"').endswith("-3")  # really went through multipart upload
    # Without --cleanup the staged files stay as a local copy.
    staged = base / buckets.source / "Projects/TeamA/2024Q1/ünïcødé/日本語 ファイル.txt"
    assert staged.read_bytes() == "こんにちは".encode()
    # Completed without errors: the checkpoint is archived and a completion entry written.
    checkpoints = base / "checkpoints"
    assert not (checkpoints / f"{buckets.source}_Projects_TeamA_2024Q1.checkpoint").exists()
    archived = list((checkpoints / "archive").iterdir())
    assert len(archived) == 1
    state = load_json(archived[0])
    assert state["processed_files"] == state["total_files"] == 6
    assert state["processed_bytes"] == state["total_bytes"] == sum(map(len, objects.values()))
    assert all(state["files"].values()) and state["errors"] == {}
    log = load_json(checkpoints / "completions.log")
    assert log["backup_id"] == state["backup_id"] and log["files"] == 6
    assert "complete" in result.stderr


def test_cleanup_removes_staged_files_and_delete_on_complete(
    s3_server: S3Server, s3: Any, buckets: Buckets, tmp_path: Path
) -> None:
    _fill(s3, buckets.source)
    base = tmp_path / "scratch"
    args = cli_args(s3_server.endpoint, base, buckets.source, buckets.dest)
    result = run_cli(["Projects/TeamA/2024Q1", *args, "--cleanup", "--on-complete", "delete"])
    assert result.returncode == 0, result.stderr
    staged = [p for p in (base / buckets.source).rglob("*") if p.is_file()]
    assert staged == []
    assert not list((base / "checkpoints").glob("*.checkpoint"))
    assert not (base / "checkpoints" / "archive").exists()


def test_empty_source_path_is_the_whole_bucket(
    s3_server: S3Server, s3: Any, buckets: Buckets, tmp_path: Path
) -> None:
    for key in ("a", "b/c", "d/e/f"):
        s3.put_object(Bucket=buckets.source, Key=key, Body=key.encode())
    args = cli_args(s3_server.endpoint, tmp_path, buckets.source, buckets.dest)
    result = run_cli(["", *args], command="asyncbackup")
    assert result.returncode == 0, result.stderr
    assert assert_same_objects(s3, buckets.source, buckets.dest) == 3
    archived = next((tmp_path / "checkpoints" / "archive").iterdir())
    assert archived.name.startswith(f"{buckets.source}_.checkpoint")


def test_a_backup_of_nothing_says_so(
    s3_server: S3Server, s3: Any, buckets: Buckets, tmp_path: Path
) -> None:
    """A mistyped SOURCE_PATH (or filters that leave nothing) completes with nothing copied:
    a warning says so, even with --quiet, rather than a bare 'completed'."""
    s3.put_object(Bucket=buckets.source, Key="data/a.txt", Body=b"a")
    args = cli_args(s3_server.endpoint, tmp_path, buckets.source, buckets.dest)
    typo = run_cli(["dta", *args, "--quiet"])
    assert typo.returncode == 0, typo.stderr
    assert f"nothing to back up: no object under s3://{buckets.source}/dta/" in typo.stderr
    filtered = run_cli(["data", *args, "--quiet", "--exclude", "*.txt"])
    assert "that the filters let through; check SOURCE_PATH or --include/--exclude" in (
        filtered.stderr
    )
    copied = run_cli(["data", *args, "--quiet"])
    assert copied.returncode == 0 and "nothing to back up" not in copied.stderr
    assert list_keys(s3, buckets.dest) == ["data/a.txt"]


def test_checkpoint_dir_is_used(
    s3_server: S3Server, s3: Any, buckets: Buckets, tmp_path: Path
) -> None:
    s3.put_object(Bucket=buckets.source, Key="p/x", Body=b"x")
    elsewhere = tmp_path / "persistent" / "checkpoints"
    args = cli_args(s3_server.endpoint, tmp_path / "scratch", buckets.source, buckets.dest)
    result = run_cli(["p", *args, "--checkpoint-dir", str(elsewhere)])
    assert result.returncode == 0, result.stderr
    assert (elsewhere / "archive").is_dir()
    assert [p.name.split(".checkpoint")[0] for p in (elsewhere / "archive").iterdir()] == [
        f"{buckets.source}_p"
    ]
    assert not (tmp_path / "scratch" / "checkpoints").exists()
