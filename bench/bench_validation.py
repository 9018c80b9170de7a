"""Measure how long parse_dag takes to validate large DAGs.

Two DAGs are validated, five times each, and the median wall time is printed:

* a generated DAG of 1,000 nodes in 10 layers of 100, where each node depends
  on 3 nodes of the previous layer and maps one input from each of them;
* the Montage workflow in ``montage-2122.json`` (2,122 tasks, WfCommons
  format ``{"tasks": [{"id", "parents": [...]}]}``), each task turned into a
  node of agent ``bench.noop``.

Run it from the repository root::

    python bench/bench_validation.py [--montage PATH] [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from orchestrator.agents import AgentRegistry  # noqa: E402
from orchestrator.dag import parse_dag  # noqa: E402

# The shared workflow traces sit beside the repository checkout.
DEFAULT_MONTAGE = Path(__file__).resolve().parents[2] / "shared" / "workflows" / "montage-2122.json"
AGENT_ID = "bench.noop"


def layered_document(layers: int = 10, width: int = 100, fan_in: int = 3) -> dict[str, Any]:
    """Build a DAG of ``layers * width`` nodes; each depends on ``fan_in`` nodes of the layer before."""
    nodes: dict[str, Any] = {}
    for layer in range(layers):
        for position in range(width):
            node_id = f"n{layer:03d}_{position:03d}"
            node: dict[str, Any] = {"agent_id": AGENT_ID, "params": {"layer": layer}}
            if layer > 0:
                parents = [f"n{layer - 1:03d}_{(position + offset) % width:03d}" for offset in range(fan_in)]
                node["depends_on"] = parents
                node["input_mapping"] = {f"in{index}": f"results.{parent}.value" for index, parent in enumerate(parents)}
            nodes[node_id] = node
    return {"dag_id": "bench-layered", "nodes": nodes}


def workflow_document(path: Path) -> dict[str, Any]:
    """Turn a WfCommons-style workflow into a DAG document."""
    workflow = json.loads(path.read_text(encoding="utf-8"))
    nodes = {
        task["id"]: {"agent_id": AGENT_ID, "depends_on": sorted(task["parents"])}
        for task in workflow["tasks"]
    }
    return {"dag_id": path.stem, "nodes": nodes}


def median_seconds(function: Callable[[], object], runs: int) -> float:
    timings = []
    for _ in range(runs):
        started = time.perf_counter()
        function()
        timings.append(time.perf_counter() - started)
    return statistics.median(timings)


def main() -> None:
    parser = argparse.ArgumentParser(description="Time DAG validation with parse_dag.")
    parser.add_argument("--montage", type=Path, default=DEFAULT_MONTAGE, help="path of montage-2122.json")
    parser.add_argument("--runs", type=int, default=5, help="runs per DAG; the median is printed")
    args = parser.parse_args()

    registry = AgentRegistry()
    registry.register(AGENT_ID, "1.0.0", lambda inputs, params: {})

    cases = [("layered 10 x 100, fan-in 3", layered_document())]
    if args.montage.is_file():
        cases.append((f"{args.montage.name}", workflow_document(args.montage)))
    else:
        print(f"{args.montage} not found; skipping the Montage workflow", file=sys.stderr)

    print(f"python {sys.version.split()[0]}, median of {args.runs} runs")
    for label, document in cases:
        dag = parse_dag(document, registry)
        edges = sum(len(node.depends_on) for node in dag.nodes.values())
        seconds = median_seconds(lambda: parse_dag(document, registry), args.runs)
        print(f"{label}: {len(dag.nodes)} nodes, {edges} edges, validation {seconds * 1000:.1f} ms")


if __name__ == "__main__":
    main()
