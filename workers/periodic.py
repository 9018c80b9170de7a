"""Periodic tasks, sent by ``orchestrator beat``: checkpoint retention, the stuck-execution check and the integrity sweep.

Each task reads its parameters from the settings of the worker that runs it,
so every worker must share ``GL_ORCHESTRATOR_CHECKPOINT_RETENTION_HOURS``,
``GL_ORCHESTRATOR_WORKER_LOST_AFTER_SECONDS``,
``GL_ORCHESTRATOR_EXECUTION_TIMEOUT_SECONDS``,
``GL_ORCHESTRATOR_INTEGRITY_WINDOW_HOURS`` and the signing key settings. Beat
only decides when they run (``GL_ORCHESTRATOR_RETENTION_INTERVAL_SECONDS``,
``GL_ORCHESTRATOR_STUCK_CHECK_INTERVAL_SECONDS``,
``GL_ORCHESTRATOR_INTEGRITY_SWEEP_INTERVAL_SECONDS``).
"""

from __future__ import annotations

import logging
from datetime import timedelta
from functools import partial
from typing import TYPE_CHECKING, Any

from sqlalchemy.exc import SQLAlchemyError

from orchestrator.integrity import sweep_integrity
from orchestrator.provenance import verify_execution
from orchestrator.recovery import stale_follow_ups
from orchestrator.retention import remove_expired_payloads
from orchestrator.stuck import detect_stuck_executions
from workers.app import INTEGRITY_TASK, RETENTION_TASK, STUCK_TASK, runtime_of
from workers.dispatch import send_follow_up

if TYPE_CHECKING:
    from celery import Celery, Task

__all__ = ["detect_stuck", "register", "remove_expired", "sweep"]

logger = logging.getLogger(__name__)


def remove_expired(task: Task) -> dict[str, Any]:
    """Run one retention pass with this worker's settings and return its counts."""
    runtime = runtime_of(task.app)
    try:
        result = remove_expired_payloads(runtime.db, runtime.settings.checkpoint_retention_hours)
    except SQLAlchemyError as exc:
        # Not retried: the next scheduled run starts a fresh pass.
        logger.exception("checkpoint retention failed, the next scheduled run tries again in %gs task_id=%s",
                         runtime.settings.retention_interval_seconds, task.request.id)
        return {"status": "error", "error": f"{exc.__class__.__name__}: {exc}"}
    return {"status": "ok", **result.to_dict()}


def detect_stuck(task: Task) -> dict[str, Any]:
    """Run one stuck-execution check with this worker's settings and return what it marked."""
    runtime = runtime_of(task.app)
    settings = runtime.settings
    try:
        result = detect_stuck_executions(
            runtime.scheduler,
            worker_lost_after_seconds=settings.worker_lost_after_seconds,
            default_execution_timeout_seconds=settings.execution_timeout_seconds,
        )
    except SQLAlchemyError as exc:
        # Not retried: the next scheduled run starts a fresh check.
        logger.exception("stuck execution check failed, the next scheduled run tries again in %gs task_id=%s",
                         settings.stuck_check_interval_seconds, task.request.id)
        return {"status": "error", "error": f"{exc.__class__.__name__}: {exc}"}
    resent = _send_stale_queued(task, timedelta(seconds=settings.requeue_after_seconds))
    return {"status": "ok", "messages_sent_again": resent, **result.to_dict()}


def _send_stale_queued(task: Task, older_than: timedelta) -> int:
    """Send again the messages of nodes queued longer than ``older_than``; return how many."""
    runtime = runtime_of(task.app)
    try:
        follow_ups = stale_follow_ups(runtime.scheduler, older_than)
    except SQLAlchemyError:
        logger.exception("finding stale queued nodes failed task_id=%s", task.request.id)
        return 0
    sent = 0
    for follow_up in follow_ups:
        try:
            send_follow_up(task.app, follow_up)
        except Exception:
            logger.exception("sending stale queued nodes again failed execution_id=%s", follow_up.execution_id)
            continue
        sent += len(follow_up.dispatches) + int(follow_up.finalize)
    return sent


def sweep(task: Task) -> dict[str, Any]:
    """Run one integrity sweep with this worker's settings and return what it found."""
    runtime = runtime_of(task.app)
    settings = runtime.settings
    try:
        result = sweep_integrity(runtime.db, settings.integrity_window_hours,
                                 verify=partial(verify_execution, signing_keys=runtime.signing_keys))
    except SQLAlchemyError as exc:
        # Not retried: the next scheduled run starts a fresh sweep.
        logger.exception("integrity sweep failed, the next scheduled run tries again in %gs task_id=%s",
                         settings.integrity_sweep_interval_seconds, task.request.id)
        return {"status": "error", "error": f"{exc.__class__.__name__}: {exc}"}
    return {"status": "ok", **result.to_dict()}


def register(app: Celery) -> None:
    """Register the periodic tasks on ``app`` under their explicit names."""
    # Acknowledged on receipt: a run lost with its worker is replaced by the
    # next scheduled one, while a late redelivery would only repeat it.
    app.task(name=RETENTION_TASK, bind=True, acks_late=False)(remove_expired)
    app.task(name=STUCK_TASK, bind=True, acks_late=False)(detect_stuck)
    app.task(name=INTEGRITY_TASK, bind=True, acks_late=False)(sweep)
