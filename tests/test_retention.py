"""Checkpoint retention on SQLite and PostgreSQL, its settings, beat schedule and CLI.

Executions are run to the end by the scheduler, the way the node task does,
and then moved in time by setting ``completed_at``. The time-zone tests run
the retention pass in subprocesses whose ``TZ`` is set before Python starts.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import select, text, update

from orchestrator.agents import AgentRegistry
from orchestrator.dag import Dag, parse_dag
from orchestrator.database import Database
from orchestrator.errors import SettingsError
from orchestrator.finalizer import finalize_execution
from orchestrator.hashing import canonical_json
from orchestrator.models import dag_checkpoints, dag_executions
from orchestrator.provenance import NULL_HASH, verify_execution
from orchestrator.repository import register_dag
from orchestrator.retention import MAX_BATCH_SIZE, remove_expired_payloads
from orchestrator.scheduler import FollowUp, Prepared, Scheduler
from orchestrator.settings import load_settings

REPO = Path(__file__).resolve().parents[1]
WINDOW_HOURS = 168.0
REMOVAL_NOTE = "outputs removed by retention at "

DIAMOND = {
    "a": {"agent_id": "t.const", "params": {"value": {"rows": [1, 2, 3], "label": "fuel"}}},
    "b": {"agent_id": "t.add", "depends_on": ["a"], "input_mapping": {"a": "results.a.rows.0"}},
    "c": {"agent_id": "t.add", "depends_on": ["a"], "input_mapping": {"a": "results.a.rows.1"}},
    "d": {"agent_id": "t.add", "depends_on": ["b", "c"], "input_mapping": {"b": "results.b", "c": "results.c"}},
}


@pytest.fixture
def registry() -> AgentRegistry:
    agents = AgentRegistry()
    agents.register("t.const", "1.0.0", lambda inputs, params: params["value"])
    agents.register("t.add", "1.0.0", lambda inputs, params: sum(inputs.values()))
    return agents


@pytest.fixture
def dag(database: Database, registry: AgentRegistry) -> Dag:
    diamond = parse_dag({"dag_id": "retention-dag", "nodes": DIAMOND}, registry)
    register_dag(database, diamond, replace=True)
    return diamond


# -- helpers -------------------------------------------------------------------


def _run_nodes(scheduler: Scheduler, follow_up: FollowUp, limit: int | None = None) -> FollowUp:
    """Run dispatched nodes in order, at most ``limit`` of them; return the last follow-up."""
    pending = list(follow_up.dispatches)
    last = follow_up
    ran = 0
    while pending and (limit is None or ran < limit):
        dispatch = pending.pop(0)
        claim = scheduler.claim(dispatch.execution_id, dispatch.node_id, dispatch.task_id)
        assert claim.run, dispatch.node_id
        prepared = scheduler.prepare(claim)
        assert isinstance(prepared, Prepared)
        outputs = prepared.agent(prepared.inputs, prepared.params)
        last = scheduler.record_success(claim, prepared, canonical_json(outputs), outputs)
        pending.extend(last.dispatches)
        ran += 1
    return last


def _set_execution(db: Database, execution_id: str, **values: Any) -> None:
    # A Core statement, so SQLite stores datetimes in the format SQLAlchemy compares them in.
    with db.engine.begin() as conn:
        conn.execute(update(dag_executions).where(dag_executions.c.execution_id == execution_id).values(**values))


def _finished(db: Database, registry: AgentRegistry, dag: Dag, hours_ago: float, *, status: str = "completed",
              now: datetime | None = None) -> str:
    """Run the DAG to the end, then give the execution ``status`` and a ``completed_at`` ``hours_ago``."""
    scheduler = Scheduler(db, registry)
    execution_id, follow_up = scheduler.create_execution(dag, {})
    assert _run_nodes(scheduler, follow_up).finalize
    result = finalize_execution(db, execution_id)
    assert result.chain_valid is True
    completed_at = (now or datetime.now(timezone.utc)) - timedelta(hours=hours_ago)
    _set_execution(db, execution_id, status=status, completed_at=completed_at)
    return execution_id


def _unfinished(db: Database, registry: AgentRegistry, dag: Dag, status: str) -> str:
    """Start an execution, run its first node, then give it ``status`` and timestamps a year old.

    ``completed_at`` is set too, so only the status keeps retention away.
    """
    scheduler = Scheduler(db, registry)
    execution_id, follow_up = scheduler.create_execution(dag, {})
    _run_nodes(scheduler, follow_up, limit=1)
    year_ago = datetime.now(timezone.utc) - timedelta(days=365)
    _set_execution(db, execution_id, status=status, created_at=year_ago, started_at=year_ago, completed_at=year_ago)
    return execution_id


def _utc(value: datetime | None) -> datetime | None:
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=timezone.utc)


def _checkpoints(db: Database, execution_id: str) -> dict[str, dict[str, Any]]:
    """Return the checkpoints by node id; ``outputs_null`` is True only for SQL NULL, not for JSON null."""
    columns = dag_checkpoints.c
    with db.connect() as conn:
        rows = conn.execute(
            select(columns.node_id, columns.status, columns.output_hash, columns.attempt_count, columns.size_bytes,
                   columns.payload_removed_at, columns.outputs.is_(None).label("outputs_null"))
            .where(columns.execution_id == execution_id)
        ).mappings().all()
    checkpoints = {}
    for row in rows:
        checkpoint = dict(row)
        checkpoint["payload_removed_at"] = _utc(checkpoint["payload_removed_at"])
        checkpoint["outputs_null"] = bool(checkpoint["outputs_null"])
        checkpoints[row["node_id"]] = checkpoint
    return checkpoints


def _provenance(db: Database, execution_id: str) -> list[dict[str, Any]]:
    with db.connect() as conn:
        rows = conn.execute(text("SELECT * FROM execution_provenance WHERE execution_id = :e ORDER BY ordinal"),
                            {"e": execution_id}).mappings().all()
    return [dict(row) for row in rows]


def _assert_kept(db: Database, execution_id: str) -> None:
    for node_id, checkpoint in _checkpoints(db, execution_id).items():
        assert checkpoint["outputs_null"] is False, node_id
        assert checkpoint["payload_removed_at"] is None, node_id


def _assert_removed(db: Database, execution_id: str) -> None:
    for node_id, checkpoint in _checkpoints(db, execution_id).items():
        assert checkpoint["outputs_null"] is True, node_id
        assert checkpoint["payload_removed_at"] is not None, node_id


def _delete_count(status: str) -> float:
    value = REGISTRY.get_sample_value(
        "gl_orchestrator_checkpoint_operations_total", {"operation": "delete", "status": status}
    )
    return value or 0.0


# -- which executions lose their payloads -------------------------------------


def test_expired_execution_loses_payloads(database: Database, registry: AgentRegistry, dag: Dag) -> None:
    now = datetime.now(timezone.utc)
    execution_id = _finished(database, registry, dag, WINDOW_HOURS + 1, now=now)
    before = _checkpoints(database, execution_id)
    provenance_before = _provenance(database, execution_id)

    result = remove_expired_payloads(database, WINDOW_HOURS, now=now)

    after = _checkpoints(database, execution_id)
    assert result.checkpoints == 4
    assert result.executions == 1
    assert result.bytes_freed == sum(checkpoint["size_bytes"] for checkpoint in before.values())
    assert result.bytes_freed > 0
    assert result.errors == 0
    assert result.cutoff == now - timedelta(hours=WINDOW_HOURS)
    for node_id in DIAMOND:
        assert after[node_id]["outputs_null"] is True, node_id
        assert after[node_id]["payload_removed_at"] == now, node_id
        for column in ("output_hash", "status", "attempt_count", "size_bytes"):
            assert after[node_id][column] == before[node_id][column], (node_id, column)
    assert _provenance(database, execution_id) == provenance_before


def test_execution_inside_window_keeps_payloads(database: Database, registry: AgentRegistry, dag: Dag) -> None:
    now = datetime.now(timezone.utc)
    completed = _finished(database, registry, dag, WINDOW_HOURS - 0.01, now=now)
    failed = _finished(database, registry, dag, WINDOW_HOURS - 0.01, status="failed", now=now)

    result = remove_expired_payloads(database, WINDOW_HOURS, now=now)

    assert result.checkpoints == 0
    assert result.executions == 0
    _assert_kept(database, completed)
    _assert_kept(database, failed)


@pytest.mark.parametrize("status", ["completed", "failed", "cancelled"])
def test_every_terminal_status_expires(database: Database, registry: AgentRegistry, dag: Dag, status: str) -> None:
    execution_id = _finished(database, registry, dag, WINDOW_HOURS + 1, status=status)

    result = remove_expired_payloads(database, WINDOW_HOURS)

    assert result.checkpoints == 4
    _assert_removed(database, execution_id)


@pytest.mark.parametrize("status", ["pending", "running"])
def test_unfinished_execution_untouched(database: Database, registry: AgentRegistry, dag: Dag, status: str) -> None:
    execution_id = _unfinished(database, registry, dag, status)
    assert len(_checkpoints(database, execution_id)) == 1

    result = remove_expired_payloads(database, 0)

    assert result.checkpoints == 0
    _assert_kept(database, execution_id)


def test_finished_without_completed_at_untouched(database: Database, registry: AgentRegistry, dag: Dag) -> None:
    execution_id = _finished(database, registry, dag, WINDOW_HOURS + 1)
    _set_execution(database, execution_id, completed_at=None)

    result = remove_expired_payloads(database, 0)

    assert result.checkpoints == 0
    _assert_kept(database, execution_id)


def test_second_run_removes_nothing(database: Database, registry: AgentRegistry, dag: Dag) -> None:
    execution_id = _finished(database, registry, dag, WINDOW_HOURS + 1)
    first = remove_expired_payloads(database, WINDOW_HOURS)
    removed_at = {node_id: row["payload_removed_at"] for node_id, row in _checkpoints(database, execution_id).items()}

    second = remove_expired_payloads(database, WINDOW_HOURS)

    assert first.checkpoints == 4
    assert second.checkpoints == 0
    assert second.executions == 0
    assert second.bytes_freed == 0
    after = {node_id: row["payload_removed_at"] for node_id, row in _checkpoints(database, execution_id).items()}
    assert after == removed_at


def test_small_batches_count_each_execution_once(database: Database, registry: AgentRegistry, dag: Dag) -> None:
    execution_ids = [_finished(database, registry, dag, WINDOW_HOURS + 1) for _ in range(3)]
    kept = _finished(database, registry, dag, 1)

    # Three checkpoints per batch split every execution of four checkpoints.
    result = remove_expired_payloads(database, WINDOW_HOURS, batch_size=3)

    assert result.checkpoints == 12
    assert result.executions == 3
    for execution_id in execution_ids:
        _assert_removed(database, execution_id)
    _assert_kept(database, kept)


def test_concurrent_passes_remove_each_once(database: Database, registry: AgentRegistry, dag: Dag) -> None:
    execution_ids = [_finished(database, registry, dag, WINDOW_HOURS + 1) for _ in range(3)]
    results = []
    errors: list[BaseException] = []

    def one_pass() -> None:
        other = Database(database.url)
        try:
            results.append(remove_expired_payloads(other, WINDOW_HOURS, batch_size=1))
        except BaseException as exc:
            errors.append(exc)
        finally:
            other.dispose()

    threads = [threading.Thread(target=one_pass) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    assert errors == []
    assert len(results) == 2
    assert sum(result.checkpoints for result in results) == 12
    assert sum(result.errors for result in results) == 0
    for execution_id in execution_ids:
        _assert_removed(database, execution_id)


# -- verification after retention ---------------------------------------------


def test_retained_execution_still_verifies(database: Database, registry: AgentRegistry, dag: Dag) -> None:
    execution_id = _finished(database, registry, dag, WINDOW_HOURS + 1)
    before = verify_execution(database, execution_id)
    remove_expired_payloads(database, WINDOW_HOURS)

    report = verify_execution(database, execution_id)

    assert report.chain_valid is True
    assert report.provenance_chain_hash == before.provenance_chain_hash
    assert report.problems == []
    for node in report.nodes:
        assert node.valid, node.node_id
        assert node.reasons == [], node.node_id
        assert len(node.notes) == 1, node.node_id
        assert node.notes[0].startswith(REMOVAL_NOTE), node.notes[0]
        assert node.notes[0].endswith("Z; output_hash kept, not re-checked"), node.notes[0]
        assert node.to_dict()["notes"] == node.notes
    assert all(node.notes == [] for node in before.nodes)


def test_note_shows_removal_time_in_utc(database: Database, registry: AgentRegistry, dag: Dag) -> None:
    execution_id = _finished(database, registry, dag, WINDOW_HOURS + 1)
    moment = datetime(2031, 5, 6, 7, 8, 9, 123456, tzinfo=timezone(timedelta(hours=14)))

    remove_expired_payloads(database, WINDOW_HOURS, now=moment)

    note = verify_execution(database, execution_id).nodes[0].notes[0]
    assert note == f"{REMOVAL_NOTE}2031-05-05T17:08:09.123456Z; output_hash kept, not re-checked"


def test_tampered_retained_checkpoint_hash_detected(database: Database, registry: AgentRegistry, dag: Dag) -> None:
    execution_id = _finished(database, registry, dag, WINDOW_HOURS + 1)
    remove_expired_payloads(database, WINDOW_HOURS)
    forged = "f" * 64
    with database.engine.begin() as conn:
        conn.execute(text("UPDATE dag_checkpoints SET output_hash = :h WHERE execution_id = :e AND node_id = 'b'"),
                     {"h": forged, "e": execution_id})

    report = verify_execution(database, execution_id)

    node = next(node for node in report.nodes if node.node_id == "b")
    assert report.chain_valid is False
    assert node.valid is False
    assert any(reason.startswith(f"output hash differs: checkpoint {forged}") for reason in node.reasons), node.reasons


def test_tampered_retained_record_hash_detected(database: Database, registry: AgentRegistry, dag: Dag) -> None:
    execution_id = _finished(database, registry, dag, WINDOW_HOURS + 1)
    remove_expired_payloads(database, WINDOW_HOURS)
    forged = "f" * 64
    with database.engine.begin() as conn:
        for table in ("dag_checkpoints", "execution_provenance"):
            conn.execute(text(f"UPDATE {table} SET output_hash = :h WHERE execution_id = :e AND node_id = 'b'"),
                         {"h": forged, "e": execution_id})

    report = verify_execution(database, execution_id)

    node = next(node for node in report.nodes if node.node_id == "b")
    assert report.chain_valid is False
    assert node.valid is False
    assert any(reason.startswith("chain_hash altered: stored ") for reason in node.reasons), node.reasons


def test_outputs_restored_after_retention_rechecked(database: Database, registry: AgentRegistry, dag: Dag) -> None:
    execution_id = _finished(database, registry, dag, WINDOW_HOURS + 1)
    remove_expired_payloads(database, WINDOW_HOURS)
    with database.engine.begin() as conn:
        conn.execute(text("UPDATE dag_checkpoints SET outputs = :o WHERE execution_id = :e AND node_id = 'd'"),
                     {"o": "999", "e": execution_id})

    report = verify_execution(database, execution_id)

    node = next(node for node in report.nodes if node.node_id == "d")
    assert node.valid is False
    assert node.notes == []
    assert any(reason.startswith("output altered: ") for reason in node.reasons), node.reasons


def test_retained_null_output_rechecked(database: Database, registry: AgentRegistry) -> None:
    null_dag = parse_dag({"dag_id": "null-dag", "nodes": {"n": {"agent_id": "t.const", "params": {"value": None}}}},
                         registry)
    register_dag(database, null_dag, replace=True)
    execution_id = _finished(database, registry, null_dag, WINDOW_HOURS + 1)
    remove_expired_payloads(database, WINDOW_HOURS)

    node = verify_execution(database, execution_id).nodes[0]

    assert node.output_hash == NULL_HASH
    assert node.valid is True
    assert node.notes == []


# -- errors, metrics, logs, arguments ------------------------------------------


def _reject_updates_of(database: Database, execution_id: str) -> None:
    """Install a trigger that makes the database reject any update of this execution's checkpoints."""
    with database.engine.begin() as conn:
        if database.is_sqlite:
            conn.execute(text(
                "CREATE TRIGGER reject_checkpoint_update BEFORE UPDATE ON dag_checkpoints "
                f"WHEN OLD.execution_id = '{execution_id}' "
                "BEGIN SELECT RAISE(ABORT, 'update rejected by the test trigger'); END"
            ))
        else:
            conn.execute(text(
                "CREATE FUNCTION reject_checkpoint_update() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN RAISE EXCEPTION 'update rejected by the test trigger'; END $$"
            ))
            conn.execute(text(
                "CREATE TRIGGER reject_checkpoint_update BEFORE UPDATE ON dag_checkpoints FOR EACH ROW "
                f"WHEN (OLD.execution_id = '{execution_id}') EXECUTE FUNCTION reject_checkpoint_update()"
            ))


