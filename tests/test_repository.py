"""Tests of orchestrator.repository on migrated SQLite and PostgreSQL databases.

Executions are created by the real Scheduler. Where a test needs finished
nodes, ``run_queued_nodes`` plays the worker's part in this process: it claims,
prepares and records each queued node through the Scheduler, without Celery.
"""

from __future__ import annotations

import base64
import json
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import select, update

from orchestrator import repository
from orchestrator.agents import AgentRegistry
from orchestrator.dag import Dag, parse_dag
from orchestrator.database import Database
from orchestrator.errors import (
    CheckpointIntegrityError,
    DagConflictError,
    DagNotFoundError,
    DagRetiredError,
    ExecutionNotFoundError,
)
from orchestrator.finalizer import finalize_execution
from orchestrator.hashing import canonical_json, output_hash
from orchestrator.models import CheckpointRow, ExecutionNodeRow, ExecutionRow
from orchestrator.scheduler import Scheduler

EXECUTIONS = ExecutionRow.__table__
NODES = ExecutionNodeRow.__table__
CHECKPOINTS = CheckpointRow.__table__
BASE_TIME = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=timezone.utc)


def make_registry() -> AgentRegistry:
    registry = AgentRegistry()
    registry.register("test.source", "1.0.0", lambda inputs, params: {"value": inputs["x"]})
    registry.register("test.double", "1.0.0", lambda inputs, params: {"value": inputs["value"] * 2})
    return registry


def chain_document(dag_id: str, name: str = "Chain") -> dict[str, Any]:
    return {
        "dag_id": dag_id,
        "name": name,
        "nodes": {
            "load": {"agent_id": "test.source", "input_mapping": {"x": "input.x"}},
            "double": {"agent_id": "test.double", "depends_on": ["load"],
                       "input_mapping": {"value": "results.load.value"}},
        },
    }


def run_queued_nodes(scheduler: Scheduler, db: Database, execution_id: str) -> None:
    """Run every queued node of the execution in this process until it is finalized."""
    while True:
        with db.connect() as conn:
            queued = conn.execute(
                select(NODES.c.node_id, NODES.c.task_id)
                .where(NODES.c.execution_id == execution_id, NODES.c.status == "queued")
                .order_by(NODES.c.ordinal)
            ).all()
        if not queued:
            break
        for node_id, task_id in queued:
            claim = scheduler.claim(execution_id, node_id, task_id, worker="test")
            prepared = scheduler.prepare(claim)
            assert not isinstance(prepared, str)
            outputs = prepared.agent(prepared.inputs, prepared.params)
            follow_up = scheduler.record_success(claim, prepared, canonical_json(outputs), outputs)
            if follow_up.finalize:
                finalize_execution(db, execution_id)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> str:
    """A migrated database of each kind. The PostgreSQL case skips when the server is unreachable."""
    return str(request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "postgres_url"))


@pytest.fixture
def db(database_url: str):
    database = Database(database_url)
    yield database
    database.dispose()


@pytest.fixture
def registry() -> AgentRegistry:
    return make_registry()


@pytest.fixture
def scheduler(db: Database, registry: AgentRegistry) -> Scheduler:
    return Scheduler(db, registry)


def register(db: Database, registry: AgentRegistry, dag_id: str) -> Dag:
    dag = parse_dag(chain_document(dag_id), registry)
    repository.register_dag(db, dag, replace=False)
    return dag


def set_execution(db: Database, execution_id: str, **values: Any) -> None:
    with db.engine.begin() as conn:
        conn.execute(update(EXECUTIONS).where(EXECUTIONS.c.execution_id == execution_id).values(**values))


# -- since ------------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("45s", timedelta(seconds=45)),
    ("30m", timedelta(minutes=30)),
    ("24h", timedelta(hours=24)),
    ("7d", timedelta(days=7)),
    ("2w", timedelta(weeks=2)),
    (" 24h ", timedelta(hours=24)),
])
def test_parse_since_duration(text: str, expected: timedelta) -> None:
    assert repository.parse_since(text) == expected


