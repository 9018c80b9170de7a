"""The execution diff on SQLite and PostgreSQL, with executions run by hand through the Scheduler."""

from __future__ import annotations

from itertools import count
from typing import Any

import pytest

from orchestrator.agents import AgentRegistry
from orchestrator.comparison import COMPARED_FIELDS, diff_executions
from orchestrator.database import Database
from orchestrator.errors import ExecutionNotFoundError
from orchestrator.provenance import NULL_HASH
from orchestrator.scheduler import Scheduler
from tests.test_resume import _run_until_done
from tests.test_scheduler import _dag, _start


class Counter:
    """A non-deterministic agent: returns how often it has been called, after failing the calls listed in ``fail_on``."""

    def __init__(self, fail_on: tuple[int, ...] = ()) -> None:
        self.calls = count(1)
        self.fail_on = fail_on

    def __call__(self, inputs: dict[str, Any], params: dict[str, Any]) -> Any:
        call = next(self.calls)
        if call in self.fail_on:
            raise RuntimeError(f"planned failure on call {call}")
        return {"call": call, "a": inputs["a"]}


@pytest.fixture
def counter() -> Counter:
    return Counter()


@pytest.fixture
def registry(counter: Counter) -> AgentRegistry:
    agents = AgentRegistry()
    agents.register("t.const", "1.0.0", lambda inputs, params: params["value"])
    agents.register("t.add", "1.0.0", lambda inputs, params: sum(value for value in inputs.values()))
    agents.register("t.add", "2.0.0", lambda inputs, params: sum(value for value in inputs.values()) + 1000)
    agents.register("t.pick", "1.0.0", lambda inputs, params: inputs["value"][params["key"]])
    agents.register("t.counter", "1.0.0", counter)
    return agents


# a -> n (non-deterministic) -> d; a -> e, and e also reads the execution input.
NODES = {
    "a": {"agent_id": "t.const", "params": {"value": 1}},
    "n": {"agent_id": "t.counter", "depends_on": ["a"], "input_mapping": {"a": "results.a"}},
    "d": {"agent_id": "t.pick", "depends_on": ["n"], "input_mapping": {"value": "results.n"},
          "params": {"key": "call"}},
    "e": {"agent_id": "t.add", "depends_on": ["a"], "input_mapping": {"a": "results.a", "x": "input.x"}},
}
DETERMINISTIC = {node_id: node for node_id, node in NODES.items() if node_id in {"a", "e"}}


def _run(database: Database, registry: AgentRegistry, nodes: dict[str, Any], input_data: Any,
         **extra: Any) -> tuple[Scheduler, str]:
    scheduler, execution_id, follow_up = _start(database, registry, _dag(registry, nodes, **extra), input_data)
    _run_until_done(scheduler, follow_up, execution_id, database)
    return scheduler, execution_id


def test_diff_same_run_identical(database: Database, registry: AgentRegistry) -> None:
    _, first = _run(database, registry, DETERMINISTIC, {"x": 2})
    _, second = _run(database, registry, DETERMINISTIC, {"x": 2})

    diff = diff_executions(database, first, second)
    assert diff.identical is True
    assert diff.nodes_differing == []
    assert diff.nodes_nondeterministic == []
    report = diff.to_dict()
    assert report["same_dag_hash"] is True
    assert report["same_input_hash"] is True
    assert report["same_provenance_chain_hash"] is True
    assert report["provenance_chain_hash"]["a"] == report["provenance_chain_hash"]["b"]
    assert [node["node_id"] for node in report["nodes"]] == ["a", "e"]
    for node in report["nodes"]:
        assert node["in_a"] is True
        assert node["in_b"] is True
        assert node["differences"] == []
        assert set(COMPARED_FIELDS) <= set(node)
    assert report["nodes"][1]["agent"]["a"] == {"agent_id": "t.add", "agent_version": "2.0.0"}
    assert report["nodes"][1]["status"] == {"differs": False, "a": "completed", "b": "completed"}


def test_diff_marks_nondeterministic_node(database: Database, registry: AgentRegistry) -> None:
    _, first = _run(database, registry, NODES, {"x": 2})
    _, second = _run(database, registry, NODES, {"x": 2})

    diff = diff_executions(database, first, second)
    assert diff.identical is False
    assert diff.nodes_differing == ["n", "d"]
    assert diff.nodes_nondeterministic == ["n"]
    assert diff.to_dict()["same_provenance_chain_hash"] is False
    nodes = {node.node_id: node for node in diff.nodes}
    assert [node.node_id for node in diff.nodes] == ["a", "e", "n", "d"]

    assert nodes["n"].differences == ["output"]
    assert nodes["n"].fields["input"].a == nodes["n"].fields["input"].b
    assert nodes["d"].differences == ["input", "output"]
    assert nodes["d"].nondeterministic is False
    assert nodes["d"].fields["params"].to_dict() == {"differs": False, "a": {"key": "call"}, "b": {"key": "call"}}
    assert nodes["e"].differs is False
    assert nodes["a"].differs is False


