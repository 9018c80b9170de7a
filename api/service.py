"""Service routes: health checks, Prometheus metrics and the OpenAPI document."""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from flask import Blueprint, Response, jsonify
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from api.openapi import openapi_document
from api.state import API_PREFIX, ApiState, api_state
from orchestrator import metrics, repository
from orchestrator.integrity import count_broken_chains
from orchestrator.states import ExecutionStatus

if TYPE_CHECKING:
    from celery import Celery

    from orchestrator.database import Database

__all__ = [
    "BROKER_TIMEOUT_SECONDS",
    "WORKER_CHECK_CACHE_SECONDS",
    "WORKER_CHECK_WAIT_SECONDS",
    "WORKER_PING_TIMEOUT_SECONDS",
    "blueprint",
]

logger = logging.getLogger(__name__)

blueprint = Blueprint("service", __name__, url_prefix=API_PREFIX)

BROKER_TIMEOUT_SECONDS = 2.0
# Executions finalized within this window feed gl_orchestrator_provenance_chain_valid.
# NOTE: a fixed window until the integrity sweep re-verifies stored chains;
# until then a chain broken after its finalization does not move the gauge.
WORKER_PING_TIMEOUT_SECONDS = 1.0
# Probes within this many seconds of a worker inspection reuse its result, so
# a burst of probes sends one broadcast.
WORKER_CHECK_CACHE_SECONDS = 2.0
# How long a probe waits for another probe's worker inspection before it
# reports the previous result, or an error when there is none.
WORKER_CHECK_WAIT_SECONDS = 5.0
# Overall status of this process's previous health check.
_last_health = "ok"


def _ok(detail: str) -> dict[str, str]:
    return {"status": "ok", "detail": detail}


def _error(detail: str) -> dict[str, str]:
    return {"status": "error", "detail": detail}


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".strip()


def _check_database(db: Database) -> dict[str, str]:
    try:
        with db.connect() as conn:
            conn.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        # The DBAPI error carries the driver's message without the SQL statement.
        return _error(_describe(getattr(exc, "orig", None) or exc))
    return _ok(f"SELECT 1 succeeded on {db.engine.dialect.name}")


def _check_broker(celery_app: Celery) -> dict[str, str]:
    try:
        with celery_app.connection_for_write(connect_timeout=BROKER_TIMEOUT_SECONDS) as connection:
            connection.ensure_connection(
                max_retries=1, interval_start=0, interval_step=0, timeout=BROKER_TIMEOUT_SECONDS
            )
            transport = connection.transport_cls
    except Exception as exc:  # noqa: BLE001 - each transport raises its own error types, and all mean unreachable.
        return _error(f"cannot connect to the broker: {_describe(exc)}")
    return _ok(f"connected ({transport} transport)")


def _check_workers(state: ApiState, broker_ok: bool) -> dict[str, str]:
    """Report the workers that consume this deployment's queue; others on the broker do not count.

    Concurrent probes share one broadcast. One request at a time runs the
    inspection under the app's lock, and requests within
    WORKER_CHECK_CACHE_SECONDS of it reuse its result.
    """
    if state.settings.embedded:
        return _ok("embedded: nodes run in an in-process worker, so there are no separate workers to ping")
    if not broker_ok:
        return _error("not checked, because the broker is unreachable")

    cache = state.worker_check
    if not cache.lock.acquire(timeout=WORKER_CHECK_WAIT_SECONDS):
        if cache.result is not None:
            return cache.result
        return _error(
            f"not checked, because another request's worker inspection took longer than {WORKER_CHECK_WAIT_SECONDS} s"
        )
    try:
        if cache.result is not None and time.monotonic() - cache.checked_at < WORKER_CHECK_CACHE_SECONDS:
            return cache.result
        result = _inspect_workers(state.celery_app, state.settings.default_queue)
        cache.result, cache.checked_at = result, time.monotonic()
        return result
    finally:
        cache.lock.release()


