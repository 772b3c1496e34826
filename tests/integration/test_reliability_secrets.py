"""No secret leaks: keys and session tokens never reach logs, checkpoints, reports or errors."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Buckets
from tests.helpers import cli_args
from tests.proxy import Rule, S3Proxy
from tests.reliability import put_parallel, run_cli

KEY_ID = "AKIALEAKCHECK0000001"
SECRET = "leak-check-secret-Zq8vN3xW7pL2mK9sT4yR6uB1cE5hJ0aD"
TOKEN = "leak-check-session-token-FQoGZXIvYXdzEJr//////////wEaDM3" + "x" * 120


@pytest.fixture
def token_profile(aws_env: Path) -> str:
    with (aws_env / "credentials").open("a") as handle:
        handle.write(
            f"[tok]\naws_access_key_id = {KEY_ID}\naws_secret_access_key = {SECRET}\n"
            f"aws_session_token = {TOKEN}\n"
        )
    with (aws_env / "config").open("a") as handle:
        handle.write("\n[profile tok]\nregion = us-east-1\n")
    return "tok"


def leaks(text: str) -> list[str]:
    # The access key id is not a secret, but nothing of ours has a reason to print it either.
    return [
        name
        for name, value in (("secret", SECRET), ("token", TOKEN), ("key id", KEY_ID))
        if value in text or value[:24] in text
    ]


def test_no_secret_in_any_output_or_file(
    token_profile: str, proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path
) -> None:
    put_parallel(s3, buckets.source, {f"s/{i:02d}": os.urandom(100) for i in range(30)})
    base = tmp_path / "work"
    profile = ["--source-profile", token_profile, "--dest-profile", token_profile, "--debug"]
    report = tmp_path / "report.json"
    outputs: list[str] = []

    # 1. A run with retries (warnings), a permanent error (in the checkpoint and the summary).
    proxy.set_random_faults(0.2, seed=9)
    proxy.add_rule(Rule("access_denied", method="GET", path=r"/s/07$"))
    args = ["s", *cli_args(proxy.endpoint, base, buckets.source, buckets.dest, *profile)]
    first = run_cli([*args, "--report", str(report)])
    assert first.returncode == 1, first.stderr
    outputs += [first.stdout, first.stderr]
    proxy.clear_faults()

    # 2. Credentials refused mid-run: a fatal error, with a traceback under --debug.
    proxy.add_rule(Rule("invalid_access_key", method="GET", path=r"/s/07$"))
    second = run_cli(args)
    assert second.returncode == 3, second.stderr
    assert "Traceback" in second.stderr
    outputs += [second.stdout, second.stderr]

    # 3. Refused at start-up, and an endpoint that does not answer.
    proxy.add_rule(Rule("invalid_access_key"))
    third = run_cli(args)
    assert third.returncode == 2, third.stderr
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}"
    fourth = run_cli(["s", *cli_args(closed, base, buckets.source, buckets.dest, *profile)])
    assert fourth.returncode == 2, fourth.stderr
    outputs += [third.stdout, third.stderr, fourth.stdout, fourth.stderr]

    # The credentials were really in use: the token went out with the requests.
    sent = [r for r in proxy.requests if r.access_key == KEY_ID]
    assert sent and all(r.headers.get("x-amz-security-token") == TOKEN for r in sent)

    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert report in files and any(p.suffix == ".checkpoint" for p in files)
    for path in files:
        found = leaks(path.read_bytes().decode("utf-8", "replace"))
        assert not found, (path, found)
    for number, text in enumerate(outputs):
        assert not leaks(text), (number, leaks(text), text[-2000:])
