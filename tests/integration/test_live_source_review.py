"""Review: the source bucket changes while a backup job is in progress (a live bucket).

Objects deleted, overwritten or added between the listing and the copy, and between the runs
of one job (resume from the checkpoint): what ends up at the destination, what the checkpoint
counts, and whether the job completes when it should.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

from asyncbackup import BackupReport
from asyncbackup.checkpoint import load_checkpoint
from asyncbackup.progress import NullObserver
from tests.conftest import Buckets
from tests.helpers import backup_data, bucket_digest, list_keys, put_objects
from tests.proxy import Rule, S3Proxy


def _replace_before(
    proxy: S3Proxy, s3: Any, bucket: str, key: str, body: bytes, method: str, path: str = ""
) -> None:
    """Replace the source object ``key`` with ``body`` just before the proxy forwards the next
    ``method`` request whose path matches the regex ``path`` (default: the key's own)."""
    proxy.add_rule(
        Rule(
            None,
            method=method,
            path=path or rf"/{key}$",
            times=1,
            action=lambda: s3.put_object(Bucket=bucket, Key=key, Body=body),
        )
    )


def _checkpoint(tmp_path: Path, report: BackupReport) -> Any:
    return load_checkpoint(report.checkpoint_path).state


def _assert_counts(report: BackupReport) -> None:
    """What any report of the job must hold: no more done than there is."""
    assert report.processed_files <= report.total_files, report
    assert report.processed_bytes <= report.total_bytes, report


@pytest.mark.parametrize(
    "options",
    [{}, {"direct": True}, {"processes": 2}, {"fast_path": False}, {"big": True}],
    ids=["staged", "direct", "processes", "botocore", "multipart"],
)
async def test_an_object_deleted_after_it_was_listed_is_left_out_and_the_job_completes(
    proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path, options: dict[str, Any]
) -> None:
    """Deleted between its listing and its copy: a HEAD confirms the copy's NoSuchKey (or a
    multipart source's 404), and the object leaves the job as the next listing would leave it
    out: the run completes, exit 0, the checkpoint archived without it. It was an error (exit
    1) until the next run."""
    big = options.pop("big", False)
    size = 6 * 1024 * 1024 if big else 100
    put_objects(s3, buckets.source, {f"data/k{i}": bytes([i]) * size for i in range(4)})
    if big:  # copied in parts: the 404 of a part's ranged GET
        options["multipart_threshold"] = options["part_size"] = 5 * 1024 * 1024
    proxy.add_rule(
        Rule(
            None,
            method="PUT" if options.get("direct") else "GET",
            path=rf"^/{buckets.dest if options.get('direct') else buckets.source}/data/k1$",
            times=1,
            action=lambda: s3.delete_object(Bucket=buckets.source, Key="data/k1"),
        )
    )
    report = await backup_data(buckets, tmp_path, proxy.endpoint, concurrency=2, **options)
    assert report.status == "completed" and report.exit_code == 0, report.errors
    assert report.source_deleted_files == 1 and report.errors == {}
    assert report.copied_files == 3
    assert (report.processed_files, report.total_files) == (3, 3)
    assert report.total_bytes == report.processed_bytes == 3 * size
    assert report.archived_checkpoint is not None
    assert "data/k1" not in load_checkpoint(report.archived_checkpoint).state.files
    heads = [r for r in proxy.requests if r.method == "HEAD" and r.path.endswith("/data/k1")]
    assert heads, "the deletion was not confirmed by a HEAD"
    assert bucket_digest(s3, buckets.source) == bucket_digest(s3, buckets.dest)
    assert list_keys(s3, buckets.dest) == [f"data/k{i}" for i in (0, 2, 3)]


async def test_a_no_such_key_the_head_does_not_confirm_is_an_error(
    proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path
) -> None:
    """A NoSuchKey answered for an object that is still there (a server's or a proxy's fault):
    not taken for a deletion. The object stays in the job, an error; the next run copies it."""
    put_objects(s3, buckets.source, {f"data/k{i}": bytes([i]) * 100 for i in range(3)})
    proxy.add_rule(Rule("no_such_key", method="GET", path=r"/data/k1$"))
    first = await backup_data(buckets, tmp_path, proxy.endpoint, concurrency=2)
    assert first.status == "completed_with_errors" and first.source_deleted_files == 0
    assert first.errors["data/k1"].startswith("NoSuchKey")
    assert (first.processed_files, first.total_files) == (2, 3)
    proxy.clear_faults()
    second = await backup_data(buckets, tmp_path, proxy.endpoint, concurrency=2)
    assert second.status == "completed" and second.copied_files == 1
    assert bucket_digest(s3, buckets.source) == bucket_digest(s3, buckets.dest)


@pytest.mark.parametrize(
    "options",
    [{}, {"skip_existing": True}, {"direct": True}, {"processes": 2}],
    ids=["staged", "skip-existing", "direct", "processes"],
)
async def test_done_files_since_deleted_from_the_source_are_not_counted_done(
    proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path, options: dict[str, Any]
) -> None:
    """Run 1 copies four files and fails one; two of the four copied are then deleted from
    the source. Run 2 lists three files: the job's counts are of those three (it said "5 of 3
    files done", and the checkpoint kept the deleted keys for ever)."""
    put_objects(s3, buckets.source, {f"data/k{i}": bytes([i]) * 100 for i in range(5)})
    method = "PUT" if options.get("direct") else "GET"
    proxy.add_rule(Rule("internal", method=method, path=r"/data/k4$"))
    first = await backup_data(buckets, tmp_path, proxy.endpoint, max_attempts=1, **options)
    assert first.status == "completed_with_errors" and first.processed_files == 4
    proxy.clear_faults()
    s3.delete_object(Bucket=buckets.source, Key="data/k0")
    s3.delete_object(Bucket=buckets.source, Key="data/k1")
    second = await backup_data(buckets, tmp_path, proxy.endpoint, **options)
    assert second.status == "completed", second.errors
    assert second.copied_files == 1 and second.skipped_files == 2
    assert (second.total_files, second.total_bytes) == (3, 300)
    assert (second.processed_files, second.processed_bytes) == (3, 300)
    assert second.archived_checkpoint is not None
    archived = load_checkpoint(second.archived_checkpoint).state
    assert archived.processed_files == archived.total_files == 3
    assert archived.files == {"data/k2": True, "data/k3": True, "data/k4": True}
    assert bucket_digest(s3, buckets.source) == {
        key: digest
        for key, digest in bucket_digest(s3, buckets.dest).items()
        if key in archived.files
    }


async def test_a_stopped_run_then_a_deleted_prefix_then_the_resume_counts_what_is_left(
    proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path
) -> None:
    """Stopped after a few copies (the listing not finished); a whole folder is deleted from
    the source; the resume completes, and counts only what the source still has."""
    objects = {f"data/{folder}/k{i}": bytes([i]) * 50 for folder in "abc" for i in range(4)}
    put_objects(s3, buckets.source, objects)
    stop = asyncio.Event()

    class StopAfterFour(NullObserver):
        done = 0

        def on_done(self, key: str, size: int) -> None:
            self.done += 1
            if self.done == 4:
                stop.set()

    first = await backup_data(
        buckets, tmp_path, proxy.endpoint, concurrency=1, observer=StopAfterFour(), stop=stop
    )
    assert first.status == "stopped" and first.copied_files >= 4
    for key in list_keys(s3, buckets.source, "data/a/"):
        s3.delete_object(Bucket=buckets.source, Key=key)
    second = await backup_data(buckets, tmp_path, proxy.endpoint, concurrency=2)
    assert second.status == "completed", second.errors
    assert (second.total_files, second.total_bytes) == (8, 400)
    assert (second.processed_files, second.processed_bytes) == (8, 400)
    for key in list_keys(s3, buckets.source):
        assert s3.get_object(Bucket=buckets.dest, Key=key)["Body"].read() == objects[key]


@pytest.mark.parametrize("new_size", [300, 40], ids=["grown", "shrunk"])
async def test_an_object_replaced_between_listing_and_get_is_copied_whole_and_counted(
    proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path, new_size: int
) -> None:
    """Listed at 100 bytes, replaced by another size before its GET: whichever version is
    copied, the copy is whole and the job's bytes done are its total when it completes."""
    put_objects(s3, buckets.source, {"data/a": b"a" * 100, "data/b": b"b" * 100})
    new = os.urandom(new_size)
    _replace_before(proxy, s3, buckets.source, "data/a", new, "GET")
    report = await backup_data(buckets, tmp_path, proxy.endpoint)
    copied = s3.get_object(Bucket=buckets.dest, Key="data/a")["Body"].read()
    assert copied in (new, b"a" * 100)
    if report.status == "completed":
        # it said "400 B of 200 B" done: the total is what the job copies
        _assert_counts(report)
        assert report.processed_bytes == report.total_bytes == 100 + len(copied)
        assert report.archived_checkpoint is not None
        archived = load_checkpoint(report.archived_checkpoint).state
        assert archived.processed_bytes == archived.total_bytes
    else:
        assert set(report.errors) == {"data/a"}
    again = await backup_data(buckets, tmp_path, proxy.endpoint)
    assert again.status == "completed"
    assert s3.get_object(Bucket=buckets.dest, Key="data/a")["Body"].read() == new


MiB = 1024 * 1024


async def test_an_object_replaced_during_its_multipart_download_is_copied_as_one_version(
    proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path
) -> None:
    """The body of a large object is cut short; before the ranged GET that resumes it, the
    object is replaced. The resume is pinned to the first version (If-Match), so it fails and
    the object is copied again, whole, from the new version: never a mix of the two."""
    old, new = os.urandom(11 * MiB), os.urandom(13 * MiB)
    put_objects(s3, buckets.source, {"data/big": old, "data/small": b"s"})
    proxy.add_rule(Rule("truncate", method="GET", path=r"/data/big$", times=1))
    _replace_before(proxy, s3, buckets.source, "data/big", new, "GET")
    report = await backup_data(
        buckets, tmp_path, proxy.endpoint, multipart_threshold=5 * MiB, part_size=5 * MiB
    )
    copied = s3.get_object(Bucket=buckets.dest, Key="data/big")["Body"].read()
    assert report.status == "completed", report.errors
    assert copied == new
    assert report.processed_bytes == report.total_bytes == len(new) + 1
    resumed = [r for r in proxy.seen(method="GET", path=r"/data/big$") if r.range]
    assert resumed and resumed[0].if_match and resumed[0].status == 412  # pinned: refused
    assert s3.list_multipart_uploads(Bucket=buckets.dest).get("Uploads", []) == []


async def test_a_small_object_grown_past_the_memory_limit_fails_then_is_copied(
    proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path
) -> None:
    put_objects(s3, buckets.source, {"data/a": b"a" * 100})
    new = os.urandom(2 * MiB)
    _replace_before(proxy, s3, buckets.source, "data/a", new, "GET")
    first = await backup_data(buckets, tmp_path, proxy.endpoint)
    assert first.status == "completed_with_errors" and "ObjectChanged" in first.errors["data/a"]
    assert list_keys(s3, buckets.dest) == []
    second = await backup_data(buckets, tmp_path, proxy.endpoint)
    assert second.status == "completed" and second.copied_files == 1
    assert second.processed_bytes == second.total_bytes == len(new)
    assert s3.get_object(Bucket=buckets.dest, Key="data/a")["Body"].read() == new


@pytest.mark.parametrize("size", [200, 11 * MiB], ids=["copy-object", "multipart-copy"])
async def test_direct_copy_of_an_object_replaced_mid_copy_is_never_done_then_copied(
    proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path, size: int
) -> None:
    if size > 5 * MiB:
        from tests.helpers import put_multipart

        put_multipart(s3, buckets.source, "data/a", [6 * MiB, 5 * MiB])
    else:
        put_objects(s3, buckets.source, {"data/a": os.urandom(size)})
    new = os.urandom(size + 7)
    # replaced before the first copy request of the object reaches the server
    _replace_before(proxy, s3, buckets.source, "data/a", new, "PUT", rf"^/{buckets.dest}/data/a$")
    first = await backup_data(buckets, tmp_path, proxy.endpoint, direct=True)
    assert first.status == "completed_with_errors", first
    assert set(first.errors) == {"data/a"}
    state = load_checkpoint(first.checkpoint_path).state
    assert state.files["data/a"] is False
    assert s3.list_multipart_uploads(Bucket=buckets.dest).get("Uploads", []) == []
    second = await backup_data(buckets, tmp_path, proxy.endpoint, direct=True)
    assert second.status == "completed", second.errors
    assert s3.get_object(Bucket=buckets.dest, Key="data/a")["Body"].read() == new
    assert second.processed_bytes == second.total_bytes == len(new)


async def test_a_key_deleted_and_recreated_as_a_folder_between_runs(
    proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path
) -> None:
    """``data/x`` is copied (and its staged file kept), then replaced in the source by a
    folder: the marker ``data/x/`` and ``data/x/y``. The next run copies both."""
    put_objects(s3, buckets.source, {"data/x": b"file", "data/z": b"z"})
    proxy.add_rule(Rule("internal", method="GET", path=r"/data/z$"))
    first = await backup_data(buckets, tmp_path, proxy.endpoint, cleanup=False, max_attempts=1)
    assert first.status == "completed_with_errors"
    proxy.clear_faults()
    s3.delete_object(Bucket=buckets.source, Key="data/x")
    put_objects(s3, buckets.source, {"data/x/": b"", "data/x/y": b"inner"})
    second = await backup_data(buckets, tmp_path, proxy.endpoint, cleanup=False)
    assert second.status == "completed", second.errors
    assert (second.processed_files, second.total_files) == (3, 3)
    for key in ("data/x/", "data/x/y", "data/z"):
        source = s3.get_object(Bucket=buckets.source, Key=key)["Body"].read()
        assert s3.get_object(Bucket=buckets.dest, Key=key)["Body"].read() == source


@pytest.mark.parametrize("options", [{}, {"skip_existing": True}], ids=["plain", "skip-existing"])
async def test_keys_added_behind_and_ahead_of_the_listing_position(
    proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path, options: dict[str, Any]
) -> None:
    """While the second page of the listing is asked for, a key is added before the keys
    already listed and one after: the run counts what it listed (the one behind is for the
    next run: a listing is no snapshot), and the next run copies every key."""
    objects = {f"data/m{i:04d}": bytes([i % 256]) * 10 for i in range(150)}
    put_objects(s3, buckets.source, objects)
    added = {"data/a-behind": b"behind", "data/z-ahead": b"ahead"}
    proxy.add_rule(
        Rule(
            None,
            method="GET",
            query="continuation-token",
            times=1,
            action=lambda: put_objects(s3, buckets.source, added),
        )
    )
    first = await backup_data(buckets, tmp_path, proxy.endpoint, list_streams=1, **options)
    assert first.status == "completed", first.errors
    assert first.processed_files == first.total_files == first.copied_files
    assert first.processed_bytes == first.total_bytes
    assert "data/z-ahead" in list_keys(s3, buckets.dest)
    listed_first = first.total_files
    again = await backup_data(buckets, tmp_path, proxy.endpoint, list_streams=1, **options)
    assert again.status == "completed"
    assert again.total_files == again.processed_files == 152
    # a completed job's checkpoint is archived: the next run starts over, copying only
    # what the destination lacks with --skip-existing
    assert again.copied_files == (152 - listed_first if options else 152)
    assert bucket_digest(s3, buckets.source) == bucket_digest(s3, buckets.dest)


async def test_a_streamed_put_whose_source_is_replaced_before_the_resume_is_never_a_mix(
    proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path
) -> None:
    """A 3 MiB object goes up in one PUT streamed as it downloads; its body is cut short and
    the object replaced (same size) before the resume: the destination gets one version."""
    old, new = os.urandom(3 * MiB), os.urandom(3 * MiB)
    put_objects(s3, buckets.source, {"data/mid": old})
    proxy.add_rule(Rule("truncate", method="GET", path=r"/data/mid$", times=1))
    _replace_before(proxy, s3, buckets.source, "data/mid", new, "GET")
    report = await backup_data(buckets, tmp_path, proxy.endpoint)
    assert report.status == "completed", report.errors
    assert s3.get_object(Bucket=buckets.dest, Key="data/mid")["Body"].read() == new
    assert proxy.faults_injected() == {"truncate": 1}
    resumed = [r for r in proxy.seen(method="GET", path=r"/data/mid$") if r.range]
    assert resumed and resumed[0].if_match and resumed[0].status == 412
    assert report.processed_bytes == report.total_bytes == len(new)
