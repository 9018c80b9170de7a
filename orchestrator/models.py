"""SQLAlchemy models of the orchestrator's tables.

The same models serve PostgreSQL (JSONB columns, psycopg2) and SQLite (JSON as
text). Alembic owns the schema of both: ``orchestrator db upgrade`` and the
embedded ``orchestrator run`` apply the same revisions.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, cast

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "Base",
    "CheckpointArchiveRow",
    "CheckpointRow",
    "DagWorkflowRow",
    "ExecutionNodeRow",
    "ExecutionRow",
    "NodeTraceRow",
    "ProvenanceArchiveRow",
    "ProvenanceRow",
    "WorkerHeartbeatRow",
    "checkpoint_archive",
    "dag_checkpoints",
    "dag_executions",
    "dag_workflows",
    "execution_nodes",
    "execution_provenance",
    "node_traces",
    "provenance_archive",
    "utcnow",
    "worker_heartbeats",
]

JsonValue = JSON().with_variant(JSONB(), "postgresql")
# Hashes, ids and states are short; these lengths are checked by the core
# before anything is written.
ID_LENGTH = 63
HASH_LENGTH = 64
# "ed25519:" and 16 hex digits, with room for longer ids of other algorithms.
SIGNING_KEY_ID_LENGTH = 64


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    pass


class DagWorkflowRow(Base):
    """A registered DAG; retired, never deleted, once it has executions."""

    __tablename__ = "dag_workflows"

    dag_id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    name: Mapped[str] = mapped_column(Text)
    version: Mapped[str] = mapped_column(String(ID_LENGTH))
    description: Mapped[str] = mapped_column(Text, default="")
    definition: Mapped[Any] = mapped_column(JsonValue)
    dag_hash: Mapped[str] = mapped_column(String(HASH_LENGTH))
    status: Mapped[str] = mapped_column(String(16), default="active")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ExecutionRow(Base):
    """One execution of a DAG on one input."""

    __tablename__ = "dag_executions"

    execution_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    dag_id: Mapped[str] = mapped_column(String(ID_LENGTH), ForeignKey("dag_workflows.dag_id"), index=True)
    status: Mapped[str] = mapped_column(String(16), index=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    dag_hash: Mapped[str] = mapped_column(String(HASH_LENGTH))
    # The normalized DAG document as it was run: later edits of the DAG do not
    # change what this execution's provenance refers to.
    dag_document: Mapped[Any] = mapped_column(JsonValue)
    input_data: Mapped[Any] = mapped_column(JsonValue)
    input_hash: Mapped[str] = mapped_column(String(HASH_LENGTH))
    execution_options: Mapped[Any] = mapped_column(JsonValue)
    provenance_chain_hash: Mapped[str | None] = mapped_column(String(HASH_LENGTH), nullable=True)
    chain_valid: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    # When the integrity sweep last verified the chain again.
    verified_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # Set when an operator regenerated this execution; its records stay as evidence.
    superseded_by: Mapped[str | None] = mapped_column(String(36), nullable=True)
    superseded_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    superseded_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    nodes_total: Mapped[int] = mapped_column(Integer)
    nodes_remaining: Mapped[int] = mapped_column(Integer)
    stop_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    # The execution fails once it runs past this moment (execution timeout).
    deadline_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finalizer_dispatched: Mapped[bool] = mapped_column(Boolean, default=False)
    # The signed chain head (orchestrator.signing): the finalizer sets all three
    # together when a signing key is configured, and a resume clears them.
    finalized_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    signature: Mapped[str | None] = mapped_column(Text, nullable=True)
    signing_key_id: Mapped[str | None] = mapped_column(String(SIGNING_KEY_ID_LENGTH), nullable=True)


class ExecutionNodeRow(Base):
    """The state of one node in one execution, and its place in the schedule."""

    __tablename__ = "execution_nodes"
    __table_args__ = (
        Index("ix_execution_nodes_execution_status", "execution_id", "status"),
    )

    execution_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("dag_executions.execution_id"), primary_key=True
    )
    node_id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    ordinal: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))
    pending_parents: Mapped[int] = mapped_column(Integer)
    attempt_count: Mapped[int] = mapped_column(Integer, default=0)
    task_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # The task that queued this node: if that task's worker dies after the
    # commit but before sending the message, its redelivery sends it again.
    queued_by_task: Mapped[str | None] = mapped_column(String(64), nullable=True)
    worker: Mapped[str | None] = mapped_column(String(255), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    queued_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class CheckpointRow(Base):
    """A node's outputs, written once when the node reaches a terminal state."""

    __tablename__ = "dag_checkpoints"
    __table_args__ = (UniqueConstraint("execution_id", "node_id", name="uq_dag_checkpoints_execution_node"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    execution_id: Mapped[str] = mapped_column(String(36), ForeignKey("dag_executions.execution_id"), index=True)
    node_id: Mapped[str] = mapped_column(String(ID_LENGTH))
    status: Mapped[str] = mapped_column(String(16))
    outputs: Mapped[Any] = mapped_column(JsonValue, nullable=True)
    output_hash: Mapped[str | None] = mapped_column(String(HASH_LENGTH), nullable=True)
    size_bytes: Mapped[int] = mapped_column(Integer, default=0)
    attempt_count: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    # Set when retention removed ``outputs``; ``output_hash`` stays so the
    # provenance chain can still be verified.
    payload_removed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # The checkpoint strategy that kept the outputs; NULL on older rows means database.
    payload_store: Mapped[str | None] = mapped_column(String(16), nullable=True)


class CheckpointArchiveRow(Base):
    """A checkpoint moved aside by a resume: corrupted evidence or a superseded attempt."""

    __tablename__ = "checkpoint_archive"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    execution_id: Mapped[str] = mapped_column(String(36), ForeignKey("dag_executions.execution_id"), index=True)
    node_id: Mapped[str] = mapped_column(String(ID_LENGTH))
    status: Mapped[str] = mapped_column(String(16))
    outputs: Mapped[Any] = mapped_column(JsonValue, nullable=True)
    output_hash: Mapped[str | None] = mapped_column(String(HASH_LENGTH), nullable=True)
    size_bytes: Mapped[int] = mapped_column(Integer, default=0)
    attempt_count: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    archived_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    reason: Mapped[str] = mapped_column(Text)


class ProvenanceArchiveRow(Base):
    """A provenance record moved aside by a resume, with when and why."""

    __tablename__ = "provenance_archive"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    execution_id: Mapped[str] = mapped_column(String(36), ForeignKey("dag_executions.execution_id"), index=True)
    node_id: Mapped[str] = mapped_column(String(ID_LENGTH))
    ordinal: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))
    agent_id: Mapped[str | None] = mapped_column(String(ID_LENGTH), nullable=True)
    agent_version: Mapped[str | None] = mapped_column(String(ID_LENGTH), nullable=True)
    input_document: Mapped[Any] = mapped_column(JsonValue, nullable=True)
    input_hash: Mapped[str] = mapped_column(String(HASH_LENGTH))
    output_hash: Mapped[str] = mapped_column(String(HASH_LENGTH))
    parent_hashes: Mapped[Any] = mapped_column(JsonValue)
    chain_hash: Mapped[str] = mapped_column(String(HASH_LENGTH))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    archived_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    reason: Mapped[str] = mapped_column(Text)


