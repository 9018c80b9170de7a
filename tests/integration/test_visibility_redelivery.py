"""A worker whose main process dies mid-node loses nothing: Redis's visibility timeout brings the message back.

When only a pool process dies, the worker's main process rejects the message
(``reject_on_worker_lost``) and it returns to the queue at once. When the main
process dies too, no process rejects or acknowledges the message. kombu's
Redis transport keeps it in its ``unacked`` hash, and a consumer puts it back
in the queue once it has been unacknowledged for longer than the visibility
timeout. kombu 5.7.0 (``kombu/transport/redis.py``) sweeps for such messages
when a worker starts consuming, then only every
``unacked_restore_interval * unacked_restore_throttle`` seconds (10 * 10 by
default, and this project sets neither option). So the test starts the
second worker after the timeout has passed, and that worker's first sweep
restores the message.

The test runs on a private Redis because the ``unacked`` hash is shared by
every queue of a Redis database, and a worker with a 10-second visibility
timeout on the shared server would send back other tests' long-running
messages.

No beat runs here, so the stuck-execution check runs only once, called by the
test just before the second worker starts. At that moment the killed
worker's last heartbeat is at most about 13 seconds old (the 10-second
visibility timeout plus up to one 2-second heartbeat interval). That is well
under the 60-second lost-after time that the workers use, so the check leaves
the execution running. With a lost-after time shorter than the visibility
timeout, a check that ran before the redelivery would mark the execution
failed, and the redelivered message would then be ignored because the
execution has finished.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from orchestrator.errors import ExecutionError
from orchestrator.stuck import detect_stuck_executions
from tests.integration.conftest import Stack
from tests.integration.servers import PrivateRedis
from workers.app import runtime_of

pytestmark = pytest.mark.integration

T = TypeVar("T")
HOST = socket.gethostname()
# The smallest visibility timeout that the settings accept.
VISIBILITY_TIMEOUT_SECONDS = 10.0
WORKER_ENV = {
    "GL_ORCHESTRATOR_BROKER_VISIBILITY_TIMEOUT_SECONDS": f"{VISIBILITY_TIMEOUT_SECONDS:g}",
    "GL_ORCHESTRATOR_HEARTBEAT_INTERVAL_SECONDS": "2",
    "GL_ORCHESTRATOR_WORKER_LOST_AFTER_SECONDS": "60",
}
# How long b's agent sleeps on each attempt.
NODE_SECONDS = 3
# A healthy run ends about 3 s after the second worker is ready, because b sleeps again.
FINISH_TIMEOUT = 20.0


def _wait_for(check: Callable[[], T | None], timeout: float, what: str) -> T:
    """Poll ``check`` every 50 ms until it returns a true value, and return that value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")


def _counted(folder: Path, name: str, seconds: float = 0, **fields: Any) -> dict[str, Any]:
    """Return a ``test.counted_sleep`` node that counts its calls in ``<name>.calls``.

    A node that sleeps also writes its pid to ``<name>.pid`` when it starts.
    """
    params: dict[str, Any] = {"counter_file": str(folder / f"{name}.calls"), "seconds": seconds}
    if seconds:
        params["marker_file"] = str(folder / f"{name}.pid")
    return {"agent_id": "test.counted_sleep", "params": params, **fields}


def _chain(folder: Path) -> dict[str, Any]:
    """Return the DAG a -> b -> c, where b sleeps ``NODE_SECONDS``."""
    return {
        "dag_id": "main-process-sigkill",
        "nodes": {
            "a": _counted(folder, "a"),
            "b": _counted(folder, "b", NODE_SECONDS, depends_on=["a"], input_mapping={"a": "results.a"}),
            "c": _counted(folder, "c", depends_on=["b"], input_mapping={"b": "results.b"}),
        },
    }


def _pid_in(marker: Path, timeout: float = 10) -> int:
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


def _node(stack: Stack, execution_id: str, node_id: str) -> dict[str, Any]:
    return stack.rows("SELECT status, attempt_count, task_id, worker FROM execution_nodes "
                      "WHERE execution_id = :e AND node_id = :n", e=execution_id, n=node_id)[0]


def _counts(stack: Stack, execution_id: str, table: str) -> dict[str, int]:
    rows = stack.rows(f"SELECT node_id, count(*) AS n FROM {table} WHERE execution_id = :e GROUP BY node_id",
                      e=execution_id)
    return {row["node_id"]: row["n"] for row in rows}


def _traces(stack: Stack, execution_id: str, node_id: str) -> list[dict[str, Any]]:
    return stack.rows("SELECT attempt, status, worker FROM node_traces "
                      "WHERE execution_id = :e AND node_id = :n ORDER BY attempt, id", e=execution_id, n=node_id)


