"""Checkpoint retention sent by a real ``orchestrator beat`` and run by a real worker.

The retention window is 0.0001 hours (0.36 s) and beat sends the task every
second, so a finished execution loses its payloads within a few seconds,
while a running one must keep them however often the task runs.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from tests.integration.conftest import Stack

pytestmark = pytest.mark.integration

DOCUMENT = {
    "dag_id": "retention-beat",
    "nodes": {
        "load": {"agent_id": "test.const", "params": {"value": {"rows": [1, 2, 3]}}},
        "wait": {"agent_id": "test.sleep", "depends_on": ["load"], "params": {"seconds": 4}},
    },
}


def _rows(database_url: str, sql: str, **params: Any) -> list[dict[str, Any]]:
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            return [dict(row) for row in conn.execute(text(sql), params).mappings()]
    finally:
        engine.dispose()


def _checkpoints(database_url: str, execution_id: str) -> dict[str, dict[str, Any]]:
    rows = _rows(
        database_url,
        "SELECT node_id, output_hash, payload_removed_at, outputs IS NULL AS outputs_null "
        "FROM dag_checkpoints WHERE execution_id = :e",
        e=execution_id,
    )
    return {row["node_id"]: row for row in rows}


def _status(database_url: str, execution_id: str) -> str:
    return str(_rows(database_url, "SELECT status FROM dag_executions WHERE execution_id = :e", e=execution_id)[0]
               ["status"])


@pytest.fixture
def retaining(stack: Stack) -> Stack:
    stack.env["GL_ORCHESTRATOR_RETENTION_INTERVAL_SECONDS"] = "1"
    stack.env["GL_ORCHESTRATOR_CHECKPOINT_RETENTION_HOURS"] = "0.0001"
    stack.start_worker("w1", concurrency=2)
    stack.start_api()
    stack.start_beat()
    return stack


def test_beat_removes_finished_payloads(retaining: Stack) -> None:
    database_url = retaining.env["GL_ORCHESTRATOR_DATABASE_URL"]
    response = retaining.request("POST", "/dags", json=DOCUMENT)
    assert response.status_code == 201, response.text
    response = retaining.request("POST", "/dags/retention-beat/execute", json={"input_data": {}})
    assert response.status_code == 202, response.text
    execution_id = str(response.json()["execution_id"])

    # While "wait" sleeps, the execution is running and "load" has its
    # checkpoint. Beat sends the task every second during those 4 seconds.
    deadline = time.monotonic() + 30
    while "load" not in _checkpoints(database_url, execution_id):
        assert time.monotonic() < deadline, "node 'load' wrote no checkpoint within 30s"
        time.sleep(0.1)
    checks_while_running = 0
    while _status(database_url, execution_id) == "running":
        load = _checkpoints(database_url, execution_id)["load"]
        assert load["outputs_null"] is False
        assert load["payload_removed_at"] is None
        checks_while_running += 1
        time.sleep(0.25)
    assert checks_while_running >= 8

    finished = retaining.wait_for_execution(execution_id)
    assert finished["status"] == "completed", finished
    hashes = {node_id: row["output_hash"] for node_id, row in _checkpoints(database_url, execution_id).items()}

    deadline = time.monotonic() + 30
    while not all(row["outputs_null"] for row in _checkpoints(database_url, execution_id).values()):
        assert time.monotonic() < deadline, f"payloads still present after 30s: {_checkpoints(database_url, execution_id)}"
        time.sleep(0.2)

    retained = _checkpoints(database_url, execution_id)
    assert sorted(retained) == ["load", "wait"]
    for node_id, row in retained.items():
        assert row["payload_removed_at"] is not None, node_id
        assert row["output_hash"] == hashes[node_id], node_id

    provenance = retaining.request("GET", f"/executions/{execution_id}/provenance").json()
    assert provenance["chain_valid"] is True
    assert provenance["provenance_chain_hash"] == finished["provenance_chain_hash"]
    for node in provenance["nodes"]:
        assert node["valid"] is True, node
        assert node["notes"][0].startswith("outputs removed by retention at "), node

    worker_log = (retaining.tmp_path / "worker-w1.log").read_text(errors="replace")
    assert "checkpoint payloads removed count=2 executions=1" in worker_log
    beat_log = (retaining.tmp_path / "beat.log").read_text(errors="replace")
    assert "Sending due task remove-expired-checkpoint-payloads (gl_orchestrator.remove_expired_payloads)" in beat_log
    assert list((retaining.tmp_path / "home").glob("celerybeat-schedule*"))
