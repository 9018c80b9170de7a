"""Helpers of the node task that tell a lost worker from a duplicate message."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from workers.tasks import holder_gone, worker_identity


def test_identity_names_process_and_host() -> None:
    identity = worker_identity("w1@example")
    assert identity == f"w1@example pid={os.getpid()} host={socket.gethostname()}"


def test_live_holder_on_this_host_is_not_gone() -> None:
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        holder = f"w1@x pid={sleeper.pid} host={socket.gethostname()}"
        assert holder_gone(holder, redelivered=True) is False
    finally:
        sleeper.kill()
        sleeper.wait()
    assert holder_gone(holder, redelivered=False) is True


def test_unreaped_holder_is_gone() -> None:
    # A pool process killed with its main process stays a zombie until
    # something reaps it, and os.kill(pid, 0) still succeeds on a zombie.
    exited = subprocess.Popen([sys.executable, "-c", "pass"])
    holder = f"w1@x pid={exited.pid} host={socket.gethostname()}"
    try:
        for _ in range(200):
            with open(f"/proc/{exited.pid}/stat", encoding="ascii") as stat:
                if stat.read().rsplit(")", 1)[1].split()[0] == "Z":
                    break
            time.sleep(0.05)
        os.kill(exited.pid, 0)  # still there, unreaped
        assert holder_gone(holder, redelivered=False) is True
    finally:
        exited.wait()


def test_own_process_as_holder_is_gone() -> None:
    assert holder_gone(worker_identity("w1@x"), redelivered=False) is True


def test_other_host_follows_redelivered_flag() -> None:
    holder = "w2@elsewhere pid=4242 host=some-other-host-name"
    assert holder_gone(holder, redelivered=True) is True
    assert holder_gone(holder, redelivered=False) is False


def test_unknown_holder_follows_redelivered_flag() -> None:
    assert holder_gone(None, redelivered=True) is True
    assert holder_gone("old-format-name", redelivered=False) is False


def test_rejected_checkpoint_write_fails_node_with_reason(tmp_path: Path, sqlite_url: str) -> None:
    from orchestrator.agents import AgentRegistry
    from orchestrator.checkpoints import FileCheckpointStore
    from orchestrator.dag import parse_dag
    from orchestrator.database import Database
    from orchestrator.errors import CheckpointStoreError
    from orchestrator.repository import get_execution, register_dag
    from orchestrator.scheduler import FollowUp, Scheduler
    from workers.tasks import _attempt

    store = FileCheckpointStore(tmp_path / "checkpoints")
    db = Database(sqlite_url, checkpoints=store)
    registry = AgentRegistry()
    registry.register("t.const", "1.0.0", lambda inputs, params: 1)
    dag = parse_dag({"dag_id": "one", "nodes": {"a": {"agent_id": "t.const"}}}, registry)
    register_dag(db, dag, replace=True)
    scheduler = Scheduler(db, registry)
    execution_id, follow_up = scheduler.create_execution(dag, {})
    [dispatch] = follow_up.dispatches
    claim = scheduler.claim(execution_id, "a", dispatch.task_id)

    def reject(key: object, canonical: bytes) -> None:
        raise CheckpointStoreError("checkpoint path '/elsewhere' would leave the checkpoint folder")

    store.put_payload = reject  # type: ignore[method-assign]
    try:
        outcome = _attempt(scheduler, claim)
        execution = get_execution(db, execution_id)
    finally:
        db.dispose()

    assert isinstance(outcome, FollowUp)
    [node] = execution["nodes"]
    assert node["status"] == "failed"
    assert node["error"].startswith("checkpoint write failed: checkpoint path '/elsewhere' would leave")
