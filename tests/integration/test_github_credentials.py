"""How git gets the token: a credential helper on git's command line, for GitHub's git origin
only; no script file, so a temporary directory mounted ``noexec`` does not stop private clones."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pytest

from asyncbackup import run_github_backup
from asyncbackup.github.git import git_origin
from tests.conftest import Buckets, S3Server
from tests.integration.github_org import config, refs, restore, running_org
from tests.reliability import tmpfs


async def test_private_clones_work_when_the_temporary_directory_is_noexec(
    tmp_path: Path,
    s3_server: S3Server,
    buckets: Buckets,
    s3: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Hardened servers mount /tmp ``noexec``. Every git request of the fake GitHub needs the
    token (as a private repository's do): a credential script git has to execute from the
    temporary directory fails there, and no repository could be backed up."""
    with tmpfs(tmp_path / "tmp", "size=4m", "noexec") as noexec:
        monkeypatch.setattr(tempfile, "tempdir", str(noexec))
        async with running_org(tmp_path / "git") as github:
            clock = github.clock
            options = config(github, s3_server.endpoint, buckets.dest, tmp_path / "w")
            options["include"] = ("beta",)
            report = await run_github_backup(clock=clock, sleep=clock.sleep, **options)
            assert report.status == "completed", report.errors
            restored = restore(s3, buckets.dest, "github/acme/beta.bundle", tmp_path)
            expected = {
                r: sha for r, sha in refs(github.git_dir("beta")).items() if "/pull/" not in r
            }
            assert refs(restored) == expected
            assert [s.status for s in github.git_requests("beta")][-1] == 200


async def test_the_token_goes_only_to_githubs_own_git_origin(
    tmp_path: Path, s3_server: S3Server, buckets: Buckets
) -> None:
    """A clone URL on another origin (here the same server under the name ``localhost``, as
    a redirect or a rogue record would give) asks for credentials and gets none: the clone
    fails, and no request there carries the token."""
    async with running_org(tmp_path / "git") as github:
        elsewhere = github.url.replace("127.0.0.1", "localhost")
        github.repos["beta"].clone_url = f"{elsewhere}/git/acme/beta.git"
        clock = github.clock
        options = config(github, s3_server.endpoint, buckets.dest, tmp_path / "w")
        options["include"] = ("alpha", "beta")
        report = await run_github_backup(clock=clock, sleep=clock.sleep, **options)
        beta = github.git_requests("beta") + [s for s in github.git_seen if "/beta.git/" in s.path]
        alpha = [s for s in github.git_seen if "/alpha.git/" in s.path]
    assert beta and all(s.authorization is None for s in beta)
    assert "github/acme/beta.bundle" in report.errors
    assert "could not read Username" in report.errors["github/acme/beta.bundle"]
    assert any(s.authorization for s in alpha)  # the API's own origin gets it
    assert "github/acme/alpha.bundle" not in report.errors


@pytest.mark.parametrize(
    ("api_url", "origin"),
    [
        ("https://api.github.com", "https://github.com"),
        ("https://API.GitHub.com/", "https://github.com"),
        ("https://api.acme.ghe.com", "https://acme.ghe.com"),
        ("https://ghe.example.org/api/v3", "https://ghe.example.org"),
        ("https://api.example.org/api/v3", "https://api.example.org"),
        ("http://127.0.0.1:8080/api", "http://127.0.0.1:8080"),
        # the default port written out: GitHub Enterprise's clone URLs name none, and git asks
        # for ``host=ghe.example.org`` (the API requests already take the two for one origin)
        ("https://ghe.example.org:443/api/v3", "https://ghe.example.org"),
        ("http://ghe.example.org:80/api/v3", "http://ghe.example.org"),
        ("https://api.github.com:443", "https://github.com"),
        ("https://ghe.example.org:8443/api/v3", "https://ghe.example.org:8443"),
    ],
)
def test_git_origin_of_an_api(api_url: str, origin: str) -> None:
    assert git_origin(api_url) == origin
