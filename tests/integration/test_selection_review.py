"""Selection semantics (review s19b): SOURCE_PATH, --include/--exclude, --dest-prefix and
--dry-run as a user of the AWS CLI, s5cmd or rclone reads them, against moto."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest

from asyncbackup import BackupConfig, CheckpointMismatchError, plan_backup, run_backup
from tests.conftest import Buckets, S3Server
from tests.helpers import cli_args, list_keys, load_json, put_objects, run_cli

ODD = {
    "data/a/": b"",
    "data/empty": b"",
    "data/x[1].txt": b"1",
    "data/star*.txt": b"22",
    "data/q?.txt": b"333",
    "data/back\\slash.txt": b"4444",
    "data/\u00fcn\u00efcode.txt": b"55555",
    "data//double.txt": b"666666",
    "data/sp ace.log": b"7777777",
    "data/sub/deep/k.txt": b"88888888",
    "data/Upper.TXT": b"999999999",
    'data/p+l%41us&<amp>"q\u00a0.txt': b"10",
    "data/\U0001f600.txt": b"12",
    "data2/other.txt": b"x",
    "dat/other.txt": b"x",
    "/lead/y.txt": b"13",
    "//root.txt": b"14",
}


def _settings(buckets: Buckets, tmp_path: Path, endpoint: str, **options: Any) -> dict[str, Any]:
    return {
        "source_bucket": buckets.source,
        "source_path": "data",
        "dest_bucket": buckets.dest,
        "base_local_path": tmp_path / "stage",
        "endpoint_url": endpoint,
        **options,
    }


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"include": ("*.txt",)},
        {"include": ("*.txt",), "exclude": ("*[[]*", "*\\*")},
        {"exclude": ("*/",)},
        {"include": ("[!a-z]*",)},
        {"source_path": ""},
        {"source_path": "/data/"},
        {"source_path": "", "include": ("/*",), "dest_prefix": "bk"},
        {"dest_prefix": "bk"},
        {"include": ("sub/*", "a/"), "dest_prefix": "bk/2024/"},
    ],
)
async def test_a_dry_run_plans_what_the_run_copies(
    s3_server: S3Server, s3: Any, buckets: Buckets, tmp_path: Path, options: dict[str, Any]
) -> None:
    put_objects(s3, buckets.source, ODD)
    settings = _settings(buckets, tmp_path, s3_server.endpoint, **options)
    plan = await plan_backup(**settings)
    report = await run_backup(**settings)
    assert report.exit_code == 0, report.errors
    copied = list_keys(s3, buckets.dest)
    assert plan.copy_files == report.copied_files == len(copied)
    assert plan.copy_bytes == report.copied_bytes
    expected = [BackupConfig(**settings).dest_key(key) for key in plan.first_keys]
    assert sorted(copied) == sorted(expected)


class _StopAfter:
    def __init__(self, stop: Any, count: int) -> None:
        self.stop, self.count = stop, count

    def on_listed(self, files: int, size: int, skipped: int, skipped_bytes: int) -> None:
        pass

    def on_listing_done(self) -> None:
        pass

    def on_done(self, key: str, size: int) -> None:
        self.count -= 1
        if self.count <= 0:
            self.stop.set()

    def on_failed(self, key: str, error: str) -> None:
        pass

    def on_flush(self, processed: int) -> None:
        pass


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"include": ("*.txt",)},
        {"skip_existing": True},
        {"include": ("s*",), "skip_existing": True},
    ],
)
async def test_a_dry_run_of_a_half_done_checkpoint_plans_what_the_resume_copies(
    s3_server: S3Server, s3: Any, buckets: Buckets, tmp_path: Path, options: dict[str, Any]
) -> None:
    put_objects(s3, buckets.source, ODD)
    put_objects(s3, buckets.source, {f"data/s/{i:03d}.txt": bytes(i) for i in range(40)})
    settings = _settings(buckets, tmp_path, s3_server.endpoint, concurrency=1, **options)
    stop = asyncio.Event()
    first = await run_backup(**settings, stop=stop, observer=_StopAfter(stop, 5))
    assert first.status == "stopped", first
    # one copied by this run, then changed at the source; one put there by someone else
    s3.put_object(Bucket=buckets.source, Key="data/s/039.txt", Body=b"changed")
    s3.put_object(Bucket=buckets.dest, Key="data/s/038.txt", Body=bytes(38))
    plan = await plan_backup(**settings)
    report = await run_backup(**settings)
    assert report.exit_code == 0, report.errors
    assert plan.copy_files == report.copied_files
    assert plan.copy_bytes == report.copied_bytes
    assert plan.done_files + plan.unchanged_files == report.skipped_files
    assert plan.unchanged_files == report.unchanged_files


@pytest.mark.parametrize(
    ("source_path", "filters", "said"),
    [
        ("data", ["--include", "*.CSV"], "that the filters let through"),
        ("logs/2024", [], "no object under s3://{}/logs/2024/; check SOURCE_PATH"),
    ],
)
def test_a_dry_run_of_nothing_warns_as_the_run_does(
    s3_server: S3Server,
    s3: Any,
    buckets: Buckets,
    tmp_path: Path,
    source_path: str,
    filters: list[str],
    said: str,
) -> None:
    """A dry run is how a filter or SOURCE_PATH is tried out: one that lets nothing through
    printed "would copy 0 files ... of 0 listed" and nothing else (the objects it listed and
    left out counted nowhere), where the run itself warns "nothing to back up"."""
    put_objects(s3, buckets.source, {"data/x.csv": b"1", "logs/2024-01/a.log": b"22"})
    args = cli_args(s3_server.endpoint, tmp_path, buckets.source, buckets.dest)
    plan = run_cli([source_path, *args, *filters, "--dry-run", "--quiet"])
    run = run_cli([source_path, *args, *filters, "--quiet"])
    assert plan.returncode == run.returncode == 0, (plan.stderr, run.stderr)
    assert "would copy 0 files" in plan.stdout
    for result in (plan, run):
        warning = [line for line in result.stderr.splitlines() if "WARNING" in line]
        assert len(warning) == 1 and "nothing to back up" in warning[0], result.stderr
        assert said.format(buckets.source) in warning[0], warning


def test_the_glob_rules_the_readme_gives() -> None:
    """``*`` crosses ``/``; matching is case-sensitive, as S3 keys are; a backslash is a
    character, not an escape; a ``[`` left open is a character (fnmatch's rules, the AWS
    CLI's too): no pattern is refused."""
    from asyncbackup.filters import KeyFilter

    assert KeyFilter(include=("*.csv",)).matches("a/b.csv")
    assert not KeyFilter(include=("*.csv",)).matches("a/b.CSV")
    assert KeyFilter(include=("tmp/*",)).matches("tmp/x/y")
    assert KeyFilter(include=("a\\*",)).matches("a\\b")
    assert KeyFilter(include=("x[1",)).matches("x[1") and not KeyFilter(include=("x[1",)).matches(
        "x1"
    )
    assert KeyFilter(include=("x[[]1]",)).matches("x[1]")
    assert KeyFilter(include=("x[*]",)).matches("x*") and not KeyFilter(include=("x[*]",)).matches(
        "xa"
    )
    assert not KeyFilter(include=("tmp/",)).matches("tmp/a")  # the folder marker alone
    # the order of the flags does not matter: --exclude '*' leaves out everything
    assert not KeyFilter(include=("*.csv",), exclude=("*",)).matches("a.csv")


async def test_a_dry_run_to_the_bucket_root_says_the_folder_marker_would_fail(
    s3_server: S3Server,
    s3: Any,
    buckets: Buckets,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``data/`` itself (the S3 console's "Create folder") has no key at the root with
    ``--dest-prefix ''``: the run fails it (exit 1, as the README says), but the dry run
    planned it as one more file to copy, and said nothing of it."""
    put_objects(s3, buckets.source, {"data/": b"", "data/a.txt": b"1", "data/b/": b""})
    settings = _settings(buckets, tmp_path, s3_server.endpoint, dest_prefix="")
    with caplog.at_level(logging.WARNING, logger="asyncbackup"):
        plan = await plan_backup(**settings)
    report = await run_backup(**settings)
    assert report.exit_code == 1 and list(report.errors) == ["data/"], report
    assert sorted(list_keys(s3, buckets.dest)) == ["a.txt", "b/"]
    assert (plan.copy_files, plan.copy_bytes) == (report.copied_files, report.copied_bytes)
    assert plan.first_keys == ["data/a.txt", "data/b/"] and plan.listed_files == 3
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "'data/'" in warned[0] and "--exclude ''" in warned[0], warned


async def test_a_resume_with_the_same_filters_in_another_order_is_not_refused(
    s3_server: S3Server, s3: Any, buckets: Buckets, tmp_path: Path
) -> None:
    """An object is copied when it matches any --include and no --exclude: the order of the
    flags selects nothing, yet a resume that gave them in another order (a wrapper script
    rewritten, a cron line edited) was refused, exit 2, with a message quoting the same
    patterns twice. Another selection is still refused."""
    put_objects(
        s3,
        buckets.source,
        {f"data/{i:02d}.{ext}": b"x" for i in range(20) for ext in ("csv", "txt", "log")},
    )
    stop = asyncio.Event()
    first = await run_backup(
        **_settings(buckets, tmp_path, s3_server.endpoint, concurrency=1),
        include=("*.csv", "*.txt"),
        exclude=("0*", "1*.log"),
        stop=stop,
        observer=_StopAfter(stop, 3),
    )
    assert first.status == "stopped"
    settings = _settings(buckets, tmp_path, s3_server.endpoint)
    # an exclude dropped lets through keys the checkpoint's filters did not: refused
    with pytest.raises(CheckpointMismatchError, match=r"this run has .* --exclude '0\*';"):
        await plan_backup(**settings, include=("*.csv", "*.txt"), exclude=("0*",))
    with pytest.raises(CheckpointMismatchError, match="only leave more out"):
        await plan_backup(**settings, include=("*.csv", "*.txt", "*.log"), exclude=("0*",))
    reordered: dict[str, Any] = {
        "include": ("*.txt", "*.csv", "*.txt"),
        "exclude": ("1*.log", "0*"),
    }
    plan = await plan_backup(**settings, **reordered)
    report = await run_backup(**settings, **reordered)
    assert report.status == "completed" and report.resumed, report
    assert plan.copy_files == report.copied_files == 20 - first.copied_files


def test_a_resume_that_leaves_out_a_failing_key_as_the_error_says_is_not_refused(
    s3_server: S3Server, s3: Any, buckets: Buckets, tmp_path: Path
) -> None:
    """The folder marker SOURCE_PATH/ fails with --dest-prefix '' ("leave it out with
    --exclude ''"), and the run keeps its checkpoint (exit 1). The next run, with the
    --exclude '' the error asked for, was refused (exit 2: "resume with the same filters, or
    start over with --ignore-checkpoints"), so the way out was to copy everything again. So
    for any object that fails every night (an archived one): --exclude it, and resume. A
    resume that only leaves more out resumes; its files now left out leave the checkpoint."""
    put_objects(s3, buckets.source, {"data/": b"", "data/a.txt": b"1", "data/b.csv": b"22"})
    args = ["data", *cli_args(s3_server.endpoint, tmp_path, buckets.source, buckets.dest)]
    args += ["--dest-prefix", ""]
    first = run_cli(args)
    assert first.returncode == 1 and "--exclude ''" in first.stderr, first.stderr
    report = tmp_path / "report.json"
    second = run_cli([*args, "--exclude", "", "--report", str(report)])
    assert second.returncode == 0, second.stderr
    summary = load_json(report)
    assert summary["status"] == "completed" and summary["errors"] == {}, summary
    assert summary["copied_files"] == 0 and summary["total_files"] == 2, summary
    assert sorted(list_keys(s3, buckets.dest)) == ["a.txt", "b.csv"]


def test_which_filters_only_leave_more_out() -> None:
    from asyncbackup.filters import KeyFilter

    made = KeyFilter(include=("*.csv", "*.txt"), exclude=("tmp/*",))
    assert KeyFilter(include=("*.txt", "*.csv"), exclude=("tmp/*", "x")).within(made)
    assert KeyFilter(include=("*.csv",), exclude=("tmp/*",)).within(made)
    assert not KeyFilter(exclude=("tmp/*",)).within(made)  # no include: every key
    assert not KeyFilter(include=("*.csv", "*.txt")).within(made)  # the exclude dropped
    assert not KeyFilter(include=("*.log",), exclude=("tmp/*",)).within(made)
    assert KeyFilter(exclude=("",)).within(KeyFilter())
    assert KeyFilter(include=("*.csv",)).within(KeyFilter())
