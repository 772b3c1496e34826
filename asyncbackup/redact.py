"""Credentials written into a URL (``http://user:password@host``) taken out of text.

An endpoint may be given with its credentials in it (``--endpoint-url``, ``--api-url``), and
the libraries underneath quote the URL they were sending to in their errors (botocore's
``Could not connect to the endpoint URL: "http://user:password@host/..."``). Every message
that leaves asyncbackup - an error, a log line, a traceback - goes through ``redact()``, which
drops the user info and keeps the rest of the URL (where it was going is useful, and no secret).
"""

from __future__ import annotations

import re

# scheme://userinfo@ : userinfo up to the last "@" before the host (a password may hold one)
_USER_INFO = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)[^\s/?#\"'<>\\]*@")


def redact(text: str) -> str:
    """``text`` with the user info of every URL in it removed."""
    if "@" not in text:
        return text
    return _USER_INFO.sub(r"\1", text)
