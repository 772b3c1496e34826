"""``checkpoint verify`` walks the two listings side by side, in key order: it holds a few
pages of each, not a map of every object of both buckets (gigabytes for tens of millions)."""

from __future__ import annotations

import contextlib
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson

from asyncbackup.checkpoint import CheckpointState
from asyncbackup.verify import verify_state
from tests.conftest import Buckets, S3Server
from tests.faulty_proxy import run_cli_async
from tests.helpers import open_test_client
from tests.proxy import Rule, S3Proxy


def _put_many(s3: Any, bucket: str, keys: list[str]) -> None:
    def put(key: str) -> None:
        s3.put_object(Bucket=bucket, Key=key, Body=b"x")

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(put, keys))


async def test_verify_reads_the_source_listing_only_pages_ahead_of_the_destination(
    s3: Any, buckets: Buckets, proxy: S3Proxy
) -> None:
    """The destination's first page held back: the source's listing waits a few pages ahead
    of it. Before, each listing was read whole into a map, whatever the other side did."""
    keys = [f"data/{i:05d}" for i in range(6000)]  # a small first page and six more
    _put_many(s3, buckets.source, keys)
    s3.put_object(Bucket=buckets.dest, Key=keys[0], Body=b"x")
    s3.put_object(Bucket=buckets.dest, Key=keys[-1], Body=b"y")  # same size, other bytes

    def source_pages() -> int:
        return sum(
            1
            for r in list(proxy.requests)
            if r.method == "GET" and r.path == f"/{buckets.source}" and "list-type=2" in r.query
        )

    seen: list[int] = []
    gate = threading.Lock()

    def hold() -> None:  # the destination's first page, until the source has read them all
        with gate:
            deadline = time.monotonic() + 4
            while source_pages() < 7 and time.monotonic() < deadline:
                time.sleep(0.05)
            seen.append(source_pages())

    proxy.add_rule(Rule(None, method="GET", path=f"^/{buckets.dest}$", times=1, action=hold))
    state = CheckpointState.new(
        source_bucket=buckets.source, source_path="data", dest_bucket=buckets.dest, config={}
    )
    state.files = dict.fromkeys(keys, True)
    async with contextlib.AsyncExitStack() as stack:
        client = await open_test_client(stack, proxy.endpoint)
        result = await verify_state(state, source_client=client, dest_client=client)
    assert len(seen) == 1 and seen[0] <= 4, seen
    # and the walk itself is right: every done key accounted for, in key order
    assert result.content_checked == 1 and result.missing == keys[1:-1]
    assert [m.key for m in result.different] == [keys[-1]]
    assert (result.source_listed, result.dest_listed, result.checked) == (6000, 2, 6000)


async def test_a_listing_out_of_key_order_is_refused_in_one_line_nothing_marked(
    s3_server: S3Server, s3: Any, buckets: Buckets, tmp_path: Path, proxy: S3Proxy
) -> None:
    """The walk needs S3's key order; a server listing in another order (an S3 Express
    directory bucket) would have copies reported missing that are there: refused instead,
    exit 3, with --mark-pending marking nothing."""
    keys = [f"data/{i}" for i in range(5)]
    _put_many(s3, buckets.source, keys)
    _put_many(s3, buckets.dest, keys)
    state = CheckpointState.new(
        source_bucket=buckets.source, source_path="data", dest_bucket=buckets.dest, config={}
    )
    state.files = dict.fromkeys(keys, True)
    path = tmp_path / "job.checkpoint"
    path.write_bytes(orjson.dumps(state.to_dict()))
    before = path.read_bytes()
    proxy.add_rule(Rule("reverse_keys", method="GET", path=f"^/{buckets.dest}$"))
    where = ["--endpoint-url", proxy.endpoint]
    done = await run_cli_async(["checkpoint", "verify", str(path), *where, "--mark-pending"])
    assert done.returncode == 3, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert f"the destination bucket '{buckets.dest}' listed" in line and "key order" in line
    assert path.read_bytes() == before
    direct = await run_cli_async(
        ["checkpoint", "verify", str(path), "--endpoint-url", s3_server.endpoint]
    )
    assert direct.returncode == 0, direct.stdout + direct.stderr


async def test_a_done_key_outside_source_path_takes_no_copy_of_another_key(
    s3_server: S3Server, s3: Any, buckets: Buckets
) -> None:
    """A key marked done by hand outside SOURCE_PATH has no copy of the job's: reported
    missing, and the copy of the job's key whose name it shares past the prefix's length is
    still that key's. Mapping each done key to its destination key (before the walk) cut
    ``zzzzzx`` at the prefix's length to ``bk/x``, which then stood for it, not for ``data/x``
    (reported missing, a good copy marked pending by --mark-pending); with --dest-prefix ''
    the key ``other`` (as long as ``data/``) raised an InvalidDestinationKey out of verify."""
    s3.put_object(Bucket=buckets.source, Key="data/x", Body=b"x")
    for dest_prefix, copy in (("bk", "bk/x"), ("", "x")):
        s3.put_object(Bucket=buckets.dest, Key=copy, Body=b"x")
        state = CheckpointState.new(
            source_bucket=buckets.source,
            source_path="data",
            dest_bucket=buckets.dest,
            config={"dest_prefix": dest_prefix},
        )
        state.files = {"data/x": True, "zzzzzx": True, "other": True}
        async with contextlib.AsyncExitStack() as stack:
            client = await open_test_client(stack, s3_server.endpoint)
            result = await verify_state(state, source_client=client, dest_client=client)
        assert (result.content_checked, result.missing) == (1, ["other", "zzzzzx"]), (
            dest_prefix,
            result.to_dict(),
        )
        assert not result.different and not result.not_in_source, result.to_dict()
        s3.delete_object(Bucket=buckets.dest, Key=copy)
