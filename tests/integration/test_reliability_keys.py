"""Hostile keys cannot escape staging, and each is copied to its exact key."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

from asyncbackup import run_backup
from tests.conftest import Buckets, S3Server
from tests.reliability import listing, put_parallel


def hostile_keys(marker: str) -> dict[str, bytes]:
    keys = [
        f"../../../../../../../../tmp/{marker}-dotdot",  # climbs far above any staging root
        f"../{marker}-parent",
        "a/../../b",
        "..",
        ".",
        "./.",
        "x/./y",
        f"/{marker}-absolute",  # absolute-looking
        "//double//slashes//",
        "/",
        "trailing/",
        "back\\slash\\..\\..\\escape",
        "c:\\windows\\drive",
        "ctl\x01char\x1bs\x7f",
        "tab\there\rreturn",
        "nul\x00byte",
        "%2e%2e/%2F/percent",
        "a",  # a file ...
        "a/b",  # ... and a folder of the same name
        "a/b/c",
        "L" * 1000,  # one segment far longer than a file name may be
        "dir/" + "é" * 300,  # long in bytes, not in characters
        "unicode/日本語/ファイル",
    ]
    return {key: f"body of {key!r}".encode() + os.urandom(8) for key in keys}


def files_under(root: Path) -> set[Path]:
    return {Path(d) / f for d, _, fs in os.walk(root) for f in fs}


async def test_hostile_keys_stay_inside_staging_and_keep_their_exact_names(
    s3_server: S3Server, buckets: Buckets, s3: Any, tmp_path: Path
) -> None:
    marker = f"escape-{uuid.uuid4().hex}"
    objects = hostile_keys(marker)
    put_parallel(s3, buckets.source, objects)
    assert set(listing(s3, buckets.source)) == set(objects)  # the server kept them all
    outside = tmp_path / "outside"
    base = outside / "one" / "two" / "stage"
    base.mkdir(parents=True)
    report = await run_backup(
        source_bucket=buckets.source,
        source_path="",
        dest_bucket=buckets.dest,
        base_local_path=base,
        endpoint_url=s3_server.endpoint,
    )
    assert report.exit_code == 0, report.errors
    # Copied to their exact keys, byte for byte.
    assert set(listing(s3, buckets.dest)) == set(objects)
    for key, body in objects.items():
        assert s3.get_object(Bucket=buckets.dest, Key=key)["Body"].read() == body, key
    # Staged (no --cleanup: the files are still there) and only inside the staging root.
    staged = files_under(tmp_path)
    assert staged, "nothing was staged"
    assert all(path.is_relative_to(base) for path in staged), sorted(
        str(p) for p in staged if not p.is_relative_to(base)
    )
    staged_bodies = {p.read_bytes() for p in staged if p.is_relative_to(base / buckets.source)}
    assert staged_bodies >= set(objects.values())  # every object has its own staged file
    assert not list(Path("/tmp").glob(f"{marker}*"))
    assert not list(Path.cwd().glob(f"*{marker}*"))
