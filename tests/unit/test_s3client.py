"""How ``open_client`` sets up botocore: one data loader shared by our clients, TLS only
where there is TLS."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import json
import ssl
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import SSLError
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.helpers import open_test_client

NOWHERE = "http://127.0.0.1:9"  # no request is sent


async def aio_client(stack: contextlib.AsyncExitStack, endpoint: str | None) -> Any:
    """The aiobotocore half of one of our clients (``LazyClient``), made now."""
    return await (await open_test_client(stack, endpoint)).aio()


def loader_of(client: Any) -> Any:
    return client._loader


async def test_clients_share_one_data_loader(aws_env: Path) -> None:
    async with contextlib.AsyncExitStack() as stack:
        one, two = await aio_client(stack, NOWHERE), await aio_client(stack, NOWHERE)
        assert loader_of(one) is loader_of(two)
        assert one.meta.service_model.operation_model("CopyObject").http["method"] == "PUT"


async def test_a_data_path_keeps_the_session_its_own_loader(
    aws_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with contextlib.AsyncExitStack() as stack:
        shared = loader_of(await aio_client(stack, NOWHERE))
        monkeypatch.setenv("AWS_DATA_PATH", str(tmp_path))
        own = loader_of(await aio_client(stack, NOWHERE))
        assert own is not shared and str(tmp_path) in own.search_paths


def verify_of(client: Any) -> Any:
    return client._endpoint.http_session._verify


async def test_plain_http_endpoints_build_no_tls_context(
    aws_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No TLS on the way to an http endpoint: no CA bundle to load (17 ms per client). Through
    a proxy, which may be reached over TLS, verification stays on."""
    async with contextlib.AsyncExitStack() as stack:
        assert verify_of(await aio_client(stack, NOWHERE)) is False
        assert verify_of(await aio_client(stack, "HTTP://127.0.0.1:9")) is False
        monkeypatch.setenv("HTTP_PROXY", "https://proxy.invalid:3128")
        assert verify_of(await aio_client(stack, NOWHERE)) is not False


