"""Tests of DAG documents: loading, validation rules, normalization, hashing and graph queries."""

from __future__ import annotations

import copy
import json
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest



from orchestrator.agents import AgentRegistry
from orchestrator.dag import (
    DEFAULT_EXECUTION_TIMEOUT_SECONDS,
    DEFAULT_RETRY_POLICY,
    DEFAULT_TIMEOUT_POLICY,
    Dag,
    RetryPolicy,
    TimeoutPolicy,
    dag_from_normalized,
    load_dag_document,
    parse_dag,
)
from orchestrator.errors import DagProblem, DagValidationError
from orchestrator.hashing import dag_hash

GHG_YAML = """\
dag_id: ghg-inventory
name: GHG inventory
version: "1.0.0"
on_failure: fail_fast
default_retry_policy: {max_retries: 2, strategy: exponential, base_delay: 1.0, max_delay: 30.0, jitter: true}
default_timeout_policy: {timeout_seconds: 120, on_timeout: fail}
max_parallel_nodes: 10
nodes:
  load_activity:
    agent_id: ghg.load_activity
    params: {path: activity.csv}
  combustion:
    agent_id: ghg.stationary_combustion
    depends_on: [load_activity]
    input_mapping: {rows: results.load_activity.rows, year: input.reporting_year}
    condition: "input.include_scope1 == true"
    retry_policy: {max_retries: 3, strategy: exponential, base_delay: 0.5}
    timeout_policy: {timeout_seconds: 60, on_timeout: fail}
    on_failure: stop
"""


def make_registry() -> AgentRegistry:
    registry = AgentRegistry()
    for agent_id in ("ghg.load_activity", "ghg.stationary_combustion", "t.noop"):
        registry.register(agent_id, "1.0.0", lambda inputs, params: {})
    return registry


def make_document(nodes: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"dag_id": "test-dag", **fields, "nodes": nodes}


def chain(*node_ids: str) -> dict[str, Any]:
    """Nodes where each depends on the one before it."""
    nodes: dict[str, Any] = {}
    for index, node_id in enumerate(node_ids):
        nodes[node_id] = {"agent_id": "t.noop", "depends_on": list(node_ids[index - 1 : index])}
    return nodes


def problems_of(document: Any, registry: AgentRegistry | None = None) -> list[DagProblem]:
    with pytest.raises(DagValidationError) as caught:
        parse_dag(document, registry)
    return caught.value.problems


def only_problem(document: Any, registry: AgentRegistry | None = None) -> DagProblem:
    problems = problems_of(document, registry)
    assert len(problems) == 1, problems
    return problems[0]


# Normalization and hashing.


def test_parse_minimal_defaults():
    dag = parse_dag(make_document({"a": {"agent_id": "t.noop"}}))
    assert dag.document == {
        "dag_id": "test-dag",
        "name": "test-dag",
        "version": "1.0.0",
        "description": "",
        "on_failure": "fail_fast",
        "default_retry_policy": {
            "max_retries": 0,
            "strategy": "exponential",
            "base_delay": 1.0,
            "max_delay": 60.0,
            "jitter": True,
        },
        "default_timeout_policy": {"timeout_seconds": 3600.0, "on_timeout": "fail"},
        "max_parallel_nodes": 32,
        "nodes": {
            "a": {
                "agent_id": "t.noop",
                "agent_version": None,
                "depends_on": [],
                "params": {},
                "input_mapping": {},
                "condition": None,
                "retry_policy": DEFAULT_RETRY_POLICY.to_dict(),
                "timeout_policy": DEFAULT_TIMEOUT_POLICY.to_dict(),
                "on_failure": "stop",
                "description": "",
            }
        },
    }


def test_parse_minimal_dag_fields():
    dag = parse_dag(make_document({"a": {"agent_id": "t.noop"}}))
    assert dag.dag_id == "test-dag"
    assert dag.name == "test-dag"
    assert dag.version == "1.0.0"
    assert dag.on_failure == "fail_fast"
    assert dag.max_parallel_nodes == 32
    node = dag.nodes["a"]
    assert node.agent_version is None
    assert node.depends_on == ()
    assert node.params == {}
    assert node.condition is None
    assert node.retry_policy == DEFAULT_RETRY_POLICY
    assert node.timeout_policy == DEFAULT_TIMEOUT_POLICY
    assert node.on_failure == "stop"


def test_parse_node_policy_inherits_defaults():
    dag = parse_dag(load_dag_document(GHG_YAML), make_registry())
    combustion = dag.nodes["combustion"]
    assert combustion.retry_policy == RetryPolicy(
        max_retries=3, strategy="exponential", base_delay=0.5, max_delay=30.0, jitter=True
    )
    assert combustion.timeout_policy == TimeoutPolicy(timeout_seconds=60.0, on_timeout="fail")
    assert dag.nodes["load_activity"].retry_policy.max_retries == 2
    assert dag.nodes["load_activity"].timeout_policy.timeout_seconds == 120.0


def test_parse_ghg_example_fields():
    dag = parse_dag(load_dag_document(GHG_YAML), make_registry())
    combustion = dag.nodes["combustion"]
    assert dag.max_parallel_nodes == 10
    assert combustion.depends_on == ("load_activity",)
    assert combustion.input_mapping == {"rows": "results.load_activity.rows", "year": "input.reporting_year"}
    assert combustion.condition is not None
    assert combustion.condition.source == "input.include_scope1 == true"
    assert dag.document["nodes"]["combustion"]["condition"] == "input.include_scope1 == true"
    assert dag.nodes["load_activity"].params == {"path": "activity.csv"}


def test_parse_depends_on_sorted():
    nodes = {
        "z": {"agent_id": "t.noop"},
        "b": {"agent_id": "t.noop"},
        "m": {"agent_id": "t.noop", "depends_on": ["z", "b"]},
    }
    dag = parse_dag(make_document(nodes))
    assert dag.nodes["m"].depends_on == ("b", "z")
    assert dag.document["nodes"]["m"]["depends_on"] == ["b", "z"]


