"""S3 answers in the shapes botocore gives: response headers as GetObject/PutObject fields,
CopyObject's result document as its output, and error answers as
``botocore.exceptions.ClientError`` with the same ``response`` dict, so that
``retry.classify()`` and everything above it cannot tell which path a request took."""

from __future__ import annotations

import contextlib
import datetime
import functools
import html
import http.client
import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import unquote_plus, unquote_to_bytes  # unquote_plus: botocore's unquote_str
from xml.etree import ElementTree  # the parser botocore uses on the same bytes

from botocore.exceptions import ClientError
from botocore.utils import parse_timestamp

#: response header (lower case) -> field, for the headers that are plain strings
STRING_FIELDS: dict[str, str] = {
    "etag": "ETag",
    "content-type": "ContentType",
    "content-encoding": "ContentEncoding",
    "cache-control": "CacheControl",
    "content-disposition": "ContentDisposition",
    "content-language": "ContentLanguage",
    "content-range": "ContentRange",
    "accept-ranges": "AcceptRanges",
    "x-amz-website-redirect-location": "WebsiteRedirectLocation",
    "x-amz-server-side-encryption": "ServerSideEncryption",
    "x-amz-server-side-encryption-customer-algorithm": "SSECustomerAlgorithm",
    "x-amz-server-side-encryption-aws-kms-key-id": "SSEKMSKeyId",
    "x-amz-version-id": "VersionId",
    "x-amz-storage-class": "StorageClass",
    "x-amz-checksum-crc32": "ChecksumCRC32",
    "x-amz-checksum-crc32c": "ChecksumCRC32C",
    "x-amz-checksum-sha256": "ChecksumSHA256",
}
META_PREFIX = "x-amz-meta-"
#: a leaf element of the error document (no XML parser on what a server sends)
_LEAF = re.compile(r"<([A-Za-z][\w.-]*)>([^<]*)</\1>")
#: an error body longer than this is not S3's XML: read no more of it
ERROR_BODY_LIMIT = 64 * 1024
#: a 2xx answer's document longer than this is not S3's (a ListObjectsV2 page of 1,000 keys
#: of 1,024 bytes, each URL-encoded, with every field is under 4 MB): refused unparsed
DOCUMENT_LIMIT = 16 * 1024 * 1024


def response_fields(headers: Iterable[tuple[str, str]], status: int) -> dict[str, Any]:
    """GetObject/PutObject output fields from the response headers, as botocore names them."""
    out: dict[str, Any] = {}
    metadata: dict[str, str] = {}
    lowered: dict[str, str] = {}
    for name, value in headers:
        lname = name.lower()
        lowered[lname] = value
        field = STRING_FIELDS.get(lname)
        if field is not None:
            out[field] = value
        elif lname.startswith(META_PREFIX):
            metadata[name[len(META_PREFIX) :]] = value  # botocore keeps the name as received
        elif lname == "content-length":
            out["ContentLength"] = int(value)
        elif lname == "x-amz-tagging-count":
            with contextlib.suppress(ValueError):
                out["TagCount"] = int(value)
        elif lname == "expires":
            out["ExpiresString"] = value
            # As botocore: a timestamp, or left out when it does not parse. (LastModified is
            # not parsed at all: nothing here reads it, and dateutil costs more than the rest.)
            with contextlib.suppress(ValueError, RuntimeError):
                out["Expires"] = parse_timestamp(value)
    out["Metadata"] = metadata
    out["ResponseMetadata"] = response_metadata(lowered, status)
    return out


def response_metadata(headers: dict[str, str], status: int) -> dict[str, Any]:
    return {
        "RequestId": headers.get("x-amz-request-id", ""),
        "HostId": headers.get("x-amz-id-2", ""),
        "HTTPStatusCode": status,
        "HTTPHeaders": headers,
        "RetryAttempts": 0,
    }


