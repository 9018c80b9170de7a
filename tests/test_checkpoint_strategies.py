"""Whole runs with each checkpoint strategy, through the ``orchestrator`` command in embedded mode.

Embedded mode runs agents in the children of a prefork pool. So these tests
also show that a memory store is shared between those children and the
command's own process. They show too that one process reads the file
payloads another wrote.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
GHG = REPO / "examples" / "ghg-inventory"
AGENTS = str(REPO / "tests" / "agents_for_tests.py")


def _orchestrator(home: Path, strategy: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("GL_ORCHESTRATOR_")}
    env["GL_ORCHESTRATOR_HOME"] = str(home)
    env["GL_ORCHESTRATOR_CHECKPOINT_STRATEGY"] = strategy
    return subprocess.run(
        [sys.executable, "-m", "orchestrator_cli.main", *args],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=180, check=False,
    )


def _sqlite_rows(home: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with sqlite3.connect(home / "orchestrator.db") as conn:
        return conn.execute(sql, params).fetchall()


def test_ghg_chain_hash_same_for_every_strategy(tmp_path: Path) -> None:
    hashes = {}
    for strategy in ("database", "file", "memory"):
        home = tmp_path / strategy
        result = _orchestrator(home, strategy, "run", str(GHG / "dag.yaml"), "--input", str(GHG / "input.json"),
                               "--json")
        assert result.returncode == 0, result.stderr
        summary = json.loads(result.stdout)
        assert summary["status"] == "completed"
        assert summary["chain_valid"] is True
        total = summary["outputs"]["scope1_totals"]["total"]["total_co2e_t"]
        assert total == pytest.approx(5653.375864585122, rel=1e-12)
        hashes[strategy] = summary["provenance_chain_hash"]

        stored = _sqlite_rows(home, "SELECT node_id, outputs FROM dag_checkpoints WHERE status = 'completed'")
        assert len(stored) == 7
        if strategy == "database":
            assert all(outputs is not None for _, outputs in stored)
        else:
            assert all(outputs is None for _, outputs in stored)
        if strategy == "file":
            files = sorted(path.name.split("@")[0] for path in (home / "checkpoints" / summary["execution_id"]).iterdir())
            assert files == sorted(node_id for node_id, _ in stored)

    assert len(set(hashes.values())) == 1, hashes


def _flaky_dag(tmp_path: Path) -> Path:
    dag = tmp_path / "flaky.yaml"
    dag.write_text(
        "dag_id: flaky-once\n"
        "nodes:\n"
        "  first: {agent_id: test.const, params: {value: 5}}\n"
        f"  flaky: {{agent_id: test.flaky, depends_on: [first], params: {{failures: 1, counter_file: '{tmp_path / 'calls'}'}}}}\n"
        "  last: {agent_id: test.echo, depends_on: [flaky], input_mapping: {f: results.flaky}}\n",
        encoding="utf-8",
    )
    return dag


def test_file_store_tampered_payload_refuses_resume_then_reruns(tmp_path: Path) -> None:
    home = tmp_path / "home"
    first = _orchestrator(home, "file", "run", str(_flaky_dag(tmp_path)), "--agents", AGENTS, "--json")
    assert first.returncode == 1
    execution_id = json.loads(first.stdout)["execution_id"]
    [payload] = (home / "checkpoints" / execution_id).glob("first@*.json")
    assert payload.read_text(encoding="utf-8") == "5"
    payload.write_text("6", encoding="utf-8")

    refused = _orchestrator(home, "file", "resume", execution_id, "--agents", AGENTS, "--json")
    assert refused.returncode == 1
    assert "checkpoint integrity verification failed" in refused.stderr
    assert "'first'" in refused.stderr

    resumed = _orchestrator(home, "file", "resume", execution_id, "--rerun-corrupted", "--agents", AGENTS, "--json")
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads(resumed.stdout)
    assert summary["status"] == "completed"
    assert summary["chain_valid"] is True
    assert summary["resume"]["nodes_remaining"] == ["first", "flaky", "last"]

    [evidence] = (home / "checkpoints" / execution_id / "archive").glob("first@*.json")
    assert evidence.read_text(encoding="utf-8") == "6"
    [(reason,)] = _sqlite_rows(home, "SELECT reason FROM checkpoint_archive WHERE node_id = 'first'")
    assert reason.startswith("corrupted, kept as evidence")
    assert reason.endswith(f"payload kept at {evidence}")
    assert payload.read_text(encoding="utf-8") == "5"  # written again by the rerun


def test_memory_store_resume_in_new_process(tmp_path: Path) -> None:
    home = tmp_path / "home"
    first = _orchestrator(home, "memory", "run", str(_flaky_dag(tmp_path)), "--agents", AGENTS, "--json")
    assert first.returncode == 1
    execution_id = json.loads(first.stdout)["execution_id"]

    resumed = _orchestrator(home, "memory", "resume", execution_id, "--agents", AGENTS, "--json")
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads(resumed.stdout)
    assert summary["status"] == "completed"
    assert summary["chain_valid"] is True
    reasons = {node["node_id"]: node["reason"] for node in summary["resume"]["nodes"]}
    assert reasons["first"] == "outputs are no longer in the memory checkpoint store"
    assert reasons["flaky"] == "upstream node 'first' runs again"

    # In a later process the outputs are gone: noted on each node, never reported as altered.
    verified = _orchestrator(home, "memory", "verify", "--execution", execution_id, "--json")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    report = json.loads(verified.stdout)
    assert report["chain_valid"] is True
    notes = {node["node_id"]: node["notes"] for node in report["nodes"]}
    assert notes["first"][0].startswith("outputs were kept in memory by the process that ran the node")

    elsewhere = _orchestrator(home, "database", "verify", "--execution", execution_id, "--json")
    assert elsewhere.returncode == 1
    [first] = [node for node in json.loads(elsewhere.stdout)["nodes"] if node["node_id"] == "first"]
    assert first["reasons"][0].startswith("output unavailable: outputs were kept by the memory checkpoint store")
