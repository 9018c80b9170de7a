"""Resume and cancel, driven by hand on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import text

from orchestrator.agents import AgentRegistry
from orchestrator.database import Database
from orchestrator.errors import CheckpointsCorruptedError, ExecutionConflictError
from orchestrator.finalizer import finalize_execution
from orchestrator.resume import (
    cancel_execution,
    resume_execution,
)
from orchestrator.scheduler import FollowUp, Scheduler
from tests.test_scheduler import _dag, _drain, _start, _statuses


class Switch:
    """An agent that fails until it is fixed, as an author would fix a bug."""

    def __init__(self) -> None:
        self.broken = True
        self.calls: list[str] = []

    def __call__(self, inputs: dict[str, Any], params: dict[str, Any]) -> Any:
        self.calls.append(params.get("name", "?"))
        if self.broken:
            raise RuntimeError("bug in the agent")
        return sum(inputs.values()) * 10


@pytest.fixture
def switch() -> Switch:
    return Switch()


@pytest.fixture
def registry(switch: Switch) -> AgentRegistry:
    agents = AgentRegistry()
    agents.register("t.const", "1.0.0", lambda inputs, params: params["value"])
    agents.register("t.add", "1.0.0", lambda inputs, params: sum(inputs.values()))
    agents.register("t.switch", "1.0.0", switch)
    return agents


NODES = {
    "a": {"agent_id": "t.const", "params": {"value": 1}},
    "side": {"agent_id": "t.add", "depends_on": ["a"], "input_mapping": {"a": "results.a", "x": "input.x"}},
    "b": {"agent_id": "t.switch", "depends_on": ["a"], "input_mapping": {"a": "results.a"}, "params": {"name": "b"}},
    "c": {"agent_id": "t.add", "depends_on": ["b"], "input_mapping": {"b": "results.b"}},
}


def _run_until_done(scheduler: Scheduler, follow_up: FollowUp, execution_id: str, db: Database) -> str:
    """Run nodes (failures recorded as the node task does) and finalize; return the final status."""
    from orchestrator.hashing import canonical_json
    from orchestrator.scheduler import Prepared

    pending = list(follow_up.dispatches)
    finalize = follow_up.finalize
    while pending:
        dispatch = pending.pop(0)
        claim = scheduler.claim(dispatch.execution_id, dispatch.node_id, dispatch.task_id)
        if not claim.run:
            pending.extend(claim.follow_up.dispatches)
            finalize = finalize or claim.follow_up.finalize
            continue
        prepared = scheduler.prepare(claim)
        assert isinstance(prepared, Prepared)
        try:
            outputs = prepared.agent(prepared.inputs, prepared.params)
        except RuntimeError as exc:
            outcome = scheduler.record_failure(claim, f"RuntimeError: {exc}", prepared=prepared, retryable=False)
        else:
            outcome = scheduler.record_success(claim, prepared, canonical_json(outputs), outputs)
        assert isinstance(outcome, FollowUp)
        pending.extend(outcome.dispatches)
        finalize = finalize or outcome.finalize
    assert finalize
    return finalize_execution(db, execution_id).status


def _chain_hash(db: Database, execution_id: str) -> str:
    with db.connect() as conn:
        return str(conn.execute(text("SELECT provenance_chain_hash FROM dag_executions WHERE execution_id = :e"),
                                {"e": execution_id}).scalar_one())


def test_resume_after_fix_matches_clean_run(database: Database, registry: AgentRegistry, switch: Switch) -> None:
    dag = _dag(registry, NODES, on_failure="continue")
    scheduler, execution_id, follow_up = _start(database, registry, dag, {"x": 2})
    assert _run_until_done(scheduler, follow_up, execution_id, database) == "failed"
    assert _statuses(database, execution_id) == {"a": "completed", "side": "completed", "b": "failed", "c": "skipped"}

    switch.broken = False
    switch.calls.clear()
    report, resumed = resume_execution(scheduler, execution_id)
    assert report.nodes_skipped == ["a", "side"]
    assert report.nodes_remaining == ["b", "c"]
    reasons = {d.node_id: d.reason for d in report.decisions}
    assert reasons["b"] == "previous attempt ended failed"
    assert reasons["c"] == "upstream node 'b' runs again"
    assert _run_until_done(scheduler, resumed, execution_id, database) == "completed"
    assert switch.calls == ["b"]

    _, clean_id, clean_follow_up = _start(database, registry, dag, {"x": 2})
    assert _run_until_done(scheduler, clean_follow_up, clean_id, database) == "completed"
    assert _chain_hash(database, execution_id) == _chain_hash(database, clean_id)
    with database.connect() as conn:
        archived = conn.execute(text("SELECT node_id, reason FROM checkpoint_archive WHERE execution_id = :e "
                                     "ORDER BY node_id"), {"e": execution_id}).all()
    assert [row.node_id for row in archived] == ["b", "c"]
    assert archived[0].reason.startswith("superseded by resume")


def _verify_errors() -> float:
    value = REGISTRY.get_sample_value("gl_orchestrator_checkpoint_operations_total",
                                      {"operation": "verify", "status": "error"})
    return value or 0.0


def test_corrupted_checkpoint_refused_then_rerun(database: Database, registry: AgentRegistry, switch: Switch) -> None:
    scheduler, execution_id, follow_up = _start(database, registry, _dag(registry, NODES, on_failure="continue"), {"x": 2})
    _run_until_done(scheduler, follow_up, execution_id, database)
    database.transaction(lambda conn: conn.execute(text(
        "UPDATE dag_checkpoints SET outputs = :v WHERE execution_id = :e AND node_id = 'a'"), {"v": "5", "e": execution_id}))
    before = _verify_errors()

    with pytest.raises(CheckpointsCorruptedError) as caught:
        resume_execution(scheduler, execution_id)
    message = str(caught.value)
    assert "checkpoint integrity verification failed" in message
    assert "node 'a' expected" in message
    assert [item.node_id for item in caught.value.corrupted] == ["a"]
    assert _verify_errors() == before + 1
    assert _statuses(database, execution_id)["a"] == "completed"

    switch.broken = False
    report, resumed = resume_execution(scheduler, execution_id, rerun_corrupted=True)
    assert report.nodes_skipped == []
    assert "corrupted checkpoint" in {d.node_id: d.reason for d in report.decisions}["a"]
    assert _run_until_done(scheduler, resumed, execution_id, database) == "completed"
    with database.connect() as conn:
        evidence = conn.execute(text("SELECT outputs, reason FROM checkpoint_archive WHERE execution_id = :e "
                                     "AND node_id = 'a'"), {"e": execution_id}).one()
        live = conn.execute(text("SELECT outputs FROM dag_checkpoints WHERE execution_id = :e AND node_id = 'a'"),
                            {"e": execution_id}).scalar_one()
    assert evidence.outputs == 5
    assert evidence.reason.startswith("corrupted, kept as evidence")
    assert live == 1


def test_changed_input_reruns_readers(database: Database, registry: AgentRegistry, switch: Switch) -> None:
    switch.broken = False
    scheduler, execution_id, follow_up = _start(database, registry, _dag(registry, NODES, on_failure="continue"), {"x": 2})
    assert _run_until_done(scheduler, follow_up, execution_id, database) == "completed"
    report, resumed = resume_execution(scheduler, execution_id, input_data={"x": 3})
    assert report.nodes_remaining == ["side"]
    assert "input changed" in {d.node_id: d.reason for d in report.decisions}["side"]
    assert _run_until_done(scheduler, resumed, execution_id, database) == "completed"
    with database.connect() as conn:
        side = conn.execute(text("SELECT outputs FROM dag_checkpoints WHERE execution_id = :e AND node_id = 'side'"),
                            {"e": execution_id}).scalar_one()
    assert side == 4


def test_resume_of_completed_untouched_changes_nothing(database: Database, registry: AgentRegistry,
                                                       switch: Switch) -> None:
    switch.broken = False
    scheduler, execution_id, follow_up = _start(database, registry, _dag(registry, NODES, on_failure="continue"), {"x": 2})
    _run_until_done(scheduler, follow_up, execution_id, database)
    report, resumed = resume_execution(scheduler, execution_id)
    assert report.nodes_remaining == []
    assert resumed.dispatches == []
    assert resumed.finalize is False
    assert report.status == "completed"


def test_resume_while_running_conflicts(database: Database, registry: AgentRegistry) -> None:
    scheduler, execution_id, _ = _start(database, registry, _dag(registry, NODES, on_failure="continue"), {"x": 2})
    with pytest.raises(ExecutionConflictError, match="is pending"):
        resume_execution(scheduler, execution_id)


def test_cancel_then_resume_completes(database: Database, registry: AgentRegistry, switch: Switch) -> None:
    switch.broken = False
    scheduler, execution_id, follow_up = _start(database, registry, _dag(registry, NODES, on_failure="continue"), {"x": 2})
    claim = scheduler.claim(execution_id, "a", follow_up.dispatches[0].task_id)
    _drain_one = _run_single(scheduler, claim)
    queued = {d.node_id: d.task_id for d in _drain_one.dispatches}
    assert set(queued) == {"side", "b"}

    report = cancel_execution(scheduler, execution_id)
    assert sorted(report.revoke_task_ids) == sorted(queued.values())
    assert report.nodes_completed == ["a"]
    with pytest.raises(ExecutionConflictError, match="already cancelled"):
        cancel_execution(scheduler, execution_id)
    # A message that was already on its way is ignored.
    assert scheduler.claim(execution_id, "b", queued["b"]).run is False

    resume_report, resumed = resume_execution(scheduler, execution_id)
    assert resume_report.nodes_skipped == ["a"]
    assert _run_until_done(scheduler, resumed, execution_id, database) == "completed"
    assert finalize_execution(database, execution_id).changed is False


def _run_single(scheduler: Scheduler, claim: Any) -> FollowUp:
    from orchestrator.hashing import canonical_json

    prepared = scheduler.prepare(claim)
    outputs = prepared.agent(prepared.inputs, prepared.params)
    return scheduler.record_success(claim, prepared, canonical_json(outputs), outputs)


def test_resume_keeps_diamond_hash(database: Database, registry: AgentRegistry) -> None:
    from tests.test_scheduler import DIAMOND

    dag = _dag(registry, DIAMOND)
    scheduler, execution_id, follow_up = _start(database, registry, dag)
    _drain(scheduler, follow_up)
    finalize_execution(database, execution_id)
    original = _chain_hash(database, execution_id)
    database.transaction(lambda conn: conn.execute(text(
        "UPDATE dag_checkpoints SET outputs = '7' WHERE execution_id = :e AND node_id = 'c'"), {"e": execution_id}))
    _, resumed = resume_execution(scheduler, execution_id, rerun_corrupted=True)
    assert sorted(d.node_id for d in resumed.dispatches) == ["c"]
    _drain(scheduler, resumed)
    finalize_execution(database, execution_id)
    assert _chain_hash(database, execution_id) == original
