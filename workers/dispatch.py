"""Send the messages a committed transaction asked for."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from workers.app import FINALIZE_TASK, NODE_TASK

if TYPE_CHECKING:
    from celery import Celery

    from orchestrator.scheduler import FollowUp

__all__ = ["PUBLISH_RETRY_POLICY", "QUICK_RETRY_POLICY", "send_follow_up"]

logger = logging.getLogger(__name__)

# Messages are sent after their transaction committed, so a broker that is
# briefly away must not lose them: kombu retries each publish for about a
# minute (0, 1, 2, 3, 3, ... seconds) before giving up.
PUBLISH_RETRY_POLICY = {"max_retries": 25, "interval_start": 0, "interval_step": 1, "interval_max": 3}
# For a caller that serves a request and reports a failure at once instead.
QUICK_RETRY_POLICY = {"max_retries": 1, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.2}


def send_follow_up(app: Celery, follow_up: FollowUp, *, retry_policy: dict[str, float] | None = None) -> None:
    """Send each queued node and, when asked, the finalizer, on one producer."""
    policy = retry_policy or PUBLISH_RETRY_POLICY
    if not follow_up.dispatches and not follow_up.finalize:
        return
    node_task = app.tasks[NODE_TASK]
    with app.producer_or_acquire() as producer:
        for dispatch in follow_up.dispatches:
            # argsrepr is what task events, and so Flower, show as the
            # arguments: the ids with their names instead of a bare tuple.
            node_task.apply_async(
                (dispatch.execution_id, dispatch.node_id),
                argsrepr=f"execution_id={dispatch.execution_id} node_id={dispatch.node_id}",
                task_id=dispatch.task_id,
                soft_time_limit=dispatch.soft_time_limit,
                time_limit=dispatch.time_limit,
                producer=producer,
                retry=True,
                retry_policy=policy,
            )
            logger.debug("node sent execution_id=%s node_id=%s task_id=%s",
                         dispatch.execution_id, dispatch.node_id, dispatch.task_id)
        if follow_up.finalize:
            app.tasks[FINALIZE_TASK].apply_async(
                (follow_up.execution_id,), argsrepr=f"execution_id={follow_up.execution_id}",
                producer=producer, retry=True, retry_policy=policy,
            )
            logger.debug("finalizer sent execution_id=%s", follow_up.execution_id)