async def test_https_endpoints_still_verify_the_server(aws_env: Path, tmp_path: Path) -> None:
    """A TLS server whose certificate no CA signed is refused, not talked to."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*_self_signed(tmp_path))
    answered: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            answered.append(await reader.read(100))
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=context)
    port = server.sockets[0].getsockname()[1]
    async with server, contextlib.AsyncExitStack() as stack:
        client = await aio_client(stack, f"https://127.0.0.1:{port}")
        with pytest.raises(SSLError, match=r"(?i)certificate verify failed"):
            await client.head_bucket(Bucket="b")
    assert not any(answered)  # no request reached the server


def _certificate(
    subject: str, key: Any, issuer: x509.Name, signer: Any, *extensions: tuple[Any, bool]
) -> x509.Certificate:
    """A certificate of ``key`` for ``subject``, valid from yesterday to tomorrow, signed by
    ``signer`` in the name of ``issuer``."""
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
    )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(signer, hashes.SHA256())


def _for_loopback(key: Any, issuer: x509.Name, signer: Any, *extra: tuple[Any, bool]) -> Any:
    """A server certificate for 127.0.0.1 (its subject and its IP address)."""
    address = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    return _certificate("127.0.0.1", key, issuer, signer, (address, False), *extra)


def _write_pem(path: Path, certificate: x509.Certificate) -> Path:
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return path


def _write_key(path: Path, key: Any) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path


def _self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 signed by its own key."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    cert = _for_loopback(key, name, key)
    return _write_pem(folder / "cert.pem", cert), _write_key(folder / "key.pem", key)


LIST_BODY = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<ListBucketResult '
    b'xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>b</Name><Prefix>p/</Prefix>'
    + b"".join(
        b"<Contents><Key>p/%d</Key><Size>1</Size><ETag>&quot;e&quot;</ETag></Contents>" % i
        for i in range(50)
    )
    + b"<IsTruncated>false</IsTruncated></ListBucketResult>\n"
)
#: 200 answers and what botocore's check makes of them (True: an error, answered as a 500)
TWO_HUNDREDS = [
    (LIST_BODY, False),
    (b'    \n   <CopyObjectResult><ETag>"e"</ETag></CopyObjectResult>', False),
    (b"<s3:CopyObjectResult>x</s3:CopyObjectResult>", True),  # an undeclared namespace prefix
    (b'<?xml version="1.0"?>\n<Error><Code>InternalError</Code></Error>', True),
    (b"<Error><Code>SlowDown</Code></Error>", True),
    (LIST_BODY[: len(LIST_BODY) // 2], True),  # cut short
    (LIST_BODY.replace(b"</ListBucketResult>", b"</ListBucketResul>"), True),
    (b"      ", True),  # only the whitespace S3 sends while a copy runs
    (b"not xml at all", True),
]


async def _checked_for_200_errors(client: Any, body: bytes) -> dict[str, Any]:
    """A 200 ListObjectsV2 answer with ``body``, through the client's before-parse handlers
    (where the 200-error check is): its status says whether it was taken for an error."""
    operation = client.meta.service_model.operation_model("ListObjectsV2")
    answer = {"status_code": 200, "headers": {}, "body": body}
    await client.meta.events.emit(
        "before-parse.s3.ListObjectsV2",
        operation_model=operation,
        response_dict=answer,
        customized_response_dict={},
    )
    return answer


@pytest.mark.parametrize(("body", "is_error"), TWO_HUNDREDS)
async def test_the_200_error_check_agrees_with_botocores(
    aws_env: Path, body: bytes, is_error: bool
) -> None:
    from botocore import handlers

    async with contextlib.AsyncExitStack() as stack:
        client = await aio_client(stack, NOWHERE)
        ours = await _checked_for_200_errors(client, body)
        operation = client.meta.service_model.operation_model("ListObjectsV2")
        theirs = {"status_code": 200, "headers": {}, "body": body}
        handlers._handle_200_error(operation, theirs)
    assert theirs["status_code"] == (500 if is_error else 200)
    assert ours["status_code"] == theirs["status_code"]


async def test_a_body_broken_only_in_its_middle_is_still_refused_and_retried(
    aws_env: Path,
) -> None:
    """The check does not parse what it lets through: the response parser does, and raises;
    that failure is one to retry, as botocore's 500 was."""
    from botocore.parsers import ResponseParserError

    from asyncbackup.retry import classify

    middle = len(LIST_BODY) // 2
    broken = LIST_BODY[:middle] + b"<<" + LIST_BODY[middle + 2 :]
    async with contextlib.AsyncExitStack() as stack:
        client = await aio_client(stack, NOWHERE)
        answer = await _checked_for_200_errors(client, broken)
        operation = client.meta.service_model.operation_model("ListObjectsV2")
        assert answer["status_code"] == 200
        with pytest.raises(ResponseParserError) as raised:
            await client._response_parser.parse(answer, operation.output_shape)
    assert classify(raised.value).retryable


def test_the_model_loader_loads_what_botocores_loads_and_knows_no_more_services() -> None:
    from botocore.exceptions import UnknownServiceError
    from botocore.loaders import Loader

    from asyncbackup.botocore_setup import _ModelLoader

    loader = _ModelLoader()  # not the shared one: clients made from it change its models
    for type_name in ("service-2", "endpoint-rule-set-1", "paginators-1"):
        ours = loader.load_service_model("s3", type_name)
        assert ours == Loader().load_service_model("s3", type_name), type_name
    with pytest.raises(UnknownServiceError):
        loader.load_service_model("no-such-service", "service-2")


def _in_order(value: Any) -> Any:
    """``value`` with every mapping as its list of items, so that key order counts."""
    if isinstance(value, dict):
        return [(key, _in_order(item)) for key, item in value.items()]
    if isinstance(value, list):
        return [_in_order(item) for item in value]
    return value