def test_failing_execution_isolated_and_counted(
    database: Database, registry: AgentRegistry, dag: Dag, caplog: pytest.LogCaptureFixture
) -> None:
    execution_ids = [_finished(database, registry, dag, WINDOW_HOURS + 1) for _ in range(3)]
    poisoned = sorted(execution_ids)[1]
    _reject_updates_of(database, poisoned)
    errors_before = _delete_count("error")

    with caplog.at_level(logging.INFO, logger="orchestrator.retention"):
        result = remove_expired_payloads(database, WINDOW_HOURS)

    assert result.checkpoints == 8
    assert result.executions == 2
    assert result.errors == 4
    assert _delete_count("error") - errors_before == 4
    _assert_kept(database, poisoned)
    for execution_id in execution_ids:
        if execution_id != poisoned:
            _assert_removed(database, execution_id)
    failures = [record for record in caplog.records if record.levelno == logging.ERROR]
    assert len(failures) == 1
    assert f"execution_id={poisoned}" in failures[0].getMessage()
    assert failures[0].exc_info is not None


def test_metrics_count_removed_checkpoints(database: Database, registry: AgentRegistry, dag: Dag) -> None:
    _finished(database, registry, dag, WINDOW_HOURS + 1)
    before = _delete_count("success")

    remove_expired_payloads(database, WINDOW_HOURS)

    assert _delete_count("success") - before == 4


