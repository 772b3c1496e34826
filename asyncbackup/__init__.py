"""asyncbackup: resumable, high-concurrency asyncio backups to S3.

The public API is what ``__all__`` lists; everything else is internal. The GitHub backup is
imported on first use: it brings aiohttp, which an S3 run whose requests all take the fast path
never needs (75 ms of its start-up). So is the checkpoint's verification (``verify``, with the
checkpoint tool it reads checkpoints with), which no backup run needs.
"""

import logging as _logging
from typing import TYPE_CHECKING as _TYPE_CHECKING
from typing import Any as _Any

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
from .progress import NullObserver, Observer
from .report import BackupReport

if _TYPE_CHECKING:
    from .github import GitHubBackupConfig, run_github_backup
    from .verify import Endpoints, VerifyResult, verify_checkpoint

#: the public names imported on first use, by the module they are in
_LAZY = {
    "GitHubBackupConfig": "github",
    "run_github_backup": "github",
    "Endpoints": "verify",
    "VerifyResult": "verify",
    "verify_checkpoint": "verify",
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
    "IntegrityError",
    "NullObserver",
    "ObjectError",
    "Observer",
    "StagingFullError",
    "StoreUnavailableError",
    "VerifyResult",
    "checkpoint_path",
    "plan_backup",
    "read_checkpoint",
    "run_backup",
    "run_github_backup",
    "verify_checkpoint",
]


def __getattr__(name: str) -> _Any:
    module = _LAZY.get(name)
    if module is not None:
        import importlib

        value = getattr(importlib.import_module(f".{module}", __name__), name)
        globals()[name] = value  # found directly from now on
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
