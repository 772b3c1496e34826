"""Tests written by a mutation audit: each kills a mutant the rest of the suite let live (its
docstring names the mutant), where the mutant would change what a user gets. Against moto
over HTTP, through the recording proxy."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.conftest import Buckets, S3Server
from tests.helpers import MiB, backup_data, put_multipart
from tests.integration.test_verify_content import _backup, _verify
from tests.proxy import Rule, S3Proxy


async def test_a_one_part_multipart_object_does_not_turn_off_the_checks_after_it(
    proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Mutant: ``FirstPartProbe.sizes`` taking ``parts > 0`` for ``parts > 1`` in its test of
    a server that answers every part with the whole object's length. An object uploaded in
    one part has that part as long as the whole object: no sign of such a server. Taken for
    one, the bucket is said to refuse part-number HEADs, and the downloads of the multipart
    objects after it are no longer checked against their ETags: a corrupted one is copied
    and marked done."""
    etag = put_multipart(s3, buckets.source, "data/0-one-part", (6 * MiB,))
    assert etag.strip('"').endswith("-1")
    put_multipart(s3, buckets.source, "data/1-uneven", (5 * MiB, 5 * MiB, 7 * MiB))
    # a download of each corrupted once: the first one's is caught as any is (and then its
    # layout asked); only the second one's ETag, in its true layout, can tell
    proxy.add_rule(Rule("corrupt", method="GET", path=r"/data/0-one-part$", times=1))
    proxy.add_rule(Rule("corrupt", method="GET", path=r"/data/1-uneven$", times=1))
    with caplog.at_level(logging.WARNING, logger="asyncbackup"):
        report = await backup_data(
            buckets,
            tmp_path,
            proxy.endpoint,
            concurrency=1,
            part_size=5 * MiB,
            multipart_threshold=5 * MiB,
        )
    assert not report.errors, report.errors
    for key in ("data/0-one-part", "data/1-uneven"):
        source = s3.get_object(Bucket=buckets.source, Key=key)["Body"].read()
        assert s3.get_object(Bucket=buckets.dest, Key=key)["Body"].read() == source, key
    assert "refuses HEAD ?partNumber" not in caplog.text


async def test_a_part_number_head_answered_without_headers_is_asked_again(
    proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path
) -> None:
    """Mutant: ``FirstPartProbe.head`` without its ``answered_etag`` check. A ``HEAD
    ?partNumber=1`` answered 200 with no headers (a server or a middlebox that failed after
    the status line) tells no part length: taken as an answer, the first part is 0 bytes,
    the source's layout unknown, and the copy is cut in parts of ``--part-size``. Its ETag
    then differs from the source's: ``checkpoint verify`` compares it by size only, and
    every incremental run copies the unchanged object again."""
    etag = put_multipart(s3, buckets.source, "data/uniform", (6 * MiB, 6 * MiB, 2 * MiB))
    proxy.add_rule(Rule("empty_200", method="HEAD", query="partNumber=", times=1))
    report = await backup_data(
        buckets,
        tmp_path,
        proxy.endpoint,
        concurrency=1,
        part_size=5 * MiB,
        multipart_threshold=5 * MiB,
    )
    assert not report.errors, report.errors
    assert s3.head_object(Bucket=buckets.dest, Key="data/uniform")["ETag"] == etag
    source = s3.get_object(Bucket=buckets.source, Key="data/uniform")["Body"].read()
    assert s3.get_object(Bucket=buckets.dest, Key="data/uniform")["Body"].read() == source