def _inspect_workers(celery_app: Celery, queue: str) -> dict[str, str]:
    """Broadcast active_queues and report the workers that consume ``queue``."""
    try:
        # Collect the replies on a connection of our own. Without one, Celery
        # 5.7 keeps a pooled connection for the replies and then takes a second
        # one from the same pool to publish, so enough concurrent callers
        # exhaust the pool (broker_pool_limit) and wait on each other forever.
        with celery_app.connection_for_read(connect_timeout=BROKER_TIMEOUT_SECONDS) as connection:
            inspector = celery_app.control.inspect(timeout=WORKER_PING_TIMEOUT_SECONDS, connection=connection)
            replies = inspector.active_queues() or {}
    except Exception as exc:  # noqa: BLE001 - a failed broadcast is reported, never raised.
        return _error(f"worker inspection failed: {_describe(exc)}")

    consumers = sorted(
        worker for worker, queues in replies.items() if any(q.get("name") == queue for q in queues or [])
    )
    if not consumers:
        others = f" ({len(replies)} worker(s) on other queues replied)" if replies else ""
        return _error(
            f"no worker consumes queue {queue!r} (GL_ORCHESTRATOR_QUEUE){others}; "
            f"start one with `orchestrator worker`"
        )
    return _ok(f"{len(consumers)} worker(s) consume queue {queue!r}: {', '.join(consumers)}")


def _log_health_change(overall: str, components: dict[str, dict[str, str]]) -> None:
    """Log a WARNING when the overall health changes, and DEBUG otherwise, because probes repeat every few seconds."""
    global _last_health
    failing = " ".join(f"{name}={c['detail']!r}" for name, c in components.items() if c["status"] != "ok")
    changed = overall != _last_health
    _last_health = overall
    if changed and overall != "ok":
        logger.warning("health check %s %s", overall, failing)
    elif changed:
        logger.info("health check ok")
    else:
        logger.debug("health check %s %s", overall, failing)


@blueprint.get("/health")
def health() -> Response:
    """Check database, broker and workers, and respond 503 only when the database is down."""
    state = api_state()
    database = _check_database(state.db)
    broker = _check_broker(state.celery_app)
    workers = _check_workers(state, broker["status"] == "ok")
    components = {"database": database, "broker": broker, "workers": workers}

    if database["status"] != "ok":
        overall, status_code = "error", 503
    elif any(component["status"] != "ok" for component in components.values()):
        overall, status_code = "degraded", 200
    else:
        overall, status_code = "ok", 200
    _log_health_change(overall, components)

    response = jsonify({
        "status": overall,
        "accepting_new_executions": state.settings.accept_new_executions,
        "mode": "embedded" if state.settings.embedded else "distributed",
        "checkpoint_strategy": state.db.checkpoints.strategy,
        "components": components,
    })
    response.status_code = status_code
    return response


@blueprint.get("/metrics")
def prometheus_metrics() -> Response:
    """Return the Prometheus exposition, with the execution gauges read from the database first."""
    state = api_state()
    try:
        counts = repository.count_executions_by_status(
            state.db, [ExecutionStatus.RUNNING.value, ExecutionStatus.PENDING.value]
        )
        past_deadline = repository.count_executions_past_deadline(state.db, datetime.now(timezone.utc))
    except SQLAlchemyError as exc:
        logger.warning("execution gauges not updated, database query failed error=%s", _describe(exc))
    else:
        metrics.ACTIVE_EXECUTIONS.set(counts[ExecutionStatus.RUNNING.value])
        metrics.QUEUED_EXECUTIONS.set(counts[ExecutionStatus.PENDING.value])
        metrics.EXECUTIONS_PAST_DEADLINE.set(past_deadline)
    try:
        window = timedelta(hours=state.settings.integrity_window_hours)
        broken = count_broken_chains(state.db, datetime.now(timezone.utc) - window)
    except SQLAlchemyError as exc:
        logger.warning("chain validity gauge not updated, database query failed error=%s", _describe(exc))
    else:
        # 0 while an unsuperseded execution finalized within the window has a
        # broken chain, else 1. The integrity sweep keeps chain_valid current,
        # and a fresh API process does not report 0 and page someone.
        metrics.PROVENANCE_CHAIN_VALID.set(0 if broken else 1)
    return Response(metrics.render_latest(), status=200, content_type=metrics.CONTENT_TYPE_LATEST)


@blueprint.get("/openapi.json")
def openapi() -> Response:
    document: dict[str, Any] = openapi_document()
    return jsonify(document)
