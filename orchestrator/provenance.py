"""Provenance records and the verification of a whole chain.

Verification trusts nothing it reads. It recomputes every output hash from
the checkpoint's outputs, every input hash from the stored input document and
every chain hash from its fields. It checks each record's parent hashes
against the records of its parents in the stored DAG, and recomputes the
execution's ``provenance_chain_hash`` from the chain in canonical
topological order.

:func:`verify_execution` also checks the execution's signature, when one is
stored, against the recomputed ``provenance_chain_hash``: a signature that
does not verify, or that no trusted key can check, makes the chain invalid
(see :mod:`orchestrator.signing`).

The one hash it cannot recompute is the output hash of a checkpoint whose
outputs retention removed. That ``output_hash`` must still equal the
provenance record's, and the record's ``chain_hash`` still covers it, so a
change to either is still detected. The node's report carries a note saying
the outputs were not re-checked.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from orchestrator import hashing
from orchestrator.errors import DagValidationError, ExecutionNotFoundError
from orchestrator.models import dag_executions, execution_provenance
from orchestrator.signing import SignatureCheck, verify_signature

if TYPE_CHECKING:
    from orchestrator.checkpoints import StoredCheckpoint
    from orchestrator.dag import Dag
    from orchestrator.database import Database
    from orchestrator.signing import SigningKeys

__all__ = ["NULL_HASH", "ChainReport", "NodeVerification", "chain_hash_for", "verify_chain", "verify_execution"]

logger = logging.getLogger(__name__)

# The output and input hash of a node that produced nothing: H(C(null)).
NULL_HASH = hashing.output_hash(None)


def chain_hash_for(node_id: str, status: str, input_hash: str, output_hash: str, parent_hashes: Iterable[str]) -> str:
    return hashing.chain_hash(node_id, status, input_hash, output_hash, parent_hashes)


@dataclass
class NodeVerification:
    """The verification result of one node's provenance record."""

    node_id: str
    valid: bool
    status: str | None
    chain_hash: str | None
    input_hash: str | None
    output_hash: str | None
    expected_parent_hashes: list[str]
    actual_parent_hashes: list[str]
    reasons: list[str] = field(default_factory=list)
    # Facts that do not make the node invalid, such as outputs removed by retention.
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "valid": self.valid,
            "status": self.status,
            "chain_hash": self.chain_hash,
            "input_hash": self.input_hash,
            "output_hash": self.output_hash,
            "expected_parent_hashes": self.expected_parent_hashes,
            "actual_parent_hashes": self.actual_parent_hashes,
            "reasons": self.reasons,
            "notes": self.notes,
        }


@dataclass
class ChainReport:
    """The verification result of one execution's provenance chain."""

    execution_id: str
    dag_hash: str
    provenance_chain_hash: str
    stored_provenance_chain_hash: str | None
    chain_valid: bool
    nodes: list[NodeVerification]
    problems: list[str]
    # Set by verify_execution. verify_chain alone checks no signature.
    signature: SignatureCheck | None = None

    @property
    def chain_length(self) -> int:
        return sum(1 for node in self.nodes if node.chain_hash is not None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "execution_id": self.execution_id,
            "scheme": hashing.SCHEME,
            "dag_hash": self.dag_hash,
            "provenance_chain_hash": self.provenance_chain_hash,
            "stored_provenance_chain_hash": self.stored_provenance_chain_hash,
            "chain_valid": self.chain_valid,
            "chain_length": self.chain_length,
            "problems": self.problems,
            "signature": self.signature.to_dict() if self.signature is not None else None,
            "nodes": [node.to_dict() for node in self.nodes],
        }


def _safe_dag_hash(document: Mapping[str, Any]) -> str | None:
    try:
        return hashing.dag_hash(document)
    except ValueError:
        return None


def _safe_hash(value: Any) -> str | None:
    try:
        return hashing.output_hash(value)
    except ValueError:
        return None


