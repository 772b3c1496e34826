"""GitHub to S3 against loopback servers: a full backup, then an incremental one.

    .venv/bin/python benchmarks/github_local.py [REPOS] [ISSUES_PER_REPO]

Starts moto (scripts/local_s3.py) and the test suite's fake GitHub (REST API + git
http-backend), backs up REPOS small repositories, then runs again with nothing changed, and
prints wall time, API requests, 304 answers and git processes for each run.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import boto3

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from asyncbackup import run_github_backup  # noqa: E402
from tests.github_server import FakeClock, FakeGitHub, FakeRepo, make_repository  # noqa: E402

TOKEN = "ghp_benchmark0123456789"


async def main(repos: int, issues: int) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    moto = subprocess.Popen(
        [sys.executable, str(ROOT / "scripts" / "local_s3.py")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    assert moto.stdout is not None
    endpoint = f"http://127.0.0.1:{int(moto.stdout.readline())}"
    os.environ.update(
        AWS_ACCESS_KEY_ID="AKIABENCH", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1"
    )
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="bench")
    with tempfile.TemporaryDirectory() as tmp:
        github = FakeGitHub(Path(tmp) / "git", token=TOKEN, clock=FakeClock())
        await github.start()
        for i in range(repos):
            repo = github.add_repo(FakeRepo(f"repo{i:03d}", has_wiki=False))
            make_repository(github.git_dir(repo.name), commits=3, tags=1)
            repo.issues = [{"number": n, "title": f"issue {n}"} for n in range(issues)]
        try:
            for label in ("full", "incremental"):
                seen, git_before = len(github.seen), len(github.git_seen)
                started = time.perf_counter()
                report = await run_github_backup(
                    owner="acme",
                    dest_bucket="bench",
                    base_local_path=Path(tmp) / "work",
                    endpoint_url=endpoint,
                    api_url=github.api_url,
                    token=TOKEN,
                )
                seconds = time.perf_counter() - started
                answers = github.seen[seen:]
                print(
                    f"{label:12} {repos} repos: {seconds:6.2f}s, {report.processed_files} "
                    f"artifacts ({report.copied_files} copied, {report.copied_bytes} bytes), "
                    f"{len(answers)} API requests ({sum(a.status == 304 for a in answers)} x 304), "
                    f"{len(github.git_seen) - git_before} git HTTP requests, {report.status}"
                )
        finally:
            await github.close()
            assert moto.stdin is not None
            moto.stdin.close()
            moto.wait(timeout=10)
            moto.stdout.close()


if __name__ == "__main__":
    asyncio.run(
        main(
            int(sys.argv[1]) if len(sys.argv) > 1 else 20,
            int(sys.argv[2]) if len(sys.argv) > 2 else 150,
        )
    )