class WorkerHeartbeatRow(Base):
    """The last sign of life of one worker, by its Celery node name."""

    __tablename__ = "worker_heartbeats"

    worker: Mapped[str] = mapped_column(String(255), primary_key=True)
    last_seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ProvenanceRow(Base):
    """A node's provenance record: its hashes and its parents' chain hashes."""

    __tablename__ = "execution_provenance"
    __table_args__ = (UniqueConstraint("execution_id", "node_id", name="uq_execution_provenance_execution_node"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    execution_id: Mapped[str] = mapped_column(String(36), ForeignKey("dag_executions.execution_id"), index=True)
    node_id: Mapped[str] = mapped_column(String(ID_LENGTH))
    ordinal: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))
    agent_id: Mapped[str | None] = mapped_column(String(ID_LENGTH), nullable=True)
    agent_version: Mapped[str | None] = mapped_column(String(ID_LENGTH), nullable=True)
    input_document: Mapped[Any] = mapped_column(JsonValue, nullable=True)
    input_hash: Mapped[str] = mapped_column(String(HASH_LENGTH))
    output_hash: Mapped[str] = mapped_column(String(HASH_LENGTH))
    parent_hashes: Mapped[Any] = mapped_column(JsonValue)
    chain_hash: Mapped[str] = mapped_column(String(HASH_LENGTH))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class NodeTraceRow(Base):
    """One attempt of one node: who ran it, when, and how it ended."""

    __tablename__ = "node_traces"
    __table_args__ = (Index("ix_node_traces_execution_node", "execution_id", "node_id"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    execution_id: Mapped[str] = mapped_column(String(36), ForeignKey("dag_executions.execution_id"))
    node_id: Mapped[str] = mapped_column(String(ID_LENGTH))
    attempt: Mapped[int] = mapped_column(Integer)
    task_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    worker: Mapped[str | None] = mapped_column(String(255), nullable=True)
    status: Mapped[str] = mapped_column(String(16))
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    duration_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)


def _table(model: type[Base]) -> Table:
    return cast(Table, model.__table__)


# Core table handles for SQLAlchemy Core statements, typed as Table.
dag_workflows = _table(DagWorkflowRow)
dag_executions = _table(ExecutionRow)
execution_nodes = _table(ExecutionNodeRow)
dag_checkpoints = _table(CheckpointRow)
execution_provenance = _table(ProvenanceRow)
node_traces = _table(NodeTraceRow)
checkpoint_archive = _table(CheckpointArchiveRow)
provenance_archive = _table(ProvenanceArchiveRow)
worker_heartbeats = _table(WorkerHeartbeatRow)
