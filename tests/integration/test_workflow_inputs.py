"""A real 103-node workflow: every node runs once and receives every parent's output."""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from tests.integration.conftest import REPO, Stack

pytestmark = pytest.mark.integration

WORKFLOW = REPO / "tests" / "data" / "montage-103.json"


def _montage_dag() -> tuple[dict[str, Any], dict[str, list[str]]]:
    tasks = json.loads(WORKFLOW.read_text(encoding="utf-8"))["tasks"]
    parents = {task["id"]: sorted(task["parents"]) for task in tasks}
    nodes = {
        node_id: {
            "agent_id": "test.collect",
            "params": {"node": node_id},
            "depends_on": node_parents,
            "input_mapping": {parent: f"results.{parent}.node" for parent in node_parents},
        }
        for node_id, node_parents in parents.items()
    }
    return {"dag_id": "montage-103", "max_parallel_nodes": 64, "nodes": nodes}, parents


def test_montage_nodes_receive_all_parents(stack: Stack) -> None:
    stack.start_worker("w1", concurrency=4)
    stack.start_api()
    document, parents = _montage_dag()
    assert stack.request("POST", "/dags", json=document).status_code == 201
    response = stack.request("POST", "/dags/montage-103/execute", json={"input_data": {}})
    result = stack.wait_for_execution(response.json()["execution_id"], timeout=180)
    assert result["status"] == "completed", result["error"]
    assert result["chain_valid"] is True

    engine = create_engine(stack.env["GL_ORCHESTRATOR_DATABASE_URL"])
    try:
        with engine.connect() as conn:
            outputs = dict(conn.execute(text(
                "SELECT node_id, outputs FROM dag_checkpoints WHERE execution_id = :e"),
                {"e": result["execution_id"]}).all())
            attempts = dict(conn.execute(text(
                "SELECT node_id, count(*) FROM node_traces WHERE execution_id = :e GROUP BY node_id"),
                {"e": result["execution_id"]}).all())
    finally:
        engine.dispose()
    assert set(outputs) == set(parents)
    wrong = {
        node_id: sorted(outputs[node_id]["inputs"])
        for node_id, node_parents in parents.items()
        if outputs[node_id]["inputs"] != {parent: parent for parent in node_parents}
    }
    assert wrong == {}
    assert set(attempts.values()) == {1}
    assert len(attempts) == len(parents)
