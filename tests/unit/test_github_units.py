"""Pure logic of the GitHub backup: rate-limit gate, filters, configuration."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from asyncbackup import GitHubBackupConfig
from asyncbackup.errors import ConfigError
from asyncbackup.github.git import parent_death_prefix, refs_digest
from asyncbackup.github.listing import RepoFilter, wiki_url
from asyncbackup.github.ratelimit import RateGate
from tests.github_server import FakeClock


async def test_gate_waits_for_the_reset_when_the_budget_is_spent() -> None:
    clock = FakeClock(now=1000.0)
    gate = RateGate(clock=clock, sleep=clock.sleep)
    headers = {"x-ratelimit-remaining": "0", "x-ratelimit-reset": "1500"}
    assert gate.observe(200, headers, "") is False  # this answer is good; the next would not be
    await gate.wait_turn()
    assert clock.sleeps == [501.0] and clock.now == 1501.0
    await gate.wait_turn()
    assert clock.sleeps == [501.0]  # no second wait


async def test_gate_secondary_limits_back_off_from_a_minute_and_reset_on_success() -> None:
    clock = FakeClock(now=0.0)
    gate = RateGate(clock=clock, sleep=clock.sleep)
    message = "You have exceeded a secondary rate limit"
    for _ in range(3):
        assert gate.observe(403, {"x-ratelimit-remaining": "4000"}, message)
        await gate.wait_turn()
    assert clock.sleeps == [60.0, 120.0, 240.0]
    assert gate.observe(200, {}, "") is False
    assert gate.observe(429, {}, "")
    await gate.wait_turn()
    assert clock.sleeps[-1] == 60.0
    assert gate.observe(429, {"retry-after": "5"}, "")
    await gate.wait_turn()
    assert clock.sleeps[-1] == 5.0


async def test_gate_counts_requests_refused_together_as_one_strike() -> None:
    clock = FakeClock(now=0.0)
    gate = RateGate(clock=clock, sleep=clock.sleep)
    message = "You have exceeded a secondary rate limit"
    for _ in range(4):  # --api-concurrency 4: four requests in flight, refused at once
        assert gate.observe(403, {"x-ratelimit-remaining": "4000"}, message)
    await gate.wait_turn()
    assert clock.sleeps == [60.0]  # GitHub's minute, not 60 s doubled three times (480 s)
    for _ in range(4):  # still limited after the wait: now it doubles, once
        assert gate.observe(403, {"x-ratelimit-remaining": "4000"}, message)
    await gate.wait_turn()
    assert clock.sleeps == [60.0, 120.0]


def test_gate_leaves_real_403s_alone() -> None:
    gate = RateGate(clock=lambda: 0.0)
    assert gate.observe(403, {"x-ratelimit-remaining": "10"}, "Resource not accessible") is False
    assert gate.waits == []


@pytest.mark.parametrize("ahead", [-600.0, 0.0, 300.0])
async def test_gate_measures_the_wait_on_githubs_clock(ahead: float) -> None:
    """The reset is GitHub's time: the wait is from the answer's Date, whatever our clock
    says (``ahead``: how far ours runs ahead of GitHub's)."""
    github_now = 1_700_000_000.0
    clock = FakeClock(now=github_now + ahead)
    gate = RateGate(clock=clock, sleep=clock.sleep)
    headers = {
        "date": "Tue, 14 Nov 2023 22:13:20 GMT",  # github_now
        "x-ratelimit-remaining": "0",
        "x-ratelimit-reset": str(int(github_now + 120)),
    }
    assert gate.observe(403, headers, "API rate limit exceeded") is True
    assert gate.waits == [("primary rate limit (waiting for x-ratelimit-reset)", 121.0)]
    await gate.wait_turn()
    assert clock.sleeps == [121.0]


def test_gate_without_a_date_uses_its_own_clock() -> None:
    clock = FakeClock(now=1000.0)
    gate = RateGate(clock=clock, sleep=clock.sleep)
    headers = {"date": "not a date", "x-ratelimit-remaining": "0", "x-ratelimit-reset": "1100"}
    gate.observe(403, headers, "")
    assert gate.waits[0][1] == 101.0


@pytest.mark.parametrize("value", ["nan", "inf", "1e400"])
def test_gate_takes_a_rate_limit_header_that_is_no_finite_number(value: str) -> None:
    """``x-ratelimit-remaining`` was kept as ``int(float(value))``, read by nothing, which
    raised ValueError (nan) or OverflowError (inf) out of the request: the run failed on an
    unexpected error. Such a header is now no limit, as one that is no number."""
    gate = RateGate(clock=lambda: 0.0)
    headers = {"x-ratelimit-remaining": value, "x-ratelimit-reset": "100"}
    assert gate.observe(200, headers, "") is False
    assert gate.waits == []


def test_gate_caps_a_skewed_reset() -> None:
    clock = FakeClock(now=0.0)
    gate = RateGate(clock=clock, sleep=clock.sleep)
    gate.observe(403, {"x-ratelimit-remaining": "0", "x-ratelimit-reset": "99999999"}, "")
    assert gate.waits[0][1] == 3660.0


def test_filters() -> None:
    repo = {"name": "Service-API", "fork": False, "archived": False}
    assert RepoFilter().rejects(repo) is None
    assert RepoFilter(include=("service-*",)).rejects(repo) is None
    assert RepoFilter(include=("lib-*",)).rejects(repo) == "not matched by --include"
    assert RepoFilter(exclude=("*-api",)).rejects(repo) == "matched by --exclude"
    assert RepoFilter(skip_forks=True).rejects({**repo, "fork": True}) is not None
    assert RepoFilter(skip_archived=True).rejects({**repo, "archived": True}) is not None
    assert RepoFilter(skip_forks=True).rejects(repo) is None


def test_wiki_url_and_refs_digest() -> None:
    assert wiki_url("https://github.com/acme/x.git") == "https://github.com/acme/x.wiki.git"
    one = [("a" * 40, "refs/heads/main"), ("b" * 40, "refs/tags/v1")]
    assert refs_digest(one) == refs_digest(list(reversed(one)))
    assert refs_digest(one) != refs_digest([("c" * 40, "refs/heads/main"), one[1]])


def test_config_keeps_the_token_out_of_repr_and_checks_input(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = GitHubBackupConfig(
        owner="acme", dest_bucket="b", base_local_path=tmp_path, token="ghp_secret123"
    )
    assert "ghp_secret123" not in repr(config)
    assert config.resolved_token() == "ghp_secret123"
    assert config.source_name == "github"
    monkeypatch.delenv("OTHER", raising=False)
    other = GitHubBackupConfig(
        owner="acme", dest_bucket="b", base_local_path=tmp_path, token_env="OTHER"
    )
    with pytest.raises(ConfigError, match="set the environment variable OTHER"):
        other.resolved_token()
    monkeypatch.setenv("OTHER", "ghp_fromenv")
    assert other.resolved_token() == "ghp_fromenv"
    for bad in (
        {"owner": "a/b"},
        {"api_url": "ftp://x"},
        {"api_url": "https://user:pw@ghe.example/api/v3"},
        {"token_env": "1BAD"},
        {"api_concurrency": 0},
    ):
        with pytest.raises(ConfigError):
            GitHubBackupConfig(
                **{"owner": "acme", "dest_bucket": "b", "base_local_path": tmp_path, **bad}  # type: ignore[arg-type]
            )


def test_git_runs_under_setpriv_only_where_setpriv_can_set_the_death_signal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An old setpriv (no ``--pdeathsig``) or none at all: git runs as it is, rather than
    every git command failing."""
    probe = parent_death_prefix.__wrapped__
    (tmp_path / "true").symlink_to(shutil.which("true") or "/bin/true")
    monkeypatch.setenv("PATH", str(tmp_path))
    assert probe() == ()  # no setpriv
    old = tmp_path / "setpriv"
    old.write_text("#!/bin/sh\necho 'setpriv: unrecognized option --pdeathsig' >&2\nexit 1\n")
    old.chmod(0o755)
    assert probe() == ()
    if Path("/usr/bin/setpriv").exists():  # a working one, where this machine has it
        monkeypatch.setenv("PATH", f"/usr/bin:{tmp_path}")
        assert probe() == ("/usr/bin/setpriv", "--pdeathsig", "KILL", "--")
