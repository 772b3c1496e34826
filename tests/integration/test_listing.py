"""Listing in key ranges (``listing.py``) against a real S3 server: every key exactly once,
whatever the keys look like and wherever the splits fall; splits only when the consumer waits
for the listing; failures reach the consumer; closing stops every stream."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from asyncbackup import NullObserver, listing, plan_backup, read_checkpoint, run_backup
from asyncbackup.checkpoint import CheckpointState
from asyncbackup.checkpoint_manager import CheckpointManager
from asyncbackup.errors import FatalRunError, ObjectError
from asyncbackup.listing import RangeLister
from asyncbackup.pipeline import Pipeline, WorkItem
from asyncbackup.retry import RetryPolicy
from tests.conftest import Buckets, S3Server
from tests.helpers import assert_same_objects, list_keys, open_test_client
from tests.proxy import Rule, run_proxy


def _numbered(n: int) -> list[str]:
    return [f"p/{i:06d}" for i in range(n)]


def _folders(n: int) -> list[str]:
    return [f"p/d{i // 25:03d}/{i:05d}-16.bin" for i in range(n)]


def _awkward(n: int) -> list[str]:
    """Keys that are prefixes of others, equal to split candidates, outside ASCII, with
    characters below and above the likely ones."""
    rng = random.Random(7)
    alphabet = "0123456789abcXYZ/-_. é日~\x7f!"
    keys = {"p/", "p/1", "p/1/", "p/10", "p/5", "p/Z", "p/a", "p/a/", "p/a0", "p/~", "p/é"}
    keys.add("p/日本")
    while len(keys) < n:
        keys.add("p/" + "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 6))))
    return sorted(keys)


def _seed(s3: Any, bucket: str, keys: list[str]) -> None:
    outside = ["o/x", "p0", "q/1", "P/1"]  # around the prefix: never listed
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda k: s3.put_object(Bucket=bucket, Key=k, Body=b"x"), keys + outside))


@contextlib.asynccontextmanager
async def _lister(endpoint: str, bucket: str, **options: Any) -> Any:
    async with contextlib.AsyncExitStack() as stack:
        client = await open_test_client(stack, endpoint)
        retry = RetryPolicy(4)

        async def list_page(params: dict[str, Any]) -> dict[str, Any]:
            answer: dict[str, Any] = await retry.call(
                lambda: client.list_objects_v2(Bucket=bucket, Prefix="p/", **params)
            )
            return answer

        yield RangeLister(list_page, "p/", **options)


async def _collect(lister: RangeLister, pause: float = 0.0) -> list[str]:
    keys: list[str] = []
    async for page in lister.pages():
        keys.extend(item.key for item in page)
        if pause:
            await asyncio.sleep(pause)
    return keys


@pytest.mark.parametrize("shape", [_numbered, _folders, _awkward])
async def test_split_listing_lists_every_key_once(
    s3_server: S3Server, buckets: Buckets, s3: Any, shape: Callable[[int], list[str]]
) -> None:
    keys = shape(400)
    _seed(s3, buckets.source, keys)
    async with _lister(s3_server.endpoint, buckets.source, streams=6, page_keys=10) as lister:
        got = await _collect(lister)
    assert len(got) == len(set(got)), "a key was listed twice"
    assert sorted(got) == sorted(keys)
    assert lister.ranges_started > 1, "the listing never split"
    assert got != sorted(got), "several streams interleave their pages"


async def test_one_stream_lists_in_key_order(
    s3_server: S3Server, buckets: Buckets, s3: Any
) -> None:
    keys = _awkward(150)
    _seed(s3, buckets.source, keys)
    async with _lister(s3_server.endpoint, buckets.source, streams=1, page_keys=10) as lister:
        got = await _collect(lister)
    assert got == sorted(keys)  # str order is the server's UTF-8 byte order
    assert lister.ranges_started == 1 and lister.probes_sent == 0


async def test_no_split_while_the_consumer_keeps_the_listing_waiting(
    s3_server: S3Server, buckets: Buckets, s3: Any
) -> None:
    _seed(s3, buckets.source, _numbered(120))
    async with _lister(s3_server.endpoint, buckets.source, streams=6, page_keys=20) as lister:
        # A consumer much slower than the listing, on a loaded machine too: 0.3 s a page,
        # where moto answers a page in about 10 ms (at 0.05 s a page, a busy 2-core machine
        # once made the listing the slower side: it split, 48 probes).
        got = await _collect(lister, pause=0.3)
    assert sorted(got) == _numbered(120)
    assert lister.ranges_started == 1 and lister.probes_sent == 0


async def test_a_listing_failure_reaches_the_consumer(s3_server: S3Server) -> None:
    async with _lister(s3_server.endpoint, "no-such-bucket-here", streams=4) as lister:
        with pytest.raises(ObjectError, match="NoSuchBucket"):
            await _collect(lister)


async def test_closing_early_stops_every_stream(
    s3_server: S3Server, buckets: Buckets, s3: Any
) -> None:
    _seed(s3, buckets.source, _numbered(300))
    async with _lister(s3_server.endpoint, buckets.source, streams=6, page_keys=10) as lister:
        pages = lister.pages()
        seen = 0
        async for _page in pages:
            seen += 1
            if seen == 5:
                break
        assert _running(), "streams were still running"
        await pages.aclose()
        assert not _running()


def _running() -> list[asyncio.Task[Any]]:
    """The lister's tasks still running (its owner, streams and splits)."""
    return [
        task
        for task in asyncio.all_tasks()
        if not task.done() and task.get_coro().__qualname__.startswith("RangeLister.")  # type: ignore[union-attr]
    ]


