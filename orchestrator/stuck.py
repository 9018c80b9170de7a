"""Find stuck executions and mark them failed, so that a resume can finish them.

A pending or running execution is stuck when

- it is past its ``deadline_at`` (its execution timeout), or
- one of its nodes is ``running`` in a lost worker. The worker is the Celery
  node name in ``execution_nodes.worker``. It is lost when its heartbeat is
  older than the lost-after time, or when it has no heartbeat row and the
  node has run for longer than that. It is lost too when it restarted after
  it claimed the node.

Each stuck execution is marked in its own transaction, under its row lock,
after both conditions are checked again. It becomes ``failed`` with an error
that names the nodes and the reason, and its ``stop_reason`` keeps new nodes
from being queued. The open traces of nodes on lost workers are closed as
``lost``. Node rows keep their state, as after a cancel: a resume resets them
and reuses every verified checkpoint. A node still running on a live worker
finishes, and its result is recorded, so a resume reuses it too.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import SQLAlchemyError

from orchestrator import metrics
from orchestrator.errors import OrchestratorError
from orchestrator.heartbeats import Heartbeat, as_utc, read_heartbeats, worker_name_of
from orchestrator.models import dag_executions, execution_nodes, node_traces
from orchestrator.scheduler import storable_text
from orchestrator.states import ExecutionStatus, NodeStatus

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

    from orchestrator.dag import Dag
    from orchestrator.scheduler import Scheduler

__all__ = ["LostNode", "RunningNode", "StuckCheckResult", "StuckExecution", "detect_stuck_executions", "find_lost_nodes"]

logger = logging.getLogger(__name__)

_executions = dag_executions
_nodes = execution_nodes
_traces = node_traces
_ACTIVE = (ExecutionStatus.PENDING.value, ExecutionStatus.RUNNING.value)
_UNFINISHED_NODE = (
    NodeStatus.WAITING.value, NodeStatus.READY.value, NodeStatus.QUEUED.value, NodeStatus.RETRYING.value,
)
# An error names at most this many nodes of each kind, as the finalizer's does.
_MAX_NODES_NAMED = 5


@dataclass(frozen=True)
class RunningNode:
    """A node in state ``running``, with the worker that claimed it."""

    node_id: str
    worker: str | None
    started_at: datetime | None


@dataclass(frozen=True)
class LostNode:
    """A running node whose worker is lost, and why it counts as lost."""

    node_id: str
    worker: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"node_id": self.node_id, "worker": self.worker, "reason": self.reason}


@dataclass(frozen=True)
class StuckExecution:
    """An execution that one check marked failed."""

    execution_id: str
    dag_id: str
    previous_status: str
    timed_out: bool
    lost_nodes: tuple[LostNode, ...]
    error: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "execution_id": self.execution_id,
            "dag_id": self.dag_id,
            "previous_status": self.previous_status,
            "timed_out": self.timed_out,
            "lost_nodes": [node.to_dict() for node in self.lost_nodes],
            "error": self.error,
        }


@dataclass(frozen=True)
class StuckCheckResult:
    """The outcome of one check.

    ``checked`` counts the pending and running executions when the check
    started. ``errors`` counts executions whose marking failed, and the next
    check tries them again.
    """

    checked: int
    marked: tuple[StuckExecution, ...]
    errors: int
    checked_at: datetime

    def to_dict(self) -> dict[str, Any]:
        return {
            "checked": self.checked,
            "marked": [execution.to_dict() for execution in self.marked],
            "errors": self.errors,
            "checked_at": _utc_text(self.checked_at),
        }


def find_lost_nodes(
    nodes: Iterable[RunningNode], heartbeats: dict[str, Heartbeat], now: datetime, lost_after_seconds: float
) -> list[LostNode]:
    """Return the running nodes whose worker is lost, in the order given.

    A node without a recorded worker is never reported, because no row names
    the worker that runs it. Only the execution's deadline catches it.
    """
    lost = []
    for node in nodes:
        name = worker_name_of(node.worker)
        if node.worker is None or name is None:
            continue
        reason = _lost_reason(node, name, heartbeats.get(name), now, lost_after_seconds)
        if reason is not None:
            lost.append(LostNode(node.node_id, node.worker, reason))
    return lost


def _lost_reason(
    node: RunningNode, name: str, heartbeat: Heartbeat | None, now: datetime, lost_after_seconds: float
) -> str | None:
    started = as_utc(node.started_at) if node.started_at is not None else None
    if heartbeat is None:
        # A worker writes its first heartbeat right after it starts, so a
        # missing row only counts once the node has run for the whole window.
        if started is None:
            return None
        running_for = (now - started).total_seconds()
        if running_for <= lost_after_seconds:
            return None
        return (f"node {node.node_id!r} was claimed by worker {name}, which has no heartbeat on record; "
                f"the node has been running for {running_for:.0f}s")

    if started is not None and heartbeat.started_at > started:
        # Node names survive restarts, so a fresh heartbeat under the same
        # name comes from a process that cannot hold this claim.
        return (f"node {node.node_id!r} was claimed by worker {name} before that worker restarted "
                f"at {_utc_text(heartbeat.started_at)}")

    silent_for = (now - heartbeat.last_seen_at).total_seconds()
    if silent_for <= lost_after_seconds:
        return None
    return f"node {node.node_id!r} was claimed by worker {name}, which has sent no heartbeat for {silent_for:.0f}s"


def detect_stuck_executions(
    scheduler: Scheduler,
    *,
    worker_lost_after_seconds: float,
    default_execution_timeout_seconds: float | None = None,
    now: datetime | None = None,
) -> StuckCheckResult:
    """Mark every stuck pending or running execution failed; see the module docstring.

    ``default_execution_timeout_seconds`` is only used to state the timeout in
    the error of a DAG without its own. ``now`` must be timezone-aware and
    defaults to the current UTC time. A database error while reading the
    candidates propagates. An error while marking one execution is logged
    with its id and counted, and the check goes on with the next one.
    """
    moment = _aware_utc(now)
    checked, candidates = _read_candidates(scheduler, moment, worker_lost_after_seconds)

    marked: list[StuckExecution] = []
    errors = 0
    for execution_id in candidates:
        try:
            stuck = _mark_if_stuck(scheduler, execution_id, moment, worker_lost_after_seconds,
                                   default_execution_timeout_seconds)
        except (SQLAlchemyError, OrchestratorError):
            errors += 1
            logger.exception("marking a stuck execution failed, the next check tries again execution_id=%s",
                             execution_id)
            continue
        if stuck is not None:
            marked.append(stuck)
            _report(stuck)

    log = logger.info if marked or errors else logger.debug
    log("stuck execution check done checked=%d marked=%d errors=%d", checked, len(marked), errors)
    return StuckCheckResult(checked, tuple(marked), errors, moment)


def _aware_utc(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(timezone.utc)
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError(f"now={now!r} has no time zone; pass an aware datetime such as datetime.now(timezone.utc)")
    return now.astimezone(timezone.utc)


def _utc_text(value: datetime) -> str:
    return as_utc(value).isoformat(timespec="seconds").replace("+00:00", "Z")


def _read_candidates(scheduler: Scheduler, moment: datetime, lost_after_seconds: float) -> tuple[int, list[str]]:
    """Return the number of pending and running executions and the ids of those that look stuck, sorted."""
    with scheduler.db.connect() as conn:
        checked = conn.execute(
            select(func.count()).select_from(_executions).where(_executions.c.status.in_(_ACTIVE))
        ).scalar_one()
        overdue = set(conn.execute(
            select(_executions.c.execution_id).where(
                _executions.c.status.in_(_ACTIVE),
                _executions.c.deadline_at.is_not(None),
                _executions.c.deadline_at < moment,
            )
        ).scalars())
        rows = conn.execute(
            select(_nodes.c.execution_id, _nodes.c.node_id, _nodes.c.worker, _nodes.c.started_at)
            .select_from(_nodes.join(_executions, _executions.c.execution_id == _nodes.c.execution_id))
            .where(_executions.c.status.in_(_ACTIVE), _nodes.c.status == NodeStatus.RUNNING.value)
        ).all()
        heartbeats = read_heartbeats(conn) if rows else {}

    running: dict[str, list[RunningNode]] = {}
    for row in rows:
        running.setdefault(row.execution_id, []).append(RunningNode(row.node_id, row.worker, row.started_at))
    with_lost_nodes = {
        execution_id for execution_id, nodes in running.items()
        if find_lost_nodes(nodes, heartbeats, moment, lost_after_seconds)
    }
    return int(checked), sorted(overdue | with_lost_nodes)


def _mark_if_stuck(
    scheduler: Scheduler,
    execution_id: str,
    moment: datetime,
    lost_after_seconds: float,
    default_timeout_seconds: float | None,
) -> StuckExecution | None:
    """Lock the execution, check it again, and mark it failed if it is still stuck."""

    def work(conn: Connection) -> StuckExecution | None:
        execution, dag = scheduler._lock_execution(conn, execution_id)
        if execution["status"] not in _ACTIVE:
            return None
        deadline = conn.execute(
            select(_executions.c.deadline_at).where(_executions.c.execution_id == execution_id)
        ).scalar_one()
        nodes = conn.execute(
            select(_nodes.c.node_id, _nodes.c.status, _nodes.c.worker, _nodes.c.started_at)
            .where(_nodes.c.execution_id == execution_id).order_by(_nodes.c.ordinal)
        ).all()
        running = [RunningNode(row.node_id, row.worker, row.started_at)
                   for row in nodes if row.status == NodeStatus.RUNNING.value]

        timed_out = deadline is not None and moment > as_utc(deadline)
        lost = find_lost_nodes(running, read_heartbeats(conn), moment, lost_after_seconds) if running else []
        if not timed_out and not lost:
            return None

        parts = []
        if timed_out:
            parts.append(_timeout_text(dag, deadline, default_timeout_seconds))
            parts.append(_unfinished_text(running, nodes))
        parts.extend(_named([node.reason for node in lost], "more nodes on lost workers"))
        error = storable_text("; ".join(parts))
        stop_reason = "execution timed out" if timed_out else f"the worker of node {lost[0].node_id!r} was lost"

        conn.execute(update(_executions).where(_executions.c.execution_id == execution_id).values(
            status=ExecutionStatus.FAILED.value, error=error, stop_reason=stop_reason, completed_at=moment,
        ))
        for node in lost:
            _close_lost_traces(conn, execution_id, node, moment)
        return StuckExecution(execution_id, execution["dag_id"], execution["status"], timed_out, tuple(lost), error)

    return scheduler.db.transaction(work, description="mark stuck execution failed",
                                    ids=f"execution_id={execution_id}")


def _timeout_text(dag: Dag, deadline: datetime, default_timeout_seconds: float | None) -> str:
    timeout = dag.execution_timeout(default_timeout_seconds)
    if timeout is None:
        return f"execution timed out at its deadline {_utc_text(deadline)}"
    return f"execution timed out after {timeout:g}s (deadline {_utc_text(deadline)})"


def _unfinished_text(running: Sequence[RunningNode], nodes: Sequence[Any]) -> str:
    """Describe the nodes the deadline caught: the running ones with their workers, else those not yet run."""
    if running:
        named = _named([f"{node.node_id} (worker {node.worker or 'unknown'})" for node in running], "more")
        return "nodes still running: " + ", ".join(named)
    waiting = [f"{row.node_id} ({row.status})" for row in nodes if row.status in _UNFINISHED_NODE]
    if waiting:
        return "no node was running; nodes not yet run: " + ", ".join(_named(waiting, "more"))
    return "every node had ended, but the finalizer had not ended the execution"


def _named(items: list[str], rest: str) -> list[str]:
    if len(items) <= _MAX_NODES_NAMED:
        return items
    return [*items[:_MAX_NODES_NAMED], f"and {len(items) - _MAX_NODES_NAMED} {rest}"]


def _close_lost_traces(conn: Connection, execution_id: str, node: LostNode, moment: datetime) -> None:
    traces = conn.execute(
        select(_traces.c.id, _traces.c.started_at).where(
            _traces.c.execution_id == execution_id, _traces.c.node_id == node.node_id,
            _traces.c.finished_at.is_(None),
        )
    ).all()
    for trace in traces:
        duration = max(0.0, (moment - as_utc(trace.started_at)).total_seconds())
        conn.execute(update(_traces).where(_traces.c.id == trace.id).values(
            status="lost", error=storable_text(node.reason), finished_at=moment, duration_seconds=duration,
        ))


def _report(stuck: StuckExecution) -> None:
    metrics.DAG_EXECUTIONS.labels(stuck.dag_id, ExecutionStatus.FAILED.value).inc()
    logger.error(
        "stuck execution marked failed execution_id=%s dag_id=%s previous_status=%s timed_out=%s "
        "lost_nodes=%s error=%s",
        stuck.execution_id, stuck.dag_id, stuck.previous_status, stuck.timed_out,
        ",".join(node.node_id for node in stuck.lost_nodes) or "-", stuck.error,
    )
