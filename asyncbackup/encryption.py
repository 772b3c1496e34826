"""Whether a destination applied the server-side encryption ``--sse`` asked for.

S3 names the encryption it applied in its answer to every upload and copy
(``x-amz-server-side-encryption``); a server that ignores the request's header answers
without it, or names another. Such a copy is no backup the user asked for: not done.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import ObjectError
from .retry import RetryPolicy

#: the code of ``EncryptionNotApplied``, as a checkpoint's error records it ("CODE: message")
NOT_APPLIED = "EncryptionNotApplied"


def stored_unencrypted(errors: Mapping[str, str]) -> frozenset[str]:
    """The keys of ``errors`` (a checkpoint's) whose copy the destination stored without the
    encryption asked for: it is there with the source's size and ETag, yet no copy."""
    return frozenset(key for key, error in errors.items() if error.startswith(f"{NOT_APPLIED}:"))


class EncryptionNotApplied(ObjectError):
    """The destination's answer names another encryption than ``--sse`` asked for (or none)."""

    def __init__(self, what: str, wanted: str, applied: str | None) -> None:
        stored = f"with {applied}" if applied else "unencrypted (its answer names no encryption)"
        super().__init__(
            NOT_APPLIED,
            f"the destination stored {what} {stored}, not with --sse {wanted}: it does not "
            "apply the encryption asked for",
        )
        self.wanted = wanted
        self.applied = applied


def check_applied(asked: Mapping[str, Any], answer: Mapping[str, Any], what: str) -> None:
    """Raise ``EncryptionNotApplied`` unless ``answer`` (of a request made with the upload
    parameters ``asked``) names the encryption ``asked`` asks for; ``what`` is the object,
    as the message names it."""
    wanted = asked.get("ServerSideEncryption")
    if wanted is None:
        return
    applied = answer.get("ServerSideEncryption")
    if applied != wanted:
        raise EncryptionNotApplied(what, wanted, applied)


@dataclass(frozen=True, slots=True)
class AppliedCheck:
    """What a sink checks of the encryption its uploads or copies into ``bucket`` (made with
    the upload parameters ``asked``) were stored with."""

    asked: Mapping[str, Any]
    client: Any
    bucket: str
    retry: RetryPolicy
    #: False with ``--dest-write-only``: the credentials may not read the destination
    readable: bool

    async def confirm(self, answer: Mapping[str, Any], key: str) -> None:
        """``check_applied`` of the answer to the upload or copy of ``key``; one that names
        no encryption at all is not taken for none, but checked against the object's HEAD
        (with ``retry``): some servers apply the encryption and leave its header off a
        copy's or a multipart completion's answer (s3s-project/s3s#325, floci-io/floci#2145).
        A HEAD is sent only then, and never when the destination is not ``readable`` (the
        answer then decides, as it says)."""
        try:
            check_applied(self.asked, answer, key)
        except EncryptionNotApplied as exc:
            if exc.applied is not None or not self.readable:
                raise
            head = functools.partial(self.client.head_object, Bucket=self.bucket, Key=key)
            check_applied(self.asked, await self.retry.call(head), key)
