"""A range of a staged file, or a part in memory, as the file object botocore sends as a
request's body.

botocore reads a file body as the request goes out (aiohttp, a chunk per worker-thread call)
and seeks back to its start to send it again or to hash it (the SHA-256 it signs over plain
http, a checksum it computes), so a part of many GiB is never in memory whole. A part already
in memory goes the same way (``BufferBody``): botocore would send a bytearray raw (aiohttp
then warns it may block the loop), and bytes would be a second copy of it.
"""

from __future__ import annotations

import io
import os
from pathlib import Path


class _Body(io.RawIOBase):
    """A read-only body of ``length`` bytes, seekable within them (what botocore needs to
    send it again or to hash it); ``readinto`` reads from ``_position``."""

    def __init__(self, length: int) -> None:
        super().__init__()
        self._length = length
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._length}[whence]
        self._position = min(max(base + offset, 0), self._length)
        return self._position

    def __len__(self) -> int:
        return self._length


class FileRange(_Body):
    """``length`` bytes of the file at ``path`` from ``offset``; an ``OSError`` if the file
    ends early (a body shorter than its Content-Length would leave the request waiting)."""

    def __init__(self, path: Path, offset: int, length: int) -> None:
        super().__init__(length)
        self._fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        self._start = offset

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        wanted = min(len(buffer), self._length - self._position)
        if wanted <= 0:
            return 0
        data = os.pread(self._fd, wanted, self._start + self._position)
        if not data:
            raise OSError(f"the staged file ended {self._length - self._position} bytes early")
        buffer[: len(data)] = data
        self._position += len(data)
        return len(data)

    def close(self) -> None:
        if not self.closed:
            os.close(self._fd)
        super().close()


class BufferBody(_Body):
    """``data`` (a part's buffer), read without a copy of the whole."""

    def __init__(self, data: bytes | bytearray | memoryview) -> None:
        self._view = memoryview(data).cast("B")
        super().__init__(len(self._view))

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        piece = self._view[self._position : self._position + len(buffer)]
        buffer[: len(piece)] = piece
        self._position += len(piece)
        return len(piece)

    def close(self) -> None:
        """Let go of the buffer: a part's memory is given back to the budget once its
        upload is over, and must be freed then, whoever still holds this object."""
        self._view.release()
        super().close()
