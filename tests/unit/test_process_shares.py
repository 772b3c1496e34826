"""``--processes N`` shares ``--max-bandwidth``: the shares never add up to more than it."""

from __future__ import annotations

from pathlib import Path

import pytest

from asyncbackup.config import BackupConfig
from asyncbackup.errors import ConfigError
from asyncbackup.workerpool import share_of


def _config(max_bandwidth: int, processes: int) -> BackupConfig:
    return BackupConfig(
        source_bucket="src",
        source_path="data",
        dest_bucket="dst",
        base_local_path=Path("/tmp/stage"),
        max_bandwidth=max_bandwidth,
        processes=processes,
    )


@pytest.mark.parametrize(("limit", "processes"), [(10_000_000, 3), (4096, 4), (3072, 3)])
def test_the_shares_of_the_bandwidth_limit_add_up_to_at_most_the_limit(
    limit: int, processes: int
) -> None:
    share = share_of(_config(limit, processes), processes).max_bandwidth
    assert share is not None and share * processes <= limit


@pytest.mark.parametrize(("limit", "processes"), [(2048, 4), (1024, 2)])
def test_a_limit_too_small_to_share_is_refused_with_what_to_do(limit: int, processes: int) -> None:
    """Each process needs 1 KiB/s at least (the flag's own minimum): 4 processes under 2 KiB/s
    would copy at 4 KiB/s."""
    with pytest.raises(ConfigError) as raised:
        _config(limit, processes)
    message = str(raised.value)
    assert "--max-bandwidth" in message and "--processes" in message
    assert f"{processes}KiB/s" in message


def test_more_processes_than_concurrency_is_refused_not_a_larger_budget() -> None:
    """Each process took at least one object in flight, so --processes 20 --concurrency 16
    copied 20 at a time, and 500 processes 500 (and started 500 interpreters): the processes
    share --concurrency, they do not add to it."""
    with pytest.raises(ConfigError) as raised:
        BackupConfig(
            source_bucket="src",
            source_path="data",
            dest_bucket="dst",
            base_local_path=Path("/tmp/stage"),
            processes=20,
            concurrency=16,
        )
    message = str(raised.value)
    assert "--processes 20" in message and "--concurrency 16" in message


def test_processes_auto_is_at_most_the_concurrency() -> None:
    """``auto`` (one per CPU) on a machine of more CPUs than --concurrency: as many processes
    as objects in flight, not a refusal of a flag the user did not count."""
    from asyncbackup.cli import build_parser
    from asyncbackup.cli_options import s3_config

    args = build_parser().parse_args(
        [
            "s3",
            "d",
            "--source-bucket",
            "a",
            "--dest-bucket",
            "b",
            "--base-local-path",
            "/tmp/s",
            "--processes",
            "auto",
            "--concurrency",
            "1",
        ]
    )
    assert s3_config(args).processes == 1


def test_processes_auto_gives_each_process_16_objects_in_flight_at_least() -> None:
    """``auto`` on a machine of many CPUs: at the default concurrency of 128, 8 processes,
    not one per CPU (64 Python processes of one or two objects each, 50-70 MB apiece)."""
    from asyncbackup.cli import build_parser
    from asyncbackup.cli_options import AutoProcesses, s3_config

    argv = ["s3", "d", "--source-bucket", "a", "--dest-bucket", "b", "--base-local-path", "/s"]
    args = build_parser().parse_args(argv)
    args.processes = AutoProcesses(64)  # what process_count gives on 64 CPUs
    assert s3_config(args).processes == 8
    args.processes = AutoProcesses(2)
    assert s3_config(args).processes == 2
    args.concurrency = 20
    assert s3_config(args).processes == 1
