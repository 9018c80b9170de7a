"""The integrity sweep: verify finished executions again, long after their finalizer did.

The finalizer verifies a chain once, when the execution ends. A record
altered later, by hand or by a faulty tool, would go unnoticed until someone
asked. The sweep re-verifies every finalized execution that ended within the
window and is not superseded, stores the result in ``chain_valid``, and logs
one ERROR line per broken execution. ``gl_orchestrator_provenance_chain_valid``
is computed from those stored results (see :func:`count_broken_chains`), so it
stays 0 while any such execution is broken, whichever process scrapes it.

An operator clears a broken execution by regenerating it (a new execution or
a replay) and marking the broken one superseded with :func:`supersede`. Its
records stay as they are, as evidence.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import SQLAlchemyError

from orchestrator import metrics
from orchestrator.errors import ExecutionConflictError, ExecutionNotFoundError
from orchestrator.models import dag_executions, utcnow
from orchestrator.provenance import ChainReport, verify_execution
from orchestrator.repository import format_timestamp
from orchestrator.states import EXECUTION_TERMINAL_STATES

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

    from orchestrator.database import Database

__all__ = ["SweepResult", "count_broken_chains", "supersede", "sweep_integrity"]

logger = logging.getLogger(__name__)

# Executions verified per read, so a long window never loads every id at once.
_PAGE_SIZE = 500
_MAX_NODES_IN_LOG = 5


@dataclass
class SweepResult:
    """The counts and execution ids of one sweep."""

    window_hours: float
    cutoff: datetime
    verified: int = 0
    broken: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    errors: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "window_hours": self.window_hours,
            "cutoff": self.cutoff.isoformat(),
            "verified": self.verified,
            "broken": self.broken,
            "changed": self.changed,
            "errors": self.errors,
        }


def _in_window(cutoff: datetime) -> Any:
    """Return the condition for finalized, unsuperseded executions that ended at or after ``cutoff``."""
    # A completed execution counts even when its chain hash was cleared:
    # only the finalizer sets completed, so a missing hash is itself suspect.
    return (
        (dag_executions.c.provenance_chain_hash.is_not(None) | (dag_executions.c.status == "completed"))
        & dag_executions.c.completed_at.is_not(None)
        & (dag_executions.c.completed_at >= cutoff)
        & dag_executions.c.superseded_at.is_(None)
    )


def count_broken_chains(db: Database, since: datetime) -> int:
    """Count finalized, unsuperseded executions ended since ``since`` whose chain did not verify."""
    with db.connect() as conn:
        return int(conn.execute(
            select(func.count()).select_from(dag_executions)
            .where(_in_window(since), dag_executions.c.chain_valid.is_(False))
        ).scalar_one())


def sweep_integrity(
    db: Database,
    window_hours: float,
    *,
    now: datetime | None = None,
    verify: Callable[[Database, str], ChainReport] = verify_execution,
) -> SweepResult:
    """Re-verify every finalized execution that ended within ``window_hours``, and store each result.

    ``verify`` checks one execution. Pass ``verify_execution`` bound to the
    deployment's signing keys: without keys, a signed execution does not
    verify.
    """
    moment = now or datetime.now(timezone.utc)
    cutoff = moment - timedelta(hours=window_hours)
    result = SweepResult(window_hours, cutoff)

    for execution_id in _execution_ids(db, cutoff):
        try:
            report = verify(db, execution_id)
        except ExecutionNotFoundError:
            continue  # removed between the read and the check
        except SQLAlchemyError:
            # The database may be back at the next sweep; nothing is known about the chain.
            result.errors += 1
            logger.exception("integrity check failed to run execution_id=%s", execution_id)
            continue
        except Exception as exc:
            # Stored records that verification cannot even read are broken records.
            result.verified += 1
            result.broken.append(execution_id)
            if _store(db, execution_id, False, moment):
                result.changed.append(execution_id)
            logger.exception("provenance chain broken execution_id=%s problems=unverifiable: %s",
                             execution_id, exc)
            continue
        result.verified += 1
        if _store(db, execution_id, report.chain_valid, moment):
            result.changed.append(execution_id)
        if not report.chain_valid:
            result.broken.append(execution_id)
            _log_broken(report)

    metrics.PROVENANCE_CHAIN_VALID.set(0 if result.broken else 1)
    logger.info("integrity sweep finished verified=%d broken=%d changed=%d errors=%d window_hours=%g",
                result.verified, len(result.broken), len(result.changed), result.errors, window_hours)
    return result


def _execution_ids(db: Database, cutoff: datetime) -> list[str]:
    ids: list[str] = []
    last = ""
    while True:
        with db.connect() as conn:
            page = conn.execute(
                select(dag_executions.c.execution_id)
                .where(_in_window(cutoff), dag_executions.c.execution_id > last)
                .order_by(dag_executions.c.execution_id).limit(_PAGE_SIZE)
            ).scalars().all()
        ids.extend(page)
        if len(page) < _PAGE_SIZE:
            return ids
        last = page[-1]


def _store(db: Database, execution_id: str, chain_valid: bool, moment: datetime) -> bool:
    """Store the sweep's verdict; return whether ``chain_valid`` changed."""

    def work(conn: Connection) -> bool:
        previous = conn.execute(
            select(dag_executions.c.chain_valid).where(dag_executions.c.execution_id == execution_id)
        ).scalar_one_or_none()
        conn.execute(update(dag_executions).where(dag_executions.c.execution_id == execution_id)
                     .values(chain_valid=chain_valid, verified_at=moment))
        return previous is not chain_valid

    changed: bool = db.transaction(work, description="store integrity result", ids=f"execution_id={execution_id}")
    if changed:
        logger.warning("chain validity changed execution_id=%s chain_valid=%s", execution_id, chain_valid)
    return changed


