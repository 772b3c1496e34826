"""Review of ``asyncbackup checkpoint ...``: what an operator hits, each test a bug found.

Every command runs in its own process against the S3 server (or a loopback proxy in front of
it); the checkpoints are written as a run writes them (``CheckpointState`` through
``write_atomic``), so each test needs no full backup.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson

from asyncbackup import run_github_backup
from asyncbackup.atomicfile import write_atomic
from asyncbackup.checkpoint import CheckpointState, read_checkpoint
from asyncbackup.checkpoint_identity import endpoint_for_checkpoint
from asyncbackup.checkpoint_lock import CheckpointLock
from asyncbackup.checkpoint_tool import REFETCH_NOTES
from asyncbackup.github.listing import ETAGS, VERSIONS
from tests.conftest import Buckets, S3Server
from tests.faulty_proxy import run_cli_async
from tests.integration.github_org import config as github_config
from tests.integration.github_org import running_org
from tests.proxy import Rule, S3Proxy

OBJECTS = {f"data/f{i}.bin": bytes(10 + i) for i in range(5)}


def _write_checkpoint(
    path: Path,
    buckets: Buckets,
    files: dict[str, bool],
    *,
    errors: dict[str, str] | None = None,
    **config: Any,
) -> CheckpointState:
    state = CheckpointState.new(
        source_bucket=buckets.source,
        source_path="data",
        dest_bucket=buckets.dest,
        config={"base_local_path": str(path.parent.parent), **config},
    )
    state.files = dict(files)
    state.errors = dict(errors or {})
    state.total_files = len(files)
    state.processed_files = sum(files.values())
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, state.to_json())
    return state


def _copied(s3: Any, buckets: Buckets) -> dict[str, bool]:
    for key, body in OBJECTS.items():
        s3.put_object(Bucket=buckets.source, Key=key, Body=body)
        s3.put_object(Bucket=buckets.dest, Key=key, Body=body)
    return dict.fromkeys(OBJECTS, True)


async def test_verify_listing_refused_midway_is_one_clear_line(
    proxy: S3Proxy, s3: Any, buckets: Buckets, tmp_path: Path
) -> None:
    """The bucket check passes, then the job's listing is refused: the tool's own message
    ("cannot list the ... bucket ...; nothing was verified"), not an unexpected
    ExceptionGroup from the task group the two listings run in."""
    path = tmp_path / "checkpoints" / f"{buckets.source}_data.checkpoint"
    _write_checkpoint(path, buckets, _copied(s3, buckets))
    snapshot = path.read_bytes()
    # check_bucket lists one key (max-keys=1); the job's listing pages of 100, then 1,000
    proxy.add_rule(Rule("access_denied", method="GET", path=buckets.dest, query="max-keys=10"))
    refused = await run_cli_async(
        ["checkpoint", "verify", str(path), "--endpoint-url", proxy.endpoint]
    )
    assert refused.returncode == 3, refused.stderr
    assert refused.stderr.count("\n") == 1, refused.stderr
    assert "cannot list the destination bucket" in refused.stderr
    assert "nothing was verified" in refused.stderr and "--dest-profile" in refused.stderr
    assert "ExceptionGroup" not in refused.stderr and "unexpected" not in refused.stderr
    assert path.read_bytes() == snapshot


async def test_verify_goes_to_the_endpoint_the_checkpoint_recorded(
    s3_server: S3Server, s3: Any, buckets: Buckets, tmp_path: Path
) -> None:
    """A backup to a non-AWS store records its endpoint; ``verify FILE`` without endpoint
    flags checks the copies there, not wherever the environment points (here a dead loopback
    port standing for AWS or another store)."""
    path = tmp_path / "checkpoints" / f"{buckets.source}_data.checkpoint"
    recorded = endpoint_for_checkpoint(s3_server.endpoint)
    _write_checkpoint(
        path,
        buckets,
        _copied(s3, buckets),
        source_endpoint_url=recorded,
        dest_endpoint_url=recorded,
    )
    env = dict(os.environ, AWS_ENDPOINT_URL="http://127.0.0.1:9")
    checked = await run_cli_async(["checkpoint", "verify", str(path)], env=env)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"OK: {len(OBJECTS)} files marked done; 0 missing" in checked.stdout
    # A flag still wins (a proxy in front of the same store, say): here the dead port.
    flagged = await run_cli_async(
        ["checkpoint", "verify", str(path), "--dest-endpoint-url", "http://127.0.0.1:9"]
    )
    assert flagged.returncode == 2, flagged.stdout + flagged.stderr
    assert "destination endpoint" in flagged.stderr


async def test_errors_and_show_escape_control_characters_of_the_code(
    buckets: Buckets, tmp_path: Path
) -> None:
    """The code column comes from the server (or a hand edit) like the message: an escape
    sequence in it must not reach the terminal raw, nor a stray column in ``errors``."""
    path = tmp_path / "checkpoints" / f"{buckets.source}_data.checkpoint"
    evil = "\x1b]0;owned\x07Denied"
    _write_checkpoint(
        path,
        buckets,
        {"data/a": False, "data/b\tc\nd": False},
        errors={"data/a": f"{evil}: no", "data/b\tc\nd": "AccessDenied: x\ty\nz"},
    )
    errors = await run_cli_async(["checkpoint", "errors", str(path)])
    assert errors.returncode == 0, errors.stderr
    assert "\x1b" not in errors.stdout and "\x07" not in errors.stdout
    rows = [line.split("\t") for line in errors.stdout.splitlines()]
    assert rows == [
        ["data/a", "\\x1b]0;owned\\x07Denied", "no"],
        ["data/b\\tc\\nd", "AccessDenied", "x\\ty\\nz"],
    ]
    shown = await run_cli_async(["checkpoint", "show", str(path)])
    assert shown.returncode == 0, shown.stderr
    assert "\x1b" not in shown.stdout and "\x07" not in shown.stdout
    assert "\\x1b]0;owned\\x07Denied" in shown.stdout
    # --json keeps the text exact: JSON escapes it itself
    as_json = orjson.loads(
        (await run_cli_async(["checkpoint", "errors", str(path), "--json"])).stdout
    )
    assert as_json[0]["code"] == evil


async def test_mark_pending_copies_an_unchanged_github_artifact_again(
    proxy: S3Proxy, buckets: Buckets, tmp_path: Path
) -> None:
    """``mark --pending`` promises "copied again". On a GitHub checkpoint the next run found
    the artifact's version (``github_versions``) unchanged and its copy present, so it marked
    it done again without copying it: the edit did nothing."""
    async with running_org(tmp_path / "git") as github:
        options = github_config(github, proxy.endpoint, buckets.dest, tmp_path / "w")
        options["include"] = ["alpha", "beta"]
        clock = github.clock
        # alpha's issues cannot be written: the run ends with an error, the checkpoint stays
        rule = proxy.add_rule(Rule("access_denied", method="PUT", path="alpha/issues.json"))
        first = await run_github_backup(clock=clock, sleep=clock.sleep, **options)
        assert first.status == "completed_with_errors", first.errors
        (path,) = (tmp_path / "w" / "checkpoints").glob("*.checkpoint")
        bundle = "github/acme/beta.bundle"
        assert read_checkpoint(path).files[bundle] is True

        marked = await run_cli_async(["checkpoint", "mark", str(path), "--pending", bundle])
        assert marked.returncode == 0, marked.stderr
        assert "marked 1 keys pending (1 changed)" in marked.stdout
        state = read_checkpoint(path)
        assert state.files[bundle] is False
        assert bundle not in state.extra[VERSIONS]
        assert REFETCH_NOTES == (VERSIONS, ETAGS)  # the tool's names for the engine's notes

        proxy.rules.remove(rule)
        puts = len(proxy.seen(method="PUT", path="beta.bundle"))
        second = await run_github_backup(clock=clock, sleep=clock.sleep, **options)
        assert second.status == "completed", second.errors
        assert len(proxy.seen(method="PUT", path="beta.bundle")) == puts + 1
        # what was not marked is not copied again (its version is unchanged)
        assert len(proxy.seen(method="PUT", path="alpha.bundle")) == 1


async def test_mark_a_key_with_glob_characters_marks_that_key_not_another(
    buckets: Buckets, tmp_path: Path
) -> None:
    """S3 keys hold ``[``, ``*`` and ``?``. Pasting such a key from ``checkpoint errors`` into
    ``mark --done`` took it for a glob: ``report[1].csv`` marked ``report1.csv`` done - never
    copied, and skipped by every run after - and left the failed key as it was."""
    path = tmp_path / "checkpoints" / f"{buckets.source}_data.checkpoint"
    odd, other = "data/report[1].csv", "data/report1.csv"
    starry = "data/what?*.txt"
    _write_checkpoint(
        path,
        buckets,
        {odd: False, other: False, starry: False, "data/whatnot.txt": False},
        errors={odd: "AccessDenied: Access Denied"},
    )
    (row,) = (await run_cli_async(["checkpoint", "errors", str(path)])).stdout.splitlines()
    key = row.split("\t")[0]
    assert key == odd
    marked = await run_cli_async(["checkpoint", "mark", str(path), "--done", key, starry])
    assert marked.returncode == 0, marked.stderr
    assert "marked 2 keys done (2 changed), cleared 1 errors" in marked.stdout
    state = read_checkpoint(path)
    assert state.files == {odd: True, other: False, starry: True, "data/whatnot.txt": False}
    assert not state.errors
    # a pattern that is no key is still a glob
    globbed = await run_cli_async(["checkpoint", "mark", str(path), "--done", "data/report[0-9]*"])
    assert globbed.returncode == 0, globbed.stderr
    assert read_checkpoint(path).files[other] is True


def _run_into_closed_pipe(args: list[str]) -> tuple[int, str]:
    """The tool with its stdout a pipe nobody reads any more (``| head -1`` once it has its
    line): every write gets EPIPE."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "asyncbackup", *args],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )
    finally:
        os.close(write_end)
    return done.returncode, done.stderr


def test_output_to_a_reader_that_went_away_is_no_error(buckets: Buckets, tmp_path: Path) -> None:
    """``checkpoint errors FILE | head -1``: the reader has what it wanted. The tool said
    "error: unexpected BrokenPipeError ..." and exited 3 (or 120 for a short output), which
    fails a script under ``set -o pipefail``; it now stops quietly with its own exit code."""
    path = tmp_path / "checkpoints" / f"{buckets.source}_data.checkpoint"
    many = {f"data/k{i:05d}": False for i in range(3000)}
    _write_checkpoint(path, buckets, many, errors=dict.fromkeys(many, "AccessDenied: no"))
    for args in (["errors", str(path)], ["errors", str(path), "--json"], ["show", str(path)]):
        code, stderr = _run_into_closed_pipe(["checkpoint", *args])
        assert (code, stderr) == (0, ""), args


async def test_verify_mark_pending_refused_by_a_run_still_reports_what_it_found(
    s3_server: S3Server, s3: Any, buckets: Buckets, tmp_path: Path
) -> None:
    """A run took the checkpoint while ``verify --mark-pending`` listed (minutes, for a large
    job): the marking is refused, and the verification's findings were thrown away with it -
    nothing on stdout. They are printed now, before the one-line refusal."""
    path = tmp_path / "checkpoints" / f"{buckets.source}_data.checkpoint"
    _write_checkpoint(path, buckets, _copied(s3, buckets))
    s3.delete_object(Bucket=buckets.dest, Key="data/f0.bin")
    snapshot = path.read_bytes()
    where = ["--endpoint-url", s3_server.endpoint, "--mark-pending"]
    lock = CheckpointLock(path)
    lock.acquire()
    try:
        text = await run_cli_async(["checkpoint", "verify", str(path), *where])
        as_json = await run_cli_async(["checkpoint", "verify", str(path), *where, "--json"])
    finally:
        lock.release()
    assert text.returncode == 2, text.stderr
    assert "missing    data/f0.bin" in text.stdout and "FAILED" in text.stdout
    assert "in use by a running backup" in text.stderr and text.stderr.count("\n") == 1
    assert as_json.returncode == 2, as_json.stderr
    found = orjson.loads(as_json.stdout)
    assert found["missing"] == ["data/f0.bin"] and found["marked_pending"] == []
    assert path.read_bytes() == snapshot
