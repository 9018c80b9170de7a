"""State changes of executions and nodes, each in one database transaction.

Every transaction that changes an execution first locks its
``dag_executions`` row, so the nodes of one execution change state one
transaction at a time and the readiness counts need no further locking.

A node's life: the scheduler marks it ``queued`` and hands back a
:class:`NodeDispatch` for the caller to send; a worker :meth:`Scheduler.claim`\\ s
it, runs the agent, and records the outcome. Recording a terminal outcome
writes the checkpoint, the provenance record and the node state together,
decrements the children's ``pending_parents``, resolves children that can no
longer run as skipped, queues children that can, and, when no node remains,
requests the finalizer. Messages are sent only after the commit. A task that
dies in between is delivered again (late acknowledgement) and re-sends what it
had queued, so no child is lost.
"""

from __future__ import annotations

import logging
import random
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.engine import Connection, RowMapping

from orchestrator.agents import Agent, AgentRegistry
from orchestrator.checkpoints import NewCheckpoint, StoredCheckpoint, verify_payload
from orchestrator.dag import Dag, Node, dag_from_normalized
from orchestrator.database import Database
from orchestrator.errors import (
    AgentNotFoundError,
    CheckpointIntegrityError,
    ExecutionNotFoundError,
    InputMappingError,
    OrchestratorError,
)
from orchestrator.hashing import canonical_json, input_document, output_hash, sha256_hex
from orchestrator.mapping import resolve_inputs
from orchestrator.models import dag_executions, execution_nodes, execution_provenance, node_traces, utcnow
from orchestrator.planner import plan_execution
from orchestrator.provenance import NULL_HASH, chain_hash_for
from orchestrator.states import NODE_TERMINAL_STATES, ExecutionStatus, NodeStatus, sources_of

__all__ = [
    "LOST_WORKER_ALLOWANCE",
    "MAX_ERROR_LENGTH",
    "Claim",
    "FollowUp",
    "NodeDispatch",
    "Prepared",
    "RetryDecision",
    "Scheduler",
    "storable_text",
]

logger = logging.getLogger(__name__)

_executions = dag_executions
_nodes = execution_nodes
_provenance = execution_provenance
_traces = node_traces
_ACTIVE = (NodeStatus.QUEUED.value, NodeStatus.RUNNING.value, NodeStatus.RETRYING.value)
_FINISHED_EXECUTION = frozenset(
    {ExecutionStatus.COMPLETED.value, ExecutionStatus.FAILED.value, ExecutionStatus.CANCELLED.value}
)
_TERMINAL_NODE = frozenset(status.value for status in NODE_TERMINAL_STATES)


# Deliveries beyond the retry policy's attempts allowed for pool processes that
# die mid-node (SIGKILL, out of memory) before the node is failed.
LOST_WORKER_ALLOWANCE = 2
# Maximum length of the error text stored per node, because agents can raise
# messages of megabytes.
MAX_ERROR_LENGTH = 4000


def storable_text(text: str, limit: int = MAX_ERROR_LENGTH) -> str:
    """Return ``text`` safe to store and log: NUL and lone surrogates escaped, length capped.

    PostgreSQL rejects NUL in text, and psycopg2 cannot encode a lone surrogate.
    """
    cleaned = text.replace("\x00", "\\x00").encode("utf-8", "backslashreplace").decode("utf-8")
    if len(cleaned) > limit:
        cleaned = f"{cleaned[:limit]}... ({len(cleaned) - limit} more characters)"
    return cleaned


@dataclass(frozen=True)
class NodeDispatch:
    """A node message to send: ids and the Celery time limits of its timeout policy."""

    execution_id: str
    node_id: str
    task_id: str
    soft_time_limit: float
    time_limit: float


@dataclass
class FollowUp:
    """Messages the caller must send after a transaction commits."""

    execution_id: str
    dispatches: list[NodeDispatch] = field(default_factory=list)
    finalize: bool = False


@dataclass
class Claim:
    """The result of claiming a node for one attempt.

    ``run`` is False when there is nothing to run: a duplicate delivery, a
    finished execution, or a node resolved as skipped at claim time. The
    follow-up must be sent in every case.
    """

    execution_id: str
    node_id: str
    task_id: str
    run: bool
    follow_up: FollowUp
    attempt: int = 0
    dag: Dag | None = None
    dag_id: str = ""
    # Attempts of a process that died, which this claim recorded as lost.
    lost_attempts: int = 0