def _log_broken(report: ChainReport) -> None:
    broken = [node for node in report.nodes if not node.valid]
    details = "; ".join(f"{node.node_id}: {', '.join(node.reasons)}" for node in broken[:_MAX_NODES_IN_LOG])
    logger.error(
        "provenance chain broken execution_id=%s broken_nodes=%d problems=%s details=%s",
        report.execution_id, len(broken), "; ".join(report.problems) or "none", details or "none",
    )


def supersede(db: Database, execution_id: str, superseded_by: str, reason: str) -> dict[str, Any]:
    """Mark a finished execution superseded by a newer one; its records are kept unchanged.

    Raises :class:`ExecutionNotFoundError` for an unknown id (either one), and
    :class:`ExecutionConflictError` when the execution has not ended, is
    already superseded, or names itself.
    """
    if execution_id == superseded_by:
        raise ExecutionConflictError(
            f"execution {execution_id} cannot supersede itself; give the id of the execution that replaces it",
            execution_id=execution_id,
        )

    def work(conn: Connection) -> dict[str, Any]:
        rows = {row["execution_id"]: row for row in conn.execute(
            select(dag_executions.c.execution_id, dag_executions.c.status, dag_executions.c.superseded_by,
                   dag_executions.c.dag_id, dag_executions.c.chain_valid)
            .where(dag_executions.c.execution_id.in_([execution_id, superseded_by]))
            .with_for_update()
        ).mappings()}
        for required_id in (execution_id, superseded_by):
            if required_id not in rows:
                raise ExecutionNotFoundError(required_id)
        row = rows[execution_id]
        if row["status"] not in {status.value for status in EXECUTION_TERMINAL_STATES}:
            raise ExecutionConflictError(
                f"execution {execution_id} is {row['status']}; cancel it or wait for it to end before "
                "marking it superseded",
                execution_id=execution_id,
            )
        if row["superseded_by"] is not None:
            raise ExecutionConflictError(
                f"execution {execution_id} is already superseded by {row['superseded_by']}",
                execution_id=execution_id,
            )
        replacement = rows[superseded_by]
        if replacement["status"] != "completed" or replacement["chain_valid"] is not True:
            raise ExecutionConflictError(
                f"execution {superseded_by} is {replacement['status']} with chain_valid "
                f"{replacement['chain_valid']}; only a completed execution with a valid chain can replace "
                f"{execution_id}",
                execution_id=execution_id,
            )
        if replacement["dag_id"] != row["dag_id"]:
            raise ExecutionConflictError(
                f"execution {superseded_by} ran DAG {replacement['dag_id']!r}, not {row['dag_id']!r}; give an "
                f"execution of the same DAG",
                execution_id=execution_id,
            )
        if replacement["superseded_by"] is not None:
            raise ExecutionConflictError(
                f"execution {superseded_by} is itself superseded by {replacement['superseded_by']}; "
                "give the id of the execution that replaces it now",
                execution_id=execution_id,
            )
        moment = utcnow()
        conn.execute(update(dag_executions).where(dag_executions.c.execution_id == execution_id).values(
            superseded_by=superseded_by, superseded_at=moment, superseded_reason=reason,
        ))
        return {"execution_id": execution_id, "superseded_by": superseded_by,
                "superseded_at": format_timestamp(moment), "reason": reason}

    marked: dict[str, Any] = db.transaction(work, description="supersede execution", ids=f"execution_id={execution_id}")
    logger.info("execution superseded execution_id=%s superseded_by=%s reason=%s",
                execution_id, superseded_by, reason)
    return marked
