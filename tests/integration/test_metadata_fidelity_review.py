"""What a restore gets back: each copy's headers as its source has them, byte for byte, on the
fast path as on botocore's."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

import pytest

from asyncbackup.fasts3.client import USER_AGENT
from tests.conftest import Buckets, S3Server
from tests.helpers import MiB, backup_data, put_multipart
from tests.proxy import Rule, S3Proxy

#: a Content-Disposition as S3 stores it when a client sent it in UTF-8 (RFC 6266 asks for
#: ``filename*``, but S3 keeps and answers whatever bytes it was given)
UTF8_DISPOSITION = 'attachment; filename="é€ rates.txt"'.encode()


def wire_header(s3: Any, bucket: str, key: str, name: str) -> bytes:
    """A header of a HEAD of ``key`` as its bytes on the wire (http.client decodes them as
    latin-1)."""
    headers = s3.head_object(Bucket=bucket, Key=key)["ResponseMetadata"]["HTTPHeaders"]
    return str(headers[name]).encode("latin-1")


@pytest.mark.parametrize("fast_path", [True, False])
@pytest.mark.parametrize("size", [100, 2 * MiB, 6 * MiB])  # in memory, streamed PUT, in parts
async def test_a_utf8_content_disposition_is_copied_byte_for_byte(
    buckets: Buckets, s3: Any, s3_server: S3Server, tmp_path: Path, fast_path: bool, size: int
) -> None:
    s3.put_object(  # botocore sends a header's text in UTF-8
        Bucket=buckets.source,
        Key="data/rates.txt",
        Body=os.urandom(size),
        ContentDisposition=UTF8_DISPOSITION.decode(),
    )
    assert wire_header(s3, buckets.source, "data/rates.txt", "content-disposition") == (
        UTF8_DISPOSITION
    )
    report = await backup_data(
        buckets, tmp_path, s3_server.endpoint, fast_path=fast_path, multipart_threshold=5 * MiB
    )
    assert report.exit_code == 0, report.errors
    # The fast path read it as latin-1 and botocore sent that text as UTF-8: each é became
    # "Ã©" in the copy, a file name a browser then saves as such.
    assert wire_header(s3, buckets.dest, "data/rates.txt", "content-disposition") == (
        UTF8_DISPOSITION
    )


def with_header(s3: Any, operation: str, name: str, value: str) -> None:
    """Every ``operation`` request of ``s3`` sends ``name: value`` (a value botocore's
    parameters cannot carry)."""

    def add(request: Any, **_: Any) -> None:
        request.headers[name] = value

    s3.meta.events.register(f"before-sign.s3.{operation}", add)


@pytest.mark.parametrize(
    ("options", "size"),
    [
        ({}, 100),
        ({"fast_path": False}, 100),
        ({}, 2 * MiB),
        ({}, 6 * MiB),  # in parts
        ({"direct": True}, None),  # a multipart source, copied by UploadPartCopy
    ],
)
async def test_an_expires_that_is_no_date_is_kept_as_already_expired(
    buckets: Buckets,
    s3_server: S3Server,
    s3: Any,
    tmp_path: Path,
    options: dict[str, Any],
    size: int | None,
) -> None:
    writer = s3_server.client()  # its own: the header goes on its requests only
    if size is None:
        with_header(writer, "CreateMultipartUpload", "Expires", "never")
        put_multipart(writer, buckets.source, "data/page.html", [5 * MiB, MiB])
    else:
        with_header(writer, "PutObject", "Expires", "never")
        writer.put_object(Bucket=buckets.source, Key="data/page.html", Body=os.urandom(size))
    head = s3.head_object(Bucket=buckets.source, Key="data/page.html")
    assert head["ExpiresString"] == "never" and "Expires" not in head  # S3 keeps any text
    report = await backup_data(
        buckets, tmp_path, s3_server.endpoint, multipart_threshold=5 * MiB, **options
    )
    assert report.exit_code == 0, report.errors
    # Left out, the copy could be cached where its source never was: a date that is no date
    # means "already expired" (RFC 9111, 5.3), which 1970 says too.
    copy = s3.head_object(Bucket=buckets.dest, Key="data/page.html")
    assert copy.get("ExpiresString") == "Thu, 01 Jan 1970 00:00:00 GMT"


async def test_an_sse_c_object_is_one_clear_error_and_leaves_the_fast_path_on(
    proxy: S3Proxy,
    buckets: Buckets,
    s3: Any,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    for i in range(4):
        s3.put_object(Bucket=buckets.source, Key=f"data/o{i}", Body=os.urandom(300))
    s3.put_object(Bucket=buckets.source, Key="data/0-secret", Body=os.urandom(300))  # first
    # moto serves an SSE-C object without its key: the proxy answers as S3 does
    proxy.add_rule(Rule("sse_c_key_missing", method="GET", path=r"/data/0-secret$"))
    with caplog.at_level(logging.WARNING, logger="asyncbackup"):
        report = await backup_data(buckets, tmp_path, proxy.endpoint, concurrency=1)
    assert report.exit_code == 1 and list(report.errors) == ["data/0-secret"]
    assert "Server Side Encryption" in report.errors["data/0-secret"]
    # botocore is answered the same: the server did not refuse the fast path's request, and
    # the rest of the run keeps it (it was off for the bucket, every GET through botocore)
    gets = [r for r in proxy.requests if r.method == "GET" and re.search(r"/data/o\d$", r.path)]
    assert len(gets) == 4 and all(r.headers.get("user-agent") == USER_AGENT for r in gets)
    assert "fast path off" not in caplog.text
