"""A backup is only as good as its restore: the README's restore instructions, run as they are
written (its commands, in bash, with the README's names replaced by the test's), give back what
was backed up; and ``checkpoint verify`` checks what the README says it checks, and no more."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import orjson
import pytest

from asyncbackup import run_github_backup
from tests.conftest import Buckets, S3Server
from tests.github_server import add_commit, git
from tests.helpers import MiB, cli_args, list_keys, put_multipart, run_cli
from tests.integration.github_org import ASSET, config, refs, running_org
from tests.integration.test_permissions import check_requests, readme_policy
from tests.proxy import S3Proxy

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"


def readme_block(marker: str) -> str:
    """The bash block after ``<!-- restore: MARKER -->`` in the README."""
    found = re.search(
        rf"<!-- restore: {re.escape(marker)} -->\s*```bash\n(.*?)```", README.read_text(), re.S
    )
    assert found, f"the README has no restore instructions {marker!r}"
    return found.group(1)


def run_readme_block(
    marker: str, names: dict[str, str], endpoint: str
) -> subprocess.CompletedProcess[str]:
    """Run the README's block in bash, its names replaced by ``names``; ``backup-s3`` and
    ``asyncbackup`` are this checkout's, and every client goes to ``endpoint``
    (``AWS_ENDPOINT_URL``, which the commands honour: no flag is added to them)."""
    script = readme_block(marker)
    for old, new in names.items():
        script = script.replace(old, new)
    prelude = (
        f'backup-s3() {{ "{sys.executable}" -c '
        '"from asyncbackup.cli import console_s3; console_s3()" "$@"; }\n'
        f'asyncbackup() {{ "{sys.executable}" -m asyncbackup "$@"; }}\n'
        "set -e\n"
    )
    env = {**os.environ, "AWS_ENDPOINT_URL": endpoint, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        ["bash", "-c", prelude + script],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=ROOT,
    )


def snapshot(s3: Any, bucket: str, prefix: str) -> dict[str, dict[str, Any]]:
    """Every object under ``prefix``, by its key relative to it: what a restore must give
    back (its bytes, headers, user metadata, tags, ETag) and its storage class."""
    out: dict[str, dict[str, Any]] = {}
    for key in list_keys(s3, bucket, prefix):
        head = s3.head_object(Bucket=bucket, Key=key)
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        tags = s3.get_object_tagging(Bucket=bucket, Key=key)["TagSet"]
        out[key[len(prefix) :]] = {
            "sha256": hashlib.sha256(body).hexdigest(),
            "etag": head["ETag"],
            "headers": {
                name: head.get(name)
                for name in (
                    "ContentType",
                    "ContentEncoding",
                    "CacheControl",
                    "ContentDisposition",
                    "ContentLanguage",
                    "ExpiresString",
                    "WebsiteRedirectLocation",
                )
            },
            "metadata": head.get("Metadata"),
            "tags": sorted((t["Key"], t["Value"]) for t in tags),
            "storage_class": head.get("StorageClass", "STANDARD"),
        }
    return out


#: an object of --multipart-threshold (5 MiB here) or more, put in one piece: the backup
#: puts it in parts, so its copies' ETag is a multipart one (the README says so)
LARGE_SINGLE = "large-single.bin"


def seed(s3: Any, bucket: str, prefix: str) -> None:
    """Every kind of object a restore must give back, under ``prefix/``."""
    headers = {
        "ContentType": "text/csv; charset=utf-8",
        "ContentEncoding": "gzip",
        "CacheControl": "max-age=60",
        "ContentDisposition": 'attachment; filename="rates.csv"',
        "ContentLanguage": "fr",
        "Expires": "Wed, 21 Oct 2015 07:28:00 GMT",
        "WebsiteRedirectLocation": "/elsewhere",
    }
    objects: dict[str, dict[str, Any]] = {
        "reports/rates.csv": {
            "Body": os.urandom(3000),
            "Metadata": {"owner": "team-a", "Mixed-Case": "Value"},
            "Tagging": urlencode({"team": "data eng", "empty": "", "class": "x+y=z"}),
            **headers,
        },
        "cold/ia.bin": {"Body": os.urandom(100), "StorageClass": "STANDARD_IA"},
        "empty": {"Body": b""},
        "folder/": {"Body": b""},  # a folder marker
        "odd/k e y %2F+é€ ?#&=;@ ~!'()*[]": {"Body": b"odd", "Tagging": "odd=1"},
        "odd/a//double/./dots/../x": {"Body": b"dots"},
        "streamed.bin": {"Body": os.urandom(2 * MiB + 5), "ContentType": "image/png"},
        LARGE_SINGLE: {"Body": os.urandom(6 * MiB)},
    }
    for key, options in objects.items():
        s3.put_object(Bucket=bucket, Key=f"{prefix}/{key}", **options)
    put_multipart(
        s3,
        bucket,
        f"{prefix}/multipart.bin",
        [5 * MiB, 5 * MiB, 1234],
        ContentType="application/x-tar",
        Metadata={"built-by": "ci"},
        Tagging="mp=yes",
    )


def assert_restored(before: dict[str, Any], after: dict[str, Any]) -> None:
    """``after`` (the restored objects) is ``before`` (the originals), but for what the
    README says a backup cannot keep: the storage class, and the ETag of a single-part
    object of the multipart threshold or more (its bytes are the same)."""
    assert sorted(after) == sorted(before)
    for key, original in before.items():
        restored = dict(after[key])
        assert restored.pop("storage_class") == "STANDARD", key
        original = {k: v for k, v in original.items() if k != "storage_class"}
        if key == LARGE_SINGLE:
            assert restored.pop("etag").endswith('-1"'), key
            original.pop("etag")
        assert restored == original, key


#: the names the README's restore instructions use
SOURCE, ARCHIVE, RESTORED = "company-data-db", "company-archive", "company-data-restored"
SCRATCH, PROFILE = "/mnt/data/scratch", "prod"


def test_the_readme_restore_to_a_new_bucket_gives_back_every_object(
    s3_server: S3Server, s3: Any, buckets: Buckets, tmp_path: Path
) -> None:
    """The README's backup with ``--copy-tags``, then its restore into a new bucket and its
    ``checkpoint verify`` of the restore: every object back, bytes, headers, metadata, tags,
    ETags (multipart ones too), empty objects, folder markers and odd keys included."""
    prefix = "Projects/TeamA/2024Q1"
    seed(s3, buckets.source, prefix)
    s3.put_object(Bucket=buckets.source, Key="Projects/TeamA/2024Q10/not-this", Body=b"x")
    restored_bucket = f"{buckets.dest}-restored"
    s3.create_bucket(Bucket=restored_bucket)
    scratch = tmp_path / "scratch"
    backup = run_cli(
        [
            prefix,
            *cli_args(s3_server.endpoint, scratch, buckets.source, buckets.dest),
            "--copy-tags",
            "--multipart-threshold",
            "5MiB",
            "--storage-class",
            "STANDARD_IA",  # an archive's class: the restore's is its own
        ]
    )
    assert backup.returncode == 0, backup.stderr

    names = {
        SOURCE: buckets.source,
        RESTORED: restored_bucket,
        ARCHIVE: buckets.dest,
        SCRATCH: str(scratch),
        f"-profile {PROFILE}": "-profile dst",
    }
    result = run_readme_block("new bucket", names, s3_server.endpoint)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK: 9 files marked done; 0 missing" in result.stdout, result.stdout
    assert_restored(
        snapshot(s3, buckets.source, f"{prefix}/"), snapshot(s3, restored_bucket, f"{prefix}/")
    )
    assert list_keys(s3, restored_bucket) == list_keys(s3, restored_bucket, f"{prefix}/")


def test_the_readme_restore_of_a_dest_prefix_backup_puts_objects_back_at_their_keys(
    s3_server: S3Server, s3: Any, buckets: Buckets, tmp_path: Path
) -> None:
    """A backup made with ``--dest-prefix``: the README's restore puts each object back at
    the key it had in the source, not under the backup's prefix."""
    prefix = "Projects/TeamA/2024Q1"
    seed(s3, buckets.source, prefix)
    restored_bucket = f"{buckets.dest}-restored"
    s3.create_bucket(Bucket=restored_bucket)
    scratch = tmp_path / "scratch"
    backup = run_cli(
        [
            prefix,
            *cli_args(s3_server.endpoint, scratch, buckets.source, buckets.dest),
            "--copy-tags",
            "--multipart-threshold",
            "5MiB",
            "--dest-prefix",
            "backups/TeamA-2024Q1",
        ]
    )
    assert backup.returncode == 0, backup.stderr
    assert snapshot(s3, buckets.dest, "backups/TeamA-2024Q1/")  # the copies are there

    names = {
        SOURCE: buckets.source,
        RESTORED: restored_bucket,
        ARCHIVE: buckets.dest,
        SCRATCH: str(scratch),
        f"-profile {PROFILE}": "-profile dst",
    }
    result = run_readme_block("dest-prefix", names, s3_server.endpoint)
    assert result.returncode == 0, result.stdout + result.stderr
    assert_restored(
        snapshot(s3, buckets.source, f"{prefix}/"), snapshot(s3, restored_bucket, f"{prefix}/")
    )
    assert list_keys(s3, restored_bucket) == list_keys(s3, restored_bucket, f"{prefix}/")


