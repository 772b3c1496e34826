"""The S3 destination: a single PUT, or a multipart upload streamed part by part from staging.

Every request carries a checksum the server verifies (``Content-MD5`` by default, or an
``x-amz-checksum-*`` algorithm declared on every step of a multipart upload), and the answer is
checked too: the ETag of a single PUT is the MD5 we sent, and a multipart ETag is the MD5 of the
part MD5s with ``-N``. A failed multipart upload is aborted, shielded from cancellation.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from pathlib import Path
from typing import Any

from botocore.compat import HAS_CRT

from ..bandwidth import TokenBucket
from ..checksums import ALGORITHMS, Digests, Hasher, file_md5, multipart_etag
from ..config import S3_MAX_PART_SIZE, S3_MAX_PARTS, S3_MIN_PART_SIZE, ChecksumMode
from ..encryption import AppliedCheck
from ..errors import ConfigError, IntegrityError, ObjectError
from ..etags import (
    OPAQUE_ETAG_SSE,
    answered_etag,
    clean_etag,
    etag_is_md5,
    is_md5_etag,
    multipart_parts,
)
from ..fasts3 import FastS3
from ..fasts3.client import carries_checksum
from ..fetched import FetchedObject
from ..filerange import BufferBody, FileRange
from ..partfeed import ByteBudget, PartData, PartFeed, StagedPart, part_length
from ..pipeline import primary_error
from ..retry import RetryPolicy
from ..s3client import S3Client
from ..stamps import stamped
from ..uploads import UploadJournal, tracked_upload

log = logging.getLogger("asyncbackup")


def check_checksum_support(mode: ChecksumMode) -> None:
    """Refuse, before any transfer, a checksum this installation cannot compute."""
    if mode == "crc32c" and not HAS_CRT:
        raise ConfigError(
            "--checksum crc32c needs botocore's CRT extension: pip install 'botocore[crt]', "
            "or choose --checksum crc32 or md5"
        )


def _read_chunk(path: Path, offset: int, length: int) -> bytes:
    """``length`` bytes of a staged file from ``offset`` (blocking), the file opened and
    closed again."""
    with path.open("rb") as handle:
        handle.seek(offset)
        return handle.read(length)


def _read_part(path: Path, offset: int, length: int, hasher: Hasher) -> tuple[bytes, Digests]:
    """Read one part and hash it in one worker-thread call: hashlib lets go of the GIL, so
    hashing runs beside the event loop instead of blocking it (16 ms per 8 MiB part)."""
    data = _read_chunk(path, offset, length)
    return data, hasher(data)


_FILE_CHUNK = 1024 * 1024


async def _file_chunks(path: Path, size: int, offset: int = 0) -> AsyncGenerator[bytes, None]:
    """A staged file (``size`` bytes of it from ``offset``), a chunk per worker-thread call;
    exactly ``size`` bytes, or an error (a body shorter than its Content-Length would leave
    the request waiting). Each call opens and closes the file: the HTTP client drops a body
    it stops reading (a reset connection) without closing it, and a file held open across
    chunks stayed open until the garbage collector finalised the generator."""
    sent = 0
    while sent < size:
        length = min(_FILE_CHUNK, size - sent)
        chunk = await asyncio.to_thread(_read_chunk, path, offset + sent, length)
        if not chunk:
            raise IntegrityError(f"the staged file ended at {sent} of {size} bytes")
        sent += len(chunk)
        yield chunk


def _read_whole(path: Path, hasher: Hasher) -> tuple[bytes, Digests]:
    """A staged file and its digests, in one worker-thread call."""
    data = path.read_bytes()
    return data, hasher(data)


def _check_staged(fetched: FetchedObject, key: str, digests: Digests, size: int) -> None:
    """The staged file read back (``size`` bytes, ``digests``) is what was downloaded; the
    MD5 read is then the one the upload carries."""
    if size != fetched.size or (fetched.md5 and digests.md5 != fetched.md5):
        raise IntegrityError(
            f"the staged copy of {key} is not what was downloaded (MD5 "
            f"{digests.md5.hex()}, {size} bytes; expected "
            f"{fetched.md5.hex() or 'any'}, {fetched.size})"
        )
    fetched.md5 = digests.md5


class S3Sink:
    def __init__(
        self,
        client: S3Client,
        bucket: str,
        retry: RetryPolicy,
        *,
        checksum: ChecksumMode,
        multipart_threshold: int,
        part_size_for: Callable[[int], int],
        part_concurrency: int,
        part_budget: ByteBudget,
        extra_params: dict[str, str] | None = None,
        bandwidth: TokenBucket | None = None,
        readable: bool = True,
        stamp: bool = False,
    ) -> None:
        check_checksum_support(checksum)
        self.client = client
        self.bucket = bucket
        self.retry = retry
        self.checksum = checksum
        self.multipart_threshold = multipart_threshold
        self.part_size_for = part_size_for
        self.part_concurrency = part_concurrency
        self.part_budget = part_budget
        self.extra_params = dict(extra_params or {})
        self.bandwidth = bandwidth
        #: a copy whose ETag will not be its source's carries the source's (--skip-existing:
        #: ``stamps.py``), as its ETag would not tell the next run that it is the same
        self.stamp = stamp
        #: the destination's ETags are no MD5s: SSE-KMS, asked (--sse) or the bucket's own
        self.opaque_etags = self.extra_params.get("ServerSideEncryption") in OPAQUE_ETAG_SSE
        #: the encryption --sse asked for, as the answers (or else the copies' HEADs, unless
        #: not ``readable``: --dest-write-only) say
        self.encryption = AppliedCheck(
            self.extra_params, client=client, bucket=bucket, retry=retry, readable=readable
        )
        algorithm = ALGORITHMS.get(checksum)
        #: the digests of what is read from staging: the MD5 is only of use with a checksum
        self.hasher = Hasher(md5=checksum != "none", algorithm=algorithm)
        #: what a staged file needs: the MD5, to check that it is still what was downloaded
        self._whole_hasher = Hasher(md5=True, algorithm=algorithm)
        #: what an object kept in memory needs: its MD5 is the download's
        self._checksum_only = Hasher(md5=False, algorithm=algorithm)
        #: where multipart uploads in flight are recorded for a crash (set by the caller)
        self.journal: UploadJournal | None = None
        #: PutObject (in memory or streamed) and UploadPart without botocore (set by the caller)
        self.fast: FastS3 | None = None

    def _checksum_params(self, digests: Digests) -> dict[str, str]:
        """The parameters that carry ``digests`` (a checksum botocore computes, CRC32C, is
        only named)."""
        if self.checksum == "md5":
            return {"ContentMD5": base64.b64encode(digests.md5).decode()}
        if self.checksum in ALGORITHMS:
            algorithm = ALGORITHMS[self.checksum]
            params = {"ChecksumAlgorithm": algorithm}
            if digests.checksum is not None:
                params[f"Checksum{algorithm}"] = digests.checksum
            return params
        return {}

    def _fields(self, fetched: FetchedObject, parts: int | None = None) -> dict[str, Any]:
        """What the copy of ``fetched`` (uploaded in ``parts`` parts of the source's part
        size, or in one PUT) is written with: its source's (``kept_fields``), and with
        ``stamp`` the ETag of the version downloaded, where the copy's ETag cannot be it."""
        if not self.stamp:
            return fetched.metadata
        if parts is None:
            kept = is_md5_etag(fetched.etag)
        else:
            kept = multipart_parts(fetched.etag) == parts
        if kept and fetched.digest_etag and not self.opaque_etags:
            return fetched.metadata
        return stamped(fetched.metadata, fetched.etag)

    def _put_params(self, fetched: FetchedObject, key: str, digests: Digests) -> dict[str, Any]:
        """PutObject's parameters for ``fetched`` under ``key``, but its body."""
        return {
            "Bucket": self.bucket,
            "Key": key,
            **self._fields(fetched),
            **self.extra_params,
            **self._checksum_params(digests),
        }

    async def put(self, fetched: FetchedObject, key: str) -> None:
        """Upload ``fetched`` under ``key``; return only once the destination has it whole.

        A multipart source is copied with its own part layout, so the copy's ETag equals the
        source's (checked); other objects above the threshold use ``part_size_for``.
        """
        part_size = self.part_size_of(fetched.size, fetched.source_part_size)
        if part_size is not None:
            await self._put_multipart(fetched, key, part_size)
            return
        if fetched.data is not None:  # the verified download itself, for small objects
            digests = (await self._checksum_only.digests(fetched.data))._replace(md5=fetched.md5)
            await self._put_body(fetched, key, fetched.data, digests)
            return
        if await self._put_file_streamed(fetched, key):
            return
        if not self.part_budget.fits(fetched.size):  # never whole in memory
            await self._put_staged_file(fetched, key)
            return
        async with self.part_budget.hold(fetched.size):  # whole in memory: bounded in bytes
            body, digests = await asyncio.to_thread(_read_whole, fetched.path, self._whole_hasher)
            _check_staged(fetched, key, digests, len(body))
            await self._put_body(fetched, key, body, digests)

    async def _put_staged_file(self, fetched: FetchedObject, key: str) -> None:
        """One PUT of a staged file larger than the memory budget, its body read from the
        file as the request goes out, with the digests of one read of it before."""
        whole = StagedPart(fetched.path, 0, fetched.size)
        digests = await self._hash_part(whole, self._whole_hasher)
        _check_staged(fetched, key, digests, fetched.size)
        params = self._put_params(fetched, key, digests)
        response = await self.retry.call(lambda: self._send_staged(params, whole))
        await self._check_put(response, fetched.md5.hex(), key)

    async def _put_file_streamed(self, fetched: FetchedObject, key: str) -> bool:
        """PUT the staged file read as it goes out, with its MD5 as Content-MD5 (the one
        the download gave, else one read of the file), retried like any request: no more
        memory than a chunk, whatever the size. False where the fast path cannot send it."""
        fast = self.fast
        if fast is None or not self.can_stream():
            return False
        if not fetched.md5:  # an opaque source ETag: the file's MD5, read in a thread
            fetched.md5 = await asyncio.to_thread(file_md5, fetched.path, fetched.size)
        params = self._put_params(fetched, key, Digests(fetched.md5))

        async def attempt() -> dict[str, Any] | None:
            return await fast.put_object_stream(
                params, fetched.size, self._metered(_file_chunks(fetched.path, fetched.size))
            )

        response = await self.retry.call(attempt)
        if response is None:  # handed back to botocore: the in-memory PUT
            return False
        await self._check_put(response, fetched.md5.hex(), key)
        return True

    async def _metered(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """``chunks``, within ``--max-bandwidth``: in its ``paced()`` pieces, so that the
        request's body never pauses for long enough that the server drops it."""
        bandwidth = self.bandwidth
        async for chunk in chunks:
            if bandwidth is None:
                yield chunk
                continue
            async for piece in bandwidth.paced(chunk):
                yield piece

    async def _put_body(
        self, fetched: FetchedObject, key: str, body: bytes, digests: Digests
    ) -> None:
        params = {**self._put_params(fetched, key, digests), "Body": body}
        if self.bandwidth is not None:
            await self.bandwidth.consume(len(body))
        put_object = self.fast.put_object if self.fast is not None else self.client.put_object
        response = await self.retry.call(lambda: put_object(**params))
        await self._check_put(response, fetched.md5.hex(), key)

    def can_stream(self) -> bool:
        """Whether ``put_stream`` may work: the fast path is on for the bucket, the checksum
        is the MD5 a source's ETag gives before its bytes are read, and the copy's ETag will
        be its MD5 (not with SSE-KMS at the destination): a server that does not check
        Content-MD5 is then still caught by the ETag it answers."""
        opaque = self.extra_params.get("ServerSideEncryption") in OPAQUE_ETAG_SSE
        return self.fast is not None and self.fast.enabled and self.checksum == "md5" and not opaque

    async def put_stream(
        self, fetched: FetchedObject, chunks: AsyncIterator[bytes], *, key: str
    ) -> bool:
        """Upload ``fetched`` in one PUT whose body is ``chunks``, read as the download brings
        them, with ``fetched.md5`` (the source's MD5, from its ETag) as Content-MD5: the
        destination refuses a body that does not match it, and the ETag it answers is checked.

        True once the destination has the object whole. False when it was not streamed: the
        fast path cannot send it, or the PUT failed in a way a retry could mend (a stream
        cannot be sent twice; the caller puts the staged file instead, with retries).
        """
        fast = self.fast
        if fast is None or not self.can_stream():
            return False
        if self.part_size_of(fetched.size, None) is not None:
            return False  # grown past the threshold since it was listed: it goes in parts
        params = self._put_params(fetched, key, Digests(fetched.md5))

        try:
            response = await self.retry.once(
                lambda: fast.put_object_stream(params, fetched.size, self._metered(chunks))
            )
        except ObjectError as exc:
            if not exc.retryable:
                raise
            log.debug("streamed PUT of %s failed (%s); putting the staged file", key, exc)
            return False
        if response is None:
            return False
        await self._check_put(response, fetched.md5.hex(), key)
        return True

    async def put_parts(
        self, fetched: FetchedObject, feed: PartFeed, *, key: str, part_size: int
    ) -> None:
        """Upload the parts ``feed`` hands over as ``fetched`` is downloaded (see ``PartFeed``)."""
        await self._put_multipart(fetched, key, part_size, feed)

    @staticmethod
    def _layout_allowed(part_size: int, size: int) -> bool:
        if part_size <= 0:
            return False
        big_enough = part_size >= S3_MIN_PART_SIZE or part_size >= size
        return big_enough and -(-size // part_size) <= S3_MAX_PARTS

    async def _check_put(self, response: dict[str, Any], expected: str, key: str) -> None:
        """The answer to a whole object's PUT: its ETag, and the encryption asked for."""
        self._check_etag(response, expected, key)
        await self.encryption.confirm(response, key)

    def _check_etag(self, response: dict[str, Any], expected: str, key: str) -> None:
        etag = answered_etag(response.get("ETag"), f"the upload of {key}")
        checked = self.checksum != "none" and etag and etag_is_md5(etag, response)
        if checked and clean_etag(etag) != expected:
            raise IntegrityError(f"destination ETag {etag} is not the MD5 sent for {key}")

    def part_size_of(self, size: int, source_part_size: int | None) -> int | None:
        """The part size ``put`` uploads an object in, or None for a single PUT (never over
        5 GiB, which S3 refuses, whatever the threshold)."""
        if source_part_size is not None and self._layout_allowed(source_part_size, size):
            return source_part_size
        if size >= self.multipart_threshold or size > S3_MAX_PART_SIZE:
            return self.part_size_for(size)
        return None

    async def _put_multipart(
        self, fetched: FetchedObject, key: str, part_size: int, feed: PartFeed | None = None
    ) -> None:
        """A multipart upload of the staged file, or of the parts ``feed`` hands over as they
        are downloaded (``fetched`` then describes the object from its GET's headers)."""
        count = max(1, -(-fetched.size // part_size))

        def fields_now() -> dict[str, Any]:  # the source's layout may prove another at the end
            return self._fields(fetched, count if part_size == fetched.source_part_size else 0)

        fields = fields_now()
        create: dict[str, Any] = {"Bucket": self.bucket, "Key": key, **fields, **self.extra_params}
        if self.checksum in ALGORITHMS:
            create["ChecksumAlgorithm"] = ALGORITHMS[self.checksum]
        async with tracked_upload(self.client, self.retry, self.journal, create) as upload_id:
            parts: list[dict[str, Any]] = [{} for _ in range(count)]
            md5s: list[bytes] = [b""] * count
            numbers = iter(range(count))

            async def part_worker() -> None:
                for index in numbers:
                    offset = index * part_size
                    length = min(part_size, fetched.size - offset)
                    data: PartData
                    if feed is None and not self.part_budget.fits(length):  # never in memory
                        data = StagedPart(fetched.path, offset, length)
                        digests = await self._hash_part(data)
                        parts[index] = await self._upload_part(key, upload_id, index, data, digests)
                    elif feed is None:
                        async with self.part_budget.hold(length):
                            data, digests = await self._read_part(fetched.path, offset, length)
                            parts[index] = await self._upload_part(
                                key, upload_id, index, data, digests
                            )
                    else:
                        data, digests = await feed.take(index)  # reserved by the download
                        try:
                            if part_length(data) != length:
                                raise IntegrityError(
                                    f"part {index + 1} is {part_length(data)} bytes"
                                )
                            parts[index] = await self._upload_part(
                                key, upload_id, index, data, digests
                            )
                        finally:
                            feed.release()
                    del data  # not held while the next part waits for its share of the budget
                    md5s[index] = digests.md5

            try:
                async with asyncio.TaskGroup() as tg:
                    for _ in range(min(self.part_concurrency, count)):
                        tg.create_task(part_worker())
            except BaseExceptionGroup as group:
                raise primary_error(group) from None
            if feed is not None:
                await feed.verified  # the whole download checked out: only now complete
                if fields_now() != fields:
                    # the source's parts are not all the size of the first (the download
                    # showed it, ``source_part_size`` is now None): its copy's ETag will not
                    # be the source's, and the upload was started without the stamp that
                    # would tell (made again at every run). Aborted; made again in parts of
                    # our size (``FirstPartProbe.uneven``), stamped.
                    raise ObjectError(
                        "UnevenSourceParts",
                        "the source's parts are not all of one size: copied again in parts "
                        "of our size, with the source ETag --skip-existing reads",
                        retryable=True,
                    )
            response = await self.retry.call(
                lambda: self.client.complete_multipart_upload(
                    Bucket=self.bucket,
                    Key=key,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": parts},
                )
            )
            await self.encryption.confirm(response, key)
            expected = multipart_etag(md5s)
            etag = clean_etag(
                answered_etag(response.get("ETag"), f"CompleteMultipartUpload of {key}")
            )
            verifiable = (
                self.checksum != "none"
                and response.get("ServerSideEncryption") not in OPAQUE_ETAG_SSE
            )
            if verifiable and etag != expected:
                raise IntegrityError(f"multipart ETag {etag} differs from {expected}")
            same_layout = part_size == fetched.source_part_size
            if (
                verifiable
                and same_layout
                and fetched.digest_etag
                and etag != clean_etag(fetched.etag)
            ):
                raise IntegrityError(f"copy ETag {etag} differs from source {fetched.etag}")

    async def _send_staged(self, params: dict[str, Any], part: StagedPart) -> dict[str, Any]:
        """One attempt at the UploadPart (``params`` has an ``UploadId``) or PutObject of
        ``part``, its body read from the staged file as the request goes out: through the
        fast path where it can stream it (checksum values given), else botocore's."""
        fast = self.fast
        in_parts = "UploadId" in params
        if fast is not None and carries_checksum(params):
            chunks = self._metered(_file_chunks(part.path, part.length, part.offset))
            stream = fast.upload_part_stream if in_parts else fast.put_object_stream
            response = await stream(params, part.length, chunks)
            if response is not None:
                return response
        if self.bandwidth is not None:
            await self.bandwidth.consume(part.length)
        try:
            body = FileRange(part.path, part.offset, part.length)
        except OSError as exc:
            raise ObjectError("LocalIOError", f"{exc.strerror} ({exc.filename})") from exc
        send = self.client.upload_part if in_parts else self.client.put_object
        with body:
            result: dict[str, Any] = await send(**params, Body=body)
            return result

    async def _botocore_part(
        self, params: dict[str, Any], data: bytes | bytearray
    ) -> dict[str, Any]:
        """One attempt at UploadPart of ``data`` by botocore, read as it goes: no copy."""
        with BufferBody(data) as body:
            result: dict[str, Any] = await self.client.upload_part(**params, Body=body)
            return result

    async def _read_part(self, path: Path, offset: int, length: int) -> tuple[bytes, Digests]:
        try:
            data, digests = await asyncio.to_thread(_read_part, path, offset, length, self.hasher)
        except OSError as exc:
            raise ObjectError("LocalIOError", f"{exc.strerror} ({exc.filename})") from exc
        if len(data) != length:
            raise IntegrityError(f"staged file is shorter than expected at offset {offset}")
        return data, digests

    async def _hash_part(self, part: StagedPart, hasher: Hasher | None = None) -> Digests:
        """The digests of ``part`` (``hasher``'s, else those its upload carries), read in a
        worker thread."""
        read = (hasher or self.hasher).of_file
        try:
            return await asyncio.to_thread(read, part.path, part.offset, part.length)
        except OSError as exc:
            raise ObjectError("LocalIOError", f"{exc.strerror} ({exc.filename})") from exc

    async def _upload_part(
        self, key: str, upload_id: str, index: int, data: PartData, digests: Digests
    ) -> dict[str, Any]:
        number = index + 1
        params: dict[str, Any] = {
            "Bucket": self.bucket,
            "Key": key,
            "UploadId": upload_id,
            "PartNumber": number,
            **self._checksum_params(digests),
        }
        if isinstance(data, StagedPart):
            response = await self.retry.call(lambda: self._send_staged(params, data))
        else:
            if self.bandwidth is not None:
                await self.bandwidth.consume(len(data))
            if self.fast is not None:  # sends a bytearray as it is
                fast = self.fast
                response = await self.retry.call(lambda: fast.upload_part(**params, Body=data))
            else:
                response = await self.retry.call(lambda: self._botocore_part(params, data))
        self._check_etag(response, digests.md5.hex(), key)
        part: dict[str, Any] = {"PartNumber": number, "ETag": response["ETag"]}
        if self.checksum in ALGORITHMS:
            field = f"Checksum{ALGORITHMS[self.checksum]}"
            part[field] = response[field]
        return part
