"""Bad input: one readable line, a non-zero exit code, nothing lost."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Buckets, S3Server
from tests.helpers import cli_args, run_cli


def _one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--concurrency", "0"], "--concurrency"),
        (["--list-streams", "0"], "--list-streams"),
        (["--checkpoint-interval", "x"], "--checkpoint-interval"),
        (["--part-size", "1MiB"], "--part-size"),
        (["--no-such-flag"], "--no-such-flag"),
    ],
)
def test_bad_flags_exit_2(
    s3_server: S3Server, buckets: Buckets, tmp_path: Path, extra: list[str], needle: str
) -> None:
    args = cli_args(s3_server.endpoint, tmp_path, buckets.source, buckets.dest)
    result = run_cli(["data", *args, *extra])
    assert result.returncode == 2
    assert needle in _one_line(result.stderr)


def test_missing_required_flag_exit_2(tmp_path: Path) -> None:
    result = run_cli(["data", "--source-bucket", "a", "--base-local-path", str(tmp_path)])
    assert result.returncode == 2
    assert "--dest-bucket" in _one_line(result.stderr)


@pytest.mark.parametrize("side", ["source", "dest"])
def test_missing_bucket(
    s3_server: S3Server, s3: Any, buckets: Buckets, tmp_path: Path, side: str
) -> None:
    source = "no-such-bucket-x" if side == "source" else buckets.source
    dest = "no-such-bucket-y" if side == "dest" else buckets.dest
    result = run_cli(["data", *cli_args(s3_server.endpoint, tmp_path, source, dest)])
    assert result.returncode == 2
    line = _one_line(result.stderr)
    assert "does not exist" in line and ("no-such-bucket" in line)
    assert not list(tmp_path.glob("checkpoints/*.checkpoint"))


def test_bucket_named_checkpoints_needs_another_checkpoint_dir(
    s3_server: S3Server, buckets: Buckets, tmp_path: Path
) -> None:
    """Its objects are staged in ``<base>/checkpoints``, beside the checkpoint files."""
    args = cli_args(s3_server.endpoint, tmp_path, "checkpoints", buckets.dest)
    result = run_cli(["data", *args])
    assert result.returncode == 2
    assert "--checkpoint-dir" in _one_line(result.stderr)
    assert not (tmp_path / "checkpoints").exists()


def test_unknown_profile(s3_server: S3Server, buckets: Buckets, tmp_path: Path) -> None:
    args = cli_args(s3_server.endpoint, tmp_path, buckets.source, buckets.dest)
    result = run_cli(["data", *args, "--dest-profile", "nope"])
    assert result.returncode == 2
    assert "--dest-profile" in _one_line(result.stderr)


def test_unreachable_endpoint(buckets: Buckets, tmp_path: Path) -> None:
    args = cli_args("http://127.0.0.1:9", tmp_path, buckets.source, buckets.dest)
    result = run_cli(["data", *args, "--max-attempts", "2"])
    assert result.returncode == 2
    assert "cannot reach" in _one_line(result.stderr)
