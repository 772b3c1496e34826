"""``run_github_backup()``: every repository of an organisation or user, with its metadata, to S3.

The same engine as the S3 backup: a listing of artifacts feeds a bounded pipeline whose one
writer task owns the checkpoint (``<base>/checkpoints/github_<OWNER>.checkpoint``, the seed's
schema). ETags, ``pushed_at`` values and release asset lists are kept in top-level checkpoint
sections through ``Pipeline.note``; when a completed checkpoint is archived, the next run starts
a new one carrying those sections forward, so unchanged repositories cost neither a clone nor
API quota. A run that gets to the end with errors says so in the checkpoint
(``github_ended_with_errors``), and the next run is a new pass over everything, not a retry of
the failures alone: one repository that fails for good (a 451) must not keep the others' new
pushes out of the backup.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import aiohttp

from .. import workerpool
from ..checkpoint import CheckpointState, now_iso, read_checkpoint
from ..checkpoint_identity import check_dest_endpoint, endpoint_for_checkpoint
from ..checkpoint_manager import CheckpointManager, in_thread_to_the_end
from ..checkpoint_tool import archived_versions
from ..errors import (
    CheckpointError,
    CheckpointMismatchError,
    ConfigError,
    ObjectError,
    StoreUnavailableError,
)
from ..partfeed import ByteBudget
from ..pipeline import Pipeline, PipelineResult, listing_or_stop
from ..progress import Observer
from ..report import BackupReport, conclude
from ..retry import AdaptiveLimiter, RetryPolicy
from ..s3client import UploadCheck, client_endpoint, open_destination
from ..sinks.s3 import S3Sink
from ..staging import Staging
from ..uploads import SECTION as UPLOADS_SECTION
from ..uploads import UploadJournal, abort_recorded_uploads, last_try_at_uploads
from .artifacts import ArtifactCopier
from .client import GitHubClient, GitHubError
from .config import GitHubBackupConfig
from .git import GitRunner, git_origin
from .listing import (
    CARRIED_SECTIONS,
    ETAGS,
    PREFIX,
    RELEASE_LISTING,
    SKIPPED,
    VERSIONS,
    Lister,
    RepoFilter,
    repo_prefix,
)
from .ratelimit import Clock, RateGate, Sleep

log = logging.getLogger("asyncbackup")

USER_AGENT = "asyncbackup (+https://github.com/)"
#: what to check when the destination refuses any upload: this command sends neither an
#: encryption nor a storage class (it has no --sse, no --storage-class)
_UPLOAD_ADVICE = (
    "check that the credentials of --dest-profile may write there (s3:PutObject) and what "
    "the bucket policy asks of uploads (this command sends no encryption or storage class "
    "header: a policy that requires one refuses every upload it makes)"
)
#: the checkpoint section of a run that got to the end with errors: when, and what failed
ENDED_WITH_ERRORS = "github_ended_with_errors"


def _checkpoint_config(config: GitHubBackupConfig, dest_endpoint: str | None) -> dict[str, Any]:
    """What the checkpoint records of the configuration: never the token, only its variable."""
    return {
        "cleanup": config.cleanup,
        "base_local_path": str(config.base_local_path),
        "api_url": config.api_url,
        "dest_endpoint_url": endpoint_for_checkpoint(dest_endpoint),
        "token_env": config.token_env,
        "include": list(config.include),
        "exclude": list(config.exclude),
        "skip_forks": config.skip_forks,
        "skip_archived": config.skip_archived,
        "wikis": config.wikis,
        "checkpoint_interval": config.checkpoint_interval,
        "concurrency": config.concurrency,
        "api_concurrency": config.api_concurrency,
        "git_concurrency": config.git_concurrency,
        "checksum": config.checksum,
        "dest_profile": config.dest_profile,
    }


async def run_github_backup(
    config: GitHubBackupConfig | None = None,
    *,
    observer: Observer | None = None,
    stop: asyncio.Event | None = None,
    clock: Clock | None = None,
    sleep: Sleep | None = None,
    **options: Any,
) -> BackupReport:
    """Back up every selected repository of ``owner`` (git bundles, wikis, metadata) to S3.

    Pass a ``GitHubBackupConfig``, or its fields as keyword arguments named like the CLI flags
    (``owner=..., dest_bucket=..., base_local_path=...``). The token comes from
    ``token=`` or the ``token_env`` variable (``GITHUB_TOKEN``). ``clock`` (wall time, epoch
    seconds) and ``sleep`` drive every rate-limit and retry wait: tests pass fakes. Setting
    ``stop`` finishes the artifacts in flight and returns with status ``"stopped"``.
    """
    if config is None:
        config = GitHubBackupConfig(**options)
    elif options:
        raise TypeError("pass either a GitHubBackupConfig or keyword options, not both")
    token = config.resolved_token()
    sleep = sleep or asyncio.sleep
    started = time.monotonic()
    path = config.checkpoint_file
    manager = CheckpointManager(path)
    async with contextlib.AsyncExitStack() as stack:
        stack.callback(manager.close)  # first: a cancelled open_async() leaves a lock to release
        await manager.open_async()
        dest_client = await open_destination(stack, config)
        client = await open_api_client(stack, config, token, clock=clock, sleep=sleep)
        gate = client.gate
        repos_path, repos_params = await resolve_owner(client, config)
        if not config.ignore_checkpoints:
            await asyncio.to_thread(check_same_server, path, config.api_url)
        dest_endpoint = client_endpoint(dest_client)
        state, resumed = await in_thread_to_the_end(
            manager.load_or_create,
            source_bucket=config.source_name,
            source_path=config.owner,
            dest_bucket=config.dest_bucket,
            config=_checkpoint_config(config, dest_endpoint),
            ignore_existing=config.ignore_checkpoints,
            carry=(UPLOADS_SECTION,),  # set aside, its uploads are still to abort
        )
        if resumed:
            check_dest_endpoint(path, state.config, dest_endpoint)
            forget_untrusted_page_tags(path, state.config, state.extra)
            # the ETags kept from now on are this version's: the next run may trust them
            state.config.setdefault(
                _RECORDED_SINCE_TRUSTED_TAGS, endpoint_for_checkpoint(dest_endpoint)
            )
            ended = state.extra.pop(ENDED_WITH_ERRORS, None)
            if isinstance(ended, dict):
                again = new_pass(state, ended)
                log.info(
                    "the last run of %s ended with %d errors: a new pass over every repository "
                    "(%d artifacts to look at again; unchanged ones are not copied again)",
                    path,
                    len(state.errors),
                    again,
                )
            else:
                log.info(
                    "resuming %s: %d of %d artifacts already done",
                    path,
                    state.processed_files,
                    max(state.total_files, len(state.files)),  # a hand-written one may lack it
                )
        elif not config.ignore_checkpoints:
            carried = await asyncio.to_thread(carry_forward, manager, state, config.api_url)
            if carried is not None:
                log.info("incremental backup: versions and ETags from %s", carried)
        # Multipart uploads a crashed run left behind: aborted before anything else.
        await abort_recorded_uploads(state.extra, dest_client, config)
        staging = Staging(config.base_local_path, config.source_name)
        stack.callback(staging.close)
        await asyncio.to_thread(staging.prepare)
        slots = asyncio.Semaphore(config.git_concurrency)
        stall = round(config.read_timeout)  # what the API requests wait for data, git waits too
        git = stack.enter_context(
            GitRunner(
                token,
                slots=slots,
                origin=git_origin(config.api_url),
                stall_seconds=stall,
                workdir=staging.root,
            )
        )
        dest_retry = RetryPolicy(
            config.max_attempts, limiter=AdaptiveLimiter(config.concurrency * 4)
        )
        sink = S3Sink(
            dest_client,
            config.dest_bucket,
            dest_retry,
            checksum=config.checksum,
            multipart_threshold=config.multipart_threshold,
            part_size_for=config.part_size_for,
            part_concurrency=config.part_concurrency,
            # the S3 command's budget at most: parts larger than it are read from their
            # staged files as they go, never whole in memory
            part_budget=ByteBudget(
                min(
                    max(config.concurrency, config.part_concurrency) * config.part_size,
                    workerpool.PART_BUFFER_BYTES,
                )
            ),
        )
        pipeline = Pipeline(
            manager=manager,
            state=state,
            concurrency=config.concurrency,
            interval=config.checkpoint_interval,
            max_age=config.checkpoint_max_age,
            observer=observer,
            stop=stop,
            exact_sizes=False,  # a listing's sizes are estimates: the bytes copied are counted
            # a complete listing is every artifact of the job: a repository deleted or renamed
            # since leaves the map (a pass resumed after errors kept its files pending for good)
            forget_unlisted=True,
        )
        sink.journal = UploadJournal(pipeline)  # a SIGKILL mid-upload leaks no upload
        # Workers read what the last runs recorded; only the writer task changes the state.
        previous = {section: dict(state.extra.get(section) or {}) for section in CARRIED_SECTIONS}
        lister = Lister(
            client,
            repos_path=repos_path,
            repos_params=repos_params,
            repo_filter=RepoFilter.of(config),
            wikis=config.wikis,
            previous_listing=previous[RELEASE_LISTING],
            note=pipeline.note,
        )
        copier = ArtifactCopier(
            client=client,
            git=git,
            sink=sink,
            dest_client=dest_client,
            dest_bucket=config.dest_bucket,
            dest_retry=dest_retry,
            staging=staging,
            previous=previous,
            note=pipeline.note,
            cleanup=config.cleanup,
            sleep=sleep,
            upload_check=UploadCheck(
                dest_client,
                config.dest_bucket,
                f"{PREFIX}/.asyncbackup-write-check",  # no owner's name starts with "."
                {},
                config.max_attempts,
                advice=_UPLOAD_ADVICE,
            ),
        )
        listing = listing_or_stop(
            lister.pages(),
            f"the repositories of {config.owner}",
            "check the token's access, --api-url and the network",
        )
        await pipeline.run(listing, copier.process)
        if pipeline.result.listing_complete and not lister.repositories:
            warn_nothing_selected(config.owner, lister)
        stopped = pipeline.result.stopped
        await last_try_at_uploads(state, manager, dest_client, config, stopped=stopped)
        log.info(
            "%d repositories listed (%d left out by filters); %d artifacts unchanged; "
            "%d API requests (%d answered 304); %d rate-limit pauses; git: %d clones, %d fetches",
            lister.repositories,
            len(lister.left_out),
            copier.unchanged,
            client.requests,
            client.not_modified,
            len(gate.waits),
            git.commands.count("clone"),
            git.commands.count("fetch"),
        )
        result = _as_reported(pipeline.result, copier)
        report = await in_thread_to_the_end(
            _conclude, config, manager, state, result, resumed, started
        )
        return dataclasses.replace(
            report, repositories=lister.repositories, repositories_left_out=len(lister.left_out)
        )
    raise AssertionError("unreachable")  # pragma: no cover - the with block always returns


async def open_api_client(
    stack: contextlib.AsyncExitStack,
    config: GitHubBackupConfig,
    token: str,
    *,
    clock: Clock | None = None,
    sleep: Sleep | None = None,
) -> GitHubClient:
    """The GitHub API client of ``config``'s job, living as long as ``stack``."""
    sleep = sleep or asyncio.sleep
    session = await stack.enter_async_context(
        aiohttp.ClientSession(
            headers={"User-Agent": USER_AGENT},
            timeout=aiohttp.ClientTimeout(
                sock_connect=config.connect_timeout, sock_read=config.read_timeout
            ),
            connector=aiohttp.TCPConnector(limit=config.api_concurrency + config.concurrency),
        )
    )
    return GitHubClient(
        session,
        config.api_url,
        token,
        gate=RateGate(clock=clock, sleep=sleep),
        slots=asyncio.Semaphore(config.api_concurrency),
        max_attempts=config.max_attempts,
        sleep=sleep,
    )


