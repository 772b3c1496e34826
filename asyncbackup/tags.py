"""``--copy-tags``: an object's tags (S3 object tagging), read from the source for its copy.

A GetObject or HeadObject answer says how many tags an object has (``x-amz-tagging-count``),
so only tagged objects cost a GetObjectTagging. The tags go with the copy as the ``Tagging``
parameter of PutObject or CreateMultipartUpload (the ``x-amz-tagging`` header, URL-encoded as
S3 asks); a single server-side CopyObject copies them itself (``TaggingDirective: COPY``).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, urlencode

from botocore.exceptions import ClientError

from .errors import ObjectError
from .retry import ACCESS_DENIED, error_code

#: the request parameter (and ``FetchedObject.metadata`` entry) that carries the tags
TAGGING = "Tagging"


def tag_count(answer: dict[str, Any]) -> int:
    """How many tags a GetObject or HeadObject ``answer`` says the object has."""
    try:
        return int(answer.get("TagCount") or 0)
    except (TypeError, ValueError):
        return 0


def encode_tags(tag_set: list[dict[str, str]]) -> str:
    """A GetObjectTagging ``TagSet`` as the URL-encoded ``x-amz-tagging`` value (``%20`` for a
    space: ``+`` would be read back as a plus)."""
    return urlencode([(tag["Key"], tag.get("Value", "")) for tag in tag_set], quote_via=quote)


async def read_tags(client: Any, bucket: str, key: str, version_id: str | None) -> str:
    """The tags of ``key`` (of the version read, when the answer named one), encoded for the
    copy. Made without a retry of its own: the caller's request is retried with it."""
    params: dict[str, Any] = {"Bucket": bucket, "Key": key}
    if version_id and version_id != "null":
        params["VersionId"] = version_id
    try:
        answer = await client.get_object_tagging(**params)
    except ClientError as exc:
        if error_code(exc) in ACCESS_DENIED:
            raise ObjectError(
                "AccessDenied",
                f"reading the tags of {key!r} was refused (GetObjectTagging): --copy-tags needs "
                "s3:GetObjectTagging on the source",
                retryable=False,
            ) from exc
        raise
    return encode_tags(list(answer.get("TagSet", ())))
