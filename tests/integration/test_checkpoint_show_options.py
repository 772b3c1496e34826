"""``checkpoint show`` says the options a checkpoint's job was run with, as flags: a resume is
refused with other filters, another --dest-prefix, storage class or encryption, and the
operator resuming a job started weeks ago by someone else had no way to see them but jq."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import orjson

from tests.conftest import Buckets, S3Server
from tests.faulty_proxy import run_cli_async
from tests.helpers import cli_args


async def test_show_gives_the_options_to_resume_with(
    s3_server: S3Server, s3: Any, buckets: Buckets, tmp_path: Path
) -> None:
    s3.put_object(Bucket=buckets.source, Key="p/a.csv", Body=b"x")
    s3.put_object(Bucket=buckets.source, Key="p/tmp/b.csv", Body=b"y")
    options = [
        "--include",
        "*.csv",
        "--exclude",
        "tmp/*",
        "--exclude",
        "it's [x]",
        "--exclude-storage-class",
        "GLACIER",
        "--dest-prefix",
        "copy",
        "--copy-tags",
    ]
    args = ["s3", "p", *cli_args(s3_server.endpoint, tmp_path, buckets.source, buckets.dest)]
    done = await run_cli_async([*args, *options])
    assert done.returncode == 0, done.stderr
    (archived,) = (tmp_path / "checkpoints" / "archive").iterdir()

    shown = await run_cli_async(["checkpoint", "show", str(archived)])
    assert shown.returncode == 0, shown.stderr
    (line,) = [line for line in shown.stdout.splitlines() if line.startswith("options")]
    flags = shlex.split(line.removeprefix("options"))
    assert flags[: len(options)] == options, line
    assert flags[len(options) :] == ["--endpoint-url", s3_server.endpoint.rstrip("/")], line

    as_json = orjson.loads(
        (await run_cli_async(["checkpoint", "show", str(archived), "--json"])).stdout
    )
    assert as_json["options"] == flags


async def test_a_hand_written_checkpoint_shows_no_options_line(tmp_path: Path) -> None:
    path = tmp_path / "b_p.checkpoint"
    path.write_bytes(
        orjson.dumps(
            {
                "backup_id": "x",
                "source_bucket": "b",
                "source_path": "p",
                "dest_bucket": "d",
                "start_time": "2024-04-06T12:00:00",
                "last_update": "2024-04-06T13:15:30",
                "total_files": 1,
                "processed_files": 1,
                "total_bytes": 1,
                "processed_bytes": 1,
                "files": {"p/a": True},
                "errors": {},
                "config": {"include": "not a list", "copy_tags": "yes"},
            }
        )
    )
    shown = await run_cli_async(["checkpoint", "show", str(path)])
    assert shown.returncode == 0, shown.stderr
    assert "options" not in shown.stdout, shown.stdout