def parse_error(status: int, headers: Iterable[tuple[str, str]], body: bytes) -> dict[str, Any]:
    """The ``ClientError.response`` botocore builds for an S3 error answer: ``Error.Code`` and
    ``Error.Message`` from the XML body, or the status code and its reason when there is no
    (parsable) body; ``ResponseMetadata`` with the status and the headers (lower case)."""
    lowered = {name.lower(): value for name, value in headers}
    error: dict[str, Any] = {}
    text = body.decode("utf-8", "replace")
    start = text.find("<Error>")
    if start >= 0:  # S3's error document is flat: <Error><Code>..</Code><Message>..</Message>
        for match in _LEAF.finditer(text, start):
            text_value = match.group(2)  # an empty element is None, as in botocore
            error.setdefault(match.group(1), html.unescape(text_value) if text_value else None)
    metadata = response_metadata(lowered, status)
    for name in ("RequestId", "HostId"):  # botocore takes them from the headers only
        error.pop(name, None)
    if not error.get("Code"):
        error = {"Code": str(status), "Message": http.client.responses.get(status, "")}
    return {"Error": error, "ResponseMetadata": metadata}


def client_error(
    status: int, headers: Iterable[tuple[str, str]], body: bytes, operation: str
) -> ClientError:
    return ClientError(parse_error(status, headers, body), operation)


#: CopyObject's response headers (lower case) -> field, as botocore's model names them
COPY_FIELDS: dict[str, str] = {
    "x-amz-expiration": "Expiration",
    "x-amz-copy-source-version-id": "CopySourceVersionId",
    "x-amz-version-id": "VersionId",
    "x-amz-server-side-encryption": "ServerSideEncryption",
    "x-amz-server-side-encryption-customer-algorithm": "SSECustomerAlgorithm",
    "x-amz-server-side-encryption-customer-key-md5": "SSECustomerKeyMD5",
    "x-amz-server-side-encryption-aws-kms-key-id": "SSEKMSKeyId",
    "x-amz-server-side-encryption-context": "SSEKMSEncryptionContext",
    "x-amz-request-charged": "RequestCharged",
}
_COPY_BOOLEANS = {"x-amz-server-side-encryption-bucket-key-enabled": "BucketKeyEnabled"}
#: the members of CopyObjectResult (all strings but LastModified)
_COPY_RESULT_MEMBERS = frozenset(
    {
        "ETag",
        "LastModified",
        "ChecksumType",
        "ChecksumCRC32",
        "ChecksumCRC32C",
        "ChecksumCRC64NVME",
        "ChecksumSHA1",
        "ChecksumSHA256",
    }
)


def read_timestamp(value: str) -> datetime.datetime:
    """A timestamp of an S3 answer as botocore reads it: the same instant (naive without an
    offset). ISO 8601 (XML bodies) by the standard library's parser (0.4 us, where dateutil's
    takes 25 us); anything else (RFC 822 headers, epoch seconds) by botocore's own."""
    if len(value) >= 19 and value[4] == "-" and value[10] == "T":
        try:  # (not contextlib.suppress: its object costs as much as the parse, per copy)
            return datetime.datetime.fromisoformat(value)
        except ValueError:
            pass
    parsed: datetime.datetime = parse_timestamp(value)
    return parsed


def _xml_root(body: bytes) -> ElementTree.Element | None:
    """The root element of ``body`` as botocore parses it, or None when it is not XML."""
    # expat refuses entity expansion bombs (Python >= 3.11 bundles expat >= 2.4.1)
    parser = ElementTree.XMLParser(  # noqa: S314
        target=ElementTree.TreeBuilder(), encoding="utf-8"
    )
    try:
        parser.feed(body)
        root: ElementTree.Element = parser.close()
    except ElementTree.ParseError:
        return None
    return root