@pytest.mark.parametrize(("text", "expected"), [
    ("2026-01-31T00:00:00Z", datetime(2026, 1, 31, tzinfo=timezone.utc)),
    ("2026-01-31T02:00:00+02:00", datetime(2026, 1, 31, tzinfo=timezone.utc)),
    ("2026-01-31T00:00:00", datetime(2026, 1, 31, tzinfo=timezone.utc)),
    ("2026-01-31", datetime(2026, 1, 31, tzinfo=timezone.utc)),
])
def test_parse_since_timestamp(text: str, expected: datetime) -> None:
    parsed = repository.parse_since(text)
    assert parsed == expected
    assert isinstance(parsed, datetime)
    assert parsed.utcoffset() == timedelta(0)


@pytest.mark.parametrize("text", ["yesterday", "24", "h", "-1h", "1.5h", "24H", "", "10y", "2026-13-01", "\uff11h",
                                  "1234567890s"])
def test_parse_since_invalid(text: str) -> None:
    with pytest.raises(ValueError) as caught:
        repository.parse_since(text)
    assert repr(text) in str(caught.value)


def test_parse_since_longest_duration() -> None:
    assert repository.parse_since("999999999d") == timedelta(days=999999999)
    assert repository.parse_since("142857142w") == timedelta(weeks=142857142)
    for text in ("142857143w", "999999999w"):
        with pytest.raises(ValueError) as caught:
            repository.parse_since(text)
        assert repr(text) in str(caught.value)
        assert "999999999d" in str(caught.value)
        assert "142857142w" in str(caught.value)


@pytest.mark.parametrize("text", ["9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+14:00"])
def test_parse_since_out_of_range(text: str) -> None:
    with pytest.raises(ValueError) as caught:
        repository.parse_since(text)
    assert repr(text) in str(caught.value)
    assert "0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999999Z" in str(caught.value)


def test_parse_since_range_edges() -> None:
    earliest = repository.parse_since("0001-01-01T00:00:00Z")
    latest = repository.parse_since("9999-12-31T23:59:59.999999Z")
    assert earliest == datetime.min.replace(tzinfo=timezone.utc)
    assert latest == datetime.max.replace(tzinfo=timezone.utc)


def test_show_value_cut() -> None:
    assert repository.show_value("abc") == "'abc'"
    cut = repository.show_value("x" * 300)
    assert cut == repr("x" * 80) + "... (300 characters)"


@pytest.mark.parametrize("value", ["a", "ghg-inventory_v1.2", "d" * 63, "...", ".hidden"])
def test_dag_id_valid(value: str) -> None:
    assert repository.is_valid_dag_id(value)
    assert repository.parse_dag_id(value) == value


@pytest.mark.parametrize("value", ["", ".", "..", "d" * 64, "a b", "a\x00b", "a\nb", "abc\n", "\ud800", "caf\u00e9",
                                   "a/b", "\uff41"])
def test_dag_id_invalid(value: str) -> None:
    assert not repository.is_valid_dag_id(value)
    with pytest.raises(ValueError, match="dag_id"):
        repository.parse_dag_id(value)


def test_execution_id_rule() -> None:
    assert repository.is_valid_execution_id("6f1f1d2e-4f0b-5a59-9b1e-2f6c8e0a7d31")
    assert repository.is_valid_execution_id("e" * 64)
    for value in ("", "e" * 65, "a\x00b", "abc\n", "\ud800", "a b", "a/b"):
        assert not repository.is_valid_execution_id(value), repr(value)


def test_format_timestamp_utc_z() -> None:
    naive = datetime(2026, 3, 1, 12, 0, 0)
    offset = datetime(2026, 3, 1, 14, 0, 0, tzinfo=timezone(timedelta(hours=2)))
    assert repository.format_timestamp(naive) == "2026-03-01T12:00:00.000000Z"
    assert repository.format_timestamp(offset) == "2026-03-01T12:00:00.000000Z"
    assert repository.format_timestamp(None) is None


def test_cursor_round_trip() -> None:
    cursor = repository.encode_cursor(BASE_TIME, "abc")
    assert repository.decode_cursor(cursor) == (BASE_TIME, "abc")


def cursor_of(position: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(position).encode()).decode().rstrip("=")


