"""Security review: file modes, planted symbolic links, secrets, as a co-tenant would test them."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Buckets
from tests.helpers import cli_args
from tests.proxy import Rule, S3Proxy
from tests.reliability import put_parallel, run_cli


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_staged_files_checkpoints_and_report_are_private_under_umask_022(
    umask_022: None, proxy: S3Proxy, buckets: Buckets, s3: Any, tmp_path: Path
) -> None:
    """Under the usual umask 022 nothing asyncbackup writes is readable by other users: staged
    copies of private objects (one small, one streamed in parts), the checkpoint that names
    buckets and keys (kept by a failed object, then archived), completions.log and the report
    are 0600; the folders it creates (staging root, temporaries, checkpoints, archive) 0700."""
    objects = {"p/small.txt": b"private data", "p/big.bin": os.urandom(6 << 20)}
    objects["p/denied"] = b"x"
    put_parallel(s3, buckets.source, objects)
    base = tmp_path / "work"
    report = tmp_path / "report.json"
    args = [
        "p",
        *cli_args(proxy.endpoint, base, buckets.source, buckets.dest),
        "--multipart-threshold",
        "5MiB",
        "--part-size",
        "5MiB",
        "--report",
        str(report),
    ]
    proxy.add_rule(Rule("access_denied", method="GET", path=r"/p/denied$"))
    first = run_cli(args)
    assert first.returncode == 1, first.stderr
    checkpoint = base / "checkpoints" / f"{buckets.source}_p.checkpoint"
    root = base / buckets.source
    private_files = [root / "p" / "small.txt", root / "p" / "big.bin", checkpoint, report]
    folders = [base, root, base / ".tmp", base / "checkpoints"]
    modes = {str(p): oct(_mode(p)) for p in [*private_files, *folders]}
    assert all(_mode(p) == 0o600 for p in private_files), modes
    assert all(_mode(p) == 0o700 for p in folders), modes

    proxy.clear_faults()
    second = run_cli(args)
    assert second.returncode == 0, second.stderr
    archive = base / "checkpoints" / "archive"
    archived = list(archive.iterdir())
    completions = base / "checkpoints" / "completions.log"
    modes = {str(p): oct(_mode(p)) for p in [archive, *archived, completions, report]}
    assert len(archived) == 1 and _mode(archived[0]) == 0o600, modes
    assert _mode(completions) == 0o600 and _mode(report) == 0o600, modes
    assert _mode(archive) == 0o700, modes


def _plant(link: Path, victim: Path) -> None:
    """A co-tenant's link where asyncbackup will write, to a file of the user running it."""
    victim.write_text("precious\n")
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(victim)


def test_a_lock_planted_as_a_symlink_is_not_written_through(
    buckets: Buckets, s3: Any, s3_server: Any, tmp_path: Path
) -> None:
    """A link at ``<checkpoint>.lock`` (to ~/.bashrc, say) was followed: the file it pointed
    to was truncated to the run's pid. Now the run refuses (exit 2) and names the link."""
    put_parallel(s3, buckets.source, {"p/a": b"a"})
    base = tmp_path / "work"
    victim = tmp_path / "bashrc"
    link = base / "checkpoints" / f"{buckets.source}_p.checkpoint.lock"
    _plant(link, victim)
    result = run_cli(["p", *cli_args(s3_server.endpoint, base, buckets.source, buckets.dest)])
    assert victim.read_text() == "precious\n"
    assert result.returncode == 2, result.stderr
    assert str(link) in result.stderr and "symbolic link" in result.stderr


def test_a_completions_log_planted_as_a_symlink_is_not_written_through(
    buckets: Buckets, s3: Any, s3_server: Any, tmp_path: Path
) -> None:
    """``completions.log`` is appended to at the end of every completed run: a planted link
    there had the entry appended to the file it points to."""
    put_parallel(s3, buckets.source, {"p/a": b"a"})
    base = tmp_path / "work"
    victim = tmp_path / "bashrc"
    _plant(base / "checkpoints" / "completions.log", victim)
    result = run_cli(["p", *cli_args(s3_server.endpoint, base, buckets.source, buckets.dest)])
    assert victim.read_text() == "precious\n"
    assert result.returncode == 2, result.stderr
    assert "symbolic link" in result.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="a link owned by another user needs root")