def _checked_root(
    listed: list[tuple[str, str]], status: int, body: bytes, operation: str
) -> ElementTree.Element | None:
    """The root element of a 2xx answer's body (None when there is no body). As botocore's
    ``_handle_200_error`` does for every operation without a streamed output (CopyObject,
    PutObject, UploadPart...): a body that is an ``<Error>`` document, or not XML at all
    (cut short), is raised as the 500 the server would have answered had it known before
    it started."""
    if not body:
        return None
    root = _xml_root(body)
    if root is None:  # botocore: a 500 without a parsable error document
        raise client_error(500, listed, b"", operation)
    if root.tag == "Error":
        raise client_error(500, listed, body, operation)
    return root


def put_output(
    headers: Iterable[tuple[str, str]], status: int, body: bytes, operation: str
) -> dict[str, Any]:
    """PutObject's or UploadPart's output as botocore returns it, from a 2xx answer and its
    body (empty, as S3 sends it), or the error a 200 carries in its body, raised."""
    listed = list(headers)
    if status == 200:  # botocore looks at a 200's body only; these outputs have no body
        _checked_root(listed, status, body, operation)
    return response_fields(listed, status)


#: XML's white space but CR (which expat turns into LF in text: such a body goes to expat)
_S = rb"[ \t\n]*"
#: an element's text the simple parse reads: printable ASCII but ``<`` (and DEL), tabs and
#: line feeds; an ``&`` must start one of XML's five named entities (``_ENTITY``)
_TEXT = rb"[\t\n\x20-\x3b\x3d-\x7e]*"
#: a member of CopyObjectResult as S3, SeaweedFS and moto send them: ``<Name>text</Name>``
_COPY_MEMBER = rb"<([A-Za-z][A-Za-z0-9]*)>(" + _TEXT + rb")</\1>"
#: CopyObject's whole document in the shape those servers send it (S3's declaration and
#: namespace, or neither; moto's declaration in lower case; the keep-alive white space S3
#: sends before it): a body this matches (its ``&`` all entities, no ``]]>``) is well-formed
#: XML, read without an XML parser
_COPY_DOCUMENT = (
    rb'(?:<\?xml version="1\.0" encoding="(?:UTF-8|utf-8)"\?>)?'
    + _S
    + rb'<CopyObjectResult(?: xmlns="http://s3\.amazonaws\.com/doc/2006-03-01/")?>'
    + _S
    + rb"((?:<([A-Za-z][A-Za-z0-9]*)>"
    + _TEXT
    + rb"</\2>"
    + _S
    + rb")*)</CopyObjectResult>"
    + _S
)
_ENTITIES = {"&quot;": '"', "&amp;": "&", "&lt;": "<", "&gt;": ">", "&apos;": "'"}
_ENTITY = r"&(?:quot|amp|lt|gt|apos);"
_NOT_ENTITY = r"&(?!(?:quot|amp|lt|gt|apos);)"


@functools.cache
def _copy_patterns() -> tuple[
    re.Pattern[bytes], re.Pattern[bytes], re.Pattern[str], re.Pattern[str]
]:
    """The patterns above, compiled at the first CopyObject answer rather than at import
    (3.6 M instructions, which a staged run, with no CopyObject, need not pay)."""
    return (
        re.compile(_COPY_DOCUMENT),
        re.compile(_COPY_MEMBER),
        re.compile(_ENTITY),
        re.compile(_NOT_ENTITY),
    )


