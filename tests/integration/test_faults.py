"""Faults during an execution: killed and stopped workers, duplicate messages, restarted servers.

Every test runs real worker processes. Tests that stop or restart Redis or
PostgreSQL start private servers on free loopback ports, because the shared
services serve every other test. A test whose fault leaves an execution
hanging fails after a bounded wait and prints the state of every node.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector

from orchestrator.errors import ExecutionError
from orchestrator.resume import ExecutionConflictError, cancel_execution, resume_execution
from tests.integration.conftest import Stack
from tests.integration.servers import PrivatePostgres, PrivateRedis
from workers.app import NODE_TASK, runtime_of
from workers.dispatch import send_follow_up

pytestmark = pytest.mark.integration

T = TypeVar("T")
HOST = socket.gethostname()
# How long a test waits for an execution to end once the fault is over. A
# healthy run needs under 5 s here, so a longer wait only delays the report
# of an execution that hangs.
FINISH_TIMEOUT = 15.0


# Settings under which beat's stuck-execution check runs every second and
# sends again the message of any node queued for more than 2 seconds.
RECOVERY_ENV = {
    "GL_ORCHESTRATOR_STUCK_CHECK_INTERVAL_SECONDS": "1",
    "GL_ORCHESTRATOR_REQUEUE_AFTER_SECONDS": "2",
}

def _wait_for(check: Callable[[], T | None], timeout: float, what: str) -> T:
    """Poll ``check`` every 50 ms until it returns a true value, and return that value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")


def _pid_in(marker: Path, timeout: float = 30) -> int:
    """Wait for the pid that a ``test.counted_sleep`` agent writes when it starts."""

    def read() -> int | None:
        try:
            text = marker.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        return int(text) if text.isdigit() else None

    return _wait_for(read, timeout, f"an agent to write its pid to {marker}")


def _calls(counter: Path) -> int:
    return int(counter.read_text(encoding="utf-8")) if counter.exists() else 0


def _counted(folder: Path, name: str, seconds: float = 0, **fields: Any) -> dict[str, Any]:
    """Return a ``test.counted_sleep`` node that counts its calls in ``<name>.calls``.

    A node that sleeps also writes its pid to ``<name>.pid`` when it starts.
    """
    params: dict[str, Any] = {"counter_file": str(folder / f"{name}.calls"), "seconds": seconds}
    if seconds:
        params["marker_file"] = str(folder / f"{name}.pid")
    return {"agent_id": "test.counted_sleep", "params": params, **fields}


def _chain(dag_id: str, folder: Path, *, seconds: float) -> dict[str, Any]:
    """Return the DAG a -> b -> c, where b sleeps ``seconds``."""
    return {
        "dag_id": dag_id,
        "nodes": {
            "a": _counted(folder, "a"),
            "b": _counted(folder, "b", seconds, depends_on=["a"], input_mapping={"a": "results.a"}),
            "c": _counted(folder, "c", depends_on=["b"], input_mapping={"b": "results.b"}),
        },
    }


def _pair(folder: Path) -> dict[str, Any]:
    """Return the DAG a -> b, where a sleeps 1 s."""
    return {
        "dag_id": "node-pair",
        "nodes": {
            "a": _counted(folder, "a", 1),
            "b": _counted(folder, "b", depends_on=["a"], input_mapping={"a": "results.a"}),
        },
    }


def _finish(stack: Stack, execution_id: str, timeout: float = FINISH_TIMEOUT) -> dict[str, Any]:
    """Wait for the execution to end, or fail with the state of the execution and every node after ``timeout``."""
    try:
        return stack.wait_until_finished(execution_id, timeout=timeout)
    except ExecutionError:
        pass
    execution = stack.rows("SELECT status, error FROM dag_executions WHERE execution_id = :e", e=execution_id)
    nodes = stack.rows(
        "SELECT node_id, status, attempt_count, task_id, worker FROM execution_nodes "
        "WHERE execution_id = :e ORDER BY ordinal", e=execution_id)
    pytest.fail(f"execution {execution_id} did not end within {timeout:g}s: execution={execution} nodes={nodes}",
                pytrace=False)


