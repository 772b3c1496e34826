"""The part layout of a source's multipart object, asked with ``HEAD ?partNumber=``."""

from __future__ import annotations

import logging
from typing import Any

from botocore.exceptions import ClientError

from ..etags import answered_etag
from ..pipeline import for_each_bounded
from ..retry import RetryPolicy, error_code, sse_c_unreadable
from ..s3client import S3Client

log = logging.getLogger("asyncbackup")

#: how a server that does not do ``HEAD ?partNumber=`` answers it. The error of a HEAD has no
#: body, so botocore names it by its status: "400" here is a 400 the server gave no other name.
_PART_NUMBER_REFUSALS = frozenset({"NotImplemented", "InvalidArgument", "InvalidRequest", "400"})

#: how many ``HEAD ?partNumber=`` of one object are in flight at once (``sizes``)
_LAYOUT_PROBES = 8


class _Refused(Exception):
    """The server refuses ``HEAD ?partNumber=``."""


def refuses_part_number(exc: ClientError) -> bool:
    """Whether ``exc`` is a server saying it does not do ``HEAD ?partNumber=`` (a 501, or a
    400 without another name), not a failure of the request as such (throttling, a 5xx worth
    a retry, AccessDenied, NoSuchKey)."""
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return status == 501 or error_code(exc) in _PART_NUMBER_REFUSALS


class FirstPartProbe:
    """``HEAD ?partNumber=1`` of a bucket's multipart objects: the first part's length tells
    an object's layout.

    ``head`` answers None when the server refuses the partNumber parameter (some S3-compatible
    servers do): the layout is then unknown, as it is for a non-uniform one, and the object is
    copied in parts of our size, checked as any such copy is (a staged one by its length and
    the MD5 of every part at the destination), but not against the source's multipart ETag.
    Logged once.
    """

    def __init__(self, client: S3Client, bucket: str, retry: RetryPolicy) -> None:
        self.client = client
        self.bucket = bucket
        self.retry = retry
        self.refused = 0  # objects whose HEAD ?partNumber=1 the server refused
        #: keys whose parts were found not all of one size, though the first part suggested
        #: it (``S3Source._check_other_layout``): a copy made again goes in parts of our size
        self.uneven: set[str] = set()

    async def head(self, key: str, number: int = 1) -> dict[str, Any] | None:
        async def attempt() -> dict[str, Any] | None:
            try:
                # No If-Match: some servers answer with the part's ETag. A change in between
                # shows up as an ETag mismatch of the copy, which is retried.
                answer: dict[str, Any] = await self.client.head_object(
                    Bucket=self.bucket, Key=key, PartNumber=number
                )
            except ClientError as exc:
                if not refuses_part_number(exc):
                    raise
                if await self._unreadable(key, exc):
                    raise sse_c_unreadable() from exc
                self._refused(error_code(exc))
                return None
            # without its headers it tells no layout; taken for a refusal, it would leave the
            # download unchecked against the source's ETag
            answered_etag(answer.get("ETag"), f"HEAD ?partNumber={number} of {key}")
            return answer

        return await self.retry.call(attempt)

    async def sizes(self, key: str, parts: int, total: int) -> list[int] | None:
        """The length of each of an object's ``parts`` (a ``HEAD ?partNumber=`` each, a few
        at a time) of ``total`` bytes in all, or None when the server refuses them, or
        ignores them: every part answered with the whole object's length (MinIO did until
        mid-2020), which would fail every copy checked against them."""
        sizes = [0] * parts

        async def probe(index: int) -> None:
            head = await self.head(key, index + 1)
            if head is None:
                raise _Refused
            sizes[index] = int(head.get("ContentLength", 0))

        try:
            await for_each_bounded(range(parts), _LAYOUT_PROBES, probe)
        except _Refused:
            return None
        if parts > 1 and total > 0 and all(size == total for size in sizes):
            self._refused("its answers are the whole object's")
            return None
        return sizes

    async def _unreadable(self, key: str, refusal: ClientError) -> bool:
        """Whether ``refusal`` (a 400 without a name: a HEAD's error has no body) is the
        object's, not the partNumber parameter's: S3 answers any HEAD of an SSE-C object made
        without its key so. A plain HEAD answered the same tells; the object then fails, in
        an error that says SSE-C (a --direct copy makes no GET that would say more than this
        400), and the bucket is not taken for one that refuses part-number HEADs (which would
        leave every later multipart object unchecked against its ETag)."""
        status = refusal.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if status != 400:
            return False
        try:
            await self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 400:
                return True
            raise
        return False

    def _refused(self, why: str) -> None:
        self.refused += 1
        if self.refused == 1:  # the server answers every object the same way
            log.warning(
                "bucket %s refuses HEAD ?partNumber=1 (%s): multipart objects are copied in "
                "parts of --part-size, so the copies' ETags differ from the source's",
                self.bucket,
                why,
            )
