"""``orchestrator replay`` and ``orchestrator diff`` in embedded mode: real processes, no services."""

from __future__ import annotations

import json
from pathlib import Path

from tests.test_cli import GHG, REPO, _orchestrator

NONDETERMINISTIC = REPO / "examples" / "nondeterministic"


def _run_example(tmp_path: Path, example: Path) -> str:
    result = _orchestrator(tmp_path, "run", str(example / "dag.yaml"), "--input", str(example / "input.json"),
                           "--json")
    assert result.returncode == 0, result.stderr
    return str(json.loads(result.stdout)["execution_id"])


def test_replay_ghg_example_matches(tmp_path: Path) -> None:
    original = _run_example(tmp_path, GHG)

    replayed = _orchestrator(tmp_path, "replay", original, "--agents", str(GHG / "agents.py"), "--json")
    assert replayed.returncode == 0, replayed.stderr
    report = json.loads(replayed.stdout)
    assert report["replay_of"] == original
    assert report["status"] == "completed"
    assert report["matches"] is True
    assert report["provenance_chain_hash"]["original"] == report["provenance_chain_hash"]["replay"]
    assert report["nodes_differing"] == []
    assert "[7/7]" in replayed.stderr

    diff = _orchestrator(tmp_path, "diff", original, report["execution_id"])
    assert diff.returncode == 0, diff.stderr
    assert f"executions are identical: 7 nodes, provenance_chain_hash {report['provenance_chain_hash']['replay']}" \
        in diff.stdout


def test_replay_nondeterministic_example_differs(tmp_path: Path) -> None:
    original = _run_example(tmp_path, NONDETERMINISTIC)

    replayed = _orchestrator(tmp_path, "replay", original, "--agents", str(NONDETERMINISTIC / "agents.py"))
    assert replayed.returncode == 1, replayed.stderr
    assert "matches: false" in replayed.stdout
    assert "replay differs from the original in 2 node(s): report (nondeterministic), publish" in replayed.stdout
    replay_id = replayed.stdout.split()[1]

    diff = _orchestrator(tmp_path, "diff", original, replay_id, "--json")
    assert diff.returncode == 1, diff.stderr
    report = json.loads(diff.stdout)
    assert report["nodes_differing"] == ["report", "publish"]
    assert report["nodes_nondeterministic"] == ["report"]
    nodes = {node["node_id"]: node for node in report["nodes"]}
    assert nodes["report"]["differences"] == ["output"]
    assert nodes["publish"]["differences"] == ["input", "output"]
    assert nodes["check"]["differs"] is False
    assert nodes["total"]["differs"] is False

    table = _orchestrator(tmp_path, "diff", original, replay_id)
    assert table.returncode == 1
    lines = table.stdout.splitlines()
    assert lines[0] == f"A: execution {original} (completed)"
    assert lines[2].split() == ["node", "differs", "A", "B"]
    rows = [line.split() for line in lines[3:-1]]
    assert [row[:2] for row in rows] == [
        ["(execution)", "provenance_chain_hash"], ["report", "output"], ["publish", "input"], ["publish", "output"],
    ]
    assert "(nondeterministic)" in lines[4]
    assert lines[-1] == ("executions differ: 2 of 5 nodes differ: report (nondeterministic), publish; "
                         "same dag_hash and input_hash")


def test_replay_without_agents_fails(tmp_path: Path) -> None:
    original = _run_example(tmp_path, NONDETERMINISTIC)
    result = _orchestrator(tmp_path, "replay", original)
    assert result.returncode == 2
    assert "meter.load_readings" in result.stderr


def test_replay_and_diff_unknown_execution(tmp_path: Path) -> None:
    original = _run_example(tmp_path, NONDETERMINISTIC)

    replayed = _orchestrator(tmp_path, "replay", "missing", "--agents", str(NONDETERMINISTIC / "agents.py"))
    assert replayed.returncode == 2
    assert "execution 'missing' not found" in replayed.stderr

    diff = _orchestrator(tmp_path, "diff", original, "missing")
    assert diff.returncode == 2
    assert "execution 'missing' not found" in diff.stderr
