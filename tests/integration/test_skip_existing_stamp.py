"""``--skip-existing`` where the destination's ETags cannot be compared with the source's.

A destination bucket whose default encryption is SSE-KMS (common for backup accounts) gives
every copy an ETag that is no MD5 (S3, Common Response Headers, ETag); so does a source of one
part copied in parts (above ``--multipart-threshold``). Every such copy was made again at every
run: a nightly job into a KMS bucket copied the whole bucket every night. Such a copy
``--skip-existing`` makes now carries its source's ETag (``x-amz-meta-asyncbackup-source-etag``),
which a later run reads with a HEAD where size matches and ETag does not; a copy whose ETag
is its source's carries nothing. moto keeps MD5s: the proxy lists the destination as S3 lists
a KMS bucket (``kms_etags``), and names the encryption in the answer to an upload started
there (``kms_default``), as S3 does; moto itself encrypts by the bucket's default.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from asyncbackup.stamps import STAMP, stamped
from tests.conftest import Buckets
from tests.helpers import MiB, cli_args, put_multipart
from tests.proxy import Rule, S3Proxy
from tests.reliability import put_parallel, run_cli

MODES = {"staged": [], "direct": ["--direct"], "processes": ["--processes", "2"]}


def _writes(proxy: S3Proxy, bucket: str) -> set[str]:
    """The keys of ``bucket`` a PUT or POST was sent for (uploads, parts, copies), but the
    upload started and aborted at start-up, which asks the bucket's encryption."""
    keys = {
        r.path.split("/", 2)[2]
        for r in proxy.seen()
        if r.method in ("PUT", "POST") and r.path.startswith(f"/{bucket}/")
    }
    return keys - {"p/.asyncbackup-write-check"}


def _etag(s3: Any, bucket: str, key: str) -> str:
    return str(s3.head_object(Bucket=bucket, Key=key)["ETag"]).strip('"')


def _nightly(proxy: S3Proxy, tmp_path: Path, buckets: Buckets, *extra: str) -> list[str]:
    """The command line of a quiet ``--skip-existing`` run of ``p`` through the proxy."""
    args = cli_args(proxy.endpoint, tmp_path, buckets.source, buckets.dest)
    return ["p", *args, "--skip-existing", "--quiet", *extra]


