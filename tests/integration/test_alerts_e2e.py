"""The checkpoint corruption alerts, end to end: real faults, a real Prometheus, the real API.

``orchestrator stack up``'s Python API starts everything in ``tmp_path``: a
private PostgreSQL, in which the workers connect as a role that is not a
superuser, a private Redis, gunicorn, one worker, beat, Flower and
Prometheus. Prometheus scrapes the API every second and evaluates the rules
every second.

The rules are deploy/prometheus/alerts.yml with one change, so the test ends
in about two minutes: the range of OrchestratorCheckpointFailure's
``increase(...[5m])`` is shortened to CHECKPOINT_WINDOW. Its metric, label
selector, function and comparison stay those of the runbook, and
OrchestratorProvenanceChainBroken is used unchanged. Both rules already have
``for: 0m``.
"""

from __future__ import annotations

import glob
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import requests
import yaml
from sqlalchemy import create_engine, text

from orchestrator_cli.stack import DEFAULT_RULES, FLOWER_USER, LocalStack, StackOptions
from orchestrator_cli.stack_servers import APP_ROLE
from tests.conftest import service_unavailable
from tests.integration.conftest import REPO, TEST_AGENTS

pytestmark = pytest.mark.integration

T = TypeVar("T")
CHECKPOINT_WINDOW = "20s"
CHECKPOINT_ALERT = "OrchestratorCheckpointFailure"
CHAIN_ALERT = "OrchestratorProvenanceChainBroken"
# The execution that cannot save its checkpoint retries its node with
# backoff, so it only ends when the stuck-execution check finds it past this
# deadline (beat sends the check every second here).
DEADLINE_SECONDS = 8


def _require_tools() -> None:
    """Skip, or fail under GL_ORCHESTRATOR_REQUIRE_SERVICES=1, when a program the stack runs is missing."""
    if shutil.which("prometheus") is None:
        service_unavailable("Prometheus", "no prometheus binary on PATH; apt-get install prometheus")
    if not glob.glob("/usr/lib/postgresql/*/bin/pg_ctl") and shutil.which("pg_ctl") is None:
        service_unavailable("PostgreSQL server", "no pg_ctl; apt-get install postgresql")
    if shutil.which("redis-server") is None:
        service_unavailable("Redis server", "no redis-server on PATH; apt-get install redis-server")
    for module, extra in (("gunicorn", "server"), ("flower", "stack")):
        if importlib.util.find_spec(module) is None:
            service_unavailable(module, f"not installed; pip install -e '.[{extra}]'")


def _test_rules(folder: Path) -> Path:
    """Write alerts.yml with CHECKPOINT_WINDOW in place of the 5m range of the checkpoint failure rule."""
    document = yaml.safe_load(DEFAULT_RULES.read_text(encoding="utf-8"))
    rules = {rule["alert"]: rule for group in document["groups"] for rule in group["rules"]}
    checkpoint = rules[CHECKPOINT_ALERT]
    assert checkpoint["expr"] == 'increase(gl_orchestrator_checkpoint_operations_total{status="error"}[5m]) > 0'
    assert rules[CHAIN_ALERT]["expr"] == "gl_orchestrator_provenance_chain_valid == 0"
    checkpoint["expr"] = checkpoint["expr"].replace("[5m]", f"[{CHECKPOINT_WINDOW}]")
    path = folder / "alerts.yml"
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture
def local_stack(tmp_path: Path) -> Iterator[LocalStack]:
    _require_tools()
    env = {key: value for key, value in os.environ.items() if not key.startswith("GL_ORCHESTRATOR_")}
    env.update({
        "GL_ORCHESTRATOR_AGENT_MODULES": str(TEST_AGENTS),
        "GL_ORCHESTRATOR_STUCK_CHECK_INTERVAL_SECONDS": "1",
        "GL_ORCHESTRATOR_HARD_TIMEOUT_GRACE_SECONDS": "2",
        "PYTHONPATH": str(REPO),
    })
    options = StackOptions(
        directory=tmp_path / "stack", workers=1, concurrency=2, api_workers=1,
        rules_file=_test_rules(tmp_path), scrape_interval="1s", evaluation_interval="1s",
    )
    stack = LocalStack(options, env=env)
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()
        stack.remove_data()


def _wait_for(check: Callable[[], T | None], timeout: float, what: str) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")


