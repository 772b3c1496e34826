"""S3 answers mapped as botocore maps them: error documents against botocore's own rest-xml
parser, response headers against the GetObject output botocore builds from the same headers."""

from __future__ import annotations

import contextlib
import datetime
import random
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus

import pytest
from botocore import handlers
from botocore.exceptions import ClientError
from botocore.loaders import Loader
from botocore.model import ServiceModel
from botocore.parsers import RestXMLParser
from botocore.utils import parse_timestamp

from asyncbackup.fasts3 import responses
from asyncbackup.fasts3.responses import (
    _copy_result_parsed,
    _copy_result_simple,
    _url_decoded,
    copy_object_output,
    list_objects_v2_output,
    parse_error,
    put_output,
    read_timestamp,
    response_fields,
)
from asyncbackup.retry import classify, is_throttle, retry_after
from tests.helpers import ROOT, open_test_client

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


COPY_HEADERS = {
    "x-amz-request-id": "R3",
    "x-amz-id-2": "H3",
    "x-amz-version-id": "v2",
    "x-amz-copy-source-version-id": "v1",
    "x-amz-server-side-encryption": "aws:kms",
    "x-amz-server-side-encryption-aws-kms-key-id": "arn:aws:kms:eu-west-1:1:key/k",
    "x-amz-server-side-encryption-bucket-key-enabled": "true",
    "x-amz-expiration": 'expiry-date="Fri, 23 Dec 2033 00:00:00 GMT", rule-id="r"',
    "Content-Type": "application/xml",
    "ETag": '"not-a-copyobject-field"',
}
COPY_ANSWERS = [
    # S3's document, with its namespace and an escaped ETag
    b'<?xml version="1.0" encoding="UTF-8"?>\n<CopyObjectResult '
    b'xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><LastModified>2024-05-01T10:11:12.000Z'
    b"</LastModified><ETag>&quot;9b2cf535f27731c974343645a3985328&quot;</ETag>"
    b"</CopyObjectResult>",
    # moto's, with checksums and an element not in the model
    b'<CopyObjectResult><ETag>"abc-2"</ETag><LastModified>2031-02-03T04:05:06Z</LastModified>'
    b"<ChecksumCRC32>DUoRhQ==</ChecksumCRC32><Unknown>x</Unknown></CopyObjectResult>",
    # the whitespace S3 sends while a long copy runs, then the document
    b'    \n   <CopyObjectResult><ETag>"e"</ETag></CopyObjectResult>',
    b"",  # no body at all: botocore returns an empty result
]
#: 200 answers that are errors (S3 failed while copying, or the answer was cut short)
COPY_ERRORS = [
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>InternalError</Code>'
    b"<Message>We encountered an internal error. Please try again.</Message>"
    b"<RequestId>R3</RequestId></Error>",
    b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>",
    b'<?xml version="1.0" encoding="UTF-8"?>\n<CopyObjectResult><ETag>"abc',  # cut short
    b"      ",  # only the keep-alive whitespace
]


def botocore_copy(headers: dict[str, str], body: bytes) -> dict[str, Any]:
    """What botocore makes of a 200 CopyObject answer: its 200-error check, then its parser."""
    response = {"status_code": 200, "headers": headers, "body": body}
    operation = MODEL.operation_model("CopyObject")
    handlers._handle_200_error(operation, response)
    parsed: dict[str, Any] = RestXMLParser().parse(response, operation.output_shape)
    return parsed


@pytest.mark.parametrize("body", COPY_ANSWERS)
def test_copy_object_output_equals_botocore(body: bytes) -> None:
    ours = copy_object_output(COPY_HEADERS.items(), 200, body)
    theirs = botocore_copy(COPY_HEADERS, body)
    # botocore's endpoint adds RetryAttempts (0: its retries are off) and lower-cases names
    assert ours["ResponseMetadata"].pop("RetryAttempts") == 0
    headers = theirs["ResponseMetadata"]["HTTPHeaders"]
    theirs["ResponseMetadata"]["HTTPHeaders"] = {k.lower(): v for k, v in headers.items()}
    assert ours == theirs
    if body:
        assert ours["CopyObjectResult"]["ETag"].startswith('"')
    assert ours["BucketKeyEnabled"] is True and "ETag" not in ours


