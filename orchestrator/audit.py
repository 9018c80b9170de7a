"""Audit bundles: one self-contained JSON document per execution, for verification offline.

A bundle (format ``gl-audit-bundle-v1``) contains everything that the hashes of
scheme ``gl-prov-v1`` cover: the normalized DAG document, the execution
input, and for every provenance record its input document, its checkpoint's
outputs and every hash. It also carries the signed chain head when there is
one. Timings and attempt counts travel with it but enter no hash.

The bundle is written from stored data as it is, never repaired: a record
that was altered is exported altered, so that the offline verifier
(``verifier/gl_audit_verify.py``) reaches the same verdict as the API.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from orchestrator.checkpoints import MISSING
from orchestrator.errors import ExecutionNotFoundError
from orchestrator.models import dag_executions, execution_nodes, execution_provenance
from orchestrator.repository import format_timestamp
from orchestrator.signing import signature_block

if TYPE_CHECKING:
    from orchestrator.checkpoints import StoredCheckpoint
    from orchestrator.database import Database
    from orchestrator.signing import SigningKeys

__all__ = ["BUNDLE_FORMAT", "build_bundle"]

BUNDLE_FORMAT = "gl-audit-bundle-v1"
SCHEME = "gl-prov-v1"


def build_bundle(db: Database, execution_id: str, *, signing_keys: SigningKeys | None = None,
                 now: datetime | None = None) -> dict[str, Any]:
    """Return the audit bundle of one execution, with its signed chain head when it has one.

    ``signing_keys`` supply the public key of the signature's key id; without
    them the bundle's ``public_key`` is null. Raises
    :class:`ExecutionNotFoundError` for an unknown id.
    """
    with db.connect() as conn:
        execution = conn.execute(
            select(dag_executions).where(dag_executions.c.execution_id == execution_id)
        ).mappings().first()
        if execution is None:
            raise ExecutionNotFoundError(execution_id)
        records = conn.execute(
            select(execution_provenance).where(execution_provenance.c.execution_id == execution_id)
        ).mappings().all()
        nodes = {row["node_id"]: row for row in conn.execute(
            select(execution_nodes.c.node_id, execution_nodes.c.attempt_count, execution_nodes.c.started_at,
                   execution_nodes.c.finished_at).where(execution_nodes.c.execution_id == execution_id)
        ).mappings()}
        checkpoints = db.checkpoints.read(conn, execution_id)

    ordered = sorted(records, key=lambda record: (record["ordinal"], record["node_id"]))
    return {
        "bundle_format": BUNDLE_FORMAT,
        "scheme": SCHEME,
        "exported_at": format_timestamp(now or datetime.now(timezone.utc)),
        "execution": _execution_section(execution),
        "dag": execution["dag_document"],
        "nodes": [_node_section(record, checkpoints.get(record["node_id"]), nodes.get(record["node_id"]))
                  for record in ordered],
        "signature": signature_block(execution, signing_keys),
    }


def _execution_section(execution: Mapping[Any, Any]) -> dict[str, Any]:
    return {
        "execution_id": execution["execution_id"],
        "dag_id": execution["dag_id"],
        "status": execution["status"],
        "dag_hash": execution["dag_hash"],
        "input_data": execution["input_data"],
        "input_hash": execution["input_hash"],
        "provenance_chain_hash": execution["provenance_chain_hash"],
        "chain_valid": execution["chain_valid"],
        "created_at": format_timestamp(execution["created_at"]),
        "started_at": format_timestamp(execution["started_at"]),
        "completed_at": format_timestamp(execution["completed_at"]),
    }


def _node_section(record: Mapping[Any, Any], checkpoint: StoredCheckpoint | None,
                  node: Mapping[Any, Any] | None) -> dict[str, Any]:
    started = node["started_at"] if node is not None else None
    finished = node["finished_at"] if node is not None else None
    return {
        "node_id": record["node_id"],
        "ordinal": record["ordinal"],
        "status": record["status"],
        "agent_id": record["agent_id"],
        "agent_version": record["agent_version"],
        "attempt_count": checkpoint.attempt_count if checkpoint is not None else None,
        "input_document": record["input_document"],
        "input_hash": record["input_hash"],
        "checkpoint": _checkpoint_section(checkpoint),
        "output_hash": record["output_hash"],
        "parent_hashes": list(record["parent_hashes"] or []),
        "chain_hash": record["chain_hash"],
        "timings": {
            "started_at": format_timestamp(started),
            "finished_at": format_timestamp(finished),
            "duration_seconds": _seconds_between(started, finished),
        },
    }


def _checkpoint_section(checkpoint: StoredCheckpoint | None) -> dict[str, Any] | None:
    if checkpoint is None:
        return None
    section: dict[str, Any] = {
        "status": checkpoint.status,
        "output_hash": checkpoint.output_hash,
        "outputs": None if checkpoint.outputs is MISSING else checkpoint.outputs,
        "outputs_removed_at": format_timestamp(checkpoint.payload_removed_at),
    }
    if checkpoint.payload_note is not None:
        # Outputs that cannot be checked but are not suspect, like removed ones.
        section["outputs_not_kept"] = checkpoint.payload_note
    if checkpoint.payload_problem is not None:
        # The store could not return the outputs. The bundle gives the reason,
        # so that the null is not taken for the node's real output.
        section["outputs_unavailable"] = checkpoint.payload_problem
    return section


def _seconds_between(started: datetime | None, finished: datetime | None) -> float | None:
    if started is None or finished is None:
        return None
    if finished.tzinfo is None or started.tzinfo is None:
        # SQLite returns naive datetimes; every stored time is UTC.
        finished, started = finished.replace(tzinfo=None), started.replace(tzinfo=None)
    return (finished - started).total_seconds()

