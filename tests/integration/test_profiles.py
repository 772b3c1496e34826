"""Source and destination use their own credentials and endpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from asyncbackup import run_backup
from tests.conftest import ACCESS_KEYS, Buckets, S3Server
from tests.helpers import assert_same_objects, numbered_objects, put_objects
from tests.proxy import S3Proxy


async def test_separate_profiles_sign_their_own_requests(
    s3_server: S3Server, s3: Any, buckets: Buckets, tmp_path: Path, aws_env: Path
) -> None:
    put_objects(s3, buckets.source, numbered_objects(12))
    source_proxy = await S3Proxy(s3_server.endpoint).start()
    dest_proxy = await S3Proxy(s3_server.endpoint).start()
    try:
        report = await run_backup(
            source_bucket=buckets.source,
            source_path="data",
            dest_bucket=buckets.dest,
            base_local_path=tmp_path,
            source_profile="src",
            dest_profile="dst",
            source_endpoint_url=source_proxy.endpoint,
            dest_endpoint_url=dest_proxy.endpoint,
        )
    finally:
        await source_proxy.close()
        await dest_proxy.close()
    assert report.status == "completed"
    assert {r.access_key for r in source_proxy.requests} == {ACCESS_KEYS["src"][0]}
    assert {r.access_key for r in dest_proxy.requests} == {ACCESS_KEYS["dst"][0]}
    assert {r.method for r in dest_proxy.requests} >= {"PUT"}
    assert {r.method for r in source_proxy.requests} == {"GET"}
    assert assert_same_objects(s3, buckets.source, buckets.dest) == 12


async def test_endpoint_url_from_the_profile(
    s3_server: S3Server, s3: Any, buckets: Buckets, tmp_path: Path, aws_env: Path
) -> None:
    put_objects(s3, buckets.source, numbered_objects(5))
    proxy = await S3Proxy(s3_server.endpoint).start()
    config = aws_env / "config"
    config.write_text(
        config.read_text().replace(
            "[profile dst]\n", f"[profile dst]\nendpoint_url = {proxy.endpoint}\n"
        )
        + f"\n[profile srcep]\nregion = us-east-1\nendpoint_url = {s3_server.endpoint}\n"
    )
    credentials = aws_env / "credentials"
    key, secret = ACCESS_KEYS["src"]
    credentials.write_text(
        credentials.read_text()
        + f"[srcep]\naws_access_key_id = {key}\naws_secret_access_key = {secret}\n"
    )
    try:
        report = await run_backup(
            source_bucket=buckets.source,
            source_path="data",
            dest_bucket=buckets.dest,
            base_local_path=tmp_path,
            source_profile="srcep",
            dest_profile="dst",
        )
    finally:
        await proxy.close()
    assert report.status == "completed"
    assert {r.access_key for r in proxy.requests} == {ACCESS_KEYS["dst"][0]}
    assert assert_same_objects(s3, buckets.source, buckets.dest) == 5
