"""The digests an upload carries, computed in one pass where the bytes already are.

Every part (or object) sent has its MD5 (``Content-MD5`` with ``--checksum md5``, and the ETag
the server answers is checked against it) and, with ``--checksum crc32`` or ``sha256``, the
``x-amz-checksum-*`` value the server verifies. A ``Hasher`` computes both in the worker-thread
call that writes or reads the part: hashlib and zlib let go of the GIL on large buffers, so
hashing runs beside the event loop instead of holding it (SHA-256 takes about 2.5 ms a MiB).
CRC32C needs botocore's CRT extension: it is left to botocore, as before.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import importlib
import io
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

from .errors import IntegrityError

#: ``--checksum`` mode -> the algorithm's name in S3 requests
ALGORITHMS: dict[str, str] = {"crc32": "CRC32", "crc32c": "CRC32C", "sha256": "SHA256"}
#: up to this many bytes a digest is computed on the event loop: a thread hop costs more
INLINE_LIMIT = 64 * 1024

Buffer = bytes | bytearray | memoryview


class Digests(NamedTuple):
    """What a ``Hasher`` found: the MD5 (``b""`` when not asked for) and the base64 value of
    the ``x-amz-checksum-*`` header (None when there is none, or botocore computes it)."""

    md5: bytes
    checksum: str | None = None


def checksum(algorithm: str, data: Buffer) -> str | None:
    """The base64 ``x-amz-checksum-<algorithm>`` value of ``data``; None for an algorithm
    computed by botocore (CRC32C)."""
    if algorithm == "CRC32":
        value = zlib.crc32(data).to_bytes(4, "big")
    elif algorithm == "SHA256":
        value = hashlib.sha256(data).digest()
    else:
        return None
    return base64.b64encode(value).decode()


@dataclass(frozen=True, slots=True)
class Hasher:
    """What to compute over each piece of data sent: its MD5 or not, and the checksum of
    ``algorithm`` (an S3 name, or None)."""

    md5: bool
    algorithm: str | None

    def __call__(self, data: Buffer) -> Digests:
        """The digests of ``data``. Called in a worker thread for anything but small data."""
        md5 = hashlib.md5(data, usedforsecurity=False).digest() if self.md5 else b""
        value = checksum(self.algorithm, data) if self.algorithm else None
        return Digests(md5, value)

    async def digests(self, data: Buffer) -> Digests:
        """``self(data)``: on the event loop for small data, in a worker thread otherwise."""
        if not self.md5 and self.algorithm is None:
            return Digests(b"")
        if len(data) <= INLINE_LIMIT:
            return self(data)
        return await asyncio.to_thread(self, data)

    def running(self) -> RunningDigests:
        """The same digests, of data given a piece at a time."""
        return RunningDigests(self)

    def of_file(self, path: Path, offset: int, length: int) -> Digests:
        """The digests of ``length`` bytes of the file at ``path`` from ``offset``, read in
        1 MiB blocks (blocking: one worker-thread call; a part of any size takes no more
        memory than a block); an ``IntegrityError`` if the file ends before."""
        running = self.running()
        with path.open("rb", buffering=0) as handle:
            handle.seek(offset)
            left = length
            while left and (block := handle.read(min(left, _SMALL_BLOCK))):
                running.update(block)
                left -= len(block)
        if left:
            raise IntegrityError(f"the staged file ended {left} bytes short of its part")
        return running.digests()


class RunningDigests:
    """A ``Hasher``'s digests computed over data given in pieces (``update``)."""

    def __init__(self, hasher: Hasher) -> None:
        self.md5 = hashlib.md5(usedforsecurity=False) if hasher.md5 else None
        self.algorithm = hasher.algorithm
        self.checksum = _running_checksum(hasher.algorithm) if hasher.algorithm else None

    def update(self, data: Buffer) -> None:
        if self.md5 is not None:
            self.md5.update(data)
        if self.checksum is not None:
            self.checksum.update(data)

    def digests(self) -> Digests:
        md5 = self.md5.digest() if self.md5 is not None else b""
        value = None
        if self.checksum is not None:
            value = base64.b64encode(self.checksum.digest()).decode()
        return Digests(md5, value)