async def test_verify_finds_a_short_copy_of_a_multipart_source(
    s3_server: S3Server, s3: Any, buckets: Buckets, tmp_path: Path, proxy: S3Proxy
) -> None:
    """Mutant: ``verify_state`` without its size comparison. The ETags of a multipart source
    and of a copy rewritten in one PUT cannot be compared, so only the sizes tell a copy cut
    short: without them, the copy is 'compared by size only' and the verify says OK."""
    put_multipart(s3, buckets.source, "data/big.bin", (5 * MiB, 1 * MiB))
    s3.put_object(Bucket=buckets.source, Key="data/small.bin", Body=b"small")
    archived = await _backup(s3_server.endpoint, tmp_path / "scratch", buckets)
    s3.put_object(Bucket=buckets.dest, Key="data/big.bin", Body=b"cut short")
    code, out, report = await _verify(archived, proxy.endpoint)
    assert code != 0, out
    assert report["ok"] is False
    assert [m["key"] for m in report["different"]] == ["data/big.bin"]
    assert report["size_only"] == []


async def test_verify_checks_only_the_keys_marked_done(
    s3_server: S3Server, s3: Any, buckets: Buckets, tmp_path: Path, proxy: S3Proxy
) -> None:
    """Mutant: ``verify_state`` checking every key of the checkpoint, not only those marked
    done. A key still pending (``false``: its copy not made yet, or marked to be copied
    again) is not expected at the destination: reported missing, the verify of a sound
    backup fails."""
    for index in range(3):
        s3.put_object(Bucket=buckets.source, Key=f"data/f{index}", Body=b"x" * index)
    archived = await _backup(s3_server.endpoint, tmp_path / "scratch", buckets)
    state = orjson.loads(archived.read_bytes())
    state["files"]["data/pending"] = False  # listed by a run, not copied yet
    archived.write_bytes(orjson.dumps(state))
    code, out, report = await _verify(archived, proxy.endpoint)
    assert code == 0, out
    assert report["ok"] is True and report["missing"] == []
    assert report["checked"] == 3


async def test_a_copy_neither_side_may_be_read_of_is_not_said_checked_by_content(
    s3_server: S3Server, s3: Any, buckets: Buckets, tmp_path: Path, proxy: S3Proxy
) -> None:
    """Mutant: ``_verdict`` without its 'a HEAD refused' test. A copy of the source's size
    whose single-part ETag differs is looked at with a HEAD of each side; when both are
    refused (credentials that may list, not read), their two empty answers compared equal,
    and a copy with other bytes was counted as checked by content."""
    s3.put_object(Bucket=buckets.source, Key="data/a.bin", Body=b"source bytes")
    archived = await _backup(s3_server.endpoint, tmp_path / "scratch", buckets)
    s3.put_object(Bucket=buckets.dest, Key="data/a.bin", Body=b"other! bytes")
    for bucket in (buckets.source, buckets.dest):
        proxy.add_rule(Rule("access_denied", method="HEAD", path=f"/{bucket}/data/"))
    code, out, report = await _verify(archived, proxy.endpoint)
    assert code == 0, out  # the sizes agree: compared by size only, as the report says
    assert report["size_only"] == ["data/a.bin"], out
    assert report["content_checked"] == 0


async def test_a_copy_deleted_after_the_listing_is_reported_missing(
    s3_server: S3Server, s3: Any, buckets: Buckets, tmp_path: Path, proxy: S3Proxy
) -> None:
    """Mutant: ``_head`` without its 'not there' answer. A suspect copy (same size, another
    single-part ETag) deleted between the listing and its HEAD answers 404: it is missing,
    and the verify goes on to report it (and --mark-pending has it copied again), instead of
    stopping with 'cannot read the destination object'."""
    s3.put_object(Bucket=buckets.source, Key="data/a.bin", Body=b"source bytes")
    s3.put_object(Bucket=buckets.source, Key="data/b.bin", Body=b"b")
    archived = await _backup(s3_server.endpoint, tmp_path / "scratch", buckets)
    s3.put_object(Bucket=buckets.dest, Key="data/a.bin", Body=b"other! bytes")
    proxy.add_rule(Rule("no_such_key", method="HEAD", path=f"/{buckets.dest}/data/a.bin$"))
    code, out, report = await _verify(archived, proxy.endpoint)
    assert code == 1, out
    assert report["missing"] == ["data/a.bin"] and report["content_checked"] == 1
