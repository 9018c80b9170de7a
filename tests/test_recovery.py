"""Sending again the messages of nodes left queued, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from orchestrator.agents import AgentRegistry
from orchestrator.database import Database
from orchestrator.finalizer import finalize_execution
from orchestrator.recovery import stale_follow_ups
from orchestrator.scheduler import Scheduler
from tests.test_scheduler import DIAMOND, _dag, _run_once, _start
from tests.test_scheduler import registry  # noqa: F401 - a fixture


def test_stale_queued_nodes_sent_again(database: Database, registry: AgentRegistry) -> None:
    scheduler, execution_id, follow_up = _start(database, registry, _dag(registry, DIAMOND))
    # The first message is lost: it is never sent.
    later = datetime.now(timezone.utc) + timedelta(minutes=10)
    resent = stale_follow_ups(scheduler, timedelta(minutes=5), now=later)
    assert [(f.execution_id, [(d.node_id, d.task_id) for d in f.dispatches]) for f in resent] == [
        (execution_id, [("a", follow_up.dispatches[0].task_id)])]
    assert stale_follow_ups(scheduler, timedelta(minutes=5), now=later) == []

    claim = scheduler.claim(execution_id, "a", resent[0].dispatches[0].task_id)
    assert claim.run is True


def test_fresh_queued_nodes_left_alone(database: Database, registry: AgentRegistry) -> None:
    _start(database, registry, _dag(registry, DIAMOND))
    assert stale_follow_ups(Scheduler(database, registry), timedelta(minutes=5)) == []


def test_lost_finalizer_sent_again(database: Database, registry: AgentRegistry) -> None:
    dag = _dag(registry, {"only": {"agent_id": "t.const", "params": {"value": 1}}})
    scheduler, execution_id, follow_up = _start(database, registry, dag)
    done = _run_once(scheduler, scheduler.claim(execution_id, "only", follow_up.dispatches[0].task_id))
    assert done.finalize is True
    later = datetime.now(timezone.utc) + timedelta(minutes=10)
    resent = stale_follow_ups(scheduler, timedelta(minutes=5), now=later)
    assert [(f.execution_id, f.finalize, f.dispatches) for f in resent] == [(execution_id, True, [])]
    finalize_execution(database, execution_id)
    assert stale_follow_ups(scheduler, timedelta(minutes=5), now=later) == []