def test_one_info_line_per_run(
    database: Database, registry: AgentRegistry, dag: Dag, caplog: pytest.LogCaptureFixture
) -> None:
    _finished(database, registry, dag, WINDOW_HOURS + 1)

    with caplog.at_level(logging.INFO, logger="orchestrator.retention"):
        remove_expired_payloads(database, WINDOW_HOURS)

    lines = [record.getMessage() for record in caplog.records if record.name == "orchestrator.retention"]
    assert len(lines) == 1
    assert lines[0].startswith("checkpoint payloads removed count=4 executions=1 retention_hours=168 ")


def test_huge_window_removes_nothing(database: Database, registry: AgentRegistry, dag: Dag) -> None:
    execution_id = _finished(database, registry, dag, WINDOW_HOURS + 1)

    result = remove_expired_payloads(database, 1e15)

    assert result.cutoff is None
    assert result.checkpoints == 0
    _assert_kept(database, execution_id)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"retention_hours": -1.0}, "must be a finite number of hours"),
        ({"retention_hours": float("nan")}, "must be a finite number of hours"),
        ({"retention_hours": float("inf")}, "must be a finite number of hours"),
        ({"retention_hours": 1.0, "batch_size": 0}, "batch_size=0 must be between 1"),
        ({"retention_hours": 1.0, "batch_size": MAX_BATCH_SIZE + 1}, "must be between 1"),
        ({"retention_hours": 1.0, "now": datetime(2030, 1, 1)}, "has no time zone"),
    ],
)
def test_invalid_arguments_rejected(sqlite_url: str, arguments: dict[str, Any], message: str) -> None:
    db = Database(sqlite_url)
    try:
        with pytest.raises(ValueError, match=message):
            remove_expired_payloads(db, **arguments)
    finally:
        db.dispose()


