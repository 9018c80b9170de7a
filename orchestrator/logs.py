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
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import datetime, timezone

__all__ = [
    "ContextFilter",
    "JsonFormatter",
    "TextFormatter",
    "bind_log_context",
    "clear_log_context",
    "configure_logging",
    "escape_control_characters",
    "log_context",
]

# Ids of the work in progress (execution_id, node_id, attempt, task_id,
# request_id), added to every record logged while it runs, whichever module logs.
_CONTEXT: ContextVar[dict[str, str]] = ContextVar("gl_orchestrator_log_context", default={})


@contextmanager
def log_context(**ids: object) -> Iterator[None]:
    """Add ``ids`` to every record logged inside the block, on top of the ids already bound."""
    token = _CONTEXT.set({**_CONTEXT.get(), **{key: str(value) for key, value in ids.items() if value is not None}})
    try:
        yield
    finally:
        _CONTEXT.reset(token)


def bind_log_context(**ids: object) -> None:
    """Add ``ids`` to the current context until the enclosing :func:`log_context` block ends."""
    _CONTEXT.set({**_CONTEXT.get(), **{key: str(value) for key, value in ids.items() if value is not None}})


def clear_log_context() -> None:
    """Drop every bound id, for a thread that serves one request after another."""
    _CONTEXT.set({})


class ContextFilter(logging.Filter):
    """Attach the bound ids to each record as ``record.context``."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.context = dict(_CONTEXT.get())
        return True


def _missing_ids(record: logging.LogRecord, message: str) -> str:
    """Return `` key=value`` for each bound id the message does not already name."""
    context: dict[str, str] = getattr(record, "context", {})
    return "".join(f" {key}={value}" for key, value in context.items() if f"{key}=" not in message)

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
        escaped.message = escape_control_characters(record.message + _missing_ids(record, record.message))
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
        # The bound ids as fields of their own, for log search by execution, node, attempt or request.
        entry.update(getattr(record, "context", {}))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(level: str = "INFO", fmt: str = "text") -> None:
    """Send log records to standard error in the text or JSON format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(ContextFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter(_TEXT_FORMAT))
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level.upper())
