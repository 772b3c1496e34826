"""The ``process`` step of a GitHub backup: copy one artifact durably, or find it unchanged.

An artifact is marked done only once its object is at the destination: uploaded now (and
verified by the sink), or found there unchanged since the last complete backup, which is when
``pushed_at`` (bundles), the wiki's refs, a release asset's ``updated_at`` and size, or every
page's ETag (metadata, answered 304) have not moved *and* the object is still in the bucket.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import FatalRunError, IntegrityError, ObjectError
from ..fetched import FetchedObject
from ..localio import remove_temporary
from ..pipeline import WorkItem
from ..retry import (
    ACCESS_DENIED,
    Backoff,
    RetryLog,
    RetryPolicy,
    raise_if_fatal,
    worth_another_copy,
)
from ..s3client import S3Client, UploadCheck
from ..sinks.s3 import S3Sink
from ..staging import Staging, encode_segment, raise_if_unusable
from .client import GitHubClient, GitHubError
from .git import GitError, GitRunner, refs_digest
from .listing import (
    ASSET,
    BUNDLE,
    ETAGS,
    METADATA_BY_KIND,
    PREFIX,
    SKIPPED,
    VERSIONS,
    WIKI,
    Artifact,
    MetadataKind,
    Note,
    turned_off,
)
from .ratelimit import Sleep

log = logging.getLogger("asyncbackup")

_ATTEMPTS = 3
_CHUNK = 1024 * 1024


def file_md5(path: Path) -> tuple[int, bytes]:
    """(size, MD5) of a file, read in chunks (blocking; run in a thread)."""
    digest = hashlib.md5(usedforsecurity=False)
    size = 0
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.digest()


def _component(name: str) -> str:
    """A name from the API as one path component: a name is not a path (``/`` is encoded
    too; ``encode_segment`` encoded ``%`` already, so distinct names stay distinct)."""
    return encode_segment(name).replace("/", "%2F")


class Skip(Exception):
    """Nothing to copy for this artifact (an empty repository, no wiki...): done, recorded."""


class ArtifactCopier:
    def __init__(
        self,
        *,
        client: GitHubClient,
        git: GitRunner,
        sink: S3Sink,
        dest_client: S3Client,
        dest_bucket: str,
        dest_retry: RetryPolicy,
        staging: Staging,
        previous: Mapping[str, Mapping[str, Any]],
        note: Note,
        cleanup: bool,
        sleep: Sleep = asyncio.sleep,
        upload_check: UploadCheck,
    ) -> None:
        self.client = client
        self.git = git
        self.sink = sink
        self.dest_client = dest_client
        self.dest_bucket = dest_bucket
        self.dest_retry = dest_retry
        self.staging = staging
        self.previous = previous
        self.note = note
        self.cleanup = cleanup
        self.sleep = sleep
        #: asked when an upload is refused: does the destination refuse every upload?
        self.upload_check = upload_check
        self.backoff = Backoff(base=2.0, cap=30.0)
        self.unchanged = 0
        self.skipped: dict[str, str] = {}
        self.retries = RetryLog()

    async def process(self, item: WorkItem) -> int:
        """Copy ``item``; its size in bytes (0 when unchanged or nothing to copy)."""
        assert isinstance(item, Artifact)
        for attempt in range(1, _ATTEMPTS + 1):
            try:
                return await self._copy(item)
            except Skip as skip:
                reason = str(skip)
                self.skipped[item.key] = reason
                self.note(SKIPPED, item.key, reason)
                log.info("skipping %s: %s", item.key, reason)
                return 0
            except OSError as exc:
                raise_if_unusable(exc, self.staging.base)
                raise ObjectError("LocalIOError", f"{exc.strerror} ({exc.filename})") from exc
            except ObjectError as exc:
                if isinstance(exc, GitHubError) and exc.status == 401:
                    raise FatalRunError(
                        "GitHub stopped accepting the token (401); check that it has not "
                        "expired or been revoked, then run again to resume"
                    ) from exc
                # the destination refuses the keys or the bucket, or the clock is wrong
                raise_if_fatal(exc, item.key, "check the destination's credentials and bucket")
                if exc.code in ACCESS_DENIED:
                    refusal = await self.upload_check.refusal()
                    if refusal is not None:  # not the artifact's: every upload is refused
                        raise FatalRunError(
                            f"stopping: {exc} (on {item.key!r}); {refusal}, then run again "
                            "to resume"
                        ) from exc
                if not worth_another_copy(exc) or attempt == _ATTEMPTS:
                    raise
                self.retries.retrying(item.key, exc)
                await self.sleep(self.backoff.delay(attempt))
        raise AssertionError("unreachable")

    async def _copy(self, item: Artifact) -> int:
        try:
            if item.kind == BUNDLE:
                return await self._bundle(item, item.version)
            if item.kind == WIKI:
                refs = await self.git.ls_remote(item.url)
                if refs is None:
                    raise Skip("the repository has no wiki yet")
                if not refs:
                    raise Skip("the wiki is empty")
                return await self._bundle(item, refs_digest(refs))
            if item.kind == ASSET:
                return await self._asset(item)
            size = await self._metadata(item)
            if item.unlisted:  # copied, but the assets it lists were not: not done
                raise ObjectError(
                    "ReleaseAssetsNotListed",
                    f"the release assets could not be listed ({item.unlisted}); run again "
                    "to copy them",
                )
            return size
        except GitHubError as exc:
            if exc.status == 409:
                raise Skip(f"the repository is empty (409: {exc.message})") from exc
            if exc.status == 410 and item.kind in ("issues", "issue-comments"):
                raise Skip("issues are disabled for this repository (410)") from exc
            # a feature turned off (pull requests) answers a bare 404, as a repository
            # gone: the repository's record tells them apart
            meta = METADATA_BY_KIND.get(item.kind)
            if exc.status == 404 and meta is not None and meta.needs:
                reason = await self._turned_off(item, meta)
                if reason is not None:
                    raise Skip(f"{reason} (404)") from exc
            raise
        except GitError as exc:
            if exc.code == "GitEmpty":
                raise Skip("the repository has no commits") from exc
            raise

    # -- helpers ------------------------------------------------------------------------

    def _relative(self, key: str) -> str:
        return key.removeprefix(f"{PREFIX}/")

    async def _at_destination(self, key: str) -> bool:
        try:
            await self.dest_retry.call(
                lambda: self.dest_client.head_object(Bucket=self.dest_bucket, Key=key)
            )
        except ObjectError as exc:
            if exc.code in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True

    async def _turned_off(self, item: Artifact, meta: MetadataKind) -> str | None:
        """Why the repository's record says it has no ``meta``, or None."""
        try:
            answer = await self.client.get(self.client.url(f"/repos/{item.owner}/{item.repo}"))
            record = answer.json()
        except ObjectError:
            return None  # the 404 stands
        return turned_off(meta, record, lenient=True) if isinstance(record, dict) else None

    async def _unchanged(self, key: str, version: str) -> bool:
        before = self.previous.get(VERSIONS, {}).get(key)
        if version and before == version and await self._at_destination(key):
            self.unchanged += 1
            log.debug("%s is unchanged since the last backup", key)
            return True
        return False

    async def _upload(
        self, key: str, tmp: Path, size: int, md5: bytes, metadata: dict[str, Any]
    ) -> None:
        """Move ``tmp`` to its staged path, upload it, and clean up if asked."""
        path = await asyncio.to_thread(self.staging.commit, tmp, self._relative(key))
        try:
            fetched = FetchedObject(key, path, size, md5, "", metadata)
            await self.sink.put(fetched, key)
        finally:
            if self.cleanup:
                await asyncio.to_thread(self.staging.remove, path)

    # -- the kinds of artifact ----------------------------------------------------------

    async def _bundle(self, item: Artifact, version: str) -> int:
        if await self._unchanged(item.key, version):
            return 0
        name = f"{item.repo}.wiki.git" if item.kind == WIKI else f"{item.repo}.git"
        mirror = self.staging.root / ".mirrors" / _component(item.owner) / _component(name)
        await self.git.mirror(item.url, mirror)
        if item.kind == BUNDLE and await self.git.uses_lfs(mirror):
            log.warning(
                "%s/%s keeps files in Git LFS: its bundle holds their LFS pointers, not their "
                "content (a mirror clone fetches no LFS object); back those up separately",
                item.owner,
                item.repo,
            )
        tmp = self.staging.temp_path()
        try:
            try:
                await self._sound_bundle(mirror, tmp)
                size, md5 = await asyncio.to_thread(file_md5, tmp)
                meta_name = "refs-sha256" if item.kind == WIKI else "pushed-at"
                await self._upload(
                    item.key,
                    tmp,
                    size,
                    md5,
                    {"ContentType": "application/x-git-bundle", "Metadata": {meta_name: version}},
                )
            finally:
                await remove_temporary(tmp)
        finally:
            if self.cleanup:
                await asyncio.to_thread(shutil.rmtree, mirror, True)
        self.note(VERSIONS, item.key, version)
        return size

    async def _sound_bundle(self, mirror: Path, out: Path) -> None:
        """Bundle ``mirror`` to ``out`` and check it reads whole. A mirror that gives no sound
        bundle is damaged (on disk, by a crash): it is removed, and the next try clones."""
        try:
            await self.git.bundle(mirror, out)
            await self.git.verify(mirror, out, self.staging.temp_path())
        except GitError as exc:
            if exc.code == "GitEmpty":
                raise
            await asyncio.to_thread(shutil.rmtree, mirror, True)
            raise GitError(
                "GitBundleFailed",
                f"{exc.message} (the mirror is removed: the next try clones again)",
                retryable=True,
            ) from exc

    async def _metadata(self, item: Artifact) -> int:
        meta = METADATA_BY_KIND[item.kind]
        previous = self.previous.get(ETAGS, {}).get(item.key) or None
        tmp = self.staging.temp_path()
        try:
            fetched = await self.client.fetch_to_file(
                item.url, tmp, previous=previous, paginated=meta.paginated, by_since=meta.by_since
            )
            if fetched.unchanged:
                if await self._at_destination(item.key):
                    if not item.unlisted:  # else it fails all the same (``_copy``): not done
                        self.unchanged += 1
                    log.debug("%s is unchanged (304)", item.key)
                    return 0
                fetched = await self.client.fetch_to_file(
                    item.url, tmp, previous=None, paginated=meta.paginated, by_since=meta.by_since
                )
            await self._upload(
                item.key, tmp, fetched.size, fetched.md5, {"ContentType": "application/json"}
            )
        finally:
            await remove_temporary(tmp)
        self.note(ETAGS, item.key, fetched.pages or None)
        return fetched.size

    async def _asset(self, item: Artifact) -> int:
        if await self._unchanged(item.key, item.version):
            return 0
        tmp = self.staging.temp_path()
        try:
            size, md5 = await self.client.download(item.url, tmp)
            if size != item.size:
                raise IntegrityError(f"downloaded {size} bytes of the asset, expected {item.size}")
            await self._upload(
                item.key, tmp, size, md5, {"ContentType": "application/octet-stream"}
            )
        finally:
            await remove_temporary(tmp)
        self.note(VERSIONS, item.key, item.version)
        return size
