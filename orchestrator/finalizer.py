"""Finalize an execution: verify its chain and move it to a terminal state."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import select, update
from sqlalchemy.engine import Connection, RowMapping

from orchestrator.dag import dag_from_normalized
from orchestrator.errors import ExecutionNotFoundError
from orchestrator.models import dag_executions, execution_nodes, execution_provenance, utcnow
from orchestrator.provenance import ChainReport, verify_chain
from orchestrator.states import EXECUTION_TERMINAL_STATES, ExecutionStatus, NodeStatus

if TYPE_CHECKING:
    from orchestrator.database import Database
    from orchestrator.checkpoints import CheckpointStore
    from orchestrator.signing import SigningKeys

__all__ = ["FinalizeResult", "finalize_execution"]

logger = logging.getLogger(__name__)

_executions = dag_executions
_nodes = execution_nodes
_provenance = execution_provenance
_MAX_NODES_IN_ERROR = 5


@dataclass(frozen=True)
class FinalizeResult:
    """The finalizer's decision; ``changed`` is False for a repeated delivery."""

    execution_id: str
    dag_id: str
    status: str
    changed: bool
    chain_valid: bool | None = None
    provenance_chain_hash: str | None = None
    chain_length: int = 0
    duration_seconds: float | None = None
    error: str | None = None
    # Key id of the signature stored with the chain head, or None when it was finalized unsigned.
    signing_key_id: str | None = None


def _failure_message(failed: list[tuple[str, str | None]], stop_reason: str | None) -> str:
    parts = [f"node {node_id!r} failed: {error}" for node_id, error in failed[:_MAX_NODES_IN_ERROR]]
    if len(failed) > _MAX_NODES_IN_ERROR:
        parts.append(f"and {len(failed) - _MAX_NODES_IN_ERROR} more failed nodes")
    message = "; ".join(parts)
    if stop_reason:
        message += "; remaining nodes were not run (on_failure=fail_fast)"
    return message


def finalize_execution(db: Database, execution_id: str, *, signing_keys: SigningKeys | None = None) -> FinalizeResult:
    """Verify the chain, store ``provenance_chain_hash`` and ``chain_valid``, and end the execution.

    When ``signing_keys`` can sign, the chain head is signed and the signature
    is stored in the same update (see :mod:`orchestrator.signing`).
    """

    def work(conn: Connection) -> FinalizeResult:
        execution = conn.execute(
            select(_executions).where(_executions.c.execution_id == execution_id).with_for_update()
        ).mappings().first()
        if execution is None:
            raise ExecutionNotFoundError(execution_id)
        if execution["status"] in {status.value for status in EXECUTION_TERMINAL_STATES}:
            return FinalizeResult(execution_id, execution["dag_id"], execution["status"], changed=False)
        if execution["nodes_remaining"] > 0:
            logger.warning("finalizer called early, nodes remain execution_id=%s remaining=%d",
                           execution_id, execution["nodes_remaining"])
            return FinalizeResult(execution_id, execution["dag_id"], execution["status"], changed=False)

        report = _verify(conn, db.checkpoints, execution)
        nodes = conn.execute(
            select(_nodes.c.node_id, _nodes.c.status, _nodes.c.error)
            .where(_nodes.c.execution_id == execution_id).order_by(_nodes.c.ordinal)
        ).all()
        failed = [(row.node_id, row.error) for row in nodes if row.status == NodeStatus.FAILED.value]
        errors = []
        if failed:
            errors.append(_failure_message(failed, execution["stop_reason"]))
        if not report.chain_valid:
            broken = [node.node_id for node in report.nodes if not node.valid]
            errors.append(f"provenance chain hash verification failed: nodes {broken[:_MAX_NODES_IN_ERROR]}; "
                          + "; ".join(report.problems))
        status = ExecutionStatus.FAILED if errors else ExecutionStatus.COMPLETED
        error = " | ".join(errors) if errors else None
        now = utcnow()
        started = execution["started_at"] or execution["created_at"]
        if started.tzinfo is None:
            started = started.replace(tzinfo=now.tzinfo)
        values = {
            "status": status.value, "error": error, "provenance_chain_hash": report.provenance_chain_hash,
            "chain_valid": report.chain_valid, "completed_at": now,
        }
        signing_key_id = None
        if signing_keys is not None and signing_keys.can_sign:
            # A failed execution is signed too: the signature covers the chain
            # head as finalized, and status and chain_valid record whether it passed.
            signature = signing_keys.sign(execution_id, execution["dag_hash"], report.provenance_chain_hash, now)
            signing_key_id = signature.key_id
            values.update(finalized_at=now, signature=signature.value, signing_key_id=signing_key_id)
        conn.execute(update(_executions).where(_executions.c.execution_id == execution_id).values(**values))
        return FinalizeResult(
            execution_id, execution["dag_id"], status.value, changed=True, chain_valid=report.chain_valid,
            provenance_chain_hash=report.provenance_chain_hash, chain_length=report.chain_length,
            duration_seconds=(now - started).total_seconds(), error=error, signing_key_id=signing_key_id,
        )

    result = db.transaction(work, description="finalize execution", ids=f"execution_id={execution_id}")
    if result.changed:
        log = logger.info if result.status == ExecutionStatus.COMPLETED.value else logger.error
        log("execution %s execution_id=%s dag_id=%s chain_valid=%s provenance_chain_hash=%s signing_key_id=%s%s",
            result.status, execution_id, result.dag_id, result.chain_valid, result.provenance_chain_hash,
            result.signing_key_id or "-", f" error={result.error}" if result.error else "")
    return result


def _verify(conn: Connection, store: CheckpointStore, execution: RowMapping) -> ChainReport:
    execution_id = execution["execution_id"]
    records = conn.execute(
        select(execution_provenance).where(execution_provenance.c.execution_id == execution_id)
    ).mappings().all()
    checkpoints = store.read(conn, execution_id).values()
    dag = dag_from_normalized(execution["dag_document"])
    return verify_chain(dag, execution_id, execution["dag_hash"], records, checkpoints,
                        stored_dag_document=execution["dag_document"])
