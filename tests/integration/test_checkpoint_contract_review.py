"""The checkpoint file as a public contract (``shared/spec/checkpoint-schema.md``): what an
operator writes or edits by hand, with ``jq`` or an editor, is read as the run reads it, by
real runs and the checkpoint tool against the S3 server."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest

from asyncbackup import checkpoint, checkpoint_manager, run_backup, run_github_backup
from asyncbackup.checkpoint import CheckpointState, read_checkpoint
from asyncbackup.checkpoint_manager import CheckpointManager
from asyncbackup.github.listing import ETAGS, RELEASE_LISTING, VERSIONS
from asyncbackup.journal import Changes, journal_path
from tests.conftest import Buckets, S3Server
from tests.faulty_proxy import FaultyProxy, run_cli_async
from tests.helpers import cli_args
from tests.integration.github_org import config as github_config
from tests.integration.github_org import running_org
from tests.integration.test_resume import crashed_mid_upload, job_settings
from tests.proxy import Rule, S3Proxy
from tests.reliability import one_error_line, put_parallel, run_cli


@pytest.mark.parametrize(("field", "value"), [("dest_prefix", 5), ("dest_endpoint_url", 9000)])
async def test_verify_refuses_a_recorded_destination_a_hand_edit_broke(
    s3_server: S3Server, s3: Any, buckets: Buckets, tmp_path: Path, field: str, value: Any
) -> None:
    """``checkpoint verify`` looks where the checkpoint says the copies are: a
    ``config.dest_prefix`` or ``dest_endpoint_url`` that is no string was taken for "none",
    and the copies under the prefix were reported missing (exit 1; with ``--mark-pending``
    all marked to be copied again), or AWS's endpoint asked. As for a run: corrupt, exit 2."""
    put_parallel(s3, buckets.source, {f"k/{i}": b"x" for i in range(3)})
    base = tmp_path / "scratch"
    args = cli_args(s3_server.endpoint, base, buckets.source, buckets.dest)
    backup = await run_cli_async(["s3", "k", *args, "--dest-prefix", "copies", "--quiet"])
    assert backup.returncode == 0, backup.stderr
    (archived,) = (base / "checkpoints" / "archive").iterdir()
    data = orjson.loads(archived.read_bytes())
    data["config"][field] = value
    archived.write_bytes(orjson.dumps(data))
    before = archived.read_bytes()
    where = ["--source-endpoint-url", s3_server.endpoint, "--mark-pending"]
    checked = await run_cli_async(["checkpoint", "verify", str(archived), *where])
    assert checked.returncode == 2, checked.stdout + checked.stderr
    line = one_error_line(checked.stderr)
    assert "is corrupt" in line and f"config.{field}" in line, line
    assert archived.read_bytes() == before


@pytest.mark.parametrize(
    ("section", "bad"),
    [("files", "done"), ("files", None), ("errors", None), ("errors", 403)],
)
async def test_a_bad_entry_in_a_large_map_is_named(
    buckets: Buckets, tmp_path: Path, section: str, bad: Any
) -> None:
    """One wrong value among thousands of entries (a status not in the spec, an error
    "cleared" with null as the journal does): the one line names its key, so the operator
    can find and repair it (it only said the map was wrong)."""
    files: dict[str, Any] = {f"job/f{i:05d}": i % 2 == 0 for i in range(5000)}
    errors: dict[str, Any] = {f"job/f{i:05d}": "AccessDenied: no" for i in range(1, 5000, 2)}
    {"files": files, "errors": errors}[section]["job/f03001"] = bad
    path = tmp_path / "checkpoints" / f"{buckets.source}_job.checkpoint"
    path.parent.mkdir()
    written = {
        "backup_id": "hand",
        "source_bucket": buckets.source,
        "source_path": "job",
        "dest_bucket": buckets.dest,
        "start_time": "2024-04-06T12:00:00",
        "last_update": "2024-04-06T12:00:00",
        "files": files,
        "errors": errors,
    }
    path.write_bytes(orjson.dumps(written, option=orjson.OPT_INDENT_2))
    before = path.read_bytes()
    for command in (["show"], ["errors"], ["mark", "--done", "job/f00001"]):
        shown = await run_cli_async(["checkpoint", command[0], str(path), *command[1:]])
        assert shown.returncode == 2, shown.stdout + shown.stderr
        line = one_error_line(shown.stderr)
        assert "is corrupt" in line and f"field '{section}'" in line, line
        assert "'job/f03001'" in line, line
    assert path.read_bytes() == before