# -- time zones ------------------------------------------------------------------

# Runs one pass in a fresh interpreter whose TZ is set in its environment.
# time.tzset() makes the time module read TZ again, and tm_gmtoff proves that
# the zone took effect.
_TZ_PASS = """
import json, sys, time
time.tzset()
from orchestrator.database import Database
from orchestrator.retention import remove_expired_payloads
db = Database(sys.argv[1])
result = remove_expired_payloads(db, float(sys.argv[2]))
db.dispose()
print(json.dumps({"utc_offset_seconds": time.localtime().tm_gmtoff, "result": result.to_dict()}))
"""


def _pass_in_time_zone(database_url: str, time_zone: str) -> dict[str, Any]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("GL_ORCHESTRATOR_")}
    env["TZ"] = time_zone
    completed = subprocess.run(
        [sys.executable, "-c", _TZ_PASS, database_url, str(WINDOW_HOURS)],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
    )
    assert completed.returncode == 0, completed.stderr
    output: dict[str, Any] = json.loads(completed.stdout)
    return output


@pytest.mark.parametrize(
    ("time_zone", "utc_offset_hours"),
    [("Pacific/Kiritimati", 14), ("Pacific/Pago_Pago", -11)],
)
def test_window_independent_of_server_time_zone(
    database: Database, registry: AgentRegistry, dag: Dag, time_zone: str, utc_offset_hours: int
) -> None:
    # A pass that took naive local time for UTC would remove both executions
    # at UTC+14 and neither at UTC-11.
    older = _finished(database, registry, dag, WINDOW_HOURS + 0.5)
    newer = _finished(database, registry, dag, WINDOW_HOURS - 0.5)

    output = _pass_in_time_zone(database.url, time_zone)

    assert output["utc_offset_seconds"] == utc_offset_hours * 3600
    assert output["result"]["checkpoints"] == 4
    assert output["result"]["executions"] == 1
    _assert_removed(database, older)
    _assert_kept(database, newer)