def _finish(stack: Stack, execution_id: str) -> dict[str, Any]:
    """Wait for the execution to end, or fail with the state of the execution and every node."""
    try:
        return stack.wait_until_finished(execution_id, timeout=FINISH_TIMEOUT)
    except ExecutionError:
        pass
    execution = stack.rows("SELECT status, error FROM dag_executions WHERE execution_id = :e", e=execution_id)
    nodes = stack.rows(
        "SELECT node_id, status, attempt_count, task_id, worker FROM execution_nodes "
        "WHERE execution_id = :e ORDER BY ordinal", e=execution_id)
    pytest.fail(f"execution {execution_id} did not end within {FINISH_TIMEOUT:g}s: execution={execution} "
                f"nodes={nodes}", pytrace=False)


def _process_stat(pid: int) -> tuple[str, int, int] | None:
    """Return the state letter, parent pid and process group of ``pid`` from ``/proc``, or None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    # The command name in brackets may contain spaces, so the fields start after its last ')'.
    state, parent, group = stat.rsplit(")", 1)[1].split()[:3]
    return state, int(parent), int(group)


def _group_members(group: int) -> dict[int, str]:
    """Return the pid and state letter of every process in process group ``group``, zombies included."""
    members = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        stat = _process_stat(int(entry.name))
        if stat is not None and stat[2] == group:
            members[int(entry.name)] = stat[0]
    return members


def _unacked(server: PrivateRedis) -> dict[str, float]:
    """Return the task id and delivery time (Unix seconds) of every message that kombu keeps as unacknowledged."""
    client = server.client()
    try:
        payloads = client.hgetall("unacked")
        delivered_at = dict(client.zrange("unacked_index", 0, -1, withscores=True))
    finally:
        client.close()
    # kombu stores [message body, exchange, routing key]. Celery puts the task id in the body's headers.
    return {json.loads(payload)[0]["headers"]["id"]: delivered_at[tag] for tag, payload in payloads.items()}


def test_main_process_sigkill_redelivers_node(
    postgres_url: str,
    private_redis: Callable[..., PrivateRedis],
    make_stack: Callable[[str, str], Stack],
    tmp_path: Path,
) -> None:
    server = private_redis(appendonly=False)
    stack = make_stack(postgres_url, server.url)
    stack.env.update(WORKER_ENV)
    w1 = stack.start_worker("w1", concurrency=2)
    execution_id = stack.submit(_chain(tmp_path))

    # Kill w1 while b's agent sleeps in one of its pool processes.
    _wait_for(lambda: _node(stack, execution_id, "b")["status"] == "running", 30, "b to be claimed")
    pool_pid = _pid_in(tmp_path / "b.pid")
    pool_stat = _process_stat(pool_pid)
    assert pool_stat is not None, f"b's pool process {pool_pid} ended before the kill"
    assert pool_stat[1] == w1.pid, "b must run in a pool process of w1"
    assert _node(stack, execution_id, "b")["worker"].startswith(f"w1@{HOST} pid={pool_pid} ")
    task_id = _node(stack, execution_id, "b")["task_id"]
    group = os.getpgid(w1.pid)
    assert group == w1.pid, "start_worker must put the worker in its own session and process group"
    killed = _group_members(group)
    assert pool_pid in killed

    os.killpg(group, signal.SIGKILL)
    assert w1.wait(timeout=10) == -signal.SIGKILL
    # The orphaned pool processes stay zombies until init reaps them.
    # os.kill(pid, 0) counts a zombie as alive, so a claim made before then
    # would ignore the redelivered message as a duplicate.
    _wait_for(lambda: not _group_members(group), 10, f"every process of w1's group {killed} to be gone")

    # No process rejected the message, so it waits unacknowledged outside the queue.
    assert _node(stack, execution_id, "b")["status"] == "running"
    assert _calls(tmp_path / "b.calls") == 1
    assert server.queue_length(stack.queue) == 0
    unacked = _unacked(server)
    assert list(unacked) == [task_id]
    visible_at = unacked[task_id] + VISIBILITY_TIMEOUT_SECONDS
    time.sleep(max(0.0, visible_at - time.time()) + 0.5)
    assert server.queue_length(stack.queue) == 0, "only a consumer's sweep puts the message back"

    runtime = runtime_of(stack.celery_app())
    check = detect_stuck_executions(runtime.scheduler,
                                    worker_lost_after_seconds=runtime.settings.worker_lost_after_seconds)
    assert check.checked == 1
    assert check.marked == ()

    stack.start_worker("w2", concurrency=1)
    result = _finish(stack, execution_id)

    assert result["status"] == "completed", result
    assert result["chain_valid"] is True
    assert _counts(stack, execution_id, "dag_checkpoints") == {"a": 1, "b": 1, "c": 1}
    assert _counts(stack, execution_id, "execution_provenance") == {"a": 1, "b": 1, "c": 1}
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
    assert f"node delivered again after a lost worker execution_id={execution_id} node_id=b attempt=2" in (
        stack.worker_log("w2"))
    _wait_for(lambda: not _unacked(server), 10, "w2 to acknowledge every message")
    assert not _group_members(group)
