"""Checkpoints written by older versions of asyncbackup, read by this one (an upgrade between
two nightly runs).

The fixtures under ``tests/fixtures/`` are the bytes an older version wrote, with the parts
that depend on the test servers (the API URL, the bucket, the staging path) replaced by
``{API}``, ``{BUCKET}`` and ``{BASE}``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from asyncbackup.github.backup import run_github_backup
from tests.conftest import Buckets, S3Server
from tests.integration.github_org import TOKEN, config, running_org

FIXTURES = Path(__file__).parent.parent / "fixtures"


def _read_json(s3: Any, bucket: str, key: str) -> Any:
    return orjson.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())


@pytest.mark.parametrize("left", ["archived", "interrupted"])
async def test_list_etags_a_version_before_b8a3f5b_kept_after_a_full_last_page_hide_nothing(
    tmp_path: Path, s3_server: S3Server, buckets: Buckets, s3: Any, left: str
) -> None:
    """The archived checkpoint of a completed GitHub run by the version of 27 Nov 07:22
    (28a22c2, before b8a3f5b and b40546e): 100 issues and 100 releases, one full page each,
    whose ETags it kept. An issue and a release (with an asset) added since go on a second
    page no kept ETag covers, while the kept page answers 304: the upgraded version took the
    lists for unchanged and never copied them, on that run or any later one. Interrupted: the
    same run killed before its lists were copied again (the ETags it carried forward from the
    run before), resumed by this version."""
    base = tmp_path / "work"
    async with running_org(tmp_path / "git") as github:
        alpha = github.repos["alpha"]
        # what the old version saw (the same bytes: the same ETags)
        alpha.issues = [{"number": i, "title": f"issue {i}"} for i in range(1, 101)]
        alpha.releases = [
            {"id": i + 1, "tag_name": f"old-{i}", "draft": False, "assets": []} for i in range(100)
        ]
        template = (FIXTURES / "github_checkpoint_2026-11-27_before_b8a3f5b.json").read_text()
        old = (
            template.replace("{API}", github.api_url)
            .replace("{BUCKET}", buckets.dest)
            .replace("{BASE}", str(base))
        )
        archive = base / "checkpoints" / "archive"
        archive.mkdir(parents=True)
        if left == "archived":
            (archive / "github_acme.checkpoint.20261127T072500Z").write_text(old)
        else:
            for name in ("issues", "releases"):
                done = f'"github/acme/alpha/{name}.json": true'
                assert done in old
                old = old.replace(done, done.replace("true", "false"))
            (base / "checkpoints" / "github_acme.checkpoint").write_text(old)
        kept = orjson.loads(old)["github_etags"]["github/acme/alpha/issues.json"]
        async with (
            aiohttp.ClientSession() as session,
            session.get(
                kept[0][0],
                headers={"Authorization": f"Bearer {TOKEN}", "If-None-Match": kept[0][1]},
            ) as answer,
        ):
            assert answer.status == 304  # the fixture's ETag is this server's for that page
        # what that run copied, at the destination
        for name, items in (("issues", alpha.issues), ("releases", alpha.releases)):
            s3.put_object(
                Bucket=buckets.dest,
                Key=f"github/acme/alpha/{name}.json",
                Body=orjson.dumps(items),
            )

        alpha.issues.append({"number": 101, "title": "issue 101"})
        github.add_release(alpha, "v2.0", {"new.bin": b"new asset"})
        options = config(github, s3_server.endpoint, buckets.dest, base, include=("alpha",))
        report = await run_github_backup(clock=github.clock, sleep=github.clock.sleep, **options)
        assert report.status == "completed", report.errors

        issues = _read_json(s3, buckets.dest, "github/acme/alpha/issues.json")
        assert [issue["number"] for issue in issues] == list(range(1, 102))
        releases = _read_json(s3, buckets.dest, "github/acme/alpha/releases.json")
        assert len(releases) == 101
        asset = "github/acme/alpha/releases/v2.0/new.bin"
        assert s3.get_object(Bucket=buckets.dest, Key=asset)["Body"].read() == b"new asset"

        # and the run after it, with the ETags this version kept, asks again: all unchanged
        again = await run_github_backup(clock=github.clock, sleep=github.clock.sleep, **options)
        if left == "interrupted":  # the lists it had done, not read again, kept no ETag
            assert again.status == "completed", again.errors
            assert again.copied_files > 0
            again = await run_github_backup(clock=github.clock, sleep=github.clock.sleep, **options)
        assert again.status == "completed", again.errors
        assert again.copied_files == 0