def _kms_destination(proxy: S3Proxy, s3: Any, bucket: str) -> None:
    """``bucket`` encrypts every new object with SSE-KMS by default, listed and answered as
    S3 lists and answers such a bucket."""
    default = {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": "backup-key"}
    s3.put_bucket_encryption(
        Bucket=bucket,
        ServerSideEncryptionConfiguration={
            "Rules": [{"ApplyServerSideEncryptionByDefault": default}]
        },
    )
    proxy.add_rule(Rule("kms_etags", method="GET", path=f"^/{bucket}$", query="list-type"))
    proxy.add_rule(Rule("kms_default", method="POST", path=f"^/{bucket}/", query="uploads"))


@pytest.mark.parametrize("mode", sorted(MODES))
def test_copies_a_kms_destination_lists_with_other_etags_are_not_copied_again(
    proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path, mode: str
) -> None:
    objects = {f"p/{i:02d}": bytes([65 + i]) * (100 + i) for i in range(20)}
    put_parallel(s3, buckets.source, objects)
    _kms_destination(proxy, s3, buckets.dest)
    args = _nightly(proxy, tmp_path, buckets, *MODES[mode])
    first = run_cli(args)
    assert first.returncode == 0, first.stderr
    for key in objects:  # each copy names the source version it was made of
        head = s3.head_object(Bucket=buckets.dest, Key=key)
        assert head["Metadata"].get(STAMP) == _etag(s3, buckets.source, key), head["Metadata"]
    proxy.requests.clear()
    again = run_cli(args)
    assert again.returncode == 0, again.stderr
    assert _writes(proxy, buckets.dest) == set()
    # the same size, other bytes: the stamp names another version, so it is copied
    s3.put_object(Bucket=buckets.source, Key="p/03", Body=b"z" * len(objects["p/03"]))
    proxy.requests.clear()
    third = run_cli(args)
    assert third.returncode == 0, third.stderr
    assert _writes(proxy, buckets.dest) == {"p/03"}
    assert s3.get_object(Bucket=buckets.dest, Key="p/03")["Body"].read() == b"z" * 103


def test_a_single_part_source_copied_in_parts_is_not_copied_again(
    proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path
) -> None:
    """Above ``--multipart-threshold`` a single-part source is uploaded in parts: its copy's
    ETag (``...-1``) can never be the source's MD5, and the README told to raise the
    threshold to stop copying it every run."""
    body = bytes(range(256)) * (6 * 4096)  # 6 MiB, one part at the source
    s3.put_object(Bucket=buckets.source, Key="p/big", Body=body)
    args = [
        "p",
        *cli_args(proxy.endpoint, tmp_path, buckets.source, buckets.dest),
        "--skip-existing",
        "--multipart-threshold",
        "5MiB",
        "--quiet",
    ]
    assert run_cli(args).returncode == 0
    assert "-" in _etag(s3, buckets.dest, "p/big")  # a multipart ETag: never the MD5
    proxy.requests.clear()
    again = run_cli(args)
    assert again.returncode == 0, again.stderr
    assert _writes(proxy, buckets.dest) == set()
    assert not proxy.seen(method="GET", path=f"^/{buckets.source}/p/big")


def test_copies_made_without_skip_existing_carry_no_stamp_and_are_copied_once_more(
    proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path
) -> None:
    """A copy is written exactly as its source without ``--skip-existing``; the first
    incremental run into a KMS bucket copies those again, stamped, and the next none. A dry
    run says what the run would do."""
    objects = {f"p/{i}": f"body {i}".encode() for i in range(4)}
    put_parallel(s3, buckets.source, objects, Metadata={"owner": "ops"})
    base = cli_args(proxy.endpoint, tmp_path, buckets.source, buckets.dest)
    assert run_cli(["p", *base, "--quiet"]).returncode == 0
    assert s3.head_object(Bucket=buckets.dest, Key="p/0")["Metadata"] == {"owner": "ops"}
    _kms_destination(proxy, s3, buckets.dest)
    incremental = ["p", *base, "--skip-existing", "--quiet"]
    plan = tmp_path / "plan.json"
    dry = run_cli([*incremental, "--dry-run", "--report", str(plan)])
    assert dry.returncode == 0, dry.stderr
    assert json.loads(plan.read_text())["copy_files"] == 4
    proxy.requests.clear()
    assert run_cli(incremental).returncode == 0
    assert _writes(proxy, buckets.dest) == set(objects)
    metadata = s3.head_object(Bucket=buckets.dest, Key="p/0")["Metadata"]
    assert metadata == {"owner": "ops", STAMP: _etag(s3, buckets.source, "p/0")}
    dry = run_cli([*incremental, "--dry-run", "--report", str(plan)])
    assert dry.returncode == 0, dry.stderr
    planned = json.loads(plan.read_text())
    assert (planned["copy_files"], planned["unchanged_files"]) == (0, 4), planned
    proxy.requests.clear()
    assert run_cli(incremental).returncode == 0
    assert _writes(proxy, buckets.dest) == set()


@pytest.mark.parametrize("mode", sorted(MODES))
def test_a_copy_whose_etag_is_its_sources_carries_no_stamp(
    proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path, mode: str
) -> None:
    """Into a bucket that keeps MD5s, a copy keeps its source's ETag: it is written exactly
    as its source (a restore puts back what was there), and the next run skips it on its
    listing alone, no HEAD. A source's own stamp (a backup's copy) is not carried over."""
    put_parallel(s3, buckets.source, {"p/plain": b"plain"}, Metadata={"k": "v"})
    s3.put_object(Bucket=buckets.source, Key="p/restored", Body=b"r", Metadata={STAMP: "0" * 32})
    args = _nightly(proxy, tmp_path, buckets, *MODES[mode])
    assert run_cli(args).returncode == 0
    assert s3.head_object(Bucket=buckets.dest, Key="p/plain")["Metadata"] == {"k": "v"}
    if mode != "direct":  # a CopyObject copies the source's metadata as it is
        assert s3.head_object(Bucket=buckets.dest, Key="p/restored")["Metadata"] == {}
    proxy.requests.clear()
    assert run_cli(args).returncode == 0
    assert _writes(proxy, buckets.dest) == set()
    assert not proxy.seen(method="HEAD", path=f"^/{buckets.dest}/")


def test_a_destination_that_refuses_the_heads_has_its_copies_made_again_with_one_warning(
    proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path
) -> None:
    """Credentials that may list and write the destination but not read it (no
    ``s3:GetObject``): the stamps cannot be read, so the copies are made again, as before
    stamps, and one warning says which permission would spare that; the run completes."""
    objects = {f"p/{i}": f"body {i}".encode() for i in range(12)}
    put_parallel(s3, buckets.source, objects)
    _kms_destination(proxy, s3, buckets.dest)
    args = ["p", *cli_args(proxy.endpoint, tmp_path, buckets.source, buckets.dest)]
    assert run_cli([*args, "--skip-existing", "--quiet"]).returncode == 0
    proxy.add_rule(Rule("access_denied", method="HEAD", path=f"^/{buckets.dest}/"))
    proxy.requests.clear()
    again = run_cli([*args, "--skip-existing"])
    assert again.returncode == 0, again.stderr
    assert _writes(proxy, buckets.dest) == set(objects)
    warned = [line for line in again.stderr.splitlines() if "s3:GetObject" in line]
    assert len(warned) == 1 and "copied again" in warned[0], again.stderr
    assert len(proxy.seen(method="HEAD", path=f"^/{buckets.dest}/")) <= 12


def test_the_stamp_replaces_a_copied_one_and_stays_within_the_metadata_limit() -> None:
    etag = '"' + "a" * 32 + '"'
    fields = {"ContentType": "text/plain", "Metadata": {STAMP: "old", "k": "v"}}
    assert stamped(fields, etag) == {
        "ContentType": "text/plain",
        "Metadata": {"k": "v", STAMP: "a" * 32},
    }
    assert fields["Metadata"] == {STAMP: "old", "k": "v"}  # not changed in place
    assert stamped({}, etag) == {"Metadata": {STAMP: "a" * 32}}
    assert stamped(fields, "") is fields
    full = {"Metadata": {"k": "v" * (2048 - 1 - len(STAMP) - 32)}}
    assert stamped(full, etag)["Metadata"] == {"k": full["Metadata"]["k"], STAMP: "a" * 32}
    over = {"Metadata": {"k": "v" * (2048 - len(STAMP) - 32)}}
    assert stamped(over, etag) is over  # S3 would refuse the copy: written without it


def test_a_direct_copy_of_a_source_rewritten_during_it_never_names_the_listed_version(
    proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path
) -> None:
    """A server may ignore ``x-amz-copy-source-if-match`` (moto does, as on its part
    copies): a source rewritten (same size) between its listing and its CopyObject is then
    copied as the new version, into a KMS bucket where no ETag tells. Stamped with the listed
    ETag, that copy named a version it is not: once the source was put back as it was, every
    later run skipped it, and the backup kept bytes the source no longer had."""
    first, second = b"a" * 100, b"b" * 100
    s3.put_object(Bucket=buckets.source, Key="p/x", Body=first)
    _kms_destination(proxy, s3, buckets.dest)

    def overwrite() -> None:
        s3.put_object(Bucket=buckets.source, Key="p/x", Body=second)

    proxy.add_rule(
        Rule(None, method="PUT", path=f"^/{buckets.dest}/p/x$", times=1, action=overwrite)
    )
    args = [
        "p",
        *cli_args(proxy.endpoint, tmp_path, buckets.source, buckets.dest),
        "--skip-existing",
        "--direct",
        "--quiet",
    ]
    run_cli(args)  # the source changed during it: copied or failed, never a lie
    s3.put_object(Bucket=buckets.source, Key="p/x", Body=first)  # put back as it was
    again = run_cli(args)
    assert again.returncode == 0, again.stderr
    assert s3.get_object(Bucket=buckets.dest, Key="p/x")["Body"].read() == first


@pytest.mark.parametrize("mode", ["staged", "processes"])
def test_a_source_whose_parts_differ_in_size_is_stamped_and_not_copied_again(
    proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path, mode: str
) -> None:
    """Parts of 5, 6 and 1 MiB look like 5, 5 and 2 from the first part: the copy was
    uploaded in those, so its ETag was not its source's, but it was started (and its fields
    chosen) before the download showed it, and it carried no stamp: copied again at every
    run, though the README says such copies carry one. It is now made once more in parts
    of our size, stamped, and the next run copies nothing."""
    put_multipart(s3, buckets.source, "p/uneven", (5 * MiB, 6 * MiB, 1 * MiB))
    args = _nightly(proxy, tmp_path, buckets, *MODES[mode])
    first = run_cli(args)
    assert first.returncode == 0, first.stderr
    head = s3.head_object(Bucket=buckets.dest, Key="p/uneven")
    assert head["Metadata"] == {STAMP: _etag(s3, buckets.source, "p/uneven")}, head
    body = s3.get_object(Bucket=buckets.dest, Key="p/uneven")["Body"].read()
    assert body == s3.get_object(Bucket=buckets.source, Key="p/uneven")["Body"].read()
    proxy.requests.clear()
    again = run_cli(args)
    assert again.returncode == 0, again.stderr
    assert _writes(proxy, buckets.dest) == set()


def test_the_encryption_is_asked_by_the_start_up_upload_a_storage_class_starts_anyway(
    proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path
) -> None:
    """With ``--storage-class`` the start-up check already starts and aborts an upload of
    the write-check key, whose answer names the bucket's encryption: a second one was
    started to ask it again (two uploads started and aborted at every run)."""
    put_parallel(s3, buckets.source, {f"p/{i}": f"body {i}".encode() for i in range(3)})
    _kms_destination(proxy, s3, buckets.dest)
    args = [
        "p",
        *cli_args(proxy.endpoint, tmp_path, buckets.source, buckets.dest),
        "--skip-existing",
        "--storage-class",
        "STANDARD_IA",
        "--quiet",
    ]
    assert run_cli(args).returncode == 0
    started = proxy.seen(method="POST", path=f"^/{buckets.dest}/p/.asyncbackup-write-check$")
    assert len(started) == 1, started
    head = s3.head_object(Bucket=buckets.dest, Key="p/0")  # the answer was read
    assert head["Metadata"] == {STAMP: _etag(s3, buckets.source, "p/0")}, head


@pytest.mark.parametrize("mode", ["staged", "direct"])
def test_a_resumed_file_done_whose_stamp_names_another_version_is_copied_again(
    proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path, mode: str
) -> None:
    """The README said a file a resumed checkpoint marks done stays done where the ETags
    cannot match (``--sse aws:kms``): its copy's stamp now tells, and a source changed since
    (same size) is copied again. Only the README was wrong: this pins what it now says."""
    s3.put_object(Bucket=buckets.source, Key="p/a", Body=b"a" * 50)
    s3.put_object(Bucket=buckets.source, Key="p/bad", Body=b"b" * 50)
    args = [
        "p",
        *cli_args(proxy.endpoint, tmp_path, buckets.source, buckets.dest),
        "--skip-existing",
        "--sse",
        "aws:kms",
        "--max-attempts",
        "1",
        "--quiet",
        *MODES[mode],
    ]
    proxy.add_rule(Rule("access_denied", method="PUT", path=f"^/{buckets.dest}/p/bad$"))
    assert run_cli(args).returncode == 1  # p/a done, the checkpoint kept to resume
    proxy.rules.clear()
    s3.put_object(Bucket=buckets.source, Key="p/a", Body=b"z" * 50)
    proxy.requests.clear()
    resumed = run_cli(args)
    assert resumed.returncode == 0, resumed.stderr
    assert _writes(proxy, buckets.dest) == {"p/a", "p/bad"}
    assert s3.get_object(Bucket=buckets.dest, Key="p/a")["Body"].read() == b"z" * 50


def test_a_restore_with_skip_existing_out_of_a_kms_backup_carries_the_backups_etag(
    proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path
) -> None:
    """The README said a restore from such a backup puts back the objects as they were: one
    made with ``--skip-existing`` out of an SSE-KMS backup copies objects whose ETags cannot
    be their copies', which carry the backup's ETag (README only: this pins what it now
    says). The original's own metadata is put back, and no stamp of the backup's."""
    s3.put_object(Bucket=buckets.source, Key="p/a", Body=b"a" * 50, Metadata={"owner": "ops"})
    _kms_destination(proxy, s3, buckets.dest)
    backup = ["p", *cli_args(proxy.endpoint, tmp_path, buckets.source, buckets.dest)]
    assert run_cli([*backup, "--skip-existing", "--quiet"]).returncode == 0
    s3.delete_object(Bucket=buckets.source, Key="p/a")  # lost
    restore = ["p", *cli_args(proxy.endpoint, tmp_path / "r", buckets.dest, buckets.source)]
    assert run_cli([*restore, "--quiet"]).returncode == 0
    assert s3.head_object(Bucket=buckets.source, Key="p/a")["Metadata"] == {"owner": "ops"}
    s3.delete_object(Bucket=buckets.source, Key="p/a")
    assert run_cli([*restore, "--skip-existing", "--quiet"]).returncode == 0
    restored = s3.head_object(Bucket=buckets.source, Key="p/a")["Metadata"]
    assert restored == {"owner": "ops", STAMP: _etag(s3, buckets.dest, "p/a")}, restored


def test_a_destination_whose_encryption_cannot_be_asked_is_said_in_one_warning(
    proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path
) -> None:
    """The start-up upload that asks the destination's encryption refused (a policy that
    lets PutObject but not CreateMultipartUpload's key): the run goes on, the copies made in
    one PUT each, and one warning says what that costs where the bucket is SSE-KMS, and what
    to give. It was a debug line: copies into a KMS bucket went unstamped without a word."""
    put_parallel(s3, buckets.source, {f"p/{i}": b"x" * i for i in range(1, 6)})
    proxy.add_rule(Rule("access_denied", method="POST", path=f"^/{buckets.dest}/", query="uploads"))
    args = ["p", *cli_args(proxy.endpoint, tmp_path, buckets.source, buckets.dest)]
    done = run_cli([*args, "--skip-existing", "--max-attempts", "2"])
    assert done.returncode == 0, done.stderr
    warned = [line for line in done.stderr.splitlines() if "WARNING" in line]
    assert len(warned) == 1, done.stderr
    assert "encryption" in warned[0] and "--sse aws:kms" in warned[0], warned[0]
    assert s3.get_object(Bucket=buckets.dest, Key="p/3")["Body"].read() == b"xxx"


def test_one_copy_the_destination_refuses_to_show_costs_that_copy_alone(
    proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path
) -> None:
    """A HEAD refused for one object (a bucket policy on its key) after others were
    answered is that object's refusal, not the credentials': that copy is made again, the
    others still known by their stamps. The first refusal turned the HEADs off for the run,
    and every copy was made again."""
    objects = {f"p/{i:02d}": f"body {i}".encode() for i in range(8)}
    put_parallel(s3, buckets.source, objects)
    _kms_destination(proxy, s3, buckets.dest)
    args = ["p", *cli_args(proxy.endpoint, tmp_path, buckets.source, buckets.dest)]
    incremental = [*args, "--skip-existing", "--concurrency", "1"]
    assert run_cli([*incremental, "--quiet"]).returncode == 0
    proxy.add_rule(Rule("access_denied", method="HEAD", path=f"^/{buckets.dest}/p/07$"))
    proxy.requests.clear()
    again = run_cli(incremental)
    assert again.returncode == 0, again.stderr
    assert _writes(proxy, buckets.dest) == {"p/07"}
    assert "WARNING" not in again.stderr, again.stderr


@pytest.mark.parametrize("mode", ["staged", "direct"])
def test_copies_of_a_kms_source_into_a_plain_destination_are_not_copied_again(
    proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path, mode: str
) -> None:
    """An SSE-KMS source (its bucket's default: nothing in its listing says so) copied into
    a destination without SSE-KMS: each copy's ETag is its MD5, never the source's opaque
    ETag. A staged copy knew from its GET, and was stamped; a ``--direct`` CopyObject was
    not, so every ``--skip-existing`` run copied the whole bucket again. The copy is now
    stamped there too: the first copy of the run that shows such a source is made again
    stamped, and the rest are stamped from the start (a HEAD of the source each)."""
    objects = {f"p/{i:02d}": bytes([97 + i]) * (200 + i) for i in range(12)}
    put_parallel(s3, buckets.source, objects, ServerSideEncryption="aws:kms")
    proxy.add_rule(Rule("kms_source", path=f"^/{buckets.source}(/|$)"))
    args = _nightly(proxy, tmp_path, buckets, *MODES[mode])
    first = run_cli(args)
    assert first.returncode == 0, first.stderr
    # the source's ETags as the proxy serves them: an MD5 of moto's (quoted) MD5
    listed = {
        key: hashlib.md5(f'"{_etag(s3, buckets.source, key)}"'.encode()).hexdigest()
        for key in objects
    }
    for key in objects:  # each copy names the (opaque) ETag of the version it was made of
        head = s3.head_object(Bucket=buckets.dest, Key=key)
        assert head["Metadata"].get(STAMP) == listed[key], (key, head["Metadata"])
        assert s3.get_object(Bucket=buckets.dest, Key=key)["Body"].read() == objects[key]
    proxy.requests.clear()
    again = run_cli(args)
    assert again.returncode == 0, again.stderr
    assert _writes(proxy, buckets.dest) == set()


def test_a_kms_source_replaced_before_its_stamped_copy_is_copied_again(
    proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path
) -> None:
    """``--direct``: the first copy of an SSE-KMS source is made again, stamped, once the
    source's HEAD shows SSE-KMS. The source replaced (same size) just before that HEAD: the
    second copy must not be stamped with the listed ETag, or the next run would skip a copy
    of the old bytes. The object fails; the next run copies the new version, which the one
    after skips."""
    key = "p/00"
    put_parallel(s3, buckets.source, {key: b"a" * 300}, ServerSideEncryption="aws:kms")

    def replace() -> None:
        s3.put_object(
            Bucket=buckets.source, Key=key, Body=b"b" * 300, ServerSideEncryption="aws:kms"
        )

    source = f"^/{buckets.source}(/|$)"
    proxy.add_rule(
        Rule(
            "kms_source", method="HEAD", path=f"^/{buckets.source}/{key}$", times=1, action=replace
        )
    )
    proxy.add_rule(Rule("kms_source", path=source))
    args = _nightly(proxy, tmp_path, buckets, "--direct")
    first = run_cli(args)
    assert first.returncode == 1, first.stderr
    head = s3.head_object(Bucket=buckets.dest, Key=key)
    if head["Metadata"].get(STAMP):  # a stamp only on the new version's bytes
        assert s3.get_object(Bucket=buckets.dest, Key=key)["Body"].read() == b"b" * 300
    again = run_cli(args)
    assert again.returncode == 0, again.stderr
    assert s3.get_object(Bucket=buckets.dest, Key=key)["Body"].read() == b"b" * 300
    listed = hashlib.md5(f'"{_etag(s3, buckets.source, key)}"'.encode()).hexdigest()
    assert s3.head_object(Bucket=buckets.dest, Key=key)["Metadata"].get(STAMP) == listed
    proxy.requests.clear()
    third = run_cli(args)
    assert third.returncode == 0, third.stderr
    assert _writes(proxy, buckets.dest) == set()
