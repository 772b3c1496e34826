"""The README's IAM policies are enough: every request a backup sends, recorded by the proxy,
is checked against the two policies as the README writes them (source and destination), and a
backup never deletes, tags or changes an object's ACL on either side."""

from __future__ import annotations

import fnmatch
import re
import subprocess
import sys
import urllib.parse
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.conftest import Buckets
from tests.helpers import MiB, assert_same_objects, cli_args, list_keys, put_multipart, run_cli
from tests.integration.test_resume import left_upload
from tests.proxy import Recorded, Rule, S3Proxy

README = Path(__file__).resolve().parents[2] / "README.md"
#: the bucket names the README's policies are written for
README_BUCKETS = {"source": "company-data-db", "destination": "company-archive"}


def readme_policy(name: str, bucket: str) -> dict[str, Any]:
    """The JSON block after ``<!-- policy: NAME -->`` in the README, for ``bucket``."""
    text = README.read_text()
    found = re.search(rf"<!-- policy: {name} -->\n```json\n(.*?)\n```", text, re.DOTALL)
    assert found, f"the README has no policy {name!r}"
    document: dict[str, Any] = orjson.loads(found.group(1).replace(README_BUCKETS[name], bucket))
    return document


def allows(
    policy: dict[str, Any], action: str, resource: str, context: dict[str, str] | None = None
) -> bool:
    """Whether an Allow statement of ``policy`` covers ``action`` on ``resource`` (the policies
    here have no Deny). A statement's ``StringLike`` condition needs each of its keys in the
    request's ``context`` (``s3:prefix``: a listing's prefix, absent when it has none)."""
    for statement in policy["Statement"]:
        actions = statement["Action"]
        resources = statement["Resource"]
        actions = [actions] if isinstance(actions, str) else actions
        resources = [resources] if isinstance(resources, str) else resources
        conditions = statement.get("Condition", {}).get("StringLike", {})
        if (
            statement["Effect"] == "Allow"
            and any(fnmatch.fnmatchcase(action, a) for a in actions)
            and any(fnmatch.fnmatchcase(resource, r) for r in resources)
            and all(
                name in (context or {})
                and any(fnmatch.fnmatchcase((context or {})[name], v) for v in values)
                for name, values in conditions.items()
            )
        ):
            return True
    return False


def needs(request: Recorded) -> tuple[str, list[tuple[str, str]]]:
    """The S3 operation of a recorded request, and the (IAM action, resource) pairs AWS checks
    for it (https://docs.aws.amazon.com/AmazonS3/latest/API/API_Operations.html)."""
    bucket, _, key = urllib.parse.unquote(request.path).lstrip("/").partition("/")
    query = urllib.parse.parse_qs(request.query, keep_blank_values=True)
    bucket_arn, object_arn = f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/{key}"
    copy = request.headers.get("x-amz-copy-source")
    method = request.method
    # Tags written with the object (PutObject, CreateMultipartUpload, CopyObject with tags):
    # s3:PutObjectTagging on top; a CopyObject that copies them, s3:GetObjectTagging too.
    tagged = [("s3:PutObjectTagging", object_arn)] if "x-amz-tagging" in request.headers else []
    if copy is not None and request.headers.get("x-amz-tagging-directive") == "COPY":
        source_arn = f"arn:aws:s3:::{urllib.parse.unquote(copy.split('?', 1)[0]).lstrip('/')}"
        tagged = [("s3:PutObjectTagging", object_arn), ("s3:GetObjectTagging", source_arn)]
    if key and method == "GET" and set(query) <= {"tagging", "versionId"} and "tagging" in query:
        return "GetObjectTagging", [("s3:GetObjectTagging", object_arn)]
    if not key:
        if method == "GET" and "uploads" in query:
            return "ListMultipartUploads", [("s3:ListBucketMultipartUploads", bucket_arn)]
        if (
            method == "GET"
            and set(query)
            <= {
                "list-type",
                "prefix",
                "max-keys",
                "encoding-type",
                "continuation-token",
                "start-after",
            }
        ) or (method == "HEAD" and not query):
            return "ListBucket", [("s3:ListBucket", bucket_arn)]
    elif copy is not None and method == "PUT" and "tagging" not in query:
        source = urllib.parse.unquote(copy.split("?", 1)[0]).lstrip("/")
        operation = "UploadPartCopy" if "partNumber" in query else "CopyObject"
        return operation, [
            ("s3:PutObject", object_arn),
            ("s3:GetObject", f"arn:aws:s3:::{source}"),
            *tagged,
        ]
    elif method in ("GET", "HEAD") and set(query) <= {"partNumber"}:
        return f"{method.title()}Object", [("s3:GetObject", object_arn)]
    elif method == "PUT" and (not query or set(query) == {"partNumber", "uploadId"}):
        return ("UploadPart" if query else "PutObject"), [("s3:PutObject", object_arn), *tagged]
    elif method == "POST" and set(query) in ({"uploads"}, {"uploadId"}):
        operation = "CreateMultipartUpload" if "uploads" in query else "CompleteMultipartUpload"
        return operation, [("s3:PutObject", object_arn), *tagged]
    elif method == "DELETE" and set(query) == {"uploadId"}:
        return "AbortMultipartUpload", [("s3:AbortMultipartUpload", object_arn)]
    # anything else (DeleteObject, tagging, ACLs, bucket settings) is in no policy
    return f"{method} {request.path}?{request.query}", [(f"unknown:{method}", object_arn)]


