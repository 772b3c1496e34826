"""Flag values that only the S3 client looks into: still one line and exit 2."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Buckets, S3Server
from tests.helpers import cli_args, put_multipart
from tests.proxy import Rule, S3Proxy, run_proxy
from tests.reliability import (
    CLI,
    assert_identical,
    checkpoint_file,
    one_error_line,
    put_parallel,
    read_valid,
    run_cli,
    start_cli,
    wait_for,
)


@pytest.mark.parametrize("flag", ["--endpoint-url", "--dest-endpoint-url"])
def test_malformed_endpoint_url_is_a_usage_error(
    s3_server: S3Server, buckets: Buckets, tmp_path: Path, flag: str
) -> None:
    args = ["p", *cli_args(s3_server.endpoint, tmp_path, buckets.source, buckets.dest)]
    done = run_cli([*args, flag, "http://[::1", "--quiet"])
    assert done.returncode == 2, done.stderr
    line = one_error_line(done.stderr)
    assert "unexpected" not in line and "endpoint" in line, line


@pytest.mark.parametrize("flag", ["--endpoint-url", "--source-endpoint-url"])
def test_malformed_endpoint_url_of_a_copy_within_one_bucket_is_a_usage_error(
    s3_server: S3Server, buckets: Buckets, tmp_path: Path, flag: str
) -> None:
    """Source and destination in one bucket: the same-bucket check reads the endpoints before
    any client is made (it said "unexpected ValueError", exit 3)."""
    args = ["p", *cli_args(s3_server.endpoint, tmp_path, buckets.source, buckets.source)]
    done = run_cli([*args, "--dest-prefix", "copies", flag, "http://[::1", "--quiet"])
    assert done.returncode == 2, done.stderr
    line = one_error_line(done.stderr)
    assert "unexpected" not in line and flag in line, line


def test_a_storage_class_the_destination_refuses_stops_the_run_with_one_line(
    s3_server: S3Server, buckets: Buckets, s3: Any, tmp_path: Path
) -> None:
    """Not one InvalidStorageClass error per object (every object downloaded and staged for
    nothing, then a summary of errors): the flag is wrong, and the run says so once."""
    put_parallel(s3, buckets.source, {f"p/{i:02d}": b"x" * 10 for i in range(30)})
    args = ["p", *cli_args(s3_server.endpoint, tmp_path, buckets.source, buckets.dest)]
    done = run_cli([*args, "--storage-class", "NO_SUCH_CLASS", "--quiet", "--concurrency", "2"])
    assert done.returncode == 2, done.stderr
    line = one_error_line(done.stderr)
    assert "--storage-class" in line and "InvalidStorageClass" in line, line
    state = read_valid(checkpoint_file(tmp_path, buckets.source, "p"))
    assert not any(state.files.values()) and not state.errors
    assert not s3.list_objects_v2(Bucket=buckets.dest).get("Contents")
    again = run_cli([*args, "--storage-class", "STANDARD_IA", "--quiet"])
    assert again.returncode == 0, again.stderr
    assert assert_identical(s3, buckets.source, buckets.dest) == 30


@pytest.mark.parametrize(
    ("fault", "code"), [("expired_token", "ExpiredToken"), ("invalid_argument", "InvalidArgument")]
)
def test_refused_at_start_says_what_to_check(
    proxy: S3Proxy, buckets: Buckets, tmp_path: Path, fault: str, code: str
) -> None:
    """Every refusal of the start-up check says what to do, not only the codes it knows:
    an expired session token is a credentials problem like InvalidAccessKeyId."""
    proxy.add_rule(Rule(fault))
    args = ["p", *cli_args(proxy.endpoint, tmp_path, buckets.source, buckets.dest)]
    done = run_cli([*args, "--quiet", "--max-attempts", "1"])
    assert done.returncode == 2, done.stderr
    line = one_error_line(done.stderr)
    assert code in line and "check" in line, line
    if code == "ExpiredToken":
        assert "--source-profile" in line, line


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_dry_run_exits_130_with_one_line(
    sig: signal.Signals, proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path
) -> None:
    """As a run does (the README's exit codes): not killed by SIGTERM, not silent on Ctrl-C."""
    put_parallel(s3, buckets.source, {f"s/{i:03d}": b"x" for i in range(50)})
    proxy.latency = 1.0  # the listing takes a while
    base = tmp_path / "w"
    args = ["s", *cli_args(proxy.endpoint, base, buckets.source, buckets.dest, "--dry-run")]
    process = start_cli(args)
    wait_for(lambda: len(proxy.requests) >= 2, timeout=30)  # the bucket checks went out
    process.send_signal(sig)
    out, err = process.communicate(timeout=30)
    assert process.returncode == 130, (process.returncode, err)
    assert "interrupted" in one_error_line(err) and out == ""
    assert not base.exists()  # a dry run touches nothing


MiB = 1024 * 1024


def cli_with_open_files(args: list[str], soft: int, hard: int) -> subprocess.CompletedProcess[str]:
    """The CLI started with these limits of open files (``ulimit -Sn``, ``ulimit -Hn``)."""

    def limit_open_files() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    return subprocess.run(
        [*CLI, *args],
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=limit_open_files,
    )


def test_a_high_concurrency_under_a_low_soft_open_file_limit_completes(
    s3_server: S3Server, buckets: Buckets, s3: Any, tmp_path: Path
) -> None:
    """Linux's usual soft limit of open files is 1,024 (the hard one far higher): every object
    in flight holds a connection to each side and a staged file, so --concurrency 512 ran out
    of descriptors ('Too many open files' on staged files, then on the checkpoint journal:
    exit 2 with 'free space or fix permissions'). The command line owns its process, and
    takes the hard limit as its soft one, as Go programs do."""
    put_parallel(s3, buckets.source, {f"n/{i:04d}": b"x" * 10 for i in range(600)})
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY:
        hard = max(hard, 4096)  # the tests run as root, who may raise it

    args = ["n", *cli_args(s3_server.endpoint, tmp_path, buckets.source, buckets.dest)]
    done = cli_with_open_files([*args, "--concurrency", "300", "--quiet"], 256, hard)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Too many open files" not in done.stderr
    assert assert_identical(s3, buckets.source, buckets.dest) == 600


def test_a_low_hard_open_file_limit_lowers_the_concurrency_and_completes(
    s3_server: S3Server, buckets: Buckets, s3: Any, tmp_path: Path
) -> None:
    """A hard limit of open files no process may pass (a container's, ``ulimit -Hn``) too low
    for the default 128 objects in flight: the run failed after a burst of 'Too many open
    files' retries (exit 2, on the checkpoint's journal). It now copies as many at a time as
    the limit leaves room for, says so in one warning naming ``ulimit -n``, and completes."""
    put_parallel(s3, buckets.source, {f"h/{i:04d}": b"y" * 20_000 for i in range(600)})

    args = ["h", *cli_args(s3_server.endpoint, tmp_path, buckets.source, buckets.dest)]
    done = cli_with_open_files([*args, "--quiet"], 120, 120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Too many open files" not in done.stderr
    [warning] = [line for line in done.stderr.splitlines() if "WARNING" in line]
    assert "WARNING" not in done.stderr.replace(warning, ""), done.stderr
    assert "open-file limit (ulimit -n) is 120" in warning, warning
    assert "copying 18 at a time" in warning and "ulimit -n 448" in warning, warning
    assert assert_identical(s3, buckets.source, buckets.dest) == 600


@pytest.mark.parametrize("variable", ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"])
@pytest.mark.parametrize("fast_path", [True, False])
def test_credentials_with_a_line_break_are_refused_in_one_line(
    s3_server: S3Server, buckets: Buckets, tmp_path: Path, variable: str, fast_path: bool
) -> None:
    """An env file with Windows line ends gives 'KEY\\r': the fast path refused to send the
    header ('unexpected ValueError', exit 3), aiohttp too ('cannot reach the source
    endpoint (HTTPClientError)'), and a secret with it signs wrongly. One line, exit 2, and
    never the value."""
    env = dict(os.environ)
    env["AWS_ACCESS_KEY_ID"] = "AKIACRLF0000TEST"
    env["AWS_SECRET_ACCESS_KEY"] = "crlf-secret-0123456789abcdefghijklmnop"
    env[variable] += "\r"
    args = ["p", *cli_args(s3_server.endpoint, tmp_path, buckets.source, buckets.dest)]
    args += ["--quiet"] if fast_path else ["--quiet", "--no-fast-path"]
    done = run_cli(args, env=env)
    assert done.returncode == 2, done.stderr
    line = one_error_line(done.stderr)
    assert "credentials" in line and "control character" in line, line
    assert "unexpected" not in line
    assert "AKIACRLF" not in line and "crlf-secret" not in line


def test_a_kms_key_the_destination_refuses_stops_the_run_before_anything_is_copied(
    proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path
) -> None:
    """A mistyped --sse-kms-key-id made every object fail at its upload, after its download:
    a whole bucket read and staged for nothing, then a summary of N identical errors (exit 1).
    The start-up check now starts (and aborts) an upload with the run's encryption settings."""
    put_parallel(s3, buckets.source, {f"p/{i:02d}": b"x" * 10 for i in range(30)})
    for method, query in (("PUT", None), ("POST", "uploads")):
        proxy.add_rule(Rule("kms_not_found", method=method, path=f"/{buckets.dest}/", query=query))
    args = ["p", *cli_args(proxy.endpoint, tmp_path, buckets.source, buckets.dest)]
    kms = ["--sse", "aws:kms", "--sse-kms-key-id", "bad-key"]
    done = run_cli([*args, *kms, "--quiet", "--concurrency", "2"])
    assert done.returncode == 2, done.stderr
    line = one_error_line(done.stderr)
    assert "--sse-kms-key-id" in line and "KMS.NotFoundException" in line, line
    source_reads = [
        r
        for r in proxy.requests
        if r.method == "GET" and r.path.startswith(f"/{buckets.source}/p/")
    ]
    assert source_reads == []  # nothing downloaded for nothing
    assert not s3.list_multipart_uploads(Bucket=buckets.dest).get("Uploads")
    proxy.requests.clear()
    dry = run_cli([*args, *kms, "--quiet", "--dry-run"])  # sends reads only: no such check
    assert dry.returncode == 0, dry.stderr
    assert [r for r in proxy.requests if r.method not in ("GET", "HEAD")] == []
    proxy.clear_faults()
    again = run_cli([*args, "--sse", "aws:kms", "--quiet"])
    assert again.returncode == 0, again.stderr
    assert assert_identical(s3, buckets.source, buckets.dest) == 30


def test_a_start_up_upload_answered_200_without_its_id_is_asked_again(
    proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path
) -> None:
    """The start-up check's upload (--dest-write-only, SSE-KMS, a storage class) answered 200
    with no body (a server failing after its status line) ended the run with "unexpected
    KeyError: 'UploadId'", exit 3. It is a transient failure like any other: asked again."""
    put_parallel(s3, buckets.source, {"p/a": b"a"})
    proxy.add_rule(Rule("empty_200", method="POST", path="asyncbackup-write-check", times=1))
    args = ["p", *cli_args(proxy.endpoint, tmp_path, buckets.source, buckets.dest)]
    done = run_cli([*args, "--storage-class", "STANDARD_IA", "--quiet"])
    assert done.returncode == 0, done.stderr
    assert assert_identical(s3, buckets.source, buckets.dest) == 1


def test_a_bandwidth_limit_with_direct_is_a_usage_error(
    s3_server: S3Server, s3: Any, buckets: Buckets, tmp_path: Path
) -> None:
    """--direct copies server-side: no byte passes through this machine, so --max-bandwidth
    limited nothing (16 MiB went at 80 MB/s under 4MB/s, the option review saw), without a
    word. Refused now, before anything is copied."""
    put_parallel(s3, buckets.source, {"p/a": b"x" * 10})
    args = ["p", *cli_args(s3_server.endpoint, tmp_path, buckets.source, buckets.dest)]
    done = run_cli([*args, "--direct", "--max-bandwidth", "4MB/s", "--quiet"])
    assert done.returncode == 2, done.stderr
    line = one_error_line(done.stderr)
    assert "--max-bandwidth" in line and "--direct" in line, line
    assert s3.list_objects_v2(Bucket=buckets.dest).get("KeyCount", 0) == 0


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast", "botocore"])
def test_a_listing_page_that_is_no_listing_stops_the_run_in_one_named_line(
    s3_server: S3Server, s3: Any, buckets: Buckets, tmp_path: Path, fast_path: bool
) -> None:
    """A page whose object's <Size> is no number (a broken or hostile server) raised a bare
    ValueError out of the parser: the run ended "unexpected ValueError". Now it is a garbled
    answer (botocore's ResponseParserError), asked again, then one line: here at the start-up
    check's listing, exit 2."""
    put_parallel(s3, buckets.source, {"p/a": b"x" * 10})
    with run_proxy(s3_server.endpoint) as proxy:
        proxy.add_rule(Rule("bad_size", method="GET", path=f"^/{buckets.source}$"))
        args = ["p", *cli_args(proxy.endpoint, tmp_path, buckets.source, buckets.dest)]
        flags = ["--quiet", "--max-attempts", "2", *([] if fast_path else ["--no-fast-path"])]
        done = run_cli([*args, *flags])
    assert done.returncode == 2, done.stderr
    line = one_error_line(done.stderr)
    assert "unexpected" not in line and "ResponseParserError" in line, line
    assert "source" in line, line


def test_a_low_hard_open_file_limit_holds_for_direct_copies_in_parts(
    proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path
) -> None:
    """A --direct copy of a multipart object holds ``part_concurrency`` (4) connections to
    the server at once (its UploadPartCopy requests, nothing staged): three files per object
    in flight, the estimate the concurrency was lowered by, ran out of descriptors under a
    hard limit of 256 (measured: 268 open for 64 such copies in flight)."""
    for i in range(64):  # copied in their own layout: 5 parts each
        put_multipart(s3, buckets.source, f"l/{i:02d}", [5 * MiB] * 4 + [1000])
    proxy.latency = 0.3  # each part's connection held long enough for all to be open at once
    args = ["l", *cli_args(proxy.endpoint, tmp_path, buckets.source, buckets.dest, "--direct")]
    done = cli_with_open_files(args, 256, 256)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Too many open files" not in done.stderr, done.stderr[-3000:]
    [warning] = [line for line in done.stderr.splitlines() if "WARNING" in line]
    assert "WARNING" not in done.stderr.replace(warning, ""), done.stderr[-3000:]
    assert "about 4 files per object in flight" in warning, warning
    assert assert_identical(s3, buckets.source, buckets.dest) == 64