def verify_chain(
    dag: Dag,
    execution_id: str,
    stored_dag_hash: str,
    provenance: Iterable[Mapping[Any, Any]],
    checkpoints: Iterable[Mapping[Any, Any] | StoredCheckpoint],
    stored_provenance_chain_hash: str | None = None,
    stored_dag_document: Mapping[str, Any] | None = None,
) -> ChainReport:
    """Recompute and check every hash of one execution's records."""
    records = {row["node_id"]: row for row in provenance}
    checkpoint_by_node = {row["node_id"]: row for row in checkpoints}
    order = dag.topological_order()
    problems: list[str] = []
    # Hash the stored document itself where there is one: parsing normalizes
    # it again, which would undo edits such as a reordered depends_on.
    actual_dag_hash = dag.dag_hash if stored_dag_document is None else _safe_dag_hash(stored_dag_document)
    if actual_dag_hash != stored_dag_hash:
        problems.append(f"DAG document does not match dag_hash: expected {stored_dag_hash}, actual {actual_dag_hash}")
    for extra in sorted(set(records) - set(dag.nodes)):
        problems.append(f"extra record: node {extra!r} is not in the DAG")

    recomputed: dict[str, str] = {}
    results: list[NodeVerification] = []
    for ordinal, node_id in enumerate(order):
        record = records.get(node_id)
        parents = dag.parents(node_id)
        expected_parents = sorted(recomputed[p] for p in parents if p in recomputed)
        if record is None:
            results.append(NodeVerification(node_id, False, None, None, None, None, expected_parents, [],
                                            ["record missing: no provenance record for this node"]))
            continue
        reasons, notes = _check_record(node_id, ordinal, record, checkpoint_by_node.get(node_id))
        stored_parents = record["parent_hashes"]
        if isinstance(stored_parents, list) and all(isinstance(item, str) for item in stored_parents):
            actual_parents = list(stored_parents)
        else:
            actual_parents = []
            reasons.append(f"parent hashes malformed: {stored_parents!r} is not a list of hashes")
        if len(expected_parents) != len(parents):
            reasons.append("parent missing: a parent has no provenance record")
        if sorted(actual_parents) != expected_parents:
            reasons.append("parent hashes differ from the chain hashes of the node's parents in the DAG")
        recomputed[node_id] = chain_hash_for(
            node_id, record["status"], record["input_hash"], record["output_hash"], actual_parents
        )
        if recomputed[node_id] != record["chain_hash"]:
            reasons.append(f"chain_hash altered: stored {record['chain_hash']}, recomputed {recomputed[node_id]}")
        results.append(NodeVerification(
            node_id, not reasons, record["status"], record["chain_hash"], record["input_hash"], record["output_hash"],
            expected_parents, actual_parents, reasons, notes,
        ))

    chain = [records[node_id]["chain_hash"] for node_id in order if node_id in records]
    computed = hashing.provenance_chain_hash(stored_dag_hash, chain)
    if stored_provenance_chain_hash is not None and stored_provenance_chain_hash != computed:
        problems.append(
            f"provenance_chain_hash differs: stored {stored_provenance_chain_hash}, recomputed {computed}"
        )
    valid = not problems and all(node.valid for node in results)
    return ChainReport(execution_id, stored_dag_hash, computed, stored_provenance_chain_hash, valid, results, problems)