def warn_nothing_selected(owner: str, lister: Lister) -> None:
    """A pass that kept no repository completes, but is most often a mistyped filter: said,
    even with --quiet, as the S3 command says a job of no objects, so a backup of nothing is
    not taken for a backup."""
    if not lister.left_out:
        log.warning("nothing to back up: the token sees no repository of %s", owner)
        return
    name = next(iter(lister.left_out)).rpartition("/")[2]  # one left out, as an example
    log.warning(
        "nothing to back up: none of the %d repositories of %s passed the filters (%s); "
        "--include and --exclude match the repository's name alone, case-insensitive "
        "(%s, not %s/%s)",
        len(lister.left_out),
        owner,
        lister.filter.describe(),
        name,
        owner,
        name,
    )


async def resolve_owner(
    client: GitHubClient, config: GitHubBackupConfig
) -> tuple[str, dict[str, str]]:
    """Check the token and the owner; the path that lists the owner's repositories."""
    variable = config.token_env if config.token is None else "the token"
    try:
        me: str | None = None
        try:
            me = str((await client.get(client.url("/user"), attempts=2)).json()["login"])
        except GitHubError as exc:
            if exc.status == 401:
                raise ConfigError(
                    f"GitHub refused {variable} (401 {exc.message.split(' (GET')[0]}); check "
                    "that the token is valid and not expired"
                ) from None
            # app installation tokens cannot read /user; a rate limit that never lifted
            # (retryable) is no answer: the token's own private repositories would be missed
            if exc.status != 403 or exc.retryable:
                raise
        try:
            answer = await client.get(client.url(f"/users/{config.owner}"), attempts=2)
            account = answer.json()
        except GitHubError as exc:
            if exc.status == 404:
                raise ConfigError(
                    f"GitHub has no organisation or user named {config.owner!r}; check OWNER "
                    "(and --api-url for GitHub Enterprise Server)"
                ) from None
            raise
    except ObjectError as exc:
        raise StoreUnavailableError(
            f"cannot use the GitHub API at {config.api_url}: {exc}; check --api-url, the "
            "network and the token"
        ) from None
    _warn_if_public_only(client.token_kind, answer.headers.get("x-oauth-scopes"))
    login = str(account["login"])
    if account.get("type") == "Organization":
        return f"/orgs/{login}/repos", {"type": "all"}
    if me is not None and me.lower() == login.lower():
        # /users/{me}/repos lists only public repositories; this lists private ones too
        return "/user/repos", {"affiliation": "owner", "visibility": "all"}
    if me is None:
        log.warning(
            "GitHub refused GET /user to the token (an app's installation token?): whether "
            "%s is the token's own user cannot be told, and GET /users/%s/repos lists public "
            "repositories only, so private repositories of %s are not backed up",
            login,
            login,
            login,
        )
    return f"/users/{login}/repos", {"type": "owner"}


