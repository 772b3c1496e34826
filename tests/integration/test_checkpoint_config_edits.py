"""A checkpoint whose ``config`` a hand edit broke - the filters, the destination prefix or the
destination endpoint a resume is checked against - is a corrupt checkpoint: exit 2, one line
that names the field, the file untouched. It was an 'unexpected TypeError/ValueError' with
exit 3 (a filter), or a resume that took the field for not recorded (the prefix or endpoint
as a number or a list)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.conftest import Buckets, S3Server
from tests.helpers import cli_args
from tests.reliability import one_error_line, put_parallel, run_cli


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("include", 5),
        ("include", [1, 2]),
        ("exclude", "tmp/*"),
        ("dest_endpoint_url", "http://[::1"),
        # not a URL or null: the endpoint the copies are on is unknown, and a resume to
        # another one would skip them (it was taken for "not recorded" and resumed)
        ("dest_endpoint_url", 9000),
        ("dest_prefix", 5),
        ("dest_prefix", ["backup"]),
    ],
)
def test_a_broken_config_field_is_a_corrupt_checkpoint(
    s3_server: S3Server, buckets: Buckets, s3: Any, tmp_path: Path, field: str, value: Any
) -> None:
    put_parallel(s3, buckets.source, {f"k/{i}": b"x" for i in range(3)})
    args = ["k", *cli_args(s3_server.endpoint, tmp_path, buckets.source, buckets.dest)]
    args += ["--include", "*", "--quiet"]
    first = run_cli(args)
    assert first.returncode == 0, first.stderr
    (archived,) = (tmp_path / "checkpoints" / "archive").iterdir()
    data = orjson.loads(archived.read_bytes())
    data["files"]["k/1"] = False  # something left to do: a resume
    data["config"][field] = value
    path = tmp_path / "checkpoints" / f"{buckets.source}_k.checkpoint"
    path.write_bytes(orjson.dumps(data))
    before = path.read_bytes()
    for extra in ([], ["--dry-run"]):
        done = run_cli([*args, *extra])
        assert done.returncode == 2, done.stderr
        line = one_error_line(done.stderr)
        assert "is corrupt" in line and f"config.{field}" in line, line
        assert path.read_bytes() == before