def _check_record(
    node_id: str, ordinal: int, record: Mapping[Any, Any], checkpoint: Mapping[Any, Any] | StoredCheckpoint | None
) -> tuple[list[str], list[str]]:
    """Return the reasons that make the record invalid, and notes that do not."""
    reasons: list[str] = []
    notes: list[str] = []
    if record["ordinal"] != ordinal:
        reasons.append(f"order changed: ordinal {record['ordinal']}, canonical position {ordinal}")
    document = record["input_document"]
    input_hash = NULL_HASH if document is None else _safe_hash(document)
    if input_hash != record["input_hash"]:
        reasons.append(f"input altered: input document hashes to {input_hash}, record has {record['input_hash']}")
    if checkpoint is None:
        reasons.append("checkpoint missing: no checkpoint for this node")
        return reasons, notes

    removal = _payload_removal_note(checkpoint)
    problem = checkpoint.get("payload_problem")
    not_kept = checkpoint.get("payload_note")
    if removal is not None:
        notes.append(removal)
    elif not_kept is not None:
        notes.append(not_kept)
    elif problem is not None:
        reasons.append(f"output unavailable: {problem}")
    else:
        actual_output = _safe_hash(checkpoint["outputs"])
        if checkpoint["output_hash"] != actual_output:
            reasons.append(
                f"output altered: outputs hash to {actual_output}, checkpoint has {checkpoint['output_hash']}"
            )
    if checkpoint["output_hash"] != record["output_hash"]:
        reasons.append(
            f"output hash differs: checkpoint {checkpoint['output_hash']}, provenance record {record['output_hash']}"
        )
    if checkpoint["status"] != record["status"]:
        reasons.append(f"status differs: checkpoint {checkpoint['status']}, provenance record {record['status']}")
    return reasons, notes


def _payload_removal_note(checkpoint: Mapping[Any, Any] | StoredCheckpoint) -> str | None:
    """Return the note for outputs that retention removed, or None when the outputs can be re-hashed.

    Outputs that are still stored are always re-hashed, even when ``payload_removed_at`` is set.
    A removed payload whose ``output_hash`` is the hash of null re-hashes
    correctly from the NULL left behind, so it needs no note either.
    """
    removed_at = checkpoint.get("payload_removed_at")
    if removed_at is None or checkpoint["outputs"] is not None or checkpoint["output_hash"] == NULL_HASH:
        return None
    return f"outputs removed by retention at {_utc_text(removed_at)}; output_hash kept, not re-checked"


def _utc_text(value: datetime) -> str:
    # SQLite returns naive datetimes, and every stored time is UTC.
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def verify_execution(db: Database, execution_id: str, *, signing_keys: SigningKeys | None = None) -> ChainReport:
    """Load an execution's records, verify them, and check its signature against ``signing_keys``.

    Without ``signing_keys`` no key is trusted, so a signed execution gets
    status unknown-key and an invalid chain.
    """
    from orchestrator.dag import dag_from_normalized

    executions = dag_executions
    provenance = execution_provenance
    with db.connect() as conn:
        execution = conn.execute(
            select(executions.c.execution_id, executions.c.status, executions.c.dag_document,
                   executions.c.dag_hash, executions.c.provenance_chain_hash, executions.c.finalized_at,
                   executions.c.signature, executions.c.signing_key_id)
            .where(executions.c.execution_id == execution_id)
        ).mappings().first()
        if execution is None:
            raise ExecutionNotFoundError(execution_id)
        records = conn.execute(select(provenance).where(provenance.c.execution_id == execution_id)).mappings().all()
        stored_checkpoints = db.checkpoints.read(conn, execution_id).values()
    try:
        dag = dag_from_normalized(execution["dag_document"])
    except (DagValidationError, ValueError, TypeError, KeyError) as exc:
        # A stored document that no longer parses cannot be verified node by
        # node; the execution is reported broken rather than the request failing.
        problem = f"DAG document is invalid: {exc}"
        logger.error("provenance chain unverifiable execution_id=%s problem=%s", execution_id, problem)
        return ChainReport(execution_id, execution["dag_hash"], "", execution["provenance_chain_hash"], False,
                           [], [problem])
    report = verify_chain(dag, execution_id, execution["dag_hash"], records, stored_checkpoints,
                          execution["provenance_chain_hash"], execution["dag_document"])
    report.signature = verify_signature(execution, report.provenance_chain_hash, signing_keys)
    if report.signature.breaks_chain:
        report.chain_valid = False
        report.problems.append(f"signature {report.signature.status.value}: {report.signature.detail}")
    return report
