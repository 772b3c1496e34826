"""Whether a checkpoint is this job's: its buckets and path, and the settings its config
records (patterns, prefix, destination endpoint)."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .checkpoint import CheckpointState, corrupt_checkpoint
from .errors import (
    CheckpointMismatchError,
)

_AWS_HOSTS = (".amazonaws.com", ".amazonaws.com.cn")


def same_job(
    state: CheckpointState, source_bucket: str, source_path: str, dest_bucket: str
) -> bool:
    mine = (source_bucket, source_path.strip("/"), dest_bucket)
    return mine == (state.source_bucket, state.source_path.strip("/"), state.dest_bucket)


def check_identity(
    path: Path, state: CheckpointState, source_bucket: str, source_path: str, dest_bucket: str
) -> None:
    """Raise ``CheckpointMismatchError`` when ``state`` (read from ``path``) is another job's."""
    if not same_job(state, source_bucket, source_path, dest_bucket):
        theirs = (state.source_bucket, state.source_path.strip("/"), state.dest_bucket)
        raise CheckpointMismatchError(
            f"checkpoint {path} belongs to another job (s3://{theirs[0]}/{theirs[1]} -> "
            f"{theirs[2]}); use --checkpoint-dir to keep this job's checkpoint elsewhere, "
            "or --ignore-checkpoints to replace it"
        )


def endpoint_for_checkpoint(url: str | None) -> str | None:
    """An endpoint URL as a checkpoint records it (None: AWS, any of its endpoints): scheme,
    host, port and path, never the user info or query string a URL could carry."""
    if not url:
        return None
    parts = urlsplit(url.strip())
    host = (parts.hostname or "").lower()
    if host.endswith(_AWS_HOSTS):
        return None  # AWS: one bucket namespace, whatever the region's endpoint
    if ":" in host:
        host = f"[{host}]"
    scheme = parts.scheme.lower()
    default = {"http": 80, "https": 443}.get(scheme)
    try:
        number = parts.port
    except ValueError:  # not a port (a hand edit's typo): no endpoint is that one
        return f"{scheme}://{host}:{parts.netloc.rpartition(':')[2]}"
    port = f":{number}" if number not in (None, default) else ""
    return f"{scheme}://{host}{port}{parts.path.rstrip('/')}"


def recorded_patterns(path: Path, stored: dict[str, Any], name: str) -> tuple[str, ...]:
    """The glob patterns a checkpoint's ``config`` records under ``name`` (``include`` or
    ``exclude``); anything but a list of strings there is a corrupt checkpoint."""
    value = stored.get(name)
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise corrupt_checkpoint(path, f"field 'config.{name}' must be a list of glob patterns")
    return tuple(value)


def recorded_text(path: Path, stored: dict[str, Any], name: str, what: str) -> str | None:
    """The string (or null) a checkpoint's ``config`` records under ``name``; anything else
    there - a number, a list - is a corrupt checkpoint, not "not recorded": a resume would
    then skip the files it marks done wherever they are."""
    value = stored[name]
    if value is not None and not isinstance(value, str):
        raise corrupt_checkpoint(path, f"field 'config.{name}' must be {what} or null")
    return value


def check_dest_endpoint(path: Path, stored: dict[str, Any], endpoint: str | None) -> None:
    """A resume must copy to the store where the files the checkpoint marks done are: another
    endpoint (another server, with a bucket of the same name) would be left without them."""
    if "dest_endpoint_url" not in stored:
        return  # written by hand or by an older tool: nothing to compare
    recorded = recorded_text(path, stored, "dest_endpoint_url", "a URL")
    now = endpoint_for_checkpoint(endpoint)
    try:
        before = endpoint_for_checkpoint(recorded)
    except ValueError:  # a hand edit's typo: "http://[::1", say
        raise corrupt_checkpoint(path, "field 'config.dest_endpoint_url' is not a URL") from None
    if before != now:
        raise CheckpointMismatchError(
            f"checkpoint {path} was made with destination endpoint {recorded or 'AWS'} (the "
            f"copies it marks done are there), this run's is {now or 'AWS'}; resume with the "
            "same endpoint, set config.dest_endpoint_url in the checkpoint if it is the same "
            "store under another name, or start over with --ignore-checkpoints"
        )