def check_requests(requests: list[Recorded], policies: dict[str, dict[str, Any]]) -> set[str]:
    """Every request allowed by the policy of the bucket it goes to; the operations seen."""
    operations: set[str] = set()
    for request in requests:
        bucket = urllib.parse.unquote(request.path).lstrip("/").partition("/")[0]
        operation, pairs = needs(request)
        operations.add(operation)
        query = urllib.parse.parse_qs(request.query, keep_blank_values=True)
        context = {"s3:prefix": query["prefix"][0]} if "prefix" in query else {}
        for action, resource in pairs:
            policy = policies[resource.removeprefix("arn:aws:s3:::").partition("/")[0]]
            assert allows(policy, action, resource, context), (
                f"{operation} on {bucket} needs {action} on {resource} ({context}), which the "
                "README's policy does not give"
            )
    return operations


def _seed(s3: Any, bucket: str) -> None:
    for i in range(12):
        s3.put_object(
            Bucket=bucket, Key=f"p/small/{i}", Body=b"x" * (100 + i), ContentType="text/plain"
        )
    s3.put_object(Bucket=bucket, Key="p/empty", Body=b"")
    s3.put_object(Bucket=bucket, Key="p/big-single", Body=b"s" * (11 * MiB))  # sent in parts
    put_multipart(s3, bucket, "p/multi", [5 * MiB, 5 * MiB, 1 * MiB])


@pytest.mark.parametrize("fast_path", [True, False])
def test_a_staged_backup_needs_only_the_readme_policies(
    proxy: S3Proxy, s3: Any, buckets: Buckets, tmp_path: Path, fast_path: bool
) -> None:
    _seed(s3, buckets.source)
    # a lost answer to CreateMultipartUpload: the uploads of the key are listed and aborted
    proxy.add_rule(Rule("reset_after", method="POST", query="uploads", times=1))
    extra = ["--multipart-threshold", "5MiB", "--part-size", "5MiB", "--quiet"]
    extra += [] if fast_path else ["--no-fast-path"]
    args = cli_args(proxy.endpoint, tmp_path, buckets.source, buckets.dest, *extra)
    first = run_cli(["p", *args])
    assert first.returncode == 0, first.stderr
    s3.put_object(Bucket=buckets.source, Key="p/small/new", Body=b"new")
    again = run_cli(["p", *args, "--skip-existing"])
    assert again.returncode == 0, again.stderr
    assert assert_same_objects(s3, buckets.source, buckets.dest) == 16
    archived = next((tmp_path / "checkpoints" / "archive").iterdir())
    command = ["checkpoint", "verify", str(archived), "--endpoint-url", proxy.endpoint]
    verify = subprocess.run(
        [sys.executable, "-m", "asyncbackup", *command],
        capture_output=True,
        text=True,
        check=False,
    )
    assert verify.returncode == 0, verify.stderr

    # --skip-existing reads the stamp of the copy sent in parts (its ETag is not its source's)
    assert "`--skip-existing` adds `s3:GetObject` on the destination" in README.read_text()
    policies = {
        buckets.source: readme_policy("source", buckets.source),
        buckets.dest: with_action(readme_policy("destination", buckets.dest), "s3:GetObject"),
    }
    seen = check_requests(proxy.seen(), policies)
    assert {
        "ListBucket",
        "GetObject",
        "PutObject",
        "CreateMultipartUpload",
        "UploadPart",
        "CompleteMultipartUpload",
        "ListMultipartUploads",
    } <= seen, seen


