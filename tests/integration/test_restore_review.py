"""A backup is only as good as its restore: the README's restore instructions, run as they are
written (its commands, in bash, with the README's names replaced by the test's), give back what
was backed up; and ``checkpoint verify`` checks what the README says it checks, and no more."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from tests.conftest import Buckets, S3Server
from tests.helpers import MiB, cli_args, list_keys, put_multipart, run_cli

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