def test_the_orjson_file_loader_reads_what_botocores_reads_in_the_same_order(
    tmp_path: Path,
) -> None:
    from botocore.loaders import JSONFileLoader, Loader

    from asyncbackup.botocore_setup import _OrjsonFileLoader

    ours, theirs = _OrjsonFileLoader(), JSONFileLoader()
    data = Path(Loader.BUILTIN_DATA_PATH)
    model = next((data / "s3").iterdir())
    names = [data / "endpoints", data / "partitions", data / "sdk-default-configuration"]
    names += [model / "service-2", model / "endpoint-rule-set-1", model / "paginators-1"]
    for name in names:
        expected = theirs.load_file(str(name))
        assert expected is not None, name
        assert _in_order(ours.load_file(str(name))) == _in_order(expected), name
    big = {"max": 2**70, "b": [1.5, "x"]}  # past orjson's 64 bits: botocore's decoder
    (tmp_path / "big.json").write_text(json.dumps(big))
    assert ours.load_file(str(tmp_path / "big")) == big
    assert ours.load_file(str(tmp_path / "missing")) is None


async def test_clients_have_no_managed_transfer_methods(aws_env: Path) -> None:
    """aioboto3 adds upload_file & co. to the client class (importing s3transfer); our
    transfers are our own, and the client still makes every call botocore's does."""
    async with contextlib.AsyncExitStack() as stack:
        client = await aio_client(stack, NOWHERE)
        assert not hasattr(client, "upload_file") and not hasattr(client, "download_fileobj")
        assert callable(client.list_objects_v2) and callable(client.upload_part_copy)


AWS_LISTING = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n'
    b'<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
    b"<Name>b</Name><Prefix>p%2F</Prefix><KeyCount>3</KeyCount><MaxKeys>3</MaxKeys>"
    b"<EncodingType>url</EncodingType><IsTruncated>true</IsTruncated>"
    b"<NextContinuationToken>1ueGcxLPRx1Tr/XYExHnhbYLgveDs2J/wm36Hy4vbOwM=</NextContinuationToken>"
    b"<StartAfter>p%2F0</StartAfter>"
    b"<Contents><Key>p%2Fa%20b</Key><LastModified>2024-05-01T10:11:12.000Z</LastModified>"
    b"<ETag>&quot;9b2cf535f27731c974343645a3985328&quot;</ETag>"
    b"<ChecksumAlgorithm>CRC32</ChecksumAlgorithm><ChecksumAlgorithm>SHA256</ChecksumAlgorithm>"
    b"<ChecksumType>FULL_OBJECT</ChecksumType><Size>434234</Size>"
    b"<StorageClass>GLACIER</StorageClass><Owner><DisplayName>me</DisplayName><ID>75aa</ID>"
    b"</Owner><RestoreStatus><IsRestoreInProgress>false</IsRestoreInProgress>"
    b"<RestoreExpiryDate>2024-06-01T00:00:00.000Z</RestoreExpiryDate></RestoreStatus>"
    b"<Unknown>x</Unknown></Contents>"
    b"<Contents><Key>p%2F%E6%97%A5</Key><LastModified>2024-05-01T10:11:13Z</LastModified>"
    b"<ETag></ETag><Size>0</Size><ChecksumAlgorithm>CRC64NVME</ChecksumAlgorithm></Contents>"
    b"<Contents><Key>p%2Fz</Key><Size>7</Size></Contents>"
    b"<CommonPrefixes><Prefix>p%2Fd%2F</Prefix></CommonPrefixes>"
    b"<CommonPrefixes><Prefix>p%2Fe%2F</Prefix></CommonPrefixes>"
    b"</ListBucketResult>"
)
ONE_OBJECT = (
    b"<ListBucketResult><Name>b</Name><IsTruncated>false</IsTruncated>"
    b"<Contents><Key>k</Key><Size>1</Size><ETag>e</ETag></Contents></ListBucketResult>"
)
NO_OBJECTS = b"<ListBucketResult><Name>b</Name><KeyCount>0</KeyCount></ListBucketResult>"


