"""Tests of the log formatters: a message cannot start a forged log line."""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.logs import (
    ContextFilter,
    JsonFormatter,
    TextFormatter,
    bind_log_context,
    clear_log_context,
    configure_logging,
    escape_control_characters,
    log_context,
)

FORGING_PATH = "/api/v1/orchestrator/dags\r\n2026-01-01 00:00:00,000 INFO api.auth [MainProcess] forged\x00\x1b[31m\x7f"


def make_record(message: str, *args: object, exc_info: bool = False) -> logging.LogRecord:
    info = sys.exc_info() if exc_info else None
    return logging.LogRecord("api.auth", logging.INFO, __file__, 1, message, args, info)


@pytest.fixture
def root_logger() -> Iterator[logging.Logger]:
    """The root logger, with its handlers and level restored after the test."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield root
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


@pytest.mark.parametrize(("raw", "escaped"), [
    ("a\nb", "a\\nb"),
    ("a\rb", "a\\rb"),
    ("a\tb", "a\\tb"),
    ("a\x00b", "a\\x00b"),
    ("a\x1bb", "a\\x1bb"),
    ("a\x7fb", "a\\x7fb"),
    ("a\x85b", "a\\x85b"),
    ("a\u2028b", "a\\u2028b"),
    ("ünïcode → ok \\n", "ünïcode → ok \\n"),
])
def test_escape_control_characters(raw: str, escaped: str) -> None:
    assert escape_control_characters(raw) == escaped


def test_text_message_on_one_line() -> None:
    formatted = TextFormatter("%(levelname)s %(message)s").format(make_record("request rejected path=%s", FORGING_PATH))
    assert formatted.splitlines() == [formatted]
    assert "dags\\r\\n2026-01-01" in formatted
    assert "forged\\x00\\x1b[31m\\x7f" in formatted
    assert formatted.isprintable()


def test_text_traceback_keeps_newlines() -> None:
    try:
        raise ValueError("first line\nsecond line")
    except ValueError:
        record = make_record("request failed path=%s", "/x\ny", exc_info=True)
    formatted = TextFormatter("%(message)s").format(record)
    lines = formatted.splitlines()
    assert lines[0] == "request failed path=/x\\ny"
    assert lines[1] == "Traceback (most recent call last):"
    assert "ValueError: first line" in lines
    assert "second line" in lines


def test_text_record_unchanged() -> None:
    record = make_record("path=%s", "/x\ny")
    TextFormatter("%(message)s").format(record)
    assert record.getMessage() == "path=/x\ny"


def test_json_message_escaped() -> None:
    line = JsonFormatter().format(make_record("request rejected path=%s", FORGING_PATH))
    entry = json.loads(line)
    assert line.splitlines() == [line]
    assert entry["message"].isprintable()
    assert entry["message"].startswith("request rejected path=/api/v1/orchestrator/dags\\r\\n2026")
    assert entry["logger"] == "api.auth"


def test_json_exception_keeps_newlines() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = make_record("request failed path=%s", "/x\ny", exc_info=True)
    entry = json.loads(JsonFormatter().format(record))
    assert entry["message"] == "request failed path=/x\\ny"
    assert entry["exception"].startswith("Traceback (most recent call last):\n")
    assert entry["exception"].endswith("ValueError: boom")


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_configure_logging_escapes(fmt: str, root_logger: logging.Logger,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO", fmt)
    logging.getLogger("api.auth").info("request rejected path=%s", FORGING_PATH)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1
    message = json.loads(lines[0])["message"] if fmt == "json" else lines[0]
    assert "forged\\x00" in message


def _formatted(formatter: logging.Formatter, message: str, *args: object) -> str:
    record = logging.LogRecord("orchestrator.scheduler", logging.INFO, __file__, 1, message, args, None)
    ContextFilter().filter(record)
    return formatter.format(record)


def test_context_ids_reach_every_line() -> None:
    text = TextFormatter("%(message)s")
    clear_log_context()
    with log_context(execution_id="e-1", node_id="n-1", task_id="t-1"):
        bind_log_context(attempt=2)
        assert _formatted(text, "checkpoint saved bytes=%d", 12) == (
            "checkpoint saved bytes=12 execution_id=e-1 node_id=n-1 task_id=t-1 attempt=2")
        # An id the message already names is not repeated.
        assert _formatted(text, "node started execution_id=%s", "e-1") == (
            "node started execution_id=e-1 node_id=n-1 task_id=t-1 attempt=2")
        entry = json.loads(_formatted(JsonFormatter(), "node started"))
        assert {key: entry[key] for key in ("execution_id", "node_id", "task_id", "attempt")} == {
            "execution_id": "e-1", "node_id": "n-1", "task_id": "t-1", "attempt": "2"}
    assert _formatted(text, "idle") == "idle"


def test_api_lines_carry_request_id(tmp_path: Path, sqlite_url: str, unique_queue: str) -> None:
    from tests.test_api import AUTH, PREFIX, TOKEN, Api, make_settings

    api = Api(make_settings(tmp_path, sqlite_url, unique_queue))
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(ContextFilter())
    handler.setFormatter(TextFormatter("%(message)s"))
    logger = logging.getLogger("api")
    logger.addHandler(handler)
    previous = logger.level
    logger.setLevel(logging.INFO)
    try:
        response = api.client.get(f"{PREFIX}/executions/00000000-0000-4000-8000-000000000000",
                                  headers={**AUTH, "X-Request-ID": "req-42"})
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)
        api.close()
    assert response.status_code == 404
    lines = stream.getvalue().splitlines()
    assert lines, "the API logged nothing for a 404"
    assert all("request_id=req-42" in line for line in lines)
    assert TOKEN not in stream.getvalue()
    # The request id does not follow the thread into later lines.
    assert _formatted(TextFormatter("%(message)s"), "after the request") == "after the request"