@pytest.mark.parametrize("cursor", [
    "",
    "not base64!",
    "eyJ4IjoxfQ",
    "WyJub3QgYSBkYXRlIiwiYSJd",
    cursor_of(["2026-03-01T12:00:00.000000Z", "a\x00b"]),
    cursor_of(["2026-03-01T12:00:00.000000Z", "\ud800"]),
    cursor_of(["2026-03-01T12:00:00.000000Z", ""]),
    cursor_of(["2026-03-01T12:00:00.000000Z", "e" * 65]),
    cursor_of(["0001-01-01T00:00:00+14:00", "abc"]),
    cursor_of(["9999-12-31T23:59:59-23:59", "abc"]),
])
def test_cursor_invalid(cursor: str) -> None:
    with pytest.raises(ValueError, match="cursor"):
        repository.decode_cursor(cursor)


def test_cursor_invalid_message_cut() -> None:
    with pytest.raises(ValueError) as caught:
        repository.decode_cursor("x" * 5000)
    assert "x" * 81 not in str(caught.value)


# -- DAGs -------------------------------------------------------------------


def test_register_dag_created_then_unchanged(db: Database, registry: AgentRegistry) -> None:
    dag = parse_dag(chain_document("chain"), registry)
    first = repository.register_dag(db, dag, replace=False)
    again = repository.register_dag(db, dag, replace=False)
    assert first["registration"] == "created"
    assert again["registration"] == "unchanged"
    assert again["dag_hash"] == dag.dag_hash
    assert again["definition"] == dag.document
    assert again["created_at"].endswith("Z")


def test_register_dag_conflict(db: Database, registry: AgentRegistry) -> None:
    repository.register_dag(db, parse_dag(chain_document("chain"), registry), replace=False)
    changed = parse_dag(chain_document("chain", name="Renamed"), registry)
    with pytest.raises(DagConflictError) as caught:
        repository.register_dag(db, changed, replace=False)
    assert caught.value.new_hash == changed.dag_hash
    assert "PUT" in str(caught.value)
    assert repository.get_dag(db, "chain")["name"] == "Chain"


def test_register_dag_replace(db: Database, registry: AgentRegistry) -> None:
    repository.register_dag(db, parse_dag(chain_document("chain"), registry), replace=False)
    changed = parse_dag(chain_document("chain", name="Renamed"), registry)
    stored = repository.register_dag(db, changed, replace=True)
    assert stored["registration"] == "updated"
    assert stored["name"] == "Renamed"
    assert repository.get_dag(db, "chain")["dag_hash"] == changed.dag_hash


def test_get_dag_not_found(db: Database) -> None:
    with pytest.raises(DagNotFoundError):
        repository.get_dag(db, "missing")


def test_delete_dag_without_executions(db: Database, registry: AgentRegistry) -> None:
    register(db, registry, "chain")
    assert repository.retire_or_delete_dag(db, "chain") == "deleted"
    with pytest.raises(DagNotFoundError):
        repository.get_dag(db, "chain")


def test_retire_dag_with_executions(db: Database, registry: AgentRegistry, scheduler: Scheduler) -> None:
    dag = register(db, registry, "chain")
    execution_id, _ = scheduler.create_execution(dag, {"x": 1})

    assert repository.retire_or_delete_dag(db, "chain") == "retired"
    assert repository.get_dag(db, "chain")["status"] == "retired"
    assert repository.get_execution(db, execution_id)["dag_id"] == "chain"
    assert [d["dag_id"] for d in repository.list_dags(db)] == []
    assert [d["dag_id"] for d in repository.list_dags(db, include_retired=True)] == ["chain"]
    with pytest.raises(DagRetiredError):
        repository.get_active_dag(db, "chain")
    assert repository.retire_or_delete_dag(db, "chain") == "retired"


def test_retired_dag_registered_again(db: Database, registry: AgentRegistry, scheduler: Scheduler) -> None:
    dag = register(db, registry, "chain")
    scheduler.create_execution(dag, {"x": 1})
    repository.retire_or_delete_dag(db, "chain")
    stored = repository.register_dag(db, dag, replace=False)
    assert stored["status"] == "active"
    assert stored["registration"] == "updated"


