"""Bug hunt of the listing side (listing.py, incremental.py, filters.py, --dry-run): each test
failed before the fix committed with it, against the real S3 server."""

from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from asyncbackup import BackupConfig, plan_backup, read_checkpoint, run_backup
from asyncbackup.checkpoint import CheckpointState
from asyncbackup.checkpoint_manager import CheckpointManager
from asyncbackup.errors import CheckpointMismatchError, ConfigError
from asyncbackup.verify import job_config, verify_state
from tests.conftest import Buckets, S3Server
from tests.helpers import cli_args, list_keys, open_test_client, run_cli
from tests.proxy import Rule, run_proxy


async def test_the_source_path_marker_with_dest_prefix_root_fails_without_a_request(
    s3_server: S3Server, buckets: Buckets, s3: Any, tmp_path: Path
) -> None:
    """``p/`` (the folder marker of SOURCE_PATH itself) maps to the empty key under
    ``--dest-prefix ''``: no object can be there. Before, it was sent as a PUT to the
    bucket's own URL (on S3, a CreateBucket) and failed with whatever came back, at every run;
    now it fails at once with what to do, and nothing is sent for it."""
    s3.put_object(Bucket=buckets.source, Key="p/", Body=b"")
    s3.put_object(Bucket=buckets.source, Key="p/a", Body=b"data")
    with run_proxy(s3_server.endpoint) as proxy:
        report = await run_backup(
            source_bucket=buckets.source,
            source_path="p",
            dest_bucket=buckets.dest,
            dest_prefix="",
            base_local_path=tmp_path / "stage",
            endpoint_url=proxy.endpoint,
        )
        at_bucket = proxy.seen(method="PUT", path=rf"^/{buckets.dest}/?$")
    assert at_bucket == [], "a PUT was sent to the destination bucket itself"
    assert list_keys(s3, buckets.dest) == ["a"]
    assert report.status == "completed_with_errors"
    assert list(report.errors) == ["p/"]
    assert "--dest-prefix" in report.errors["p/"] and "--exclude ''" in report.errors["p/"]
    # what the error says to do works
    again = await run_backup(
        source_bucket=buckets.source,
        source_path="p",
        dest_bucket=buckets.dest,
        dest_prefix="",
        exclude=("",),
        ignore_checkpoints=True,
        base_local_path=tmp_path / "stage",
        endpoint_url=s3_server.endpoint,
    )
    assert again.status == "completed" and again.errors == {}


async def test_verify_reports_a_source_path_marker_marked_done_under_dest_prefix_root(
    s3_server: S3Server, buckets: Buckets, s3: Any
) -> None:
    """A checkpoint that marks ``p/`` done with ``--dest-prefix ''`` (as runs did before the
    fix above): verify reports it missing rather than fail on its mapping."""
    s3.put_object(Bucket=buckets.source, Key="p/", Body=b"")
    s3.put_object(Bucket=buckets.source, Key="p/a", Body=b"data")
    s3.put_object(Bucket=buckets.dest, Key="a", Body=b"data")
    state = CheckpointState.new(
        source_bucket=buckets.source,
        source_path="p",
        dest_bucket=buckets.dest,
        config={"dest_prefix": ""},
    )
    state.files.update({"p/": True, "p/a": True})
    async with contextlib.AsyncExitStack() as stack:
        client = await open_test_client(stack, s3_server.endpoint)
        result = await verify_state(state, source_client=client, dest_client=client)
    assert result.missing == ["p/"] and result.different == []


