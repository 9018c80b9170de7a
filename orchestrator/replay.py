"""Replay: run a finished execution's DAG again on the same input, and compare the two.

A replay is a new execution of the original's stored DAG document
(``dag_executions.dag_document``), not of the DAG registered under its id
now, on the original's stored input. Its ``execution_options`` are the
original's plus ``replay_of``, the original's execution id. The database schema
has no other link between the two.

The replay matches when its ``provenance_chain_hash`` equals the original's.
That hash covers every node's input, output and status, so a match shows that
the agents computed the same outputs from the same inputs. The replay report
lists the nodes that differ, with the execution diff of each
(:mod:`orchestrator.comparison`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from orchestrator.comparison import ExecutionDiff, diff_executions
from orchestrator.dag import parse_dag
from orchestrator.errors import ExecutionConflictError, ExecutionNotFoundError, NotAReplayError
from orchestrator.models import dag_executions
from orchestrator.states import EXECUTION_TERMINAL_STATES, NODE_TERMINAL_STATES

if TYPE_CHECKING:
    from orchestrator.database import Database
    from orchestrator.scheduler import FollowUp, Scheduler

__all__ = ["REPLAY_OPTION", "ReplayReport", "StartedReplay", "replay_report", "start_replay"]

logger = logging.getLogger(__name__)

# The key of execution_options that links a replay to its original.
REPLAY_OPTION = "replay_of"
_FINISHED = frozenset(status.value for status in EXECUTION_TERMINAL_STATES)
_RECORDED_NODE = frozenset(status.value for status in NODE_TERMINAL_STATES)


@dataclass(frozen=True)
class StartedReplay:
    """A stored replay execution, and the messages to send for its first nodes."""

    execution_id: str
    replay_of: str
    dag_id: str
    dag_hash: str
    nodes_total: int
    follow_up: FollowUp


@dataclass(frozen=True)
class ReplayReport:
    """The comparison of a replay with its original so far.

    ``matches`` is None while the replay is pending or running. Until then,
    ``diff`` lists as differing only the nodes that the replay has already
    recorded.
    """

    execution_id: str
    replay_of: str
    status: str
    original_status: str
    matches: bool | None
    diff: ExecutionDiff

    @property
    def finished(self) -> bool:
        return self.status in _FINISHED

    def nodes_differing(self) -> list[dict[str, Any]]:
        """Return the diff of each node that differs, recorded by the replay unless it has finished."""
        differing = []
        for node in self.diff.nodes:
            recorded = self.finished or node.fields["status"].b in _RECORDED_NODE
            if node.differs and recorded:
                differing.append(node.to_dict())
        return differing

    def to_dict(self) -> dict[str, Any]:
        differing = self.nodes_differing()
        return {
            "execution_id": self.execution_id,
            "replay_of": self.replay_of,
            "status": self.status,
            "original_status": self.original_status,
            "matches": self.matches,
            "provenance_chain_hash": {
                "original": self.diff.provenance_chain_hash.a,
                "replay": self.diff.provenance_chain_hash.b,
            },
            "nodes_differing": differing,
            "nodes_nondeterministic": [node["node_id"] for node in differing if node["nondeterministic"]],
        }


def start_replay(
    scheduler: Scheduler,
    execution_id: str,
    *,
    default_execution_timeout_seconds: float | None = None,
) -> StartedReplay:
    """Store a pending replay of a finished execution and queue its first nodes.

    The caller sends the returned ``follow_up``. The stored DAG document is
    validated against the scheduler's agent registry first. Raises
    :class:`ExecutionNotFoundError` for an unknown id,
    :class:`ExecutionConflictError` while the original is pending or running or
    when its stored document no longer matches its ``dag_hash``, and
    :class:`DagValidationError` when an agent of the document is not
    registered.
    """
    with scheduler.db.connect() as conn:
        original = conn.execute(
            select(
                dag_executions.c.status, dag_executions.c.dag_hash, dag_executions.c.dag_document,
                dag_executions.c.input_data, dag_executions.c.execution_options,
            ).where(dag_executions.c.execution_id == execution_id)
        ).mappings().first()
    if original is None:
        raise ExecutionNotFoundError(execution_id)
    if original["status"] not in _FINISHED:
        raise ExecutionConflictError(
            f"execution {execution_id} is {original['status']}; replay it after it has completed, failed "
            "or been cancelled",
            execution_id=execution_id,
        )

    dag = parse_dag(original["dag_document"], scheduler.registry)
    if dag.dag_hash != original["dag_hash"]:
        raise ExecutionConflictError(
            f"the stored DAG document of execution {execution_id} hashes to {dag.dag_hash}, not to its dag_hash "
            f"{original['dag_hash']}, so it cannot be replayed; check the chain with "
            f"GET /executions/{execution_id}/provenance",
            execution_id=execution_id,
        )

    options = dict(original["execution_options"] or {})
    options[REPLAY_OPTION] = execution_id
    replay_id, follow_up = scheduler.create_execution(
        dag, original["input_data"], options=options,
        default_execution_timeout_seconds=default_execution_timeout_seconds,
    )
    logger.info("replay created execution_id=%s replay_of=%s dag_id=%s", replay_id, execution_id, dag.dag_id)
    return StartedReplay(replay_id, execution_id, dag.dag_id, dag.dag_hash, len(dag.nodes), follow_up)


def replay_report(db: Database, execution_id: str) -> ReplayReport:
    """Compare the replay ``execution_id`` with its original.

    Raises :class:`ExecutionNotFoundError` for an unknown id and
    :class:`NotAReplayError` for an execution that was not started as a replay.
    """
    with db.connect() as conn:
        row = conn.execute(
            select(dag_executions.c.execution_options).where(dag_executions.c.execution_id == execution_id)
        ).first()
    if row is None:
        raise ExecutionNotFoundError(execution_id)
    options = row.execution_options
    original_id = options.get(REPLAY_OPTION) if isinstance(options, dict) else None
    if not isinstance(original_id, str):
        raise NotAReplayError(execution_id)

    diff = diff_executions(db, original_id, execution_id)
    status = str(diff.status.b)
    matches = None
    if status in _FINISHED:
        matches = not diff.provenance_chain_hash.differs
    return ReplayReport(execution_id, original_id, status, str(diff.status.a), matches, diff)