def _copy_result_simple(body: bytes) -> dict[str, str] | None:
    """The members of CopyObjectResult (as text) of a body in the one shape S3 and the
    servers like it send (``_COPY_DOCUMENT``), read by two regular expressions: the same
    text as ``_copy_result_parsed`` gives for it (building an expat parser for every answer
    was two thirds of the parse). None for any other body (an ``<Error>``, an empty one,
    one not XML, other spellings of the same document): those go to the XML parser."""
    document_pattern, member_pattern, entity, not_entity = _copy_patterns()
    document = document_pattern.fullmatch(body)
    if document is None:
        return None
    texts: dict[str, str] = {}
    for name_bytes, text_bytes in member_pattern.findall(document.group(1)):
        text = text_bytes.decode("ascii")
        # ``]]>`` may not stand in an element's text (nor can it anywhere else in a body this
        # shape). Looked for in the text, not in the bytes: ``b"]]>" in body`` first takes
        # its operand for an int and formats the TypeError (see ``http11.on_header``).
        if "]]>" in text:
            return None
        if "&" in text:  # each one an entity, or no XML: the parser says what it is
            if not_entity.search(text):
                return None
            text = entity.sub(lambda found: _ENTITIES[found.group()], text)
        name = name_bytes.decode("ascii")
        if name in _COPY_RESULT_MEMBERS and name not in texts:
            texts[name] = text
    return texts


def _copy_result_parsed(
    listed: list[tuple[str, str]], status: int, body: bytes, operation: str
) -> dict[str, str]:
    """The members of CopyObjectResult (as text) of any 2xx body, read by the XML parser
    botocore uses; the error a 200 carries in its body, raised (see ``_checked_root``)."""
    texts: dict[str, str] = {}
    root = _checked_root(listed, status, body, operation)
    if root is not None:
        for child in root:
            name = child.tag.rpartition("}")[2]  # without the S3 namespace
            if name in _COPY_RESULT_MEMBERS and name not in texts:
                texts[name] = child.text or ""
    return texts


def copy_object_output(
    headers: Iterable[tuple[str, str]], status: int, body: bytes, operation: str = "CopyObject"
) -> dict[str, Any]:
    """CopyObject's output as botocore returns it, from a 2xx answer: the header fields and
    ``CopyObjectResult`` (ETag, LastModified, checksums) from the body; the error a 200
    carries in its body, raised (see ``_checked_root``)."""
    listed = list(headers)
    texts = _copy_result_simple(body)
    if texts is None:
        texts = _copy_result_parsed(listed, status, body, operation)
    result: dict[str, Any] = {
        name: read_timestamp(text) if name == "LastModified" else text
        for name, text in texts.items()
    }
    out: dict[str, Any] = {}
    lowered: dict[str, str] = {}
    for name, value in listed:
        lname = name.lower()
        lowered[lname] = value
        field = COPY_FIELDS.get(lname)
        if field is not None:
            out[field] = value
        elif lname in _COPY_BOOLEANS:
            out[_COPY_BOOLEANS[lname]] = value == "true"
    out["CopyObjectResult"] = result
    out["ResponseMetadata"] = response_metadata(lowered, status)
    return out


#: CreateMultipartUpload's header fields beside ``response_fields``' (its AbortDate, which
#: nothing here reads, is left out)
_UPLOAD_FIELDS = {
    "x-amz-checksum-algorithm": "ChecksumAlgorithm",
    "x-amz-checksum-type": "ChecksumType",
    "x-amz-abort-rule-id": "AbortRuleId",
}


def create_multipart_upload_output(
    headers: Iterable[tuple[str, str]], status: int, body: bytes
) -> dict[str, Any]:
    """CreateMultipartUpload's output as botocore returns it, from a 2xx answer: the header
    fields (the encryption the upload gets among them) and the document's ``Bucket``, ``Key``
    and ``UploadId``; an error a 200 carries in its body, raised. An answer without an
    ``UploadId`` (no body: a server that failed after its status line) is given as it is, as
    botocore gives it: the caller's check of the id says what is wrong (``upload_id_of``: an
    upload made or not, nobody can tell), where an error raised here would say the server
    answered that none was made."""
    listed = list(headers)
    operation = "CreateMultipartUpload"
    root = _checked_root(listed, status, body, operation)
    out = response_fields(listed, status)
    out.pop("Metadata", None)  # not one of this operation's fields
    for name, value in listed:
        field = _UPLOAD_FIELDS.get(name.lower())
        if field is not None:
            out[field] = value
    texts = {} if root is None else {child.tag.rpartition("}")[2]: child.text for child in root}
    out.update({name: texts[name] or "" for name in ("Bucket", "Key", "UploadId") if name in texts})
    return out


