"""Object keys, and other text from outside, made safe to print on a terminal.

A key is any UTF-8 string: it can hold a newline (which would forge a line of the summary or
the log), a tab (a column of ``checkpoint errors``) or an escape sequence (which would rewrite
the operator's terminal). ``printable()`` writes each control character - C0, DEL and C1 - as
a backslash escape (``\\n``, ``\\t``, ``\\x1b``...); everything else, non-ASCII letters and
backslashes included, is left as it is, so ordinary keys print unchanged. Machine outputs
(``--report``, JSON logs, the checkpoint) keep keys exact: JSON escapes them itself.
"""

from __future__ import annotations

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_TABLE = {
    code: _NAMED.get(chr(code), f"\\x{code:02x}")
    for code in (*range(0x20), 0x7F, *range(0x80, 0xA0))
}


def printable(text: str) -> str:
    """``text`` with its control characters escaped (see the module docstring)."""
    return text.translate(_TABLE)
