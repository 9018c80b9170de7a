"""The execution diff: compare two executions node by node.

For every node of either DAG the diff compares five values, each taken from
the stored records of both executions:

- ``input``: the ``input_hash`` of the node's provenance record. The input
  document covers the agent, its version, the params and the resolved
  inputs, so any change to those changes this hash.
- ``agent``: the record's ``agent_id`` and ``agent_version``.
- ``params``: the ``params`` of the record's input document, or the node's
  ``params`` in the stored DAG document when the node has no input document.
- ``output``: the record's ``output_hash``.
- ``status``: the record's status, or the node's current state while it has
  no record.

A node whose input hash is the same in both executions but whose output hash
differs is marked ``nondeterministic``: its agent received the same input
document and returned something else, or failed in only one of them.

The diff recomputes no hash, so it trusts the stored records. Verify both
chains with :func:`orchestrator.provenance.verify_execution` when the records
themselves are in doubt.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from orchestrator.dag import dag_from_normalized
from orchestrator.errors import ExecutionNotFoundError
from orchestrator.hashing import canonical_json
from orchestrator.models import dag_executions, execution_nodes, execution_provenance
from orchestrator.provenance import NULL_HASH

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

    from orchestrator.database import Database

__all__ = ["COMPARED_FIELDS", "ExecutionDiff", "FieldDiff", "NodeDiff", "diff_executions"]

# The per-node values the diff compares, in the order reports list them.
COMPARED_FIELDS = ("input", "agent", "params", "output", "status")


@dataclass(frozen=True)
class FieldDiff:
    """One compared value in execution A and in execution B, and whether they differ."""

    a: Any
    b: Any
    differs: bool

    def to_dict(self) -> dict[str, Any]:
        return {"differs": self.differs, "a": self.a, "b": self.b}


@dataclass(frozen=True)
class NodeDiff:
    """The comparison of one node. ``in_a`` and ``in_b`` show which of the two DAGs contain the node."""

    node_id: str
    in_a: bool
    in_b: bool
    fields: Mapping[str, FieldDiff]
    nondeterministic: bool

    @property
    def differences(self) -> list[str]:
        """Return the names of the compared values that differ, in COMPARED_FIELDS order."""
        return [name for name in COMPARED_FIELDS if self.fields[name].differs]

    @property
    def differs(self) -> bool:
        return bool(self.differences)

    def to_dict(self) -> dict[str, Any]:
        result: dict[str, Any] = {
            "node_id": self.node_id,
            "in_a": self.in_a,
            "in_b": self.in_b,
            "differs": self.differs,
            "differences": self.differences,
            "nondeterministic": self.nondeterministic,
        }
        for name in COMPARED_FIELDS:
            result[name] = self.fields[name].to_dict()
        return result


@dataclass(frozen=True)
class ExecutionDiff:
    """The comparison of execution A with execution B, node by node.

    ``provenance_chain_hash`` differs whenever either execution has none yet
    (pending, running or cancelled), so two unfinished executions are never
    reported identical.
    """

    execution_a: str
    execution_b: str
    status: FieldDiff
    dag_hash: FieldDiff
    input_hash: FieldDiff
    provenance_chain_hash: FieldDiff
    nodes: list[NodeDiff]

    @property
    def nodes_differing(self) -> list[str]:
        return [node.node_id for node in self.nodes if node.differs]

    @property
    def nodes_nondeterministic(self) -> list[str]:
        return [node.node_id for node in self.nodes if node.nondeterministic]

    @property
    def identical(self) -> bool:
        """Return whether the DAG, the execution input, the chain and every node are the same."""
        execution_level = (self.dag_hash, self.input_hash, self.provenance_chain_hash)
        return not any(value.differs for value in execution_level) and not self.nodes_differing

    def to_dict(self) -> dict[str, Any]:
        return {
            "execution_a": self.execution_a,
            "execution_b": self.execution_b,
            "identical": self.identical,
            "same_dag_hash": not self.dag_hash.differs,
            "same_input_hash": not self.input_hash.differs,
            "same_provenance_chain_hash": not self.provenance_chain_hash.differs,
            "status": self.status.to_dict(),
            "dag_hash": self.dag_hash.to_dict(),
            "input_hash": self.input_hash.to_dict(),
            "provenance_chain_hash": self.provenance_chain_hash.to_dict(),
            "nodes_differing": self.nodes_differing,
            "nodes_nondeterministic": self.nodes_nondeterministic,
            "nodes": [node.to_dict() for node in self.nodes],
        }


@dataclass(frozen=True)
class _StoredExecution:
    """The stored values of one execution that the diff reads."""

    execution_id: str
    status: str
    dag_hash: str
    input_hash: str
    provenance_chain_hash: str | None
    order: tuple[str, ...]
    dag_nodes: Mapping[str, Mapping[str, Any]]
    records: Mapping[str, Mapping[Any, Any]]
    node_states: Mapping[str, str]


def diff_executions(db: Database, execution_a: str, execution_b: str) -> ExecutionDiff:
    """Compare two executions' provenance records node by node.

    Nodes come in the canonical topological order of A's DAG, followed by the
    nodes that only B's DAG has, in B's canonical order. Raises
    :class:`ExecutionNotFoundError` for an unknown id.
    """
    with db.connect() as conn:
        a = _load(conn, execution_a)
        b = _load(conn, execution_b)

    node_ids = list(a.order) + [node_id for node_id in b.order if node_id not in a.dag_nodes]
    return ExecutionDiff(
        execution_a=execution_a,
        execution_b=execution_b,
        status=_plain(a.status, b.status),
        dag_hash=_plain(a.dag_hash, b.dag_hash),
        input_hash=_plain(a.input_hash, b.input_hash),
        provenance_chain_hash=_chain_hashes(a.provenance_chain_hash, b.provenance_chain_hash),
        nodes=[_diff_node(node_id, a, b) for node_id in node_ids],
    )


def _load(conn: Connection, execution_id: str) -> _StoredExecution:
    execution = conn.execute(
        select(
            dag_executions.c.status, dag_executions.c.dag_hash, dag_executions.c.dag_document,
            dag_executions.c.input_hash, dag_executions.c.provenance_chain_hash,
        ).where(dag_executions.c.execution_id == execution_id)
    ).mappings().first()
    if execution is None:
        raise ExecutionNotFoundError(execution_id)

    records = conn.execute(
        select(
            execution_provenance.c.node_id, execution_provenance.c.status, execution_provenance.c.agent_id,
            execution_provenance.c.agent_version, execution_provenance.c.input_document,
            execution_provenance.c.input_hash, execution_provenance.c.output_hash,
        ).where(execution_provenance.c.execution_id == execution_id)
    ).mappings().all()
    states = conn.execute(
        select(execution_nodes.c.node_id, execution_nodes.c.status)
        .where(execution_nodes.c.execution_id == execution_id)
    ).all()

    document = execution["dag_document"]
    return _StoredExecution(
        execution_id=execution_id,
        status=execution["status"],
        dag_hash=execution["dag_hash"],
        input_hash=execution["input_hash"],
        provenance_chain_hash=execution["provenance_chain_hash"],
        order=dag_from_normalized(document).topological_order(),
        dag_nodes=document["nodes"],
        records={record["node_id"]: record for record in records},
        node_states={row.node_id: row.status for row in states},
    )


def _plain(a: Any, b: Any) -> FieldDiff:
    return FieldDiff(a, b, a != b)


def _chain_hashes(a: str | None, b: str | None) -> FieldDiff:
    return FieldDiff(a, b, a is None or b is None or a != b)


def _diff_node(node_id: str, a: _StoredExecution, b: _StoredExecution) -> NodeDiff:
    record_a = a.records.get(node_id)
    record_b = b.records.get(node_id)
    fields = {
        "input": _plain(_record_value(record_a, "input_hash"), _record_value(record_b, "input_hash")),
        "agent": _agents(_agent(node_id, a), _agent(node_id, b)),
        "params": _params(_node_params(node_id, a), _node_params(node_id, b)),
        "output": _plain(_record_value(record_a, "output_hash"), _record_value(record_b, "output_hash")),
        "status": _plain(_status(node_id, a), _status(node_id, b)),
    }
    return NodeDiff(
        node_id=node_id,
        in_a=node_id in a.dag_nodes,
        in_b=node_id in b.dag_nodes,
        fields=fields,
        nondeterministic=_nondeterministic(record_a, record_b),
    )


def _record_value(record: Mapping[Any, Any] | None, name: str) -> Any:
    return None if record is None else record[name]


def _agent(node_id: str, execution: _StoredExecution) -> dict[str, Any] | None:
    """Return the node's agent as its record has it, else as its DAG node names it, else None."""
    record = execution.records.get(node_id)
    if record is not None:
        return {"agent_id": record["agent_id"], "agent_version": record["agent_version"]}
    node = execution.dag_nodes.get(node_id)
    if node is None:
        return None
    return {"agent_id": node["agent_id"], "agent_version": node.get("agent_version")}


