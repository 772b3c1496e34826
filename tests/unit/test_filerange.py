"""FileRange: a range of a staged file as the body botocore sends (and seeks back to send
again or to hash)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from asyncbackup.filerange import BufferBody, FileRange


def test_a_range_reads_its_bytes_only_and_again_after_a_seek(tmp_path: Path) -> None:
    staged = tmp_path / "staged"
    staged.write_bytes(bytes(range(100)))
    with FileRange(staged, 10, 30) as body:
        assert len(body) == 30
        assert body.read(8) == bytes(range(10, 18))
        assert body.read() == bytes(range(18, 40))
        assert body.read(5) == b""
        assert body.seek(0) == 0 and body.tell() == 0
        assert body.read() == bytes(range(10, 40))
        assert body.seek(-5, io.SEEK_END) == 25 and body.read() == bytes(range(35, 40))
        with pytest.raises(OSError):  # no descriptor: aiohttp would take the file's size
            body.fileno()


def test_a_file_shorter_than_its_range_is_an_error_not_a_short_body(tmp_path: Path) -> None:
    staged = tmp_path / "staged"
    staged.write_bytes(b"x" * 20)
    with FileRange(staged, 10, 30) as body, pytest.raises(OSError, match="ended 20 bytes early"):
        body.read()


def test_a_buffer_reads_as_a_file_without_a_copy_of_the_whole() -> None:
    data = bytearray(range(50))
    with BufferBody(data) as body:
        assert len(body) == 50
        assert body.read(10) == bytes(range(10))
        assert body.seek(-5, io.SEEK_END) == 45 and body.read() == bytes(range(45, 50))
        assert body.seek(0) == 0 and body.read() == bytes(data)
        assert body.read(1) == b""
