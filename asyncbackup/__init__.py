"""asyncbackup: resumable, high-concurrency asyncio backups to S3.

The public API is what ``__all__`` lists; everything else is internal.
"""

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
from .github import GitHubBackupConfig, run_github_backup
from .progress import NullObserver, Observer
from .report import BackupReport

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
    "FatalRunError",
    "GitHubBackupConfig",
    "IntegrityError",
    "NullObserver",
    "ObjectError",
    "Observer",
    "StagingFullError",
    "StoreUnavailableError",
    "checkpoint_path",
    "plan_backup",
    "read_checkpoint",
    "run_backup",
    "run_github_backup",
]