def test_a_direct_copy_needs_the_two_policies_together(
    proxy: S3Proxy, s3: Any, buckets: Buckets, tmp_path: Path
) -> None:
    _seed(s3, buckets.source)
    extra = ["--multipart-threshold", "5MiB", "--part-size", "5MiB", "--quiet", "--direct"]
    args = cli_args(proxy.endpoint, tmp_path, buckets.source, buckets.dest, *extra)
    done = run_cli(["p", *args])
    assert done.returncode == 0, done.stderr
    assert assert_same_objects(s3, buckets.source, buckets.dest) == 15
    both = {
        "Version": "2012-10-17",
        "Statement": readme_policy("source", buckets.source)["Statement"]
        + readme_policy("destination", buckets.dest)["Statement"],
    }
    seen = check_requests(proxy.seen(), {buckets.source: both, buckets.dest: both})
    assert {"ListBucket", "CopyObject", "UploadPartCopy", "HeadObject"} <= seen, seen


def test_a_request_outside_the_policies_is_caught(buckets: Buckets) -> None:
    """The checker itself: a DeleteObject at the destination, a GET of a destination object
    with the source policy, a PUT into the source bucket."""
    policies = {
        buckets.source: readme_policy("source", buckets.source),
        buckets.dest: readme_policy("destination", buckets.dest),
    }
    for method, path, query in [
        ("DELETE", f"/{buckets.dest}/p/x", ""),
        ("GET", f"/{buckets.dest}/p/x", ""),
        ("PUT", f"/{buckets.source}/p/x", ""),
        ("PUT", f"/{buckets.dest}/p/x", "tagging="),
    ]:
        with pytest.raises(AssertionError, match="README's policy does not give"):
            check_requests([Recorded(method, path, None, query=query)], policies)


def _write_only(proxy: S3Proxy, bucket: str) -> None:
    """The proxy answers AccessDenied to every read of ``bucket`` (GET and HEAD of the bucket
    and its objects: listings, HEAD, GET), as S3 does under a write-only policy."""
    for method in ("GET", "HEAD"):
        proxy.add_rule(Rule("access_denied", method=method, path=rf"^/{bucket}(/|$)"))


@pytest.mark.parametrize("mode", [(), ("--no-fast-path",), ("--processes", "2")])
def test_a_write_only_destination_is_backed_up_with_dest_write_only(
    proxy: S3Proxy, s3: Any, buckets: Buckets, tmp_path: Path, mode: tuple[str, ...]
) -> None:
    """Destination credentials that may only write (a "backup vault" writer: s3:PutObject and
    s3:AbortMultipartUpload) were refused at the start-up check, which lists the bucket. With
    --dest-write-only the check starts and aborts an upload instead, and nothing else of the
    run reads the destination."""
    _seed(s3, buckets.source)
    _write_only(proxy, buckets.dest)
    extra = ["--multipart-threshold", "5MiB", "--part-size", "5MiB", "--quiet", *mode]
    args = cli_args(proxy.endpoint, tmp_path, buckets.source, buckets.dest, *extra)
    refused = run_cli(["p", *args])
    assert refused.returncode == 2
    assert f"access to destination bucket '{buckets.dest}' was refused" in refused.stderr
    before = len(proxy.seen())
    done = run_cli(["p", *args, "--dest-write-only"])
    assert done.returncode == 0, done.stderr
    assert assert_same_objects(s3, buckets.source, buckets.dest) == 15
    assert s3.list_multipart_uploads(Bucket=buckets.dest).get("Uploads", []) == []
    assert not [k for k in list_keys(s3, buckets.dest) if "asyncbackup-write-check" in k]
    writer = readme_policy("destination", buckets.dest)
    writer["Statement"] = [
        {
            "Effect": "Allow",
            "Action": ["s3:PutObject", "s3:AbortMultipartUpload"],
            "Resource": f"arn:aws:s3:::{buckets.dest}/p/*",
        }
    ]
    run = proxy.seen()[before:]
    assert [r for r in run if r.fault] == []  # no read of the destination was even tried
    check_requests(
        run, {buckets.source: readme_policy("source", buckets.source), buckets.dest: writer}
    )


