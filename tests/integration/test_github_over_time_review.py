"""An organisation backed up day after day while it changes: history rewritten, repositories
renamed, deleted, re-created, made private, metadata edited and deleted, secondary rate
limits over hundreds of repositories. Real runs: the loopback GitHub to moto, restored with
git from what is in the bucket."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from asyncbackup import run_github_backup
from asyncbackup.checkpoint import read_checkpoint
from tests.conftest import Buckets, S3Server
from tests.github_server import GIT, FakeRepo, add_commit, git, make_repository
from tests.helpers import list_keys
from tests.integration.github_org import config, refs, restore, running_org


def source_refs(bare: Path) -> dict[str, str]:
    return {r: sha for r, sha in refs(bare).items() if not r.startswith("refs/pull/")}


def has_object(repository: Path, sha: str) -> bool:
    done = subprocess.run(
        [GIT, "cat-file", "-e", f"{sha}^{{commit}}"], cwd=repository, capture_output=True
    )
    return done.returncode == 0


def rewrite_main(bare: Path, back: int, message: str) -> str:
    """A force-push: main reset ``back`` commits and a new commit on top; its new SHA."""
    work = bare.with_name(bare.name + ".rewrite")
    git("clone", "-q", str(bare), str(work))
    git("reset", "-q", "--hard", f"HEAD~{back}", cwd=work)
    (work / "rewritten.txt").write_text(message)
    git("add", "-A", cwd=work)
    git("commit", "-q", "-m", message, cwd=work)
    git("push", "-q", "--force", "origin", "HEAD:main", cwd=work)
    sha = git("rev-parse", "HEAD", cwd=work).strip()
    subprocess.run(["rm", "-rf", str(work)], check=True)
    return sha


def bundle_versions(s3: Any, bucket: str, key: str) -> list[dict[str, Any]]:
    """The versions of ``key``, the latest last."""
    answer = s3.list_object_versions(Bucket=bucket, Prefix=key)
    versions = [v for v in answer.get("Versions", ()) if v["Key"] == key]
    return sorted(versions, key=lambda v: bool(v["IsLatest"]))


def restore_version(s3: Any, bucket: str, key: str, version: str, where: Path) -> Path:
    where.mkdir(parents=True, exist_ok=True)
    bundle = where / "old.bundle"
    body = s3.get_object(Bucket=bucket, Key=key, VersionId=version)["Body"].read()
    bundle.write_bytes(body)
    git("bundle", "verify", "-q", str(bundle))
    target = where / "old.git"
    git("clone", "-q", "--mirror", str(bundle), str(target))
    git("fsck", "--no-progress", "--full", cwd=target)
    return target


@pytest.mark.parametrize("cleanup", [False, True], ids=["kept-mirror", "cleanup"])
async def test_a_force_push_gives_a_bundle_of_the_new_history_and_versioning_keeps_the_old(
    tmp_path: Path, s3_server: S3Server, buckets: Buckets, s3: Any, cleanup: bool
) -> None:
    """History rewritten between two runs (main force-pushed, a branch and a tag deleted):
    the next bundle restores to exactly the current refs, and none of the dropped commits;
    the bundle object is replaced, so the old history is restorable only from an earlier
    version of it, where the bucket keeps versions."""
    s3.put_bucket_versioning(Bucket=buckets.dest, VersioningConfiguration={"Status": "Enabled"})
    key = "github/acme/alpha.bundle"
    async with running_org(tmp_path / "git") as github:
        options = config(
            github, s3_server.endpoint, buckets.dest, tmp_path / "work", cleanup=cleanup
        )
        options["include"] = ("alpha",)
        clock = github.clock
        first = await run_github_backup(clock=clock, sleep=clock.sleep, **options)
        assert first.status == "completed", first.errors
        bare = github.git_dir("alpha")
        before = source_refs(bare)
        assert {"refs/heads/feature", "refs/tags/v1.0"} <= set(before)

        new_main = rewrite_main(bare, 2, "history rewritten")
        git("branch", "-q", "-D", "feature", cwd=bare)
        git("tag", "-d", "v0.0", "v1.0", cwd=bare)  # both on the old main
        github.repos["alpha"].pushed_at = "2024-02-01T00:00:00Z"
        after = source_refs(bare)
        assert after["refs/heads/main"] == new_main and "refs/heads/feature" not in after

        second = await run_github_backup(clock=clock, sleep=clock.sleep, **options)
        assert second.status == "completed", second.errors
        restored = restore(s3, buckets.dest, key, tmp_path)
        git("bundle", "verify", "-q", str(tmp_path / "alpha.bundle"))
        assert refs(restored) == after
        assert not has_object(restored, before["refs/heads/main"])  # nothing dropped is kept

        versions = bundle_versions(s3, buckets.dest, key)
        assert len(versions) == 2
        old = restore_version(s3, buckets.dest, key, versions[0]["VersionId"], tmp_path / "v1")
        assert refs(old) == before


def make_other_repository(bare: Path, text: str) -> None:
    """A repository unrelated to ``make_repository``'s: other commits, a tag of its own."""
    work = bare.with_name(bare.name + ".other")
    git("init", "-q", "-b", "main", str(work))
    (work / "other.txt").write_text(text)
    git("add", "-A", cwd=work)
    git("commit", "-q", "-m", text, cwd=work)
    git("tag", "-a", "other-1", "-m", text, cwd=work)
    subprocess.run(["rm", "-rf", str(bare)], check=True)
    git("clone", "-q", "--bare", str(work), str(bare))
    subprocess.run(["rm", "-rf", str(work)], check=True)