def test_a_checkpoint_without_its_counters_resumes_with_sensible_counts(
    s3_server: S3Server, s3: Any, buckets: Buckets, tmp_path: Path
) -> None:
    """The counters are optional to a hand-written checkpoint (they are recounted): its
    resume said "2 of 0 files already done"; now of the files the checkpoint knows, as
    ``checkpoint show`` says."""
    put_parallel(s3, buckets.source, {f"job/{i}": b"x" for i in range(4)})
    path = tmp_path / "checkpoints" / f"{buckets.source}_job.checkpoint"
    path.parent.mkdir()
    written = {
        "backup_id": "hand",
        "source_bucket": buckets.source,
        "source_path": "job",
        "dest_bucket": buckets.dest,
        "start_time": "2024-04-06T12:00:00",
        "last_update": "2024-04-06T12:00:00",
        "files": {"job/0": True, "job/1": True, "job/2": False},
    }
    path.write_bytes(orjson.dumps(written))
    args = ["job", *cli_args(s3_server.endpoint, tmp_path, buckets.source, buckets.dest)]
    done = run_cli(args)
    assert done.returncode == 0, done.stderr
    assert "2 of 3 files already done" in done.stderr, done.stderr
    assert sorted(o["Key"] for o in s3.list_objects_v2(Bucket=buckets.dest)["Contents"]) == [
        "job/2",
        "job/3",
    ]


async def test_show_and_list_escape_the_job_a_checkpoint_names(
    s3_server: S3Server, buckets: Buckets, tmp_path: Path
) -> None:
    """A SOURCE_PATH is a key prefix and may hold any character; the run logs it escaped, but
    ``checkpoint show`` and ``list`` printed the checkpoint's job as it is: a newline split
    ``list``'s one line per checkpoint, and an escape sequence reached the terminal."""
    source_path = "we\x1b[31mird\nline"
    base = tmp_path / "scratch"
    args = cli_args(s3_server.endpoint, base, buckets.source, buckets.dest)
    backup = await run_cli_async(["s3", source_path, *args])  # nothing to copy: archived
    assert backup.returncode == 0, backup.stderr
    (archived,) = (base / "checkpoints" / "archive").iterdir()
    data = orjson.loads(archived.read_bytes())
    assert data["source_path"] == source_path  # the checkpoint keeps it exact
    listed = await run_cli_async(["checkpoint", "list", "--all", str(base / "checkpoints")])
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.count("\n") == 1 and "\x1b" not in listed.stdout, listed.stdout
    assert "we\\x1b[31mird\\nline" in listed.stdout, listed.stdout
    shown = await run_cli_async(["checkpoint", "show", str(archived)])
    assert shown.returncode == 0, shown.stderr
    assert "\x1b" not in shown.stdout and "we\\x1b[31mird\\nline" in shown.stdout, shown.stdout


async def test_a_github_artifact_set_false_by_hand_is_copied_again(
    proxy: S3Proxy, buckets: Buckets, tmp_path: Path
) -> None:
    """The spec's hand edit "reset progress ... by changing their status to false" (the
    README: "false to copy it again"), made with jq on the checkpoint a GitHub run that ended
    with errors left: the next run - a new pass, which looks at every artifact again - found
    the artifact's version unchanged and its copy present, and did not copy it. Only
    ``checkpoint mark --pending`` (which also forgets the version) did."""
    async with running_org(tmp_path / "git") as github:
        options = github_config(github, proxy.endpoint, buckets.dest, tmp_path / "w")
        options["include"] = ["alpha", "beta"]
        clock = github.clock
        rule = proxy.add_rule(Rule("access_denied", method="PUT", path="alpha/issues.json"))
        first = await run_github_backup(clock=clock, sleep=clock.sleep, **options)
        assert first.status == "completed_with_errors", first.errors
        (path,) = (tmp_path / "w" / "checkpoints").glob("*.checkpoint")
        bundle = "github/acme/beta.bundle"
        data = orjson.loads(path.read_bytes())
        assert data["files"][bundle] is True and bundle in data[VERSIONS]
        data["files"][bundle] = False  # jq '.files["github/acme/beta.bundle"] = false'
        path.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2))

        proxy.rules.remove(rule)
        puts = len(proxy.seen(method="PUT", path="beta.bundle"))
        second = await run_github_backup(clock=clock, sleep=clock.sleep, **options)
        assert second.status == "completed", second.errors
        assert len(proxy.seen(method="PUT", path="beta.bundle")) == puts + 1
        # what was not reset is not copied again (its version is unchanged)
        assert len(proxy.seen(method="PUT", path="alpha.bundle")) == 1


