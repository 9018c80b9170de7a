"""Logging set-up for entry points: one format for API, workers and CLI.

Only entry points call :func:`configure_logging`; library modules just use
``logging.getLogger(__name__)``.

Messages often carry client input, such as a request path. Both formats
escape its control characters, so a newline in a path cannot start a forged
log line. Tracebacks keep their real newlines.
"""

from __future__ import annotations

import copy
import json
import logging
import sys
from datetime import datetime, timezone

__all__ = ["JsonFormatter", "TextFormatter", "configure_logging", "escape_control_characters"]

_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(processName)s] %(message)s"
_NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
# C0 controls, DEL and C1 controls become \xNN (\n, \r and \t by name). U+2028
# and U+2029 become \uNNNN too, because str.splitlines() and some log viewers
# break lines at them.
_ESCAPES = str.maketrans({
    **{chr(code): _NAMED_ESCAPES.get(chr(code), f"\\x{code:02x}") for code in (*range(0x20), *range(0x7f, 0xa0))},
    "\u2028": "\\u2028",
    "\u2029": "\\u2029",
})


def escape_control_characters(text: str) -> str:
    """Replace each control character of ``text`` by its backslash escape, such as ``\\n`` or ``\\x00``.

    Backslashes are kept as they are, so ``\\n`` in the output may also be a
    backslash and an n of the original text.
    """
    return text.translate(_ESCAPES)


class TextFormatter(logging.Formatter):
    """A :class:`logging.Formatter` that escapes control characters in the message."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - overrides logging's name.
        # Format a copy, because other handlers of the same record may format
        # record.message in their own way.
        escaped = copy.copy(record)
        escaped.message = escape_control_characters(record.message)
        return super().formatMessage(escaped)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, process, message, exception.

    The message has its control characters escaped, so a consumer that prints
    it shows one line. The exception keeps its newlines.
    """

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat().replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "process": record.processName,
            "message": escape_control_characters(record.getMessage()),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(level: str = "INFO", fmt: str = "text") -> None:
    """Send log records to standard error in the text or JSON format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter(_TEXT_FORMAT))
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level.upper())