def verify(checkpoint: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "asyncbackup", "checkpoint", "verify", str(checkpoint)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )


@pytest.mark.parametrize("change", ["metadata", "tags"])
def test_verify_passes_a_copy_that_restores_otherwise_and_the_readme_says_so(
    s3_server: S3Server, s3: Any, buckets: Buckets, tmp_path: Path, change: str
) -> None:
    """``checkpoint verify`` compares sizes and ETags from listings: a copy whose metadata or
    tags differ from its source's (it would restore differently) passes. The README must say
    that verify does not check them, so that nobody reads its OK as "restores the same"."""
    s3.put_object(
        Bucket=buckets.source,
        Key="data/a.csv",
        Body=b"x" * 100,
        ContentType="text/csv",
        Metadata={"owner": "a"},
        Tagging="keep=1",
    )
    scratch = tmp_path / "scratch"
    args = cli_args(s3_server.endpoint, scratch, buckets.source, buckets.dest, "--copy-tags")
    backup = run_cli(["data", *args])
    assert backup.returncode == 0, backup.stderr
    if change == "metadata":  # the copy copied onto itself with other headers: same ETag
        s3.copy_object(
            Bucket=buckets.dest,
            Key="data/a.csv",
            CopySource={"Bucket": buckets.dest, "Key": "data/a.csv"},
            MetadataDirective="REPLACE",
            ContentType="application/octet-stream",
            Metadata={},
        )
    else:
        s3.put_object_tagging(
            Bucket=buckets.dest, Key="data/a.csv", Tagging={"TagSet": [{"Key": "x", "Value": "y"}]}
        )
    before = snapshot(s3, buckets.source, "data/")["a.csv"]
    after = snapshot(s3, buckets.dest, "data/")["a.csv"]
    assert before["etag"] == after["etag"] and before != after
    (archived,) = (scratch / "checkpoints" / "archive").iterdir()
    result = verify(archived)
    assert result.returncode == 0, result.stdout + result.stderr  # verify's OK: as it is

    text = " ".join(README.read_text().split())
    section = text[text.index("**`verify FILE`**") :]
    section = section[: section.index("Exit codes of the tool")]
    assert re.search(r"not (compared|checked)[^.]*metadata[^.]*tags", section), (
        "the README's verify section does not say that metadata and tags are not checked"
    )