@pytest.mark.parametrize("body", [AWS_LISTING, ONE_OBJECT, NO_OBJECTS, LIST_BODY])
@pytest.mark.parametrize("operation_name", ["ListObjectsV2", "ListObjects"])
async def test_our_listing_parser_gives_what_botocores_gives(
    aws_env: Path, body: bytes, operation_name: str
) -> None:
    from botocore.parsers import RestXMLParser

    from asyncbackup.fasts3.responses import read_timestamp

    async with contextlib.AsyncExitStack() as stack:
        client = await aio_client(stack, NOWHERE)
        operation = client.meta.service_model.operation_model(operation_name)
        ours = client._endpoint._response_parser_factory.create_parser("rest-xml")
        assert type(ours).__name__ == "_RestXMLParser"
        headers = {"x-amz-request-id": "R", "x-amz-id-2": "H"}
        answer = {"status_code": 200, "headers": headers, "body": body}
        parsed = await ours.parse(answer, operation.output_shape)
    theirs = RestXMLParser(timestamp_parser=read_timestamp).parse(
        {"status_code": 200, "headers": headers, "body": body}, operation.output_shape
    )
    assert parsed == theirs
    if body is AWS_LISTING:
        first = parsed["Contents"][0]
        assert first["ChecksumAlgorithm"] == ["CRC32", "SHA256"] and first["Size"] == 434234
        assert first["Owner"] == {"DisplayName": "me", "ID": "75aa"}


async def test_the_fast_path_accepts_the_certificates_botocore_accepts(
    aws_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server certificate from a private CA that botocore's TLS accepts, the fast path's
    accepts too: here the CA's basicConstraints are not marked critical. Python 3.13's
    ``create_default_context`` adds ``VERIFY_X509_STRICT``, which botocore's context (urllib3's)
    does not: on 3.13 every fast-path GET of such a server failed with ``SSLError``."""
    from botocore.httpsession import create_urllib3_context

    from asyncbackup.fasts3.client import open_fast_s3

    ca_file, cert_file, key_file = _private_ca_chain(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    requests: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while head := await reader.readuntil(b"\r\n\r\n"):
                requests.append(method := head.split(b" ", 1)[0])
                body = b"" if method == b"HEAD" else b"ok"
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n" + body)
                await writer.drain()
        writer.close()

    monkeypatch.setenv("AWS_CA_BUNDLE", str(ca_file))
    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=context)
    port = server.sockets[0].getsockname()[1]
    async with server, contextlib.AsyncExitStack() as stack:
        client = await open_test_client(stack, f"https://127.0.0.1:{port}")
        await (await client.aio()).head_bucket(Bucket="b")  # botocore's TLS takes it
        fast = await open_fast_s3(
            stack, client, "b", connections=1, connect_timeout=2, read_timeout=5
        )
        assert fast is not None and fast.target.ssl is not None
        theirs = create_urllib3_context().verify_flags  # what aiobotocore's context starts from
        assert fast.target.ssl.verify_flags == theirs
        answer = await fast.get_object(Bucket="b", Key="k")
        async with answer["Body"] as body:
            assert await body.read() == b"ok"
        assert fast.fast_requests == 1
    assert requests == [b"HEAD", b"GET"]


def _private_ca_chain(folder: Path) -> tuple[Path, Path, Path]:
    """A CA (its basicConstraints not marked critical, as some tools make them) and a
    certificate for 127.0.0.1 it signed: the CA's file, the certificate's and its key's."""
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "asyncbackup test CA")])
    ca = _certificate(
        "asyncbackup test CA",
        ca_key,
        ca_name,
        ca_key,
        (x509.BasicConstraints(ca=True, path_length=None), False),
        (x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False),
    )
    authority = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key())
    cert = _for_loopback(key, ca_name, ca_key, (authority, False))
    return (
        _write_pem(folder / "ca.pem", ca),
        _write_pem(folder / "cert.pem", cert),
        _write_key(folder / "key.pem", key),
    )
