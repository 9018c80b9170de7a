"""The JSON error body and the one table that maps exceptions to HTTP statuses.

Every error response has the shape
``{"error": {"code": "...", "message": "...", "details": ...}}``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from flask import g, jsonify, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from api.state import API_PREFIX
from orchestrator.errors import (
    AgentError,
    CheckpointIntegrityError,
    CheckpointsCorruptedError,
    DagConflictError,
    DagNotFoundError,
    DagRetiredError,
    DagValidationError,
    ExecutionConflictError,
    ExecutionError,
    ExecutionNotFoundError,
    JsonDomainError,
    NotAReplayError,
    OrchestratorError,
)

if TYPE_CHECKING:
    from flask import Flask, Response

__all__ = ["ApiError", "error_response", "register_error_handlers"]

logger = logging.getLogger(__name__)

# Status and code of each exception family. The most specific class in an
# exception's MRO wins, so a subclass may be listed after its base.
_STATUS_BY_ERROR: dict[type[BaseException], tuple[int, str]] = {
    DagValidationError: (400, "dag_invalid"),
    JsonDomainError: (400, "invalid_json_value"),
    AgentError: (400, "agent_invalid"),
    DagNotFoundError: (404, "dag_not_found"),
    ExecutionNotFoundError: (404, "execution_not_found"),
    NotAReplayError: (404, "not_a_replay"),
    DagConflictError: (409, "conflict"),
    DagRetiredError: (409, "dag_retired"),
    CheckpointIntegrityError: (409, "checkpoint_integrity"),
    CheckpointsCorruptedError: (409, "checkpoint_integrity_failed"),
    ExecutionConflictError: (409, "execution_conflict"),
    ExecutionError: (409, "execution_conflict"),
    OrchestratorError: (500, "internal_error"),
}

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    503: "service_unavailable",
}


class ApiError(Exception):
    """An error the API reports as it is: status, code, message and details."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.headers = headers or {}
        super().__init__(message)


def error_response(
    status: int, code: str, message: str, details: Any = None, headers: dict[str, str] | None = None
) -> Response:
    """Build the JSON error response."""
    response = jsonify({"error": {"code": code, "message": message, "details": details}})
    response.status_code = status
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def _details_of(exc: OrchestratorError) -> dict[str, Any] | None:
    if isinstance(exc, DagValidationError):
        return {"dag_id": exc.dag_id, "problems": [problem.to_dict() for problem in exc.problems]}
    if isinstance(exc, JsonDomainError):
        return {"path": exc.path, "reason": exc.reason}
    if isinstance(exc, DagConflictError):
        return {"dag_id": exc.dag_id, "stored_dag_hash": exc.stored_hash, "new_dag_hash": exc.new_hash}
    if isinstance(exc, CheckpointsCorruptedError):
        return {"execution_id": exc.execution_id, "corrupted": [item.to_dict() for item in exc.corrupted]}
    if isinstance(exc, CheckpointIntegrityError):
        return {
            "execution_id": exc.execution_id, "node_id": exc.node_id,
            "expected_hash": exc.expected, "actual_hash": exc.actual,
        }
    ids = {name: getattr(exc, name) for name in ("dag_id", "execution_id", "node_id") if getattr(exc, name, None)}
    return ids or None


def _request_id() -> str:
    return str(g.get("request_id", "-"))


def _internal_error(exc: BaseException) -> Response:
    logger.error(
        "request failed request_id=%s method=%s path=%s", _request_id(), request.method, request.path,
        exc_info=exc,
    )
    return error_response(
        500, "internal_error",
        f"the server failed to handle the request; the server log has the details under request_id={_request_id()}",
        {"request_id": _request_id()},
    )


def _handle_api_error(exc: ApiError) -> Response:
    return error_response(exc.status, exc.code, exc.message, exc.details, exc.headers)


def _handle_orchestrator_error(exc: OrchestratorError) -> Response:
    status, code = 500, "internal_error"
    for cls in type(exc).__mro__:
        if cls in _STATUS_BY_ERROR:
            status, code = _STATUS_BY_ERROR[cls]
            break
    if status >= 500:
        return _internal_error(exc)
    return error_response(status, code, str(exc), _details_of(exc))


def _handle_http_exception(exc: HTTPException) -> Response:
    status = exc.code or 500
    if isinstance(exc, RequestEntityTooLarge):
        limit = request.max_content_length
        return error_response(
            413, "payload_too_large",
            f"the request body is larger than the limit of {limit} bytes; "
            "send a smaller body or raise GL_ORCHESTRATOR_MAX_REQUEST_BYTES",
            {"max_request_bytes": limit},
        )
    # Keep headers such as Allow on 405, but not the HTML content type.
    headers = {name: value for name, value in exc.get_headers() if name.lower() != "content-type"}
    if status == 404:
        message = f"no resource at {request.path}; GET {API_PREFIX}/openapi.json lists the routes"
    elif status == 405:
        message = f"method {request.method} is not allowed on {request.path}; allowed: {headers.get('Allow', '')}"
    else:
        message = exc.description or exc.name
    return error_response(status, _HTTP_CODES.get(status, f"http_{status}"), message, None, headers)


def register_error_handlers(app: Flask) -> None:
    """Render every error, expected or not, as the JSON error body."""
    app.register_error_handler(ApiError, _handle_api_error)
    app.register_error_handler(OrchestratorError, _handle_orchestrator_error)
    app.register_error_handler(HTTPException, _handle_http_exception)
    app.register_error_handler(Exception, _internal_error)