def _seed_for_splits(s3: Any, bucket: str, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """250 keys under ``p/`` in 9 folders, listed 10 a page: a whole run lists in several
    streams. The keys."""
    monkeypatch.setattr(listing, "PAGE_KEYS", 10)
    keys = [f"p/d{i % 9}/obj-{i:04d}" for i in range(250)]
    _seed(s3, bucket, keys)
    return keys


async def test_backup_and_resume_with_split_listing(
    s3_server: S3Server,
    buckets: Buckets,
    s3: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Whole runs list in several streams: a run stopped early, then its resume, which lists
    what the first run did as done: every object copied exactly once in all, the checkpoint's
    totals exact."""
    keys = _seed_for_splits(s3, buckets.source, monkeypatch)
    stop = asyncio.Event()

    class StopAfter40(NullObserver):
        done = 0

        def on_done(self, key: str, size: int) -> None:
            self.done += 1
            if self.done == 40:
                stop.set()

    options: dict[str, Any] = {
        "source_bucket": buckets.source,
        "source_path": "p",
        "dest_bucket": buckets.dest,
        "base_local_path": tmp_path / "stage",
        "endpoint_url": s3_server.endpoint,
        "list_streams": 4,
        "concurrency": 4,
    }
    first = await run_backup(**options, observer=StopAfter40(), stop=stop)
    assert first.status == "stopped" and 40 <= first.copied_files < 250
    state = read_checkpoint(first.checkpoint_path)
    assert state.processed_files == first.copied_files
    # the copying keeps up with the listing: the listing is the bottleneck, and splits
    with caplog.at_level(logging.DEBUG, logger="asyncbackup"):
        done = await run_backup(**{**options, "concurrency": 32})
    assert any("streams after a split" in r.getMessage() for r in caplog.records)
    assert done.status == "completed"
    assert done.skipped_files == first.copied_files
    assert first.copied_files + done.copied_files == 250
    assert sorted(list_keys(s3, buckets.dest)) == sorted(keys)
    assert assert_same_objects(s3, buckets.source, buckets.dest, "p/") == 250


@pytest.mark.parametrize("fault", ["internal_in_200", "malformed"])
async def test_a_listing_answer_garbled_or_an_error_in_a_200_is_retried(
    s3_server: S3Server, buckets: Buckets, s3: Any, fault: str
) -> None:
    _seed(s3, buckets.source, _numbered(60))
    with run_proxy(s3_server.endpoint) as proxy:
        rule = proxy.add_rule(Rule(fault, method="GET", query="list-type=2", times=2))
        async with _lister(proxy.endpoint, buckets.source, streams=1, page_keys=25) as lister:
            got = await _collect(lister)
    assert rule.hits == 2
    assert got == _numbered(60)


async def test_the_first_page_is_small_and_the_next_ones_full(
    s3_server: S3Server, buckets: Buckets, s3: Any
) -> None:
    """The copying starts after a 100-key page, not a 1,000-key one; the rest come by 1,000."""
    _seed(s3, buckets.source, _numbered(1150))
    with run_proxy(s3_server.endpoint) as proxy:
        async with _lister(proxy.endpoint, buckets.source, streams=1) as lister:
            got = await _collect(lister)
        sizes = [r.query.split("max-keys=")[1].split("&")[0] for r in proxy.requests]
    assert got == _numbered(1150)
    assert sizes == ["100", "1000", "1000"]


async def test_a_dry_run_of_a_split_listing_shows_the_first_keys_in_key_order(
    s3_server: S3Server,
    buckets: Buckets,
    s3: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    keys = _seed_for_splits(s3, buckets.source, monkeypatch)
    with caplog.at_level(logging.DEBUG, logger="asyncbackup"):
        plan = await plan_backup(
            source_bucket=buckets.source,
            source_path="p",
            dest_bucket=buckets.dest,
            base_local_path=tmp_path / "stage",
            endpoint_url=s3_server.endpoint,
            list_streams=4,
            sample=100,  # more than the pages listed before the split
        )
    assert any("streams after a split" in r.getMessage() for r in caplog.records)
    assert plan.listed_files == plan.copy_files == 250
    assert plan.first_keys == sorted(keys)[:100]


@pytest.mark.parametrize("fault", ["ignore_start_after", "reverse_keys"])
async def test_a_server_that_ignores_start_after_or_lists_out_of_order_lists_every_key_once(
    s3_server: S3Server, buckets: Buckets, s3: Any, fault: str
) -> None:
    """Splitting needs StartAfter honoured and keys in order; a server without them (older
    S3-compatible servers) is listed as by one stream: every key once, no split."""
    _seed(s3, buckets.source, _numbered(300))
    with run_proxy(s3_server.endpoint) as proxy:
        proxy.add_rule(Rule(fault, method="GET", query="list-type=2"))
        async with _lister(proxy.endpoint, buckets.source, streams=6, page_keys=10) as lister:
            got = await _collect(lister)
    assert len(got) == len(set(got)), "a key was listed twice"
    assert sorted(got) == _numbered(300)
    assert lister.ranges_started == 1


async def test_keys_out_of_order_after_a_split_end_the_listing_with_an_error(
    s3_server: S3Server, buckets: Buckets, s3: Any
) -> None:
    """Once the listing split, a page out of order may hide a key beyond a range's end: the
    listing fails, with what to do, rather than miss it."""
    _seed(s3, buckets.source, _numbered(300))
    with run_proxy(s3_server.endpoint) as proxy:
        # the first page of each stream a split started (probes have one key: unchanged)
        proxy.add_rule(Rule("reverse_keys", method="GET", query="start-after"))
        # the other pages slower than the probes: the stream is not past the split's bounds
        proxy.add_rule(Rule(None, method="GET", query="max-keys=10", delay=0.02))
        async with _lister(proxy.endpoint, buckets.source, streams=6, page_keys=10) as lister:
            with pytest.raises(FatalRunError, match="--list-streams 1"):
                await _collect(lister)
    assert lister.ranges_started > 1


@pytest.mark.parametrize("streams", [1, 6])
async def test_a_server_that_ignores_the_prefix_stops_the_backup_before_a_wrong_copy(
    s3_server: S3Server, buckets: Buckets, s3: Any, tmp_path: Path, streams: int
) -> None:
    """A key listed outside SOURCE_PATH was copied as it is (objects the job never asked
    for), or with --dest-prefix to a key cut at the prefix's length (``o/x`` under ``p/`` ->
    ``DEST/x``), over another object's copy. A server that ignores Prefix stops the run,
    saying so."""
    _seed(s3, buckets.source, _numbered(30))
    with run_proxy(s3_server.endpoint) as proxy:
        proxy.add_rule(Rule("ignore_prefix", method="GET", query="list-type=2"))
        with pytest.raises(FatalRunError, match=r"outside the prefix 'p/'.*--endpoint-url"):
            await run_backup(
                source_bucket=buckets.source,
                source_path="p",
                dest_bucket=buckets.dest,
                base_local_path=tmp_path,
                endpoint_url=proxy.endpoint,
                list_streams=streams,
            )
    assert all(key.startswith("p/") for key in list_keys(s3, buckets.dest))
    for key in list_keys(s3, buckets.dest):  # what was copied before the stop is right
        source = s3.get_object(Bucket=buckets.source, Key=key)["Body"].read()
        assert s3.get_object(Bucket=buckets.dest, Key=key)["Body"].read() == source


@pytest.mark.parametrize("streams", [1, 6])
async def test_a_truncated_answer_without_a_continuation_token_goes_on_after_its_last_key(
    s3_server: S3Server, buckets: Buckets, s3: Any, streams: int
) -> None:
    """IsTruncated without NextContinuationToken (some S3-compatible servers): the listing
    goes on with StartAfter at the page's last key, rather than end with keys unlisted."""
    _seed(s3, buckets.source, _numbered(300))
    with run_proxy(s3_server.endpoint) as proxy:
        proxy.add_rule(Rule("no_continuation_token", method="GET", query="list-type=2"))
        async with _lister(proxy.endpoint, buckets.source, streams=streams, page_keys=10) as lister:
            got = await _collect(lister)
    assert len(got) == len(set(got)), "a key was listed twice"
    assert sorted(got) == _numbered(300)


async def test_a_dry_run_asked_for_no_first_keys_lists_none(
    s3_server: S3Server, buckets: Buckets, s3: Any, tmp_path: Path
) -> None:
    _seed(s3, buckets.source, _numbered(5))
    plan = await plan_backup(
        source_bucket=buckets.source,
        source_path="p",
        dest_bucket=buckets.dest,
        base_local_path=tmp_path / "stage",
        endpoint_url=s3_server.endpoint,
        sample=0,
    )
    assert plan.copy_files == 5 and plan.first_keys == []


async def test_a_failed_probe_leaves_no_other_probe_running(
    s3_server: S3Server, buckets: Buckets, s3: Any
) -> None:
    """A probe that fails abandons the split; its sibling probes go with it, not on in the
    background past the listing's end."""
    _seed(s3, buckets.source, _numbered(300))
    with run_proxy(s3_server.endpoint) as proxy:
        rule = proxy.add_rule(Rule("access_denied", method="GET", query="max-keys=1&", times=1))
        proxy.add_rule(Rule(None, method="GET", query="max-keys=1&", delay=5.0))
        async with _lister(proxy.endpoint, buckets.source, streams=6, page_keys=10) as lister:
            got = await _collect(lister)
            assert rule.hits == 1 and lister.probes_sent > 1
            assert sorted(got) == _numbered(300)
            assert not _running(), "probes still running after the listing ended"


async def test_a_pipeline_stopped_early_closes_its_listing(
    s3_server: S3Server, buckets: Buckets, s3: Any, tmp_path: Path
) -> None:
    """The run stops with most of the listing still to come: when the pipeline returns, the
    listing is closed and none of its streams is left running (before, they ran on until the
    generator was garbage-collected, which a reference held elsewhere puts off for ever)."""
    _seed(s3, buckets.source, _numbered(300))
    stop = asyncio.Event()

    async def process(item: WorkItem) -> int:
        stop.set()
        return item.size

    manager = CheckpointManager(tmp_path / "job.checkpoint")
    manager.open()
    try:
        state = CheckpointState.new(
            source_bucket=buckets.source, source_path="p", dest_bucket=buckets.dest, config={}
        )
        pipeline = Pipeline(manager=manager, state=state, concurrency=1, interval=1, stop=stop)
        async with _lister(s3_server.endpoint, buckets.source, streams=4, page_keys=10) as lister:
            pages = lister.pages()  # held here: only an explicit close ends its streams
            await pipeline.run(pages, process)
            assert pipeline.result.stopped and pipeline.result.done_files < 300
            assert not _running()
    finally:
        manager.close()


@pytest.mark.parametrize("keys", [_folders(400), [f"p/{i % 7}/{i:05d}" for i in range(400)]])
async def test_a_server_whose_start_after_skips_the_folder_it_names_misses_no_key(
    s3_server: S3Server, buckets: Buckets, s3: Any, keys: list[str]
) -> None:
    """SeaweedFS stores keys as a tree of folders: StartAfter=p/d006 lists nothing under
    p/d006/, so a split at such a bound left the folder to neither stream (the stream before
    it stops at p/d006/..., the one after starts past it) and the run completed without it.
    A stream goes on past its end up to the first key its neighbour's probe found there (the
    keys between are the folder the neighbour does not see): every key is listed once, and
    the split listing completes (it stopped the run at first, exit 3)."""
    _seed(s3, buckets.source, keys)
    with run_proxy(s3_server.endpoint) as proxy:
        proxy.add_rule(Rule("start_after_skips_folder", method="GET", query="start-after"))
        async with _lister(proxy.endpoint, buckets.source, streams=6, page_keys=10) as lister:
            got = await _collect(lister)
    assert lister.ranges_started > 1, "the listing never split"
    assert sorted(got) == sorted(keys)


async def test_a_key_added_just_past_a_split_bound_is_listed_once(
    s3_server: S3Server, buckets: Buckets, s3: Any
) -> None:
    """A live bucket: keys written while the listing runs. A key added after a split, between
    a bound and the first key its probe found, lies in the stream before the bound's range
    (which lists on to that first key: SeaweedFS's StartAfter skips the folder it names) and
    in the range after it (S3's StartAfter does not): it was listed by both, so a backup
    counted it twice (its job 'N of N+1 files done' once completed) and copied it twice at
    once."""
    keys = _numbered(400)
    _seed(s3, buckets.source, keys)
    added: list[str] = []

    class AddAtBounds(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "streams after a split" not in record.getMessage():
                return
            assert isinstance(record.args, tuple) and isinstance(record.args[1], list)
            for bound in record.args[1]:
                key = bound + " "  # after the bound, before any key its probe found
                s3.put_object(Bucket=buckets.source, Key=key, Body=b"x")
                added.append(key)

    handler = AddAtBounds()
    logger = logging.getLogger("asyncbackup")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.DEBUG)
    try:
        async with _lister(s3_server.endpoint, buckets.source, streams=6, page_keys=10) as lister:
            got = await _collect(lister)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert added, "the listing never split"
    assert len(got) == len(set(got)), f"listed twice: {sorted(k for k in got if got.count(k) > 1)}"
    assert set(keys) <= set(got)


async def test_a_split_listing_leaving_out_storage_classes_lists_every_other_key_once(
    s3_server: S3Server, buckets: Buckets, s3: Any
) -> None:
    """``--exclude-storage-class``: whole pages of GLACIER objects leave a stream with no
    key to yield; its position still moves past them, so no split lists them, or a key
    after them, again."""
    keys = _numbered(400)
    cold = {key for i, key in enumerate(keys) if (i // 30) % 2 == 0}

    def put(key: str) -> None:
        storage_class = "GLACIER" if key in cold else "STANDARD"
        s3.put_object(Bucket=buckets.source, Key=key, Body=b"xy", StorageClass=storage_class)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(put, keys))
    async with _lister(
        s3_server.endpoint,
        buckets.source,
        streams=6,
        page_keys=10,
        skip_classes=frozenset({"GLACIER"}),
    ) as lister:
        got = await _collect(lister)
    assert len(got) == len(set(got)), "a key was listed twice"
    assert sorted(got) == sorted(set(keys) - cold)
    assert lister.left_out == [len(cold), 2 * len(cold)]
    assert lister.ranges_started > 1, "the listing never split"
