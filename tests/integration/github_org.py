"""A small organisation on the loopback GitHub, with real git repositories, for backup tests."""

from __future__ import annotations

import os
import subprocess
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from tests.github_server import GIT, FakeClock, FakeGitHub, FakeRepo, git, make_repository

TOKEN = "ghp_backuptesttoken0123456789abcdefXYZ"
ASSET = os.urandom(70_000)


def build_org(server: FakeGitHub) -> None:
    """alpha (everything), beta (no issues, no wiki), empty (no commits), forky (a fork),
    old (archived, issues answer 410)."""
    alpha = server.add_repo(FakeRepo("alpha"))
    make_repository(server.git_dir("alpha"), commits=3, tags=2)
    make_repository(server.git_dir("alpha", wiki=True), commits=1, tags=0, pull_ref=False)
    alpha.issues = [{"number": i, "title": f"issue {i}"} for i in range(1, 231)]
    alpha.issue_comments = [{"id": i, "body": f"comment {i}"} for i in range(120)]
    alpha.pulls = [{"number": 500 + i, "head": {"sha": "0" * 40}} for i in range(3)]
    alpha.pull_comments = [{"id": 900 + i, "body": "nit"} for i in range(2)]
    server.add_release(alpha, "v1.0", {"tool-1.0.tar.gz": ASSET})

    server.add_repo(FakeRepo("beta", has_issues=False, has_wiki=False))
    make_repository(server.git_dir("beta"), commits=1, tags=0)

    server.add_repo(FakeRepo("empty", pushed_at=""))
    git("init", "-q", "--bare", str(server.git_dir("empty")))

    server.add_repo(FakeRepo("forky", fork=True))

    server.add_repo(FakeRepo("old", archived=True, has_wiki=False, issues_status=410))
    make_repository(server.git_dir("old"), commits=1, tags=0, pull_ref=False)


#: ports whose number holds "451", a status git quotes in its errors (with the URL)
PORTS_HOLDING_451 = tuple(port for port in range(1024, 65536) if "451" in str(port))


@asynccontextmanager
async def running_org(root: Path, ports: Iterable[int] = (0,)) -> AsyncIterator[FakeGitHub]:
    """The org on the first of ``ports`` free (0: any port the system picks)."""
    server = FakeGitHub(root, token=TOKEN, clock=FakeClock())
    for port in ports:
        try:
            await server.start(port)
            break
        except OSError:  # taken: the next one
            continue
    else:
        raise AssertionError(f"no free port among {ports}")
    build_org(server)  # once the port is known: records carry absolute URLs
    try:
        yield server
    finally:
        await server.close()


def refs(repository: Path) -> dict[str, str]:
    out = subprocess.run(
        [GIT, "for-each-ref", "--format=%(refname) %(objectname)"],
        cwd=repository,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return dict(line.split(" ") for line in out.splitlines())


def restore(s3: Any, bucket: str, key: str, where: Path) -> Path:
    """Download a bundle and clone it the way the README says; the restored repository."""
    bundle = where / Path(key).name
    bundle.write_bytes(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    target = where / (Path(key).name + ".restored.git")
    git("clone", "-q", "--mirror", str(bundle), str(target))
    git("fsck", "--no-progress", "--full", cwd=target)
    return target


def config(
    server: FakeGitHub, endpoint: str, bucket: str, base: Path, **extra: Any
) -> dict[str, Any]:
    return {
        "owner": "acme",
        "dest_bucket": bucket,
        "base_local_path": base,
        "endpoint_url": endpoint,
        "api_url": server.api_url,
        "token": TOKEN,
        "skip_forks": True,
        **extra,
    }