def _alerts(stack: LocalStack, name: str) -> list[dict[str, Any]]:
    response = requests.get(f"{stack.url_of('prometheus')}api/v1/alerts", timeout=10)
    response.raise_for_status()
    return [alert for alert in response.json()["data"]["alerts"] if alert["labels"]["alertname"] == name]


def _firing(stack: LocalStack, name: str) -> list[dict[str, Any]]:
    return [alert for alert in _alerts(stack, name) if alert["state"] == "firing"]


def _scraped_targets(stack: LocalStack) -> list[dict[str, Any]] | None:
    """Return Prometheus's active targets once there are some and every one was scraped successfully."""
    response = requests.get(f"{stack.url_of('prometheus')}api/v1/targets", timeout=10)
    targets: list[dict[str, Any]] = response.json()["data"]["activeTargets"]
    if targets and all(target["health"] == "up" for target in targets):
        return targets
    return None


def _api(stack: LocalStack, method: str, path: str, **kwargs: Any) -> requests.Response:
    return requests.request(method, f"{stack.api_url}{path}", headers={"Authorization": f"Bearer {stack.token}"},
                            timeout=30, **kwargs)


def _orchestrator(stack: LocalStack, *args: str) -> subprocess.CompletedProcess[str]:
    """Run an `orchestrator` command with the settings of stack.env, as an operator would."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("GL_ORCHESTRATOR_")}
    env.update(stack.settings_env())
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run([sys.executable, "-m", "orchestrator_cli.main", *args], env=env, capture_output=True,
                          text=True, timeout=180, cwd=REPO, check=False)


def _admin_sql(stack: LocalStack, statement: str, **params: Any) -> None:
    engine = create_engine(stack.admin_database_url)
    try:
        with engine.begin() as conn:
            conn.execute(text(statement), params)
    finally:
        engine.dispose()


def _admin_rows(stack: LocalStack, query: str, **params: Any) -> list[dict[str, Any]]:
    engine = create_engine(stack.admin_database_url)
    try:
        with engine.connect() as conn:
            return [dict(row) for row in conn.execute(text(query), params).mappings()]
    finally:
        engine.dispose()


def _execute(stack: LocalStack, document: dict[str, Any]) -> str:
    registered = _api(stack, "POST", "/dags", json=document)
    assert registered.status_code in {200, 201}, registered.text
    started = _api(stack, "POST", f"/dags/{document['dag_id']}/execute", json={"input_data": {}})
    assert started.status_code == 202, started.text
    execution_id: str = started.json()["execution_id"]
    return execution_id


def _execution(stack: LocalStack, execution_id: str) -> dict[str, Any]:
    body: dict[str, Any] = _api(stack, "GET", f"/executions/{execution_id}").json()
    return body


def _ended(stack: LocalStack, execution_id: str, timeout: float) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        body = _execution(stack, execution_id)
        return body if body["status"] in {"completed", "failed", "cancelled"} else None

    return _wait_for(check, timeout, f"execution {execution_id} to end")


def _chain_document(dag_id: str, **extra: Any) -> dict[str, Any]:
    return {
        "dag_id": dag_id,
        **extra,
        "nodes": {
            "a": {"agent_id": "test.const", "params": {"value": 21}},
            "b": {"agent_id": "test.echo", "depends_on": ["a"], "input_mapping": {"x": "results.a"}},
        },
    }


def test_checkpoint_and_chain_alerts_fire_and_resolve(local_stack: LocalStack) -> None:
    stack = local_stack
    timings: dict[str, float] = {}
    begin = time.monotonic()

    # Prometheus scrapes the API, and nothing fires on a fresh stack.
    targets = _wait_for(lambda: _scraped_targets(stack), 30, "the API target to be scraped")
    assert [target["labels"]["job"] for target in targets] == ["gl-orchestrator-api"]
    assert _alerts(stack, CHECKPOINT_ALERT) == []
    assert _alerts(stack, CHAIN_ALERT) == []

    # -- checkpoint write failure -------------------------------------------
    _admin_sql(stack, f"REVOKE INSERT ON dag_checkpoints FROM {APP_ROLE}")
    failing = _execute(stack, _chain_document("alerts-e2e-checkpoint", execution_timeout_seconds=DEADLINE_SECONDS))
    fault_at = time.monotonic()
    alerts = _wait_for(lambda: _firing(stack, CHECKPOINT_ALERT), 60, f"{CHECKPOINT_ALERT} to fire")
    timings["checkpoint alert fired after"] = time.monotonic() - fault_at
    assert alerts[0]["labels"]["operation"] == "save"
    assert alerts[0]["labels"]["severity"] == "critical"
    assert alerts[0]["annotations"]["runbook_url"] == "docs/operations.md#checkpoint-failure"
    worker_log = Path(stack.components["worker1"].log).read_text(errors="replace")
    assert "checkpoint save failed" in worker_log
    assert "permission denied for table dag_checkpoints" in worker_log

    # The node keeps retrying until the stuck-execution check fails the
    # execution at its deadline. Then the operator restores the grant and
    # resumes it, following the runbook's resolution.
    failed = _ended(stack, failing, DEADLINE_SECONDS + 30)
    assert failed["status"] == "failed", failed
    assert "deadline" in (failed["error"] or ""), failed
    _admin_sql(stack, f"GRANT INSERT ON dag_checkpoints TO {APP_ROLE}")
    resumed = _orchestrator(stack, "resume", failing, "--json", "--timeout", "60")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    summary = json.loads(resumed.stdout)
    assert summary["status"] == "completed"
    assert summary["chain_valid"] is True
    assert sorted(summary["resume"]["nodes_remaining"]) == ["a", "b"]
    resumed_at = time.monotonic()

    _wait_for(lambda: not _alerts(stack, CHECKPOINT_ALERT) or None, 90, f"{CHECKPOINT_ALERT} to resolve")
    timings["checkpoint alert resolved after the resume"] = time.monotonic() - resumed_at

    # Flower shows the node tasks by name with their ids.
    tasks = _wait_for(
        lambda: requests.get(f"{stack.url_of('flower')}api/tasks", auth=(FLOWER_USER, stack.token),
                             timeout=10).json(), 30, "Flower to list tasks")
    names = {task["name"] for task in tasks.values()}
    assert {"gl_orchestrator.run_node", "gl_orchestrator.finalize_execution"} <= names
    shown = {task["args"] for task in tasks.values() if task["name"] == "gl_orchestrator.run_node"}
    assert f"execution_id={failing} node_id=a" in shown
    assert requests.get(f"{stack.url_of('flower')}api/tasks", timeout=10).status_code == 401

    # -- altered stored output ------------------------------------------------
    assert _alerts(stack, CHAIN_ALERT) == []
    _admin_sql(stack, "UPDATE dag_checkpoints SET outputs = CAST(:outputs AS jsonb) "
                      "WHERE execution_id = :execution_id AND node_id = 'a'",
               outputs=json.dumps(22), execution_id=failing)
    sweep = _orchestrator(stack, "integrity", "sweep")
    assert sweep.returncode == 1, sweep.stdout + sweep.stderr
    assert f"BROKEN  {failing}" in sweep.stdout
    swept_at = time.monotonic()
    alerts = _wait_for(lambda: _firing(stack, CHAIN_ALERT), 30, f"{CHAIN_ALERT} to fire")
    timings["chain alert fired after the sweep"] = time.monotonic() - swept_at
    assert alerts[0]["annotations"]["runbook_url"] == "docs/operations.md#provenance-chain-broken"

    replay = _orchestrator(stack, "replay", failing, "--json", "--timeout", "60")
    assert replay.returncode == 0, replay.stdout + replay.stderr
    report = json.loads(replay.stdout)
    regenerated = report["execution_id"]
    assert report["status"] == "completed"
    superseded = _orchestrator(stack, "integrity", "supersede", failing, "--by", regenerated)
    assert superseded.returncode == 0, superseded.stdout + superseded.stderr
    superseded_at = time.monotonic()
    _wait_for(lambda: not _alerts(stack, CHAIN_ALERT) or None, 30, f"{CHAIN_ALERT} to resolve")
    timings["chain alert resolved after the supersede"] = time.monotonic() - superseded_at

    # The broken execution's records are kept as evidence, with the mark.
    marked = _admin_rows(stack, "SELECT superseded_by FROM dag_executions WHERE execution_id = :e", e=failing)
    assert marked == [{"superseded_by": regenerated}]
    altered = _admin_rows(stack, "SELECT outputs FROM dag_checkpoints WHERE execution_id = :e AND node_id = 'a'",
                          e=failing)
    assert altered == [{"outputs": 22}]
    timings["whole test body"] = time.monotonic() - begin
    print("alert timings (s): " + ", ".join(f"{what} {seconds:.1f}" for what, seconds in timings.items()))