def test_parse_agent_version_pinned():
    registry = make_registry()
    registry.register("t.noop", "2.0.0", lambda inputs, params: {})
    dag = parse_dag(make_document({"a": {"agent_id": "t.noop", "agent_version": "2.0.0"}}), registry)
    assert dag.nodes["a"].agent_version == "2.0.0"
    assert dag.document["nodes"]["a"]["agent_version"] == "2.0.0"


def test_dag_hash_of_normalized_document():
    dag = parse_dag(load_dag_document(GHG_YAML))
    assert dag.dag_hash == dag_hash(dag.document)
    assert len(dag.dag_hash) == 64


def test_dag_round_trip():
    dag = parse_dag(load_dag_document(GHG_YAML), make_registry())
    again = dag_from_normalized(dag.document)
    assert again.dag_hash == dag.dag_hash
    assert again.document == dag.document


def test_dag_round_trip_through_json():
    dag = parse_dag(load_dag_document(GHG_YAML))
    stored = json.loads(json.dumps(dag.document))
    assert dag_from_normalized(stored).dag_hash == dag.dag_hash


def test_dag_hash_ignores_key_order():
    document = load_dag_document(GHG_YAML)
    reordered = dict(reversed(list(document.items())))
    reordered["nodes"] = dict(reversed(list(document["nodes"].items())))
    assert parse_dag(reordered).dag_hash == parse_dag(document).dag_hash


def test_dag_hash_same_for_explicit_defaults():
    implicit = make_document({"a": {"agent_id": "t.noop"}})
    explicit = make_document(
        {"a": {"agent_id": "t.noop", "depends_on": [], "params": {}, "on_failure": "stop"}},
        version="1.0.0",
        max_parallel_nodes=32,
        default_retry_policy={"max_retries": 0},
    )
    assert parse_dag(explicit).dag_hash == parse_dag(implicit).dag_hash


def test_dag_hash_changes_with_params():
    first = parse_dag(make_document({"a": {"agent_id": "t.noop", "params": {"gas": "CO2"}}}))
    second = parse_dag(make_document({"a": {"agent_id": "t.noop", "params": {"gas": "CH4"}}}))
    assert first.dag_hash != second.dag_hash


def test_parse_copies_params():
    document = make_document({"a": {"agent_id": "t.noop", "params": {"rows": [1, 2]}}})
    dag = parse_dag(document)
    document["nodes"]["a"]["params"]["rows"].append(3)
    assert dag.nodes["a"].params == {"rows": [1, 2]}
    assert dag.dag_hash == dag_hash(dag.document)


def test_execution_timeout_normalized_to_float():
    dag = parse_dag(make_document({"a": {"agent_id": "t.noop"}}, execution_timeout_seconds=3600))
    assert dag.document["execution_timeout_seconds"] == 3600.0
    assert isinstance(dag.document["execution_timeout_seconds"], float)
    assert dag.execution_timeout_seconds == 3600.0
    again = dag_from_normalized(dag.document)
    assert again.dag_hash == dag.dag_hash
    assert again.execution_timeout_seconds == 3600.0


def test_execution_timeout_absent_keeps_hash():
    without = parse_dag(make_document({"a": {"agent_id": "t.noop"}}))
    with_null = parse_dag(make_document({"a": {"agent_id": "t.noop"}}, execution_timeout_seconds=None))
    with_value = parse_dag(make_document({"a": {"agent_id": "t.noop"}}, execution_timeout_seconds=60))
    assert "execution_timeout_seconds" not in without.document
    assert without.execution_timeout_seconds is None
    assert with_null.document == without.document
    assert with_null.dag_hash == without.dag_hash
    assert with_value.dag_hash != without.dag_hash


def test_execution_timeout_falls_back_to_default():
    start = datetime(2026, 1, 31, 12, 0, tzinfo=timezone.utc)
    without = parse_dag(make_document({"a": {"agent_id": "t.noop"}}))
    assert without.execution_timeout(600.0) == 600.0
    assert without.execution_timeout(0.0) is None
    assert without.execution_timeout() == DEFAULT_EXECUTION_TIMEOUT_SECONDS == 86400.0
    assert without.deadline_after(start, 600.0) == start + timedelta(seconds=600)
    assert without.deadline_after(start, 0.0) is None

    own = parse_dag(make_document({"a": {"agent_id": "t.noop"}}, execution_timeout_seconds=60))
    assert own.execution_timeout(0.0) == 60.0
    assert own.execution_timeout(600.0) == 60.0
    assert own.deadline_after(start, 0.0) == start + timedelta(seconds=60)


# Validation rules, one per code.


def test_rule_empty_dag():
    problem = only_problem(make_document({}))
    assert problem.code == "empty_dag"
    assert problem.message == "DAG 'test-dag' has no nodes; add at least one node under nodes"


def test_rule_nodes_missing():
    problem = only_problem({"dag_id": "x"})
    assert problem.code == "invalid_field"
    assert "nodes is missing" in problem.message


def test_rule_document_not_mapping():
    problem = only_problem(["dag_id"])
    assert problem.code == "invalid_field"
    assert "a DAG document must be a mapping" in problem.message


def test_rule_invalid_dag_id():
    problem = only_problem({"dag_id": "ghg inventory", "nodes": {"a": {"agent_id": "t.noop"}}})
    assert problem.code == "invalid_id"
    assert 'dag_id "ghg inventory" is invalid; use 1-63 characters of A-Z a-z 0-9 _ . -' in problem.message


def test_rule_dag_id_too_long():
    problem = only_problem({"dag_id": "d" * 64, "nodes": {"a": {"agent_id": "t.noop"}}})
    assert problem.code == "invalid_id"