@pytest.mark.parametrize("cleanup", [False, True], ids=["kept-mirror", "cleanup"])
async def test_repositories_renamed_deleted_recreated_and_hidden_between_runs(
    tmp_path: Path, s3_server: S3Server, buckets: Buckets, s3: Any, cleanup: bool
) -> None:
    """Between two runs: ``svc`` renamed to ``service`` (same id), ``gone`` deleted and a new,
    unrelated ``gone`` created (another id), ``moved`` transferred away, ``secret`` made
    invisible to the token. The next run completes without errors; the objects of names no
    longer listed stay where they were; the new names restore; the new ``gone``'s bundle
    holds its own history alone, none of the deleted one's (a kept mirror is fetched with
    --prune); the checkpoint forgets what is no longer listed."""
    base = tmp_path / "work"
    async with running_org(tmp_path / "git") as github:
        for ident, name in enumerate(("svc", "gone", "moved", "secret"), start=7001):
            github.add_repo(FakeRepo(name, id=ident, has_wiki=False))
            make_repository(github.git_dir(name), commits=2, tags=1, pull_ref=False)
        options = config(github, s3_server.endpoint, buckets.dest, base, cleanup=cleanup)
        options["exclude"] = ("alpha", "beta", "forky", "empty", "old")
        clock = github.clock
        first = await run_github_backup(clock=clock, sleep=clock.sleep, **options)
        assert first.status == "completed", first.errors
        svc_refs = source_refs(github.git_dir("svc"))
        old_gone = source_refs(github.git_dir("gone"))
        keys_before = set(list_keys(s3, buckets.dest))

        # rename: the same repository (id), its git directory and API paths under a new name
        svc = github.repos.pop("svc")
        svc.name = "service"
        github.add_repo(svc)
        github.git_dir("svc").rename(github.git_dir("service"))
        github.renamed["svc"] = "service"
        # deleted, and a new repository created under its name
        del github.repos["gone"]
        make_other_repository(github.git_dir("gone"), "a new repository, the same name")
        github.add_repo(FakeRepo("gone", id=8001, has_wiki=False, pushed_at="2024-03-01T00:00:00Z"))
        new_gone = source_refs(github.git_dir("gone"))
        del github.repos["moved"]  # transferred to another organisation
        github.repos["secret"].status = 404  # private now: the token cannot see it...
        del github.repos["secret"]  # ...nor does the list show it

        second = await run_github_backup(clock=clock, sleep=clock.sleep, **options)
        assert second.status == "completed", second.errors
        keys = set(list_keys(s3, buckets.dest))
        assert keys_before <= keys  # nothing deleted at the destination
        assert "github/acme/service.bundle" in keys
        renamed = restore(s3, buckets.dest, "github/acme/service.bundle", tmp_path)
        assert refs(renamed) == svc_refs
        record = orjson.loads(
            s3.get_object(Bucket=buckets.dest, Key="github/acme/service/repository.json")[
                "Body"
            ].read()
        )
        assert record["id"] == 7001 and record["name"] == "service"
        gone = restore(s3, buckets.dest, "github/acme/gone.bundle", tmp_path)
        assert refs(gone) == new_gone
        assert not any(has_object(gone, sha) for sha in old_gone.values() if len(sha) == 40)
        gone_record = orjson.loads(
            s3.get_object(Bucket=buckets.dest, Key="github/acme/gone/repository.json")[
                "Body"
            ].read()
        )
        assert gone_record["id"] == 8001

        assert second.archived_checkpoint is not None
        state = read_checkpoint(second.archived_checkpoint)
        listed = {key.split("/")[2].split(".")[0] for key in state.files}
        assert listed == {"service", "gone"}
        for section in ("github_versions", "github_etags", "github_release_listing"):
            names = {key.split("/")[2].split(".")[0] for key in state.extra.get(section, {})}
            assert names <= {"service", "gone"}, (section, names)


