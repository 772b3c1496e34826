"""Objects in an archive tier (GLACIER, DEEP_ARCHIVE) that were not restored: GET and CopyObject
refuse them. Each is one error that says what to do; the rest is copied; once the operator
skips them, the job completes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from asyncbackup.checkpoint import read_checkpoint
from tests.conftest import Buckets, S3Server
from tests.helpers import cli_args, list_keys, run_cli


@pytest.mark.parametrize("mode", [(), ("--no-fast-path",), ("--direct",)])
def test_archived_objects_are_errors_that_say_what_to_do(
    s3_server: S3Server, s3: Any, buckets: Buckets, tmp_path: Path, mode: tuple[str, ...]
) -> None:
    for i in range(4):
        s3.put_object(Bucket=buckets.source, Key=f"p/live{i}", Body=b"x" * 100)
    s3.put_object(Bucket=buckets.source, Key="p/old/cold", Body=b"c", StorageClass="GLACIER")
    s3.put_object(Bucket=buckets.source, Key="p/old/colder", Body=b"d", StorageClass="DEEP_ARCHIVE")
    args = cli_args(s3_server.endpoint, tmp_path, buckets.source, buckets.dest, *mode)

    first = run_cli(["p", *args])
    assert first.returncode == 1, first.stderr
    assert list_keys(s3, buckets.dest) == [f"p/live{i}" for i in range(4)]
    checkpoint = tmp_path / "checkpoints" / f"{buckets.source}_p.checkpoint"
    errors = read_checkpoint(checkpoint).errors
    assert set(errors) == {"p/old/cold", "p/old/colder"}
    for message in errors.values():
        assert "the object is archived: restore it" in message
        assert "asyncbackup checkpoint mark --done" in message
    assert "the object is archived" in first.stderr

    mark = ["-m", "asyncbackup", "checkpoint", "mark", "--done", str(checkpoint), "p/old/*"]
    marked = subprocess.run([sys.executable, *mark], capture_output=True, text=True, check=False)
    assert marked.returncode == 0, marked.stderr
    second = run_cli(["p", *args])
    assert second.returncode == 0, second.stderr
    assert "p/old/cold" not in list_keys(s3, buckets.dest)