def test_rule_dag_id_missing():
    problem = only_problem({"nodes": {"a": {"agent_id": "t.noop"}}})
    assert problem.code == "invalid_field"
    assert "dag_id is missing" in problem.message


def test_rule_invalid_node_id():
    problem = only_problem(make_document({"load/activity": {"agent_id": "t.noop"}}))
    assert problem.code == "invalid_id"
    assert problem.node_ids == ("load/activity",)
    assert "node id 'load/activity' is invalid" in problem.message


def test_rule_node_id_not_string():
    problem = only_problem(make_document({2024: {"agent_id": "t.noop"}}))
    assert problem.code == "invalid_id"
    assert "node id 2024 must be a string; quote it" in problem.message


def test_rule_agent_id_missing():
    problem = only_problem(make_document({"a": {"params": {}}}))
    assert problem.code == "invalid_field"
    assert problem.node_ids == ("a",)
    assert "node 'a': agent_id is missing" in problem.message


def test_rule_version_number():
    problem = only_problem(load_dag_document("dag_id: d\nversion: 1.0\nnodes: {a: {agent_id: t.noop}}\n"))
    assert problem.code == "invalid_field"
    assert problem.message == 'version 1.0 must be a string; quote it: "1.0"'


def test_rule_agent_version_number():
    problem = only_problem(make_document({"a": {"agent_id": "t.noop", "agent_version": 2}}))
    assert problem.code == "invalid_field"
    assert "node 'a': agent_version 2 must be a string; quote it" in problem.message


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"name": 5}, "the DAG's name must be a string, not 5"),
        ({"description": ["x"]}, "the DAG's description must be a string"),
        ({"max_parallel_nodes": 0}, "max_parallel_nodes must be an integer >= 1, not 0"),
        ({"max_parallel_nodes": True}, "max_parallel_nodes must be an integer >= 1, not true"),
        ({"on_failure": "abort"}, 'on_failure "abort" is invalid; use fail_fast or continue'),
    ],
)
def test_rule_invalid_top_level_field(fields, message):
    problem = only_problem(make_document({"a": {"agent_id": "t.noop"}}, **fields))
    assert problem.code == "invalid_field"
    assert message in problem.message


@pytest.mark.parametrize(
    "value", [0, 0.5, -1, 2592000.5, "3600", True, [60], {"seconds": 60}, float("nan"), float("inf")]
)
def test_rule_invalid_execution_timeout(value):
    problem = only_problem(make_document({"a": {"agent_id": "t.noop"}}, execution_timeout_seconds=value))
    assert problem.code == "invalid_field"
    assert problem.node_ids == ()
    assert "execution_timeout_seconds must be a number of seconds from 1 to 2592000 (30 days)" in problem.message
    assert "GL_ORCHESTRATOR_EXECUTION_TIMEOUT_SECONDS" in problem.message


@pytest.mark.parametrize("value", [1, 1.5, 2592000])
def test_rule_execution_timeout_bounds_accepted(value):
    dag = parse_dag(make_document({"a": {"agent_id": "t.noop"}}, execution_timeout_seconds=value))
    assert dag.execution_timeout_seconds == float(value)


@pytest.mark.parametrize(
    ("node", "message"),
    [
        ({"depends_on": "b"}, "node 'a': depends_on must be a list of node ids, not a string; write depends_on: [b]"),
        ({"depends_on": [1]}, "node 'a': depends_on entry 1 must be a node id string"),
        ({"params": [1, 2]}, "node 'a': params must be a JSON object, not a list"),
        ({"params": {"x": float("nan")}}, "node 'a': value at params.x is outside the JSON domain"),
        ({"params": {"when": {1, 2}}}, "node 'a': value at params.when is outside the JSON domain"),
        ({"input_mapping": ["results.b"]}, "node 'a': input_mapping must map input names to references"),
        ({"condition": True}, "node 'a': condition must be a string or null, not true"),
        ({"on_failure": "retry"}, 'node \'a\': on_failure "retry" is invalid; use stop or skip'),
        ({"description": 1}, "node 'a': description must be a string, not 1"),
        ({"agent_id": "bad agent"}, "node 'a': agent_id \"bad agent\" is invalid"),
    ],
)
def test_rule_invalid_node_field(node, message):
    problem = only_problem(make_document({"a": {"agent_id": "t.noop", **node}}))
    assert problem.code == "invalid_field"
    assert problem.node_ids == ("a",)
    assert message in problem.message


def test_rule_node_not_mapping():
    problem = only_problem(make_document({"a": "t.noop"}))
    assert problem.code == "invalid_field"
    assert "node 'a' must be a mapping of fields such as agent_id, not a string" in problem.message


def test_rule_unknown_field_top_level():
    problem = only_problem(make_document({"a": {"agent_id": "t.noop"}}, max_parallel=3))
    assert problem.code == "unknown_field"
    assert 'the DAG document has an unknown field "max_parallel"' in problem.message
    assert "did you mean 'max_parallel_nodes'?" in problem.message


def test_rule_unknown_field_node():
    problem = only_problem(make_document({"a": {"agent_id": "t.noop", "depend_on": []}}))
    assert problem.code == "unknown_field"
    assert problem.node_ids == ("a",)
    assert "node 'a' has an unknown field \"depend_on\"; did you mean 'depends_on'?" in problem.message


def test_rule_unknown_field_policy():
    problem = only_problem(make_document({"a": {"agent_id": "t.noop", "retry_policy": {"retries": 3}}}))
    assert problem.code == "unknown_field"
    assert problem.node_ids == ("a",)
    assert "node 'a': retry_policy has an unknown field \"retries\"" in problem.message