def _agents(a: dict[str, Any] | None, b: dict[str, Any] | None) -> FieldDiff:
    """Compare two agents. A null version is unknown, so it does not differ from a known one.

    A record has a null ``agent_version`` when the node ended before its agent
    was resolved and the DAG does not pin a version.
    """
    if a is None or b is None:
        return FieldDiff(a, b, a != b)
    versions_known = a["agent_version"] is not None and b["agent_version"] is not None
    differs = a["agent_id"] != b["agent_id"] or (versions_known and a["agent_version"] != b["agent_version"])
    return FieldDiff(a, b, differs)


def _node_params(node_id: str, execution: _StoredExecution) -> Any:
    """Return the params of the node's input document, else those in the DAG document, else None."""
    record = execution.records.get(node_id)
    if record is not None and record["input_document"] is not None:
        return record["input_document"].get("params")
    node = execution.dag_nodes.get(node_id)
    return None if node is None else node.get("params", {})


def _params(a: Any, b: Any) -> FieldDiff:
    # Compared by canonical JSON, under which 1 and 1.0 are equal but 1 and true are not.
    return FieldDiff(a, b, canonical_json(a) != canonical_json(b))


def _status(node_id: str, execution: _StoredExecution) -> str | None:
    record = execution.records.get(node_id)
    if record is not None:
        return str(record["status"])
    return execution.node_states.get(node_id)


def _nondeterministic(a: Mapping[Any, Any] | None, b: Mapping[Any, Any] | None) -> bool:
    """Return whether both records have the same real input document but different outputs.

    A record without an input document has the null hash as its input hash
    (a node skipped, or failed before its inputs were resolved). Its agent
    never ran, so the record shows nothing about the agent.
    """
    if a is None or b is None:
        return False
    same_input = a["input_hash"] == b["input_hash"] and a["input_hash"] != NULL_HASH
    return bool(same_input and a["output_hash"] != b["output_hash"])