def read_json(s3: Any, bucket: str, key: str) -> Any:
    return orjson.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())


async def test_metadata_edited_and_deleted_between_runs_is_the_current_state(
    tmp_path: Path, s3_server: S3Server, buckets: Buckets, s3: Any
) -> None:
    """Between two runs an issue is deleted, a comment edited, a pull request closed, a
    release deleted (its asset with it), another's asset replaced and a new release added:
    each JSON file is GitHub's current list (the deleted issue is gone from it), the new and
    replaced assets are copied, and the deleted release's asset stays in the bucket (nothing
    is deleted there) but leaves the checkpoint."""
    async with running_org(tmp_path / "git") as github:
        options = config(github, s3_server.endpoint, buckets.dest, tmp_path / "work")
        options["include"] = ("alpha",)
        alpha = github.repos["alpha"]
        github.add_release(alpha, "v1.1", {"patch.bin": b"first patch"})
        clock = github.clock
        first = await run_github_backup(clock=clock, sleep=clock.sleep, **options)
        assert first.status == "completed", first.errors
        old_asset = "github/acme/alpha/releases/v1.0/tool-1.0.tar.gz"
        patch = "github/acme/alpha/releases/v1.1/patch.bin"

        alpha.issues = [i for i in alpha.issues if i["number"] != 5]
        alpha.issue_comments[3]["body"] = "edited"
        alpha.pulls[0]["state"] = "closed"
        alpha.releases = [r for r in alpha.releases if r["tag_name"] != "v1.0"]
        (v11,) = alpha.releases
        asset = v11["assets"][0]
        github.assets[asset["id"]] = b"the patch, replaced"
        asset.update(size=len(b"the patch, replaced"), updated_at="2024-03-01T00:00:00Z")
        github.add_release(alpha, "v2.0", {"new.bin": b"new"})

        second = await run_github_backup(clock=clock, sleep=clock.sleep, **options)
        assert second.status == "completed", second.errors
        issues = read_json(s3, buckets.dest, "github/acme/alpha/issues.json")
        assert 5 not in {i["number"] for i in issues} and len(issues) == 229
        comments = read_json(s3, buckets.dest, "github/acme/alpha/issue-comments.json")
        assert comments[3]["body"] == "edited"
        pulls = read_json(s3, buckets.dest, "github/acme/alpha/pulls.json")
        assert pulls[0]["state"] == "closed"
        releases = read_json(s3, buckets.dest, "github/acme/alpha/releases.json")
        assert [r["tag_name"] for r in releases] == ["v1.1", "v2.0"]
        body = s3.get_object(Bucket=buckets.dest, Key=patch)["Body"].read()
        assert body == b"the patch, replaced"
        new = s3.get_object(Bucket=buckets.dest, Key="github/acme/alpha/releases/v2.0/new.bin")
        assert new["Body"].read() == b"new"
        assert old_asset in list_keys(s3, buckets.dest)
        assert second.archived_checkpoint is not None
        state = read_checkpoint(second.archived_checkpoint)
        assert old_asset not in state.files and patch in state.files
        assert old_asset not in state.extra["github_versions"]