def test_rule_cycle_path():
    nodes = {
        "a": {"agent_id": "t.noop", "depends_on": ["c"]},
        "b": {"agent_id": "t.noop", "depends_on": ["a"]},
        "c": {"agent_id": "t.noop", "depends_on": ["b"]},
    }
    problem = only_problem(make_document(nodes))
    assert problem.code == "cycle"
    assert problem.node_ids == ("a", "b", "c")
    assert problem.message.startswith("cycle: a -> b -> c -> a; ")
    assert "remove one of these dependencies from depends_on" in problem.message


def test_rule_cycle_starts_at_smallest_id():
    nodes = {
        "x": {"agent_id": "t.noop", "depends_on": ["m"]},
        "m": {"agent_id": "t.noop", "depends_on": ["x"]},
    }
    problem = only_problem(make_document(nodes))
    assert problem.message.startswith("cycle: m -> x -> m;")


def test_rule_two_cycles_each_once():
    nodes = {
        "a": {"agent_id": "t.noop", "depends_on": ["b"]},
        "b": {"agent_id": "t.noop", "depends_on": ["a"]},
        "c": {"agent_id": "t.noop", "depends_on": ["d", "a"]},
        "d": {"agent_id": "t.noop", "depends_on": ["c"]},
    }
    messages = [problem.message for problem in problems_of(make_document(nodes))]
    assert len(messages) == 2
    assert messages[0].startswith("cycle: a -> b -> a;")
    assert messages[1].startswith("cycle: c -> d -> c;")


def test_rule_cycle_long_chain_no_recursion():
    node_ids = [f"n{index:05d}" for index in range(5000)]
    nodes = chain(*node_ids)
    nodes[node_ids[0]]["depends_on"] = [node_ids[-1]]
    problem = only_problem(make_document(nodes))
    assert problem.code == "cycle"
    assert len(problem.node_ids) == 5000
    assert problem.message.startswith("cycle: n00000 -> n00001 -> ")


def test_rule_unknown_dependency():
    nodes = {"a": {"agent_id": "t.noop"}, "b": {"agent_id": "t.noop", "depends_on": ["lod"]}}
    problem = only_problem(make_document(nodes))
    assert problem.code == "unknown_dependency"
    assert problem.node_ids == ("b",)
    assert problem.message == (
        "node 'b' depends on 'lod', which is not a node of this DAG; fix the id in depends_on or add a node 'lod'"
    )


def test_rule_self_dependency():
    problem = only_problem(make_document({"a": {"agent_id": "t.noop", "depends_on": ["a"]}}))
    assert problem.code == "self_dependency"
    assert problem.node_ids == ("a",)
    assert problem.message == "node 'a' depends on itself; remove 'a' from its depends_on"


def test_rule_duplicate_dependency():
    nodes = {"a": {"agent_id": "t.noop"}, "b": {"agent_id": "t.noop", "depends_on": ["a", "a", "a"]}}
    problem = only_problem(make_document(nodes))
    assert problem.code == "duplicate_dependency"
    assert problem.node_ids == ("b",)
    assert problem.message == "node 'b' lists 'a' 3 times in depends_on; list it once"


def test_rule_unknown_agent():
    problem = only_problem(make_document({"a": {"agent_id": "ghg.missing"}}), make_registry())
    assert problem.code == "unknown_agent"
    assert problem.node_ids == ("a",)
    assert "node 'a': agent 'ghg.missing' is not registered" in problem.message
    assert "GL_ORCHESTRATOR_AGENT_MODULES" in problem.message


def test_rule_unknown_agent_version():
    document = make_document({"a": {"agent_id": "t.noop", "agent_version": "9.9.9"}})
    problem = only_problem(document, make_registry())
    assert problem.code == "unknown_agent"
    assert "node 'a': agent 't.noop' has no registered version '9.9.9'" in problem.message


def test_rule_unknown_agent_skipped_without_registry():
    dag = parse_dag(make_document({"a": {"agent_id": "ghg.missing", "agent_version": "9"}}), registry=None)
    assert dag.nodes["a"].agent_id == "ghg.missing"


@pytest.mark.parametrize(
    ("reference", "message"),
    [
        ("result.a.rows", "must have the form 'input', 'input.<path>', 'results.<node>' or 'results.<node>.<path>'"),
        ("results.lod.rows", "none of 'lod', 'lod.rows' is a known node id"),
        ("input..year", "has an empty path segment"),
    ],
)
def test_rule_invalid_mapping(reference, message):
    nodes = {"a": {"agent_id": "t.noop"}, "b": {"agent_id": "t.noop", "depends_on": ["a"], "input_mapping": {"x": reference}}}
    problem = only_problem(make_document(nodes))
    assert problem.code == "invalid_mapping"
    assert problem.node_ids == ("b",)
    assert f"node 'b': input mapping 'x' is invalid: {reference!r} " in problem.message
    assert message in problem.message


def test_rule_invalid_mapping_not_string():
    nodes = {"a": {"agent_id": "t.noop", "input_mapping": {"x": 3}}}
    problem = only_problem(make_document(nodes))
    assert problem.code == "invalid_mapping"
    assert "node 'a': input mapping 'x' must be a reference string such as results.load.rows, not 3" in problem.message


def test_rule_invalid_mapping_ambiguous_node():
    nodes = {
        "ghg": {"agent_id": "t.noop"},
        "ghg.load": {"agent_id": "t.noop"},
        "calc": {"agent_id": "t.noop", "depends_on": ["ghg", "ghg.load"], "input_mapping": {"x": "results.ghg.load.rows"}},
    }
    problem = only_problem(make_document(nodes))
    assert problem.code == "invalid_mapping"
    assert "is ambiguous because 'ghg' and 'ghg.load' are both node ids" in problem.message


