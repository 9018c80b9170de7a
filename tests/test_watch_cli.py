"""``orchestrator watch`` and ``orchestrator status`` against embedded runs in real processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from orchestrator_cli.progress import count_nodes, render_bar

REPO = Path(__file__).resolve().parents[1]
GHG = REPO / "examples" / "ghg-inventory"
AGENTS = str(REPO / "tests" / "agents_for_tests.py")


def _environment(home: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("GL_ORCHESTRATOR_")}
    env["GL_ORCHESTRATOR_HOME"] = str(home)
    return env


def _orchestrator(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "orchestrator_cli.main", *args], env=_environment(home), cwd=REPO,
                          capture_output=True, text=True, timeout=180, check=False)


def test_counts_and_bar() -> None:
    nodes = [
        {"status": "completed", "attempt_count": 1}, {"status": "skipped", "attempt_count": 0},
        {"status": "running", "attempt_count": 2}, {"status": "queued", "attempt_count": 0},
        {"status": "failed", "attempt_count": 3}, {"status": "retrying", "attempt_count": 1},
        {"status": "waiting", "attempt_count": 0}, {"status": "ready", "attempt_count": 0},
    ]
    counts = count_nodes(nodes, 8)

    assert (counts.done, counts.running, counts.failed, counts.retrying, counts.retried) == (2, 2, 1, 1, 3)
    assert render_bar(counts, 1.25) == (
        "[###########...................] 3/8 finished: 2 done, 1 failed, 2 running, 1 waiting to retry, "
        "3 retried (1.2s)"
    )


def test_watch_follows_a_live_execution(tmp_path: Path) -> None:
    home = tmp_path / "home"
    dag = tmp_path / "slow.yaml"
    dag.write_text(
        "dag_id: slow-chain\n"
        "nodes:\n"
        "  first: {agent_id: test.sleep, params: {seconds: 1.5}}\n"
        "  second: {agent_id: test.sleep, depends_on: [first], params: {seconds: 1.5}}\n"
        "  third: {agent_id: test.sleep, depends_on: [second], params: {seconds: 1.5}}\n",
        encoding="utf-8",
    )
    runner = subprocess.Popen([sys.executable, "-m", "orchestrator_cli.main", "run", str(dag), "--agents", AGENTS],
                              env=_environment(home), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        execution_id = None
        deadline = time.monotonic() + 60
        while execution_id is None and time.monotonic() < deadline:
            listed = _orchestrator(home, "status", "--json")
            items = json.loads(listed.stdout) if listed.returncode == 0 and listed.stdout.strip() else []
            execution_id = items[0]["execution_id"] if items else None
            time.sleep(0.2)
        assert execution_id is not None, "the run did not create its execution within 60 s"

        watched = _orchestrator(home, "watch", execution_id, "--interval", "0.2")
    finally:
        runner.wait(timeout=120)

    assert watched.returncode == 0, watched.stdout + watched.stderr
    lines = watched.stdout.splitlines()
    progress = [line for line in lines if line.startswith("[")]
    assert len(progress) >= 3, lines  # the counts changed while it watched
    assert progress[-1].startswith("[##############################] 3/3 finished: 3 done, 0 failed")
    assert lines[-1].startswith(f"execution {execution_id} completed; chain_valid: true; provenance_chain_hash: ")


def test_watch_reports_failure_and_exits_1(tmp_path: Path) -> None:
    home = tmp_path / "home"
    dag = tmp_path / "failing.yaml"
    dag.write_text(
        "dag_id: failing\n"
        "nodes:\n"
        "  ok: {agent_id: test.const, params: {value: 1}}\n"
        "  broken: {agent_id: test.fail, depends_on: [ok], params: {message: out of range}}\n",
        encoding="utf-8",
    )
    first = _orchestrator(home, "run", str(dag), "--agents", AGENTS, "--json")
    execution_id = json.loads(first.stdout)["execution_id"]

    watched = _orchestrator(home, "watch", execution_id)

    assert watched.returncode == 1
    assert "  failed   broken attempt 1: " in watched.stdout
    assert f"execution {execution_id} failed; chain_valid: true" in watched.stdout


def test_status_lists_executions_and_filters(tmp_path: Path) -> None:
    home = tmp_path / "home"
    run = _orchestrator(home, "run", str(GHG / "dag.yaml"), "--input", str(GHG / "input.json"), "--json")
    execution_id = json.loads(run.stdout)["execution_id"]

    listed = _orchestrator(home, "status")
    assert listed.returncode == 0, listed.stderr
    header, row = listed.stdout.splitlines()
    assert header.split() == ["EXECUTION", "DAG", "STATUS", "AGE", "NODES", "CHAIN", "RUNNING"]
    assert row.split()[:3] == [execution_id, "ghg-inventory", "completed"]
    assert "7/7" in row
    assert "valid" in row

    none_running = _orchestrator(home, "status", "--status", "running")
    assert none_running.stdout.strip() == "no executions created within 24h with status running"

    bad = _orchestrator(home, "status", "--status", "sleeping")
    assert bad.returncode == 1
    assert "sleeping" in bad.stderr

    unknown = _orchestrator(home, "watch", "00000000-0000-4000-8000-000000000000")
    assert unknown.returncode == 1
    assert "not found" in unknown.stderr


def test_watch_unknown_execution(tmp_path: Path) -> None:
    unknown = _orchestrator(tmp_path / "home", "watch", "00000000-0000-4000-8000-000000000000")
    assert unknown.returncode == 1
    assert "reading executions failed" in unknown.stderr
    assert "orchestrator db upgrade" in unknown.stderr