def test_dest_write_only_says_what_is_wrong_with_the_destination(
    proxy: S3Proxy, s3: Any, buckets: Buckets, tmp_path: Path
) -> None:
    """Nothing listed at start, yet a missing bucket or a refused upload is still one line and
    exit 2 before anything is copied; --skip-existing, which lists, is refused."""
    _seed(s3, buckets.source)
    args = cli_args(proxy.endpoint, tmp_path, buckets.source, "no-such-bucket-w", "--quiet")
    missing = run_cli(["p", *args, "--dest-write-only"])
    assert missing.returncode == 2
    assert "destination bucket 'no-such-bucket-w' does not exist" in missing.stderr
    proxy.add_rule(Rule("access_denied", method="POST", path=rf"^/{buckets.dest}/"))
    args = cli_args(proxy.endpoint, tmp_path, buckets.source, buckets.dest, "--quiet")
    denied = run_cli(["p", *args, "--dest-write-only"])
    assert denied.returncode == 2
    assert "was refused to start an upload (AccessDenied)" in denied.stderr
    both = run_cli(["p", *args, "--dest-write-only", "--skip-existing"])
    assert both.returncode == 2 and "--skip-existing lists the destination" in both.stderr
    assert list_keys(s3, buckets.dest) == []


def test_a_write_only_run_aborts_the_upload_a_crashed_run_left(
    proxy: S3Proxy, s3: Any, buckets: Buckets, tmp_path: Path
) -> None:
    """The upload a crash left is aborted by its recorded id; the sweep for others of its key
    lists uploads, which write-only credentials may not. That refusal is not a failure to
    abort: the run says nothing of it and forgets the record."""
    checkpoint, upload = left_upload(s3, buckets, tmp_path)
    data = orjson.loads(checkpoint.read_bytes())
    data["multipart_uploads"] = {"job/big": upload}
    checkpoint.write_bytes(orjson.dumps(data))
    _write_only(proxy, buckets.dest)
    args = cli_args(proxy.endpoint, tmp_path, buckets.source, buckets.dest, "--dest-write-only")
    done = run_cli(["job", *args, "--on-complete", "delete"])
    assert done.returncode == 0, done.stderr
    assert "could not abort" not in done.stderr, done.stderr
    assert s3.list_multipart_uploads(Bucket=buckets.dest).get("Uploads", []) == []
    assert list_keys(s3, buckets.dest) == ["job/x"]


def test_a_dry_run_with_dest_write_only_writes_nothing(
    proxy: S3Proxy, s3: Any, buckets: Buckets, tmp_path: Path
) -> None:
    """--dest-write-only's check is an upload started and aborted; a dry run sends only
    reads, so it leaves the destination unchecked (and it may not list it either)."""
    _seed(s3, buckets.source)
    _write_only(proxy, buckets.dest)
    args = cli_args(proxy.endpoint, tmp_path, buckets.source, buckets.dest, "--dest-write-only")
    plan = run_cli(["p", *args, "--dry-run"])
    assert plan.returncode == 0, plan.stderr
    assert "would copy 15 files" in plan.stdout
    assert {r.method for r in proxy.seen()} <= {"GET", "HEAD"}
    assert not [r for r in proxy.seen() if r.path.startswith(f"/{buckets.dest}")]


def _narrowed(policy: dict[str, Any], bucket: str, prefix: str) -> dict[str, Any]:
    """``policy`` narrowed to ``prefix`` as the README says: the object ARNs to
    ``bucket/prefix/*``, and ``s3:ListBucket`` in a statement of its own with an
    ``s3:prefix`` condition."""
    statements: list[dict[str, Any]] = []
    for statement in policy["Statement"]:
        actions = statement["Action"]
        actions = [actions] if isinstance(actions, str) else actions
        if statement["Resource"].endswith("/*"):
            statements.append({**statement, "Resource": f"arn:aws:s3:::{bucket}/{prefix}/*"})
            continue
        rest = [a for a in actions if a != "s3:ListBucket"]
        if rest:
            statements.append({**statement, "Action": rest})
        if "s3:ListBucket" in actions:
            statements.append(
                {
                    **statement,
                    "Action": "s3:ListBucket",
                    "Condition": {"StringLike": {"s3:prefix": [f"{prefix}/*"]}},
                }
            )
    return {**policy, "Statement": statements}