def _warn_if_public_only(kind: str, scopes: str | None) -> None:
    """A classic token (or an OAuth app's: the kinds that have scopes, which answers list in
    ``X-OAuth-Scopes``) without the ``repo`` scope is shown public repositories only: the
    lists leave every private one out, with no error to tell. Other tokens have permissions,
    not scopes (an empty header says nothing of them)."""
    if kind != "scoped" or scopes is None or "repo" in {s.strip() for s in scopes.split(",")}:
        return
    log.warning(
        "the token is a classic token without the 'repo' scope (its scopes: %s): GitHub "
        "shows it public repositories only, so private repositories are not backed up; "
        "give it the repo scope (or use a fine-grained token) to include them",
        scopes.strip() or "none",
    )


def check_same_server(path: Path, api_url: str) -> None:
    """A checkpoint of the same owner on another GitHub server is another job."""
    if not path.exists():
        return
    try:
        recorded = read_checkpoint(path).config.get("api_url")
    except CheckpointError:
        return  # load_or_create reports it
    if recorded not in (None, api_url):
        raise CheckpointMismatchError(
            f"checkpoint {path} belongs to a backup from {recorded}, not {api_url}; use "
            "--checkpoint-dir to keep this job's checkpoint elsewhere, or --ignore-checkpoints "
            "to replace it"
        )


