"""DAG documents for the benchmarks, and the schedule bounds a measured run is compared with.

Nothing here does I/O except :func:`load_workflow`. The workflow format is the
WfCommons-derived JSON ``{"tasks": [{"id", "parents", "runtime_s"}, ...]}``.
"""

from __future__ import annotations

import heapq
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

NOOP_AGENT = "bench.noop"
SLEEP_AGENT = "bench.sleep"


def layered_document(nodes: int, layers: int, max_parallel_nodes: int) -> dict[str, Any]:
    """Build a DAG of ``nodes`` no-op nodes in ``layers`` equal layers.

    A node at position ``p`` of a layer depends on positions ``p``, ``p + 1``
    and, for odd ``p``, ``p + 2`` of the layer before (modulo the width), so
    half the nodes have two parents and half have three.
    """
    if layers < 1 or nodes % layers:
        raise ValueError(f"nodes={nodes} must be a positive multiple of layers={layers}")
    width = nodes // layers
    if layers > 1 and width < 3:
        raise ValueError(f"each layer needs at least 3 nodes, got {width} (nodes={nodes}, layers={layers})")

    document_nodes: dict[str, Any] = {}
    for layer in range(layers):
        for position in range(width):
            node: dict[str, Any] = {"agent_id": NOOP_AGENT}
            if layer > 0:
                fan_in = 2 + position % 2
                node["depends_on"] = [_layer_node_id(layer - 1, (position + offset) % width) for offset in range(fan_in)]
            document_nodes[_layer_node_id(layer, position)] = node

    return {
        "dag_id": f"bench-layered-{nodes}",
        "description": f"{layers} layers of {width} no-op nodes, 2 or 3 parents each",
        "max_parallel_nodes": max_parallel_nodes,
        "nodes": document_nodes,
    }


def _layer_node_id(layer: int, position: int) -> str:
    return f"n{layer:03d}_{position:04d}"


@dataclass(frozen=True)
class Workflow:
    """A workflow's tasks as parent lists and runtimes in seconds, in file order."""

    name: str
    parents: Mapping[str, Sequence[str]]
    runtimes: Mapping[str, float]


def load_workflow(path: Path) -> Workflow:
    """Read a workflow file of tasks with ``id``, ``parents`` and ``runtime_s``."""
    data = json.loads(path.read_text(encoding="utf-8"))
    parents = {task["id"]: sorted(set(task["parents"])) for task in data["tasks"]}
    runtimes = {task["id"]: float(task["runtime_s"]) for task in data["tasks"]}
    unknown = sorted({parent for ids in parents.values() for parent in ids} - parents.keys())
    if unknown:
        raise ValueError(f"workflow {str(path)!r} is invalid: parents {unknown[:5]} are not among its tasks")
    return Workflow(path.stem, parents, runtimes)


def workflow_document(workflow: Workflow, time_scale: float, max_parallel_nodes: int) -> dict[str, Any]:
    """Turn each task into a ``bench.sleep`` node that sleeps ``runtime_s / time_scale`` seconds."""
    nodes = {}
    for task_id, parents in workflow.parents.items():
        node: dict[str, Any] = {
            "agent_id": SLEEP_AGENT,
            "params": {"seconds": round(workflow.runtimes[task_id] / time_scale, 6)},
        }
        if parents:
            node["depends_on"] = list(parents)
        nodes[task_id] = node
    return {
        "dag_id": f"bench-{workflow.name}",
        "description": f"{workflow.name}, each task sleeping its recorded runtime divided by {time_scale:g}",
        "max_parallel_nodes": max_parallel_nodes,
        "nodes": nodes,
    }


def topological_order(parents: Mapping[str, Sequence[str]]) -> list[str]:
    """Return the task ids in Kahn order, taking the smallest ready id first, as ``Dag.topological_order`` does.

    Raises ValueError when the workflow has a cycle.
    """
    children: dict[str, list[str]] = {task_id: [] for task_id in parents}
    pending = {task_id: len(ids) for task_id, ids in parents.items()}
    for task_id, ids in parents.items():
        for parent in ids:
            children[parent].append(task_id)

    ready = [task_id for task_id, count in pending.items() if count == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        task_id = heapq.heappop(ready)
        order.append(task_id)
        for child in children[task_id]:
            pending[child] -= 1
            if pending[child] == 0:
                heapq.heappush(ready, child)

    if len(order) != len(parents):
        raise ValueError("the workflow has a cycle")
    return order


@dataclass(frozen=True)
class ScheduleBounds:
    """Reference times of one workflow, in the workflow's own seconds (divide by the time scale)."""

    tasks: int
    depth: int
    total_runtime: float
    critical_path: float
    level_barrier_path: float

    def lower_bound(self, workers: int) -> float:
        """Return the makespan no schedule on ``workers`` workers can beat: max(critical path, work / workers)."""
        return max(self.critical_path, self.total_runtime / workers)


def schedule_bounds(workflow: Workflow) -> ScheduleBounds:
    """Compute the critical path, and the path a scheduler with barriers between levels would take.

    A task's level is 1 without parents, else 1 + the highest level of its
    parents. A level-barrier scheduler starts a level only when the whole
    level before has finished, so its best makespan is the sum over levels of
    the longest task in each level.
    """
    finish: dict[str, float] = {}
    level: dict[str, int] = {}
    for task_id in topological_order(workflow.parents):
        parents = workflow.parents[task_id]
        finish[task_id] = workflow.runtimes[task_id] + max((finish[p] for p in parents), default=0.0)
        level[task_id] = 1 + max((level[p] for p in parents), default=0)

    longest_in_level: dict[int, float] = {}
    for task_id, task_level in level.items():
        longest_in_level[task_level] = max(longest_in_level.get(task_level, 0.0), workflow.runtimes[task_id])

    return ScheduleBounds(
        tasks=len(workflow.parents),
        depth=max(level.values(), default=0),
        total_runtime=sum(workflow.runtimes.values()),
        critical_path=max(finish.values(), default=0.0),
        level_barrier_path=sum(longest_in_level.values()),
    )


def list_schedule_makespan(workflow: Workflow, workers: int) -> float:
    """Simulate a zero-overhead scheduler on ``workers`` workers and return its makespan.

    Whenever a worker is free it starts the ready task that comes first in
    topological order, which is how the orchestrator picks ready nodes when
    ``max_parallel_nodes`` slots are short. The result is an estimate of the
    best makespan for that many workers, not a bound, because another
    priority rule can do better or worse.
    """
    order = topological_order(workflow.parents)
    ordinal = {task_id: index for index, task_id in enumerate(order)}
    children: dict[str, list[str]] = {task_id: [] for task_id in order}
    pending = {task_id: len(workflow.parents[task_id]) for task_id in order}
    for task_id in order:
        for parent in workflow.parents[task_id]:
            children[parent].append(task_id)

    ready = [(ordinal[task_id], task_id) for task_id in order if pending[task_id] == 0]
    heapq.heapify(ready)
    running: list[tuple[float, str]] = []
    now = 0.0
    while ready or running:
        while ready and len(running) < workers:
            _, task_id = heapq.heappop(ready)
            heapq.heappush(running, (now + workflow.runtimes[task_id], task_id))

        now, task_id = heapq.heappop(running)
        for child in children[task_id]:
            pending[child] -= 1
            if pending[child] == 0:
                heapq.heappush(ready, (ordinal[child], child))
    return now
