"""A newcomer's first hour: the README followed literally, and the mistakes people make on
their first runs (a bucket given as a URL, sizes given as the CLI spells them). Each must be
one line saying what to do, with exit 2, and nothing copied to a key it does not belong at."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from asyncbackup import ConfigError, run_backup
from tests.conftest import Buckets, S3Server
from tests.helpers import cli_args, list_keys, put_objects, run_cli


def _one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


@pytest.mark.parametrize("scheme", ["s3://", "S3://"])
def test_source_path_given_as_an_s3_url_is_refused(
    s3_server: S3Server, s3: Any, buckets: Buckets, tmp_path: Path, scheme: str
) -> None:
    """``backup-s3 s3://bucket/Projects/TeamA`` (as the AWS CLI spells it) listed the prefix
    ``s3://bucket/Projects/TeamA/``, found nothing and ended 0, 'completed', its checkpoint
    archived: a nightly job that backs up nothing, reported as a success."""
    put_objects(s3, buckets.source, {"Projects/TeamA/a.txt": b"a"})
    url = f"{scheme}{buckets.source}/Projects/TeamA"
    result = run_cli([url, *cli_args(s3_server.endpoint, tmp_path, buckets.source, buckets.dest)])
    assert result.returncode == 2, result.stderr
    line = _one_line(result.stderr)
    assert "SOURCE_PATH" in line and "'Projects/TeamA'" in line
    assert not (tmp_path / "checkpoints").exists()
    assert list_keys(s3, buckets.dest) == []


def test_dest_prefix_given_as_an_s3_url_is_refused(
    s3_server: S3Server, s3: Any, buckets: Buckets, tmp_path: Path
) -> None:
    """``--dest-prefix s3://archive/backups`` put every copy under the key
    ``s3://archive/backups/...`` of the destination bucket."""
    put_objects(s3, buckets.source, {"Projects/TeamA/a.txt": b"a"})
    args = cli_args(s3_server.endpoint, tmp_path, buckets.source, buckets.dest)
    url = f"s3://{buckets.dest}/backups"
    result = run_cli(["Projects/TeamA", *args, "--dest-prefix", url])
    assert result.returncode == 2, result.stderr
    line = _one_line(result.stderr)
    assert "--dest-prefix" in line and "'backups'" in line
    assert list_keys(s3, buckets.dest) == []


async def test_run_backup_refuses_an_s3_url_as_source_path(
    s3_server: S3Server, s3: Any, buckets: Buckets, tmp_path: Path
) -> None:
    """Embedded, the same mistake returned a report 'completed' with 0 files."""
    put_objects(s3, buckets.source, {"Projects/TeamA/a.txt": b"a"})
    with pytest.raises(ConfigError, match="'Projects/TeamA'"):
        await run_backup(
            source_bucket=buckets.source,
            source_path=f"s3://{buckets.source}/Projects/TeamA",
            dest_bucket=buckets.dest,
            base_local_path=tmp_path,
            endpoint_url=s3_server.endpoint,
        )
    assert list_keys(s3, buckets.dest) == []


@pytest.mark.parametrize("side", ["source", "dest"])
@pytest.mark.parametrize("form", ["s3://{}", "{}/Projects"])
def test_bucket_given_with_a_url_or_a_folder_says_so(
    s3_server: S3Server, buckets: Buckets, tmp_path: Path, side: str, form: str
) -> None:
    """``--source-bucket s3://company-data-db`` said 'cannot reach the source endpoint
    (ParamValidationError); check the endpoint URL and the network': the network was fine."""
    source = form.format(buckets.source) if side == "source" else buckets.source
    dest = form.format(buckets.dest) if side == "dest" else buckets.dest
    args = cli_args(s3_server.endpoint, tmp_path, source, dest)
    result = run_cli(["Projects/TeamA", *args])
    assert result.returncode == 2, result.stderr
    line = _one_line(result.stderr)
    assert f"--{side}-bucket" in line, line
    assert "network" not in line and "reach" not in line, line


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("multipart_threshold", "64MiB"),
        ("part_size", "8MiB"),
        ("max_bandwidth", "50MB/s"),
        ("concurrency", "32"),
        ("processes", "auto"),
        ("keep_archives", "3"),
        ("concurrency", None),
    ],
)
async def test_run_backup_option_given_as_the_cli_spells_it_is_a_config_error(
    s3_server: S3Server, buckets: Buckets, tmp_path: Path, option: str, value: object
) -> None:
    """The README: keyword arguments are the CLI flags with Python values, and failures raise
    an AsyncBackupError subclass with a one-line message. ``multipart_threshold="64MiB"`` (or
    a concurrency read from an environment variable, a string) raised ``TypeError: '<' not
    supported between instances of 'str' and 'int'``, naming neither the option nor the fix."""
    options: dict[str, Any] = {option: value}
    with pytest.raises(ConfigError) as refused:
        await run_backup(
            source_bucket=buckets.source,
            source_path="Projects/TeamA",
            dest_bucket=buckets.dest,
            base_local_path=tmp_path,
            endpoint_url=s3_server.endpoint,
            **options,
        )
    assert option in str(refused.value) and "number" in str(refused.value)
    assert not (tmp_path / "checkpoints").exists()