def carry_forward(manager: CheckpointManager, state: CheckpointState, api_url: str) -> Path | None:
    """Seed a new checkpoint with the versions and ETags of the last completed one."""
    for candidate in reversed(archived_versions(manager.path)):  # the newest first
        try:
            old = read_checkpoint(candidate)
        except CheckpointError:
            continue
        same = (old.source_bucket, old.source_path, old.dest_bucket) == (
            state.source_bucket,
            state.source_path,
            state.dest_bucket,
        ) and old.config.get("api_url") in (None, api_url)
        if not same:
            continue
        for section in CARRIED_SECTIONS:
            value = old.extra.get(section)
            if isinstance(value, dict):
                state.extra[section] = value
        forget_untrusted_page_tags(candidate, old.config, state.extra)
        manager.flush(state)
        return candidate
    return None


#: a field every checkpoint has recorded since 27 Nov 2026 17:23 (1f0ace0); one without it
#: was written by an older version (or by hand)
_RECORDED_SINCE_TRUSTED_TAGS = "dest_endpoint_url"


def forget_untrusted_page_tags(path: Path, config: dict[str, Any], extra: dict[str, Any]) -> None:
    """Forget the ETags of lists and release listings in ``extra`` when the checkpoint at
    ``path`` (its ``config``) was written by a version older than 27 Nov 2026 17:23.

    Versions before b8a3f5b (lists) and b40546e (release listings) kept the ETags of a list
    whose last page was full: an item added after it goes on a page no kept ETag covers, while
    the kept ones answer 304, so the list was taken for unchanged - and with it every later
    run, which keeps the same ETags. No ETag of those versions says whether its last page was
    full: each such list is read whole once, and its ETags kept as this version keeps them.
    """
    if _RECORDED_SINCE_TRUSTED_TAGS in config:
        return
    forgotten = len(extra.pop(ETAGS, None) or ())
    listing = extra.get(RELEASE_LISTING)
    if isinstance(listing, dict):
        for entry in listing.values():
            if isinstance(entry, dict) and entry.get("pages"):
                entry["pages"] = []  # its assets stay: the fallback of a failed listing
                forgotten += 1
    if forgotten:
        log.info(
            "%s was written by an older version of asyncbackup, whose ETags could hide items "
            "added after a full last page: its %d lists are read whole once",
            path,
            forgotten,
        )


