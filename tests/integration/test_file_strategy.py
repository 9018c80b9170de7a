"""The file checkpoint strategy with real workers, PostgreSQL and Redis on one host."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.integration.conftest import Stack

pytestmark = pytest.mark.integration


def test_file_strategy_catches_altered_file(stack: Stack, tmp_path: Path) -> None:
    folder = tmp_path / "shared-checkpoints"
    stack.env.update({"GL_ORCHESTRATOR_CHECKPOINT_STRATEGY": "file", "GL_ORCHESTRATOR_CHECKPOINT_DIR": str(folder)})
    stack.start_worker("files", concurrency=2)
    stack.start_api()
    document = {
        "dag_id": "file-strategy",
        "nodes": {
            "root": {"agent_id": "test.const", "params": {"value": 10}},
            "left": {"agent_id": "test.sum", "depends_on": ["root"], "input_mapping": {"r": "results.root"}},
            "right": {"agent_id": "test.sum", "depends_on": ["root"], "input_mapping": {"r": "results.root"},
                      "params": {"add": 1}},
        },
    }
    assert stack.request("POST", "/dags", json=document).status_code == 201
    execution_id = stack.request("POST", "/dags/file-strategy/execute", json={"input_data": {}}).json()["execution_id"]

    result = stack.wait_for_execution(execution_id)
    assert result["status"] == "completed", result
    assert result["chain_valid"] is True
    assert stack.request("GET", "/health").json()["checkpoint_strategy"] == "file"
    assert "checkpoint strategy file keeps outputs outside the shared database" in stack.worker_log("files")
    rows = stack.rows("SELECT node_id, outputs FROM dag_checkpoints WHERE execution_id = :e ORDER BY node_id",
                      e=execution_id)
    assert [(row["node_id"], row["outputs"]) for row in rows] == [("left", None), ("right", None), ("root", None)]
    files = {path.name.split("@")[0]: json.loads(path.read_bytes()) for path in (folder / execution_id).iterdir()}
    assert files == {"root": 10, "left": 10, "right": 11}

    [left] = (folder / execution_id).glob("left@*.json")
    left.write_text("12", encoding="utf-8")
    report = stack.request("GET", f"/executions/{execution_id}/provenance").json()
    assert report["chain_valid"] is False
    [broken] = [node for node in report["nodes"] if not node["valid"]]
    assert broken["node_id"] == "left"
    assert any(reason.startswith("output altered") for reason in broken["reasons"])
    checkpoints = stack.request("GET", f"/executions/{execution_id}/checkpoints").json()["checkpoints"]
    assert {cp["node_id"]: cp["verified"] for cp in checkpoints} == {"root": True, "left": False, "right": True}