async def test_secondary_limits_over_hundreds_of_repositories_are_waited_out(
    tmp_path: Path, s3_server: S3Server, buckets: Buckets, s3: Any, caplog: Any
) -> None:
    """GitHub's secondary limit, as it comes: every so many requests, a window in which every
    request answers 403 "You have exceeded a secondary rate limit" (with retry-after in some
    windows, without in others). Over a hundred repositories the run waits each window out: no
    artifact fails, and the requests refused are a few a window, not a spin."""
    repos = 120
    async with running_org(tmp_path / "git") as github:
        github.repos.clear()
        clone_url = f"{github.url}/git/acme/shared.git"
        make_repository(github.git_dir("shared"), commits=1, tags=0, pull_ref=False)
        for i in range(repos):
            github.add_repo(FakeRepo(f"r{i:03d}", id=9000 + i, has_wiki=False, clone_url=clone_url))
        counted = {"requests": 0, "refused": 0, "windows": 0}
        window = {"until": -1.0, "retry_after": False}

        async def secondary_limit(request: web.Request) -> web.Response | None:
            counted["requests"] += 1
            now = github.clock.now
            if now >= window["until"] and counted["requests"] % 100 == 0:
                counted["windows"] += 1
                window["until"] = now + 60
                window["retry_after"] = counted["windows"] % 2 == 0
            if now < window["until"]:
                counted["refused"] += 1
                headers = github._limit_headers()
                if window["retry_after"]:
                    headers["retry-after"] = str(int(window["until"] - now) + 1)
                return web.json_response(
                    {
                        "message": "You have exceeded a secondary rate limit. Please wait a few "
                        "minutes before you try again."
                    },
                    status=403,
                    headers=headers,
                )
            return None

        github.hooks.append(secondary_limit)
        options = config(github, s3_server.endpoint, buckets.dest, tmp_path / "work")
        options.update(git_concurrency=4, concurrency=16, api_concurrency=8, cleanup=True)
        clock = github.clock
        report = await run_github_backup(clock=clock, sleep=clock.sleep, **options)
        assert report.status == "completed", dict(list(report.errors.items())[:5])
        keys = list_keys(s3, buckets.dest)
        assert sum(key.endswith(".bundle") for key in keys) == repos
        assert sum(key.endswith("/repository.json") for key in keys) == repos
        assert counted["windows"] >= 5
        # each window refuses what was in flight (api_concurrency) and, once over, nothing
        assert counted["refused"] <= counted["windows"] * 8 * 2, counted


async def test_a_wiki_created_then_edited_is_copied_each_time_and_only_then(
    tmp_path: Path, s3_server: S3Server, buckets: Buckets, s3: Any
) -> None:
    """A wiki turned on but without a page yet is skipped; once its first page is written
    the next run copies it, an edit is copied by the run after (the wiki's refs moved,
    whatever the repository's pushed_at says), and an unchanged one is not fetched."""
    key = "github/acme/beta.wiki.bundle"
    async with running_org(tmp_path / "git") as github:
        github.repos["beta"].has_wiki = True
        options = config(github, s3_server.endpoint, buckets.dest, tmp_path / "work")
        options["include"] = ("beta",)
        clock = github.clock

        async def run() -> Any:
            report = await run_github_backup(clock=clock, sleep=clock.sleep, **options)
            assert report.status == "completed", report.errors
            return report

        await run()
        assert key not in list_keys(s3, buckets.dest)
        wiki = github.git_dir("beta", wiki=True)
        make_repository(wiki, commits=1, tags=0, pull_ref=False)
        await run()
        (tmp_path / "2").mkdir()
        assert refs(restore(s3, buckets.dest, key, tmp_path / "2")) == refs(wiki)
        work = tmp_path / "wiki-edit"
        git("clone", "-q", str(wiki), str(work))
        (work / "Home.md").write_text("edited page\n")
        git("add", "-A", cwd=work)
        git("commit", "-q", "-m", "edit", cwd=work)
        git("push", "-q", "origin", "HEAD:main", cwd=work)
        await run()
        (tmp_path / "3").mkdir()
        assert refs(restore(s3, buckets.dest, key, tmp_path / "3")) == refs(wiki)
        asked = len(github.git_requests("beta.wiki"))
        last = await run()
        assert last.copied_bytes == 0
        assert len(github.git_requests("beta.wiki")) == asked + 1  # its ls-remote (ls-refs) alone