def test_diff_failure_in_one_run_nondeterministic(database: Database, registry: AgentRegistry,
                                                  counter: Counter) -> None:
    counter.fail_on = (1,)
    _, failed = _run(database, registry, NODES, {"x": 2}, on_failure="continue")
    _, completed = _run(database, registry, NODES, {"x": 2}, on_failure="continue")

    diff = diff_executions(database, failed, completed)
    nodes = {node.node_id: node for node in diff.nodes}
    assert diff.status.to_dict() == {"differs": True, "a": "failed", "b": "completed"}
    assert nodes["n"].differences == ["output", "status"]
    assert nodes["n"].nondeterministic is True
    assert nodes["n"].fields["output"].a == NULL_HASH
    # d was skipped in the failed run, so it has no input document there.
    assert nodes["d"].fields["input"].a == NULL_HASH
    assert nodes["d"].fields["status"].to_dict() == {"differs": True, "a": "skipped", "b": "completed"}
    assert nodes["d"].fields["params"].differs is False
    assert nodes["d"].nondeterministic is False
    assert diff.nodes_nondeterministic == ["n"]


def test_diff_input_change(database: Database, registry: AgentRegistry) -> None:
    _, first = _run(database, registry, DETERMINISTIC, {"x": 2})
    _, second = _run(database, registry, DETERMINISTIC, {"x": 3})

    diff = diff_executions(database, first, second)
    assert diff.to_dict()["same_input_hash"] is False
    assert diff.to_dict()["same_dag_hash"] is True
    assert diff.nodes_differing == ["e"]
    assert diff.nodes_nondeterministic == []
    assert {node.node_id: node.differences for node in diff.nodes}["e"] == ["input", "output"]


def test_diff_dag_change_params_agent_extra_node(database: Database, registry: AgentRegistry) -> None:
    before = {
        "a": {"agent_id": "t.const", "params": {"value": 1}},
        "e": {"agent_id": "t.add", "agent_version": "1.0.0", "depends_on": ["a"], "input_mapping": {"a": "results.a"}},
    }
    after = {
        "a": {"agent_id": "t.const", "params": {"value": 5}},
        "e": {"agent_id": "t.add", "agent_version": "2.0.0", "depends_on": ["a"], "input_mapping": {"a": "results.a"}},
        "extra": {"agent_id": "t.const", "params": {"value": 0}},
        "b": {"agent_id": "t.const", "params": {"value": 0}},
    }
    _, first = _run(database, registry, before, {})
    _, second = _run(database, registry, after, {})

    diff = diff_executions(database, first, second)
    assert diff.to_dict()["same_dag_hash"] is False
    assert [node.node_id for node in diff.nodes] == ["a", "e", "b", "extra"]
    nodes = {node.node_id: node for node in diff.nodes}
    assert nodes["a"].differences == ["input", "params", "output"]
    assert nodes["a"].fields["params"].a == {"value": 1}
    assert nodes["a"].fields["params"].b == {"value": 5}
    assert nodes["e"].differences == ["input", "agent", "output"]
    assert nodes["e"].fields["agent"].b == {"agent_id": "t.add", "agent_version": "2.0.0"}
    for extra in ("b", "extra"):
        assert nodes[extra].in_a is False
        assert nodes[extra].in_b is True
        assert nodes[extra].differences == list(COMPARED_FIELDS)
        assert nodes[extra].fields["status"].a is None
    assert diff.nodes_nondeterministic == []


def test_diff_unfinished_execution(database: Database, registry: AgentRegistry) -> None:
    _, finished = _run(database, registry, DETERMINISTIC, {"x": 2})
    _, pending, _ = _start(database, registry, _dag(registry, DETERMINISTIC), {"x": 2})

    diff = diff_executions(database, finished, pending)
    assert diff.identical is False
    assert diff.provenance_chain_hash.differs is True
    assert diff.provenance_chain_hash.b is None
    statuses = {node.node_id: node.fields["status"].b for node in diff.nodes}
    assert statuses == {"a": "queued", "e": "waiting"}
    nodes = {node.node_id: node for node in diff.nodes}
    # Without records, B's agent and params come from its DAG document, which pins no version.
    assert nodes["e"].fields["agent"].to_dict() == {
        "differs": False,
        "a": {"agent_id": "t.add", "agent_version": "2.0.0"},
        "b": {"agent_id": "t.add", "agent_version": None},
    }
    assert nodes["e"].differences == ["input", "output", "status"]
    assert diff.nodes_nondeterministic == []

    same = diff_executions(database, pending, pending)
    assert same.identical is False
    assert same.nodes_differing == []


def test_diff_unknown_execution(database: Database, registry: AgentRegistry) -> None:
    _, finished = _run(database, registry, DETERMINISTIC, {"x": 2})
    with pytest.raises(ExecutionNotFoundError, match="'missing' not found"):
        diff_executions(database, finished, "missing")
    with pytest.raises(ExecutionNotFoundError, match="'missing' not found"):
        diff_executions(database, "missing", finished)