async def test_a_dest_prefix_above_source_path_in_the_same_bucket_is_refused(
    s3_server: S3Server, buckets: Buckets, s3: Any, tmp_path: Path
) -> None:
    """Same bucket, ``--dest-prefix`` an ancestor of SOURCE_PATH (here the root): ``p/p/x``
    maps to ``p/x``, a source object, which the copy overwrote. Refused, like a prefix under
    SOURCE_PATH, and the source left as it was."""
    s3.put_object(Bucket=buckets.source, Key="p/x", Body=b"original")
    s3.put_object(Bucket=buckets.source, Key="p/p/x", Body=b"nested")
    with contextlib.suppress(ConfigError):
        await run_backup(
            source_bucket=buckets.source,
            source_path="p",
            dest_bucket=buckets.source,
            dest_prefix="",
            base_local_path=tmp_path / "stage",
            endpoint_url=s3_server.endpoint,
        )
    body = s3.get_object(Bucket=buckets.source, Key="p/x")["Body"].read()
    assert body == b"original", "a copy overwrote a source object"
    for source_path, dest_prefix in (("p", ""), ("a/b", "a"), ("a/b", "a/")):
        with pytest.raises(ConfigError, match="--dest-prefix outside SOURCE_PATH"):
            BackupConfig(
                source_bucket="b",
                source_path=source_path,
                dest_bucket="b",
                dest_prefix=dest_prefix,
                base_local_path=tmp_path,
            )
    # beside SOURCE_PATH, or in another bucket: accepted
    BackupConfig(
        source_bucket="b", source_path="a/b", dest_bucket="b", dest_prefix="a/c",
        base_local_path=tmp_path,
    )  # fmt: skip
    BackupConfig(
        source_bucket="b", source_path="a/b", dest_bucket="c", dest_prefix="",
        base_local_path=tmp_path,
    )  # fmt: skip


def test_the_job_of_a_checkpoint_between_two_endpoints_with_one_bucket_name() -> None:
    """``checkpoint verify`` rebuilds the job's key mapping from the checkpoint: a job from
    one endpoint's bucket to the same name on another (no --dest-prefix) is a valid job, not
    copies onto the source (which the rebuilt job, without the endpoints, was refused as)."""
    state = CheckpointState.new(
        source_bucket="data",
        source_path="p",
        dest_bucket="data",
        config={
            "source_endpoint_url": "http://127.0.0.1:9000",
            "dest_endpoint_url": "http://127.0.0.1:9001",
            "dest_prefix": None,
        },
    )
    job = job_config(state)
    assert job.dest_key("p/a") == "p/a" and job.dest_list_prefix == "p/"


def test_a_dry_run_report_in_a_missing_directory_is_refused_before_the_listing(
    s3_server: S3Server, buckets: Buckets, s3: Any, tmp_path: Path
) -> None:
    """``--report`` in a missing directory is refused before the run starts (README), the
    dry run's too: before, it listed the whole source, then failed on the write with
    'unexpected FileNotFoundError' (exit 3)."""
    s3.put_object(Bucket=buckets.source, Key="data/a", Body=b"a")
    report = tmp_path / "missing" / "plan.json"
    args = cli_args(s3_server.endpoint, tmp_path / "stage", buckets.source, buckets.dest)
    result = run_cli(["data", *args, "--dry-run", "--report", str(report)])
    assert result.returncode == 2, result.stderr
    assert "--report" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "would copy" not in result.stdout  # refused before listing anything


async def test_the_source_bucket_named_through_another_spelling_of_its_endpoint_is_refused(
    s3_server: S3Server, buckets: Buckets, s3: Any, tmp_path: Path
) -> None:
    """The same-bucket check compared the endpoint URLs as typed: a trailing ``/`` (or an
    upper-case host, or ``:80``) made the source bucket a different one, and the copies of
    ``--dest-prefix ''`` overwrote the source objects."""
    s3.put_object(Bucket=buckets.source, Key="p/x", Body=b"original")
    s3.put_object(Bucket=buckets.source, Key="p/p/x", Body=b"nested")
    with contextlib.suppress(ConfigError):
        await run_backup(
            source_bucket=buckets.source,
            source_path="p",
            dest_bucket=buckets.source,
            dest_prefix="",
            base_local_path=tmp_path / "stage",
            source_endpoint_url=s3_server.endpoint,
            dest_endpoint_url=s3_server.endpoint + "/",
        )
    body = s3.get_object(Bucket=buckets.source, Key="p/x")["Body"].read()
    assert body == b"original", "a copy overwrote a source object"
    for dest in ("http://LOCALHOST:80/", "http://localhost"):
        with pytest.raises(ConfigError, match="--dest-prefix outside SOURCE_PATH"):
            BackupConfig(
                source_bucket="b",
                source_path="p",
                dest_bucket="b",
                base_local_path=tmp_path,
                endpoint_url="http://localhost:80",
                dest_endpoint_url=dest,
            )
    BackupConfig(  # another port: another server
        source_bucket="b", source_path="p", dest_bucket="b", base_local_path=tmp_path,
        endpoint_url="http://localhost:80", dest_endpoint_url="http://localhost:81",
    )  # fmt: skip


