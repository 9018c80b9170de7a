"""The ``orchestrator`` command in embedded mode: real processes, no services."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
GHG = REPO / "examples" / "ghg-inventory"


def _orchestrator(tmp_path: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("GL_ORCHESTRATOR_")}
    env["GL_ORCHESTRATOR_HOME"] = str(tmp_path / "home")
    return subprocess.run(
        [sys.executable, "-m", "orchestrator_cli.main", *args],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False,
    )


def test_run_ghg_example_prints_valid_chain(tmp_path: Path) -> None:
    result = _orchestrator(tmp_path, "run", str(GHG / "dag.yaml"), "--input", str(GHG / "input.json"))
    assert result.returncode == 0, result.stderr
    assert "chain_valid: true" in result.stdout
    assert "[7/7]" in result.stdout
    assert "provenance_chain_hash: " in result.stdout


def test_run_json_output(tmp_path: Path) -> None:
    result = _orchestrator(tmp_path, "run", str(GHG / "dag.yaml"), "--input", str(GHG / "input.json"), "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["status"] == "completed"
    assert summary["chain_valid"] is True
    assert len(summary["provenance_chain_hash"]) == 64
    assert list(summary["outputs"]) == ["scope1_totals"]
    assert summary["outputs"]["scope1_totals"]["total"]["total_co2e_t"] == pytest.approx(5653.375864585122, rel=1e-12)
    assert summary["execution_id"]


def test_run_same_input_same_hash_across_homes(tmp_path: Path) -> None:
    hashes = set()
    for home in ("one", "two"):
        result = _orchestrator(tmp_path / home, "run", str(GHG / "dag.yaml"), "--input", str(GHG / "input.json"),
                               "--json")
        assert result.returncode == 0, result.stderr
        hashes.add(json.loads(result.stdout)["provenance_chain_hash"])
    assert len(hashes) == 1


def test_run_failing_dag_exits_nonzero(tmp_path: Path) -> None:
    dag = tmp_path / "failing.yaml"
    dag.write_text(
        "dag_id: failing\n"
        "nodes:\n"
        "  broken: {agent_id: test.fail, params: {message: meter offline}}\n"
        "  after: {agent_id: test.noop, depends_on: [broken]}\n",
        encoding="utf-8",
    )
    result = _orchestrator(tmp_path, "run", str(dag), "--agents", str(REPO / "tests" / "agents_for_tests.py"),
                           "--json")
    assert result.returncode == 1
    summary = json.loads(result.stdout)
    assert summary["status"] == "failed"
    assert "node 'broken' failed: ValueError: meter offline" in summary["error"]
    assert summary["nodes"]["after"]["status"] == "skipped"


def test_run_invalid_dag_lists_problems(tmp_path: Path) -> None:
    dag = tmp_path / "cyclic.yaml"
    dag.write_text(
        "dag_id: cyclic\n"
        "nodes:\n"
        "  a: {agent_id: test.noop, depends_on: [b]}\n"
        "  b: {agent_id: test.noop, depends_on: [a]}\n"
        "  c: {agent_id: no.such.agent}\n",
        encoding="utf-8",
    )
    result = _orchestrator(tmp_path, "run", str(dag), "--agents", str(REPO / "tests" / "agents_for_tests.py"))
    assert result.returncode == 1
    assert "a -> b -> a" in result.stderr
    assert "no.such.agent" in result.stderr


def test_run_rejects_input_outside_json_domain(tmp_path: Path) -> None:
    bad_input = tmp_path / "input.json"
    bad_input.write_text('{"facilities": [], "x": NaN}', encoding="utf-8")
    result = _orchestrator(tmp_path, "run", str(GHG / "dag.yaml"), "--input", str(bad_input))
    assert result.returncode == 1
    assert "NaN" in result.stderr


def test_resume_after_failure_completes(tmp_path: Path) -> None:
    agents = str(REPO / "tests" / "agents_for_tests.py")
    dag = tmp_path / "flaky.yaml"
    dag.write_text(
        "dag_id: flaky-once\n"
        "nodes:\n"
        "  first: {agent_id: test.const, params: {value: 5}}\n"
        f"  flaky: {{agent_id: test.flaky, depends_on: [first], params: {{failures: 1, counter_file: '{tmp_path / 'calls'}'}}}}\n"
        "  last: {agent_id: test.echo, depends_on: [flaky], input_mapping: {f: results.flaky}}\n",
        encoding="utf-8",
    )
    first = _orchestrator(tmp_path, "run", str(dag), "--agents", agents, "--json")
    assert first.returncode == 1
    execution_id = json.loads(first.stdout)["execution_id"]

    resumed = _orchestrator(tmp_path, "resume", execution_id, "--agents", agents, "--json")
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads(resumed.stdout)
    assert summary["resume"]["nodes_skipped"] == ["first"]
    assert summary["resume"]["nodes_remaining"] == ["flaky", "last"]
    assert summary["status"] == "completed"
    assert summary["chain_valid"] is True

    again = _orchestrator(tmp_path, "cancel", execution_id)
    assert again.returncode == 1
    assert "already completed" in again.stderr
