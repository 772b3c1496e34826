"""The one exception tree of asyncbackup.

Lower layers (botocore, aiohttp, the OS) are translated into it at the edge, with
``raise ... from exc``, so callers catch these and nothing else::

    AsyncBackupError                 base class; ``str()`` is one readable line
    ├── ConfigError                  bad usage or configuration (exit code 2)
    │   └── StoreUnavailableError    a bucket is missing, credentials are refused,
    │                                or the endpoint cannot be reached
    ├── CheckpointError              the checkpoint cannot be used (exit code 2)
    │   ├── CheckpointCorruptError   not valid JSON or not the schema; kept aside
    │   │   └── CheckpointEditedError  changed by hand while a crashed run's journal is left
    │   ├── CheckpointLockedError    another run holds it
    │   └── CheckpointMismatchError  it belongs to another job
    ├── FatalRunError                the run cannot go on (exit code 3)
    │   └── StagingFullError         the staging disk is full (or takes no file that large)
    └── ObjectError                  one object failed; recorded in ``errors``
        └── IntegrityError           what arrived differs from what was listed

Every message says what to do next and never contains a secret.
"""

from __future__ import annotations

from .redact import redact


class AsyncBackupError(Exception):
    """Base class of every error asyncbackup raises on purpose.

    Its message never holds the credentials of a URL it quotes (``redact``)."""

    exit_code = 2

    def __init__(self, *args: object) -> None:
        super().__init__(*(redact(arg) if isinstance(arg, str) else arg for arg in args))


class ConfigError(AsyncBackupError):
    """Bad usage or configuration: a flag, a profile, a path."""


class StoreUnavailableError(ConfigError):
    """A bucket is missing, credentials are refused, or the endpoint is unreachable."""


class CheckpointError(AsyncBackupError):
    """The checkpoint file cannot be used as it is."""


class CheckpointCorruptError(CheckpointError):
    """The checkpoint is not valid JSON or not in the checkpoint schema."""


class CheckpointEditedError(CheckpointCorruptError):
    """The JSON file changed after its journal began: the journal is not applied over it."""


class CheckpointLockedError(CheckpointError):
    """Another run holds the checkpoint."""


class CheckpointMismatchError(CheckpointError):
    """The checkpoint at this path was written for a different job."""


class FatalRunError(AsyncBackupError):
    """The run cannot continue; the checkpoint stays valid for a resume."""

    exit_code = 3


class StagingFullError(FatalRunError):
    """The staging file system has no space left, or takes no file that large (EFBIG)."""


class ObjectError(AsyncBackupError):
    """One object could not be copied.

    ``code`` is an S3-style error code (``AccessDenied``, ``NoSuchKey``...) and
    ``str()`` is the checkpoint form ``"Code: Message"``, on one line (a server's message
    may hold line breaks; ``checkpoint errors`` prints one line per file).
    """

    exit_code = 1

    def __init__(self, code: str, message: str, *, retryable: bool = False) -> None:
        super().__init__(f"{code}: {' '.join(message.split())}")
        self.code = code
        self.message = redact(message)
        self.retryable = retryable
        #: whose credentials sent the failed request, where known: ``"source"`` or
        #: ``"destination"`` (set by the side's ``RetryPolicy``), for a fatal error's advice
        self.side: str | None = None


class IntegrityError(ObjectError):
    """Size or checksum of a copy differs from the source."""

    def __init__(self, message: str) -> None:
        super().__init__("IntegrityError", message, retryable=True)
