"""Request bodies and query parameters, parsed strictly.

JSON bodies must lie in the JSON domain of gl-prov-v1, because what a client
sends is what gets hashed: NaN, infinities, integers beyond ±(2**53 - 1), NUL
characters, lone surrogates and duplicate object keys are rejected with a 400
that names the JSON path.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from flask import request
from werkzeug.exceptions import RequestEntityTooLarge

from api.errors import ApiError
from orchestrator.dag import load_dag_document
from orchestrator.errors import DagValidationError, JsonDomainError
from orchestrator.hashing import check_json_domain
from orchestrator.mapping import json_type_name
from orchestrator.repository import MAX_SHOWN_CHARACTERS, show_value

__all__ = [
    "YAML_MEDIA_TYPES",
    "parse_bool",
    "parse_json_text",
    "parse_limit",
    "query_parameters",
    "read_dag_document",
    "read_json_body",
    "read_json_object",
]

YAML_MEDIA_TYPES = frozenset({"application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml"})
_EMPTY = object()


class _DuplicateKeyError(ValueError):
    pass


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKeyError(f"duplicate key {key!r} in a JSON object; send each key once")
        result[key] = value
    return result


def _non_finite_literal(name: str) -> float:
    # Parse NaN, Infinity and -Infinity as floats so that check_json_domain
    # rejects them with their JSON path, as it does for 1e400 (also infinite).
    return float(name)


def parse_json_text(raw: bytes) -> Any:
    """Parse a JSON body and check that it lies in the JSON domain, or raise a 400 :class:`ApiError`."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(
            400, "invalid_json", f"the request body is not valid UTF-8 at byte {exc.start}; send UTF-8 JSON",
            {"position": exc.start},
        ) from None
    try:
        value = json.loads(text, object_pairs_hook=_unique_object, parse_constant=_non_finite_literal)
    except json.JSONDecodeError as exc:
        raise ApiError(
            400, "invalid_json",
            f"the request body is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}",
            {"line": exc.lineno, "column": exc.colno, "position": exc.pos},
        ) from None
    except _DuplicateKeyError as exc:
        raise ApiError(400, "invalid_json", f"the request body is not valid JSON for this API: {exc}") from None
    except RecursionError:
        raise ApiError(400, "invalid_json", "the request body is nested too deeply to parse") from None
    except ValueError as exc:
        # Python 3.11 and later reject integer literals longer than sys.int_info.default_max_str_digits (4300).
        raise ApiError(400, "invalid_json", f"the request body is not valid JSON for this API: {exc}") from None

    try:
        check_json_domain(value)
    except JsonDomainError as exc:
        raise ApiError(
            400, "invalid_json_value",
            f"the request body contains a value outside the JSON domain at {exc.path}: {exc.reason}",
            {"path": exc.path, "reason": exc.reason},
        ) from None
    return value


def _read_body() -> bytes:
    """Return the request body, or raise RequestEntityTooLarge when it may have been cut at the limit."""
    raw = request.get_data(cache=True)
    limit = request.max_content_length
    # Werkzeug 3.1 reads a body without Content-Length (chunked) only up to
    # the limit and returns what it read without raising. A cut YAML document
    # can still parse, so a body that reaches the limit is rejected.
    if request.content_length is None and limit is not None and len(raw) >= limit:
        raise RequestEntityTooLarge()
    return raw


def _require_json_content_type() -> None:
    mimetype = request.mimetype
    if mimetype and mimetype != "application/json" and not mimetype.endswith("+json"):
        raise ApiError(
            415, "unsupported_media_type",
            f"Content-Type {mimetype!r} is not supported here; send application/json",
        )


def read_json_body(*, default: Any = _EMPTY) -> Any:
    """Parse the JSON body. An empty body yields ``default``, or a 400 when no default is given."""
    _require_json_content_type()
    raw = _read_body()
    if not raw.strip():
        if default is _EMPTY:
            raise ApiError(400, "invalid_json", "the request body is empty; send a JSON object")
        return default
    return parse_json_text(raw)