@pytest.mark.parametrize("command", [["show", "--json"], ["compact"]])
async def test_folding_a_crashed_run_s_journal_keeps_its_last_update(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: list[str]
) -> None:
    """``last_update`` is "when the checkpoint was last updated": after a crash, when the run
    last recorded progress. ``checkpoint show`` (a look) and ``compact`` fold the journal the
    crash left into the JSON file, and set ``last_update`` to the time of that fold: a stalled
    or dead job seemed to have progressed just now, in the output and in the file for good."""
    path = tmp_path / "x.checkpoint"
    monkeypatch.setattr(checkpoint_manager, "now_iso", lambda: "2024-04-06T13:15:30+00:00")
    manager = CheckpointManager(path)
    manager.open()
    state = CheckpointState.new(source_bucket="b", source_path="p", dest_bucket="d", config={})
    manager.flush(state)
    state.files["p/a"] = True
    await manager.save_async(state, Changes(files={"p/a": True}))  # a journal line
    manager.close()  # killed: no final compaction
    assert journal_path(path).exists()
    done = await run_cli_async(["checkpoint", *command, str(path)])
    assert done.returncode == 0, done.stderr
    assert not journal_path(path).exists()  # folded
    written = orjson.loads(path.read_bytes())
    assert written["files"] == {"p/a": True}
    assert written["last_update"] == "2024-04-06T13:15:30+00:00"
    if command[0] == "show":
        assert orjson.loads(done.stdout)["last_update"] == "2024-04-06T13:15:30+00:00"


@pytest.mark.parametrize("how", ["removed", "moved aside"])
async def test_a_checkpoint_removed_by_hand_after_a_crash_still_has_its_uploads_aborted(
    s3_server: S3Server, s3: Any, buckets: Buckets, tmp_path: Path, how: str
) -> None:
    """A checkpoint moved aside "to start over", as the messages say (or removed): after a
    crash, the upload in flight is recorded in the journal beside the file only. The next run
    started a new checkpoint and deleted that journal without a word, so nothing ever aborted the
    upload: its parts stayed billed at the destination for good."""
    path, upload = await crashed_mid_upload(s3, buckets, tmp_path)
    assert journal_path(path).exists()
    if how == "removed":
        path.unlink()
    else:
        path.rename(path.with_name(path.name + ".old"))
    settings = job_settings(s3_server, buckets, tmp_path)
    report = await run_backup(**settings, on_complete="delete")
    assert report.status == "completed"
    assert s3.list_multipart_uploads(Bucket=buckets.dest).get("Uploads", []) == [], upload


async def test_list_shows_a_directory_in_a_checkpoint_s_place(
    s3_server: S3Server, buckets: Buckets, tmp_path: Path
) -> None:
    """A directory where a job's checkpoint goes stops its runs ("cannot read checkpoint ...:
    Is a directory"); ``checkpoint list``, which lists "a file that cannot be read with the
    reason", left it out, as if there were no checkpoint at all."""
    base = tmp_path / "scratch"
    place = base / "checkpoints" / f"{buckets.source}_job.checkpoint"
    place.mkdir(parents=True)
    args = cli_args(s3_server.endpoint, base, buckets.source, buckets.dest)
    refused = await run_cli_async(["s3", "job", *args])
    assert refused.returncode == 2 and "Is a directory" in one_error_line(refused.stderr)
    listed = await run_cli_async(["checkpoint", "list", "--base-local-path", str(base)])
    assert listed.returncode == 0, listed.stderr
    assert f"{place}  UNREADABLE" in listed.stdout and "Is a directory" in listed.stdout
    assert place.is_dir()


def _break_etags(data: dict[str, Any]) -> None:
    data[ETAGS]["github/acme/alpha/repository.json"] = "W/abc"  # an ETag, not its pages


def _break_pages(data: dict[str, Any]) -> None:
    data[RELEASE_LISTING]["github/acme/alpha"]["pages"] = 5


def _break_rows(data: dict[str, Any]) -> None:
    data[RELEASE_LISTING]["github/acme/alpha"]["assets"] = [["github/acme/alpha/x"]]


def _break_size(data: dict[str, Any]) -> None:
    data[RELEASE_LISTING]["github/acme/alpha"]["assets"][0][1] = "70 KB"


def _break_failed(data: dict[str, Any]) -> None:
    data["github_ended_with_errors"]["failed"] = 1  # "how many", not which