def test_both_time_zones_share_one_database(database: Database, registry: AgentRegistry, dag: Dag) -> None:
    removed: list[str] = []
    kept: list[str] = []
    for time_zone in ("Pacific/Kiritimati", "Pacific/Pago_Pago"):
        removed.append(_finished(database, registry, dag, WINDOW_HOURS + 0.5))
        kept.append(_finished(database, registry, dag, WINDOW_HOURS - 0.5))

        output = _pass_in_time_zone(database.url, time_zone)

        assert output["result"]["checkpoints"] == 4, time_zone
        for execution_id in removed:
            _assert_removed(database, execution_id)
        for execution_id in kept:
            _assert_kept(database, execution_id)


# -- settings, beat schedule, CLI -----------------------------------------------


def test_interval_setting_default_and_value() -> None:
    assert load_settings({}).retention_interval_seconds == 3600.0
    assert load_settings({"GL_ORCHESTRATOR_RETENTION_INTERVAL_SECONDS": "1.5"}).retention_interval_seconds == 1.5


@pytest.mark.parametrize("raw", ["0", "-5", "soon", "nan", "inf"])
def test_interval_setting_rejects_invalid(raw: str) -> None:
    with pytest.raises(SettingsError, match="GL_ORCHESTRATOR_RETENTION_INTERVAL_SECONDS"):
        load_settings({"GL_ORCHESTRATOR_RETENTION_INTERVAL_SECONDS": raw})