def test_the_readme_restore_of_an_archive_in_glacier_completes_once_objects_are_restored(
    s3_server: S3Server, s3: Any, buckets: Buckets, tmp_path: Path
) -> None:
    """A backup with ``--storage-class GLACIER`` (the README's suggestion for archives): its
    restore fails each object with ``InvalidObjectState`` until the object is brought back
    from its tier, then the same commands, run again, complete it (as the README says)."""
    prefix = "Projects/TeamA/2024Q1"
    bodies = {f"{prefix}/f{i}": os.urandom(500 + i) for i in range(3)}
    for key, body in bodies.items():
        s3.put_object(Bucket=buckets.source, Key=key, Body=body)
    restored_bucket = f"{buckets.dest}-restored"
    s3.create_bucket(Bucket=restored_bucket)
    scratch = tmp_path / "scratch"
    args = cli_args(s3_server.endpoint, scratch, buckets.source, buckets.dest)
    backup = run_cli([prefix, *args, "--storage-class", "GLACIER"])
    assert backup.returncode == 0, backup.stderr
    names = {
        RESTORED: restored_bucket,
        ARCHIVE: buckets.dest,
        SCRATCH: str(scratch),
        f"-profile {PROFILE}": "-profile dst",
    }
    first = run_readme_block("new bucket", names, s3_server.endpoint)
    assert first.returncode == 1, first.stdout + first.stderr
    assert "InvalidObjectState" in first.stderr
    assert list_keys(s3, restored_bucket) == []

    for key in bodies:  # aws s3api restore-object
        s3.restore_object(Bucket=buckets.dest, Key=key, RestoreRequest={"Days": 1})
    again = run_readme_block("new bucket", names, s3_server.endpoint)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "OK: 3 files marked done; 0 missing" in again.stdout, again.stdout
    for key, body in bodies.items():
        assert s3.get_object(Bucket=restored_bucket, Key=key)["Body"].read() == body


