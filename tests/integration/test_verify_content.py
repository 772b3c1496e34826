"""``asyncbackup checkpoint verify`` compares content, not only sizes: a copy of the source's
size whose ETag differs is found, from the same two listings; where ETags cannot tell (another
part layout, SSE-KMS, a HEAD refused) the copy is reported as compared by size only."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson

from tests.conftest import Buckets, S3Server
from tests.faulty_proxy import run_cli_async
from tests.helpers import assert_same_objects, cli_args
from tests.proxy import Rule, S3Proxy

MiB = 1024 * 1024


def _seed(s3: Any, bucket: str) -> dict[str, bytes]:
    objects = {f"data/f{i:02d}.bin": os.urandom(1000 + i) for i in range(8)}
    objects["data/empty"] = b""
    for key, body in objects.items():
        s3.put_object(Bucket=bucket, Key=key, Body=body)
    return objects


async def _backup(endpoint: str, base: Path, buckets: Buckets, *extra: str) -> Path:
    args = cli_args(endpoint, base, buckets.source, buckets.dest, *extra)
    result = await run_cli_async(["s3", "data", *args])
    assert result.returncode == 0, result.stderr
    (archived,) = (base / "checkpoints" / "archive").iterdir()
    return archived


async def _verify(checkpoint: Path, endpoint: str, *extra: str) -> tuple[int, str, Any]:
    where = ["--endpoint-url", endpoint, *extra]
    text = await run_cli_async(["checkpoint", "verify", str(checkpoint), *where])
    as_json = await run_cli_async(["checkpoint", "verify", str(checkpoint), *where, "--json"])
    assert text.returncode == as_json.returncode, text.stderr + as_json.stderr
    return text.returncode, text.stdout + text.stderr, orjson.loads(as_json.stdout)


async def test_a_copy_of_the_same_size_with_other_bytes_is_found_and_repaired(
    s3_server: S3Server, s3: Any, buckets: Buckets, tmp_path: Path, proxy: S3Proxy
) -> None:
    objects = _seed(s3, buckets.source)
    base = tmp_path / "scratch"
    archived = await _backup(s3_server.endpoint, base, buckets)

    code, out, report = await _verify(archived, proxy.endpoint)
    assert code == 0, out
    assert report["ok"] is True and report["content_checked"] == len(objects)
    assert report["size_only"] == []

    # Bit rot, or someone's overwrite: same size, other bytes. Sizes alone cannot tell.
    rotten = "data/f03.bin"
    s3.put_object(Bucket=buckets.dest, Key=rotten, Body=os.urandom(len(objects[rotten])))
    proxy.requests.clear()
    code, out, report = await _verify(archived, proxy.endpoint)
    assert code == 1, out
    assert f"different  {rotten}  (same size, other content: ETag " in out
    assert "FAILED" in out
    (entry,) = report["different"]
    assert entry["key"] == rotten and entry["source_size"] == entry["dest_size"]
    assert entry["source_etag"] != entry["dest_etag"]
    # the suspect alone was looked at more closely (a HEAD each side, run twice: text, json)
    heads = [r for r in proxy.requests if r.method == "HEAD"]
    assert {r.path for r in heads} == {f"/{buckets.source}/{rotten}", f"/{buckets.dest}/{rotten}"}
    assert len(heads) == 4

    live = base / "checkpoints" / f"{buckets.source}_data.checkpoint"
    live.write_bytes(archived.read_bytes())
    fix = await run_cli_async(
        ["checkpoint", "verify", str(live), "--endpoint-url", proxy.endpoint, "--mark-pending"]
    )
    assert fix.returncode == 1 and "marked 1 keys pending" in fix.stdout, fix.stdout
    rerun = await run_cli_async(
        ["s3", "data", *cli_args(s3_server.endpoint, base, buckets.source, buckets.dest)]
    )
    assert rerun.returncode == 0, rerun.stderr
    assert "copied 1 files" in rerun.stderr
    assert assert_same_objects(s3, buckets.source, buckets.dest, "data/") == len(objects)


async def test_copies_etags_cannot_compare_are_reported_as_checked_by_size_only(
    s3_server: S3Server, s3: Any, buckets: Buckets, tmp_path: Path, proxy: S3Proxy
) -> None:
    objects = _seed(s3, buckets.source)
    # A single-part source above the threshold is uploaded in parts: another ETag, no error.
    big = "data/big.bin"
    objects[big] = os.urandom(6 * MiB)
    s3.put_object(Bucket=buckets.source, Key=big, Body=objects[big])
    archived = await _backup(
        s3_server.endpoint, tmp_path / "scratch", buckets, "--multipart-threshold", "5MiB"
    )
    assert "-" in s3.head_object(Bucket=buckets.dest, Key=big)["ETag"]

    # A copy rewritten with SSE-KMS: its ETag is no MD5 on S3, so a difference proves nothing.
    kms = "data/f05.bin"
    s3.put_object(
        Bucket=buckets.dest,
        Key=kms,
        Body=os.urandom(len(objects[kms])),
        ServerSideEncryption="aws:kms",
    )
    code, out, report = await _verify(archived, proxy.endpoint)
    assert code == 0, out
    assert report["ok"] is True and report["different"] == []
    assert report["size_only"] == [big, kms]
    assert report["content_checked"] == len(objects) - 2
    assert "OK: 10 files marked done; 0 missing, 0 different" in out
    assert "2 compared by size only" in out

    # Destination credentials that may list but not read (the README's least policy): the
    # suspect cannot be looked at, so it is compared by size only, and the run goes on.
    s3.put_object(
        Bucket=buckets.dest, Key="data/f01.bin", Body=os.urandom(len(objects["data/f01.bin"]))
    )
    proxy.add_rule(Rule("access_denied", method="HEAD", path=f"/{buckets.dest}/"))
    code, out, report = await _verify(archived, proxy.endpoint)
    assert code == 0, out
    assert report["size_only"] == [big, "data/f01.bin", kms]


async def test_a_service_verifies_the_backup_it_ran(
    s3_server: S3Server, s3: Any, buckets: Buckets, tmp_path: Path
) -> None:
    """``verify_checkpoint`` is public: a service that embeds ``run_backup`` audits the copies
    of the run it made from its archived checkpoint, on its own event loop."""
    from asyncbackup import Endpoints, run_backup, verify_checkpoint

    objects = _seed(s3, buckets.source)
    report = await run_backup(
        source_bucket=buckets.source,
        source_path="data",
        dest_bucket=buckets.dest,
        base_local_path=tmp_path / "scratch",
        endpoint_url=s3_server.endpoint,
    )
    assert report.status == "completed" and report.archived_checkpoint is not None
    result = await verify_checkpoint(report.archived_checkpoint)  # the recorded endpoints
    assert result.ok and result.content_checked == len(objects) and not result.size_only
    s3.put_object(Bucket=buckets.dest, Key="data/f00.bin", Body=os.urandom(1000))
    where = Endpoints(endpoint_url=s3_server.endpoint)
    result = await verify_checkpoint(report.archived_checkpoint, where)
    assert not result.ok and [m.key for m in result.different] == ["data/f00.bin"]
