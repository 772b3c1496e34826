"""The process environment of a user's machine, not the test runner's: standard streams
closed by whatever started the command, a locale whose encoding is not UTF-8, and AWS_*
variables that name nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Buckets, S3Server
from tests.helpers import cli_args, load_json, put_objects


def _backup(
    s3_server: S3Server, buckets: Buckets, base: Path, *extra: str, close: int | None = None
) -> subprocess.CompletedProcess[bytes]:
    def close_fd() -> None:  # in the child, before exec: what a launcher leaves it
        if close is not None:
            os.close(close)

    argv = [sys.executable, "-m", "asyncbackup", "s3", "data"]
    argv += cli_args(s3_server.endpoint, base, buckets.source, buckets.dest, *extra)
    return subprocess.run(
        argv,
        stdout=None if close == 1 else subprocess.PIPE,
        stderr=None if close == 2 else subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        preexec_fn=close_fd,  # the closed descriptor is the point
        timeout=120,
        env=os.environ,
    )


@pytest.mark.parametrize("fd", [0, 1, 2])
def test_a_closed_standard_stream_does_not_abort_a_completed_run(
    s3_server: S3Server, buckets: Buckets, s3: Any, tmp_path: Path, fd: int
) -> None:
    """Started with stdin, stdout or stderr closed (``<&-``, ``>&-``, ``2>&-``, some
    launchers), the next file the run opened took that descriptor, and libuv aborted the
    process (SIGABRT, exit 134) closing it, after the copy had completed."""
    put_objects(s3, buckets.source, {f"data/f{i}": b"x" * i for i in range(5)})
    report = tmp_path / "report.json"
    done = _backup(s3_server, buckets, tmp_path / "base", "--report", str(report), close=fd)
    assert done.returncode == 0, (done.returncode, done.stderr)
    assert load_json(report)["status"] == "completed"
    listed = s3.list_objects_v2(Bucket=buckets.dest)["KeyCount"]
    assert listed == 5


def _checkpoint_with_a_non_ascii_key(where: Path) -> Path:
    path = where / "s_p.checkpoint"
    path.write_text(
        '{"backup_id": "b1", "source_bucket": "s", "source_path": "p", "dest_bucket": "d", '
        '"start_time": "2024-04-06T12:00:00", "last_update": "2024-04-06T13:15:30.5Z", '
        '"total_files": 2, "processed_files": 1, "total_bytes": 0, "processed_bytes": 0, '
        '"files": {"p/a": true, "p/\\u00e9t\\u00e9": false}, '
        '"errors": {"p/\\u00e9t\\u00e9": "AccessDenied: Access Denied"}, "config": {}}'
    )
    return path


@pytest.mark.parametrize(
    "variables",
    [{"PYTHONIOENCODING": "ascii"}, {"LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0"}],
    ids=["PYTHONIOENCODING", "C-locale"],
)
def test_results_print_on_a_stdout_that_cannot_encode_the_keys(
    tmp_path: Path, variables: dict[str, str]
) -> None:
    """``PYTHONIOENCODING=ascii``, the C locale with ``PYTHONUTF8=0`` (or a latin-1 locale):
    a non-ASCII key made ``checkpoint errors`` end with "unexpected UnicodeEncodeError",
    exit 3, listing nothing. Such a key prints escaped, as stderr's lines do."""
    path = _checkpoint_with_a_non_ascii_key(tmp_path)
    env = {**os.environ, **variables}
    argv = [sys.executable, "-m", "asyncbackup", "checkpoint", "errors", str(path)]
    done = subprocess.run(argv, capture_output=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"p/\\xe9t\\xe9\tAccessDenied\tAccess Denied\n"


def test_non_ascii_keys_are_staged_where_the_file_system_encoding_is_ascii(
    s3_server: S3Server, buckets: Buckets, s3: Any, tmp_path: Path
) -> None:
    """The C locale with ``PYTHONUTF8=0`` (an old cron or init script, a distribution's
    policy) makes file names ASCII: the first key with an ``é`` stopped the whole run,
    "unexpected UnicodeEncodeError", exit 3. Such characters are percent-encoded in staging,
    as ``%`` is, and the key reaches the destination exact."""
    keys = {"data/caf\u00e9/r\u00e9sum\u00e9.txt": b"cv", "data/\u2603": b"snow", "data/a": b"a"}
    put_objects(s3, buckets.source, keys)
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0"}
    argv = [sys.executable, "-m", "asyncbackup", "s3", "data", "--quiet"]
    argv += cli_args(s3_server.endpoint, tmp_path / "base", buckets.source, buckets.dest)
    done = subprocess.run(argv, capture_output=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    copied = {o["Key"] for o in s3.list_objects_v2(Bucket=buckets.dest)["Contents"]}
    assert copied == set(keys)
    staged = {p.name for p in (tmp_path / "base" / buckets.source).rglob("*")}
    assert {"caf%C3%A9", "r%C3%A9sum%C3%A9.txt", "%E2%98%83"} <= staged


@pytest.mark.parametrize("value", ["", "gone"])
def test_an_aws_profile_variable_naming_no_profile_is_named_in_the_error(
    s3_server: S3Server, buckets: Buckets, tmp_path: Path, value: str
) -> None:
    """``AWS_PROFILE=`` (set empty by a wrapper script) or naming a deleted profile, and no
    --source-profile: the error said "source profile None ... check --source-profile", a
    flag the user did not give. It names the variable and its value."""
    env = {**os.environ, "AWS_PROFILE": value}
    argv = [sys.executable, "-m", "asyncbackup", "s3", "data", "--quiet"]
    argv += cli_args(s3_server.endpoint, tmp_path / "base", buckets.source, buckets.dest)
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2, done.stderr
    assert f"AWS_PROFILE={value!r}" in done.stderr, done.stderr
    assert "None" not in done.stderr


@pytest.mark.parametrize(
    ("name", "variables"),
    [(b"caf\xc3\xa9", {"PYTHONIOENCODING": "ascii"}), (b"bad\xff", {})],
    ids=["ascii-stderr", "non-utf8-file-name"],
)
def test_json_log_lines_stay_json(
    s3_server: S3Server,
    buckets: Buckets,
    tmp_path: Path,
    name: bytes,
    variables: dict[str, str],
) -> None:
    """``--log-format json`` with a message quoting a non-ASCII path (a ``--report`` in a
    missing folder): on a stderr that cannot encode it (``PYTHONIOENCODING=ascii``, the C
    locale with ``PYTHONUTF8=0``) the line held ``\\xe9``, no JSON escape, and a log shipper
    dropped it; a file name whose bytes are not UTF-8 (read from argv as a lone surrogate)
    made orjson raise, and a "--- Logging error ---" traceback came instead of the error's
    record."""
    env = {**os.environ, **variables}
    argv: list[str | bytes] = [sys.executable, "-m", "asyncbackup", "s3", "data"]
    argv += cli_args(s3_server.endpoint, tmp_path / "base", buckets.source, buckets.dest)
    argv += ["--log-format", "json", "--report", os.fsencode(tmp_path) + b"/" + name + b"/r"]
    done = subprocess.run(argv, capture_output=True, env=env, timeout=120)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    record = json.loads(lines[0])
    assert record["level"] == "error" and record["exit_code"] == 2
    assert os.fsdecode(name).encode("utf-8", "backslashreplace").decode() in record["message"]


def test_a_report_path_whose_name_is_not_utf8_fails_in_one_line(
    s3_server: S3Server, buckets: Buckets, tmp_path: Path
) -> None:
    """``--report`` in a missing folder named in latin-1: the error's line came, then the
    failed run's report (its message quoting the path) made orjson raise, and a traceback
    ended the command with exit 1 instead of the error's 2."""
    report = os.fsencode(tmp_path / "gone") + b"\xe9/r.json"
    argv: list[str | bytes] = [sys.executable, "-m", "asyncbackup", "s3", "data", "--quiet"]
    argv += cli_args(s3_server.endpoint, tmp_path / "base", buckets.source, buckets.dest)
    argv += ["--report", report]
    done = subprocess.run(argv, capture_output=True, env=os.environ, timeout=120)
    assert done.returncode == 2, done.stderr
    assert b"Traceback" not in done.stderr
    assert len(done.stderr.splitlines()) == 1, done.stderr
    assert b"--report " in done.stderr


@pytest.mark.parametrize("flag", ["--base-local-path", "--checkpoint-dir"])
def test_a_path_whose_name_is_not_utf8_is_refused_in_one_line(
    s3_server: S3Server, buckets: Buckets, tmp_path: Path, flag: str
) -> None:
    """A folder named in latin-1 (``donn\\xe9es``) on a UTF-8 system: the checkpoint (which
    records it), the report and the logs are JSON, which cannot hold such a name, and the run
    ended with "unexpected TypeError: str is not valid UTF-8", exit 3. It is refused at the
    start with what to do."""
    odd = os.fsencode(tmp_path / "donn") + b"\xe9es"
    argv: list[str | bytes] = [sys.executable, "-m", "asyncbackup", "s3", "data", "--quiet"]
    argv += cli_args(s3_server.endpoint, tmp_path / "base", buckets.source, buckets.dest)
    argv += [flag, odd] if flag != "--base-local-path" else []
    if flag == "--base-local-path":
        argv[argv.index(str(tmp_path / "base"))] = odd
    done = subprocess.run(argv, capture_output=True, env=os.environ, timeout=120)
    assert done.returncode == 2, done.stderr
    line = done.stderr.decode().strip()
    assert "\n" not in line
    assert f"{flag} " in line and "not UTF-8" in line and "donn\\xe9es" in line, line


@pytest.mark.parametrize("command", ["list", "show"])
def test_checkpoint_json_output_under_a_folder_whose_name_is_not_utf8(
    tmp_path: Path, command: str
) -> None:
    """``checkpoint list|show --json`` of checkpoints in a folder named in latin-1 ended with
    "unexpected TypeError: str is not valid UTF-8", exit 3, printing nothing: the path's odd
    bytes print escaped (``\\udce9``), as the text output shows them."""
    folder = Path(os.fsdecode(os.fsencode(tmp_path) + b"/donn\xe9es"))
    folder.mkdir()
    path = _checkpoint_with_a_non_ascii_key(folder)
    target = folder if command == "list" else path
    argv = [sys.executable, "-m", "asyncbackup", "checkpoint", command, str(target), "--json"]
    done = subprocess.run(argv, capture_output=True, env=os.environ, timeout=60)
    assert done.returncode == 0, done.stderr
    json.loads(done.stdout)
    assert b"donn\\\\udce9es" in done.stdout  # a backslash, JSON-escaped


@pytest.mark.parametrize("json_flag", [[], ["--json"]])
def test_checkpoint_results_to_a_full_stdout_are_one_line_and_exit_120(
    tmp_path: Path, json_flag: list[str]
) -> None:
    """``checkpoint errors > /dev/full`` (a full disk under a redirect): "unexpected OSError
    ... run with --debug for details", exit 3, as if a bug; a dry run's results lost that way
    exit 120, as Python's own."""
    path = _checkpoint_with_a_non_ascii_key(tmp_path)
    argv = [sys.executable, "-m", "asyncbackup", "checkpoint", "errors", str(path), *json_flag]
    with open("/dev/full", "wb") as full:
        done = subprocess.run(argv, stdout=full, stderr=subprocess.PIPE, timeout=60)
    assert done.returncode == 120, done.stderr
    line = done.stderr.decode().strip()
    assert "\n" not in line and "unexpected" not in line
    assert "cannot write to stdout" in line and "No space left on device" in line
