"""S3 answers mapped as botocore maps them: error documents against botocore's own rest-xml
parser, response headers against the GetObject output botocore builds from the same headers."""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from botocore.exceptions import ClientError
from botocore.loaders import Loader
from botocore.model import ServiceModel
from botocore.parsers import RestXMLParser

from asyncbackup.fasts3.responses import parse_error, response_fields
from asyncbackup.retry import classify, is_throttle, retry_after

MODEL = ServiceModel(Loader().load_service_model("s3", "service-2"), "s3")

ERRORS = [
    (
        404,
        {"x-amz-request-id": "R1", "x-amz-id-2": "H1"},
        b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>NoSuchKey</Code>'
        b"<Message>The specified key does not exist.</Message><Key>a b/c</Key>"
        b"<RequestId>R1</RequestId><HostId>H1</HostId></Error>",
    ),
    (
        503,
        {"Retry-After": "2", "Content-Type": "application/xml"},
        b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message>"
        b"<Resource>/b/k</Resource><RequestId>proxy</RequestId></Error>",
    ),
    (
        403,
        {},
        b"<Error>\n  <Code>AccessDenied</Code>\n  <Message>Access &amp; &lt;denied&gt;</Message>\n"
        b"</Error>",
    ),
    (412, {}, b"<Error><Code>PreconditionFailed</Code><Message></Message></Error>"),
    (404, {"x-amz-request-id": "R2"}, b""),  # a HEAD-like answer without a body
    (502, {}, b"<html><body>Bad Gateway</body></html>"),  # a proxy's page, not S3's XML
    (500, {}, b"<Error><Code>InternalError</Code></Error>"),  # no message
]


def botocore_error(status: int, headers: dict[str, str], body: bytes) -> dict[str, Any]:
    parsed: dict[str, Any] = RestXMLParser().parse(
        {"status_code": status, "headers": headers, "body": body},
        MODEL.operation_model("GetObject").output_shape,
    )
    return parsed


@pytest.mark.parametrize(("status", "headers", "body"), ERRORS)
def test_error_documents_parse_as_botocore_parses_them(
    status: int, headers: dict[str, str], body: bytes
) -> None:
    ours = parse_error(status, headers.items(), body)
    theirs = botocore_error(status, headers, body)
    assert ours["Error"] == theirs["Error"]
    for name in ("RequestId", "HostId"):
        assert ours["ResponseMetadata"].get(name, "") == theirs["ResponseMetadata"].get(name, "")
    assert ours["ResponseMetadata"]["HTTPStatusCode"] == status
    assert ours["ResponseMetadata"]["HTTPHeaders"] == {k.lower(): v for k, v in headers.items()}


def test_classification_of_a_parsed_error() -> None:
    status, headers, body = ERRORS[1]
    exc = ClientError(parse_error(status, headers.items(), body), "GetObject")
    error = classify(exc)
    assert (error.code, error.retryable) == ("SlowDown", True)
    assert retry_after(exc) == 2.0 and is_throttle(exc)


def test_response_headers_map_to_getobject_fields_as_botocore_does() -> None:
    headers = {
        "ETag": '"9b2cf535f27731c974343645a3985328"',
        "Content-Length": "4096",
        "Content-Type": "text/plain",
        "Content-Encoding": "gzip",
        "Cache-Control": "max-age=60",
        "Content-Disposition": 'attachment; filename="x"',
        "Content-Language": "fr",
        "Expires": "Mon, 03 Feb 2031 04:05:06 GMT",
        "x-amz-website-redirect-location": "/other",
        "x-amz-server-side-encryption": "aws:kms",
        "x-amz-server-side-encryption-customer-algorithm": "AES256",
        "x-amz-meta-Owner": "team a",
        "x-amz-meta-empty": "",
        "x-amz-request-id": "R",
        "Last-Modified": "Mon, 03 Feb 2031 04:05:06 GMT",
    }
    ours = response_fields(headers.items(), 200)
    theirs = RestXMLParser().parse(
        {"status_code": 200, "headers": headers, "body": b""},
        MODEL.operation_model("HeadObject").output_shape,  # GetObject's headers, no body
    )
    for name in (
        "ETag",
        "ContentLength",
        "ContentType",
        "ContentEncoding",
        "CacheControl",
        "ContentDisposition",
        "ContentLanguage",
        "WebsiteRedirectLocation",
        "ServerSideEncryption",
        "SSECustomerAlgorithm",
        "Metadata",
    ):
        assert ours[name] == theirs[name], name
    assert ours["Expires"] == datetime.datetime(2031, 2, 3, 4, 5, 6, tzinfo=datetime.UTC)
    assert ours["ResponseMetadata"]["RequestId"] == "R"


def test_an_unparsable_expires_is_left_out_as_botocore_does() -> None:
    ours = response_fields([("Expires", "not a date"), ("ETag", '"x"')], 200)
    assert "Expires" not in ours and ours["ExpiresString"] == "not a date"
