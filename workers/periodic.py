"""Periodic tasks, sent by ``orchestrator beat``: checkpoint retention.

The retention task reads the retention window from the settings of the worker
that runs it, so every worker must share ``GL_ORCHESTRATOR_CHECKPOINT_RETENTION_HOURS``.
Beat only decides when it runs (``GL_ORCHESTRATOR_RETENTION_INTERVAL_SECONDS``).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from sqlalchemy.exc import SQLAlchemyError

from orchestrator.retention import remove_expired_payloads
from workers.app import RETENTION_TASK, runtime_of

if TYPE_CHECKING:
    from celery import Celery, Task

__all__ = ["register", "remove_expired"]

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


def register(app: Celery) -> None:
    """Register the periodic tasks on ``app`` under their explicit names."""
    # Acknowledged on receipt: a run lost with its worker is replaced by the
    # next scheduled one, while a late redelivery would only repeat it.
    app.task(name=RETENTION_TASK, bind=True, acks_late=False)(remove_expired)
