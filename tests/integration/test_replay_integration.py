"""Replay of the GHG example on real workers, through the REST API and the distributed CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.integration.conftest import REPO, Stack

pytestmark = pytest.mark.integration

GHG_DIR = REPO / "examples" / "ghg-inventory"


def test_ghg_replay_matches_through_api(stack: Stack) -> None:
    stack.start_worker("w1", concurrency=2)
    stack.start_api()
    dag_yaml = (GHG_DIR / "dag.yaml").read_bytes()
    response = stack.request("POST", "/dags", data=dag_yaml, headers={"Content-Type": "application/yaml"})
    assert response.status_code == 201, response.text
    input_data = json.loads((GHG_DIR / "input.json").read_text(encoding="utf-8"))
    response = stack.request("POST", "/dags/ghg-inventory/execute", json={"input_data": input_data})
    assert response.status_code == 202, response.text
    original = stack.wait_for_execution(response.json()["execution_id"])
    assert original["status"] == "completed", original

    response = stack.request("POST", f"/executions/{original['execution_id']}/replay")
    assert response.status_code == 202, response.text
    accepted = response.json()
    assert accepted["replay_of"] == original["execution_id"]
    replay = stack.wait_for_execution(accepted["execution_id"])
    assert replay["status"] == "completed", replay
    assert replay["chain_valid"] is True
    assert replay["execution_options"] == {"replay_of": original["execution_id"]}

    report = stack.request("GET", accepted["links"]["replay_report"].removeprefix("/api/v1/orchestrator")).json()
    assert report["matches"] is True
    assert report["provenance_chain_hash"] == {
        "original": original["provenance_chain_hash"], "replay": original["provenance_chain_hash"],
    }
    assert report["nodes_differing"] == []

    diff = stack.request("GET", f"/executions/{original['execution_id']}/diff/{accepted['execution_id']}").json()
    assert diff["identical"] is True
    assert len(diff["nodes"]) == 7

    # The CLI in distributed mode sends the messages to the same workers and waits for the replay.
    cli = subprocess.run(
        [sys.executable, "-m", "orchestrator_cli.main", "replay", original["execution_id"], "--json"],
        env=stack.env, cwd=REPO, capture_output=True, text=True, timeout=180, check=False,
    )
    assert cli.returncode == 0, cli.stderr
    cli_report = json.loads(cli.stdout)
    assert cli_report["matches"] is True
    assert cli_report["replay_of"] == original["execution_id"]
    assert "distributed" in cli.stderr

    no_wait = subprocess.run(
        [sys.executable, "-m", "orchestrator_cli.main", "replay", original["execution_id"], "--no-wait", "--json"],
        env=stack.env, cwd=REPO, capture_output=True, text=True, timeout=180, check=False,
    )
    assert no_wait.returncode == 0, no_wait.stderr
    started = json.loads(no_wait.stdout)
    assert started["status"] == "pending"
    assert stack.wait_for_execution(started["execution_id"])["provenance_chain_hash"] == \
        original["provenance_chain_hash"]