def new_pass(state: CheckpointState, ended: dict[str, Any]) -> int:
    """Make the checkpoint of a run that ended with errors the start of a new pass: every
    artifact done is looked at again (its ETag, ``pushed_at`` or ``updated_at`` says whether it
    changed), and the failed ones are tried again. An artifact that failed then and is now
    ``true`` was marked done by hand to skip it, and stays so; one that did not fail and is
    now ``false`` was reset by hand (the spec's "false" - jq, an editor) to be copied again:
    its version and ETags are forgotten, as ``checkpoint mark --pending`` does, or it would be
    found unchanged and not copied. Return how many are reset."""
    recorded = ended.get("failed")  # a list of keys, unless a hand edit made it another thing
    failed = (
        {key for key in recorded if isinstance(key, str)} if isinstance(recorded, list) else set()
    )
    reset = [key for key, done in state.files.items() if done is False and key not in failed]
    for section in (ETAGS, VERSIONS):
        notes = state.extra.get(section)
        if isinstance(notes, dict):
            for key in reset:
                notes.pop(key, None)
    again = [key for key, done in state.files.items() if done is True and key not in failed]
    for key in again:
        state.files[key] = False
    state.processed_files = sum(1 for done in state.files.values() if done is True)
    state.processed_bytes = 0  # the bytes copied by this pass (a listing's sizes are estimates)
    return len(again)


def _prune_notes(state: CheckpointState) -> None:
    """Forget versions, ETags and listings of artifacts no longer in the job."""
    for section in (ETAGS, VERSIONS):
        notes = state.extra.get(section)
        if isinstance(notes, dict):
            for key in [k for k in notes if k not in state.files]:
                del notes[key]
    skipped = state.extra.get(SKIPPED)
    if isinstance(skipped, dict):  # some are never listed (issues disabled): keep per repo
        for key in [k for k in skipped if _repo_of(k) + ".bundle" not in state.files]:
            del skipped[key]
    listing = state.extra.get(RELEASE_LISTING)
    if isinstance(listing, dict):
        for prefix in [p for p in listing if f"{p}.bundle" not in state.files]:
            del listing[prefix]


def _repo_of(key: str) -> str:
    """``github/<owner>/<repo>`` of any artifact key."""
    head, owner, rest = [*key.split("/", 2), "", ""][:3]
    repo = rest.split("/", 1)[0].removesuffix(".bundle").removesuffix(".wiki")
    return f"{head}/{owner}/{repo}"


def _as_reported(result: PipelineResult, copier: ArtifactCopier) -> PipelineResult:
    """This run's counts as its report gives them. An artifact found unchanged since the last
    backup (a 304, the same ``pushed_at``) or with nothing to copy (no wiki, issues turned
    off) is done, but was not copied: it is skipped (and, the first, unchanged)."""
    unchanged = min(copier.unchanged, result.done_files)
    skipped = min(len(copier.skipped), result.done_files - unchanged)
    return dataclasses.replace(
        result,
        done_files=result.done_files - unchanged - skipped,
        skipped_files=result.skipped_files + unchanged + skipped,
        unchanged_files=result.unchanged_files + unchanged,
    )


def _conclude(
    config: GitHubBackupConfig,
    manager: CheckpointManager,
    state: CheckpointState,
    result: PipelineResult,
    resumed: bool,
    started: float,
) -> BackupReport:
    if not result.stopped and result.listing_complete:
        _prune_notes(state)
        if state.errors:  # the next run is a new pass (``new_pass``)
            state.extra[ENDED_WITH_ERRORS] = {"at": now_iso(), "failed": sorted(state.errors)}
        manager.flush(state)
    return conclude(
        manager,
        state,
        result,
        on_complete=config.on_complete,
        keep_archives=config.keep_archives,
        resumed=resumed,
        duration=time.monotonic() - started,
    )


__all__ = ["carry_forward", "new_pass", "repo_prefix", "run_github_backup"]
