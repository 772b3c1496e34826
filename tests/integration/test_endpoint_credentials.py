"""Credentials written into an endpoint URL (``http://user:password@host``) are a secret like
any other: they never reach a log line, an error message, the checkpoint or a --report file.

botocore's connection errors quote the URL they were sending to, user info included; an
object that fails with one has that text as its error, which is printed, logged, recorded in
the checkpoint and in the report.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tests.conftest import Buckets
from tests.helpers import cli_args
from tests.proxy import Rule, S3Proxy
from tests.reliability import put_parallel, read_valid, run_cli

PASSWORD = "endpoint-Passw0rd-Zq8vN3xW7pL2"


def with_user_info(endpoint: str) -> str:
    return endpoint.replace("http://", f"http://backup-user:{PASSWORD}@", 1)


def test_endpoint_user_info_never_written_anywhere(
    proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path
) -> None:
    put_parallel(s3, buckets.source, {f"u/{i:02d}": os.urandom(100) for i in range(6)})
    # One object's connection is reset at every attempt: it fails for good with the
    # connection error, quoting the URL it was sent to.
    proxy.add_rule(Rule("reset_before", method="GET", path=r"/u/03$"))
    base, report = tmp_path / "work", tmp_path / "report.json"
    endpoint = with_user_info(proxy.endpoint)
    outputs: list[str] = []
    for log_format in ("text", "json"):
        args = ["u", *cli_args(endpoint, base, buckets.source, buckets.dest, "--debug")]
        args += ["--max-attempts", "2", "--report", str(report), "--log-format", log_format]
        done = run_cli(args)
        assert done.returncode == 1, done.stderr
        outputs += [done.stdout, done.stderr]
        state = read_valid(base / "checkpoints" / f"{buckets.source}_u.checkpoint")
        assert state.errors.keys() == {"u/03"}
        assert "127.0.0.1" in state.errors["u/03"]  # the message still says where
        for path in [p for p in tmp_path.rglob("*") if p.is_file()]:
            assert PASSWORD not in path.read_text(errors="replace"), path
    for text in outputs:
        assert "u/03" in text or not text
        assert PASSWORD not in text, text[-3000:]
