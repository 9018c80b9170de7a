"""Bearer token authentication and request ids.

Settings keep only the SHA-256 digests of the allowed tokens. A presented
token is hashed and compared with every digest by :func:`hmac.compare_digest`,
so the time taken depends neither on which digest matches nor on how much of
it does.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import time
import uuid
from collections.abc import Iterable

from flask import Response, g, request

from api.errors import ApiError
from api.state import API_PREFIX, api_state
from orchestrator.logs import bind_log_context, clear_log_context

__all__ = [
    "PUBLIC_PATHS",
    "REQUEST_ID_HEADER",
    "add_request_id",
    "assign_request_id",
    "authenticate_request",
    "bearer_token_matches",
    "forget_request_id",
]

logger = logging.getLogger(__name__)

REQUEST_ID_HEADER = "X-Request-ID"
# Paths served without a token: load balancers and orchestrators probe health
# without credentials.
PUBLIC_PATHS = frozenset({f"{API_PREFIX}/health"})
# An incoming request id is logged and echoed, so only short tokens of safe
# characters are kept. Anything else is replaced by a generated id.
_REQUEST_ID_PATTERN = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


def bearer_token_matches(authorization: str | None, token_hashes: Iterable[str]) -> bool:
    """Return whether the ``Authorization`` header carries a bearer token whose SHA-256 is allowed."""
    if not authorization:
        return False
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return False
    try:
        # WSGI decodes header bytes as Latin-1, so encoding back restores the bytes the client sent.
        raw = token.encode("latin-1")
    except UnicodeEncodeError:
        raw = token.encode("utf-8")
    digest = hashlib.sha256(raw).hexdigest()
    matched = False
    for allowed in token_hashes:
        matched |= hmac.compare_digest(digest, allowed)
    return matched


def assign_request_id() -> None:
    """Take the client's ``X-Request-ID`` when it is a safe token, else generate one."""
    incoming = request.headers.get(REQUEST_ID_HEADER, "")
    g.request_id = incoming if _REQUEST_ID_PATTERN.match(incoming) else uuid.uuid4().hex
    g.request_started = time.monotonic()
    # Every line logged while the request runs carries its id. A server thread
    # serves one request after another, so the previous request's ids are dropped first.
    clear_log_context()
    bind_log_context(request_id=g.request_id)


def forget_request_id(_: BaseException | None = None) -> None:
    """Unbind the request id, so that lines logged after the request by this thread do not carry it."""
    clear_log_context()


def add_request_id(response: Response) -> Response:
    """Echo the request id on every response, and log one access line for it."""
    response.headers[REQUEST_ID_HEADER] = g.get("request_id") or uuid.uuid4().hex
    started = g.get("request_started")
    elapsed_ms = (time.monotonic() - started) * 1000 if started is not None else 0.0
    # Probes and scrapes arrive every few seconds, so they are logged at DEBUG.
    quiet = request.path.endswith(("/health", "/metrics"))
    # The path only: a query string could carry values a client did not mean to have logged.
    logger.log(logging.DEBUG if quiet else logging.INFO, "request handled method=%s path=%s status=%d duration_ms=%.1f",
               request.method, request.path, response.status_code, elapsed_ms)
    return response


def authenticate_request() -> None:
    """Raise a 401 :class:`ApiError` unless the request is public or carries an allowed token."""
    if request.path in PUBLIC_PATHS:
        return
    if bearer_token_matches(request.headers.get("Authorization"), api_state().settings.api_token_hashes):
        return
    logger.info(
        "request rejected, missing or invalid bearer token request_id=%s method=%s path=%s remote_addr=%s",
        g.get("request_id"), request.method, request.path, request.remote_addr,
    )
    raise ApiError(
        401, "unauthorized",
        "missing or invalid bearer token; send the header Authorization: Bearer <token>",
        headers={"WWW-Authenticate": 'Bearer realm="gl-orchestrator"'},
    )
