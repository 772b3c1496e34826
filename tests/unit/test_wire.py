"""The protocol between the main process and its workers: values survive the trip."""

from __future__ import annotations

from pathlib import Path

import pytest

from asyncbackup import wire
from asyncbackup.config import BackupConfig
from asyncbackup.errors import (
    ConfigError,
    FatalRunError,
    IntegrityError,
    ObjectError,
    StagingFullError,
    StoreUnavailableError,
)
from asyncbackup.pipeline import WorkItem
from asyncbackup.workerpool import share_of


def _config(**extra: object) -> BackupConfig:
    return BackupConfig(
        source_bucket="src",
        source_path="a/b/",
        dest_bucket="dst",
        base_local_path=Path("/tmp/stage"),
        checkpoint_dir=Path("/tmp/cp"),
        include=("*.txt",),
        exclude=("tmp/*",),
        dest_prefix="copy",
        sse="aws:kms",
        sse_kms_key_id="alias/k",
        **extra,  # type: ignore[arg-type]
    )


def test_config_round_trips_through_json() -> None:
    config = _config(max_bandwidth=10_000_000, concurrency=33, processes=3)
    line = wire.encode({"op": "init", "config": wire.config_to_wire(config)})
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert wire.config_from_wire(wire.decode(line)["config"]) == config


def test_each_worker_gets_its_share_of_concurrency_and_bandwidth() -> None:
    share = share_of(_config(max_bandwidth=10_000_000, concurrency=33, processes=3), 3)
    assert (share.processes, share.concurrency, share.max_bandwidth) == (1, 11, 3_333_333)
    assert share_of(_config(concurrency=5, processes=2), 2).concurrency == 3
    assert share_of(_config(concurrency=4, processes=4), 4).concurrency == 1
    single = _config(max_bandwidth=10_000_000)
    assert share_of(single, 1) is single


def test_item_round_trips() -> None:
    item = WorkItem(key="a/\u00e9 b//c", size=12, etag='"abc"')
    line = wire.encode({"op": "copy", "id": 1, "item": wire.item_to_wire(item)})
    assert wire.item_from_wire(wire.decode(line)["item"]) == item


@pytest.mark.parametrize(
    "error",
    [
        ObjectError("AccessDenied", "Access Denied"),
        ObjectError("SlowDown", "reduce your rate", retryable=True),
        IntegrityError("MD5 differs"),
        ConfigError("--checksum crc32c needs botocore's CRT extension"),
        StoreUnavailableError("source bucket 'x' does not exist"),
        FatalRunError("stopping: InvalidAccessKeyId"),
        StagingFullError("no space left in staging directory /x"),
    ],
)
def test_errors_round_trip_with_type_and_text(error: Exception) -> None:
    again = wire.error_from_wire(
        wire.decode(wire.encode({"op": "x", **{"error": wire.error_to_wire(error)}}))["error"]
    )
    assert type(again) is type(error)
    assert str(again) == str(error)
    if isinstance(error, ObjectError):
        assert isinstance(again, ObjectError)
        assert (again.code, again.retryable) == (error.code, error.retryable)


def test_an_unexpected_error_becomes_a_fatal_one_line_error() -> None:
    again = wire.error_from_wire(wire.error_to_wire(KeyError("boom\nsecond line")))
    assert isinstance(again, FatalRunError)
    assert "unexpected KeyError" in str(again) and "\n" not in str(again)


def test_garbage_is_refused() -> None:
    with pytest.raises(ValueError):
        wire.decode(b"[1, 2]\n")
    with pytest.raises(ValueError):
        wire.decode(b"{not json\n")
