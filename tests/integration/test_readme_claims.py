"""What the README promises, checked where a run by hand found the code falling short."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from asyncbackup import (
    BackupConfig,
    GitHubBackupConfig,
    plan_backup,
    run_backup,
    run_github_backup,
)
from asyncbackup.checkpoint import read_checkpoint
from asyncbackup.errors import ConfigError
from asyncbackup.journal import journal_path
from tests.conftest import Buckets, S3Server
from tests.integration.github_org import config as org_config
from tests.integration.github_org import running_org
from tests.integration.test_resume import crashed_mid_upload, job_settings


def tool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "asyncbackup", "checkpoint", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_compact_discard_journal_keeps_the_uploads_still_to_abort(
    s3_server: S3Server, s3: Any, buckets: Buckets, tmp_path: Path
) -> None:
    """README, "No multipart upload leaks": uploads a crash left are aborted by the next run.
    A crash mid-upload records the upload in the journal only; an operator who then edits the
    file is told to run ``checkpoint compact --discard-journal``, which drops the journal's
    progress - it must not drop its record of the upload too, or the parts stay billed."""
    checkpoint, _ = await crashed_mid_upload(s3, buckets, tmp_path)
    settings = job_settings(s3_server, buckets, tmp_path)
    assert journal_path(checkpoint).exists()
    data = orjson.loads(checkpoint.read_bytes())
    assert "multipart_uploads" not in data  # recorded by the journal alone
    data["files"]["job/extra"] = True  # the operator's edit, the journal still there
    checkpoint.write_bytes(orjson.dumps(data))

    discarded = tool("compact", str(checkpoint), "--discard-journal")
    assert discarded.returncode == 0, discarded.stderr
    assert not journal_path(checkpoint).exists()
    kept = read_checkpoint(checkpoint)
    assert kept.files.get("job/extra") is True  # the edit is kept

    report = await run_backup(**settings, on_complete="delete")
    assert report.status == "completed"
    assert s3.list_multipart_uploads(Bucket=buckets.dest).get("Uploads", []) == []


@pytest.mark.parametrize(
    ("command", "bad"),
    [
        (["s3", "job", "--source-bucket", "a-bucket"], ["--concurrency", "0"]),
        (["github", "acme"], ["--max-bandwidth", "50MB/s"]),  # not a github flag
    ],
)
def test_a_bad_flag_still_replaces_the_last_report(
    tmp_path: Path, command: list[str], bad: list[str]
) -> None:
    """README, ``--report``: a run stopped by an error (exit 2) writes ``{"status": "failed"}``
    - "the file never keeps an earlier run's result for a monitor to read as this one's". A
    flag with a bad value (a cron line edited wrong) is such an error."""
    report = tmp_path / "report.json"
    report.write_bytes(orjson.dumps({"status": "completed", "exit_code": 0}))
    args = [*command, "--dest-bucket", "b-bucket", "--base-local-path", str(tmp_path / "w")]
    done = subprocess.run(
        [sys.executable, "-m", "asyncbackup", *args, "--report", str(report), *bad],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    written = orjson.loads(report.read_bytes())
    assert written["status"] == "failed" and written["exit_code"] == 2
    assert bad[0] in written["error"]
    assert not (tmp_path / "w").exists()  # nothing was started


def test_the_checkpoint_tool_writes_no_report_file(tmp_path: Path) -> None:
    """``--report`` belongs to the backup commands: a mistyped ``checkpoint`` command line
    holding the word creates no file."""
    report = tmp_path / "report.json"
    done = tool("show", "--report", str(report), str(tmp_path / "x.checkpoint"))
    assert done.returncode == 2
    assert not report.exists()


async def test_one_pattern_given_as_a_string_is_one_pattern(
    s3_server: S3Server, s3: Any, buckets: Buckets, tmp_path: Path
) -> None:
    """README, embedding: "The keyword arguments are the CLI flags". ``exclude="tmp/*"`` (one
    ``--exclude``) was taken letter by letter - ``*`` among them, which matches every key - so
    the nightly backup copied nothing and said ``completed``, exit code 0."""
    for key in ("job/a.csv", "job/b.txt", "job/tmp/x.csv"):
        s3.put_object(Bucket=buckets.source, Key=key, Body=key.encode())
    settings = {**job_settings(s3_server, buckets, tmp_path), "on_complete": "delete"}
    report = await run_backup(**settings, exclude="tmp/*")
    assert report.status == "completed"
    assert sorted(o["Key"] for o in s3.list_objects_v2(Bucket=buckets.dest)["Contents"]) == [
        "job/a.csv",
        "job/b.txt",
    ]
    plan = await plan_backup(**settings, include="*.csv", ignore_checkpoints=True)
    assert plan.copy_files == 2  # a.csv and tmp/x.csv, not every key


def test_a_pattern_that_is_not_a_string_is_refused() -> None:
    s3_job: dict[str, Any] = {"source_bucket": "a-b", "source_path": "x", "dest_bucket": "c-d"}
    github_job: dict[str, Any] = {"owner": "acme", "dest_bucket": "c-d", "token": "t"}
    s3_job["base_local_path"] = github_job["base_local_path"] = Path("/w")
    with pytest.raises(ConfigError, match="--include"):
        BackupConfig(**s3_job | {"include": [b"*.csv"]})
    with pytest.raises(ConfigError, match="--exclude"):
        GitHubBackupConfig(**github_job | {"exclude": [None]})
    github = GitHubBackupConfig(**github_job | {"include": "al*"})
    assert github.include == ("al*",)


async def test_a_github_run_that_finds_everything_unchanged_copies_nothing(
    tmp_path: Path, s3_server: S3Server, buckets: Buckets
) -> None:
    """README, incremental GitHub backups: an unchanged repository "is not cloned again" and a
    304 costs nothing - yet the report said ``copied 30 files, 0 B``, the unchanged and the
    skipped artifacts counted as copies; a monitor could not tell a quiet night from a busy
    one. They are this run's ``skipped_files`` (``unchanged_files``: found unchanged)."""
    async with running_org(tmp_path / "git") as github:
        options = org_config(github, s3_server.endpoint, buckets.dest, tmp_path / "work")
        first = await run_github_backup(clock=github.clock, sleep=github.clock.sleep, **options)
        assert first.status == "completed", first.errors
        assert first.copied_files > 0 and first.copied_bytes > 0
        again = await run_github_backup(clock=github.clock, sleep=github.clock.sleep, **options)
    assert again.status == "completed", again.errors
    assert (again.copied_files, again.copied_bytes) == (0, 0)
    assert again.skipped_files == again.processed_files == first.processed_files
    assert 0 < again.unchanged_files <= again.skipped_files
    assert first.copied_files + first.skipped_files == first.processed_files


