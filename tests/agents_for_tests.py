"""Agents used by the tests; loaded by path through GL_ORCHESTRATOR_AGENT_MODULES."""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded

from orchestrator.agents import agent


@agent("test.const", version="1.0.0")
def const(inputs: dict[str, Any], params: dict[str, Any]) -> Any:
    """Return params.value."""
    return params.get("value")


@agent("test.echo", version="1.0.0")
def echo(inputs: dict[str, Any], params: dict[str, Any]) -> Any:
    """Return exactly what the agent received, so tests can check every node's inputs."""
    return {"inputs": inputs, "params": params}


@agent("test.sum", version="1.0.0")
def total(inputs: dict[str, Any], params: dict[str, Any]) -> Any:
    """Return the sum of all numeric inputs plus params.add."""
    return sum(value for value in inputs.values() if isinstance(value, (int, float))) + params.get("add", 0)


def _bump_counter(path: str) -> int:
    counter = Path(path)
    counter.parent.mkdir(parents=True, exist_ok=True)
    with open(counter, "a+", encoding="utf-8") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        handle.seek(0)
        count = int(handle.read() or 0) + 1
        handle.seek(0)
        handle.truncate()
        handle.write(str(count))
    return count


@agent("test.flaky", version="1.0.0")
def flaky(inputs: dict[str, Any], params: dict[str, Any]) -> Any:
    """Fail the first params.failures calls (counted in params.counter_file), then succeed."""
    calls = _bump_counter(params["counter_file"])
    if calls <= params["failures"]:
        raise RuntimeError(f"planned failure {calls} of {params['failures']}")
    return {"calls": calls}


@agent("test.sleep", version="1.0.0")
def sleep(inputs: dict[str, Any], params: dict[str, Any]) -> Any:
    """Sleep params.seconds, recording the start in params.marker_file when given."""
    if params.get("marker_file"):
        Path(params["marker_file"]).write_text(str(os.getpid()), encoding="utf-8")
    time.sleep(params["seconds"])
    return {"slept": params["seconds"]}


@agent("test.stubborn", version="1.0.0")
def stubborn(inputs: dict[str, Any], params: dict[str, Any]) -> Any:
    """Ignore the soft time limit, so only the hard limit can stop it."""
    deadline = time.monotonic() + params["seconds"]
    while time.monotonic() < deadline:
        try:
            time.sleep(0.05)
        except SoftTimeLimitExceeded:
            continue
    return {"finished": True}


@agent("test.fail", version="1.0.0")
def fail(inputs: dict[str, Any], params: dict[str, Any]) -> Any:
    """Always raise ValueError(params.message)."""
    raise ValueError(params.get("message", "planned failure"))


@agent("test.noop", version="1.0.0")
def noop(inputs: dict[str, Any], params: dict[str, Any]) -> Any:
    """Return an empty object."""
    return {}


@agent("test.bad_output", version="1.0.0")
def bad_output(inputs: dict[str, Any], params: dict[str, Any]) -> Any:
    """Return a value outside the JSON domain."""
    return {"value": float("nan")}


@agent("test.collect", version="1.0.0")
def collect(inputs: dict[str, Any], params: dict[str, Any]) -> Any:
    """Return the node's own name and everything it received."""
    return {"node": params["node"], "inputs": inputs}


@agent("test.exit", version="1.0.0")
def exit_process(inputs: dict[str, Any], params: dict[str, Any]) -> Any:
    """Call sys.exit, as a careless agent might."""
    raise SystemExit(3)


@agent("test.nul_error", version="1.0.0")
def nul_error(inputs: dict[str, Any], params: dict[str, Any]) -> Any:
    """Raise an error whose message PostgreSQL cannot store as it is."""
    raise RuntimeError("bad \x00 byte and \ud800 surrogate")


@agent("test.counted_sleep", version="1.0.0")
def counted_sleep(inputs: dict[str, Any], params: dict[str, Any]) -> Any:
    """Count the call in params.counter_file, write the pid to params.marker_file, then sleep params.seconds.

    The output contains only params.seconds, so every attempt returns the same
    outputs, and only the counter file shows how often the agent ran.
    """
    _bump_counter(params["counter_file"])
    if params.get("marker_file"):
        Path(params["marker_file"]).write_text(str(os.getpid()), encoding="utf-8")
    time.sleep(params.get("seconds", 0))
    return {"slept": params.get("seconds", 0)}
