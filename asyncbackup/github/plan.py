"""``plan_github_backup()`` (``backup-github --dry-run``): what a GitHub backup would back up.

It asks what a run's listing asks (the token and the owner, the list of repositories, each
selected repository's releases for their assets) and checks the destination bucket as a run
does; it clones nothing, uploads nothing, and writes, locks or stages nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..checkpoint import CheckpointState, read_checkpoint
from ..checkpoint_identity import check_dest_endpoint, check_identity
from ..s3client import client_endpoint, open_destination
from .backup import (
    ENDED_WITH_ERRORS,
    check_same_server,
    new_pass,
    open_api_client,
    resolve_owner,
    warn_nothing_selected,
)
from .config import GitHubBackupConfig
from .listing import BUNDLE, Artifact, Lister, RepoFilter


@dataclass(frozen=True, slots=True)
class GitHubPlan:
    """What a GitHub backup would do (``--dry-run``): nothing is written, locked or copied."""

    owner: str
    repositories: int  # selected: each is a bundle, its wiki's, metadata and release assets
    artifacts: int  # the objects those make (a run looks at each; unchanged ones cost a 304)
    done_artifacts: int  # of those, marked done by the checkpoint of a run still to resume
    left_out: dict[str, str]  # repository (owner/name) -> why (--include, --skip-forks...)
    first_repositories: list[str]
    checkpoint_path: Path
    checkpoint_exists: bool

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "checkpoint_path": str(self.checkpoint_path)}


async def plan_github_backup(
    config: GitHubBackupConfig | None = None, *, sample: int = 20, **options: Any
) -> GitHubPlan:
    """List what ``run_github_backup`` would back up, with the same filters and checkpoint,
    touching nothing. Its errors are the run's: a refused token, an unknown owner, a
    destination bucket that cannot be used, another job's checkpoint."""
    if config is None:
        config = GitHubBackupConfig(**options)
    elif options:
        raise TypeError("pass either a GitHubBackupConfig or keyword options, not both")
    token = config.resolved_token()
    path = config.checkpoint_file
    state = await asyncio.to_thread(_live_checkpoint, path, config)
    files = state.files if state is not None else {}
    async with contextlib.AsyncExitStack() as stack:
        dest_client = await open_destination(stack, config)
        if state is not None:
            check_dest_endpoint(path, state.config, client_endpoint(dest_client))
        client = await open_api_client(stack, config, token)
        repos_path, repos_params = await resolve_owner(client, config)
        lister = Lister(
            client,
            repos_path=repos_path,
            repos_params=repos_params,
            repo_filter=RepoFilter.of(config),
            wikis=config.wikis,
            previous_listing={},
            note=lambda section, key, value: None,  # a run's notes: nothing is recorded
        )
        artifacts = done = 0
        repositories: list[str] = []
        async for page in lister.pages():
            for item in page:
                artifacts += 1
                done += files.get(item.key) is True
                if isinstance(item, Artifact) and item.kind == BUNDLE:  # one a repository
                    repositories.append(f"{item.owner}/{item.repo}")
        if not lister.repositories:
            warn_nothing_selected(config.owner, lister)
        return GitHubPlan(
            owner=config.owner,
            repositories=lister.repositories,
            artifacts=artifacts,
            done_artifacts=done,
            left_out=dict(sorted(lister.left_out.items())),
            first_repositories=repositories[:sample],
            checkpoint_path=path,
            checkpoint_exists=state is not None,
        )
    raise AssertionError("unreachable")  # pragma: no cover - the with block always returns


def _live_checkpoint(path: Path, config: GitHubBackupConfig) -> CheckpointState | None:
    """The checkpoint a run would resume (read, not locked), or None; the run's refusals of
    another job's. That of a run which ended with errors is, as the run makes it, the start
    of a new pass: every artifact looked at again (``new_pass``, on this copy only)."""
    if config.ignore_checkpoints or not path.exists():
        return None
    check_same_server(path, config.api_url)
    state = read_checkpoint(path)
    check_identity(path, state, config.source_name, config.owner, config.dest_bucket)
    ended = state.extra.get(ENDED_WITH_ERRORS)
    if isinstance(ended, dict):
        new_pass(state, ended)
    return state
