from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from asyncbackup import GitHubBackupConfig
from asyncbackup.bandwidth import TokenBucket
from asyncbackup.cli import build_s3_parser
from asyncbackup.cli_options import parse_rate, parse_size
from asyncbackup.config import BackupConfig
from asyncbackup.errors import ConfigError
from asyncbackup.filters import KeyFilter


def test_include_and_exclude() -> None:
    f = KeyFilter(include=("*.csv", "reports/*"), exclude=("*tmp*",))
    assert f.matches("a/b.csv")
    assert f.matches("reports/x.pdf")
    assert not f.matches("a/b.json")
    assert not f.matches("reports/tmp.pdf")
    assert KeyFilter().matches("anything") and not KeyFilter().active
    only_exclude = KeyFilter(exclude=("logs/*",))
    assert only_exclude.matches("data/x") and not only_exclude.matches("logs/x")


def test_sizes_and_rates() -> None:
    assert parse_size("8MiB") == 8 * 1024 * 1024
    assert parse_size("5MB") == 5_000_000
    assert parse_size("1024") == 1024
    assert parse_rate("50MB/s") == 50_000_000
    assert parse_rate("1.5KiB/s") == 1536


def test_dest_key_mapping() -> None:
    base = {"source_bucket": "s", "dest_bucket": "d", "base_local_path": "/tmp"}
    same = BackupConfig(source_path="a/b", **base)  # type: ignore[arg-type]
    assert same.dest_key("a/b/c.txt") == "a/b/c.txt"
    moved = BackupConfig(source_path="a/b", dest_prefix="backup/2024/", **base)  # type: ignore[arg-type]
    assert moved.dest_key("a/b/c/d.txt") == "backup/2024/c/d.txt"
    assert moved.dest_list_prefix == "backup/2024/"
    root = BackupConfig(source_path="a/b", dest_prefix="", **base)  # type: ignore[arg-type]
    assert root.dest_key("a/b/c.txt") == "c.txt"


async def test_token_bucket_holds_the_rate() -> None:
    now = [0.0]
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    bucket = TokenBucket(1000.0, burst=0.0, clock=lambda: now[0], sleep=sleep)
    for _ in range(10):
        await bucket.consume(500)
    # 5,000 bytes at 1,000 B/s: the last chunk may start at 4.5 s, not earlier.
    assert now[0] == pytest.approx(4.5)
    assert all(s >= 0 for s in slept)


async def test_token_bucket_allows_a_burst_after_idle() -> None:
    now = [100.0]

    async def sleep(seconds: float) -> None:
        now[0] += seconds

    bucket = TokenBucket(1000.0, burst=1.0, clock=lambda: now[0], sleep=sleep)
    now[0] += 5.0  # idle for 5 s: at most 1 s (the burst) of allowance is kept
    await bucket.consume(1000)
    await bucket.consume(1000)
    assert now[0] == pytest.approx(105.0)  # both went at once
    await bucket.consume(1000)
    assert now[0] == pytest.approx(106.0)  # then the rate holds again


async def test_a_paced_body_never_pauses_longer_than_its_piece_takes() -> None:
    """A 1 MiB chunk at 50 KB/s used to wait 21 s before the next one: longer than S3
    waits for a request's body (400 RequestTimeout)."""
    now = [0.0]
    sent: list[tuple[float, int]] = []

    async def sleep(seconds: float) -> None:
        now[0] += seconds

    bucket = TokenBucket(50_000.0, clock=lambda: now[0], sleep=sleep)
    data = bytes(range(256)) * 4096 * 2  # 2 MiB
    pieces = []
    for _ in range(2):
        async for piece in bucket.paced(data[: len(data) // 2]):
            sent.append((now[0], len(piece)))
            pieces.append(piece)
    assert b"".join(pieces) == data[: len(data) // 2] * 2
    assert max(size for _, size in sent) == bucket.piece == 12_500  # the 0.25 s burst
    gaps = [later - earlier for (earlier, _), (later, _) in itertools.pairwise(sent)]
    assert max(gaps) <= 0.25 + 1e-9
    assert now[0] == pytest.approx((len(data) - bucket.piece) / 50_000.0, rel=0.01)
    assert TokenBucket(1024.0).piece == 1024 and TokenBucket(100e6).piece == 64 * 1024


def test_a_setting_without_a_flag_is_named_as_the_api_names_it(tmp_path: Path) -> None:
    """``part_concurrency`` has no flag (an embedding program's setting): below 1 it was
    refused with "--part-concurrency must be at least 1", a flag no command has."""
    base = {"dest_bucket": "d", "base_local_path": tmp_path, "part_concurrency": 0}
    for make in (
        lambda: BackupConfig(source_bucket="s", source_path="p", **base),  # type: ignore[arg-type]
        lambda: GitHubBackupConfig(owner="acme", token="t", **base),  # type: ignore[arg-type]
    ):
        with pytest.raises(ConfigError) as caught:
            make()
        message = str(caught.value)
        assert message == "part_concurrency must be at least 1, got 0", message
    flags = {f for a in build_s3_parser()._actions for f in a.option_strings}
    assert "--part-concurrency" not in flags  # were there one, the message would name it
