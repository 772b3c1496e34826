"""The configuration of one GitHub-to-S3 backup: frozen, keyword-only, validated once."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from ..checkpoint import checkpoint_path
from ..config import (
    ChecksumMode,
    MiB,
    OnComplete,
    check_positive,
    grown_part_size,
    text_path,
    validate_transfer,
)
from ..errors import ConfigError
from ..filters import patterns

GITHUB_API = "https://api.github.com"
#: The checkpoint's ``source_bucket``; which server it was is recorded as ``config.api_url``.
SOURCE_NAME = "github"
_OWNER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True, kw_only=True, slots=True)
class GitHubBackupConfig:
    """Everything one GitHub-to-S3 backup needs. Field names follow the CLI flags.

    The token is never a flag: it comes from ``token`` (embedding) or from the environment
    variable named by ``token_env``; it is left out of ``repr()`` and of the checkpoint.
    """

    owner: str
    dest_bucket: str
    base_local_path: Path
    dest_profile: str | None = None
    endpoint_url: str | None = None
    dest_endpoint_url: str | None = None
    region: str | None = None
    api_url: str = GITHUB_API
    token: str | None = field(default=None, repr=False, compare=False)
    token_env: str = "GITHUB_TOKEN"  # noqa: S105 - the variable's name, not a secret
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    skip_forks: bool = False
    skip_archived: bool = False
    wikis: bool = True
    cleanup: bool = False
    checkpoint_dir: Path | None = None
    checkpoint_interval: int = 1
    checkpoint_max_age: float = 30.0
    ignore_checkpoints: bool = False
    on_complete: OnComplete = "archive"
    keep_archives: int | None = None  # the job's newest archives kept; None: every one
    concurrency: int = 8
    api_concurrency: int = 4
    git_concurrency: int = 2
    multipart_threshold: int = 8 * MiB
    part_size: int = 8 * MiB
    part_concurrency: int = 4
    max_attempts: int = 8
    checksum: ChecksumMode = "md5"
    connect_timeout: float = 10.0
    read_timeout: float = 120.0

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "base_local_path", text_path("--base-local-path", Path(self.base_local_path))
        )
        object.__setattr__(
            self, "checkpoint_dir", text_path("--checkpoint-dir", self.checkpoint_dir)
        )
        object.__setattr__(self, "api_url", self.api_url.rstrip("/"))
        object.__setattr__(self, "include", patterns("--include", self.include))
        object.__setattr__(self, "exclude", patterns("--exclude", self.exclude))
        for flag, found in (("--include", self.include), ("--exclude", self.exclude)):
            for pattern in found:
                if "/" in pattern:  # pasted as GitHub shows it: OWNER/NAME
                    raise ConfigError(
                        f"{flag} {pattern!r}: patterns match the repository's name alone, "
                        f"which has no '/'; give {pattern.rpartition('/')[2]!r}"
                    )
        if not _OWNER.match(self.owner):
            raise ConfigError(
                f"OWNER {self.owner!r} is not a GitHub organisation or user name "
                "(letters, digits, '-', '_' or '.')"
            )
        if not self.dest_bucket:
            raise ConfigError("--dest-bucket must not be empty")
        parts = urlsplit(self.api_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(
                f"--api-url {self.api_url!r} is not an http(s) URL; for GitHub Enterprise "
                "Server use https://HOST/api/v3"
            )
        if parts.username or parts.password:
            raise ConfigError("--api-url must not contain credentials; set the token variable")
        if not _ENV_NAME.match(self.token_env):
            raise ConfigError(f"--token-env {self.token_env!r} is not an environment variable name")
        validate_transfer(self)
        check_positive(api_concurrency=self.api_concurrency, git_concurrency=self.git_concurrency)

    @property
    def effective_dest_endpoint(self) -> str | None:
        return self.dest_endpoint_url or self.endpoint_url

    @property
    def source_name(self) -> str:
        """The checkpoint's ``source_bucket`` (``github``; the API URL is in its config)."""
        return SOURCE_NAME

    @property
    def checkpoint_file(self) -> Path:
        """Where the job's checkpoint is (``<CHECKPOINT_DIR>/github_<owner>.checkpoint``)."""
        return checkpoint_path(
            base_local_path=self.base_local_path,
            source_bucket=self.source_name,
            source_path=self.owner,
            checkpoint_dir=self.checkpoint_dir,
        )

    def resolved_token(self) -> str:
        """The token, from ``token`` or the ``token_env`` variable; a clear error if neither."""
        token = self.token if self.token is not None else os.environ.get(self.token_env, "")
        token = token.strip()
        if not token:
            raise ConfigError(
                f"no GitHub token: set the environment variable {self.token_env} to a token "
                "that can read the repositories (or name another variable with --token-env)"
            )
        if any(c.isspace() for c in token):
            raise ConfigError(f"the token in {self.token_env} contains whitespace; check it")
        if not token.isprintable():  # an escape sequence pasted with it, say
            raise ConfigError(
                f"the token in {self.token_env} contains a control character; check it"
            )
        return token

    def part_size_for(self, size: int) -> int:
        return grown_part_size(self.part_size, size)
