"""A corrupt or truncated checkpoint is never silently overwritten."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.conftest import Buckets, S3Server
from tests.helpers import cli_args
from tests.reliability import checkpoint_file, listing, one_error_line, read_valid, run_cli

VALID = {
    "backup_id": "b-1",
    "source_path": "c",
    "dest_bucket": "placeholder",
    "start_time": "2024-04-06T12:00:00",
    "last_update": "2024-04-06T13:15:30",
    "total_files": 2,
    "processed_files": 1,
    "total_bytes": 2,
    "processed_bytes": 1,
    "files": {"c/a": True, "c/b": False},
    "errors": {},
    "config": {},
}

BAD = {
    "truncated": orjson.dumps(VALID)[:57],
    "empty": b"",
    "not json": b"\x00\x01garbage\xff",
    "wrong schema": orjson.dumps({**VALID, "files": {"c/a": "yes"}}),
    "not an object": b"[1, 2, 3]",
}


@pytest.mark.parametrize("kind", list(BAD))
def test_corrupt_checkpoint_is_refused_untouched_then_kept_aside(
    kind: str, s3_server: S3Server, buckets: Buckets, s3: Any, tmp_path: Path
) -> None:
    s3.put_object(Bucket=buckets.source, Key="c/a", Body=b"a")
    path = checkpoint_file(tmp_path, buckets.source, "c")
    path.parent.mkdir(parents=True)
    bad = BAD[kind]
    path.write_bytes(bad)
    args = ["c", *cli_args(s3_server.endpoint, tmp_path, buckets.source, buckets.dest)]

    refused = run_cli(args)
    assert refused.returncode == 2, refused.stderr
    line = one_error_line(refused.stderr)
    assert str(path) in line and "--ignore-checkpoints" in line
    assert path.read_bytes() == bad  # untouched
    assert not listing(s3, buckets.dest)  # and nothing was copied

    started_over = run_cli([*args, "--ignore-checkpoints", "--on-complete", "delete"])
    assert started_over.returncode == 0, started_over.stderr
    (aside,) = path.parent.glob(f"{path.name}.corrupt-*")
    assert aside.read_bytes() == bad  # kept beside, byte for byte
    assert set(listing(s3, buckets.dest)) == {"c/a"}


def test_ignored_valid_checkpoint_is_kept_aside_too(
    s3_server: S3Server, buckets: Buckets, s3: Any, tmp_path: Path
) -> None:
    s3.put_object(Bucket=buckets.source, Key="c/a", Body=b"a")
    path = checkpoint_file(tmp_path, buckets.source, "c")
    path.parent.mkdir(parents=True)
    good = orjson.dumps({**VALID, "source_bucket": buckets.source, "dest_bucket": buckets.dest})
    path.write_bytes(good)
    args = ["c", *cli_args(s3_server.endpoint, tmp_path, buckets.source, buckets.dest)]
    done = run_cli([*args, "--ignore-checkpoints", "--on-complete", "delete"])
    assert done.returncode == 0, done.stderr
    (aside,) = path.parent.glob(f"{path.name}.ignored-*")
    assert aside.read_bytes() == good
    assert read_valid(aside).backup_id == "b-1"
