"""Failure at scale: what a run prints and records when many objects fail or are left over.

Scaled-down sizes; each test asserts the shape of the output (a bounded number of lines),
which a per-object line would break at any size.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.conftest import Buckets, S3Server
from tests.helpers import cli_args, load_json, run_cli


def _seed_checkpoint(path: Path, source: str, dest: str, errors: dict[str, str]) -> None:
    """A checkpoint of job ``job`` whose failed files are all in ``errors``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "backup_id": "hand-written",
        "source_bucket": source,
        "source_path": "job",
        "dest_bucket": dest,
        "start_time": "2024-04-06T12:00:00",
        "last_update": "2024-04-06T13:15:30",
        "total_files": len(errors),
        "processed_files": 0,
        "total_bytes": 0,
        "processed_bytes": 0,
        "files": dict.fromkeys(errors, False),
        "errors": errors,
        "config": {},
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
