"""Resume and cancel executions.

Resume trusts a checkpoint only when it proves itself: its outputs re-hash to
its ``output_hash``, and the input hash computed for its node in this run
equals the one in its provenance record. Every other node runs again, and so
does every node downstream of one that runs again. A checkpoint that fails
its hash is corrupted: resume refuses, naming each node with the expected and
actual hash, unless the caller asks to re-run corrupted nodes. Records that a
resume replaces are moved to ``checkpoint_archive`` and
``provenance_archive`` with when and why; nothing is deleted silently.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, select, update
from sqlalchemy.engine import Connection, RowMapping

from orchestrator import metrics
from orchestrator.checkpoints import CheckpointStore, PayloadKey, StoredCheckpoint, verify_payload
from orchestrator.errors import (
    AgentNotFoundError,
    CheckpointsCorruptedError,
    CorruptedCheckpoint,
    ExecutionConflictError,
    InputMappingError,
    OrchestratorError,
)
from orchestrator.hashing import canonical_json, check_json_domain, input_document, output_hash, sha256_hex
from orchestrator.mapping import resolve_inputs
from orchestrator.models import (
    dag_executions,
    execution_nodes,
    execution_provenance,
    node_traces,
    provenance_archive,
    utcnow,
)
from orchestrator.scheduler import FollowUp, _Txn
from orchestrator.states import ExecutionStatus, NodeStatus

if TYPE_CHECKING:
    from orchestrator.dag import Dag
    from orchestrator.scheduler import Scheduler

__all__ = [
    "CancelReport",
    "CheckpointsCorruptedError",
    "ExecutionConflictError",
    "NodeDecision",
    "ResumeReport",
    "cancel_execution",
    "resume_execution",
]

logger = logging.getLogger(__name__)

_RESUMABLE = frozenset({ExecutionStatus.FAILED.value, ExecutionStatus.CANCELLED.value, ExecutionStatus.COMPLETED.value})
_ACTIVE_NODE = (NodeStatus.QUEUED.value, NodeStatus.RUNNING.value, NodeStatus.RETRYING.value)
_KEEP = object()


@dataclass(frozen=True)
class NodeDecision:
    """Whether resume reuses a node's checkpoint, and why."""

    node_id: str
    action: str  # "skip" reuses the checkpoint, "run" runs the node again
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"node_id": self.node_id, "action": self.action, "reason": self.reason}


@dataclass
class ResumeReport:
    """The decision a resume made for every node, and the records it archived."""

    execution_id: str
    status: str
    decisions: list[NodeDecision] = field(default_factory=list)
    archived: list[str] = field(default_factory=list)
    # Payloads outside the database to delete once the resume commits.
    discard: list[PayloadKey] = field(default_factory=list, repr=False)

    @property
    def nodes_skipped(self) -> list[str]:
        return [d.node_id for d in self.decisions if d.action == "skip"]

    @property
    def nodes_remaining(self) -> list[str]:
        return [d.node_id for d in self.decisions if d.action == "run"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "execution_id": self.execution_id,
            "status": self.status,
            "nodes_skipped": self.nodes_skipped,
            "nodes_remaining": self.nodes_remaining,
            "nodes": [decision.to_dict() for decision in self.decisions],
            "archived_records": self.archived,
        }


@dataclass
class CancelReport:
    """The outcome of a cancel, with the Celery task ids to revoke."""

    execution_id: str
    previous_status: str
    revoke_task_ids: list[str]
    nodes_completed: list[str]
    dag_id: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "execution_id": self.execution_id,
            "status": ExecutionStatus.CANCELLED.value,
            "previous_status": self.previous_status,
            "revoked_tasks": len(self.revoke_task_ids),
            "nodes_completed": self.nodes_completed,
        }


