"""Replay of finished executions on SQLite and PostgreSQL, driven by hand through the Scheduler."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select, update

from orchestrator.agents import AgentRegistry
from orchestrator.database import Database
from orchestrator.errors import DagValidationError, ExecutionConflictError, ExecutionNotFoundError, NotAReplayError
from orchestrator.models import dag_executions
from orchestrator.replay import REPLAY_OPTION, replay_report, start_replay
from orchestrator.repository import register_dag
from orchestrator.scheduler import Scheduler
from tests.test_comparison import DETERMINISTIC, NODES, Counter, _run
from tests.test_resume import _run_until_done
from tests.test_scheduler import _dag, _run_once, _start


@pytest.fixture
def counter() -> Counter:
    return Counter()


@pytest.fixture
def registry(counter: Counter) -> AgentRegistry:
    agents = AgentRegistry()
    agents.register("t.const", "1.0.0", lambda inputs, params: params["value"])
    agents.register("t.add", "1.0.0", lambda inputs, params: sum(value for value in inputs.values()))
    agents.register("t.pick", "1.0.0", lambda inputs, params: inputs["value"][params["key"]])
    agents.register("t.counter", "1.0.0", counter)
    return agents


def _options(database: Database, execution_id: str) -> Any:
    with database.connect() as conn:
        return conn.execute(
            select(dag_executions.c.execution_options).where(dag_executions.c.execution_id == execution_id)
        ).scalar_one()


def _replay_and_run(scheduler: Scheduler, database: Database, execution_id: str) -> str:
    started = start_replay(scheduler, execution_id)
    _run_until_done(scheduler, started.follow_up, started.execution_id, database)
    return started.execution_id


def test_replay_deterministic_matches(database: Database, registry: AgentRegistry) -> None:
    scheduler, original = _run(database, registry, DETERMINISTIC, {"x": 2})

    started = start_replay(scheduler, original)
    assert started.replay_of == original
    assert started.execution_id != original
    assert started.nodes_total == 2
    assert _options(database, started.execution_id) == {REPLAY_OPTION: original}

    pending = replay_report(database, started.execution_id)
    assert pending.matches is None
    assert pending.status == "pending"
    assert pending.to_dict()["nodes_differing"] == []

    _run_until_done(scheduler, started.follow_up, started.execution_id, database)
    report = replay_report(database, started.execution_id).to_dict()
    assert report["matches"] is True
    assert report["status"] == "completed"
    assert report["original_status"] == "completed"
    assert report["replay_of"] == original
    assert report["provenance_chain_hash"]["original"] == report["provenance_chain_hash"]["replay"]
    assert report["nodes_differing"] == []
    assert report["nodes_nondeterministic"] == []


def test_replay_nondeterministic_names_node(database: Database, registry: AgentRegistry) -> None:
    scheduler, original = _run(database, registry, NODES, {"x": 2})
    replay_id = _replay_and_run(scheduler, database, original)

    report = replay_report(database, replay_id).to_dict()
    assert report["matches"] is False
    assert report["provenance_chain_hash"]["original"] != report["provenance_chain_hash"]["replay"]
    assert [node["node_id"] for node in report["nodes_differing"]] == ["n", "d"]
    assert report["nodes_nondeterministic"] == ["n"]
    differing = {node["node_id"]: node for node in report["nodes_differing"]}
    assert differing["n"]["differences"] == ["output"]
    assert differing["d"]["differences"] == ["input", "output"]


def test_replay_lists_recorded_nodes_while_running(database: Database, registry: AgentRegistry) -> None:
    scheduler, original = _run(database, registry, NODES, {"x": 2})
    started = start_replay(scheduler, original)

    # Run the root and n by hand; d and e have not run yet.
    dispatch = started.follow_up.dispatches[0]
    follow_up = _run_once(scheduler, scheduler.claim(dispatch.execution_id, dispatch.node_id, dispatch.task_id))
    by_node = {d.node_id: d for d in follow_up.dispatches}
    _run_once(scheduler, scheduler.claim(started.execution_id, "n", by_node["n"].task_id))

    report = replay_report(database, started.execution_id).to_dict()
    assert report["status"] == "running"
    assert report["matches"] is None
    assert report["provenance_chain_hash"]["replay"] is None
    assert [node["node_id"] for node in report["nodes_differing"]] == ["n"]
    assert report["nodes_nondeterministic"] == ["n"]


def test_replay_uses_stored_document(database: Database, registry: AgentRegistry) -> None:
    scheduler, original = _run(database, registry, DETERMINISTIC, {"x": 2})
    changed = {**DETERMINISTIC, "a": {"agent_id": "t.const", "params": {"value": 99}}}
    register_dag(database, _dag(registry, changed), replace=True)

    replay_id = _replay_and_run(scheduler, database, original)
    report = replay_report(database, replay_id)
    assert report.matches is True
    assert report.diff.dag_hash.differs is False


def test_replay_of_replay_links_direct_original(database: Database, registry: AgentRegistry) -> None:
    scheduler, original = _run(database, registry, DETERMINISTIC, {"x": 2})
    first = _replay_and_run(scheduler, database, original)
    second = _replay_and_run(scheduler, database, first)
    assert _options(database, second) == {REPLAY_OPTION: first}
    assert replay_report(database, second).matches is True


def test_replay_copies_original_options(database: Database, registry: AgentRegistry) -> None:
    dag = _dag(registry, DETERMINISTIC)
    register_dag(database, dag, replace=True)
    scheduler = Scheduler(database, registry)
    original, follow_up = scheduler.create_execution(dag, {"x": 2}, options={"deterministic_mode": True})
    _run_until_done(scheduler, follow_up, original, database)

    replay_id = start_replay(scheduler, original).execution_id
    assert _options(database, replay_id) == {"deterministic_mode": True, REPLAY_OPTION: original}


def test_replay_rejects_unfinished(database: Database, registry: AgentRegistry) -> None:
    scheduler, pending, _ = _start(database, registry, _dag(registry, DETERMINISTIC), {"x": 2})
    with pytest.raises(ExecutionConflictError, match="is pending; replay it after"):
        start_replay(scheduler, pending)
    database.transaction(lambda conn: conn.execute(
        update(dag_executions).where(dag_executions.c.execution_id == pending).values(status="running")))
    with pytest.raises(ExecutionConflictError, match="is running"):
        start_replay(scheduler, pending)


def test_replay_unknown_execution(database: Database, registry: AgentRegistry) -> None:
    scheduler = Scheduler(database, registry)
    with pytest.raises(ExecutionNotFoundError):
        start_replay(scheduler, "missing")
    with pytest.raises(ExecutionNotFoundError):
        replay_report(database, "missing")


def test_replay_report_of_non_replay(database: Database, registry: AgentRegistry) -> None:
    _, original = _run(database, registry, DETERMINISTIC, {"x": 2})
    with pytest.raises(NotAReplayError, match="was not started as a replay"):
        replay_report(database, original)


def test_replay_needs_registered_agents(database: Database, registry: AgentRegistry) -> None:
    _, original = _run(database, registry, DETERMINISTIC, {"x": 2})
    with pytest.raises(DagValidationError, match="t.add"):
        start_replay(Scheduler(database, AgentRegistry()), original)


def test_replay_rejects_altered_document(database: Database, registry: AgentRegistry) -> None:
    scheduler, original = _run(database, registry, DETERMINISTIC, {"x": 2})
    with database.connect() as conn:
        document = conn.execute(
            select(dag_executions.c.dag_document).where(dag_executions.c.execution_id == original)
        ).scalar_one()
    document["nodes"]["a"]["params"] = {"value": 7}
    database.transaction(lambda conn: conn.execute(
        update(dag_executions).where(dag_executions.c.execution_id == original).values(dag_document=document)))

    with pytest.raises(ExecutionConflictError, match="not to its dag_hash"):
        start_replay(scheduler, original)