@dataclass(frozen=True)
class Prepared:
    """A node ready to call: its agent, resolved inputs and input hash."""

    agent: Agent
    inputs: dict[str, Any]
    params: dict[str, Any]
    input_document: dict[str, Any]
    input_hash: str


@dataclass(frozen=True)
class RetryDecision:
    """A failed attempt that will be retried after ``delay`` seconds."""

    delay: float
    attempt: int
    max_attempts: int


class _Txn:
    """One transaction's view of an execution, with the helpers that change it."""

    def __init__(self, scheduler: Scheduler, conn: Connection, execution: RowMapping, dag: Dag, task_id: str):
        self.scheduler = scheduler
        self.conn = conn
        self.execution = execution
        self.execution_id: str = execution["execution_id"]
        self.dag = dag
        self.task_id = task_id
        self.stop_reason: str | None = execution["stop_reason"]
        self.follow_up = FollowUp(self.execution_id)
        self.resolved = 0
        # Nodes recorded terminal whose children still need counting. A
        # worklist, not recursion: skipping a long chain below a failed node
        # would otherwise exceed Python's recursion limit.
        self._counting: list[str] = []
        self._draining = False

    def node_rows(self, node_ids: Sequence[str]) -> dict[str, Any]:
        if not node_ids:
            return {}
        rows = self.conn.execute(
            select(_nodes).where(_nodes.c.execution_id == self.execution_id, _nodes.c.node_id.in_(list(node_ids)))
        ).mappings()
        return {row["node_id"]: row for row in rows}

    def parent_chain_hashes(self, node_id: str) -> list[str]:
        parents = self.dag.parents(node_id)
        if not parents:
            return []
        rows = self.conn.execute(
            select(_provenance.c.node_id, _provenance.c.chain_hash).where(
                _provenance.c.execution_id == self.execution_id, _provenance.c.node_id.in_(list(parents))
            )
        ).all()
        found = {row.node_id: row.chain_hash for row in rows}
        missing = [parent for parent in parents if parent not in found]
        if missing:
            raise OrchestratorError(
                f"provenance records of parents {missing} are missing execution_id={self.execution_id} node_id={node_id}"
            )
        return sorted(found.values())

    def write_terminal(
        self,
        node_id: str,
        status: NodeStatus,
        *,
        outputs: Any = None,
        document: dict[str, Any] | None = None,
        error: str | None = None,
        attempt_count: int = 0,
        canonical_outputs: bytes | None = None,
    ) -> None:
        """Write the checkpoint, provenance record and node state of a terminal node."""
        now = utcnow()
        if status is NodeStatus.COMPLETED:
            assert canonical_outputs is not None
            out_hash = sha256_hex(canonical_outputs)
        else:
            outputs, canonical_outputs, out_hash = None, None, NULL_HASH
        in_hash = sha256_hex(canonical_json(document)) if document is not None else NULL_HASH
        parent_hashes = self.parent_chain_hashes(node_id)
        chain = chain_hash_for(node_id, status.value, in_hash, out_hash, parent_hashes)
        node = self.dag.nodes[node_id]

        self.scheduler.db.checkpoints.write(self.conn, NewCheckpoint(
            execution_id=self.execution_id, node_id=node_id, status=status.value, outputs=outputs,
            canonical=canonical_outputs, output_hash=out_hash,
            attempt_count=attempt_count, created_at=now,
        ))
        self.conn.execute(
            _provenance.insert().values(
                execution_id=self.execution_id, node_id=node_id, ordinal=self.scheduler_ordinal(node_id),
                status=status.value, agent_id=node.agent_id,
                agent_version=document["agent_version"] if document else node.agent_version,
                input_document=document, input_hash=in_hash, output_hash=out_hash,
                parent_hashes=parent_hashes, chain_hash=chain, created_at=now,
            )
        )
        self.set_status(node_id, status, error=error, finished_at=now, attempt_count=attempt_count)
        self.resolved += 1
        logger.info(
            "node %s execution_id=%s node_id=%s attempts=%d%s",
            status.value, self.execution_id, node_id, attempt_count, f" reason={error}" if error else "",
        )
        self._counting.append(node_id)
        if self._draining:
            return
        self._draining = True
        try:
            while self._counting:
                self.after_terminal(self._counting.pop())
        finally:
            self._draining = False

    def scheduler_ordinal(self, node_id: str) -> int:
        return self.scheduler.ordinals(self.dag)[node_id]

    def after_terminal(self, node_id: str) -> None:
        """Count the node off in its children and resolve or ready each child that has no parent left."""
        children = self.dag.children(node_id)
        if not children:
            return
        self.conn.execute(
            update(_nodes)
            .where(_nodes.c.execution_id == self.execution_id, _nodes.c.node_id.in_(list(children)))
            .values(pending_parents=_nodes.c.pending_parents - 1)
        )
        rows = self.node_rows(children)
        for child in children:
            row = rows[child]
            if row["pending_parents"] != 0 or row["status"] != NodeStatus.WAITING.value:
                continue
            self.on_parents_done(child)

    def on_parents_done(self, node_id: str) -> None:
        parents = self.dag.parents(node_id)
        statuses = {pid: row["status"] for pid, row in self.node_rows(parents).items()}
        not_completed = sorted(pid for pid, status in statuses.items() if status != NodeStatus.COMPLETED.value)
        if not_completed:
            first = not_completed[0]
            reason = f"not run: upstream node {first!r} {statuses[first]}"
            self.write_terminal(node_id, NodeStatus.SKIPPED, error=reason)
        elif self.stop_reason:
            self.write_terminal(node_id, NodeStatus.SKIPPED, error=f"not run: {self.stop_reason}")
        else:
            self.set_status(node_id, NodeStatus.READY)

    def set_status(self, node_id: str, status: NodeStatus, **values: Any) -> None:
        """Move a node to ``status``; raise if its current state does not allow that move."""
        sources = [source.value for source in sources_of(status)]
        result = self.conn.execute(
            update(_nodes)
            .where(_nodes.c.execution_id == self.execution_id, _nodes.c.node_id == node_id,
                   _nodes.c.status.in_(sources))
            .values(status=status.value, **values)
        )
        if result.rowcount != 1:
            raise OrchestratorError(
                f"node cannot move to {status.value} from its current state execution_id={self.execution_id} "
                f"node_id={node_id}; allowed from {sorted(sources)}"
            )

    def stop(self, reason: str) -> None:
        """Stop scheduling new nodes (fail_fast) and skip every node already ready."""
        if self.stop_reason:
            return
        self.stop_reason = reason
        self.conn.execute(
            update(_executions).where(_executions.c.execution_id == self.execution_id).values(stop_reason=reason)
        )
        logger.info("execution stopping execution_id=%s reason=%s", self.execution_id, reason)
        ready = self.conn.execute(
            select(_nodes.c.node_id).where(
                _nodes.c.execution_id == self.execution_id, _nodes.c.status == NodeStatus.READY.value
            ).order_by(_nodes.c.ordinal)
        ).scalars().all()
        for node_id in ready:
            self.write_terminal(node_id, NodeStatus.SKIPPED, error=f"not run: {reason}")

    def finish(self) -> FollowUp:
        """Queue ready nodes into free slots and update the remaining count."""
        cancelled = self.execution["status"] == ExecutionStatus.CANCELLED.value
        if not self.stop_reason and not cancelled:
            self.fill_slots()
        if self.resolved:
            remaining = self.execution["nodes_remaining"] - self.resolved
            values: dict[str, Any] = {"nodes_remaining": remaining}
            if remaining == 0 and not cancelled:
                values["finalizer_dispatched"] = True
                self.follow_up.finalize = True
            self.conn.execute(
                update(_executions).where(_executions.c.execution_id == self.execution_id).values(**values)
            )
        return self.follow_up

    def fill_slots(self) -> None:
        active = self.conn.execute(
            select(func.count()).select_from(_nodes).where(
                _nodes.c.execution_id == self.execution_id, _nodes.c.status.in_(_ACTIVE)
            )
        ).scalar_one()
        free = self.dag.max_parallel_nodes - active
        if free <= 0:
            return
        ready = self.conn.execute(
            select(_nodes.c.node_id).where(
                _nodes.c.execution_id == self.execution_id, _nodes.c.status == NodeStatus.READY.value
            ).order_by(_nodes.c.ordinal).limit(free)
        ).scalars().all()
        for node_id in ready:
            self.queue(node_id)

    def queue(self, node_id: str) -> None:
        task_id = str(uuid.uuid4())
        self.set_status(node_id, NodeStatus.QUEUED, task_id=task_id, queued_by_task=self.task_id, queued_at=utcnow())
        self.follow_up.dispatches.append(self.scheduler.dispatch_for(self.execution_id, self.dag.nodes[node_id], task_id))


