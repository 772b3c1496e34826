"""``--sse`` asked of a destination that does not apply it: S3 names the encryption it applied
in its answer to every upload and copy; a server that ignores the header (or a bucket policy's
exception) answers without it. The run said nothing and marked every copy done: a backup the
user asked to be encrypted sat unencrypted at the destination, exit 0."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Buckets
from tests.helpers import assert_same_objects, cli_args
from tests.proxy import Rule, S3Proxy
from tests.reliability import (
    assert_identical,
    checkpoint_file,
    one_error_line,
    put_parallel,
    read_valid,
    run_cli,
)


@pytest.mark.parametrize("sse", ["AES256", "aws:kms"])
def test_a_destination_that_ignores_sse_stops_the_run_before_anything_is_copied(
    proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path, sse: str
) -> None:
    put_parallel(s3, buckets.source, {f"p/{i:02d}": b"x" * 10 for i in range(20)})
    proxy.add_rule(Rule("sse_ignored", path=f"^/{buckets.dest}/"))
    args = ["p", *cli_args(proxy.endpoint, tmp_path, buckets.source, buckets.dest)]
    done = run_cli([*args, "--sse", sse, "--quiet", "--concurrency", "2"])
    assert done.returncode == 2, done.stderr
    line = one_error_line(done.stderr)
    assert "--sse" in line and sse in line and "encrypt" in line, line
    assert not s3.list_objects_v2(Bucket=buckets.dest).get("Contents")
    assert not s3.list_multipart_uploads(Bucket=buckets.dest).get("Uploads")
    proxy.clear_faults()
    again = run_cli([*args, "--sse", sse, "--quiet"])
    assert again.returncode == 0, again.stderr
    assert assert_identical(s3, buckets.source, buckets.dest) == 20


@pytest.mark.parametrize(
    "mode",
    [
        pytest.param([], id="staged"),
        pytest.param(["--direct"], id="direct"),
        pytest.param(["--multipart-threshold", "5MiB", "--part-size", "5MiB"], id="multipart"),
    ],
)
def test_an_object_stored_without_the_encryption_asked_for_is_an_error_not_done(
    proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path, mode: list[str]
) -> None:
    """The start-up check passes (the server applied it then); one object's answer says
    it was stored without, and so does its HEAD: that object is an error, never marked done."""
    big = b"y" * (6 << 20)
    put_parallel(s3, buckets.source, {"p/a": b"a" * 10, "p/b": big, "p/c": b"c" * 10})
    # the upload's last answer: a PUT or a copy of p/b, or the completion of its upload
    last = "POST" if "--part-size" in mode else "PUT"
    proxy.add_rule(Rule("sse_ignored", method=last, path=f"^/{buckets.dest}/p/b$"))
    proxy.add_rule(Rule("sse_ignored", method="HEAD", path=f"^/{buckets.dest}/p/b$"))
    args = ["p", *cli_args(proxy.endpoint, tmp_path, buckets.source, buckets.dest)]
    done = run_cli([*args, *mode, "--sse", "AES256", "--quiet"])
    assert done.returncode == 1, done.stderr
    state = read_valid(checkpoint_file(tmp_path, buckets.source, "p"))
    assert state.files == {"p/a": True, "p/b": False, "p/c": True}
    assert "encrypt" in state.errors["p/b"] and "AES256" in state.errors["p/b"]
    proxy.clear_faults()
    again = run_cli([*args, *mode, "--sse", "AES256", "--quiet"])
    assert again.returncode == 0, again.stderr
    assert assert_same_objects(s3, buckets.source, buckets.dest) == 3  # parts: other ETags


@pytest.mark.parametrize(
    "mode",
    [
        pytest.param([], id="staged"),
        pytest.param(["--direct"], id="direct"),
        pytest.param(["--multipart-threshold", "5MiB", "--part-size", "5MiB"], id="multipart"),
    ],
)
def test_an_answer_without_the_header_is_checked_by_the_objects_head(
    proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path, mode: list[str]
) -> None:
    """Some servers apply the encryption but leave its header off a copy's or a multipart
    completion's answer (s3s-project/s3s#325, a CopyObject in floci-io/floci#2145): an answer
    that names no encryption is not taken for none. The object's HEAD tells; it shows the
    encryption, and the object is done."""
    big = b"y" * (6 << 20)
    put_parallel(s3, buckets.source, {"p/a": b"a" * 10, "p/b": big})
    last = "POST" if "--part-size" in mode else "PUT"
    completion = "uploadId=" if last == "POST" else None  # not the start-up check's upload
    proxy.add_rule(Rule("sse_ignored", method=last, path=f"^/{buckets.dest}/p/", query=completion))
    args = ["p", *cli_args(proxy.endpoint, tmp_path, buckets.source, buckets.dest)]
    done = run_cli([*args, *mode, "--sse", "AES256", "--quiet"])
    assert done.returncode == 0, done.stderr
    heads = proxy.seen(method="HEAD", path=f"^/{buckets.dest}/p/b$")
    assert heads and heads[-1].status == 200
    assert s3.head_object(Bucket=buckets.dest, Key="p/b")["ServerSideEncryption"] == "AES256"


def test_skip_existing_copies_again_what_was_stored_without_the_encryption(
    proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path
) -> None:
    """The copy answered without the encryption stays at the destination with the source's
    size and ETag (an AES256 ETag is the MD5 too): --skip-existing took it for an identical
    copy and marked it done, without copying it again, exit 0 - the object the user asked to
    be encrypted stayed as the server stored it."""
    put_parallel(s3, buckets.source, {"p/a": b"a" * 10, "p/b": b"b" * 10, "p/c": b"c" * 10})
    proxy.add_rule(Rule("sse_ignored", method="PUT", path=f"^/{buckets.dest}/p/b$"))
    proxy.add_rule(Rule("sse_ignored", method="HEAD", path=f"^/{buckets.dest}/p/b$"))
    args = ["p", *cli_args(proxy.endpoint, tmp_path, buckets.source, buckets.dest)]
    args += ["--sse", "AES256", "--skip-existing", "--quiet"]
    done = run_cli(args)
    assert done.returncode == 1, done.stderr
    state = read_valid(checkpoint_file(tmp_path, buckets.source, "p"))
    assert state.files == {"p/a": True, "p/b": False, "p/c": True}
    proxy.clear_faults()
    again = run_cli(args)
    assert again.returncode == 0, again.stderr
    puts = proxy.seen(method="PUT", path=f"^/{buckets.dest}/p/")
    assert sorted(r.path.rpartition("/")[2] for r in puts) == ["a", "b", "b", "c"]
    assert not checkpoint_file(tmp_path, buckets.source, "p").exists()  # complete: archived


@pytest.mark.parametrize(
    "mode", [pytest.param([], id="staged"), pytest.param(["--direct"], id="direct")]
)
def test_a_write_only_destination_is_not_read_to_confirm_the_encryption(
    proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path, mode: list[str]
) -> None:
    """``--dest-write-only``: nothing of the run reads the destination, whose credentials may
    not (a HEAD is refused, 403). An answer naming no encryption is then taken as it says: an
    ``EncryptionNotApplied`` error, as before the HEAD, not one the HEAD's refusal names."""
    put_parallel(s3, buckets.source, {"p/a": b"a" * 10, "p/b": b"b" * 10})
    proxy.add_rule(Rule("sse_ignored", method="PUT", path=f"^/{buckets.dest}/p/b$"))
    proxy.add_rule(Rule("access_denied", method="HEAD", path=f"^/{buckets.dest}/"))
    args = ["p", *cli_args(proxy.endpoint, tmp_path, buckets.source, buckets.dest)]
    done = run_cli([*args, *mode, "--sse", "AES256", "--dest-write-only", "--quiet"])
    assert done.returncode == 1, done.stderr
    assert not proxy.seen(method="HEAD", path=f"^/{buckets.dest}/"), done.stderr
    state = read_valid(checkpoint_file(tmp_path, buckets.source, "p"))
    assert state.files == {"p/a": True, "p/b": False}
    assert "EncryptionNotApplied" in state.errors["p/b"], state.errors