def test_rule_mapping_not_ancestor():
    nodes = {
        "load": {"agent_id": "t.noop"},
        "factors": {"agent_id": "t.noop"},
        "calc": {"agent_id": "t.noop", "depends_on": ["load"], "input_mapping": {"f": "results.factors.table"}},
    }
    problem = only_problem(make_document(nodes))
    assert problem.code == "mapping_not_ancestor"
    assert problem.node_ids == ("calc", "factors")
    assert problem.message == (
        "node 'calc': input mapping 'f' -> 'results.factors.table' reads the results of node 'factors', "
        "which is not upstream of 'calc'; add 'factors' to the depends_on of 'calc'"
    )


def test_rule_mapping_downstream_node():
    nodes = {
        "a": {"agent_id": "t.noop", "input_mapping": {"x": "results.b"}},
        "b": {"agent_id": "t.noop", "depends_on": ["a"]},
    }
    problem = only_problem(make_document(nodes))
    assert problem.code == "mapping_not_ancestor"
    assert "add 'b' to the depends_on of 'a'" in problem.message


def test_rule_mapping_own_results():
    problem = only_problem(make_document({"a": {"agent_id": "t.noop", "input_mapping": {"x": "results.a.total"}}}))
    assert problem.code == "mapping_not_ancestor"
    assert "node 'a': input mapping 'x' -> 'results.a.total' reads the results of 'a' itself" in problem.message


def test_rule_mapping_from_grandparent_allowed():
    nodes = chain("a", "b", "c")
    nodes["c"]["input_mapping"] = {"x": "results.a.total", "y": "input.year"}
    dag = parse_dag(make_document(nodes))
    assert dag.nodes["c"].input_mapping == {"x": "results.a.total", "y": "input.year"}


def test_rule_mapping_dotted_node_id():
    nodes = {
        "ghg.load": {"agent_id": "t.noop"},
        "calc": {"agent_id": "t.noop", "depends_on": ["ghg.load"], "input_mapping": {"rows": "results.ghg.load.rows"}},
    }
    dag = parse_dag(make_document(nodes))
    assert dag.referenced_nodes("calc") == frozenset({"ghg.load"})


def test_rule_invalid_condition_syntax():
    problem = only_problem(make_document({"a": {"agent_id": "t.noop", "condition": "input.x = 1"}}))
    assert problem.code == "invalid_condition"
    assert problem.node_ids == ("a",)
    assert problem.message == "node 'a': condition 'input.x = 1' is invalid: invalid syntax at column 9"


def test_rule_invalid_condition_unsafe():
    problem = only_problem(make_document({"a": {"agent_id": "t.noop", "condition": "__import__('os')"}}))
    assert problem.code == "invalid_condition"
    assert "cannot contain function calls" in problem.message


def test_rule_invalid_condition_unknown_node():
    problem = only_problem(make_document({"a": {"agent_id": "t.noop", "condition": "results.lod.total > 0"}}))
    assert problem.code == "invalid_condition"
    assert "node 'a': condition 'results.lod.total > 0' reads results of 'lod', which is not a node of this DAG" in (
        problem.message
    )


def test_rule_condition_not_ancestor():
    nodes = {
        "load": {"agent_id": "t.noop"},
        "other": {"agent_id": "t.noop"},
        "calc": {"agent_id": "t.noop", "depends_on": ["load"], "condition": "results.other.ok == true"},
    }
    problem = only_problem(make_document(nodes))
    assert problem.code == "condition_not_ancestor"
    assert problem.node_ids == ("calc", "other")
    assert problem.message == (
        "node 'calc': condition 'results.other.ok == true' reads the results of node 'other', "
        "which is not upstream of 'calc'; add 'other' to the depends_on of 'calc'"
    )


def test_rule_mapping_checked_below_cycle():
    nodes = {
        "a": {"agent_id": "t.noop", "depends_on": ["b"]},
        "b": {"agent_id": "t.noop", "depends_on": ["a"]},
        "c": {"agent_id": "t.noop", "depends_on": ["b"], "input_mapping": {"x": "results.a.total", "y": "results.d"}},
        "d": {"agent_id": "t.noop"},
    }
    problems = problems_of(make_document(nodes))
    codes = [problem.code for problem in problems]
    assert codes == ["cycle", "mapping_not_ancestor"]
    assert problems[1].node_ids == ("c", "d")


def test_rule_mapping_checked_on_cycle():
    nodes = {
        "a": {"agent_id": "t.noop", "depends_on": ["b"], "input_mapping": {"x": "results.b", "y": "results.c"}},
        "b": {"agent_id": "t.noop", "depends_on": ["a"]},
        "c": {"agent_id": "t.noop"},
    }
    problems = problems_of(make_document(nodes))
    codes = [problem.code for problem in problems]
    assert codes == ["cycle", "mapping_not_ancestor"]
    assert problems[1].node_ids == ("a", "c")


def test_rule_condition_from_ancestor_allowed():
    nodes = chain("a", "b", "c")
    nodes["c"]["condition"] = 'results.a.total > 0 and input.region in ["EU", "US"]'
    dag = parse_dag(make_document(nodes))
    assert dag.nodes["c"].condition is not None
    assert dag.nodes["c"].condition.node_references == frozenset({"a"})


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        ({"max_retries": -1}, "max_retries must be an integer from 0 to 100, not -1"),
        ({"max_retries": 101}, "max_retries must be an integer from 0 to 100, not 101"),
        ({"max_retries": 2.5}, "max_retries must be an integer from 0 to 100, not 2.5"),
        ({"max_retries": True}, "max_retries must be an integer from 0 to 100, not true"),
        ({"strategy": "random"}, 'strategy must be exponential, linear or fixed, not "random"'),
        ({"base_delay": -0.5}, "base_delay must be a number of seconds from 0 to 86400 (1 day), not -0.5"),
        ({"base_delay": False}, "base_delay must be a number of seconds from 0 to 86400 (1 day), not false"),
        ({"base_delay": "1s"}, 'base_delay must be a number of seconds from 0 to 86400 (1 day), not "1s"'),
        ({"max_delay": -1}, "max_delay must be a number of seconds from 0 to 86400 (1 day), not -1"),
        ({"base_delay": 1e12}, "base_delay must be a number of seconds from 0 to 86400 (1 day), not 1000000000000.0"),
        ({"base_delay": 5, "max_delay": 2}, "max_delay 2 is less than base_delay 5; raise max_delay or lower base_delay"),
        ({"jitter": "yes"}, 'jitter must be true or false, not "yes"'),
    ],
)
def test_rule_invalid_retry_policy(policy, message):
    problem = only_problem(make_document({"a": {"agent_id": "t.noop", "retry_policy": policy}}))
    assert problem.code == "invalid_policy"
    assert problem.node_ids == ("a",)
    assert problem.message == f"node 'a': retry_policy: {message}"