@pytest.mark.parametrize(
    "edit", [_break_etags, _break_pages, _break_rows, _break_size, _break_failed]
)
async def test_a_hand_edited_github_etag_or_asset_record_is_read_again_not_a_crash(
    proxy: S3Proxy, buckets: Buckets, tmp_path: Path, edit: Any
) -> None:
    """An ETag or an asset's size edited by hand in the sections a GitHub checkpoint keeps
    them in (``github_etags``, ``github_release_listing``), in another shape than the
    engine's: every later run stopped with "unexpected ValueError: not enough values to
    unpack" (exit 3), until the file was repaired. What cannot be read is asked again."""
    async with running_org(tmp_path / "git") as github:
        options = github_config(github, proxy.endpoint, buckets.dest, tmp_path / "w")
        options["include"] = ["alpha", "beta"]
        clock = github.clock
        rule = proxy.add_rule(Rule("access_denied", method="PUT", path="alpha/issues.json"))
        first = await run_github_backup(clock=clock, sleep=clock.sleep, **options)
        assert first.status == "completed_with_errors", first.errors
        (path,) = (tmp_path / "w" / "checkpoints").glob("*.checkpoint")
        data = orjson.loads(path.read_bytes())
        edit(data)
        path.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2))
        proxy.rules.remove(rule)
        second = await run_github_backup(clock=clock, sleep=clock.sleep, **options)
        assert second.status == "completed", second.errors
        asset = "github/acme/alpha/releases/v1.0/tool-1.0.tar.gz"
        assert second.archived_checkpoint is not None
        assert asset in read_checkpoint(second.archived_checkpoint).files


async def test_a_hand_written_checkpoint_with_keys_relative_to_the_source_path_is_named(
    s3_server: S3Server,
    s3: Any,
    buckets: Buckets,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The spec's example lists ``files`` under paths that are not under its
    ``source_path``, as if relative to it; the run records and reads full keys. A checkpoint
    written that way marked nothing done, silently: every object was copied again, the
    operator's ``true`` ignored without a word. One warning now says why, and what to write."""
    put_parallel(s3, buckets.source, {"job/x.txt": b"x", "job/y.txt": b"y"})
    settings = job_settings(s3_server, buckets, tmp_path)
    path = checkpoint.checkpoint_path(
        base_local_path=tmp_path,
        source_bucket=buckets.source,
        source_path="job",
        checkpoint_dir=None,
    )
    path.parent.mkdir(parents=True)
    path.write_bytes(
        orjson.dumps(
            {
                "backup_id": "by-hand",
                "start_time": "2024-04-06T12:00:00",
                "last_update": "2024-04-06T13:15:30",
                "source_bucket": buckets.source,
                "source_path": "job",
                "dest_bucket": buckets.dest,
                "files": {"x.txt": True, "y.txt": False},
            }
        )
    )
    report = await run_backup(**settings)
    assert report.exit_code == 0, report.errors
    assert report.copied_files == 2  # full keys: neither is marked done
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    (line,) = [w for w in warnings if "full keys" in w]
    assert "none of the 2 files" in line and "'job/'" in line and "job/x.txt" in line


async def test_an_edit_made_while_a_run_holds_the_checkpoint_is_not_lost_without_a_word(
    faulty_proxy: FaultyProxy,
    s3: Any,
    buckets: Buckets,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A running backup rewrites the file (its compactions, its end): an edit made
    meanwhile (jq > FILE, an editor) is overwritten by the run's state. The README says so;
    the run said nothing. It now warns once, at the write that overwrites the edit."""
    put_parallel(s3, buckets.source, {f"job/{i:02d}": b"x" for i in range(12)})
    faulty_proxy.delay = 0.1
    settings: dict[str, Any] = {
        "source_bucket": buckets.source,
        "source_path": "job",
        "dest_bucket": buckets.dest,
        "base_local_path": tmp_path,
        "endpoint_url": faulty_proxy.endpoint,
        "concurrency": 1,
    }
    path = checkpoint.checkpoint_path(
        base_local_path=tmp_path,
        source_bucket=buckets.source,
        source_path="job",
        checkpoint_dir=None,
    )

    async def edit_meanwhile() -> None:
        while not path.exists():
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.3)
        data = orjson.loads(path.read_bytes())
        data["operator_note"] = "edited during the run"
        path.write_bytes(orjson.dumps(data))

    async with asyncio.TaskGroup() as tg:
        tg.create_task(edit_meanwhile())
        report = await run_backup(**settings)
    assert report.exit_code == 0, report.errors
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    (line,) = [w for w in warnings if "changed while this run" in w]
    assert str(path) in line and "once the run is over" in line