def _counts(stack: Stack, execution_id: str, table: str) -> dict[str, int]:
    rows = stack.rows(f"SELECT node_id, count(*) AS n FROM {table} WHERE execution_id = :e GROUP BY node_id",
                      e=execution_id)
    return {row["node_id"]: row["n"] for row in rows}


def _traces(stack: Stack, execution_id: str, node_id: str) -> list[dict[str, Any]]:
    return stack.rows("SELECT attempt, status, worker, started_at FROM node_traces "
                      "WHERE execution_id = :e AND node_id = :n ORDER BY attempt, id", e=execution_id, n=node_id)


def _node(stack: Stack, execution_id: str, node_id: str) -> dict[str, Any]:
    return stack.rows("SELECT status, attempt_count, task_id, worker FROM execution_nodes "
                      "WHERE execution_id = :e AND node_id = :n", e=execution_id, n=node_id)[0]


def _queue_length(stack: Stack) -> int:
    client = redis.Redis.from_url(stack.env["GL_ORCHESTRATOR_BROKER_URL"])
    try:
        return int(client.llen(stack.queue))
    finally:
        client.close()


def _stop_consuming(stack: Stack, worker_name: str) -> None:
    """Make one worker stop taking messages from the stack's queue. The task it runs goes on."""
    replies = stack.celery_app().control.cancel_consumer(
        stack.queue, destination=[f"{worker_name}@{HOST}"], reply=True, timeout=5)
    assert replies, f"worker {worker_name} did not answer cancel_consumer"


def _task_ended(log: str, task_id: str) -> bool:
    """Return whether Celery logged the end of the task: success, unexpected error or retry."""
    prefix = f"Task {NODE_TASK}[{task_id}] "
    return any(f"{prefix}{outcome}" in log for outcome in ("succeeded", "raised unexpected", "retry:"))


def _assert_completed_once_each(stack: Stack, result: dict[str, Any], node_ids: set[str]) -> None:
    execution_id = result["execution_id"]
    assert result["status"] == "completed", result
    assert result["chain_valid"] is True
    assert _counts(stack, execution_id, "dag_checkpoints") == {node_id: 1 for node_id in node_ids}
    assert _counts(stack, execution_id, "execution_provenance") == {node_id: 1 for node_id in node_ids}


def test_pool_process_sigkill_mid_node(stack: Stack, tmp_path: Path) -> None:
    w1 = stack.start_worker("w1", concurrency=1)
    execution_id = stack.submit(_chain("sigkill", tmp_path, seconds=3))
    pool_pid = _pid_in(tmp_path / "b.pid")
    assert pool_pid != w1.pid, "the agent must run in a pool process, not in the worker's main process"

    # w1 stops taking messages first, so only w2 can receive the message
    # that comes back when the pool process dies.
    _stop_consuming(stack, "w1")
    os.kill(pool_pid, signal.SIGKILL)
    _wait_for(lambda: _queue_length(stack) == 1, 10,
              "the killed attempt's message to return to the queue (reject_on_worker_lost)")
    assert stack.stop_worker(w1) == 0
    stack.start_worker("w2", concurrency=1)
    result = _finish(stack, execution_id)

    _assert_completed_once_each(stack, result, {"a", "b", "c"})
    assert result["nodes"]["b"]["attempt_count"] == 2
    traces = _traces(stack, execution_id, "b")
    assert [(trace["attempt"], trace["status"]) for trace in traces] == [(1, "lost"), (2, "completed")]
    assert traces[0]["worker"].startswith(f"w1@{HOST} pid={pool_pid} ")
    assert traces[1]["worker"].startswith(f"w2@{HOST} ")
    checkpoint = stack.rows("SELECT attempt_count FROM dag_checkpoints WHERE execution_id = :e AND node_id = 'b'",
                            e=execution_id)
    assert checkpoint == [{"attempt_count": 2}]
    assert _calls(tmp_path / "a.calls") == 1
    assert _calls(tmp_path / "b.calls") == 2
    assert _calls(tmp_path / "c.calls") == 1