def test_rule_policy_inherited_field_named():
    document = make_document({"a": {"agent_id": "t.noop", "retry_policy": {"base_delay": 100}}})
    problem = only_problem(document)
    assert problem.code == "invalid_policy"
    assert "max_delay 60.0 is less than base_delay 100" in problem.message
    assert "(max_delay inherited from default_retry_policy)" in problem.message


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        ({"timeout_seconds": 0}, "timeout_seconds must be a number of seconds from 1 to 604800 (7 days), not 0"),
        ({"timeout_seconds": -5}, "timeout_seconds must be a number of seconds from 1 to 604800"),
        ({"timeout_seconds": 604801}, "timeout_seconds must be a number of seconds from 1 to 604800"),
        ({"timeout_seconds": True}, "timeout_seconds must be a number of seconds from 1 to 604800"),
        ({"timeout_seconds": 1e-300}, "timeout_seconds must be a number of seconds from 1 to 604800"),
        ({"on_timeout": "ignore"}, 'on_timeout must be fail, retry or skip, not "ignore"'),
    ],
)
def test_rule_invalid_timeout_policy(policy, message):
    problem = only_problem(make_document({"a": {"agent_id": "t.noop", "timeout_policy": policy}}))
    assert problem.code == "invalid_policy"
    assert problem.message.startswith(f"node 'a': timeout_policy: {message}")


def test_rule_invalid_default_policy():
    document = make_document({"a": {"agent_id": "t.noop"}}, default_retry_policy={"strategy": "random"})
    problem = only_problem(document)
    assert problem.code == "invalid_policy"
    assert problem.node_ids == ()
    assert problem.message == 'default_retry_policy: strategy must be exponential, linear or fixed, not "random"'


def test_rule_policy_not_mapping():
    problem = only_problem(make_document({"a": {"agent_id": "t.noop", "timeout_policy": 60}}))
    assert problem.code == "invalid_policy"
    assert "node 'a': timeout_policy must be a mapping of timeout_seconds, on_timeout" in problem.message


def test_rule_unsupported_compensate_dag():
    problem = only_problem(make_document({"a": {"agent_id": "t.noop"}}, on_failure="compensate"))
    assert problem.code == "unsupported"
    assert problem.message == "on_failure 'compensate' is not supported yet; use fail_fast or continue"


def test_rule_unsupported_compensate_node():
    problem = only_problem(make_document({"a": {"agent_id": "t.noop", "on_failure": "compensate"}}))
    assert problem.code == "unsupported"
    assert problem.node_ids == ("a",)
    assert problem.message == "node 'a': on_failure 'compensate' is not supported yet; use stop or skip"


def test_rule_invalid_node_not_reported_twice():
    nodes = {
        "a": [],
        "b": {"agent_id": "t.noop", "depends_on": ["a"], "input_mapping": {"x": "results.a"}, "condition": "results.a.ok"},
    }
    problem = only_problem(make_document(nodes))
    assert problem.code == "invalid_field"
    assert problem.node_ids == ("a",)


def test_parse_collects_all_problems():
    nodes = {
        "a": {"agent_id": "t.noop", "depends_on": ["a", "ghost"]},
        "b": {"agent_id": "ghg.missing", "condition": "input.x ="},
    }
    with pytest.raises(DagValidationError) as caught:
        parse_dag(make_document(nodes, on_failure="compensate"), make_registry())
    error = caught.value
    codes = [problem.code for problem in error.problems]
    assert sorted(codes) == ["invalid_condition", "self_dependency", "unknown_agent", "unknown_dependency", "unsupported"]
    assert error.dag_id == "test-dag"
    assert "DAG 'test-dag' is invalid (5 problem(s)):" in str(error)
    assert "node 'a' depends on 'ghost'" in str(error)


# Graph queries and the canonical order.


def diamond() -> Dag:
    nodes = {
        "top": {"agent_id": "t.noop"},
        "left": {"agent_id": "t.noop", "depends_on": ["top"]},
        "right": {"agent_id": "t.noop", "depends_on": ["top"]},
        "bottom": {"agent_id": "t.noop", "depends_on": ["right", "left"]},
    }
    return parse_dag(make_document(nodes))


def test_topological_order_diamond():
    assert diamond().topological_order() == ("top", "left", "right", "bottom")


def test_topological_order_smallest_ready_first():
    # Level by level would give c, z, a, y. Kahn's algorithm with the smallest
    # ready id takes a as soon as c is done, because a sorts before z.
    nodes = {
        "z": {"agent_id": "t.noop"},
        "c": {"agent_id": "t.noop"},
        "y": {"agent_id": "t.noop", "depends_on": ["z"]},
        "a": {"agent_id": "t.noop", "depends_on": ["c"]},
    }
    assert parse_dag(make_document(nodes)).topological_order() == ("c", "a", "z", "y")


def test_topological_order_code_point():
    nodes = {node_id: {"agent_id": "t.noop"} for node_id in ("b", "B", "a", "_", "1")}
    assert parse_dag(make_document(nodes)).topological_order() == ("1", "B", "_", "a", "b")