@pytest.mark.parametrize(
    ("rate", "processes", "advice"),
    [("1000", "1", r"at least (\S+)"), ("3000", "3", r"give (\S+) or more")],
)
def test_the_bandwidth_floor_the_error_names_is_accepted(
    tmp_path: Path, rate: str, processes: str, advice: str
) -> None:
    """README: bad input gets a one-line error that says what to do. ``--max-bandwidth 1KB/s``
    was refused with "must be at least 1KB/s" (1KB is 1000 bytes; the floor was 1024), and
    "give 3KB/s or more" for three processes was refused in turn."""
    args = ["s3", "job", "--source-bucket", "a-bucket", "--dest-bucket", "b-bucket"]
    args += ["--base-local-path", str(tmp_path / "w"), "--dry-run", "--processes", processes]
    args += ["--endpoint-url", "http://127.0.0.1:9"]  # nothing listens: the flags matter here

    def cli(limit: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "asyncbackup", *args, "--max-bandwidth", limit],
            capture_output=True,
            text=True,
            timeout=60,
        )

    refused = cli(rate)
    assert refused.returncode == 2 and "--max-bandwidth" in refused.stderr
    found = re.search(advice, refused.stderr)
    assert found is not None, refused.stderr
    followed = cli(found.group(1))
    assert "--max-bandwidth" not in followed.stderr, followed.stderr
    assert "cannot reach" in followed.stderr  # past the flags' checks, to the endpoint


