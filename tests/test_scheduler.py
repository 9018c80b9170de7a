"""The scheduler's transactions, driven by hand on SQLite and PostgreSQL.

No Celery here: each test claims, prepares and records nodes itself, the way
the node task does, so every state change and follow-up can be checked.
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import text

from orchestrator.agents import AgentRegistry
from orchestrator.dag import Dag, parse_dag
from orchestrator.database import Database
from orchestrator.finalizer import finalize_execution
from orchestrator.hashing import canonical_json
from orchestrator.provenance import verify_execution
from orchestrator.repository import register_dag
from orchestrator.scheduler import Claim, FollowUp, Prepared, RetryDecision, Scheduler


@pytest.fixture
def registry() -> AgentRegistry:
    agents = AgentRegistry()
    agents.register("t.const", "1.0.0", lambda inputs, params: params["value"])
    agents.register("t.add", "1.0.0", lambda inputs, params: sum(inputs.values()))
    return agents


def _dag(registry: AgentRegistry, nodes: dict[str, Any], **extra: Any) -> Dag:
    return parse_dag({"dag_id": "test-dag", "nodes": nodes, **extra}, registry)


DIAMOND = {
    "a": {"agent_id": "t.const", "params": {"value": 1}},
    "b": {"agent_id": "t.add", "depends_on": ["a"], "input_mapping": {"a": "results.a"}},
    "c": {"agent_id": "t.add", "depends_on": ["a"], "input_mapping": {"a": "results.a"}},
    "d": {"agent_id": "t.add", "depends_on": ["b", "c"], "input_mapping": {"b": "results.b", "c": "results.c"}},
}


def _run_once(scheduler: Scheduler, claim: Claim) -> FollowUp:
    prepared = scheduler.prepare(claim)
    assert isinstance(prepared, Prepared)
    outputs = prepared.agent(prepared.inputs, prepared.params)
    return scheduler.record_success(claim, prepared, canonical_json(outputs), outputs)


def _drain(scheduler: Scheduler, follow_up: FollowUp) -> FollowUp:
    """Run every dispatched node until nothing is left; return the last follow-up."""
    pending = list(follow_up.dispatches)
    last = follow_up
    while pending:
        dispatch = pending.pop(0)
        claim = scheduler.claim(dispatch.execution_id, dispatch.node_id, dispatch.task_id)
        assert claim.run
        last = _run_once(scheduler, claim)
        pending.extend(last.dispatches)
    return last


def _statuses(db: Database, execution_id: str) -> dict[str, str]:
    with db.connect() as conn:
        rows = conn.execute(text("SELECT node_id, status FROM execution_nodes WHERE execution_id = :e"),
                            {"e": execution_id}).all()
    return {row.node_id: row.status for row in rows}


def _start(database: Database, registry: AgentRegistry, dag: Dag, input_data: Any = None) -> tuple[Scheduler, str, FollowUp]:
    register_dag(database, dag, replace=True)
    scheduler = Scheduler(database, registry)
    execution_id, follow_up = scheduler.create_execution(dag, input_data if input_data is not None else {})
    return scheduler, execution_id, follow_up


def test_diamond_runs_and_finalizes(database: Database, registry: AgentRegistry) -> None:
    scheduler, execution_id, follow_up = _start(database, registry, _dag(registry, DIAMOND))
    assert [d.node_id for d in follow_up.dispatches] == ["a"]
    assert _statuses(database, execution_id) == {"a": "queued", "b": "waiting", "c": "waiting", "d": "waiting"}

    last = _drain(scheduler, follow_up)
    assert last.finalize is True

    result = finalize_execution(database, execution_id)
    assert result.status == "completed"
    assert result.chain_valid is True
    assert result.chain_length == 4
    report = verify_execution(database, execution_id)
    assert report.chain_valid
    assert report.provenance_chain_hash == result.provenance_chain_hash


def test_children_queued_only_when_all_parents_done(database: Database, registry: AgentRegistry) -> None:
    scheduler, execution_id, follow_up = _start(database, registry, _dag(registry, DIAMOND))
    claim_a = scheduler.claim(execution_id, "a", follow_up.dispatches[0].task_id)
    after_a = _run_once(scheduler, claim_a)
    assert sorted(d.node_id for d in after_a.dispatches) == ["b", "c"]

    by_node = {d.node_id: d for d in after_a.dispatches}
    after_b = _run_once(scheduler, scheduler.claim(execution_id, "b", by_node["b"].task_id))
    assert after_b.dispatches == []
    assert _statuses(database, execution_id)["d"] == "waiting"
    after_c = _run_once(scheduler, scheduler.claim(execution_id, "c", by_node["c"].task_id))
    assert [d.node_id for d in after_c.dispatches] == ["d"]


def test_redelivery_resends_children_lost_after_commit(database: Database, registry: AgentRegistry) -> None:
    scheduler, execution_id, follow_up = _start(database, registry, _dag(registry, DIAMOND))
    task_a = follow_up.dispatches[0].task_id
    lost = _run_once(scheduler, scheduler.claim(execution_id, "a", task_a))
    # The worker died before sending `lost`; the broker delivers the message again.
    again = scheduler.claim(execution_id, "a", task_a)
    assert again.run is False
    assert sorted((d.node_id, d.task_id) for d in again.follow_up.dispatches) == sorted(
        (d.node_id, d.task_id) for d in lost.dispatches)


def test_redelivery_resends_lost_finalizer(database: Database, registry: AgentRegistry) -> None:
    dag = _dag(registry, {"only": {"agent_id": "t.const", "params": {"value": 1}}})
    scheduler, execution_id, follow_up = _start(database, registry, dag)
    task = follow_up.dispatches[0].task_id
    assert _run_once(scheduler, scheduler.claim(execution_id, "only", task)).finalize is True
    again = scheduler.claim(execution_id, "only", task)
    assert again.follow_up.finalize is True
    finalize_execution(database, execution_id)
    assert scheduler.claim(execution_id, "only", task).follow_up.finalize is False


def test_second_delivery_writes_nothing(database: Database, registry: AgentRegistry) -> None:
    scheduler, execution_id, follow_up = _start(database, registry, _dag(registry, DIAMOND))
    task_a = follow_up.dispatches[0].task_id
    first = scheduler.claim(execution_id, "a", task_a)
    # A duplicate message arrives while the first is running: same task id.
    second = scheduler.claim(execution_id, "a", task_a)
    assert first.run and second.run
    _run_once(scheduler, first)
    duplicate = _run_once(scheduler, second)
    assert duplicate.dispatches == []
    with database.connect() as conn:
        checkpoints = conn.execute(text("SELECT count(*) FROM dag_checkpoints WHERE execution_id = :e"),
                                   {"e": execution_id}).scalar_one()
        provenance = conn.execute(text("SELECT count(*) FROM execution_provenance WHERE execution_id = :e"),
                                  {"e": execution_id}).scalar_one()
    assert checkpoints == 1
    assert provenance == 1


def test_stale_task_id_is_ignored(database: Database, registry: AgentRegistry) -> None:
    scheduler, execution_id, _ = _start(database, registry, _dag(registry, DIAMOND))
    claim = scheduler.claim(execution_id, "a", "not-the-queued-task-id")
    assert claim.run is False
    assert _statuses(database, execution_id)["a"] == "queued"


def test_max_parallel_nodes_limits_queue(database: Database, registry: AgentRegistry) -> None:
    nodes = {f"n{i}": {"agent_id": "t.const", "params": {"value": i}} for i in range(5)}
    scheduler, execution_id, follow_up = _start(database, registry, _dag(registry, nodes, max_parallel_nodes=2))
    assert [d.node_id for d in follow_up.dispatches] == ["n0", "n1"]
    assert _statuses(database, execution_id)["n4"] == "ready"
    after = _run_once(scheduler, scheduler.claim(execution_id, "n0", follow_up.dispatches[0].task_id))
    assert [d.node_id for d in after.dispatches] == ["n2"]


def test_retry_then_failure_under_fail_fast(database: Database, registry: AgentRegistry) -> None:
    nodes = {
        "a": {"agent_id": "t.const", "params": {"value": 1},
              "retry_policy": {"max_retries": 1, "strategy": "fixed", "base_delay": 0.5, "jitter": False}},
        "b": {"agent_id": "t.const", "params": {"value": 2}},
        "c": {"agent_id": "t.add", "depends_on": ["a"], "input_mapping": {"a": "results.a"}},
    }
    scheduler, execution_id, follow_up = _start(database, registry, _dag(registry, nodes, max_parallel_nodes=1))
    task_a = follow_up.dispatches[0].task_id

    first = scheduler.claim(execution_id, "a", task_a)
    decision = scheduler.record_failure(first, "RuntimeError: boom")
    assert isinstance(decision, RetryDecision)
    assert decision.delay == 0.5
    assert _statuses(database, execution_id)["a"] == "retrying"

    second = scheduler.claim(execution_id, "a", task_a)
    assert second.attempt == 2
    outcome = scheduler.record_failure(second, "RuntimeError: boom again")
    assert isinstance(outcome, FollowUp)
    assert outcome.finalize is True
    assert _statuses(database, execution_id) == {"a": "failed", "b": "skipped", "c": "skipped"}

    result = finalize_execution(database, execution_id)
    assert result.status == "failed"
    assert "node 'a' failed: RuntimeError: boom again" in (result.error or "")
    assert result.chain_valid is True


def test_finalize_twice_changes_nothing(database: Database, registry: AgentRegistry) -> None:
    dag = _dag(registry, {"only": {"agent_id": "t.const", "params": {"value": 1}}})
    scheduler, execution_id, follow_up = _start(database, registry, dag)
    _drain(scheduler, follow_up)
    assert finalize_execution(database, execution_id).changed is True
    assert finalize_execution(database, execution_id).changed is False


def test_same_input_same_chain_hash(database: Database, registry: AgentRegistry) -> None:
    dag = _dag(registry, DIAMOND)
    hashes = []
    for _ in range(2):
        scheduler, execution_id, follow_up = _start(database, registry, dag)
        _drain(scheduler, follow_up)
        hashes.append(finalize_execution(database, execution_id).provenance_chain_hash)
    assert hashes[0] == hashes[1]


def test_tampered_output_breaks_chain(database: Database, registry: AgentRegistry) -> None:
    scheduler, execution_id, follow_up = _start(database, registry, _dag(registry, DIAMOND))
    _drain(scheduler, follow_up)
    finalize_execution(database, execution_id)
    database.transaction(lambda conn: conn.execute(text(
        "UPDATE dag_checkpoints SET outputs = :v WHERE execution_id = :e AND node_id = 'b'"),
        {"v": "2.5", "e": execution_id}))
    report = verify_execution(database, execution_id)
    assert report.chain_valid is False
    broken = {node.node_id: node.reasons for node in report.nodes if not node.valid}
    assert list(broken) == ["b"]
    assert "output altered" in broken["b"][0]


@pytest.mark.parametrize(("on_timeout", "expected"), [("fail", "failed"), ("skip", "skipped"), ("retry", "retrying")])
def test_timeout_follows_on_timeout(database: Database, registry: AgentRegistry, on_timeout: str, expected: str) -> None:
    nodes = {"slow": {"agent_id": "t.const", "params": {"value": 1},
                      "retry_policy": {"max_retries": 1, "strategy": "fixed", "base_delay": 0.0},
                      "timeout_policy": {"timeout_seconds": 5, "on_timeout": on_timeout}}}
    scheduler, execution_id, follow_up = _start(database, registry, _dag(registry, nodes))
    claim = scheduler.claim(execution_id, "slow", follow_up.dispatches[0].task_id)
    outcome = scheduler.record_failure(claim, "timed out after 5s", timed_out=True)
    assert isinstance(outcome, RetryDecision) == (on_timeout == "retry")
    assert _statuses(database, execution_id)["slow"] == expected


def test_node_on_failure_skip_keeps_execution_completed(database: Database, registry: AgentRegistry) -> None:
    nodes = {
        "optional": {"agent_id": "t.const", "params": {"value": 1}, "on_failure": "skip"},
        "after": {"agent_id": "t.add", "depends_on": ["optional"], "input_mapping": {"o": "results.optional"}},
    }
    scheduler, execution_id, follow_up = _start(database, registry, _dag(registry, nodes))
    claim = scheduler.claim(execution_id, "optional", follow_up.dispatches[0].task_id)
    outcome = scheduler.record_failure(claim, "ValueError: no data", retryable=False)
    assert isinstance(outcome, FollowUp)
    assert outcome.finalize is True
    assert _statuses(database, execution_id) == {"optional": "skipped", "after": "skipped"}
    result = finalize_execution(database, execution_id)
    assert result.status == "completed"
    assert result.chain_valid is True


def test_time_limits_in_dispatch(database: Database, registry: AgentRegistry) -> None:
    nodes = {"n": {"agent_id": "t.const", "params": {"value": 1}, "timeout_policy": {"timeout_seconds": 7}}}
    register_dag(database, _dag(registry, nodes), replace=True)
    scheduler = Scheduler(database, registry, hard_timeout_grace=3.0)
    _, follow_up = scheduler.create_execution(_dag(registry, nodes), {})
    dispatch = follow_up.dispatches[0]
    assert dispatch.soft_time_limit == 7.0
    assert dispatch.time_limit == 10.0


def test_long_chain_below_failure_is_skipped(database: Database, registry: AgentRegistry) -> None:
    length = 600
    nodes: dict[str, Any] = {"n0000": {"agent_id": "t.const", "params": {"value": 1}}}
    for index in range(1, length):
        nodes[f"n{index:04d}"] = {"agent_id": "t.add", "depends_on": [f"n{index - 1:04d}"]}
    scheduler, execution_id, follow_up = _start(database, registry, _dag(registry, nodes))
    claim = scheduler.claim(execution_id, "n0000", follow_up.dispatches[0].task_id)
    outcome = scheduler.record_failure(claim, "ValueError: bad", retryable=False)
    assert isinstance(outcome, FollowUp)
    assert outcome.finalize is True
    statuses = _statuses(database, execution_id)
    assert statuses.pop("n0000") == "failed"
    assert set(statuses.values()) == {"skipped"}
    assert finalize_execution(database, execution_id).chain_valid is True


def test_lost_worker_redeliveries_are_bounded(database: Database, registry: AgentRegistry) -> None:
    nodes = {"a": {"agent_id": "t.const", "params": {"value": 1}},
             "b": {"agent_id": "t.add", "depends_on": ["a"], "input_mapping": {"a": "results.a"}}}
    scheduler, execution_id, follow_up = _start(database, registry, _dag(registry, nodes))
    task = follow_up.dispatches[0].task_id
    claims = [scheduler.claim(execution_id, "a", task) for _ in range(3)]
    assert [claim.attempt for claim in claims] == [1, 2, 3]
    # The fourth delivery after three lost pool processes fails the node.
    last = scheduler.claim(execution_id, "a", task)
    assert last.run is False
    assert last.follow_up.finalize is True
    assert _statuses(database, execution_id) == {"a": "failed", "b": "skipped"}
    result = finalize_execution(database, execution_id)
    assert "worker process lost during 3 attempts" in (result.error or "")


def test_error_text_is_made_storable(database: Database, registry: AgentRegistry) -> None:
    dag = _dag(registry, {"a": {"agent_id": "t.const", "params": {"value": 1}}})
    scheduler, execution_id, follow_up = _start(database, registry, dag)
    claim = scheduler.claim(execution_id, "a", follow_up.dispatches[0].task_id)
    scheduler.record_failure(claim, "bad \x00 byte \ud800 and " + "x" * 10_000, retryable=False)
    with database.connect() as conn:
        error = conn.execute(text("SELECT error FROM execution_nodes WHERE execution_id = :e"),
                             {"e": execution_id}).scalar_one()
    assert error.startswith("bad \\x00 byte \\ud800 and xxx")
    assert error.endswith("more characters)")
    assert len(error) < 4100


def test_duplicate_while_holder_alive_is_ignored(database: Database, registry: AgentRegistry) -> None:
    scheduler, execution_id, follow_up = _start(database, registry, _dag(registry, DIAMOND))
    task = follow_up.dispatches[0].task_id
    first = scheduler.claim(execution_id, "a", task, worker="w1 pid=1 host=h", holder_gone=lambda holder: False)
    duplicate = scheduler.claim(execution_id, "a", task, worker="w2 pid=2 host=h", holder_gone=lambda holder: False)
    assert first.run is True
    assert duplicate.run is False
    redelivered = scheduler.claim(execution_id, "a", task, worker="w3 pid=3 host=h", holder_gone=lambda holder: True)
    assert redelivered.run is True
    assert redelivered.attempt == 2