def test_retire_or_delete_missing(db: Database) -> None:
    with pytest.raises(DagNotFoundError):
        repository.retire_or_delete_dag(db, "missing")


# -- executions -------------------------------------------------------------


@pytest.fixture
def seeded(db: Database, registry: AgentRegistry, scheduler: Scheduler) -> list[dict[str, Any]]:
    """Seven executions of two DAGs with fixed created_at values, three sharing one timestamp."""
    dags = {dag_id: register(db, registry, dag_id) for dag_id in ("alpha", "beta")}
    plan = [
        ("alpha", "completed", BASE_TIME),
        ("alpha", "failed", BASE_TIME - timedelta(minutes=1)),
        ("beta", "running", BASE_TIME - timedelta(minutes=1)),
        ("alpha", "pending", BASE_TIME - timedelta(minutes=1)),
        ("beta", "completed", BASE_TIME - timedelta(hours=2)),
        ("alpha", "completed", BASE_TIME - timedelta(days=3)),
        ("beta", "failed", BASE_TIME - timedelta(days=10)),
    ]
    seeded = []
    for dag_id, status, created_at in plan:
        execution_id, _ = scheduler.create_execution(dags[dag_id], {"x": 1})
        set_execution(db, execution_id, status=status, created_at=created_at)
        seeded.append({"execution_id": execution_id, "dag_id": dag_id, "status": status, "created_at": created_at})
    seeded.sort(key=lambda item: (item["created_at"], item["execution_id"]), reverse=True)
    return seeded


def collect_pages(db: Database, limit: int, **filters: Any) -> tuple[list[str], int]:
    ids: list[str] = []
    pages = 0
    cursor = None
    while True:
        items, cursor = repository.list_executions(db, limit=limit, cursor=cursor, **filters)
        pages += 1
        ids.extend(item["execution_id"] for item in items)
        if cursor is None:
            return ids, pages


def test_list_executions_newest_first(db: Database, seeded: list[dict[str, Any]]) -> None:
    items, next_cursor = repository.list_executions(db)
    assert [item["execution_id"] for item in items] == [item["execution_id"] for item in seeded]
    assert next_cursor is None
    assert items[0]["created_at"] == "2026-03-01T12:00:00.123456Z"
    assert set(items[0]) >= {
        "execution_id", "dag_id", "status", "error", "created_at", "started_at", "completed_at",
        "provenance_chain_hash", "chain_valid", "nodes_total", "nodes_remaining",
    }


