"""Plan an execution: the order, readiness counts and first nodes to send.

Scheduling is dependency-driven, not level by level: a node is sent as soon
as its own parents have finished. The plan below seeds that schedule; the
scheduler keeps it going as each node finishes, from readiness counts kept in
the database (see ``orchestrator.scheduler``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from orchestrator.dag import Dag

__all__ = ["ExecutionPlan", "plan_execution"]


@dataclass(frozen=True)
class ExecutionPlan:
    """The initial schedule of one execution."""

    ordinals: dict[str, int]
    pending_parents: dict[str, int]
    first_nodes: tuple[str, ...]
    ready_nodes: tuple[str, ...]


def plan_execution(dag: Dag) -> ExecutionPlan:
    """Return ordinals in canonical topological order and the first nodes to send.

    Roots beyond ``max_parallel_nodes`` start as ready and are sent as slots
    free up, lowest ordinal first.
    """
    order = dag.topological_order()
    ordinals = {node_id: index for index, node_id in enumerate(order)}
    pending = {node_id: len(dag.parents(node_id)) for node_id in order}
    roots = [node_id for node_id in order if pending[node_id] == 0]
    limit = dag.max_parallel_nodes
    return ExecutionPlan(
        ordinals=ordinals,
        pending_parents=pending,
        first_nodes=tuple(roots[:limit]),
        ready_nodes=tuple(roots[limit:]),
    )