@pytest.mark.parametrize("body", COPY_ERRORS)
def test_an_error_in_a_200_copy_answer_is_raised_as_botocore_raises_it(body: bytes) -> None:
    theirs = botocore_copy({"x-amz-request-id": "R3"}, body)
    assert theirs["ResponseMetadata"]["HTTPStatusCode"] == 500  # botocore then raises
    with pytest.raises(ClientError) as raised:
        copy_object_output([("x-amz-request-id", "R3")], 200, body)
    ours = raised.value.response
    assert ours["Error"] == theirs["Error"]
    assert ours["ResponseMetadata"]["HTTPStatusCode"] == 500
    assert raised.value.operation_name == "CopyObject"
    assert classify(raised.value).retryable  # retried like any 500 or SlowDown


#: CopyObject answers as servers send them, which the simple parse reads without expat
SIMPLE_COPY_ANSWERS = [
    COPY_ANSWERS[0],  # S3's
    COPY_ANSWERS[1],  # moto's
    COPY_ANSWERS[2],  # after S3's keep-alive white space
    # SeaweedFS 4.48's (the benchmarks' server): no namespace, an ETag without quotes
    b'<?xml version="1.0" encoding="UTF-8"?>\n<CopyObjectResult><LastModified>'
    b"2026-11-28T20:19:12.657Z</LastModified><ETag>480441842a668ac0ba62d4e4fbad6033</ETag>"
    b"</CopyObjectResult>",
    # moto 5's: its declaration in lower case, the checksum it computes
    b'<?xml version="1.0" encoding="utf-8"?>\n<CopyObjectResult xmlns="http://s3.amazonaws.com/'
    b'doc/2006-03-01/"><ETag>"781e5e245d69b566979b86e28d23f2c7"</ETag><LastModified>'
    b"2026-11-28T20:22:26.000Z</LastModified><ChecksumCRC32>poTHxg==</ChecksumCRC32>"
    b"</CopyObjectResult>",
    # every entity XML names, a member twice (the first one counts), an empty member
    b"<CopyObjectResult>\n  <ETag>&quot;a&amp;b&lt;c&gt;d&apos;&amp;amp;&quot;</ETag>\n"
    b"  <ETag>second</ETag><ChecksumSHA256></ChecksumSHA256>\t</CopyObjectResult>\n",
]
#: bodies the simple parse leaves to expat: errors, and other spellings of a document
#: (each one read by expat as before: ``test_copy_object_output_of_other_spellings``)
EXPAT_COPY_ANSWERS = [
    *COPY_ERRORS,
    b"",
    b"<CopyObjectResult><ETag>&#34;e&#34;</ETag></CopyObjectResult>",  # a character reference
    b"<CopyObjectResult><ETag><![CDATA[e]]></ETag></CopyObjectResult>",
    b"<CopyObjectResult><!-- c --><ETag>e</ETag></CopyObjectResult>",
    b"<CopyObjectResult><ETag/></CopyObjectResult>",
    b"<CopyObjectResult><ETag>a\r\nb</ETag></CopyObjectResult>",  # CR LF read as LF
    b"<CopyObjectResult><ETag>\xc3\xa9</ETag></CopyObjectResult>",  # not ASCII
    b"<CopyObjectResult><ETag>a]]>b</ETag></CopyObjectResult>",  # not XML
    b"<CopyObjectResult><ETag>a&b</ETag></CopyObjectResult>",  # not XML
    b"<CopyObjectResult><ETag>a&nbsp;b</ETag></CopyObjectResult>",  # not XML's entity
    b"<CopyObjectResult><ETag><x>e</x></ETag></CopyObjectResult>",
    b'<CopyObjectResult><ETag a="1">e</ETag></CopyObjectResult>',
    b'<s3:CopyObjectResult xmlns:s3="urn:x"><s3:ETag>e</s3:ETag></s3:CopyObjectResult>',
    b'<CopyObjectResult xmlns="urn:other"><ETag>e</ETag></CopyObjectResult>',
    b"<Other><ETag>e</ETag></Other>",  # another root: read all the same
    b'<?xml version="1.0"?><CopyObjectResult><ETag>e</ETag></CopyObjectResult>',
    b'<?xml version="1.0" encoding="latin-1"?><CopyObjectResult></CopyObjectResult>',
    b'<?xml version="1.0" encoding="UTF-8" ?><CopyObjectResult></CopyObjectResult>',
    b"<CopyObjectResult><ETag>e</ETag>text</CopyObjectResult>",
    b"<CopyObjectResult><ETag>e</ETag></CopyObjectResult><x/>",  # junk after it: not XML
    b"<CopyObjectResult><ETag>e</ETag></CopyObjectResult",  # cut short
    b"<CopyObjectResult><ETag>e</Etag></CopyObjectResult>",  # not XML
    b"\xef\xbb\xbf<CopyObjectResult><ETag>e</ETag></CopyObjectResult>",  # a BOM
]