def test_graph_parents_and_children():
    dag = diamond()
    assert dag.parents("bottom") == ("left", "right")
    assert dag.parents("top") == ()
    assert dag.children("top") == ("left", "right")
    assert dag.children("bottom") == ()


def test_graph_ancestors():
    dag = diamond()
    assert dag.ancestors("bottom") == frozenset({"top", "left", "right"})
    assert dag.ancestors("left") == frozenset({"top"})
    assert dag.ancestors("top") == frozenset()


def test_graph_roots_and_sinks():
    dag = diamond()
    assert dag.roots() == ("top",)
    assert dag.sinks() == ("bottom",)


def test_graph_referenced_nodes():
    nodes = chain("a", "b", "c")
    nodes["c"]["input_mapping"] = {"x": "results.a.total", "y": "input.year", "z": "results.b"}
    nodes["c"]["condition"] = "results.b.ok == true"
    dag = parse_dag(make_document(nodes))
    assert dag.referenced_nodes("c") == frozenset({"a", "b"})
    assert dag.referenced_nodes("a") == frozenset()


def test_dag_rejects_unknown_parent():
    dag = diamond()
    nodes = dict(dag.nodes)
    del nodes["top"]
    with pytest.raises(ValueError, match="node 'left' depends on 'top', which is not a node of this DAG"):
        Dag(dag.dag_id, dag.name, dag.version, dag.on_failure, 1, nodes, dag.document, dag.dag_hash)


def test_dag_nodes_read_only():
    dag = diamond()
    with pytest.raises(TypeError):
        dag.nodes["extra"] = dag.nodes["top"]  # type: ignore[index]


def test_validate_layered_thousand_nodes():
    nodes: dict[str, Any] = {}
    for layer in range(10):
        for position in range(100):
            node: dict[str, Any] = {"agent_id": "t.noop"}
            if layer > 0:
                parents = [f"n{layer - 1}_{(position + offset) % 100:02d}" for offset in range(3)]
                node["depends_on"] = parents
                node["input_mapping"] = {f"in{index}": f"results.{parent}.value" for index, parent in enumerate(parents)}
            nodes[f"n{layer}_{position:02d}"] = node
    dag = parse_dag(make_document(nodes), make_registry())
    order = dag.topological_order()
    assert len(order) == 1000
    assert order[:3] == ("n0_00", "n0_01", "n0_02")
    assert dag.parents("n9_99") == ("n8_00", "n8_01", "n8_99")
    assert len(dag.ancestors("n9_00")) > 3


# RetryPolicy and TimeoutPolicy.


def make_retry(strategy: str, jitter: bool = False) -> RetryPolicy:
    return RetryPolicy(max_retries=5, strategy=strategy, base_delay=2.0, max_delay=10.0, jitter=jitter)


def test_retry_delay_exponential():
    policy = make_retry("exponential")
    assert policy.delay(1) == 2.0
    assert policy.delay(2) == 4.0
    assert policy.delay(3) == 8.0


def test_retry_delay_linear():
    policy = make_retry("linear")
    assert policy.delay(1) == 2.0
    assert policy.delay(2) == 4.0
    assert policy.delay(3) == 6.0


def test_retry_delay_fixed():
    policy = make_retry("fixed")
    assert policy.delay(1) == 2.0
    assert policy.delay(4) == 2.0


def test_retry_delay_capped():
    assert make_retry("exponential").delay(4) == 10.0
    assert make_retry("linear").delay(6) == 10.0
    assert make_retry("exponential").delay(10_000) == 10.0


def test_retry_delay_full_jitter():
    policy = make_retry("exponential", jitter=True)
    assert policy.delay(2, random_fraction=0.5) == 2.0
    assert policy.delay(4, random_fraction=0.25) == 2.5
    assert policy.delay(2, random_fraction=0.0) == 0.0
    assert policy.delay(2) == 4.0


def test_retry_delay_ignores_fraction_without_jitter():
    assert make_retry("exponential").delay(2, random_fraction=0.5) == 4.0


def test_retry_delay_invalid_arguments():
    policy = make_retry("fixed")
    with pytest.raises(ValueError, match="retry_number must be an integer >= 1, not 0"):
        policy.delay(0)
    with pytest.raises(ValueError, match=r"random_fraction must be in \[0, 1\], not 1.5"):
        policy.delay(1, random_fraction=1.5)


def test_retry_policy_to_dict():
    assert make_retry("linear").to_dict() == {
        "max_retries": 5,
        "strategy": "linear",
        "base_delay": 2.0,
        "max_delay": 10.0,
        "jitter": False,
    }


def test_retry_policy_validates_itself():
    with pytest.raises(ValueError, match="invalid retry policy: strategy must be exponential, linear or fixed"):
        RetryPolicy(max_retries=1, strategy="random", base_delay=1.0, max_delay=2.0, jitter=False)


def test_timeout_policy_to_dict():
    assert TimeoutPolicy(timeout_seconds=60.0, on_timeout="retry").to_dict() == {
        "timeout_seconds": 60.0,
        "on_timeout": "retry",
    }


def test_timeout_policy_validates_itself():
    with pytest.raises(ValueError, match="invalid timeout policy: timeout_seconds must be a number"):
        TimeoutPolicy(timeout_seconds=0, on_timeout="fail")


# Loading YAML and JSON.


def test_load_yaml_text():
    document = load_dag_document(GHG_YAML)
    assert document["dag_id"] == "ghg-inventory"
    assert document["nodes"]["combustion"]["depends_on"] == ["load_activity"]


def test_load_json_text():
    document = load_dag_document(json.dumps({"dag_id": "d", "nodes": {"a": {"agent_id": "t.noop"}}}))
    assert document == {"dag_id": "d", "nodes": {"a": {"agent_id": "t.noop"}}}


