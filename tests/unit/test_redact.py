"""``redact()``: the user info of URLs taken out of text, nothing else changed."""

from __future__ import annotations

import pytest

from asyncbackup.errors import ObjectError
from asyncbackup.redact import redact


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('endpoint URL: "http://u:pw@127.0.0.1:9/b/k".', 'endpoint URL: "http://127.0.0.1:9/b/k".'),
        ("https://u:p@ss@host/a?x=a@b", "https://host/a?x=a@b"),  # an "@" in the password
        ("HTTPS://token@host", "HTTPS://host"),
        ("mail bob@example.com, https://host/a@b", "mail bob@example.com, https://host/a@b"),
    ],
)
def test_redact(text: str, expected: str) -> None:
    assert redact(text) == expected


def test_object_errors_are_redacted() -> None:
    error = ObjectError("EndpointConnectionError", "to http://u:secret@host/k")
    assert "secret" not in str(error) and "secret" not in error.message
