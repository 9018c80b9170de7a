"""A pool process that dies between a node's commit and its messages loses nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from tests.integration.conftest import REPO, Stack

pytestmark = pytest.mark.integration


def test_children_sent_after_crash_between_commit_and_send(stack: Stack, tmp_path: Path) -> None:
    marker = tmp_path / "crashed"
    stack.start_worker("crashy", concurrency=2, script=REPO / "tests" / "integration" / "crashing_worker.py",
                       extra_env={"GL_TEST_CRASH_AFTER_COMMIT_NODE": "root", "GL_TEST_CRASH_MARKER": str(marker)})
    stack.start_api()
    response = stack.request("POST", "/dags", json={
        "dag_id": "crash-after-commit",
        "nodes": {
            "root": {"agent_id": "test.const", "params": {"value": 10}},
            "left": {"agent_id": "test.sum", "depends_on": ["root"], "input_mapping": {"r": "results.root"}},
            "right": {"agent_id": "test.sum", "depends_on": ["root"], "input_mapping": {"r": "results.root"},
                      "params": {"add": 1}},
        },
    })
    assert response.status_code == 201, response.text
    execution_id = stack.request("POST", "/dags/crash-after-commit/execute", json={"input_data": {}}).json()[
        "execution_id"]

    result = stack.wait_for_execution(execution_id, timeout=120)
    assert marker.read_text(encoding="utf-8") == "left,right"
    assert result["status"] == "completed", result
    assert result["chain_valid"] is True
    engine = create_engine(stack.env["GL_ORCHESTRATOR_DATABASE_URL"])
    try:
        with engine.connect() as conn:
            rows = conn.execute(text(
                "SELECT node_id, attempt_count, outputs FROM dag_checkpoints WHERE execution_id = :e ORDER BY node_id"),
                {"e": execution_id}).all()
    finally:
        engine.dispose()
    assert [(row.node_id, row.attempt_count, row.outputs) for row in rows] == [
        ("left", 1, 10), ("right", 1, 11), ("root", 1, 10)]