#: ListObjectsV2's members of an object (``Contents``) this parser returns, and their types
_LISTED_MEMBERS: dict[str, type[int] | type[str]] = {
    "Key": str,
    "Size": int,
    "ETag": str,
    "StorageClass": str,
}
_LIST_STRINGS = frozenset(
    {
        "Name",
        "Prefix",
        "StartAfter",
        "ContinuationToken",
        "NextContinuationToken",
        "Delimiter",
        "EncodingType",
    }
)
_LIST_INTS = frozenset({"KeyCount", "MaxKeys"})
#: what a listing asked with ``encoding-type=url`` has encoded (botocore decodes the same)
_URL_ENCODED = frozenset({"Delimiter", "Prefix", "StartAfter"})


def list_objects_v2_output(
    headers: Iterable[tuple[str, str]], status: int, body: bytes
) -> dict[str, Any]:
    """ListObjectsV2's output as botocore returns it (after its ``encoding-type=url``
    decoding), from a 2xx answer. The objects in ``Contents`` carry ``Key``, ``Size``,
    ``ETag`` and ``StorageClass`` (not ``LastModified``, ``Owner`` or checksums: the listing
    reads none of them); ``CommonPrefixes`` and the page's own fields are all there. A 200
    whose body is an error document, or not XML, is raised as ``_checked_root`` does."""
    listed = list(headers)
    root = _checked_root(listed, status, body, "ListObjectsV2")
    out: dict[str, Any] = {}  # no IsTruncated where the answer has none, as botocore
    contents: list[dict[str, Any]] = []
    prefixes: list[dict[str, str]] = []
    names: dict[str, str] = {}  # tag -> name without the namespace (the same few, 1,000 times)
    for child in root if root is not None else ():
        name = child.tag.rpartition("}")[2]
        if name == "Contents":
            entry: dict[str, Any] = {}
            for member in child:
                tag = member.tag
                field = names.get(tag) or names.setdefault(tag, tag.rpartition("}")[2])
                kind = _LISTED_MEMBERS.get(field)
                if kind is not None:
                    entry[field] = kind(member.text or "")
            contents.append(entry)
        elif name == "CommonPrefixes":
            for member in child:
                if member.tag.rpartition("}")[2] == "Prefix":
                    prefixes.append({"Prefix": member.text or ""})
        elif name == "IsTruncated":
            out[name] = (child.text or "").strip() == "true"
        elif name in _LIST_STRINGS:
            out[name] = child.text or ""
        elif name in _LIST_INTS:
            out[name] = int(child.text or 0)
    if out.get("EncodingType") == "url":
        for name in _URL_ENCODED & out.keys():
            out[name] = _url_decoded(out[name])
        for entry in contents:
            if "Key" in entry:
                entry["Key"] = _url_decoded(entry["Key"])
        for prefix in prefixes:
            prefix["Prefix"] = _url_decoded(prefix["Prefix"])
    if contents:
        out["Contents"] = contents
    if prefixes:
        out["CommonPrefixes"] = prefixes
    lowered = {name.lower(): value for name, value in listed}
    out["ResponseMetadata"] = response_metadata(lowered, status)
    return out


def _url_decoded(text: str) -> str:
    """``unquote_plus(text)``, botocore's decoding, with its common case made cheaper: the
    encoded text is ASCII, for which ``unquote_plus`` is ``unquote_to_bytes`` decoded as
    UTF-8 (invalid sequences replaced), without its split around non-ASCII runs."""
    if "%" not in text:
        return text.replace("+", " ")
    if text.isascii():
        return unquote_to_bytes(text.replace("+", " ")).decode("utf-8", "replace")
    return unquote_plus(text)