async def test_a_resume_of_a_job_now_refused_says_the_prefix_changed(
    s3_server: S3Server, buckets: Buckets, tmp_path: Path
) -> None:
    """A checkpoint left by a job the same-bucket check now refuses (``--dest-prefix ''`` in
    the source bucket), resumed with a prefix beside SOURCE_PATH: the resume is refused for
    its other prefix (what to do: the same one, or --ignore-checkpoints), not with the
    same-bucket error of a job this run is not."""
    options: dict[str, Any] = {
        "source_bucket": buckets.source,
        "source_path": "p",
        "dest_bucket": buckets.source,
        "dest_prefix": "copies",
        "base_local_path": tmp_path / "stage",
        "endpoint_url": s3_server.endpoint,
    }
    state = CheckpointState.new(
        source_bucket=buckets.source,
        source_path="p",
        dest_bucket=buckets.source,
        config={"dest_prefix": "", "include": [], "exclude": []},
    )
    path = tmp_path / "stage" / "checkpoints" / f"{buckets.source}_p.checkpoint"
    path.parent.mkdir(parents=True)
    manager = CheckpointManager(path)
    manager.flush(state)
    manager.close()
    with pytest.raises(CheckpointMismatchError, match="--ignore-checkpoints"):
        await plan_backup(**options)
    assert (await plan_backup(**options, ignore_checkpoints=True)).listed_files == 0


def test_a_listing_that_fails_midway_stops_the_run_as_fatal(
    s3_server: S3Server, buckets: Buckets, s3: Any, tmp_path: Path
) -> None:
    """A listing page refused for good after the copying started: the run stopped midway,
    its checkpoint valid (exit 3, README), not 'finished with failed objects in the
    checkpoint's errors' (exit 1, with none there), and the line says what failed."""
    with ThreadPoolExecutor(8) as pool:
        keys = [f"p/{i:04d}" for i in range(150)]
        list(pool.map(lambda k: s3.put_object(Bucket=buckets.source, Key=k, Body=b"x"), keys))
    with run_proxy(s3_server.endpoint) as proxy:
        proxy.add_rule(Rule("access_denied", method="GET", query="continuation-token"))
        args = cli_args(proxy.endpoint, tmp_path / "stage", buckets.source, buckets.dest)
        # 16 in flight: some copied before the refusal (all 100 of the first page at once,
        # at the default 128, none is done on moto by then)
        result = run_cli(["p", *args, "--list-streams", "1", "--concurrency", "16"])
    assert result.returncode == 3, result.stderr
    assert "cannot list the source bucket" in result.stderr and "run again" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    state = read_checkpoint(tmp_path / "stage" / "checkpoints" / f"{buckets.source}_p.checkpoint")
    assert state.errors == {} and 0 < state.processed_files <= 100


async def test_the_source_bucket_reached_through_the_environment_s_endpoint_is_refused(
    s3_server: S3Server,
    buckets: Buckets,
    s3: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The source's endpoint from ``AWS_ENDPOINT_URL`` (or a profile's ``endpoint_url``),
    the destination's from its flag, one store: the check saw None and a URL, two stores,
    and the copies of ``--dest-prefix ''`` overwrote the source objects. Checked again with
    the endpoints the clients use, before anything is written."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint)
    s3.put_object(Bucket=buckets.source, Key="p/x", Body=b"original")
    s3.put_object(Bucket=buckets.source, Key="p/p/x", Body=b"nested")
    with pytest.raises(ConfigError, match="--dest-prefix outside SOURCE_PATH"):
        await run_backup(
            source_bucket=buckets.source,
            source_path="p",
            dest_bucket=buckets.source,
            dest_prefix="",
            base_local_path=tmp_path / "stage",
            dest_endpoint_url=s3_server.endpoint,
        )
    body = s3.get_object(Bucket=buckets.source, Key="p/x")["Body"].read()
    assert body == b"original", "a copy overwrote a source object"
    assert list_keys(s3, buckets.source) == ["p/p/x", "p/x"]


def test_one_bucket_name_through_two_profiles_is_not_refused_before_their_endpoints_are_known(
    tmp_path: Path,
) -> None:
    """Two profiles may name two stores (their ``endpoint_url``): the same bucket name on
    each is a valid job, refused before as copies onto the source."""
    job = BackupConfig(
        source_bucket="data",
        source_path="p",
        dest_bucket="data",
        base_local_path=tmp_path,
        source_profile="src",
        dest_profile="dst",
    )
    assert job.dest_key("p/a") == "p/a"