def test_load_json_bytes_with_bom():
    text = json.dumps({"dag_id": "d", "nodes": {}})
    assert load_dag_document(b"\xef\xbb\xbf" + text.encode("utf-8"), filename="d.json")["dag_id"] == "d"


def test_load_yaml_and_json_same_hash(tmp_path):
    yaml_path = tmp_path / "ghg.yaml"
    yaml_path.write_text(GHG_YAML, encoding="utf-8")
    json_path = tmp_path / "ghg.json"
    json_path.write_text(json.dumps(load_dag_document(GHG_YAML)), encoding="utf-8")
    from_yaml = parse_dag(load_dag_document(yaml_path))
    from_json = parse_dag(load_dag_document(json_path))
    assert from_yaml.dag_hash == from_json.dag_hash


def test_load_yaml_date_rejected(tmp_path):
    path = tmp_path / "dated.yaml"
    path.write_text("dag_id: d\nnodes:\n  a:\n    agent_id: t.noop\n    params: {since: 2024-01-01}\n", encoding="utf-8")
    with pytest.raises(DagValidationError) as caught:
        load_dag_document(path)
    problem = caught.value.problems[0]
    assert problem.code == "parse_error"
    assert problem.message.startswith(f"{path}, line 5, column 21: 2024-01-01 is read as a YAML date")
    assert 'quote it to keep it a string: "2024-01-01"' in problem.message


def test_load_yaml_timestamp_rejected():
    with pytest.raises(DagValidationError, match="2024-01-01T10:00:00Z is read as a YAML date or timestamp"):
        load_dag_document("dag_id: d\nstarted: 2024-01-01T10:00:00Z\n")


def test_load_yaml_bad_syntax_names_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("dag_id: d\nnodes:\n  a: {agent_id: t.noop\n  b: {}\n", encoding="utf-8")
    with pytest.raises(DagValidationError) as caught:
        load_dag_document(path)
    problems = caught.value.problems
    assert len(problems) == 1
    assert problems[0].code == "parse_error"
    assert problems[0].message.startswith(f"{path}, line 4, column ")
    assert "invalid YAML" in problems[0].message


def test_load_json_bad_syntax_names_line():
    with pytest.raises(DagValidationError) as caught:
        load_dag_document('{"dag_id": "d",\n "nodes": {,}}', filename="dag.json")
    assert caught.value.problems[0].message == (
        "dag.json, line 2, column 12: invalid JSON: Expecting property name enclosed in double quotes"
    )


def test_load_yaml_duplicate_key():
    with pytest.raises(DagValidationError) as caught:
        load_dag_document("dag_id: d\nnodes:\n  a: {agent_id: t.noop}\n  a: {agent_id: t.other}\n", filename="dag.yaml")
    assert caught.value.problems[0].message == (
        "dag.yaml, line 4, column 3: duplicate key 'a', first defined on line 3; remove one of them"
    )


def test_load_yaml_merge_key_allowed():
    document = load_dag_document("base: &base {agent_id: t.noop, params: {}}\nnode: {<<: *base, params: {x: 1}}\n")
    assert document["node"] == {"agent_id": "t.noop", "params": {"x": 1}}


def test_load_json_duplicate_key():
    with pytest.raises(DagValidationError, match="duplicate key 'dag_id' in a JSON object"):
        load_dag_document('{"dag_id": "a", "dag_id": "b"}')


def test_load_json_nan_rejected():
    with pytest.raises(DagValidationError, match="NaN is not a JSON number"):
        load_dag_document('{"dag_id": "d", "x": NaN}')


def test_load_yaml_nan_rejected():
    with pytest.raises(DagValidationError, match=r"value at \$.x is outside the JSON domain"):
        load_dag_document("dag_id: d\nx: .nan\n")


def test_load_yaml_python_tag_rejected():
    with pytest.raises(DagValidationError, match="could not determine a constructor"):
        load_dag_document("dag_id: !!python/object/apply:os.system ['true']\n")


def test_load_yaml_binary_rejected():
    with pytest.raises(DagValidationError, match="values tagged !!binary are not JSON values"):
        load_dag_document("dag_id: d\nx: !!binary aGVsbG8=\n")


def test_load_top_level_list():
    with pytest.raises(DagValidationError, match="dag.yaml: the top level must be a mapping with dag_id and nodes, not a list"):
        load_dag_document("- a\n- b\n", filename="dag.yaml")


def test_load_path_string_hint():
    with pytest.raises(DagValidationError, match="to load a file, pass a pathlib.Path"):
        load_dag_document("dags/ghg.yaml")


def test_load_empty_document():
    with pytest.raises(DagValidationError, match="DAG document is empty"):
        load_dag_document("")


def test_load_invalid_utf8():
    with pytest.raises(DagValidationError, match="dag.yaml: byte 8 is not valid UTF-8"):
        load_dag_document(b"dag_id: \xff\n", filename="dag.yaml")


def test_load_alias_expansion_limited():
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for level in range(1, 8):
        previous = f"*a{level - 1}"
        lines.append(f"a{level}: &a{level} [{', '.join([previous] * 10)}]")
    with pytest.raises(DagValidationError, match="expands to more than 1000000 values"):
        load_dag_document("\n".join(lines) + "\n")


def test_load_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_dag_document(tmp_path / "missing.yaml")


def test_load_does_not_mutate_between_calls():
    first = load_dag_document(GHG_YAML)
    second = copy.deepcopy(first)
    parse_dag(first)
    assert first == second


@pytest.mark.parametrize("dag_id", [".", ".."])
def test_dot_dag_ids_rejected(dag_id: str) -> None:
    with pytest.raises(DagValidationError) as caught:
        parse_dag({"dag_id": dag_id, "nodes": {"a": {"agent_id": "x"}}})
    assert [problem.code for problem in caught.value.problems] == ["invalid_id"]
