"""asyncbackup: resumable, high-concurrency asyncio backups to S3.

The public API is what ``__all__`` lists; everything else is internal. Each name is imported
on first use: the GitHub backup brings aiohttp, which an S3 run whose requests all take the
fast path never needs (75 ms of its start-up), the checkpoint's verification (``verify``)
is needed by no backup run, and the console commands' entry points (``asyncbackup.console``)
must import next to nothing before they can take a Ctrl-C.
"""

import logging as _logging
from typing import TYPE_CHECKING as _TYPE_CHECKING
from typing import Any as _Any

if _TYPE_CHECKING:
    from .api import BackupPlan, plan_backup, run_backup
    from .checkpoint import CheckpointState, checkpoint_path, read_checkpoint
    from .config import BackupConfig
    from .errors import (
        AsyncBackupError,
        CheckpointCorruptError,
        CheckpointError,
        CheckpointLockedError,
        CheckpointMismatchError,
        ConfigError,
        FatalRunError,
        IntegrityError,
        ObjectError,
        StagingFullError,
        StoreUnavailableError,
    )
    from .github import GitHubBackupConfig, GitHubPlan, plan_github_backup, run_github_backup
    from .progress import NullObserver, Observer
    from .report import BackupReport
    from .verify import Endpoints, VerifyResult, verify_checkpoint

#: where each public name lives: imported on first use, so that importing a submodule (the
#: console entry points, ``asyncbackup.console``) does not import them all
_WHERE = {
    "BackupPlan": "api",
    "plan_backup": "api",
    "run_backup": "api",
    "CheckpointState": "checkpoint",
    "checkpoint_path": "checkpoint",
    "read_checkpoint": "checkpoint",
    "BackupConfig": "config",
    "GitHubBackupConfig": "github",
    "GitHubPlan": "github",
    "plan_github_backup": "github",
    "run_github_backup": "github",
    "NullObserver": "progress",
    "Observer": "progress",
    "BackupReport": "report",
    "Endpoints": "verify",
    "VerifyResult": "verify",
    "verify_checkpoint": "verify",
    **dict.fromkeys(
        (
            "AsyncBackupError",
            "CheckpointCorruptError",
            "CheckpointError",
            "CheckpointLockedError",
            "CheckpointMismatchError",
            "ConfigError",
            "FatalRunError",
            "IntegrityError",
            "ObjectError",
            "StagingFullError",
            "StoreUnavailableError",
        ),
        "errors",
    ),
}

# A library prints nothing: without this, Python's last-resort handler prints the warnings
# of the "asyncbackup" logger on stderr in a program that configured no logging.
_logging.getLogger("asyncbackup").addHandler(_logging.NullHandler())

__all__ = [
    "AsyncBackupError",
    "BackupConfig",
    "BackupPlan",
    "BackupReport",
    "CheckpointCorruptError",
    "CheckpointError",
    "CheckpointLockedError",
    "CheckpointMismatchError",
    "CheckpointState",
    "ConfigError",
    "Endpoints",
    "FatalRunError",
    "GitHubBackupConfig",
    "GitHubPlan",
    "IntegrityError",
    "NullObserver",
    "ObjectError",
    "Observer",
    "StagingFullError",
    "StoreUnavailableError",
    "VerifyResult",
    "checkpoint_path",
    "plan_backup",
    "plan_github_backup",
    "read_checkpoint",
    "run_backup",
    "run_github_backup",
    "verify_checkpoint",
]


def __getattr__(name: str) -> _Any:
    import importlib

    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = importlib.import_module(f".{where}", __name__)
    value = getattr(module, name)
    globals()[name] = value  # found directly from now on
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
