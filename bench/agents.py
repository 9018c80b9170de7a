"""Agents for the benchmarks in ``bench/run_benchmarks.py``.

Workers load this file through ``GL_ORCHESTRATOR_AGENT_MODULES=bench/agents.py``.
"""

from __future__ import annotations

import time
from typing import Any

from orchestrator.agents import agent


@agent("bench.noop", version="1.0.0")
def noop(inputs: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """Return an empty result, so a node costs only the orchestrator's own work."""
    return {}


@agent("bench.sleep", version="1.0.0")
def sleep(inputs: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """Sleep for ``params["seconds"]`` seconds and return an empty result."""
    time.sleep(float(params["seconds"]))
    return {}