def _completed_executions_metric(metrics_dir: Path, dag_id: str) -> float | None:
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(metrics_dir))
    return registry.get_sample_value("gl_orchestrator_dag_executions_total",
                                     {"dag_id": dag_id, "status": "completed"})


def test_duplicate_message_runs_node_once(stack: Stack, tmp_path: Path) -> None:
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    metrics_env = {"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    stack.start_worker("w1", concurrency=1, extra_env=metrics_env)
    stack.start_worker("w2", concurrency=1, extra_env=metrics_env)
    execution_id = stack.submit(_chain("duplicate", tmp_path, seconds=2))
    _pid_in(tmp_path / "b.pid")

    node = _node(stack, execution_id, "b")
    assert node["status"] == "running"
    holder = node["worker"].split("@", 1)[0]
    other = "w2" if holder == "w1" else "w1"
    # The same message again: same task id, arguments and time limits. Each
    # worker has one pool process and reserves one message, so the copy goes
    # to the idle worker while the first copy runs.
    stack.celery_app().tasks[NODE_TASK].apply_async(
        (execution_id, "b"), task_id=node["task_id"], soft_time_limit=3600, time_limit=3602)
    _wait_for(lambda: "duplicate node message ignored" in stack.worker_log(other), 10,
              f"worker {other} to receive the duplicate while {holder} runs the first copy")
    assert _node(stack, execution_id, "b")["status"] == "running"
    result = _finish(stack, execution_id)

    _assert_completed_once_each(stack, result, {"a", "b", "c"})
    assert result["nodes"]["b"]["attempt_count"] == 1
    assert [(trace["attempt"], trace["status"]) for trace in _traces(stack, execution_id, "b")] == [(1, "completed")]
    assert _calls(tmp_path / "b.calls") == 1
    assert _calls(tmp_path / "c.calls") == 1
    assert stack.all_worker_logs().count(f"execution completed execution_id={execution_id} ") == 1
    assert _completed_executions_metric(metrics_dir, "duplicate") == 1.0


def _park_b_in_redis(stack: Stack, worker: subprocess.Popen[bytes], execution_id: str, folder: Path) -> None:
    """Stop the only worker with a warm shutdown while a runs, so b's message waits in Redis with no consumer."""
    _pid_in(folder / "a.pid")
    assert stack.stop_worker(worker) == 0
    assert _node(stack, execution_id, "a")["status"] == "completed"
    assert _node(stack, execution_id, "b")["status"] == "queued"
    assert _queue_length(stack) == 1


@pytest.mark.parametrize("appendonly", [True, False], ids=["appendonly", "no-persistence"])
def test_redis_restart_with_node_message_queued(
    appendonly: bool,
    postgres_url: str,
    private_redis: Callable[..., PrivateRedis],
    make_stack: Callable[[str, str], Stack],
    tmp_path: Path,
) -> None:
    server = private_redis(appendonly=appendonly)
    stack = make_stack(postgres_url, server.url)
    stack.env.update(RECOVERY_ENV)
    w1 = stack.start_worker("w1", concurrency=1)
    execution_id = stack.submit(_pair(tmp_path))
    _park_b_in_redis(stack, w1, execution_id, tmp_path)

    server.restart()
    assert server.queue_length(stack.queue) == (1 if appendonly else 0)
    stack.start_worker("w2", concurrency=1)
    # Without persistence b's message is gone; the stuck-execution check that
    # beat schedules sends it again once it has been queued too long.
    stack.start_beat()
    result = _finish(stack, execution_id)

    _assert_completed_once_each(stack, result, {"a", "b"})
    assert _calls(tmp_path / "a.calls") == 1
    assert _calls(tmp_path / "b.calls") == 1


def test_lost_node_message_recovered_by_resume(
    postgres_url: str,
    private_redis: Callable[..., PrivateRedis],
    make_stack: Callable[[str, str], Stack],
    tmp_path: Path,
) -> None:
    server = private_redis(appendonly=False)
    stack = make_stack(postgres_url, server.url)
    w1 = stack.start_worker("w1", concurrency=1)
    execution_id = stack.submit(_pair(tmp_path))
    _park_b_in_redis(stack, w1, execution_id, tmp_path)
    server.restart()
    assert server.queue_length(stack.queue) == 0
    stack.start_worker("w2", concurrency=1)

    app = stack.celery_app()
    scheduler = runtime_of(app).scheduler
    with pytest.raises(ExecutionConflictError, match="is running"):
        resume_execution(scheduler, execution_id)
    cancelled = cancel_execution(scheduler, execution_id)
    assert cancelled.nodes_completed == ["a"]
    report, follow_up = resume_execution(scheduler, execution_id)
    assert report.nodes_skipped == ["a"]
    assert report.nodes_remaining == ["b"]
    send_follow_up(app, follow_up)
    result = _finish(stack, execution_id)

    _assert_completed_once_each(stack, result, {"a", "b"})
    assert _calls(tmp_path / "a.calls") == 1
    assert _calls(tmp_path / "b.calls") == 1


@pytest.mark.parametrize("appendonly", [True, False], ids=["appendonly", "no-persistence"])
def test_redis_restart_while_worker_runs_node(
    appendonly: bool,
    postgres_url: str,
    private_redis: Callable[..., PrivateRedis],
    make_stack: Callable[[str, str], Stack],
    tmp_path: Path,
) -> None:
    server = private_redis(appendonly=appendonly)
    stack = make_stack(postgres_url, server.url)
    stack.start_worker("w1", concurrency=1)
    # One slot: when a ends, it goes to a_hold, whose ordinal is lower than
    # b's. b stays ready, with no message, until a_hold ends after the restart.
    execution_id = stack.submit({
        "dag_id": "redis-restart-running",
        "max_parallel_nodes": 1,
        "nodes": {
            "a": _counted(tmp_path, "a"),
            "a_hold": _counted(tmp_path, "a_hold", 3),
            "b": _counted(tmp_path, "b", depends_on=["a"], input_mapping={"a": "results.a"}),
        },
    })
    _pid_in(tmp_path / "a_hold.pid")
    assert _node(stack, execution_id, "b")["status"] == "ready"
    server.restart()
    result = _finish(stack, execution_id)

    _assert_completed_once_each(stack, result, {"a", "a_hold", "b"})
    assert _calls(tmp_path / "a_hold.calls") == 1
    assert _calls(tmp_path / "b.calls") == 1


def test_redis_outage_when_node_ends(
    postgres_url: str,
    private_redis: Callable[..., PrivateRedis],
    make_stack: Callable[[str, str], Stack],
    tmp_path: Path,
) -> None:
    # A durable Redis loses nothing itself, so only the outage at the moment
    # a's task sends b's message is under test.
    server = private_redis(appendonly=True)
    stack = make_stack(postgres_url, server.url)
    stack.env.update(RECOVERY_ENV)
    stack.start_worker("w1", concurrency=1)
    execution_id = stack.submit(_pair(tmp_path))
    _pid_in(tmp_path / "a.pid")
    task_id = _node(stack, execution_id, "a")["task_id"]

    server.stop()
    _wait_for(lambda: _task_ended(stack.worker_log("w1"), task_id), 90, "a's task to end while Redis is down")
    assert _node(stack, execution_id, "a")["status"] == "completed"
    server.start()
    # The publish of b failed after the commit; the recovery part of the
    # stuck-execution check sends it again.
    stack.start_beat()
    result = _finish(stack, execution_id)

    _assert_completed_once_each(stack, result, {"a", "b"})
    assert _calls(tmp_path / "b.calls") == 1


def test_postgres_restart_during_node(
    private_postgres: PrivatePostgres,
    redis_url: str,
    make_stack: Callable[[str, str], Stack],
    tmp_path: Path,
) -> None:
    stack = make_stack(private_postgres.url, redis_url)
    stack.start_worker("w1", concurrency=2)
    execution_id = stack.submit(_chain("postgres-restart", tmp_path, seconds=3))
    _pid_in(tmp_path / "b.pid")
    restart_began = datetime.now(timezone.utc)
    private_postgres.restart()
    restart_ended = datetime.now(timezone.utc)
    result = _finish(stack, execution_id)

    _assert_completed_once_each(stack, result, {"a", "b", "c"})
    assert result["nodes"]["b"]["attempt_count"] == 1
    assert _traces(stack, execution_id, "b")[0]["started_at"] < restart_began
    recorded = stack.rows("SELECT created_at FROM dag_checkpoints WHERE execution_id = :e AND node_id = 'b'",
                          e=execution_id)[0]["created_at"]
    assert recorded > restart_ended
    assert _calls(tmp_path / "b.calls") == 1
    assert _calls(tmp_path / "c.calls") == 1


def test_postgres_outage_retry_on_other_worker(
    private_postgres: PrivatePostgres,
    redis_url: str,
    make_stack: Callable[[str, str], Stack],
    tmp_path: Path,
) -> None:
    stack = make_stack(private_postgres.url, redis_url)
    stack.start_worker("w1", concurrency=1)
    stack.start_worker("w2", concurrency=1)
    execution_id = stack.submit(_chain("postgres-outage", tmp_path, seconds=2))
    _pid_in(tmp_path / "b.pid")
    holder = _node(stack, execution_id, "b")["worker"].split("@", 1)[0]
    other = "w2" if holder == "w1" else "w1"

    # The worker running b takes no more messages, so the Celery retry that
    # follows the failed record is delivered to the other worker.
    _stop_consuming(stack, holder)
    private_postgres.stop()
    _wait_for(lambda: "node attempt could not be recorded" in stack.worker_log(holder), 30,
              "recording b to fail and be retried through Celery")
    private_postgres.start()
    result = _finish(stack, execution_id)

    _assert_completed_once_each(stack, result, {"a", "b", "c"})
    assert result["nodes"]["b"]["attempt_count"] == 2
    traces = _traces(stack, execution_id, "b")
    assert len(traces) == 2
    assert traces[0]["status"] in {"lost", "failed"}
    assert traces[1]["status"] == "completed"
    assert traces[1]["worker"].startswith(f"{other}@{HOST} ")
    assert _calls(tmp_path / "b.calls") == 2


def test_warm_shutdown_mid_node(stack: Stack, tmp_path: Path) -> None:
    w1 = stack.start_worker("w1", concurrency=1)
    execution_id = stack.submit(_chain("warm-shutdown", tmp_path, seconds=2))
    _pid_in(tmp_path / "b.pid")
    w1.send_signal(signal.SIGTERM)
    stack.start_worker("w2", concurrency=1)
    assert w1.wait(timeout=30) == 0
    result = _finish(stack, execution_id)

    _assert_completed_once_each(stack, result, {"a", "b", "c"})
    assert result["nodes"]["b"]["attempt_count"] == 1
    traces = _traces(stack, execution_id, "b")
    assert [trace["status"] for trace in traces] == ["completed"]
    assert traces[0]["worker"].startswith(f"w1@{HOST} ")
    assert _traces(stack, execution_id, "c")[0]["worker"].startswith(f"w2@{HOST} ")
    assert _calls(tmp_path / "b.calls") == 1
    assert _calls(tmp_path / "c.calls") == 1
    assert "worker: Warm shutdown (MainProcess)" in stack.worker_log("w1")