def parsed_or_raised(body: bytes) -> Any:
    """What ``_copy_result_parsed`` (expat) makes of a 200's ``body``: its texts, or the
    error it raises."""
    try:
        return _copy_result_parsed([("x-amz-request-id", "R")], 200, body, "CopyObject")
    except ClientError as exc:
        return ("raised", exc.response)


@pytest.mark.parametrize("body", SIMPLE_COPY_ANSWERS)
def test_copy_answers_as_servers_send_them_are_read_without_expat(
    body: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    simple = _copy_result_simple(body)
    assert simple is not None  # the fast case: no parser built for this answer
    assert simple == parsed_or_raised(body)
    assert list(simple) == list(parsed_or_raised(body))  # in the same order
    ours = copy_object_output(COPY_HEADERS.items(), 200, body)
    monkeypatch.setattr(responses, "_copy_result_simple", lambda body: None)
    assert ours == copy_object_output(COPY_HEADERS.items(), 200, body)  # expat's output


@pytest.mark.parametrize("body", EXPAT_COPY_ANSWERS)
def test_copy_object_output_of_other_spellings_is_expats(body: bytes) -> None:
    assert _copy_result_simple(body) is None
    expected = parsed_or_raised(body)
    try:
        ours = copy_object_output([("x-amz-request-id", "R")], 200, body)
    except ClientError as exc:
        assert expected == ("raised", exc.response)
    else:
        assert isinstance(expected, dict)
        assert {k: v for k, v in ours["CopyObjectResult"].items() if k != "LastModified"} == {
            k: v for k, v in expected.items() if k != "LastModified"
        }


_FUZZ_PIECES = [
    b"<",
    b">",
    b"/",
    b"&",
    b";",
    b"&quot;",
    b"&amp;",
    b"&lt;",
    b"&#34;",
    b"]]>",
    b'"',
    b"'",
    b" ",
    b"\t",
    b"\n",
    b"\r",
    b"\x00",
    b"\x01",
    b"\x7f",
    b"\xc3\xa9",
    b"\xff",
    b"=",
    b"?",
    b"!",
    b"-",
    b"e",
    b"ETag",
    b"<ETag>",
    b"</ETag>",
    b"<x>",
    b"</x>",
    b"<ETag/>",
    b"<LastModified>",
    b"</LastModified>",
    b"<Error>",
    b"</Error>",
    b"xmlns",
    b":",
]


def test_the_simple_parse_reads_what_expat_reads_or_declines() -> None:
    """Random changes to real answers: whenever the simple parse reads a body, expat reads
    it too, to the same texts in the same order (never an error expat would have raised)."""
    rng = random.Random(19)
    read = 0
    for _ in range(20_000):
        body = bytearray(rng.choice(SIMPLE_COPY_ANSWERS))
        for _ in range(rng.randint(1, 3)):
            at = rng.randint(0, len(body))
            action = rng.randrange(3)
            if action == 0:  # insert
                body[at:at] = rng.choice(_FUZZ_PIECES)
            elif action == 1:  # delete a few bytes
                del body[at : at + rng.randint(1, 4)]
            else:  # replace one byte
                body[at : at + 1] = rng.choice(_FUZZ_PIECES)
        simple = _copy_result_simple(bytes(body))
        if simple is not None:
            read += 1
            expected = parsed_or_raised(bytes(body))
            assert simple == expected, bytes(body)
            assert list(simple) == list(expected), bytes(body)
    assert read > 1_000  # the check above ran on many bodies, not a few


@pytest.mark.parametrize("operation", ["PutObject", "UploadPart"])
@pytest.mark.parametrize("body", COPY_ERRORS)
def test_an_error_in_a_200_put_answer_is_raised_as_botocore_raises_it(
    body: bytes, operation: str
) -> None:
    """botocore's 200-error check covers every operation without a streamed output."""
    response = {"status_code": 200, "headers": {"x-amz-request-id": "R3"}, "body": body}
    model = MODEL.operation_model(operation)
    handlers._handle_200_error(model, response)
    assert response["status_code"] == 500  # botocore then raises the parsed error
    theirs = RestXMLParser().parse(response, model.output_shape)
    with pytest.raises(ClientError) as raised:
        put_output([("x-amz-request-id", "R3")], 200, body, operation)
    assert raised.value.response["Error"] == theirs["Error"]
    assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500
    assert raised.value.operation_name == operation
    assert classify(raised.value).retryable


def test_a_put_answer_without_a_body_is_its_headers() -> None:
    headers = [("ETag", '"9b2cf535f27731c974343645a3985328"'), ("x-amz-request-id", "R")]
    assert put_output(headers, 200, b"", "PutObject") == response_fields(headers, 200)
    assert put_output(headers, 204, b"not xml", "UploadPart")["ETag"] == headers[0][1]


def test_copy_object_timestamps_are_the_instants_botocore_reads() -> None:
    for text in (
        "2024-05-01T10:11:12.000Z",
        "2024-05-01T10:11:12+02:00",
        "2024-05-01T10:11:12",
        "2024-05-01T10:11:12.123456789Z",
        "Wed, 01 May 2024 10:11:12 GMT",  # not ISO 8601: dateutil reads it
    ):
        body = f"<CopyObjectResult><LastModified>{text}</LastModified></CopyObjectResult>"
        ours = copy_object_output([], 200, body.encode())["CopyObjectResult"]["LastModified"]
        theirs = botocore_copy({}, body.encode())["CopyObjectResult"]["LastModified"]
        assert ours == theirs and ours.utcoffset() == theirs.utcoffset()


@pytest.mark.parametrize(
    "text",
    [
        "2024-05-01T10:11:12.000Z",
        "2024-05-01T10:11:12+02:00",
        "2024-05-01T10:11:12",
        "2024-05-01T10:11:12.123456789Z",
        "Wed, 01 May 2024 10:11:12 GMT",
        "1714558272",
        "1714558272.5",
        "20240501T101112Z",
        "2024-05-01",
    ],
)
def test_timestamps_are_read_as_botocore_reads_them(text: str) -> None:
    ours, theirs = read_timestamp(text), parse_timestamp(text)
    assert ours == theirs and ours.utcoffset() == theirs.utcoffset()


async def test_our_clients_read_listing_timestamps_without_dateutil(aws_env: Path) -> None:
    body = (
        b"<ListBucketResult><Name>b</Name><KeyCount>1</KeyCount><Contents><Key>k</Key>"
        b"<LastModified>2024-05-01T10:11:12.000Z</LastModified><Size>3</Size></Contents>"
        b"</ListBucketResult>"
    )
    response = {"status_code": 200, "headers": {}, "body": body}
    shape = MODEL.operation_model("ListObjectsV2").output_shape
    async with contextlib.AsyncExitStack() as stack:
        client = await (await open_test_client(stack, "http://127.0.0.1:9")).aio()
        parser = client._endpoint._response_parser_factory.create_parser("rest-xml")
        assert parser._timestamp_parser is read_timestamp
        ours = await parser.parse(dict(response), shape)
    theirs = RestXMLParser().parse(dict(response), shape)
    assert ours["Contents"] == theirs["Contents"]
    assert ours["Contents"][0]["LastModified"] == datetime.datetime(
        2024, 5, 1, 10, 11, 12, tzinfo=datetime.UTC
    )


LIST_ANSWERS = [
    # S3's document for encoding-type=url: keys, prefixes and StartAfter encoded ('+' a space)
    b'<?xml version="1.0" encoding="UTF-8"?>\n<ListBucketResult '
    b'xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>b</Name><Prefix>data%2F</Prefix>'
    b"<StartAfter>data%2Fa+b</StartAfter><KeyCount>3</KeyCount><MaxKeys>3</MaxKeys>"
    b"<Delimiter>%2F</Delimiter><EncodingType>url</EncodingType><IsTruncated>true</IsTruncated>"
    b"<NextContinuationToken>1ueGcxLPRx1Tr/XYExHnhbYLgveDs2J/wm36Hy4vbOwM=</NextContinuationToken>"
    b"<Contents><Key>data%2Fa+b%2B%25c%01</Key><LastModified>2024-05-01T10:11:12.000Z"
    b"</LastModified><ETag>&quot;9b2cf535f27731c974343645a3985328&quot;</ETag>"
    b"<ChecksumAlgorithm>CRC32</ChecksumAlgorithm><Size>1234567890123</Size>"
    b"<StorageClass>STANDARD</StorageClass></Contents>"
    b"<Contents><Key>data%2F%E6%97%A5%E6%9C%AC</Key><Size>0</Size><ETag>&quot;d41d8cd98f00b204e98"
    b"00998ecf8427e-1&quot;</ETag><Owner><ID>o</ID></Owner><StorageClass>GLACIER</StorageClass>"
    b"</Contents><CommonPrefixes><Prefix>data%2Fsub+dir%2F</Prefix></CommonPrefixes>"
    b"<CommonPrefixes><Prefix>data%2Fx%2F</Prefix></CommonPrefixes></ListBucketResult>",
    # a server that ignores encoding-type: nothing is decoded ('+' stays)
    b"<ListBucketResult><Name>b</Name><Prefix></Prefix><KeyCount>1</KeyCount>"
    b"<IsTruncated>false</IsTruncated><Contents><Key>a+b%20c &amp; d</Key><Size>5</Size>"
    b'<ETag>"e"</ETag></Contents></ListBucketResult>',
    # an empty listing
    b'<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>b</Name>'
    b"<Prefix>none%2F</Prefix><KeyCount>0</KeyCount><MaxKeys>1000</MaxKeys>"
    b"<EncodingType>url</EncodingType><IsTruncated>false</IsTruncated></ListBucketResult>",
]


@pytest.mark.parametrize("body", LIST_ANSWERS)
def test_list_objects_v2_output_equals_botocore(body: bytes) -> None:
    """The page botocore returns - its parser, then its encoding-type=url decoding - with
    each object cut to the members ours keeps."""
    headers = {"x-amz-request-id": "R4", "Content-Type": "application/xml"}
    operation = MODEL.operation_model("ListObjectsV2")
    response = {"status_code": 200, "headers": headers, "body": body}
    theirs: dict[str, Any] = RestXMLParser().parse(response, operation.output_shape)
    handlers.decode_list_object_v2(theirs, {"encoding_type_auto_set": True})
    ours = list_objects_v2_output(headers.items(), 200, body)
    assert ours["ResponseMetadata"].pop("RetryAttempts") == 0
    metadata = theirs["ResponseMetadata"]
    metadata["HTTPHeaders"] = {k.lower(): v for k, v in metadata["HTTPHeaders"].items()}
    kept = ("Key", "Size", "ETag", "StorageClass")
    for entry in theirs.get("Contents", ()):
        for member in set(entry) - set(kept):
            del entry[member]
    assert ours == theirs
    if b"%01" in body:
        assert ours["Contents"][0]["Key"] == "data/a b+%c\x01"
        assert ours["Contents"][0]["Size"] == 1234567890123
        assert ours["CommonPrefixes"][0] == {"Prefix": "data/sub dir/"}


@pytest.mark.parametrize("body", COPY_ERRORS)
def test_an_error_in_a_200_listing_is_raised_as_botocore_raises_it(body: bytes) -> None:
    with pytest.raises(ClientError) as raised:
        list_objects_v2_output([("x-amz-request-id", "R3")], 200, body)
    assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500


@pytest.mark.parametrize(
    "text",
    ["plain", "a+b", "a%2Bb+c", "%E6%97%A5%E6%9C%AC", "bad%FF%FE", "lone%", "odd%zz%4", "ü%20x+"],
)
def test_keys_are_url_decoded_exactly_as_botocore_decodes_them(text: str) -> None:
    assert _url_decoded(text) == unquote_plus(text)


def test_copy_patterns_are_compiled_at_the_first_copy_answer_not_at_import() -> None:
    """A staged run reads no CopyObject answer: it does not pay for compiling their patterns
    when the fast path is imported."""
    code = (
        "import asyncbackup.fasts3.responses as r\n"
        "print(r._copy_patterns.cache_info().currsize)\n"
        "r.copy_object_output([], 200, b'<CopyObjectResult></CopyObjectResult>')\n"
        "print(r._copy_patterns.cache_info().currsize)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert done.stdout.split() == ["0", "1"]