def test_list_executions_cursor_pages(db: Database, seeded: list[dict[str, Any]]) -> None:
    for limit in (1, 2, 3, 7):
        ids, pages = collect_pages(db, limit)
        assert ids == [item["execution_id"] for item in seeded]
        assert pages == -(-len(seeded) // limit)


def test_list_executions_filters(db: Database, seeded: list[dict[str, Any]]) -> None:
    def expected(**match: Any) -> list[str]:
        return [item["execution_id"] for item in seeded if all(item[k] == v for k, v in match.items())]

    assert collect_pages(db, 2, status="completed")[0] == expected(status="completed")
    assert collect_pages(db, 2, dag_id="beta")[0] == expected(dag_id="beta")
    assert collect_pages(db, 1, dag_id="alpha", status="completed")[0] == expected(dag_id="alpha", status="completed")
    assert collect_pages(db, 2, dag_id="missing")[0] == []


def test_list_executions_since(db: Database, seeded: list[dict[str, Any]]) -> None:
    cutoff = BASE_TIME - timedelta(hours=3)
    recent = [item["execution_id"] for item in seeded if item["created_at"] >= cutoff]
    assert collect_pages(db, 2, since=cutoff)[0] == recent
    assert collect_pages(db, 2, since=cutoff.astimezone(timezone(timedelta(hours=-5))))[0] == recent

    # Durations count back from now, and the seeded times lie in the past.
    within = datetime.now(timezone.utc) - BASE_TIME + timedelta(hours=3)
    assert collect_pages(db, 2, since=within)[0] == recent
    assert collect_pages(db, 2, since=timedelta(weeks=10**5))[0] == [item["execution_id"] for item in seeded]


def test_list_executions_invalid_arguments(db: Database) -> None:
    with pytest.raises(ValueError, match="limit"):
        repository.list_executions(db, limit=0)
    with pytest.raises(ValueError, match="limit"):
        repository.list_executions(db, limit=repository.MAX_PAGE_SIZE + 1)
    with pytest.raises(ValueError, match="status='done'"):
        repository.list_executions(db, status="done")
    with pytest.raises(ValueError, match="cursor"):
        repository.list_executions(db, cursor="garbage")
    with pytest.raises(ValueError, match="dag_id='a\\\\x00b' is invalid"):
        repository.list_executions(db, dag_id="a\x00b")


def test_count_executions_by_status(db: Database, seeded: list[dict[str, Any]]) -> None:
    counts = repository.count_executions_by_status(db, ["running", "pending", "cancelled"])
    assert counts == {"running": 1, "pending": 1, "cancelled": 0}


def test_get_execution_nodes(db: Database, registry: AgentRegistry, scheduler: Scheduler) -> None:
    dag = register(db, registry, "chain")
    execution_id, _ = scheduler.create_execution(dag, {"x": 21}, options={"deterministic_mode": True})

    pending = repository.get_execution(db, execution_id)
    assert pending["status"] == "pending"
    assert pending["input_data"] == {"x": 21}
    assert pending["input_hash"] == output_hash({"x": 21})
    assert pending["execution_options"] == {"deterministic_mode": True}
    assert [(n["node_id"], n["status"]) for n in pending["nodes"]] == [("load", "queued"), ("double", "waiting")]
    assert pending["nodes"][0]["queued_at"].endswith("Z")
    assert pending["nodes"][1]["queued_at"] is None

    run_queued_nodes(scheduler, db, execution_id)
    done = repository.get_execution(db, execution_id)
    assert done["status"] == "completed"
    assert done["chain_valid"] is True
    assert done["completed_at"].endswith("Z")
    for node in done["nodes"]:
        assert node["status"] == "completed"
        assert node["attempt_count"] == 1
        assert node["duration_seconds"] is not None
        assert node["duration_seconds"] >= 0
        assert [attempt["status"] for attempt in node["attempts"]] == ["completed"]


def test_get_execution_not_found(db: Database) -> None:
    with pytest.raises(ExecutionNotFoundError):
        repository.get_execution(db, "missing")
    with pytest.raises(ExecutionNotFoundError):
        repository.get_execution_summary(db, "missing")
    with pytest.raises(ExecutionNotFoundError):
        repository.get_checkpoints(db, "missing")
    with pytest.raises(ExecutionNotFoundError):
        repository.execution_outputs(db, "missing", ["load"])


def test_checkpoints_verified_and_tampered(db: Database, registry: AgentRegistry, scheduler: Scheduler) -> None:
    dag = register(db, registry, "chain")
    execution_id, _ = scheduler.create_execution(dag, {"x": 21})
    run_queued_nodes(scheduler, db, execution_id)

    checkpoints = repository.get_checkpoints(db, execution_id)
    assert [c["node_id"] for c in checkpoints] == ["load", "double"]
    assert all(c["verified"] for c in checkpoints)
    assert checkpoints[1]["output_hash"] == output_hash({"value": 42})
    assert checkpoints[1]["size_bytes"] == len(canonical_json({"value": 42}))
    assert repository.execution_outputs(db, execution_id, ["double"]) == {"double": {"value": 42}}

    with db.engine.begin() as conn:
        conn.execute(update(CHECKPOINTS).where(
            CHECKPOINTS.c.execution_id == execution_id, CHECKPOINTS.c.node_id == "double"
        ).values(outputs={"value": 43}))
    tampered = {c["node_id"]: c for c in repository.get_checkpoints(db, execution_id)}
    assert tampered["load"]["verified"] is True
    assert tampered["double"]["verified"] is False
    assert tampered["double"]["actual_output_hash"] == output_hash({"value": 43})
    assert "output_hash" in tampered["double"]["verification_error"]
    with pytest.raises(CheckpointIntegrityError) as caught:
        repository.execution_outputs(db, execution_id, ["load", "double"])
    assert caught.value.node_id == "double"