def github_restore_block() -> str:
    """The README's "Restore from a bundle" commands."""
    text = README.read_text()
    start = text.index("**Restore from a bundle.**")
    found = re.search(r"```bash\n(.*?)```", text[start:], re.S)
    assert found
    return found.group(1)


def run_github_restore(
    bucket: str, repo: str, target: str, branch: str, where: Path, endpoint: str
) -> subprocess.CompletedProcess[str]:
    """The README's restore commands for ``repo`` (``service`` there), in bash in ``where``:
    the push goes to ``target`` (a bare repository), the working copy checks out ``branch``.
    ``aws`` is the AWS CLI where it is installed, else a stand-in for its ``s3 cp``."""
    script = github_restore_block()
    # its last line, a comment, is the other way: a working copy, from the bundle's folder
    script, _, working_copy = script.partition("# or a working copy: ")
    script += f"cd {where}\n{working_copy}"
    script = script.replace("https://github.com/acme/service-restored.git", target)
    script = script.replace("company-archive", bucket).replace("service", repo)
    script = script.replace("<branch>", branch)
    prelude = "set -e\n"
    if shutil.which("aws") is None:
        prelude += (
            f'aws() {{ "{sys.executable}" -c "import sys, boto3; '
            "b, _, k = sys.argv[3][5:].partition('/'); "
            "boto3.client('s3').download_file(b, k, k.rsplit('/', 1)[-1])\" \"$@\"; }\n"
        )
    env = {**os.environ, "AWS_ENDPOINT_URL": endpoint}
    return subprocess.run(
        ["bash", "-c", prelude + script],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=where,
    )