@pytest.mark.parametrize("raw", ["-1", "nan", "inf"])
def test_retention_hours_rejects_invalid(raw: str) -> None:
    with pytest.raises(SettingsError, match="GL_ORCHESTRATOR_CHECKPOINT_RETENTION_HOURS"):
        load_settings({"GL_ORCHESTRATOR_CHECKPOINT_RETENTION_HOURS": raw})


def test_beat_schedule_sends_retention_task(tmp_path: Path) -> None:
    from workers.app import RETENTION_SCHEDULE_ENTRY, RETENTION_TASK, create_celery_app

    settings = load_settings({
        "GL_ORCHESTRATOR_HOME": str(tmp_path),
        "GL_ORCHESTRATOR_RETENTION_INTERVAL_SECONDS": "90",
    })
    app = create_celery_app(settings)

    entry = app.conf.beat_schedule[RETENTION_SCHEDULE_ENTRY]
    assert RETENTION_TASK == "gl_orchestrator.remove_expired_payloads"
    assert entry["task"] == RETENTION_TASK
    assert entry["schedule"] == 90.0
    assert entry["options"]["expires"] == 90.0
    assert RETENTION_TASK in app.tasks


def _cli(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("GL_ORCHESTRATOR_")}
    env["GL_ORCHESTRATOR_DATABASE_URL"] = database_url
    return subprocess.run(
        [sys.executable, "-m", "orchestrator_cli.main", "retention", "run", *args],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
    )


