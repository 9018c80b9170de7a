"""The counters the API serves add up to the rows in the database, across processes.

``orchestrator stack up``'s Python API starts two workers with two pool
processes each and a gunicorn API with two processes, all sharing one
PROMETHEUS_MULTIPROC_DIR. A pool process is killed with SIGKILL in the middle
of a node; its message comes back, and another pool process runs the node
again. Other executions retry a node, fail, skip a node and get cancelled, so
that every status of the counters is exercised. Then the counters from
``/metrics`` are compared with counts from the database.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine, text

from orchestrator_cli.stack import LocalStack, StackOptions
from tests.conftest import service_unavailable
from tests.integration.conftest import REPO, TEST_AGENTS

pytestmark = pytest.mark.integration

T = TypeVar("T")
DAG_ID = "metrics-add-up"


@pytest.fixture
def local_stack(tmp_path: Path) -> Iterator[LocalStack]:
    if not glob.glob("/usr/lib/postgresql/*/bin/pg_ctl") and shutil.which("pg_ctl") is None:
        service_unavailable("PostgreSQL server", "no pg_ctl; apt-get install postgresql")
    if shutil.which("redis-server") is None:
        service_unavailable("Redis server", "no redis-server on PATH; apt-get install redis-server")
    if importlib.util.find_spec("gunicorn") is None:
        service_unavailable("gunicorn", "not installed; pip install -e '.[server]'")

    env = {key: value for key, value in os.environ.items() if not key.startswith("GL_ORCHESTRATOR_")}
    env.update({"GL_ORCHESTRATOR_AGENT_MODULES": str(TEST_AGENTS), "PYTHONPATH": str(REPO)})
    directory = tmp_path / "stack"
    _leave_old_metrics(directory / "metrics", env)
    options = StackOptions(directory=directory, workers=2, concurrency=2, api_workers=2,
                           beat=False, flower=False, prometheus=False)
    stack = LocalStack(options, env=env)
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()
        stack.remove_data()


def _leave_old_metrics(folder: Path, env: dict[str, str]) -> None:
    """Write the metric files of an earlier run, which `stack up` must delete before its processes start."""
    folder.mkdir(parents=True)
    code = f"from orchestrator import metrics; metrics.NODE_EXECUTIONS.labels({DAG_ID!r}, 'completed').inc(5)"
    subprocess.run([sys.executable, "-c", code], env={**env, "PROMETHEUS_MULTIPROC_DIR": str(folder)}, check=True,
                   cwd=REPO)
    assert list(folder.iterdir())


def _wait_for(check: Callable[[], T | None], timeout: float, what: str) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")


def _api(stack: LocalStack, method: str, path: str, **kwargs: Any) -> requests.Response:
    return requests.request(method, f"{stack.api_url}{path}", headers={"Authorization": f"Bearer {stack.token}"},
                            timeout=30, **kwargs)


def _execute(stack: LocalStack, document: dict[str, Any], input_data: Any = None) -> str:
    registered = _api(stack, "POST", "/dags", json=document)
    assert registered.status_code in {200, 201}, registered.text
    started = _api(stack, "POST", f"/dags/{document['dag_id']}/execute",
                   json={"input_data": {} if input_data is None else input_data})
    assert started.status_code == 202, started.text
    execution_id: str = started.json()["execution_id"]
    return execution_id


def _ended(stack: LocalStack, execution_id: str, timeout: float = 60) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        body: dict[str, Any] = _api(stack, "GET", f"/executions/{execution_id}").json()
        return body if body["status"] in {"completed", "failed", "cancelled"} else None

    return _wait_for(check, timeout, f"execution {execution_id} to end")


def _rows(stack: LocalStack, sql: str) -> list[dict[str, Any]]:
    engine = create_engine(stack.admin_database_url)
    try:
        with engine.connect() as conn:
            return [dict(row) for row in conn.execute(text(sql)).mappings()]
    finally:
        engine.dispose()


def _scrape(stack: LocalStack) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Return every sample of /metrics as {sample name: {sorted labels: value}}; a name without samples maps to {}."""
    response = _api(stack, "GET", "/metrics")
    assert response.status_code == 200, response.text
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = defaultdict(dict)
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[sample.name][tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def _by(samples: dict[tuple[tuple[str, str], ...], float], *names: str) -> Counter[tuple[str, ...]]:
    """Add up samples by the values of the labels ``names``; zero samples are left out."""
    totals: Counter[tuple[str, ...]] = Counter()
    for labels, value in samples.items():
        if value:
            label_map = dict(labels)
            totals[tuple(label_map[name] for name in names)] += int(value)
    return totals


def _counted(folder: Path, name: str, seconds: float = 0, **fields: Any) -> dict[str, Any]:
    params: dict[str, Any] = {"counter_file": str(folder / f"{name}.calls"), "seconds": seconds}
    if seconds:
        params["marker_file"] = str(folder / f"{name}.pid")
    return {"agent_id": "test.counted_sleep", "params": params, **fields}


def _pid_in(marker: Path) -> int:
    return _wait_for(lambda: int(marker.read_text()) if marker.exists() and marker.read_text().isdigit() else None,
                     30, f"an agent to write its pid to {marker}")


def test_counters_match_database_after_sigkill(local_stack: LocalStack, tmp_path: Path) -> None:
    stack = local_stack
    assert _by(_scrape(stack)["gl_orchestrator_node_executions_total"], "dag_id") == Counter(), (
        "metric files of an earlier run were not deleted")

    # A chain whose middle node's pool process is killed, beside a node that
    # fails once and is retried, and a node whose condition is false.
    chain = _execute(stack, {
        "dag_id": DAG_ID,
        "nodes": {
            "a": _counted(tmp_path, "a"),
            "b": _counted(tmp_path, "b", 3, depends_on=["a"], input_mapping={"a": "results.a"}),
            "c": _counted(tmp_path, "c", depends_on=["b"], input_mapping={"b": "results.b"}),
            "flaky": {"agent_id": "test.flaky", "retry_policy": {"max_retries": 2, "base_delay": 0.1, "jitter": False},
                      "params": {"counter_file": str(tmp_path / "flaky.calls"), "failures": 1}},
            "never": {"agent_id": "test.const", "params": {"value": 1}, "condition": "input.include == true"},
        },
    }, input_data={"include": False})
    pool_pid = _pid_in(tmp_path / "b.pid")
    assert pool_pid not in {component.pid for component in stack.components.values()}
    os.kill(pool_pid, signal.SIGKILL)

    # A node that fails without retries stops its execution (fail_fast), and
    # its child is never attempted.
    failing = _execute(stack, {
        "dag_id": f"{DAG_ID}-fail",
        "nodes": {
            "boom": {"agent_id": "test.fail", "params": {"message": "planned"}},
            "after": {"agent_id": "test.const", "params": {"value": 1}, "depends_on": ["boom"]},
        },
    })
    # An execution cancelled while its node runs.
    cancelled = _execute(stack, {"dag_id": f"{DAG_ID}-cancel", "nodes": {"slow": _counted(tmp_path, "slow", 30)}})
    _pid_in(tmp_path / "slow.pid")
    assert _api(stack, "POST", f"/executions/{cancelled}/cancel").status_code == 200

    assert _ended(stack, chain)["status"] == "completed"
    assert _ended(stack, failing)["status"] == "failed"
    assert _ended(stack, cancelled)["status"] == "cancelled"
    traces = _rows(stack, "SELECT node_id, attempt, status FROM node_traces ORDER BY node_id, attempt")
    assert ("b", 1, "lost") in {(t["node_id"], t["attempt"], t["status"]) for t in traces}, traces

    samples = _scrape(stack)
    # Each gunicorn process renders the same files, so a second scrape agrees.
    assert _scrape(stack)["gl_orchestrator_node_executions_total"] == samples["gl_orchestrator_node_executions_total"]

    executions = Counter({(row["dag_id"], row["status"]): row["n"] for row in _rows(
        stack, "SELECT dag_id, status, count(*) AS n FROM dag_executions GROUP BY dag_id, status")})
    assert _by(samples["gl_orchestrator_dag_executions_total"], "dag_id", "status") == executions

    # Every attempt that ended has a trace. A failed trace followed by another
    # attempt of the same node is counted as retried.
    attempts = Counter({(row["dag_id"], row["status"]): row["n"] for row in _rows(stack, """
        SELECT e.dag_id,
               CASE WHEN t.status = 'failed' AND EXISTS (
                        SELECT 1 FROM node_traces later WHERE later.execution_id = t.execution_id
                        AND later.node_id = t.node_id AND later.attempt > t.attempt)
                    THEN 'retried' ELSE t.status END AS status,
               count(*) AS n
        FROM node_traces t JOIN dag_executions e ON e.execution_id = t.execution_id
        WHERE t.finished_at IS NOT NULL
        GROUP BY 1, 2""")})
    assert attempts[(DAG_ID, "lost")] == 1
    assert attempts[(DAG_ID, "retried")] == 1
    assert attempts[(DAG_ID, "skipped")] == 1
    assert _by(samples["gl_orchestrator_node_executions_total"], "dag_id", "status") == attempts

    saved = _rows(stack, "SELECT count(*) AS n FROM dag_checkpoints WHERE status = 'completed'")[0]["n"]
    checkpoints = _by(samples["gl_orchestrator_checkpoint_operations_total"], "operation", "status")
    assert checkpoints[("save", "success")] == saved
    assert checkpoints[("save", "error")] == 0

    gauges = {name: samples[name][()] for name in ("gl_orchestrator_active_executions",
                                                    "gl_orchestrator_queued_executions")}
    assert gauges == {"gl_orchestrator_active_executions": 0.0, "gl_orchestrator_queued_executions": 0.0}
