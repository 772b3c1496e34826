"""Flag values that only the S3 client looks into: still one line and exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import Buckets, S3Server
from tests.helpers import cli_args
from tests.reliability import one_error_line, run_cli


@pytest.mark.parametrize("flag", ["--endpoint-url", "--dest-endpoint-url"])
def test_malformed_endpoint_url_is_a_usage_error(
    s3_server: S3Server, buckets: Buckets, tmp_path: Path, flag: str
) -> None:
    args = ["p", *cli_args(s3_server.endpoint, tmp_path, buckets.source, buckets.dest)]
    done = run_cli([*args, flag, "http://[::1", "--quiet"])
    assert done.returncode == 2, done.stderr
    line = one_error_line(done.stderr)
    assert "unexpected" not in line and "endpoint" in line, line