class _Planner:
    """Decide, in canonical order, which checkpoints one resume can reuse."""

    def __init__(self, scheduler: Scheduler, dag: Dag, input_data: Any, checkpoints: dict[str, StoredCheckpoint],
                 records: dict[str, RowMapping], rerun_corrupted: bool) -> None:
        self.scheduler = scheduler
        self.dag = dag
        self.input_data = input_data
        self.checkpoints = checkpoints
        self.records = records
        self.rerun_corrupted = rerun_corrupted
        self.results: dict[str, Any] = {}
        self.rerun: set[str] = set()
        self.corrupted: list[CorruptedCheckpoint] = []

    def decide(self) -> list[NodeDecision]:
        decisions = []
        for node_id in self.dag.topological_order():
            reason = self._rerun_reason(node_id)
            if reason is None:
                decisions.append(NodeDecision(node_id, "skip", "checkpoint verified and input hash unchanged"))
            else:
                self.rerun.add(node_id)
                decisions.append(NodeDecision(node_id, "run", reason))
        return decisions

    def _rerun_reason(self, node_id: str) -> str | None:
        upstream = sorted(parent for parent in self.dag.parents(node_id) if parent in self.rerun)
        checkpoint = self.checkpoints.get(node_id)
        record = self.records.get(node_id)
        if checkpoint is not None and checkpoint["status"] == NodeStatus.COMPLETED.value:
            corrupted = self._verify(node_id, checkpoint)
            if corrupted:
                return corrupted
        if upstream:
            return f"upstream node {upstream[0]!r} runs again"
        if checkpoint is None or record is None:
            return "no checkpoint"
        if checkpoint["status"] != NodeStatus.COMPLETED.value:
            return f"previous attempt ended {checkpoint['status']}"
        if checkpoint["payload_removed_at"] is not None:
            return "outputs were removed by retention"
        try:
            current = self._input_hash(node_id)
        except (InputMappingError, AgentNotFoundError, OrchestratorError, ValueError) as exc:
            return f"input cannot be recomputed: {exc}"
        if current != record["input_hash"]:
            return f"input changed: input hash was {record['input_hash']}, is now {current}"
        self.results[node_id] = checkpoint["outputs"]
        return None

    def _verify(self, node_id: str, checkpoint: StoredCheckpoint) -> str | None:
        if checkpoint.payload_removed_at is not None and checkpoint.outputs is None:
            return None
        if checkpoint.payload_note is not None:
            # A memory store loses its payloads when its process ends. That is
            # how the strategy works, not evidence of tampering.
            return f"outputs are no longer in the {self.scheduler.db.checkpoints.strategy} checkpoint store"

        actual, problem = verify_payload(checkpoint)
        if problem is None:
            metrics.CHECKPOINT_OPERATIONS.labels("verify", "success").inc()
            return None
        metrics.CHECKPOINT_OPERATIONS.labels("verify", "error").inc()
        self.corrupted.append(CorruptedCheckpoint(node_id, checkpoint.output_hash, actual))
        return f"corrupted checkpoint: expected output hash {checkpoint.output_hash}, actual {actual} ({problem})"

    def _input_hash(self, node_id: str) -> str:
        node = self.dag.nodes[node_id]
        if node.condition is not None and not node.condition.evaluate(self.input_data, self.results):
            raise OrchestratorError(f"condition {node.condition.source!r} is now false")
        agent = self.scheduler.registry.get(node.agent_id, node.agent_version)
        inputs = resolve_inputs(node, self.input_data, self.results)
        document = input_document(agent.agent_id, agent.version, node.params, inputs)
        return sha256_hex(canonical_json(document))


def _archive(conn: Connection, store: CheckpointStore, execution_id: str, node_ids: list[str],
             reasons: dict[str, str]) -> tuple[list[str], list[PayloadKey]]:
    """Move the live records of ``node_ids`` to the archive tables; return what moved and the payloads to discard."""
    if not node_ids:
        return [], []
    now = utcnow()
    checkpoints, to_discard = store.archive(conn, execution_id, {node_id: reasons[node_id] for node_id in node_ids})
    moved = [f"checkpoint:{node_id}" for node_id in checkpoints]
    records = conn.execute(select(execution_provenance).where(
        execution_provenance.c.execution_id == execution_id,
        execution_provenance.c.node_id.in_(node_ids))).mappings().all()
    for row in records:
        values = {key: row[key] for key in (
            "node_id", "ordinal", "status", "agent_id", "agent_version", "input_document", "input_hash",
            "output_hash", "parent_hashes", "chain_hash", "created_at")}
        conn.execute(provenance_archive.insert().values(
            execution_id=execution_id, archived_at=now, reason=reasons[row["node_id"]], **values))
        moved.append(f"provenance:{row['node_id']}")
    conn.execute(delete(execution_provenance).where(
        execution_provenance.c.execution_id == execution_id, execution_provenance.c.node_id.in_(node_ids)))
    return moved, to_discard


