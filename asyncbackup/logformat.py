"""Log output of the CLI: readable text, or JSON lines for log shippers (``--log-format json``).

A JSON record is one line: ``time`` (ISO 8601, UTC), ``level``, ``logger``, ``message``, then
the record's own fields (what was passed as ``extra=``), and ``exception`` when there is one.
"""

from __future__ import annotations

import codecs
import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

import orjson

from .printable import json_dumps, printable
from .redact import redact

LOG_FORMATS = ("text", "json")
_STANDARD = frozenset(
    [*logging.LogRecord("", 0, "", 0, "", None, None).__dict__, "message", "asctime", "taskName"]
)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name, value in record.__dict__.items():
            if name not in _STANDARD and not name.startswith("_") and name not in out:
                out[name] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return redact(_json_line(out))


def _json_line(out: dict[str, Any]) -> str:
    """``out`` as one line of JSON that the stderr of the moment can carry: non-ASCII
    characters escaped (``\\u00e9``) where its encoding lacks them (``PYTHONIOENCODING=ascii``,
    the C locale with ``PYTHONUTF8=0``), which otherwise wrote ``\\xe9``, no JSON escape; the
    bytes of a file name that are not UTF-8 (lone surrogates, which orjson refuses) as
    ``\\udcff``, as the text format shows them."""
    text = json_dumps(out).decode()
    if text.isascii() or _stderr_is_utf8():
        return text
    return json.dumps(orjson.loads(text), separators=(",", ":"))  # ensure_ascii


def _stderr_is_utf8() -> bool:
    encoding = getattr(sys.stderr, "encoding", None) or "utf-8"
    try:
        return codecs.lookup(encoding).name == "utf-8"
    except LookupError:
        return False


class TextFormatter(logging.Formatter):
    """``HH:MM:SS LEVEL message``, the message's control characters escaped (``printable``:
    a key with a newline cannot forge a log line); a traceback keeps its lines."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = printable(record.message)
        return super().formatMessage(record)

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))  # the message and its traceback


class StderrHandler(logging.StreamHandler[TextIO]):
    """Writes to whatever ``sys.stderr`` is at the time of the record.

    So a progress bar that redirects ``sys.stderr`` while it is drawn gets the log lines and
    prints them above itself instead of through it.
    """

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass


def make_handler(log_format: str) -> logging.Handler:
    handler = StderrHandler()
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter())
    return handler
