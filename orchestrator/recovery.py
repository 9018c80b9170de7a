"""Send again the messages of nodes that have waited in ``queued`` for too long.

A node is marked ``queued`` in the same transaction that decides to run it,
and its message is sent after the commit. The message can still be lost: a
broker restarted without persistence drops its queues, and a publish can fail
after the commit. The database is the record of what should run, so this job
sends the message of every node queued for longer than a threshold again,
with the same task id. A copy that turns out to be a duplicate is harmless:
the claim ignores it while the node runs and after it has finished. The
finalizer of an execution whose nodes have all finished is sent again the
same way, since finalizing twice changes nothing.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING

from sqlalchemy import select, update
from sqlalchemy.engine import Connection

from orchestrator.models import dag_executions, execution_nodes
from orchestrator.scheduler import FollowUp
from orchestrator.states import ExecutionStatus, NodeStatus

if TYPE_CHECKING:
    from orchestrator.scheduler import Scheduler

__all__ = ["DEFAULT_REQUEUE_AFTER", "stale_follow_ups"]

logger = logging.getLogger(__name__)

# A node still queued after this long is sent again. Long enough that a
# healthy backlog rarely triggers it; a copy sent too early is only a no-op.
DEFAULT_REQUEUE_AFTER = timedelta(minutes=5)
_UNFINISHED = (ExecutionStatus.PENDING.value, ExecutionStatus.RUNNING.value)


def stale_follow_ups(
    scheduler: Scheduler, older_than: timedelta = DEFAULT_REQUEUE_AFTER, *, now: datetime | None = None
) -> list[FollowUp]:
    """Return the messages to send again, and mark those nodes as queued now."""
    now = now or datetime.now(timezone.utc)
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware (UTC)")
    cutoff = now - older_than

    def work(conn: Connection) -> list[FollowUp]:
        rows = conn.execute(
            select(execution_nodes.c.execution_id, execution_nodes.c.node_id, execution_nodes.c.task_id)
            .join(dag_executions, dag_executions.c.execution_id == execution_nodes.c.execution_id)
            .where(
                dag_executions.c.status.in_(_UNFINISHED),
                execution_nodes.c.status == NodeStatus.QUEUED.value,
                execution_nodes.c.queued_at < cutoff,
            )
            .order_by(execution_nodes.c.execution_id, execution_nodes.c.ordinal)
            .with_for_update(of=execution_nodes, skip_locked=True)
        ).all()
        follow_ups: dict[str, FollowUp] = {}
        for row in rows:
            execution = conn.execute(
                select(dag_executions.c.dag_hash).where(dag_executions.c.execution_id == row.execution_id)
            ).scalar_one()
            dag = scheduler._dag(conn, row.execution_id, execution)
            follow_up = follow_ups.setdefault(row.execution_id, FollowUp(row.execution_id))
            follow_up.dispatches.append(scheduler.dispatch_for(row.execution_id, dag.nodes[row.node_id], row.task_id))
            conn.execute(update(execution_nodes).where(
                execution_nodes.c.execution_id == row.execution_id, execution_nodes.c.node_id == row.node_id,
                execution_nodes.c.status == NodeStatus.QUEUED.value,
            ).values(queued_at=now))

        finished = conn.execute(
            select(dag_executions.c.execution_id).where(
                dag_executions.c.status.in_(_UNFINISHED),
                dag_executions.c.nodes_remaining == 0,
                dag_executions.c.finalizer_dispatched.is_(True),
                dag_executions.c.created_at < cutoff,
            )
        ).scalars().all()
        for execution_id in finished:
            follow_ups.setdefault(execution_id, FollowUp(execution_id)).finalize = True
        return list(follow_ups.values())

    follow_ups = scheduler.db.transaction(work, description="find stale queued nodes")
    for follow_up in follow_ups:
        logger.warning(
            "sending messages again after %ds in queue execution_id=%s nodes=%s finalizer=%s",
            older_than.total_seconds(), follow_up.execution_id,
            ",".join(dispatch.node_id for dispatch in follow_up.dispatches) or "-", follow_up.finalize,
        )
    return follow_ups