def resume_execution(
    scheduler: Scheduler,
    execution_id: str,
    *,
    rerun_corrupted: bool = False,
    input_data: Any = _KEEP,
    default_execution_timeout_seconds: float | None = None,
) -> tuple[ResumeReport, FollowUp]:
    """Plan and start the resume of a failed, cancelled or completed execution.

    A resumed execution gets a fresh deadline from now: the DAG's
    ``execution_timeout_seconds``, or ``default_execution_timeout_seconds``
    when it sets none (0 leaves it without a deadline, None is the built-in
    default of 86400 seconds).

    Raises :class:`ExecutionConflictError` while the execution is pending or
    running, and :class:`CheckpointsCorruptedError` when a checkpoint fails
    its hash and ``rerun_corrupted`` is false; then nothing is changed.
    """
    if input_data is not _KEEP:
        check_json_domain(input_data, "input_data")

    def work(conn: Connection) -> tuple[ResumeReport, FollowUp]:
        execution, dag = scheduler._lock_execution(conn, execution_id)
        status = execution["status"]
        if status not in _RESUMABLE:
            raise ExecutionConflictError(
                f"execution {execution_id} is {status}; only failed, cancelled or completed executions can be "
                "resumed (cancel it first, or wait for it to end)",
                execution_id=execution_id,
            )
        stored_input = conn.execute(
            select(dag_executions.c.input_data).where(dag_executions.c.execution_id == execution_id)).scalar_one()
        new_input = stored_input if input_data is _KEEP else input_data
        checkpoints = scheduler.db.checkpoints.read(conn, execution_id)
        records = {row["node_id"]: row for row in conn.execute(select(
            execution_provenance.c.node_id, execution_provenance.c.input_hash,
        ).where(execution_provenance.c.execution_id == execution_id)).mappings()}

        planner = _Planner(scheduler, dag, new_input, checkpoints, records, rerun_corrupted)
        decisions = planner.decide()
        if planner.corrupted and not rerun_corrupted:
            for item in planner.corrupted:
                logger.error("checkpoint hash mismatch execution_id=%s node_id=%s expected=%s actual=%s",
                             execution_id, item.node_id, item.expected_hash, item.actual_hash)
            raise CheckpointsCorruptedError(execution_id, planner.corrupted)

        report = ResumeReport(execution_id, status, decisions)
        if not planner.rerun and status == ExecutionStatus.COMPLETED.value and input_data is _KEEP:
            return report, FollowUp(execution_id)

        corrupted_ids = {item.node_id for item in planner.corrupted}
        reasons = {
            d.node_id: (f"corrupted, kept as evidence: {d.reason}" if d.node_id in corrupted_ids
                        else f"superseded by resume: {d.reason}")
            for d in decisions if d.action == "run"
        }
        rerun = [d.node_id for d in decisions if d.action == "run"]
        report.archived, report.discard = _archive(conn, scheduler.db.checkpoints, execution_id, rerun, reasons)
        follow_up = _reset(conn, scheduler, execution, dag, rerun, planner.rerun, new_input, input_data is not _KEEP,
                           default_execution_timeout_seconds)
        report.status = ExecutionStatus.PENDING.value
        return report, follow_up

    report, follow_up = scheduler.db.transaction(work, description="resume execution", ids=f"execution_id={execution_id}")
    # The archived payloads were copied aside inside the transaction; the
    # live copies go only now that no row points to them.
    scheduler.db.checkpoints.discard(report.discard)
    logger.info("execution resumed execution_id=%s nodes_skipped=%d nodes_remaining=%d archived=%d",
                execution_id, len(report.nodes_skipped), len(report.nodes_remaining), len(report.archived))
    return report, follow_up