async def test_a_failing_repository_deleted_before_the_next_pass_ends_the_errors(
    tmp_path: Path, s3_server: S3Server, buckets: Buckets, s3: Any
) -> None:
    """A run ends with errors (a repository taken down), then that repository is deleted and
    another renamed: the next pass completes clean, archives its checkpoint, and the run
    after starts from the versions it carried (no clone of what did not move)."""
    async with running_org(tmp_path / "git") as github:
        github.add_repo(FakeRepo("dmca", id=7100, status=451, has_wiki=False))
        options = config(github, s3_server.endpoint, buckets.dest, tmp_path / "work")
        options["exclude"] = ("alpha", "empty", "old")
        clock = github.clock
        first = await run_github_backup(clock=clock, sleep=clock.sleep, **options)
        assert first.status == "completed_with_errors"
        assert first.errors and all("/dmca" in key for key in first.errors)

        del github.repos["dmca"]
        beta = github.repos.pop("beta")
        beta.name = "beta2"
        github.add_repo(beta)
        github.git_dir("beta").rename(github.git_dir("beta2"))
        second = await run_github_backup(clock=clock, sleep=clock.sleep, **options)
        assert second.status == "completed", second.errors
        assert not second.errors and second.archived_checkpoint is not None
        state = read_checkpoint(second.archived_checkpoint)
        assert not state.errors and "github_ended_with_errors" not in state.extra
        assert not any("/dmca" in key or "/beta/" in key for key in state.files)
        assert state.files["github/acme/beta2.bundle"] is True

        asked = len(github.git_requests("beta2"))
        third = await run_github_backup(clock=clock, sleep=clock.sleep, **options)
        assert third.status == "completed", third.errors
        assert third.copied_bytes == 0
        assert len(github.git_requests("beta2")) == asked


async def test_a_push_during_the_run_after_the_listing_is_in_the_next_backup(
    tmp_path: Path, s3_server: S3Server, buckets: Buckets, s3: Any
) -> None:
    """A push lands after the repository was listed (here: once its bundle is made, while
    its metadata is copied): the run records the pushed_at it listed, not the new one, so the
    next run fetches again and its bundle holds the push."""
    async with running_org(tmp_path / "git") as github:
        options = config(github, s3_server.endpoint, buckets.dest, tmp_path / "work")
        options.update(include=("beta",), concurrency=1)
        pushed: list[str] = []

        async def push_once(request: web.Request) -> web.Response | None:
            if request.path == "/api/repos/acme/beta" and not pushed:
                pushed.append(add_commit(github.git_dir("beta"), "pushed mid-run"))
                github.repos["beta"].pushed_at = "2024-05-01T00:00:00Z"
            return None

        github.hooks.append(push_once)
        clock = github.clock
        first = await run_github_backup(clock=clock, sleep=clock.sleep, **options)
        assert first.status == "completed", first.errors
        assert pushed
        (tmp_path / "1").mkdir()
        early = restore(s3, buckets.dest, "github/acme/beta.bundle", tmp_path / "1")
        assert refs(early)["refs/heads/main"] != pushed[0]  # bundled before the push

        second = await run_github_backup(clock=clock, sleep=clock.sleep, **options)
        assert second.status == "completed", second.errors
        (tmp_path / "2").mkdir()
        late = restore(s3, buckets.dest, "github/acme/beta.bundle", tmp_path / "2")
        assert refs(late)["refs/heads/main"] == pushed[0]
