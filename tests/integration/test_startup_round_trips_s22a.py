"""The round trips a ``--skip-existing`` run makes before it can end, against a distant store:
the ones that need not wait for each other overlap.

The upload started and aborted to ask the destination's encryption (``opaque_dest_etags``)
and the first pages of both listings were sent one after the other: the probe's start, its
abort, the destination's first page, then the source's. Through a proxy that delays every
answer, each started only once the one before it had answered."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Buckets
from tests.helpers import cli_args
from tests.proxy import Recorded, S3Proxy
from tests.reliability import put_parallel, run_cli

#: added to every answer: far more than the client takes between two requests
_LATENCY = 0.4


def _first_page(proxy: S3Proxy, bucket: str) -> Recorded:
    """The first page of the run's listing of ``bucket`` (not the start-up check's one key)."""
    pages = [
        r
        for r in proxy.seen(method="GET", path=f"^/{bucket}/?$")
        if "list-type=2" in r.query and "max-keys=1&" not in r.query + "&"
    ]
    assert pages, [(r.method, r.path, r.query) for r in proxy.seen()]
    return min(pages, key=lambda r: r.started)


@pytest.mark.parametrize("fast_path", [True, False])
def test_the_encryption_probe_and_both_listings_are_under_way_at_once(
    proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path, fast_path: bool
) -> None:
    put_parallel(s3, buckets.source, {f"p/{i}": b"x" * i for i in range(1, 6)})
    extra = [] if fast_path else ["--no-fast-path"]
    args = ["p", *cli_args(proxy.endpoint, tmp_path, buckets.source, buckets.dest, *extra)]
    first = run_cli([*args, "--skip-existing"])
    assert first.returncode == 0, first.stderr
    proxy.requests.clear()
    proxy.latency = _LATENCY
    done = run_cli([*args, "--skip-existing"])
    assert done.returncode == 0, done.stderr
    assert "WARNING" not in done.stderr, done.stderr
    dest_uploads = f"^/{buckets.dest}/"
    (start,) = [r for r in proxy.seen(method="POST", path=dest_uploads) if "uploads" in r.query]
    (abort,) = [r for r in proxy.seen(method="DELETE", path=dest_uploads)]
    source_page = _first_page(proxy, buckets.source)
    dest_page = _first_page(proxy, buckets.dest)
    # nothing was copied again
    assert not proxy.seen(method="PUT"), [r.path for r in proxy.seen(method="PUT")]
    # the listings did not wait for the probe's abort, nor the source's for the destination's
    assert dest_page.started < abort.finished - _LATENCY / 2, (start, abort, dest_page)
    assert source_page.started < abort.finished - _LATENCY / 2, (start, abort, source_page)
    assert source_page.started < dest_page.finished - _LATENCY / 2, (dest_page, source_page)
    assert start.finished <= abort.started  # the abort still follows the probe's start