def _reset(conn: Connection, scheduler: Scheduler, execution: RowMapping, dag: Dag, rerun: list[str],
           rerun_set: set[str], input_data: Any, input_changed: bool,
           default_execution_timeout_seconds: float | None) -> FollowUp:
    """Put the re-run nodes back to waiting or ready and the execution back to pending, with a fresh deadline."""
    execution_id = execution["execution_id"]
    now = utcnow()
    conn.execute(update(node_traces).where(
        node_traces.c.execution_id == execution_id, node_traces.c.finished_at.is_(None),
    ).values(status="abandoned", finished_at=now, error="the execution ended before this attempt finished"))
    for node_id in rerun:
        pending = sum(1 for parent in dag.parents(node_id) if parent in rerun_set)
        conn.execute(update(execution_nodes).where(
            execution_nodes.c.execution_id == execution_id, execution_nodes.c.node_id == node_id,
        ).values(
            status=(NodeStatus.READY if pending == 0 else NodeStatus.WAITING).value, pending_parents=pending,
            task_id=None, queued_by_task=None, error=None, queued_at=None, started_at=None, finished_at=None,
            worker=None,
        ))
    values: dict[str, Any] = {
        "status": ExecutionStatus.PENDING.value, "error": None, "stop_reason": None,
        "provenance_chain_hash": None, "chain_valid": None, "completed_at": None,
        # The old signature covers the old chain head; the next finalization signs the new one.
        "finalized_at": None, "signature": None, "signing_key_id": None,
        "nodes_remaining": len(rerun), "finalizer_dispatched": not rerun,
        "deadline_at": dag.deadline_after(now, default_execution_timeout_seconds),
    }
    if input_changed:
        values.update(input_data=input_data, input_hash=output_hash(input_data))
    conn.execute(update(dag_executions).where(dag_executions.c.execution_id == execution_id).values(**values))

    refreshed = conn.execute(select(
        dag_executions.c.execution_id, dag_executions.c.dag_id, dag_executions.c.status, dag_executions.c.dag_hash,
        dag_executions.c.stop_reason, dag_executions.c.nodes_remaining, dag_executions.c.finalizer_dispatched,
        dag_executions.c.started_at,
    ).where(dag_executions.c.execution_id == execution_id)).mappings().one()
    txn = _Txn(scheduler, conn, refreshed, dag, f"resume:{uuid.uuid4()}")
    follow_up = txn.finish()
    follow_up.finalize = not rerun
    return follow_up


def cancel_execution(scheduler: Scheduler, execution_id: str) -> CancelReport:
    """Mark a pending or running execution cancelled and return the tasks to revoke.

    Completed nodes keep their checkpoints, so a later resume reuses them.
    """

    def work(conn: Connection) -> CancelReport:
        execution, _ = scheduler._lock_execution(conn, execution_id)
        status = execution["status"]
        if status not in (ExecutionStatus.PENDING.value, ExecutionStatus.RUNNING.value):
            raise ExecutionConflictError(
                f"execution {execution_id} is already {status}; only pending or running executions can be cancelled",
                execution_id=execution_id,
            )
        rows = conn.execute(select(execution_nodes.c.node_id, execution_nodes.c.status, execution_nodes.c.task_id)
                            .where(execution_nodes.c.execution_id == execution_id)).all()
        now = utcnow()
        conn.execute(update(dag_executions).where(dag_executions.c.execution_id == execution_id).values(
            status=ExecutionStatus.CANCELLED.value, stop_reason="cancelled by request",
            error="cancelled by request", completed_at=now,
        ))
        return CancelReport(
            execution_id, status,
            revoke_task_ids=sorted(row.task_id for row in rows if row.status in _ACTIVE_NODE and row.task_id),
            nodes_completed=sorted(row.node_id for row in rows if row.status == NodeStatus.COMPLETED.value),
            dag_id=execution["dag_id"],
        )

    report = scheduler.db.transaction(work, description="cancel execution", ids=f"execution_id={execution_id}")
    # Counted once the cancel has committed, like the finalizer's terminal states.
    metrics.DAG_EXECUTIONS.labels(report.dag_id, ExecutionStatus.CANCELLED.value).inc()
    logger.info("execution cancelled execution_id=%s previous_status=%s revoked_tasks=%d",
                execution_id, report.previous_status, len(report.revoke_task_ids))
    return report