def _completed_backup(
    s3_server: S3Server, s3: Any, buckets: Buckets, tmp_path: Path, keys: list[str]
) -> tuple[Path, Path]:
    """A backup of ``job/`` completed by the command line: its live path and its archive."""
    for key in keys:
        s3.put_object(Bucket=buckets.source, Key=key, Body=key.encode())
    args = ["s3", "job", "--source-bucket", buckets.source, "--dest-bucket", buckets.dest]
    args += ["--base-local-path", str(tmp_path), "--endpoint-url", s3_server.endpoint, "-q"]
    done = subprocess.run(
        [sys.executable, "-m", "asyncbackup", *args], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    live = tmp_path / "checkpoints" / f"{buckets.source}_job.checkpoint"
    (archived,) = (tmp_path / "checkpoints" / "archive").iterdir()
    assert not live.exists()
    return live, archived


def test_no_checkpoint_names_the_archived_one(
    s3_server: S3Server, s3: Any, buckets: Buckets, tmp_path: Path
) -> None:
    """README, "Exit codes of the tool" and "Errors are one line on stderr, with what to do
    next". ``checkpoint verify`` of a completed backup, given the path the README documents,
    said "list the checkpoints with: asyncbackup checkpoint list DIR" - and that command
    answered "no checkpoints under DIR": a completed backup's checkpoint is archived, which
    ``list`` shows only with ``--all``. The advice must lead to the checkpoint."""
    live, archived = _completed_backup(s3_server, s3, buckets, tmp_path, ["job/a", "job/b"])
    refused = tool("verify", str(live), "--endpoint-url", s3_server.endpoint)
    assert refused.returncode == 2
    assert str(archived) in refused.stderr, refused.stderr
    nowhere = tool("show", str(tmp_path / "checkpoints" / "other_job.checkpoint"))
    assert nowhere.returncode == 2
    found = re.search(r"asyncbackup (checkpoint list \S+ --all)", nowhere.stderr)
    assert found is not None, nowhere.stderr
    listed = tool(*found.group(1).split()[1:])
    assert listed.returncode == 0 and str(archived) in listed.stdout, listed.stdout


def test_verify_advice_on_an_archived_checkpoint_copies_what_it_found(
    s3_server: S3Server, s3: Any, buckets: Buckets, tmp_path: Path
) -> None:
    """README, ``verify``: "It works on archived checkpoints too" and ``--mark-pending`` "marks
    the bad keys pending so the next run copies them again". On an archived checkpoint the
    next run reads none of it (it starts a new checkpoint): the printed advice, followed, left
    the next run copying every object again. Followed now, the next run copies the missing
    object alone."""
    keys = [f"job/{i}" for i in range(5)]
    live, archived = _completed_backup(s3_server, s3, buckets, tmp_path, keys)
    s3.delete_object(Bucket=buckets.dest, Key="job/3")
    where = ["--endpoint-url", s3_server.endpoint]
    found = tool("verify", str(archived), *where, "--mark-pending")
    assert found.returncode == 1 and "missing    job/3" in found.stdout
    # what the advice says to do: put the archived checkpoint back where a run reads it
    assert f"cp {archived} {live}" in found.stdout, found.stdout
    live.write_bytes(archived.read_bytes())
    args = ["s3", "job", "--source-bucket", buckets.source, "--dest-bucket", buckets.dest]
    args += ["--base-local-path", str(tmp_path), "--endpoint-url", s3_server.endpoint, "-q"]
    rerun = subprocess.run(
        [sys.executable, "-m", "asyncbackup", *args], capture_output=True, text=True, timeout=60
    )
    assert rerun.returncode == 0, rerun.stderr
    assert "copied 1 files" in rerun.stderr, rerun.stderr
    assert "job/3" in {o["Key"] for o in s3.list_objects_v2(Bucket=buckets.dest)["Contents"]}


def test_a_checkpoint_command_whose_output_cannot_be_written_exits_120(tmp_path: Path) -> None:
    """README, "Exit codes": "a stdout that cannot be written makes a success 120, as Python
    does"; the tool's own codes say 3 is "a listing failed midway". ``checkpoint show`` into a
    full disk said "unexpected OSError ... (the checkpoint is valid; run with --debug for
    details)" and exited 3, as if the command itself had failed."""
    checkpoint = tmp_path / "job.checkpoint"
    state = {
        "backup_id": "b",
        "source_bucket": "src",
        "source_path": "job",
        "dest_bucket": "dst",
        "start_time": "2024-04-06T12:00:00",
        "last_update": "2024-04-06T13:15:30",
        "total_files": 1,
        "processed_files": 1,
        "total_bytes": 1,
        "processed_bytes": 1,
        "files": {"job/a": True},
        "errors": {},
        "config": {},
    }
    checkpoint.write_bytes(orjson.dumps(state))
    with open("/dev/full", "w") as full:
        done = subprocess.run(
            [sys.executable, "-m", "asyncbackup", "checkpoint", "show", str(checkpoint)],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )
    assert done.returncode == 120, done.stderr
    assert "unexpected" not in done.stderr


@pytest.mark.parametrize("command", ["s3", "github"])
def test_every_flag_with_a_default_states_it_in_its_help(command: str) -> None:
    """The README's flag tables give each default (``--concurrency`` 16, ``--part-size`` 8MiB,
    ``--max-attempts`` 8...); ``--help`` must give the same ones, not leave a newcomer to
    guess. Several flags said nothing of their default, and the github command's
    ``--multipart-threshold`` (8MiB there, 64MiB for s3) neither."""
    from asyncbackup.cli import build_github_parser, build_s3_parser

    parser = build_s3_parser() if command == "s3" else build_github_parser()
    for action in parser._actions:
        if not action.option_strings or isinstance(action.default, bool):
            continue  # a switch: its help says what it turns on or off
        if action.default in (None, [], "==SUPPRESS=="):
            continue
        flag = action.option_strings[0]
        found = re.search(r"default:? (\S+)", action.help or "")
        assert found is not None, f"{command} {flag}: help states no default ({action.help!r})"
        stated, default = found.group(1).rstrip(",;:)"), action.default
        assert stated == str(default) or (
            isinstance(default, float) and float(stated) == default
        ), f"{command} {flag}: help says {stated}, default is {default!r}"