@pytest.mark.parametrize("planted", ["report", "checkpoint"])
def test_a_link_another_user_owns_is_not_followed_for_the_report_or_the_checkpoint(
    planted: str, buckets: Buckets, s3: Any, s3_server: Any, tmp_path: Path
) -> None:
    """An operator's link at the report or checkpoint path is written through (to other
    storage): that is a feature. But ``os.path.realpath`` follows any link, so one another user
    planted (``--report /tmp/report.json``, in a shared folder; fs.protected_symlinks does not
    stop a path resolved by hand) had the file it points to replaced by the report, or the
    checkpoint written there. A link another user (not root) owns is now refused."""
    put_parallel(s3, buckets.source, {"p/a": b"a"})
    base = tmp_path / "work"
    victim = tmp_path / "home" / "notes.txt"
    victim.parent.mkdir()
    shared = tmp_path / "shared"
    report = shared / "report.json"
    link = report if planted == "report" else shared / "ckpt" / f"{buckets.source}_p.checkpoint"
    _plant(link, victim)
    victim.unlink()  # a dangling link: the checkpoint is then created there
    if planted == "report":
        victim.write_text("precious\n")
    os.lchown(link, 54321, 54321)
    args = ["p", *cli_args(s3_server.endpoint, base, buckets.source, buckets.dest)]
    result = run_cli([*args, "--report", str(report), "--checkpoint-dir", str(shared / "ckpt")])
    if planted == "report":
        assert victim.read_text() == "precious\n"
    else:
        assert not victim.exists()
    assert link.is_symlink()
    assert result.returncode == 2, result.stderr
    assert str(link) in result.stderr and "symbolic link" in result.stderr


@pytest.mark.parametrize("how", ["owner", "mode", "group"])
def test_a_staging_tree_another_user_could_write_is_refused(
    how: str, buckets: Buckets, s3: Any, s3_server: Any, tmp_path: Path
) -> None:
    """Another user who can write the staging tree (it is theirs, or it is writable by
    others) can plant a link where a folder of keys will be (``<bucket>/p`` to a folder of
    yours), and the staged copies were written through it, there. Such a tree is refused
    before anything is staged, as ssh's StrictModes refuses such a home."""
    put_parallel(s3, buckets.source, {"p/a": b"a", "p/b": b"b"})
    base = tmp_path / "work"
    root = base / buckets.source
    root.mkdir(parents=True)
    victim = tmp_path / "victim"
    victim.mkdir()
    (root / "p").symlink_to(victim)
    if how == "owner":
        os.chown(root, 54321, 54321)
        os.lchown(root / "p", 54321, 54321)
    elif how == "mode":
        root.chmod(0o777)
    else:  # writable by a group that is not this user's own
        os.chown(root, -1, 54321)
        root.chmod(0o770)
    result = run_cli(["p", *cli_args(s3_server.endpoint, base, buckets.source, buckets.dest)])
    assert result.returncode == 2, result.stderr
    assert list(victim.iterdir()) == []
    assert str(root) in result.stderr
    assert ("another user" if how == "owner" else "chmod go-w") in result.stderr
    if how == "group":  # the user's own group (umask 002, private groups): nothing to fear
        os.chown(root, -1, os.getegid())
        (root / "p").unlink()
        done = run_cli(["p", *cli_args(s3_server.endpoint, base, buckets.source, buckets.dest)])
        assert done.returncode == 0, done.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_a_base_path_others_may_write_needs_the_sticky_bit(
    buckets: Buckets, s3: Any, s3_server: Any, tmp_path: Path
) -> None:
    """``--base-local-path /tmp`` is fine: its sticky bit keeps others from renaming the
    staging tree away and putting theirs in its place. A folder anyone may write without it
    is refused."""
    put_parallel(s3, buckets.source, {"p/a": b"a"})
    base = tmp_path / "shared"
    base.mkdir()
    base.chmod(0o777)
    args = ["p", *cli_args(s3_server.endpoint, base, buckets.source, buckets.dest)]
    refused = run_cli(args)
    assert refused.returncode == 2, refused.stderr
    assert str(base) in refused.stderr and "sticky" in refused.stderr
    base.chmod(0o1777)
    done = run_cli(args)
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE((base / buckets.source).stat().st_mode) == 0o700