def read_json_object(*, default: Any = _EMPTY) -> dict[str, Any]:
    """Parse the JSON body and require a JSON object."""
    value = read_json_body(default=default)
    if not isinstance(value, dict):
        raise ApiError(
            400, "invalid_request", f"the request body must be a JSON object, not {json_type_name(value)}"
        )
    return value


def read_dag_document(*, required: bool = True) -> dict[str, Any] | None:
    """Read a DAG document from the body: YAML for a YAML media type, JSON otherwise.

    Return None for an empty body when ``required`` is false.
    """
    raw = _read_body()
    if not raw.strip():
        if required:
            raise ApiError(400, "invalid_request", "the request body is empty; send a DAG document as JSON or YAML")
        return None
    if request.mimetype in YAML_MEDIA_TYPES:
        try:
            return load_dag_document(raw)
        except DagValidationError as exc:
            message = exc.problems[0].message if exc.problems else str(exc)
            raise ApiError(
                400, "invalid_yaml", f"the request body is not a valid YAML DAG document: {message}",
                {"problems": [problem.to_dict() for problem in exc.problems]},
            ) from None
    _require_json_content_type()
    document = _parse_json_document(raw)
    if not isinstance(document, dict):
        raise ApiError(
            400, "invalid_request",
            f"a DAG document must be a JSON object with dag_id and nodes, not {json_type_name(document)}",
        )
    return document


def _parse_json_document(raw: bytes) -> Any:
    """Parse a DAG document sent as JSON, with a hint about YAML when the body does not look like JSON."""
    try:
        return parse_json_text(raw)
    except ApiError as exc:
        if exc.code != "invalid_json" or raw.lstrip()[:1] in (b"{", b"["):
            raise
        raise ApiError(
            exc.status, exc.code,
            f"{exc.message}; if the body is a YAML document, send it with Content-Type: application/yaml",
            exc.details,
        ) from None


def query_parameters(parsers: dict[str, Callable[[str], Any]]) -> dict[str, Any]:
    """Parse the query string with one parser per allowed parameter.

    Unknown or repeated parameters, and values a parser rejects with
    ValueError, give a 400 that names the parameter.
    """
    unknown = sorted(set(request.args) - set(parsers))
    if unknown:
        raise ApiError(
            400, "invalid_parameter",
            f"unknown query parameter(s) {', '.join(unknown)}; allowed: {', '.join(sorted(parsers))}",
            {"parameters": unknown, "allowed": sorted(parsers)},
        )
    values: dict[str, Any] = {}
    for name, parse in parsers.items():
        occurrences = request.args.getlist(name)
        if not occurrences:
            continue
        if len(occurrences) > 1:
            raise ApiError(
                400, "invalid_parameter", f"query parameter {name} is given {len(occurrences)} times; give it once",
                {"parameter": name},
            )
        try:
            values[name] = parse(occurrences[0])
        except ValueError as exc:
            raise ApiError(400, "invalid_parameter", f"invalid query parameter {name}: {exc}",
                           {"parameter": name, "value": occurrences[0][:MAX_SHOWN_CHARACTERS]}) from None
    return values


def parse_bool(value: str) -> bool:
    """Parse true/false (also 1/0, yes/no) for a query parameter."""
    lowered = value.strip().lower()
    if lowered in {"true", "1", "yes"}:
        return True
    if lowered in {"false", "0", "no"}:
        return False
    raise ValueError(f"{show_value(value)} is not a boolean; use true or false")


def parse_limit(maximum: int) -> Callable[[str], int]:
    """Return a parser of page sizes from 1 to ``maximum``, written in ASCII digits only."""

    def parse(value: str) -> int:
        # int() would also take spaces, signs, underscores and non-ASCII digits such as "１".
        if not (value.isascii() and value.isdigit()):
            raise ValueError(f"{show_value(value)} is not a whole number; use the digits 0-9 only")
        # Compare the length first, because int() rejects strings of more than 4300 digits.
        significant = value.lstrip("0")
        if len(significant) > len(str(maximum)) or not 1 <= int(value) <= maximum:
            raise ValueError(f"{show_value(value)} is out of range; use 1 to {maximum}")
        return int(value)

    return parse
