"""End-to-end executions: REST submission, real Celery workers, Redis and PostgreSQL."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from tests.integration.conftest import REPO, Stack

pytestmark = pytest.mark.integration

GHG_DIR = REPO / "examples" / "ghg-inventory"


def _rows(database_url: str, sql: str, **params: Any) -> list[dict[str, Any]]:
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            return [dict(row) for row in conn.execute(text(sql), params).mappings()]
    finally:
        engine.dispose()


def _register(stack: Stack, document: dict[str, Any]) -> None:
    response = stack.request("POST", "/dags", json=document)
    assert response.status_code == 201, response.text


def _execute(stack: Stack, dag_id: str, input_data: Any) -> str:
    response = stack.request("POST", f"/dags/{dag_id}/execute", json={"input_data": input_data})
    assert response.status_code == 202, response.text
    return str(response.json()["execution_id"])


def _run(stack: Stack, dag_id: str, input_data: Any, timeout: float = 120) -> dict[str, Any]:
    return stack.wait_for_execution(_execute(stack, dag_id, input_data), timeout=timeout)


def _counts(database_url: str, execution_id: str, table: str) -> dict[str, int]:
    rows = _rows(database_url, f"SELECT node_id, count(*) AS n FROM {table} WHERE execution_id = :e GROUP BY node_id",
                 e=execution_id)
    return {row["node_id"]: row["n"] for row in rows}


@pytest.fixture
def running(stack: Stack) -> Stack:
    stack.start_worker("w1", concurrency=2)
    stack.start_api()
    return stack


def test_ghg_example_end_to_end(running: Stack) -> None:
    dag_yaml = (GHG_DIR / "dag.yaml").read_text(encoding="utf-8")
    response = running.request("POST", "/dags", data=dag_yaml.encode(), headers={"Content-Type": "application/yaml"})
    assert response.status_code == 201, response.text
    input_data = json.loads((GHG_DIR / "input.json").read_text(encoding="utf-8"))
    database_url = running.env["GL_ORCHESTRATOR_DATABASE_URL"]

    first = _run(running, "ghg-inventory", input_data)
    assert first["status"] == "completed", first
    assert first["chain_valid"] is True
    node_ids = {node["node_id"] for node in first["nodes"]}
    assert _counts(database_url, first["execution_id"], "dag_checkpoints") == {n: 1 for n in node_ids}
    assert _counts(database_url, first["execution_id"], "execution_provenance") == {n: 1 for n in node_ids}

    totals = _rows(database_url, "SELECT outputs FROM dag_checkpoints WHERE execution_id = :e AND node_id = 'scope1_totals'",
                   e=first["execution_id"])[0]["outputs"]
    assert totals["total"]["total_co2e_t"] == pytest.approx(5653.375864585122, rel=1e-12)

    provenance = running.request("GET", f"/executions/{first['execution_id']}/provenance").json()
    assert provenance["chain_valid"] is True
    assert provenance["provenance_chain_hash"] == first["provenance_chain_hash"]
    assert all(node["valid"] for node in provenance["nodes"])

    second = _run(running, "ghg-inventory", input_data)
    assert second["provenance_chain_hash"] == first["provenance_chain_hash"]

    changed = json.loads(json.dumps(input_data))
    changed["facilities"][0]["sources"][0]["quantity"] += 1
    third = _run(running, "ghg-inventory", changed)
    assert third["status"] == "completed"
    assert third["provenance_chain_hash"] != first["provenance_chain_hash"]


def _echo_dag(dag_id: str) -> dict[str, Any]:
    """Three levels where nodes have one, two and three parents, and a skewed branch."""
    return {
        "dag_id": dag_id,
        "nodes": {
            "a": {"agent_id": "test.const", "params": {"value": 1}},
            "b": {"agent_id": "test.const", "params": {"value": 2}},
            "c": {"agent_id": "test.const", "params": {"value": 3}},
            "ab": {"agent_id": "test.echo", "depends_on": ["a", "b"],
                   "input_mapping": {"a": "results.a", "b": "results.b"}},
            "bc": {"agent_id": "test.echo", "depends_on": ["b", "c"],
                   "input_mapping": {"b": "results.b", "c": "results.c", "x": "input.x"}},
            "all": {"agent_id": "test.echo", "depends_on": ["ab", "bc", "c"],
                    "input_mapping": {"ab": "results.ab.inputs", "bc": "results.bc.inputs.c", "c": "results.c"}},
        },
    }


def test_every_node_receives_every_parent(running: Stack) -> None:
    _register(running, _echo_dag("fan-in"))
    result = _run(running, "fan-in", {"x": "hello"})
    assert result["status"] == "completed", result
    outputs = {row["node_id"]: row["outputs"] for row in _rows(
        running.env["GL_ORCHESTRATOR_DATABASE_URL"],
        "SELECT node_id, outputs FROM dag_checkpoints WHERE execution_id = :e", e=result["execution_id"])}
    assert outputs["ab"]["inputs"] == {"a": 1, "b": 2}
    assert outputs["bc"]["inputs"] == {"b": 2, "c": 3, "x": "hello"}
    assert outputs["all"]["inputs"] == {"ab": {"a": 1, "b": 2}, "bc": 3, "c": 3}
    traces = _counts(running.env["GL_ORCHESTRATOR_DATABASE_URL"], result["execution_id"], "node_traces")
    assert traces == {node: 1 for node in outputs}


def test_flaky_node_retries_to_success(running: Stack, tmp_path: Path) -> None:
    _register(running, {
        "dag_id": "flaky",
        "nodes": {
            "flaky": {"agent_id": "test.flaky",
                      "params": {"failures": 2, "counter_file": str(tmp_path / "calls")},
                      "retry_policy": {"max_retries": 2, "strategy": "fixed", "base_delay": 0.1, "jitter": False}},
            "after": {"agent_id": "test.echo", "depends_on": ["flaky"], "input_mapping": {"f": "results.flaky"}},
        },
    })
    result = _run(running, "flaky", {})
    assert result["status"] == "completed", result
    nodes = {node["node_id"]: node for node in result["nodes"]}
    assert nodes["flaky"]["attempt_count"] == 3
    database_url = running.env["GL_ORCHESTRATOR_DATABASE_URL"]
    checkpoints = _rows(database_url, "SELECT attempt_count, outputs FROM dag_checkpoints WHERE execution_id = :e AND node_id = 'flaky'",
                        e=result["execution_id"])
    assert len(checkpoints) == 1
    assert checkpoints[0]["attempt_count"] == 3
    assert checkpoints[0]["outputs"] == {"calls": 3}
    traces = _rows(database_url, "SELECT attempt, status FROM node_traces WHERE execution_id = :e AND node_id = 'flaky' ORDER BY attempt",
                   e=result["execution_id"])
    assert [(t["attempt"], t["status"]) for t in traces] == [(1, "failed"), (2, "failed"), (3, "completed")]


def test_retries_exhausted_fail_node(running: Stack, tmp_path: Path) -> None:
    _register(running, {
        "dag_id": "exhausted",
        "nodes": {"flaky": {"agent_id": "test.flaky",
                            "params": {"failures": 5, "counter_file": str(tmp_path / "calls")},
                            "retry_policy": {"max_retries": 1, "strategy": "fixed", "base_delay": 0.1}}},
    })
    result = _run(running, "exhausted", {})
    assert result["status"] == "failed"
    assert (tmp_path / "calls").read_text() == "2"
    assert "planned failure 2 of 5" in result["error"]


def test_timeout_stops_node_and_descendants(running: Stack, tmp_path: Path) -> None:
    marker = tmp_path / "slow-started"
    _register(running, {
        "dag_id": "timeout",
        "nodes": {
            "slow": {"agent_id": "test.sleep", "params": {"seconds": 60, "marker_file": str(marker)},
                     "timeout_policy": {"timeout_seconds": 1, "on_timeout": "fail"}},
            "child": {"agent_id": "test.echo", "depends_on": ["slow"], "input_mapping": {"s": "results.slow"}},
            "grandchild": {"agent_id": "test.echo", "depends_on": ["child"]},
        },
    })
    result = _run(running, "timeout", {}, timeout=60)
    assert marker.exists()
    assert result["status"] == "failed"
    nodes = {node["node_id"]: node for node in result["nodes"]}
    assert nodes["slow"]["status"] == "failed"
    assert "timed out after 1s" in nodes["slow"]["error"]
    assert nodes["child"]["status"] == "skipped"
    assert nodes["grandchild"]["status"] == "skipped"
    traces = _counts(running.env["GL_ORCHESTRATOR_DATABASE_URL"], result["execution_id"], "node_traces")
    assert traces == {"slow": 1}
    assert result["chain_valid"] is True
    assert "slow" in result["error"]


def test_hard_time_limit_kills_stubborn_agent(running: Stack) -> None:
    _register(running, {
        "dag_id": "stubborn",
        "nodes": {
            "stubborn": {"agent_id": "test.stubborn", "params": {"seconds": 60},
                         "timeout_policy": {"timeout_seconds": 1, "on_timeout": "fail"}},
            "child": {"agent_id": "test.noop", "depends_on": ["stubborn"]},
        },
    })
    result = _run(running, "stubborn", {}, timeout=60)
    nodes = {node["node_id"]: node for node in result["nodes"]}
    assert result["status"] == "failed"
    assert "hard time limit" in nodes["stubborn"]["error"]
    assert nodes["child"]["status"] == "skipped"


def test_fail_fast_names_failed_node(running: Stack) -> None:
    _register(running, {
        "dag_id": "fail-fast",
        "on_failure": "fail_fast",
        "max_parallel_nodes": 1,
        "nodes": {
            "broken": {"agent_id": "test.fail", "params": {"message": "boiler meter missing"}},
            "zz_later": {"agent_id": "test.noop"},
        },
    })
    result = _run(running, "fail-fast", {})
    assert result["status"] == "failed"
    assert "node 'broken' failed" in result["error"]
    assert "boiler meter missing" in result["error"]
    nodes = {node["node_id"]: node for node in result["nodes"]}
    assert nodes["zz_later"]["status"] == "skipped"
    assert "not run" in nodes["zz_later"]["error"]


def test_continue_runs_independent_branches(running: Stack) -> None:
    _register(running, {
        "dag_id": "continue",
        "on_failure": "continue",
        "max_parallel_nodes": 1,
        "nodes": {
            "broken": {"agent_id": "test.fail"},
            "after_broken": {"agent_id": "test.noop", "depends_on": ["broken"]},
            "independent": {"agent_id": "test.const", "params": {"value": 7}},
        },
    })
    result = _run(running, "continue", {})
    nodes = {node["node_id"]: node for node in result["nodes"]}
    assert result["status"] == "failed"
    assert nodes["independent"]["status"] == "completed"
    assert nodes["after_broken"]["status"] == "skipped"
    assert result["chain_valid"] is True


def test_on_failure_skip_tolerates_node(running: Stack) -> None:
    _register(running, {
        "dag_id": "tolerate",
        "nodes": {
            "optional": {"agent_id": "test.fail", "on_failure": "skip"},
            "needs_optional": {"agent_id": "test.noop", "depends_on": ["optional"]},
            "main": {"agent_id": "test.const", "params": {"value": 1}},
        },
    })
    result = _run(running, "tolerate", {})
    nodes = {node["node_id"]: node for node in result["nodes"]}
    assert result["status"] == "completed", result
    assert nodes["optional"]["status"] == "skipped"
    assert nodes["needs_optional"]["status"] == "skipped"
    assert nodes["main"]["status"] == "completed"


def test_condition_false_skips_node(running: Stack) -> None:
    _register(running, {
        "dag_id": "conditional",
        "nodes": {
            "base": {"agent_id": "test.const", "params": {"value": 5}},
            "big": {"agent_id": "test.noop", "depends_on": ["base"], "condition": "results.base > 10"},
            "small": {"agent_id": "test.noop", "depends_on": ["base"], "condition": "results.base <= 10"},
        },
    })
    result = _run(running, "conditional", {})
    nodes = {node["node_id"]: node for node in result["nodes"]}
    assert result["status"] == "completed"
    assert nodes["big"]["status"] == "skipped"
    assert nodes["small"]["status"] == "completed"


def test_output_outside_json_domain_fails_node(running: Stack) -> None:
    _register(running, {"dag_id": "bad-output", "nodes": {"bad": {"agent_id": "test.bad_output"}}})
    result = _run(running, "bad-output", {})
    nodes = {node["node_id"]: node for node in result["nodes"]}
    assert result["status"] == "failed"
    assert "$.value" in nodes["bad"]["error"]


def test_agent_exit_and_unstorable_error_fail_cleanly(running: Stack) -> None:
    _register(running, {
        "dag_id": "hostile-agents",
        "on_failure": "continue",
        "nodes": {
            "exits": {"agent_id": "test.exit"},
            "nul": {"agent_id": "test.nul_error"},
        },
    })
    result = _run(running, "hostile-agents", {}, timeout=60)
    nodes = {node["node_id"]: node for node in result["nodes"]}
    assert result["status"] == "failed"
    assert nodes["exits"]["status"] == "failed"
    assert nodes["exits"]["attempt_count"] == 1
    assert "SystemExit: 3" in nodes["exits"]["error"]
    assert nodes["nul"]["status"] == "failed"
    assert "bad \\x00 byte and \\ud800 surrogate" in nodes["nul"]["error"]