def test_cli_run_prints_counts(database: Database, registry: AgentRegistry, dag: Dag) -> None:
    execution_id = _finished(database, registry, dag, WINDOW_HOURS + 1)

    first = _cli(database.url, "--json")
    second = _cli(database.url)

    assert first.returncode == 0, first.stderr
    counts = json.loads(first.stdout)
    assert counts["checkpoints"] == 4
    assert counts["executions"] == 1
    assert counts["errors"] == 0
    assert counts["retention_hours"] == WINDOW_HOURS
    assert "checkpoint payloads removed count=4 executions=1" in first.stderr
    _assert_removed(database, execution_id)
    assert second.returncode == 0, second.stderr
    assert second.stdout.startswith("no checkpoint outputs to remove: no execution that finished before ")


def test_cli_hours_option_overrides_setting(database: Database, registry: AgentRegistry, dag: Dag) -> None:
    execution_id = _finished(database, registry, dag, 2)

    result = _cli(database.url, "--hours", "1")

    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("removed the outputs of 4 checkpoints of 1 executions, ")
    _assert_removed(database, execution_id)


def test_cli_reports_missing_tables(tmp_path: Path) -> None:
    result = _cli(f"sqlite:///{tmp_path / 'empty.db'}")

    assert result.returncode == 1
    assert "checkpoint retention failed: no such table" in result.stderr
    assert "orchestrator db upgrade" in result.stderr



def test_checkpoint_listing_after_retention(database: Database, registry: AgentRegistry, dag: Dag) -> None:
    from orchestrator import repository

    execution_id = _finished(database, registry, dag, hours_ago=200)
    remove_expired_payloads(database, 168)
    checkpoints = repository.get_checkpoints(database, execution_id)
    assert checkpoints
    assert all(checkpoint["verified"] is None for checkpoint in checkpoints)
    assert all(checkpoint["payload_removed_at"] for checkpoint in checkpoints)
    assert repository.execution_outputs(database, execution_id, [c["node_id"] for c in checkpoints]) == {}
