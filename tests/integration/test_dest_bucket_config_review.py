"""Destination buckets as backup accounts configure them: Object Lock, versioning, default
encryption, bucket policies, lifecycle rules."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from asyncbackup import run_github_backup
from asyncbackup.checkpoint import read_checkpoint
from asyncbackup.cli import build_github_parser
from asyncbackup.errors import FatalRunError
from tests.conftest import Buckets
from tests.helpers import cli_args
from tests.integration.github_org import config, running_org
from tests.proxy import Rule, S3Proxy
from tests.reliability import assert_identical, one_error_line, put_parallel, run_cli


def locked_bucket(s3: Any, name: str, mode: str = "COMPLIANCE") -> None:
    """A bucket with Object Lock whose every new object gets a default retention."""
    s3.create_bucket(Bucket=name, ObjectLockEnabledForBucket=True)
    s3.put_object_lock_configuration(
        Bucket=name,
        ObjectLockConfiguration={
            "ObjectLockEnabled": "Enabled",
            "Rule": {"DefaultRetention": {"Mode": mode, "Days": 1}},
        },
    )


@pytest.mark.parametrize("answer", ["moto", "s3"])
def test_checksum_none_into_an_object_lock_bucket_stops_the_run_in_one_line(
    proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path, answer: str
) -> None:
    """S3 (PutObject, "Uploading objects to an Object Lock enabled bucket"): "The Content-MD5
    or x-amz-sdk-checksum-algorithm header is required for any request to upload an object
    with a retention period configured using Amazon S3 Object Lock", a bucket's default
    retention included; without one it answers 400 InvalidRequest ("Content-MD5 OR
    x-amz-checksum- HTTP header is required for Put Object requests with Object Lock
    parameters"; moto: MissingUploadObjectWithObjectLockHeaders). ``--checksum none`` sends
    neither: every object was downloaded, then refused, one error each (exit 1), with nothing
    saying that the flag was the cause. Now the first refusal stops the run (exit 3), in one
    line that names the flag; the same command with a checksum then completes."""
    dest = f"{buckets.dest}-locked"
    locked_bucket(s3, dest)
    put_parallel(s3, buckets.source, {f"p/{i:02d}": b"x" * 10 for i in range(30)})
    if answer == "s3":
        proxy.add_rule(Rule("object_lock_needs_checksum", method="PUT", path=f"^/{dest}/"))
    args = ["p", *cli_args(proxy.endpoint, tmp_path, buckets.source, dest), "--quiet"]
    done = run_cli([*args, "--checksum", "none", "--concurrency", "2"])
    assert done.returncode == 3, done.stderr
    line = one_error_line(done.stderr)
    assert "--checksum none" in line and "Object Lock" in line, line
    puts = [r for r in proxy.seen(method="PUT") if r.path.startswith(f"/{dest}/")]
    assert len(puts) <= 4, len(puts)  # stopped at once, not one refusal per object
    proxy.clear_faults()
    again = run_cli(args)
    assert again.returncode == 0, again.stderr
    assert assert_identical(s3, buckets.source, dest) == 30


@pytest.mark.parametrize(
    ("header", "sent_with"),
    [
        ("x-amz-server-side-encryption", ["--sse", "AES256"]),
        ("x-amz-storage-class", ["--storage-class", "STANDARD_IA"]),
    ],
)
def test_a_policy_that_denies_uploads_without_a_header_stops_the_run_at_start(
    proxy: S3Proxy,
    buckets: Buckets,
    s3: Any,
    tmp_path: Path,
    header: str,
    sent_with: list[str],
) -> None:
    """A backup account's bucket policy commonly denies ``s3:PutObject`` unless the upload
    carries a header (AWS Organizations' example SCPs for S3: "Deny" ``s3:PutObject`` with
    ``"Null": {"s3:x-amz-server-side-encryption": "true"}``); S3 answers such an upload 403
    AccessDenied, and authorizes CreateMultipartUpload as ``s3:PutObject`` under the same
    condition keys. The run's start-up check only listed the bucket (which the policy allows):
    every object was then downloaded and refused, one bare "AccessDenied: Access Denied" each
    (exit 1). The first refusal now asks the start-up check's upload (started with the run's
    settings and aborted): refused too, the run stops (exit 3) in one line that says what to
    check; with the header the policy asks for, the same command completes."""
    put_parallel(s3, buckets.source, {f"p/{i:02d}": b"x" * 10 for i in range(30)})
    for method in ("PUT", "POST"):  # PutObject and UploadPart; CreateMultipartUpload
        proxy.add_rule(
            Rule("access_denied", method=method, path=f"^/{buckets.dest}/.", unless_header=header)
        )
    args = ["p", *cli_args(proxy.endpoint, tmp_path, buckets.source, buckets.dest), "--quiet"]
    done = run_cli([*args, "--concurrency", "2"])
    assert done.returncode == 3, done.stderr
    line = one_error_line(done.stderr)
    assert "refuses any upload" in line and "bucket policy" in line and "--sse" in line, line
    gets = [r for r in proxy.seen(method="GET") if r.path.startswith(f"/{buckets.source}/p/")]
    assert len(gets) <= 4, len(gets)  # stopped at the first refusals
    assert not s3.list_multipart_uploads(Bucket=buckets.dest).get("Uploads")
    again = run_cli([*args, *sent_with])
    assert again.returncode == 0, again.stderr
    assert assert_identical(s3, buckets.source, buckets.dest) == 30


def test_a_resumed_skip_existing_run_keeps_done_copies_whose_etags_cannot_match(
    proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path
) -> None:
    """S3 (Checking object integrity, "Using Content-MD5 and the ETag"): an object uploaded
    in parts has an ETag that is no MD5 of its data ("<md5 of the part MD5s>-N"), so the copy
    of a single-part source of ``--multipart-threshold`` or more never has its source's ETag,
    whatever the content. A ``--skip-existing`` resume of a nightly job that keeps ending
    with errors took that difference for a source changed since its copy: every such done
    copy was made again at every resume (a new version each night in a versioned backup
    bucket). ETags of two kinds say nothing; the same size keeps it done, as a plain resume
    does; a change of size is still copied again."""
    big, grown = b"b" * (6 << 20), b"g" * (6 << 20)
    put_parallel(s3, buckets.source, {"p/big": big, "p/grown": grown, "p/small": b"s" * 10})
    put_parallel(s3, buckets.source, {"p/denied": b"d" * 10})
    proxy.add_rule(Rule("access_denied", method="GET", path=f"^/{buckets.source}/p/denied$"))
    args = [
        "p",
        *cli_args(proxy.endpoint, tmp_path, buckets.source, buckets.dest),
        "--skip-existing",
        "--multipart-threshold",
        "5MiB",
        "--part-size",
        "5MiB",
        "--quiet",
    ]
    first = run_cli(args)
    assert first.returncode == 1, first.stderr
    assert len(s3.list_objects_v2(Bucket=buckets.dest)["Contents"]) == 3
    s3.put_object(Bucket=buckets.source, Key="p/grown", Body=grown + b"more")
    proxy.requests.clear()
    again = run_cli(args)
    assert again.returncode == 1, again.stderr
    sent = {r.path for r in proxy.seen() if r.method in ("PUT", "POST")}
    assert f"/{buckets.dest}/p/big" not in sent, sorted(sent)
    assert f"/{buckets.dest}/p/grown" in sent, sorted(sent)
    head = s3.head_object(Bucket=buckets.dest, Key="p/grown")
    assert head["ContentLength"] == len(grown) + 4


def test_a_resumed_skip_existing_run_keeps_done_copies_encrypted_with_sse_kms(
    proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path
) -> None:
    """S3 (Common Response Headers, ETag): "Objects created by the PUT Object, POST Object,
    or Copy operation, or through the AWS Management Console, and are encrypted by SSE-KMS
    have ETags that are not an MD5 digest of their object data" (moto keeps MD5s: the proxy
    lists them as S3 does). With ``--sse aws:kms`` no copy's ETag can be its source's, and a
    ``--skip-existing`` resume made every copy its checkpoint marks done again; they stay
    done now (as a plain resume leaves them), a change of size is still copied again."""
    put_parallel(s3, buckets.source, {f"p/{i:02d}": b"x" * 10 for i in range(10)})
    put_parallel(s3, buckets.source, {"p/denied": b"d" * 10})
    proxy.add_rule(Rule("access_denied", method="GET", path=f"^/{buckets.source}/p/denied$"))
    proxy.add_rule(Rule("kms_etags", method="GET", path=f"^/{buckets.dest}$", query="list-type"))
    args = [
        "p",
        *cli_args(proxy.endpoint, tmp_path, buckets.source, buckets.dest),
        "--skip-existing",
        "--sse",
        "aws:kms",
        "--quiet",
    ]
    first = run_cli(args)
    assert first.returncode == 1, first.stderr
    s3.put_object(Bucket=buckets.source, Key="p/03", Body=b"longer than before")
    proxy.requests.clear()
    again = run_cli(args)
    assert again.returncode == 1, again.stderr
    sent = {r.path for r in proxy.seen(method="PUT")}
    assert sent == {f"/{buckets.dest}/p/03"}, sorted(sent)


async def test_a_github_destination_that_refuses_every_upload_stops_the_run(
    tmp_path: Path, proxy: S3Proxy, buckets: Buckets
) -> None:
    """The same bucket policy as above (deny ``s3:PutObject`` without
    ``x-amz-server-side-encryption``) in front of the GitHub command, which sends no
    encryption header: every repository was cloned and every artifact refused, one bare
    "AccessDenied: Access Denied" each. The first refusal now asks the destination with one
    upload started and aborted; refused too, the run stops in one line."""
    base = tmp_path / "work"
    async with running_org(tmp_path / "git") as github:
        for method in ("PUT", "POST"):
            proxy.add_rule(
                Rule(
                    "access_denied",
                    method=method,
                    path=f"^/{buckets.dest}/.",
                    unless_header="x-amz-server-side-encryption",
                )
            )
        clock = github.clock
        options = config(github, proxy.endpoint, buckets.dest, base, concurrency=1)
        with pytest.raises(FatalRunError) as caught:
            await run_github_backup(clock=clock, sleep=clock.sleep, **options)
        message = str(caught.value)
        assert "refuses any upload" in message and "bucket policy" in message, message
        # what to check names only flags the GitHub command has (it had --sse, --storage-class)
        flags = {f for a in build_github_parser()._actions for f in a.option_strings}
        named = set(re.findall(r"--[a-z][a-z0-9-]*", message))
        assert named and named <= flags, named - flags
        state = read_checkpoint(base / "checkpoints" / "github_acme.checkpoint")
        assert len(state.errors) <= 1, state.errors
        assert len(github.git_requests("beta")) + len(github.git_requests("old")) == 0
