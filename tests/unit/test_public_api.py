"""The public surface is what ``asyncbackup.__all__`` lists: pinned here, so a change to it is
a decision, not an accident."""

from __future__ import annotations

import asyncbackup

PUBLIC = {
    "AsyncBackupError", "BackupConfig", "BackupPlan", "BackupReport", "CheckpointCorruptError",
    "CheckpointError", "CheckpointLockedError", "CheckpointMismatchError", "CheckpointState",
    "ConfigError", "Endpoints", "FatalRunError", "GitHubBackupConfig", "GitHubPlan",
    "IntegrityError", "NullObserver", "ObjectError", "Observer", "StagingFullError",
    "StoreUnavailableError", "VerifyResult", "checkpoint_path", "plan_backup",
    "plan_github_backup", "read_checkpoint", "run_backup", "run_github_backup",
    "verify_checkpoint",
}  # fmt: skip


def test_all_is_sorted_and_pinned() -> None:
    assert asyncbackup.__all__ == sorted(asyncbackup.__all__)
    assert set(asyncbackup.__all__) == PUBLIC


def test_every_exported_name_exists_and_no_other_public_name_is_defined() -> None:
    for name in asyncbackup.__all__:
        assert getattr(asyncbackup, name) is not None
    defined = {n for n in vars(asyncbackup) if not n.startswith("_")}
    submodules = {n for n in defined if type(getattr(asyncbackup, n)).__name__ == "module"}
    assert defined - submodules == PUBLIC


def test_every_error_is_an_asyncbackup_error() -> None:
    for name in asyncbackup.__all__:
        value = getattr(asyncbackup, name)
        if isinstance(value, type) and issubclass(value, Exception):
            assert issubclass(value, asyncbackup.AsyncBackupError), name
