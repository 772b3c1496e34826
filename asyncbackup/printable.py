"""Object keys, and other text from outside, made safe to print on a terminal.

A key is any UTF-8 string: it can hold a newline (which would forge a line of the summary or
the log), a tab (a column of ``checkpoint errors``) or an escape sequence (which would rewrite
the operator's terminal). ``printable()`` writes each control character - C0, DEL and C1 - as
a backslash escape (``\\n``, ``\\t``, ``\\x1b``...), and so the Unicode line and paragraph
separators (U+2028, U+2029: a line break to ``str.splitlines`` and many editors) and the
bidirectional controls (U+061C, U+200E, U+200F, U+202A-U+202E, U+2066-U+2069: they reorder
what follows, so ``data/x-\\u202efdp.exe`` shows as ``data/x-exe.pdf``) as ``\\u2028``...;
everything else, non-ASCII letters (right-to-left ones too) and backslashes included, is left
as it is, so ordinary keys print unchanged. Machine outputs (``--report``, JSON logs, the
checkpoint) keep keys exact: JSON escapes them itself.
"""

from __future__ import annotations

import os
from typing import Any

import orjson

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_TABLE = {
    code: _NAMED.get(chr(code), f"\\x{code:02x}")
    for code in (*range(0x20), 0x7F, *range(0x80, 0xA0))
}
_TABLE.update(
    (code, f"\\u{code:04x}")
    for code in (0x061C, 0x200E, 0x200F, 0x2028, 0x2029, *range(0x202A, 0x202F))
)
_TABLE.update((code, f"\\u{code:04x}") for code in range(0x2066, 0x206A))


def printable(text: str) -> str:
    """``text`` with its control characters escaped (see the module docstring)."""
    return text.translate(_TABLE)


def escape_surrogates(value: object) -> str:
    """``str(value)`` with the bytes of a file name that are not UTF-8 (lone surrogates, as
    Python reads them) written ``\\udce9``, as text output shows them: JSON (orjson) cannot
    hold them as they are."""
    return str(value).encode("utf-8", "backslashreplace").decode("utf-8")


def without_surrogates(value: Any) -> Any:
    """``value`` (JSON-ready: dicts, lists, strings, paths...) with ``escape_surrogates``
    applied to every string and path in it."""
    if isinstance(value, dict):
        return {without_surrogates(k): without_surrogates(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [without_surrogates(item) for item in value]
    if isinstance(value, (str, os.PathLike)):
        return escape_surrogates(value)
    return value


def json_dumps(data: Any, option: int = 0) -> bytes:
    """``orjson.dumps`` of ``data`` (``str()`` of what JSON has no type for); where a string
    holds bytes of a file name that are not UTF-8, which orjson refuses, those escaped
    (``without_surrogates``)."""
    try:
        return orjson.dumps(data, option=option, default=str)
    except TypeError:
        return orjson.dumps(without_surrogates(data), option=option, default=escape_surrogates)