def test_a_backup_needs_to_list_only_the_prefix_it_copies(
    proxy: S3Proxy, s3: Any, buckets: Buckets, tmp_path: Path
) -> None:
    """A bucket shared between teams gives each the right to list its own prefix only. The
    start-up checks listed the whole bucket (one key, no prefix), which such a policy
    refuses; they now list under the job's prefix, as the run does."""
    _seed(s3, buckets.source)
    extra = ["--multipart-threshold", "5MiB", "--part-size", "5MiB", "--quiet"]
    args = cli_args(proxy.endpoint, tmp_path, buckets.source, buckets.dest, *extra)
    assert run_cli(["p", *args]).returncode == 0
    assert run_cli(["p", *args, "--skip-existing"]).returncode == 0
    archived = next((tmp_path / "checkpoints" / "archive").iterdir())
    command = ["checkpoint", "verify", str(archived), "--endpoint-url", proxy.endpoint]
    verify = subprocess.run(
        [sys.executable, "-m", "asyncbackup", *command], capture_output=True, text=True
    )
    assert verify.returncode == 0, verify.stderr
    policies = {
        buckets.source: _narrowed(readme_policy("source", buckets.source), buckets.source, "p"),
        buckets.dest: _narrowed(
            with_action(readme_policy("destination", buckets.dest), "s3:GetObject"),
            buckets.dest,
            "p",
        ),
    }
    check_requests(proxy.seen(), policies)


def with_action(policy: dict[str, Any], action: str) -> dict[str, Any]:
    """``policy`` with ``action`` added to its object statement (the one on ``BUCKET/*``)."""
    statements = []
    for statement in policy["Statement"]:
        resources = statement["Resource"]
        resources = [resources] if isinstance(resources, str) else resources
        if any(r.endswith("/*") for r in resources):
            actions = statement["Action"]
            statement = {
                **statement,
                "Action": [*([actions] if isinstance(actions, str) else actions), action],
            }
        statements.append(statement)
    return {**policy, "Statement": statements}


@pytest.mark.parametrize(
    "mode", [[], ["--no-fast-path"], ["--direct"]], ids=["staged", "botocore", "direct"]
)
def test_copy_tags_needs_the_two_tagging_permissions_the_readme_adds(
    proxy: S3Proxy, s3: Any, buckets: Buckets, tmp_path: Path, mode: list[str]
) -> None:
    _seed(s3, buckets.source)
    for key in ("p/small/1", "p/big-single", "p/multi"):
        s3.put_object_tagging(
            Bucket=buckets.source, Key=key, Tagging={"TagSet": [{"Key": "k", "Value": "v"}]}
        )
    extra = ["--multipart-threshold", "5MiB", "--part-size", "5MiB", "--quiet", "--copy-tags"]
    args = cli_args(proxy.endpoint, tmp_path, buckets.source, buckets.dest, *extra, *mode)
    done = run_cli(["p", *args])
    assert done.returncode == 0, done.stderr
    assert s3.get_object_tagging(Bucket=buckets.dest, Key="p/multi")["TagSet"] == [
        {"Key": "k", "Value": "v"}
    ]
    source = readme_policy("source", buckets.source)
    dest = readme_policy("destination", buckets.dest)
    if mode == ["--direct"]:
        source = dest = {**source, "Statement": source["Statement"] + dest["Statement"]}
    with pytest.raises(AssertionError, match="Tagging"):  # the README's policies alone
        check_requests(proxy.seen(), {buckets.source: source, buckets.dest: dest})
    readme = README.read_text()
    assert "`--copy-tags` adds `s3:GetObjectTagging`" in readme
    source = with_action(source, "s3:GetObjectTagging")
    dest = with_action(dest, "s3:PutObjectTagging")
    if mode == ["--direct"]:
        source = dest = {**source, "Statement": source["Statement"] + dest["Statement"]}
    seen = check_requests(proxy.seen(), {buckets.source: source, buckets.dest: dest})
    assert "GetObjectTagging" in seen or mode == ["--direct"], seen