async def test_the_readme_github_restore_pushes_every_branch_and_tag_after_many_runs(
    s3_server: S3Server, s3: Any, buckets: Buckets, tmp_path: Path
) -> None:
    """Three backups with pushes between them, the staging folder then lost: the README's
    restore commands, from the bucket alone, push to a new empty repository every branch and
    tag the repository has now (its pull request refs aside), and its wiki onto a wiki with a
    first page; the metadata files are whole and each release asset is GitHub's bytes."""
    base = tmp_path / "work"
    async with running_org(tmp_path / "git") as github:
        options = config(github, s3_server.endpoint, buckets.dest, base)
        for run in range(3):
            if run:
                add_commit(github.git_dir("alpha"), f"change {run}")
                git("tag", f"after-{run}", "main", cwd=github.git_dir("alpha"))
                github.repos["alpha"].pushed_at = f"2026-01-0{run + 1}T00:00:00Z"
            report = await run_github_backup(
                clock=github.clock, sleep=github.clock.sleep, **options
            )
            assert report.status == "completed", report.errors
        source_refs = refs(github.git_dir("alpha"))
        wiki_refs = refs(github.git_dir("alpha", wiki=True))
    shutil.rmtree(base)  # the bucket alone

    where = tmp_path / "restore"
    where.mkdir()
    target = tmp_path / "new" / "alpha-restored.git"
    git("init", "-q", "--bare", str(target))
    result = run_github_restore(
        buckets.dest, "alpha", str(target), "feature", where, s3_server.endpoint
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "is okay" in result.stdout + result.stderr
    expected = {r: sha for r, sha in source_refs.items() if not r.startswith("refs/pull/")}
    assert "refs/tags/after-2" in expected
    assert refs(target) == expected
    assert git("rev-parse", "HEAD", cwd=where / "alpha").strip() == expected["refs/heads/feature"]

    # the wiki: onto a new wiki with a first page, as GitHub makes one, on the branch the
    # backed-up wiki has (a GitHub wiki's is always the same one, its default)
    wiki = tmp_path / "new" / "alpha-restored.wiki.git"
    git("init", "-q", "--bare", "-b", "main", str(wiki))
    first = tmp_path / "first-page"
    git("init", "-q", str(first))
    (first / "Home.md").write_text("Welcome\n")
    git("add", "-A", cwd=first)
    git("commit", "-q", "-m", "Initial Home page", cwd=first)
    git("push", "-q", str(wiki), "HEAD:refs/heads/main", cwd=first)
    wiki_where = tmp_path / "restore-wiki"
    wiki_where.mkdir()
    result = run_github_restore(
        buckets.dest, "alpha.wiki", str(wiki), "main", wiki_where, s3_server.endpoint
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert refs(wiki) == wiki_refs

    # the metadata: GitHub's records, whole; the assets they list, byte for byte
    def read_json(key: str) -> Any:
        return orjson.loads(s3.get_object(Bucket=buckets.dest, Key=key)["Body"].read())

    assert [i["number"] for i in read_json("github/acme/alpha/issues.json")] == list(range(1, 231))
    assert len(read_json("github/acme/alpha/issue-comments.json")) == 120
    assert len(read_json("github/acme/alpha/pulls.json")) == 3
    assert len(read_json("github/acme/alpha/pull-comments.json")) == 2
    releases = read_json("github/acme/alpha/releases.json")
    assets = [(r["tag_name"], a) for r in releases for a in r["assets"]]
    assert assets
    for tag, asset in assets:
        key = f"github/acme/alpha/releases/{tag}/{asset['name']}"
        body = s3.get_object(Bucket=buckets.dest, Key=key)["Body"].read()
        assert len(body) == asset["size"] and body == ASSET


async def test_the_readme_github_restore_says_how_to_set_the_default_branch(
    s3_server: S3Server, s3: Any, buckets: Buckets, tmp_path: Path
) -> None:
    """``git push --mirror`` carries branches and tags, not the repository's HEAD: the new
    repository's default branch is whatever its server had (a bare repository's names no
    branch, and a clone of it checks out nothing). The README must say how to set it to the
    one ``repository.json`` names; its command for a bare repository does."""
    async with running_org(tmp_path / "git") as github:
        options = config(github, s3_server.endpoint, buckets.dest, tmp_path / "work")
        report = await run_github_backup(clock=github.clock, sleep=github.clock.sleep, **options)
        assert report.status == "completed", report.errors
    record = s3.get_object(Bucket=buckets.dest, Key="github/acme/beta/repository.json")
    default = orjson.loads(record["Body"].read())["default_branch"]
    where = tmp_path / "restore"
    where.mkdir()
    target = tmp_path / "new" / "beta-restored.git"
    git("init", "-q", "--bare", "-b", "not-a-branch", str(target))
    result = run_github_restore(
        buckets.dest, "beta", str(target), default, where, s3_server.endpoint
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert git("symbolic-ref", "HEAD", cwd=target).strip() == "refs/heads/not-a-branch"

    text = README.read_text()
    section = text[text.index("**Restore from a bundle.**") : text.index("Wikis restore the same")]
    found = re.search(r"`(git symbolic-ref HEAD refs/heads/[^`]*)`", section)
    assert found, "the README does not say how to set a restored repository's default branch"
    command = found.group(1).replace("main", default).split()
    git(*command[1:], cwd=target)
    git("clone", "-q", str(target), str(tmp_path / "checkout"))
    assert git("branch", "--show-current", cwd=tmp_path / "checkout").strip() == default


def test_a_restore_brings_back_objects_deleted_from_the_source_since_and_the_readme_says_so(
    s3_server: S3Server, s3: Any, buckets: Buckets, tmp_path: Path
) -> None:
    """A backup deletes nothing at the destination: an object deleted from the source after
    it was backed up stays in the archive, and the README's restore brings it back with the
    rest. The README's restore section must say so (a restore is not the source's last
    state), and how ``checkpoint verify`` of the backup shows such objects."""
    prefix = "Projects/TeamA/2024Q1"
    for name in ("kept", "deleted-later"):
        s3.put_object(Bucket=buckets.source, Key=f"{prefix}/{name}", Body=name.encode())
    scratch = tmp_path / "scratch"
    args = cli_args(s3_server.endpoint, scratch, buckets.source, buckets.dest)
    assert run_cli([prefix, *args]).returncode == 0
    s3.delete_object(Bucket=buckets.source, Key=f"{prefix}/deleted-later")
    again = run_cli([prefix, *args, "--skip-existing"])
    assert again.returncode == 0, again.stderr
    restored_bucket = f"{buckets.dest}-restored"
    s3.create_bucket(Bucket=restored_bucket)
    names = {
        RESTORED: restored_bucket,
        ARCHIVE: buckets.dest,
        SCRATCH: str(scratch),
        f"-profile {PROFILE}": "-profile dst",
    }
    result = run_readme_block("new bucket", names, s3_server.endpoint)
    assert result.returncode == 0, result.stdout + result.stderr
    assert list_keys(s3, restored_bucket) == [f"{prefix}/deleted-later", f"{prefix}/kept"]

    text = " ".join(README.read_text().split())
    section = text[text.index("### Restoring") : text.index("## GitHub to S3")]
    assert "deleted from the source" in section, "the README's restore does not say so"


def test_the_readme_restore_needs_only_the_permissions_it_names(
    proxy: S3Proxy, s3_server: S3Server, s3: Any, buckets: Buckets, tmp_path: Path
) -> None:
    """The README's restore, its verify included, sends only requests that its permissions
    allow: the source policy on the archive, the destination policy on the new bucket, each
    with its tagging permission for ``--copy-tags``."""
    prefix = "Projects/TeamA/2024Q1"
    seed(s3, buckets.source, prefix)
    scratch = tmp_path / "scratch"
    args = cli_args(s3_server.endpoint, scratch, buckets.source, buckets.dest)
    backup = run_cli([prefix, *args, "--copy-tags", "--multipart-threshold", "5MiB"])
    assert backup.returncode == 0, backup.stderr
    restored_bucket = f"{buckets.dest}-restored"
    s3.create_bucket(Bucket=restored_bucket)
    names = {
        RESTORED: restored_bucket,
        ARCHIVE: buckets.dest,
        SCRATCH: str(scratch),
        f"-profile {PROFILE}": "-profile dst",
    }
    result = run_readme_block("new bucket", names, proxy.endpoint)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK: 9 files marked done" in result.stdout, result.stdout

    def tagging(policy: dict[str, Any], action: str, bucket: str) -> dict[str, Any]:
        extra = {"Effect": "Allow", "Action": action, "Resource": f"arn:aws:s3:::{bucket}/*"}
        return {**policy, "Statement": [*policy["Statement"], extra]}

    policies = {
        buckets.dest: tagging(
            readme_policy("source", buckets.dest), "s3:GetObjectTagging", buckets.dest
        ),
        restored_bucket: tagging(
            readme_policy("destination", restored_bucket), "s3:PutObjectTagging", restored_bucket
        ),
    }
    seen = check_requests(proxy.seen(), policies)
    assert {"GetObjectTagging", "GetObject", "PutObject", "UploadPart"} <= seen, seen


def test_a_restore_into_the_original_bucket_with_skip_existing_puts_back_what_was_lost(
    s3_server: S3Server, s3: Any, buckets: Buckets, tmp_path: Path
) -> None:
    """The README: restoring into the original bucket with ``--skip-existing`` copies only
    what is missing or different there (size and ETag), and leaves an object whose metadata
    alone differs as it is."""
    prefix = "Projects/TeamA/2024Q1"
    seed(s3, buckets.source, prefix)
    scratch = tmp_path / "scratch"
    args = cli_args(s3_server.endpoint, scratch, buckets.source, buckets.dest)
    backup = run_cli([prefix, *args, "--copy-tags", "--multipart-threshold", "5MiB"])
    assert backup.returncode == 0, backup.stderr
    before = snapshot(s3, buckets.source, f"{prefix}/")
    # the bad day: objects deleted, one overwritten with other bytes of its size, one with
    # other metadata alone
    for name in ("multipart.bin", "folder/", "odd/k e y %2F+é€ ?#&=;@ ~!'()*[]"):
        s3.delete_object(Bucket=buckets.source, Key=f"{prefix}/{name}")
    s3.put_object(Bucket=buckets.source, Key=f"{prefix}/streamed.bin", Body=b"\0" * (2 * MiB + 5))
    key = f"{prefix}/cold/ia.bin"
    s3.copy_object(
        Bucket=buckets.source,
        Key=key,
        CopySource={"Bucket": buckets.source, "Key": key},
        MetadataDirective="REPLACE",
        Metadata={"changed": "yes"},
    )

    back = cli_args(s3_server.endpoint, scratch, buckets.dest, buckets.source)
    restore = run_cli([prefix, *back, "--copy-tags", "--skip-existing"])
    assert restore.returncode == 0, restore.stderr
    after = snapshot(s3, buckets.source, f"{prefix}/")
    assert after["cold/ia.bin"]["metadata"] == {"changed": "yes"}  # left as it is
    for name in ("multipart.bin", "folder/", "odd/k e y %2F+é€ ?#&=;@ ~!'()*[]", "streamed.bin"):
        restored = {k: v for k, v in after[name].items() if k != "storage_class"}
        assert restored == {k: v for k, v in before[name].items() if k != "storage_class"}, name


def test_a_backup_to_the_bucket_root_restores_from_an_empty_source_path(
    s3_server: S3Server, s3: Any, buckets: Buckets, tmp_path: Path
) -> None:
    """The README: a backup made with ``--dest-prefix ''`` restores with a ``SOURCE_PATH`` of
    ``''`` and the original folder as ``--dest-prefix``; ``--exclude`` leaves out what else
    the archive holds."""
    prefix = "Projects/TeamA/2024Q1"
    seed(s3, buckets.source, prefix)
    scratch = tmp_path / "scratch"
    args = cli_args(s3_server.endpoint, scratch, buckets.source, buckets.dest)
    backup = run_cli([prefix, *args, "--copy-tags", "--multipart-threshold", "5MiB"])
    assert backup.returncode == 0, backup.stderr  # another job's copies, under Projects/
    backup = run_cli(
        [prefix, *args, "--copy-tags", "--multipart-threshold", "5MiB", "--dest-prefix", ""]
    )
    assert backup.returncode == 0, backup.stderr
    restored_bucket = f"{buckets.dest}-restored"
    s3.create_bucket(Bucket=restored_bucket)
    back = cli_args(s3_server.endpoint, scratch, buckets.dest, restored_bucket)
    restore = run_cli(
        ["", *back, "--copy-tags", "--dest-prefix", prefix, "--exclude", "Projects/*"]
    )
    assert restore.returncode == 0, restore.stderr
    assert_restored(
        snapshot(s3, buckets.source, f"{prefix}/"), snapshot(s3, restored_bucket, f"{prefix}/")
    )
    assert list_keys(s3, restored_bucket) == list_keys(s3, restored_bucket, f"{prefix}/")