class Scheduler:
    """Creates executions and moves their nodes through their states."""

    def __init__(self, db: Database, registry: AgentRegistry, *, hard_timeout_grace: float = 10.0) -> None:
        self.db = db
        self.registry = registry
        self.hard_timeout_grace = hard_timeout_grace
        self._ordinals: dict[str, dict[str, int]] = {}
        self._dag_cache: dict[str, Dag] = {}

    # -- helpers ---------------------------------------------------------

    def ordinals(self, dag: Dag) -> dict[str, int]:
        cached = self._ordinals.get(dag.dag_hash)
        if cached is None:
            cached = {node_id: index for index, node_id in enumerate(dag.topological_order())}
            self._ordinals[dag.dag_hash] = cached
        return cached

    def dispatch_for(self, execution_id: str, node: Node, task_id: str) -> NodeDispatch:
        soft = float(node.timeout_policy.timeout_seconds)
        return NodeDispatch(execution_id, node.node_id, task_id, soft, soft + self.hard_timeout_grace)

    def _lock_execution(self, conn: Connection, execution_id: str) -> tuple[RowMapping, Dag]:
        execution = conn.execute(
            select(
                _executions.c.execution_id, _executions.c.dag_id, _executions.c.status, _executions.c.dag_hash,
                _executions.c.stop_reason, _executions.c.nodes_remaining, _executions.c.finalizer_dispatched,
                _executions.c.started_at,
            ).where(_executions.c.execution_id == execution_id).with_for_update()
        ).mappings().first()
        if execution is None:
            raise ExecutionNotFoundError(execution_id)
        return execution, self._dag(conn, execution_id, execution["dag_hash"])

    def _dag(self, conn: Connection, execution_id: str, dag_hash: str) -> Dag:
        """Return the execution's DAG, parsed once per process and DAG hash."""
        dag = self._dag_cache.get(dag_hash)
        if dag is not None:
            return dag
        document = conn.execute(
            select(_executions.c.dag_document).where(_executions.c.execution_id == execution_id)
        ).scalar_one()
        dag = dag_from_normalized(document)
        if dag.dag_hash != dag_hash:
            raise OrchestratorError(
                f"stored DAG document does not match its dag_hash execution_id={execution_id} "
                f"expected={dag_hash} actual={dag.dag_hash}"
            )
        if len(self._dag_cache) >= 64:
            self._dag_cache.clear()
        self._dag_cache[dag_hash] = dag
        return dag

    # -- submission ------------------------------------------------------

    def create_execution(
        self,
        dag: Dag,
        input_data: Any,
        *,
        options: Mapping[str, Any] | None = None,
        execution_id: str | None = None,
        default_execution_timeout_seconds: float | None = None,
    ) -> tuple[str, FollowUp]:
        """Store a pending execution and queue its first nodes; send the follow-up after.

        The execution's ``deadline_at`` is its creation time plus the DAG's
        ``execution_timeout_seconds``, or plus ``default_execution_timeout_seconds``
        (the setting GL_ORCHESTRATOR_EXECUTION_TIMEOUT_SECONDS) when the DAG
        sets none. A default of 0 leaves it without a deadline, and None
        stands for the built-in default of 86400 seconds.
        """
        execution_id = execution_id or str(uuid.uuid4())
        in_hash = output_hash(input_data)
        plan = plan_execution(dag)
        submit_task = f"submit:{execution_id}"

        def work(conn: Connection) -> FollowUp:
            now = utcnow()
            conn.execute(
                _executions.insert().values(
                    execution_id=execution_id, dag_id=dag.dag_id, status=ExecutionStatus.PENDING.value,
                    dag_hash=dag.dag_hash, dag_document=dag.document, input_data=input_data, input_hash=in_hash,
                    execution_options=dict(options or {}), nodes_total=len(dag.nodes),
                    nodes_remaining=len(dag.nodes), created_at=now, finalizer_dispatched=False,
                    deadline_at=dag.deadline_after(now, default_execution_timeout_seconds),
                )
            )
            follow_up = FollowUp(execution_id)
            first = set(plan.first_nodes)
            ready = set(plan.ready_nodes)
            rows = []
            for node_id, ordinal in plan.ordinals.items():
                task_id = str(uuid.uuid4()) if node_id in first else None
                if node_id in first:
                    status = NodeStatus.QUEUED
                elif node_id in ready:
                    status = NodeStatus.READY
                else:
                    status = NodeStatus.WAITING
                rows.append({
                    "execution_id": execution_id, "node_id": node_id, "ordinal": ordinal, "status": status.value,
                    "pending_parents": plan.pending_parents[node_id], "attempt_count": 0, "task_id": task_id,
                    "queued_by_task": submit_task if task_id else None, "queued_at": now if task_id else None,
                })
                if task_id:
                    follow_up.dispatches.append(self.dispatch_for(execution_id, dag.nodes[node_id], task_id))
            conn.execute(_nodes.insert(), rows)
            return follow_up

        follow_up = self.db.transaction(work, description="create execution", ids=f"execution_id={execution_id}")
        logger.info("execution created execution_id=%s dag_id=%s nodes=%d", execution_id, dag.dag_id, len(dag.nodes))
        return execution_id, follow_up

    def pending_submission(self, execution_id: str) -> FollowUp:
        """Return the first nodes again, for a submitter that died before sending them."""
        return self._resend_queued(execution_id, f"submit:{execution_id}")

    def _resend_queued(self, execution_id: str, queued_by_task: str) -> FollowUp:
        with self.db.connect() as conn:
            execution = conn.execute(
                select(_executions.c.dag_hash, _executions.c.status, _executions.c.nodes_remaining,
                       _executions.c.finalizer_dispatched).where(_executions.c.execution_id == execution_id)
            ).mappings().first()
            if execution is None:
                raise ExecutionNotFoundError(execution_id)
            dag = self._dag(conn, execution_id, execution["dag_hash"])
            rows = conn.execute(
                select(_nodes.c.node_id, _nodes.c.task_id).where(
                    _nodes.c.execution_id == execution_id, _nodes.c.queued_by_task == queued_by_task,
                    _nodes.c.status == NodeStatus.QUEUED.value,
                )
            ).all()
        follow_up = FollowUp(execution_id)
        follow_up.dispatches = [self.dispatch_for(execution_id, dag.nodes[row.node_id], row.task_id) for row in rows]
        follow_up.finalize = (
            execution["nodes_remaining"] == 0
            and execution["status"] not in _FINISHED_EXECUTION
        )
        return follow_up

    # -- one attempt -----------------------------------------------------

    def claim(
        self,
        execution_id: str,
        node_id: str,
        task_id: str,
        worker: str | None = None,
        *,
        holder_gone: Callable[[str | None], bool] | None = None,
    ) -> Claim:
        """Mark the node running for a new attempt, or return why it must not run.

        A message with the node's task id while the node is running is either
        a redelivery after its worker died or a duplicate of a message still
        being worked on. ``holder_gone`` tells them apart: it receives the
        ``worker`` recorded by the running claim and returns whether that
        process is gone. Without it, every such message counts as a redelivery.
        """

        def work(conn: Connection) -> Claim:
            execution, dag = self._lock_execution(conn, execution_id)
            txn = _Txn(self, conn, execution, dag, task_id)
            if node_id not in dag.nodes:
                raise OrchestratorError(f"node {node_id!r} is not in the DAG of execution_id={execution_id}")
            row = txn.node_rows([node_id])[node_id]
            status = NodeStatus(row["status"])
            if execution["status"] in _FINISHED_EXECUTION:
                logger.info("node message ignored, execution finished execution_id=%s node_id=%s", execution_id, node_id)
                return Claim(execution_id, node_id, task_id, run=False, follow_up=txn.follow_up)
            if status in NODE_TERMINAL_STATES or row["task_id"] != task_id or status in {NodeStatus.WAITING, NodeStatus.READY}:
                # A duplicate or stale message. Re-send what this task queued in
                # case its first delivery died before sending.
                logger.info(
                    "node message ignored, node %s execution_id=%s node_id=%s task_id=%s",
                    status.value, execution_id, node_id, task_id,
                )
                return Claim(execution_id, node_id, task_id, run=False, follow_up=FollowUp(execution_id))
            if txn.stop_reason:
                txn.write_terminal(node_id, NodeStatus.SKIPPED, error=f"not run: {txn.stop_reason}",
                                   attempt_count=row["attempt_count"])
                return Claim(execution_id, node_id, task_id, run=False, follow_up=txn.finish())

            if status is NodeStatus.RUNNING and holder_gone is not None and not holder_gone(row["worker"]):
                logger.info("duplicate node message ignored, the node is running in worker=%s "
                            "execution_id=%s node_id=%s task_id=%s", row["worker"], execution_id, node_id, task_id)
                return Claim(execution_id, node_id, task_id, run=False, follow_up=FollowUp(execution_id))

            now = utcnow()
            attempt = row["attempt_count"] + 1
            lost = 0
            if status is NodeStatus.RUNNING:
                # The same task id again while running: the worker that held it
                # died, and the broker delivered the message again.
                lost = conn.execute(
                    update(_traces).where(
                        _traces.c.execution_id == execution_id, _traces.c.node_id == node_id,
                        _traces.c.finished_at.is_(None),
                    ).values(status="lost", finished_at=now, error="worker lost before the attempt ended")
                ).rowcount
                logger.warning("node delivered again after a lost worker execution_id=%s node_id=%s attempt=%d",
                               execution_id, node_id, attempt)
                allowed = dag.nodes[node_id].retry_policy.max_retries + 1 + LOST_WORKER_ALLOWANCE
                if attempt > allowed:
                    # A pool process that dies is not a failure Celery counts,
                    # so an agent that kills its process would loop for ever.
                    message = (f"worker process lost during {attempt - 1} attempts (the agent may exit its process "
                               f"or exhaust memory); gave up after {allowed} attempts")
                    logger.error("node failed, worker lost too often execution_id=%s node_id=%s attempts=%d",
                                 execution_id, node_id, attempt - 1)
                    txn.write_terminal(node_id, NodeStatus.FAILED, error=message, attempt_count=attempt - 1)
                    if dag.on_failure == "fail_fast":
                        txn.stop(f"node {node_id!r} failed: {message}")
                    return Claim(execution_id, node_id, task_id, run=False, follow_up=txn.finish(),
                                 dag_id=execution["dag_id"], lost_attempts=lost)
            txn.set_status(node_id, NodeStatus.RUNNING, attempt_count=attempt, started_at=now, worker=worker)
            conn.execute(_traces.insert().values(
                execution_id=execution_id, node_id=node_id, attempt=attempt, task_id=task_id, worker=worker,
                status=NodeStatus.RUNNING.value, started_at=now,
            ))
            if execution["status"] == ExecutionStatus.PENDING.value:
                conn.execute(update(_executions).where(_executions.c.execution_id == execution_id).values(
                    status=ExecutionStatus.RUNNING.value, started_at=now))
                logger.info("execution running execution_id=%s dag_id=%s", execution_id, execution["dag_id"])
            return Claim(execution_id, node_id, task_id, run=True, follow_up=txn.follow_up, attempt=attempt,
                         dag=dag, dag_id=execution["dag_id"], lost_attempts=lost)

        claim = self.db.transaction(work, description="claim node", ids=f"execution_id={execution_id} node_id={node_id}")
        if not claim.run and not claim.follow_up.dispatches and not claim.follow_up.finalize:
            claim.follow_up = self._resend_queued(execution_id, task_id)
        return claim

    def prepare(self, claim: Claim) -> Prepared | str:
        """Load the node's inputs and resolve them; return a skip reason when its condition is false.

        Raises :class:`CheckpointIntegrityError` when an upstream checkpoint does
        not match its hash, and :class:`InputMappingError` for a missing key.
        """
        assert claim.dag is not None
        node = claim.dag.nodes[claim.node_id]
        references = set(claim.dag.referenced_nodes(claim.node_id))
        with self.db.connect() as conn:
            input_data = conn.execute(
                select(_executions.c.input_data).where(_executions.c.execution_id == claim.execution_id)
            ).scalar_one()
            checkpoints = self.db.checkpoints.read(conn, claim.execution_id, references) if references else {}
        results = self._verified_results(claim, checkpoints, references)

        if node.condition is not None and not node.condition.evaluate(input_data, results):
            return f"condition {node.condition.source!r} is false"
        try:
            agent = self.registry.get(node.agent_id, node.agent_version)
        except AgentNotFoundError as exc:
            raise InputMappingError(str(exc), execution_id=claim.execution_id, node_id=claim.node_id) from exc
        inputs = resolve_inputs(node, input_data, results, execution_id=claim.execution_id)
        document = input_document(agent.agent_id, agent.version, node.params, inputs)
        return Prepared(agent, inputs, node.params, document, sha256_hex(canonical_json(document)))

    def _verified_results(
        self, claim: Claim, checkpoints: dict[str, StoredCheckpoint], references: set[str]
    ) -> dict[str, Any]:
        from orchestrator import metrics

        results = {}
        for node_id, checkpoint in checkpoints.items():
            actual, problem = verify_payload(checkpoint)
            if problem is not None:
                metrics.CHECKPOINT_OPERATIONS.labels("verify", "error").inc()
                logger.error(
                    "checkpoint failed verification execution_id=%s node_id=%s read_by=%s expected=%s actual=%s "
                    "reason=%s",
                    claim.execution_id, node_id, claim.node_id, checkpoint.output_hash, actual, problem,
                )
                raise CheckpointIntegrityError(claim.execution_id, node_id, checkpoint.output_hash,
                                               actual or "unavailable", problem)
            if checkpoint.status == NodeStatus.COMPLETED.value and checkpoint.payload_removed_at is not None \
                    and checkpoint.outputs is None:
                continue
            metrics.CHECKPOINT_OPERATIONS.labels("load", "success").inc()
            results[node_id] = checkpoint.outputs
        missing = references - results.keys()
        if missing:
            metrics.CHECKPOINT_OPERATIONS.labels("load", "error").inc()
            raise InputMappingError(
                f"checkpoints of upstream nodes {sorted(missing)} are missing",
                execution_id=claim.execution_id, node_id=claim.node_id,
            )
        return results

    def record_success(self, claim: Claim, prepared: Prepared, canonical_outputs: bytes, outputs: Any) -> FollowUp:
        """Write checkpoint, provenance and state of a completed node in one transaction."""
        return self._record(claim, NodeStatus.COMPLETED, outputs=outputs, document=prepared.input_document,
                            canonical_outputs=canonical_outputs, trace_status="completed")

    def record_skip(self, claim: Claim, reason: str) -> FollowUp:
        """Record a node whose condition is false as skipped."""
        return self._record(claim, NodeStatus.SKIPPED, error=storable_text(reason), trace_status="skipped")

    def record_failure(
        self,
        claim: Claim,
        error: str,
        *,
        prepared: Prepared | None = None,
        retryable: bool = True,
        timed_out: bool = False,
    ) -> RetryDecision | FollowUp:
        """Record a failed attempt: schedule a retry, or end the node as its policies require."""
        assert claim.dag is not None
        error = storable_text(error)
        node = claim.dag.nodes[claim.node_id]
        policy = node.retry_policy
        if timed_out:
            retryable = retryable and node.timeout_policy.on_timeout == "retry"
        max_attempts = policy.max_retries + 1
        if retryable and claim.attempt < max_attempts:
            delay = policy.delay(claim.attempt, random.random() if policy.jitter else 1.0)
            self._record_retry(claim, error, delay)
            return RetryDecision(delay, claim.attempt, max_attempts)

        if timed_out and node.timeout_policy.on_timeout == "skip":
            status = NodeStatus.SKIPPED
        elif node.on_failure == "skip":
            status = NodeStatus.SKIPPED
        else:
            status = NodeStatus.FAILED
        document = prepared.input_document if prepared is not None else None
        message = error if status is NodeStatus.FAILED else f"failure tolerated (on_failure=skip): {error}"
        return self._record(claim, status, document=document, error=message,
                            trace_status="timed_out" if timed_out else "failed", trace_error=error)

    def _record_retry(self, claim: Claim, error: str, delay: float) -> None:
        def work(conn: Connection) -> None:
            execution, dag = self._lock_execution(conn, claim.execution_id)
            txn = _Txn(self, conn, execution, dag, claim.task_id)
            self._close_trace(conn, claim, "failed", error)
            txn.set_status(claim.node_id, NodeStatus.RETRYING, error=error)

        self.db.transaction(work, description="record retry",
                            ids=f"execution_id={claim.execution_id} node_id={claim.node_id}")
        logger.warning(
            "node attempt failed, retrying execution_id=%s node_id=%s attempt=%d delay=%.2fs error=%s",
            claim.execution_id, claim.node_id, claim.attempt, delay, error,
        )

    def _close_trace(self, conn: Connection, claim: Claim, status: str, error: str | None) -> None:
        now = utcnow()
        started = conn.execute(
            select(_traces.c.id, _traces.c.started_at).where(
                _traces.c.execution_id == claim.execution_id, _traces.c.node_id == claim.node_id,
                _traces.c.attempt == claim.attempt, _traces.c.finished_at.is_(None),
            )
        ).first()
        if started is None:
            return
        began = started.started_at if started.started_at.tzinfo else started.started_at.replace(tzinfo=now.tzinfo)
        conn.execute(update(_traces).where(_traces.c.id == started.id).values(
            status=status, error=error, finished_at=now, duration_seconds=(now - began).total_seconds()))

    def _record(
        self,
        claim: Claim,
        status: NodeStatus,
        *,
        outputs: Any = None,
        document: dict[str, Any] | None = None,
        canonical_outputs: bytes | None = None,
        error: str | None = None,
        trace_status: str,
        trace_error: str | None = None,
    ) -> FollowUp:
        def work(conn: Connection) -> FollowUp:
            execution, dag = self._lock_execution(conn, claim.execution_id)
            txn = _Txn(self, conn, execution, dag, claim.task_id)
            row = txn.node_rows([claim.node_id])[claim.node_id]
            if row["status"] in _TERMINAL_NODE or row["task_id"] != claim.task_id:
                # Another delivery of this node already wrote its records.
                logger.info("node result discarded, already recorded execution_id=%s node_id=%s",
                            claim.execution_id, claim.node_id)
                return FollowUp(claim.execution_id)
            self._close_trace(conn, claim, trace_status, trace_error or error)
            txn.write_terminal(claim.node_id, status, outputs=outputs, document=document, error=error,
                               attempt_count=claim.attempt, canonical_outputs=canonical_outputs)
            if status is NodeStatus.FAILED and dag.on_failure == "fail_fast":
                txn.stop(f"node {claim.node_id!r} failed: {error}")
            return txn.finish()

        return self.db.transaction(work, description=f"record node {status.value}",
                                   ids=f"execution_id={claim.execution_id} node_id={claim.node_id}")

    def record_lost(self, execution_id: str, node_id: str, task_id: str, error: str, *, timed_out: bool) -> FollowUp:
        """Record a node whose worker process ended without recording it (hard time limit)."""

        def work(conn: Connection) -> Claim:
            execution, dag = self._lock_execution(conn, execution_id)
            row = _Txn(self, conn, execution, dag, task_id).node_rows([node_id]).get(node_id)
            attempt = row["attempt_count"] if row else 0
            return Claim(execution_id, node_id, task_id, run=True, follow_up=FollowUp(execution_id),
                         attempt=attempt, dag=dag, dag_id=execution["dag_id"])

        from orchestrator import metrics

        claim = self.db.transaction(work, description="load lost node", ids=f"execution_id={execution_id} node_id={node_id}")
        outcome = self.record_failure(claim, error, retryable=False, timed_out=timed_out)
        assert isinstance(outcome, FollowUp)
        # The process that ran the attempt is gone, so the attempt is counted here.
        metrics.NODE_EXECUTIONS.labels(claim.dag_id, "timed_out" if timed_out else "failed").inc()
        return outcome