def _running_checksum(algorithm: str) -> Any | None:
    """What ``checksum(algorithm, ...)`` computes, as a running digest (None where botocore
    computes it: CRC32C)."""
    return whole_object_digest(algorithm) if algorithm in ("CRC32", "SHA256") else None


def multipart_etag(part_md5s: Sequence[bytes]) -> str:
    """S3's ETag of an object uploaded in parts with these MD5s (without quotes)."""
    joined = hashlib.md5(b"".join(part_md5s), usedforsecurity=False).hexdigest()
    return f"{joined}-{len(part_md5s)}"


def file_md5(path: Path, size: int) -> bytes:
    """The MD5 of a staged file of ``size`` bytes, read in 8 MiB blocks (blocking: one
    worker-thread call); an ``IntegrityError`` when the file is not ``size`` bytes long."""
    digest = hashlib.md5(usedforsecurity=False)
    read = 0
    with path.open("rb") as handle:
        while block := handle.read(8 * 1024 * 1024):
            digest.update(block)
            read += len(block)
    if read != size:
        raise IntegrityError(f"the staged file is {read} bytes, not {size}")
    return digest.digest()


class _Crc:
    """A running CRC with hashlib's ``update``/``digest`` (``function(data, previous)``)."""

    def __init__(self, function: Callable[[Buffer, int], int], width: int) -> None:
        self.function = function
        self.width = width
        self.value = 0

    def update(self, data: Buffer) -> None:
        self.value = self.function(data, self.value)

    def digest(self) -> bytes:
        return self.value.to_bytes(self.width, "big")


def whole_object_digest(algorithm: str) -> Any | None:
    """A running digest of S3's additional checksum ``algorithm`` (as S3 names it: ``CRC32``,
    ``SHA256``...), with ``update`` and ``digest``; None where this installation cannot
    compute it (CRC32C and CRC64NVME need botocore's CRT extension, ``awscrt``)."""
    if algorithm == "CRC32":
        return _Crc(zlib.crc32, 4)
    if algorithm == "SHA1":
        return hashlib.sha1(usedforsecurity=False)
    if algorithm == "SHA256":
        return hashlib.sha256()
    try:
        crt = importlib.import_module("awscrt.checksums")  # optional: botocore[crt]
    except ImportError:
        return None
    if algorithm == "CRC32C":
        return _Crc(crt.crc32c, 4)
    if algorithm == "CRC64NVME":
        return _Crc(crt.crc64nvme, 8)
    return None


_BLOCK = 8 * 1024 * 1024
_SMALL_BLOCK = 1024 * 1024


def _digest_of(algorithm: str, read: Callable[[int], Buffer], size: int | None) -> bytes:
    """The raw ``algorithm`` digest of ``size`` bytes (None: all there is) from ``read``."""
    digest: Any = whole_object_digest(algorithm)  # computable: checked by the caller
    left = size
    while left is None or left > 0:
        block = read(_BLOCK if left is None else min(left, _BLOCK))
        if not block:
            break
        digest.update(block)
        if left is not None:
            left -= len(block)
    return bytes(digest.digest())


def staged_checksum(
    algorithm: str,
    out: BinaryIO | None,
    path: Path,
    data: Buffer | None,
    parts: Sequence[int] | None = None,
) -> str | None:
    """The base64 value of S3's checksum ``algorithm`` over ``data``, or else over the file
    ``out`` is writing to ``path`` (flushed first, read back in 8 MiB blocks): of the whole
    object, or with ``parts`` (their sizes) the composite one S3 gives an object uploaded in
    parts, the checksum of its parts' checksums. None where this installation cannot compute
    ``algorithm``. Blocking: one worker-thread call for anything but small data."""
    if whole_object_digest(algorithm) is None:
        return None
    sizes: Sequence[int | None] = [None] if parts is None else parts
    with contextlib.ExitStack() as stack:
        if data is None:
            if out is not None:
                out.flush()
            read = stack.enter_context(path.open("rb")).read
        else:
            read = io.BytesIO(data).read
        digests = [_digest_of(algorithm, read, size) for size in sizes]
    if parts is None:
        return base64.b64encode(digests[0]).decode()
    combined: Any = whole_object_digest(algorithm)
    combined.update(b"".join(digests))
    return base64.b64encode(combined.digest()).decode()
