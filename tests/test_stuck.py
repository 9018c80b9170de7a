"""Execution deadlines, worker heartbeats and the stuck-execution check, on SQLite and PostgreSQL.

The scheduler is driven by hand, as in tests/test_scheduler.py: a test claims
node ``b`` for worker ``w1@host-a`` and then runs the check at a chosen
moment, so no test waits for time to pass. The embedded-worker and CLI tests
run ``orchestrator`` in subprocesses.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import Table, select, update

from api import create_app
from api.openapi import openapi_document
from orchestrator import stuck
from orchestrator.agents import AgentRegistry
from orchestrator.dag import Dag, parse_dag
from orchestrator.database import Database, upgrade_schema
from orchestrator.errors import SettingsError
from orchestrator.finalizer import finalize_execution
from orchestrator.hashing import canonical_json
from orchestrator.heartbeats import as_utc, read_heartbeats, record_heartbeat, remove_heartbeat, worker_name_of
from orchestrator.models import dag_executions, execution_nodes, node_traces, utcnow
from orchestrator.repository import register_dag
from orchestrator.resume import cancel_execution, resume_execution
from orchestrator.scheduler import Claim, FollowUp, Prepared, Scheduler
from orchestrator.settings import Settings, load_settings
from orchestrator.stuck import StuckCheckResult, detect_stuck_executions
from workers import heartbeat
from workers.app import STUCK_SCHEDULE_ENTRY, STUCK_TASK, create_celery_app

REPO = Path(__file__).resolve().parents[1]
W1 = "w1@host-a pid=12 host=host-a"
W1_NAME = "w1@host-a"
LOST_AFTER = 120.0
TIMEOUT = 600.0

CHAIN = {
    "a": {"agent_id": "t.const", "params": {"value": 1}},
    "b": {"agent_id": "t.add", "depends_on": ["a"], "input_mapping": {"a": "results.a"}},
    "c": {"agent_id": "t.add", "depends_on": ["b"], "input_mapping": {"b": "results.b"}},
}


@pytest.fixture
def registry() -> AgentRegistry:
    agents = AgentRegistry()
    agents.register("t.const", "1.0.0", lambda inputs, params: params["value"])
    agents.register("t.add", "1.0.0", lambda inputs, params: sum(inputs.values()))
    return agents


# -- helpers -------------------------------------------------------------------


def _dag(registry: AgentRegistry, dag_id: str = "stuck-dag", **extra: Any) -> Dag:
    return parse_dag({"dag_id": dag_id, "nodes": CHAIN, **extra}, registry)


def _start(database: Database, registry: AgentRegistry, dag: Dag) -> tuple[Scheduler, str, FollowUp]:
    register_dag(database, dag, replace=True)
    scheduler = Scheduler(database, registry)
    execution_id, follow_up = scheduler.create_execution(dag, {}, default_execution_timeout_seconds=TIMEOUT)
    return scheduler, execution_id, follow_up


def _run(scheduler: Scheduler, claim: Claim) -> FollowUp:
    prepared = scheduler.prepare(claim)
    assert isinstance(prepared, Prepared)
    outputs = prepared.agent(prepared.inputs, prepared.params)
    return scheduler.record_success(claim, prepared, canonical_json(outputs), outputs)


def _drain(scheduler: Scheduler, follow_up: FollowUp) -> FollowUp:
    pending = list(follow_up.dispatches)
    last = follow_up
    while pending:
        dispatch = pending.pop(0)
        claim = scheduler.claim(dispatch.execution_id, dispatch.node_id, dispatch.task_id, worker="w2@host-b pid=7 host=host-b")
        assert claim.run, dispatch.node_id
        last = _run(scheduler, claim)
        pending.extend(last.dispatches)
    return last


def _b_running_on_w1(database: Database, registry: AgentRegistry, dag: Dag | None = None,
                     worker: str | None = W1) -> tuple[Scheduler, str, Claim]:
    """Start an execution of CHAIN, complete ``a``, and claim ``b`` for ``worker``."""
    scheduler, execution_id, follow_up = _start(database, registry, dag or _dag(registry))
    after_a = _run(scheduler, scheduler.claim(execution_id, "a", follow_up.dispatches[0].task_id, worker=W1))
    claim_b = scheduler.claim(execution_id, "b", after_a.dispatches[0].task_id, worker=worker)
    assert claim_b.run
    return scheduler, execution_id, claim_b


def _update(database: Database, table: Table, where: Any, **values: Any) -> None:
    # A Core statement, so SQLite stores datetimes in the format SQLAlchemy compares them in.
    with database.engine.begin() as conn:
        conn.execute(update(table).where(where).values(**values))


def _execution(database: Database, execution_id: str) -> Any:
    with database.connect() as conn:
        return conn.execute(select(dag_executions).where(dag_executions.c.execution_id == execution_id)).mappings().one()


def _node(database: Database, execution_id: str, node_id: str) -> Any:
    with database.connect() as conn:
        return conn.execute(select(execution_nodes).where(
            execution_nodes.c.execution_id == execution_id, execution_nodes.c.node_id == node_id)).mappings().one()


def _traces(database: Database, execution_id: str, node_id: str) -> list[Any]:
    with database.connect() as conn:
        return list(conn.execute(select(node_traces).where(
            node_traces.c.execution_id == execution_id, node_traces.c.node_id == node_id,
        ).order_by(node_traces.c.attempt)).mappings())


def _check(scheduler: Scheduler, moment: datetime) -> StuckCheckResult:
    return detect_stuck_executions(scheduler, worker_lost_after_seconds=LOST_AFTER,
                                   default_execution_timeout_seconds=TIMEOUT, now=moment)


def _text(moment: datetime) -> str:
    return as_utc(moment).isoformat(timespec="seconds").replace("+00:00", "Z")


def _beat(database: Database, at: datetime, *, started_at: datetime | None = None, worker: str = W1_NAME) -> None:
    record_heartbeat(database, worker, started_at=started_at or at - timedelta(hours=1), now=at)


# -- deadlines -----------------------------------------------------------------


def test_deadline_from_dag_or_default(database: Database, registry: AgentRegistry) -> None:
    cases = [
        (_dag(registry, "own-timeout", execution_timeout_seconds=3600), {}, 3600.0),
        (_dag(registry, "default-timeout"), {"default_execution_timeout_seconds": 600.0}, 600.0),
        (_dag(registry, "builtin-timeout"), {}, 86400.0),
        (_dag(registry, "no-timeout"), {"default_execution_timeout_seconds": 0.0}, None),
        (_dag(registry, "own-beats-zero", execution_timeout_seconds=60), {"default_execution_timeout_seconds": 0.0}, 60.0),
    ]
    for dag, options, expected in cases:
        register_dag(database, dag, replace=True)
        execution_id, _ = Scheduler(database, registry).create_execution(dag, {}, **options)
        row = _execution(database, execution_id)
        if expected is None:
            assert row["deadline_at"] is None, dag.dag_id
        else:
            actual = (as_utc(row["deadline_at"]) - as_utc(row["created_at"])).total_seconds()
            assert actual == pytest.approx(expected), dag.dag_id


def test_past_deadline_fails_naming_running_node(database: Database, registry: AgentRegistry) -> None:
    scheduler, execution_id, _ = _b_running_on_w1(database, registry)
    deadline = as_utc(_execution(database, execution_id)["deadline_at"])
    moment = deadline + timedelta(seconds=1)
    _beat(database, moment)

    result = _check(scheduler, moment)

    assert [marked.execution_id for marked in result.marked] == [execution_id]
    marked = result.marked[0]
    expected = f"execution timed out after 600s (deadline {_text(deadline)}); nodes still running: b (worker {W1})"
    assert marked.error == expected
    assert marked.timed_out is True
    assert marked.lost_nodes == ()
    assert marked.previous_status == "running"
    row = _execution(database, execution_id)
    assert row["status"] == "failed"
    assert row["error"] == expected
    assert row["stop_reason"] == "execution timed out"
    assert as_utc(row["completed_at"]) == moment
    # The worker is alive, so its attempt may still finish and be recorded.
    assert _node(database, execution_id, "b")["status"] == "running"
    assert _traces(database, execution_id, "b")[-1]["finished_at"] is None


def test_past_deadline_names_nodes_not_yet_run(database: Database, registry: AgentRegistry) -> None:
    scheduler, execution_id, _ = _start(database, registry, _dag(registry))
    deadline = as_utc(_execution(database, execution_id)["deadline_at"])

    result = _check(scheduler, deadline + timedelta(seconds=5))

    assert len(result.marked) == 1
    assert result.marked[0].previous_status == "pending"
    assert result.marked[0].error == (
        f"execution timed out after 600s (deadline {_text(deadline)}); "
        "no node was running; nodes not yet run: a (queued), b (waiting), c (waiting)"
    )


def test_deadline_names_dag_timeout(database: Database, registry: AgentRegistry) -> None:
    dag = _dag(registry, execution_timeout_seconds=30)
    scheduler, execution_id, _ = _b_running_on_w1(database, registry, dag)
    deadline = as_utc(_execution(database, execution_id)["deadline_at"])
    _beat(database, deadline + timedelta(seconds=1))

    result = _check(scheduler, deadline + timedelta(seconds=1))

    assert result.marked[0].error.startswith(f"execution timed out after 30s (deadline {_text(deadline)}); ")


# -- lost workers --------------------------------------------------------------


def test_stale_heartbeat_fails_naming_node_and_worker(database: Database, registry: AgentRegistry) -> None:
    scheduler, execution_id, _ = _b_running_on_w1(database, registry)
    last_seen = utcnow()
    _beat(database, last_seen)
    moment = last_seen + timedelta(seconds=200)

    result = _check(scheduler, moment)

    expected = f"node 'b' was claimed by worker {W1_NAME}, which has sent no heartbeat for 200s"
    assert len(result.marked) == 1
    marked = result.marked[0]
    assert marked.error == expected
    assert marked.timed_out is False
    assert [(node.node_id, node.worker) for node in marked.lost_nodes] == [("b", W1)]
    row = _execution(database, execution_id)
    assert row["status"] == "failed"
    assert row["error"] == expected
    assert row["stop_reason"] == "the worker of node 'b' was lost"
    trace = _traces(database, execution_id, "b")[-1]
    assert trace["status"] == "lost"
    assert trace["error"] == expected
    assert as_utc(trace["finished_at"]) == moment
    assert trace["duration_seconds"] >= 200


def test_missing_heartbeat_counts_after_window(database: Database, registry: AgentRegistry) -> None:
    scheduler, execution_id, _ = _b_running_on_w1(database, registry)
    started = as_utc(_node(database, execution_id, "b")["started_at"])

    assert _check(scheduler, started + timedelta(seconds=LOST_AFTER - 1)).marked == ()
    assert _execution(database, execution_id)["status"] == "running"

    result = _check(scheduler, started + timedelta(seconds=LOST_AFTER + 80))
    assert result.marked[0].error == (
        f"node 'b' was claimed by worker {W1_NAME}, which has no heartbeat on record; "
        "the node has been running for 200s"
    )


def test_restarted_worker_fails_its_old_claim(database: Database, registry: AgentRegistry) -> None:
    scheduler, execution_id, _ = _b_running_on_w1(database, registry)
    started = as_utc(_node(database, execution_id, "b")["started_at"])
    restarted = started + timedelta(seconds=10)
    _beat(database, restarted + timedelta(seconds=1), started_at=restarted)

    result = _check(scheduler, restarted + timedelta(seconds=2))

    assert result.marked[0].error == (
        f"node 'b' was claimed by worker {W1_NAME} before that worker restarted at {_text(restarted)}"
    )


def test_several_lost_nodes_each_named(database: Database, registry: AgentRegistry) -> None:
    nodes = {f"n{i}": {"agent_id": "t.const", "params": {"value": i}} for i in range(7)}
    dag = parse_dag({"dag_id": "wide", "nodes": nodes}, registry)
    scheduler, execution_id, follow_up = _start(database, registry, dag)
    for dispatch in follow_up.dispatches:
        assert scheduler.claim(execution_id, dispatch.node_id, dispatch.task_id, worker=W1).run
    last_seen = utcnow()
    _beat(database, last_seen)

    result = _check(scheduler, last_seen + timedelta(seconds=300))

    error = result.marked[0].error
    for index in range(5):
        assert f"node 'n{index}' was claimed by worker {W1_NAME}, which has sent no heartbeat for 300s" in error
    assert "node 'n5'" not in error
    assert error.endswith("; and 2 more nodes on lost workers")
    assert len(result.marked[0].lost_nodes) == 7
    assert {trace["status"] for i in range(7) for trace in _traces(database, execution_id, f"n{i}")} == {"lost"}


def test_node_without_worker_waits_for_deadline(database: Database, registry: AgentRegistry) -> None:
    scheduler, execution_id, _ = _b_running_on_w1(database, registry, worker=None)
    deadline = as_utc(_execution(database, execution_id)["deadline_at"])

    assert _check(scheduler, deadline - timedelta(seconds=1)).marked == ()
    result = _check(scheduler, deadline + timedelta(seconds=1))
    assert result.marked[0].error.endswith("nodes still running: b (worker unknown)")
    assert result.marked[0].lost_nodes == ()


# -- what is left alone --------------------------------------------------------


def test_fresh_heartbeat_and_future_deadline_untouched(database: Database, registry: AgentRegistry) -> None:
    scheduler, execution_id, _ = _b_running_on_w1(database, registry)
    pending_id = Scheduler(database, registry).create_execution(_dag(registry), {}, default_execution_timeout_seconds=TIMEOUT)[0]
    moment = utcnow() + timedelta(seconds=TIMEOUT - 10)
    _beat(database, moment - timedelta(seconds=5))

    result = _check(scheduler, moment)

    assert result.marked == ()
    assert result.checked == 2
    assert result.errors == 0
    assert _execution(database, execution_id)["status"] == "running"
    assert _execution(database, pending_id)["status"] == "pending"
    assert _traces(database, execution_id, "b")[-1]["status"] == "running"


def test_finished_executions_never_touched(database: Database, registry: AgentRegistry) -> None:
    finished = {}
    for status in ("completed", "failed", "cancelled"):
        scheduler, execution_id, _ = _b_running_on_w1(database, registry)
        _update(database, dag_executions, dag_executions.c.execution_id == execution_id,
                status=status, error=f"left as {status}", completed_at=utcnow())
        finished[execution_id] = status
    moment = utcnow() + timedelta(days=2)

    result = _check(scheduler, moment)

    assert result.marked == ()
    assert result.checked == 0
    for execution_id, status in finished.items():
        row = _execution(database, execution_id)
        assert row["status"] == status
        assert row["error"] == f"left as {status}"
        assert _traces(database, execution_id, "b")[-1]["status"] == "running"


def test_cancelled_execution_not_marked(database: Database, registry: AgentRegistry) -> None:
    scheduler, execution_id, _ = _b_running_on_w1(database, registry)
    cancel_execution(scheduler, execution_id)

    assert _check(scheduler, utcnow() + timedelta(days=2)).marked == ()
    assert _execution(database, execution_id)["error"] == "cancelled by request"


def test_marking_checks_again_under_lock(database: Database, registry: AgentRegistry,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    # The candidate read saw a stale heartbeat; the worker beat again before
    # the lock was taken, so nothing is marked.
    scheduler, execution_id, _ = _b_running_on_w1(database, registry)
    moment = utcnow() + timedelta(seconds=300)
    _beat(database, moment)
    monkeypatch.setattr(stuck, "_read_candidates", lambda *args: (1, [execution_id]))

    result = _check(scheduler, moment)

    assert result.marked == ()
    assert _execution(database, execution_id)["status"] == "running"


def test_check_rejects_naive_now(database: Database, registry: AgentRegistry) -> None:
    scheduler = Scheduler(database, registry)
    with pytest.raises(ValueError, match="has no time zone"):
        detect_stuck_executions(scheduler, worker_lost_after_seconds=LOST_AFTER, now=datetime(2026, 1, 1))


# -- after marking -------------------------------------------------------------


def test_marked_execution_resumes_to_completion(database: Database, registry: AgentRegistry) -> None:
    dag = _dag(registry)
    scheduler, clean_id, follow_up = _start(database, registry, dag)
    _drain(scheduler, follow_up)
    clean = finalize_execution(database, clean_id)

    scheduler, execution_id, _ = _b_running_on_w1(database, registry, dag)
    _beat(database, utcnow() - timedelta(seconds=300))
    old_deadline = as_utc(_execution(database, execution_id)["deadline_at"])
    assert len(_check(scheduler, utcnow()).marked) == 1

    report, follow_up = resume_execution(scheduler, execution_id, default_execution_timeout_seconds=3600.0)
    resumed_at = utcnow()

    assert report.nodes_skipped == ["a"]
    assert report.nodes_remaining == ["b", "c"]
    row = _execution(database, execution_id)
    assert row["status"] == "pending"
    assert row["error"] is None
    assert row["stop_reason"] is None
    new_deadline = as_utc(row["deadline_at"])
    assert new_deadline > old_deadline
    assert abs((new_deadline - resumed_at).total_seconds() - 3600) < 60
    assert [trace["status"] for trace in _traces(database, execution_id, "b")] == ["lost"]

    assert _drain(scheduler, follow_up).finalize is True
    result = finalize_execution(database, execution_id)
    assert result.status == "completed"
    assert result.chain_valid is True
    assert result.provenance_chain_hash == clean.provenance_chain_hash


def test_late_result_after_marking_queues_nothing(database: Database, registry: AgentRegistry) -> None:
    # The worker was only slow: its result arrives after the check marked the execution.
    scheduler, execution_id, claim_b = _b_running_on_w1(database, registry)
    _beat(database, utcnow() - timedelta(seconds=300))
    assert len(_check(scheduler, utcnow()).marked) == 1

    late = _run(scheduler, claim_b)

    assert late.dispatches == []
    assert _node(database, execution_id, "b")["status"] == "completed"
    child = _node(database, execution_id, "c")
    assert child["status"] == "skipped"
    assert child["error"] == "not run: the worker of node 'b' was lost"
    assert finalize_execution(database, execution_id).changed is False
    assert _execution(database, execution_id)["status"] == "failed"

    report, _ = resume_execution(scheduler, execution_id)
    assert report.nodes_skipped == ["a", "b"]
    assert report.nodes_remaining == ["c"]


def test_one_error_line_and_metric_per_execution(database: Database, registry: AgentRegistry,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    dag = _dag(registry, "stuck-metrics")
    ids = [_b_running_on_w1(database, registry, dag)[1] for _ in range(2)]
    scheduler = Scheduler(database, registry)
    _beat(database, utcnow() - timedelta(seconds=300))
    labels = {"dag_id": "stuck-metrics", "status": "failed"}
    before = REGISTRY.get_sample_value("gl_orchestrator_dag_executions_total", labels) or 0.0

    with caplog.at_level(logging.INFO, logger="orchestrator.stuck"):
        result = _check(scheduler, utcnow())

    assert sorted(marked.execution_id for marked in result.marked) == sorted(ids)
    errors = [record.getMessage() for record in caplog.records if record.levelno == logging.ERROR]
    assert len(errors) == 2
    for execution_id in ids:
        line = next(message for message in errors if f"execution_id={execution_id}" in message)
        assert line.startswith("stuck execution marked failed")
        assert "dag_id=stuck-metrics" in line
        assert "lost_nodes=b" in line
    assert REGISTRY.get_sample_value("gl_orchestrator_dag_executions_total", labels) == before + 2
    assert any("stuck execution check done checked=2 marked=2 errors=0" in r.getMessage() for r in caplog.records)


# -- heartbeat storage and the worker thread -----------------------------------


def test_heartbeat_upsert_and_remove(database: Database) -> None:
    first = datetime(2026, 1, 31, 12, 0, tzinfo=timezone.utc)
    record_heartbeat(database, "w9@h", started_at=first, now=first)
    record_heartbeat(database, "w9@h", started_at=first, now=first + timedelta(seconds=15))
    record_heartbeat(database, "w8@h", started_at=first, now=first)

    with database.connect() as conn:
        beats = read_heartbeats(conn)
    assert sorted(beats) == ["w8@h", "w9@h"]
    assert beats["w9@h"].last_seen_at == first + timedelta(seconds=15)
    assert beats["w9@h"].started_at == first

    restarted = first + timedelta(minutes=5)
    record_heartbeat(database, "w9@h", started_at=restarted, now=restarted)
    with database.connect() as conn:
        assert read_heartbeats(conn)["w9@h"].started_at == restarted

    assert remove_heartbeat(database, "w9@h") is True
    assert remove_heartbeat(database, "w9@h") is False
    with database.connect() as conn:
        assert sorted(read_heartbeats(conn)) == ["w8@h"]


def test_worker_name_parsed_from_claim() -> None:
    assert worker_name_of(W1) == W1_NAME
    assert worker_name_of("celery@embedded-host pid=5 host=embedded-host") == "celery@embedded-host"
    assert worker_name_of("no-pid-recorded") == "no-pid-recorded"
    assert worker_name_of(None) is None
    assert worker_name_of("") is None


def _wait_for(check: Any, timeout: float, awaited: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {awaited}")


def test_heartbeat_signals_start_and_stop_thread(database: Database) -> None:
    runtime = SimpleNamespace(db=database, settings=SimpleNamespace(heartbeat_interval_seconds=0.05))
    consumer = SimpleNamespace(app=SimpleNamespace(gl_runtime=runtime), hostname="w-signal@host")

    def seen() -> datetime | None:
        with database.connect() as conn:
            beat = read_heartbeats(conn).get("w-signal@host")
        return beat.last_seen_at if beat else None

    heartbeat._start(sender=consumer)
    try:
        first = _wait_for(seen, 10, "the first heartbeat")
        later = _wait_for(lambda: (value := seen()) is not None and value > first and value, 10, "a second heartbeat")
        assert later > first
        with database.connect() as conn:
            assert read_heartbeats(conn)["w-signal@host"].started_at == as_utc(heartbeat.PROCESS_STARTED_AT)
    finally:
        heartbeat._stop(sender=SimpleNamespace(hostname="w-signal@host"))

    assert seen() is None
    assert "w-signal@host" not in heartbeat._threads


def test_heartbeat_ignores_foreign_app(database: Database) -> None:
    heartbeat._start(sender=SimpleNamespace(app=SimpleNamespace(), hostname="other@host"))
    assert "other@host" not in heartbeat._threads
    heartbeat._stop(sender=SimpleNamespace(hostname="other@host"))


def test_heartbeat_failure_logged_and_retried(caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    # No migrated tables: every write fails, and the thread keeps going.
    broken = Database(f"sqlite:///{tmp_path / 'empty.db'}")
    thread = heartbeat.HeartbeatThread(broken, "w-broken@host", 0.01, utcnow())
    try:
        with caplog.at_level(logging.WARNING, logger="workers.heartbeat"):
            thread.beat()
            thread.beat()
        assert thread.failures == 2
        warnings = [record.getMessage() for record in caplog.records]
        assert len(warnings) == 1
        assert warnings[0].startswith("worker heartbeat failed, retrying in 0.01s worker=w-broken@host failures=1")
    finally:
        broken.dispose()


EMBEDDED_AGENTS = '''
import sqlite3
import time

from orchestrator.agents import agent


@agent("probe.heartbeats", version="1.0.0")
def heartbeats(inputs, params):
    """Return the workers that have a heartbeat row, waiting up to 10 s for the first one."""
    deadline = time.monotonic() + 10
    while True:
        with sqlite3.connect(params["database"]) as conn:
            workers = sorted(row[0] for row in conn.execute("SELECT worker FROM worker_heartbeats"))
        if workers or time.monotonic() > deadline:
            return workers
        time.sleep(0.05)
'''


def test_embedded_worker_sends_heartbeats(tmp_path: Path) -> None:
    home = tmp_path / "home"
    database_file = home / "orchestrator.db"
    (tmp_path / "agents.py").write_text(EMBEDDED_AGENTS, encoding="utf-8")
    dag_file = tmp_path / "dag.json"
    dag_file.write_text(json.dumps({"dag_id": "probe", "nodes": {
        "probe": {"agent_id": "probe.heartbeats", "params": {"database": str(database_file)}},
    }}), encoding="utf-8")
    env = {key: value for key, value in os.environ.items() if not key.startswith("GL_ORCHESTRATOR_")}
    env["GL_ORCHESTRATOR_HOME"] = str(home)

    result = subprocess.run([sys.executable, "-m", "orchestrator_cli.main", "run", str(dag_file), "--json"],
                            env=env, cwd=REPO, capture_output=True, text=True, timeout=120, check=False)

    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["outputs"]["probe"] == [f"celery@embedded-{socket.gethostname()}"]
    # A clean stop of the embedded worker deletes its row.
    database = Database(f"sqlite:///{database_file}")
    try:
        with database.connect() as conn:
            assert read_heartbeats(conn) == {}
    finally:
        database.dispose()


# -- settings, beat schedule and CLI -------------------------------------------


def test_settings_defaults() -> None:
    settings = load_settings({})
    assert settings.execution_timeout_seconds == 86400.0
    assert settings.heartbeat_interval_seconds == 15.0
    assert settings.worker_lost_after_seconds == 120.0
    assert settings.stuck_check_interval_seconds == 60.0


def test_settings_read_from_environment() -> None:
    settings = load_settings({
        "GL_ORCHESTRATOR_EXECUTION_TIMEOUT_SECONDS": "0",
        "GL_ORCHESTRATOR_HEARTBEAT_INTERVAL_SECONDS": "1",
        "GL_ORCHESTRATOR_WORKER_LOST_AFTER_SECONDS": "3",
        "GL_ORCHESTRATOR_STUCK_CHECK_INTERVAL_SECONDS": "0.5",
    })
    assert settings.execution_timeout_seconds == 0.0
    assert settings.heartbeat_interval_seconds == 1.0
    assert settings.worker_lost_after_seconds == 3.0
    assert settings.stuck_check_interval_seconds == 0.5


@pytest.mark.parametrize(("env", "message"), [
    ({"GL_ORCHESTRATOR_EXECUTION_TIMEOUT_SECONDS": "0.5"}, "must be 0 (no deadline) or from 1 to 2592000 seconds"),
    ({"GL_ORCHESTRATOR_EXECUTION_TIMEOUT_SECONDS": "2592001"}, "must be 0 (no deadline) or from 1 to 2592000 seconds"),
    ({"GL_ORCHESTRATOR_EXECUTION_TIMEOUT_SECONDS": "-1"}, "must be at least 0"),
    ({"GL_ORCHESTRATOR_HEARTBEAT_INTERVAL_SECONDS": "0"}, "HEARTBEAT_INTERVAL_SECONDS='0' must be greater than 0"),
    ({"GL_ORCHESTRATOR_STUCK_CHECK_INTERVAL_SECONDS": "never"}, "STUCK_CHECK_INTERVAL_SECONDS='never' is not a number"),
    ({"GL_ORCHESTRATOR_WORKER_LOST_AFTER_SECONDS": "15"},
     "WORKER_LOST_AFTER_SECONDS=15 must be greater than GL_ORCHESTRATOR_HEARTBEAT_INTERVAL_SECONDS=15"),
])
def test_settings_rejected(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(env)
    assert message in str(caught.value)


def test_beat_schedules_stuck_check(tmp_path: Path, sqlite_url: str) -> None:
    settings = load_settings({
        "GL_ORCHESTRATOR_HOME": str(tmp_path),
        "GL_ORCHESTRATOR_DATABASE_URL": sqlite_url,
        "GL_ORCHESTRATOR_BROKER_URL": "memory://",
        "GL_ORCHESTRATOR_STUCK_CHECK_INTERVAL_SECONDS": "7",
    })
    app = create_celery_app(settings)
    try:
        entry = app.conf.beat_schedule[STUCK_SCHEDULE_ENTRY]
        assert STUCK_TASK == "gl_orchestrator.detect_stuck_executions"
        assert entry["task"] == STUCK_TASK
        assert entry["schedule"] == 7.0
        assert entry["options"]["expires"] == 7.0
        outcome = app.tasks[STUCK_TASK].apply().get()
        assert outcome["status"] == "ok"
        assert outcome["checked"] == 0
        assert outcome["marked"] == []
    finally:
        app.close()


def _cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("GL_ORCHESTRATOR_")}
    env["GL_ORCHESTRATOR_HOME"] = str(home)
    return subprocess.run([sys.executable, "-m", "orchestrator_cli.main", *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=60, check=False)


def test_stuck_check_cli_marks_and_prints(tmp_path: Path, registry: AgentRegistry) -> None:
    home = tmp_path / "home"
    url = f"sqlite:///{home / 'orchestrator.db'}"
    upgrade_schema(url)
    database = Database(url)
    try:
        empty = _cli(home, "stuck", "check")
        assert empty.returncode == 0, empty.stderr
        assert empty.stdout.strip() == "no stuck executions among 0 pending or running"

        _, execution_id, _ = _b_running_on_w1(database, registry)
        hour_ago = utcnow() - timedelta(hours=1)
        _update(database, execution_nodes, execution_nodes.c.execution_id == execution_id, started_at=hour_ago)

        marked = _cli(home, "stuck", "check")
        assert marked.returncode == 0, marked.stderr
        lines = marked.stdout.strip().splitlines()
        assert lines[0].startswith(
            f"execution {execution_id} of DAG 'stuck-dag' marked failed (was running): node 'b' was claimed by "
            f"worker {W1_NAME}, which has no heartbeat on record; the node has been running for 36")
        assert lines[1] == ("1 of 1 pending or running executions marked failed; "
                            "resume them with `orchestrator resume EXECUTION_ID`")
        assert _execution(database, execution_id)["status"] == "failed"

        again = _cli(home, "stuck", "check", "--json")
        assert again.returncode == 0, again.stderr
        body = json.loads(again.stdout)
        assert body["checked"] == 0
        assert body["marked"] == []
        assert body["errors"] == 0
    finally:
        database.dispose()


# -- GET /executions -----------------------------------------------------------

TOKEN = "stuck-test-token"


def test_list_shows_age_and_running_nodes(database: Database, registry: AgentRegistry, tmp_path: Path,
                                          unique_queue: str) -> None:
    settings = Settings(
        home=tmp_path, database_url=database.url, broker_url="memory://", result_backend=None, embedded=False,
        api_token_hashes=frozenset({hashlib.sha256(TOKEN.encode()).hexdigest()}), default_queue=unique_queue,
    )
    celery_app = create_celery_app(settings, registry=registry)
    client = create_app(settings, celery_app=celery_app, registry=registry).test_client()
    headers = {"Authorization": f"Bearer {TOKEN}"}
    try:
        _, running_id, claim_b = _b_running_on_w1(database, registry)
        pending_id = Scheduler(database, registry).create_execution(_dag(registry), {})[0]
        ten_minutes_ago = utcnow() - timedelta(minutes=10)
        _update(database, dag_executions, dag_executions.c.execution_id == running_id, started_at=ten_minutes_ago)

        response = client.get("/api/v1/orchestrator/executions?status=running", headers=headers)
        assert response.status_code == 200, response.get_data(as_text=True)
        items = response.get_json()["items"]
        assert [item["execution_id"] for item in items] == [running_id]
        item = items[0]
        assert 600 <= item["age_seconds"] < 660
        node = _node(database, running_id, "b")
        started = as_utc(node["started_at"]).isoformat(timespec="microseconds").replace("+00:00", "Z")
        assert item["running_nodes"] == [{"node_id": "b", "worker": W1, "started_at": started}]

        everything = client.get("/api/v1/orchestrator/executions", headers=headers).get_json()["items"]
        pending = next(entry for entry in everything if entry["execution_id"] == pending_id)
        assert pending["started_at"] is None
        assert 0 <= pending["age_seconds"] < 60
        assert pending["running_nodes"] == []
    finally:
        runtime_db = celery_app.gl_runtime.db  # type: ignore[attr-defined]
        runtime_db.dispose()
        celery_app.close()


def test_openapi_lists_new_fields() -> None:
    schemas = openapi_document()["components"]["schemas"]
    assert schemas["ExecutionPage"]["properties"]["items"]["items"] == {"$ref": "#/components/schemas/ExecutionListItem"}
    item = schemas["ExecutionListItem"]["allOf"][1]
    assert item["required"] == ["age_seconds", "running_nodes"]
    assert item["properties"]["running_nodes"]["items"] == {"$ref": "#/components/schemas/RunningNode"}
    assert schemas["RunningNode"]["required"] == ["node_id", "worker", "started_at"]
