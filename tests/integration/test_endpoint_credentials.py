"""Credentials written into an endpoint URL (``http://user:password@host``) are a secret like
any other: they never reach a log line, an error message, the checkpoint or a --report file.

S3 never uses them (requests are signed with the access keys), and the HTTP client under
botocore refuses every request that would carry them; the fast path ignored them. So a run
with one worked until its first request outside the fast path (a multipart upload, any
request with --no-fast-path), which failed with an error quoting the URL, password included,
into the log, the summary, the checkpoint and the report. Such an endpoint is now refused at
the start, with one line that does not repeat the password, however it is given.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Buckets, S3Server
from tests.helpers import cli_args
from tests.reliability import one_error_line, put_parallel, run_cli

PASSWORD = "endpoint-Passw0rd-Zq8vN3xW7pL2"


def with_user_info(endpoint: str) -> str:
    return endpoint.replace("http://", f"http://backup-user:{PASSWORD}@", 1)


@pytest.mark.parametrize(
    ("given", "fast_path"),
    [
        ("--endpoint-url", True),
        ("--endpoint-url", False),
        ("--dest-endpoint-url", True),
        ("AWS_ENDPOINT_URL", True),
    ],
)
def test_endpoint_with_user_info_is_refused_without_repeating_it(
    s3_server: S3Server, buckets: Buckets, s3: Any, tmp_path: Path, given: str, fast_path: bool
) -> None:
    put_parallel(s3, buckets.source, {f"u/{i:02d}": os.urandom(100) for i in range(3)})
    base, report = tmp_path / "work", tmp_path / "report.json"
    endpoint = with_user_info(s3_server.endpoint)
    args = ["u", *cli_args(s3_server.endpoint, base, buckets.source, buckets.dest)]
    args += ["--report", str(report), "--log-format", "json"]
    env = dict(os.environ)
    if given == "AWS_ENDPOINT_URL":
        args.remove("--endpoint-url")
        args.remove(s3_server.endpoint)
        env["AWS_ENDPOINT_URL"] = endpoint
    else:
        args += [given, endpoint]
    if not fast_path:
        args.append("--no-fast-path")
    done = run_cli(args, env=env)
    assert done.returncode == 2, done.stderr
    line = one_error_line(done.stderr)
    assert "user or password" in line and "--endpoint-url" in line, line
    debug = run_cli([*args, "--debug"], env=env)  # with its traceback
    assert debug.returncode == 2, debug.stderr
    for output in (done, debug):
        assert PASSWORD not in output.stderr + output.stdout
    for path in [p for p in tmp_path.rglob("*") if p.is_file()]:
        assert PASSWORD not in path.read_text(errors="replace"), path
    assert not s3.list_objects_v2(Bucket=buckets.dest).get("Contents")
