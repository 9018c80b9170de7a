"""A worker killed outright is found by its silent heartbeat, and its execution is resumed elsewhere.

Real processes on the shared PostgreSQL and Redis: two workers, beat and the
``orchestrator run`` and ``orchestrator resume`` clients. The settings are
tiny (heartbeat every 1 s, lost after 3 s, a check every 1 s), so the whole
test takes about 20 s. The processes are built here rather than with the
shared ``Stack``, so this test depends on nothing but the root fixtures.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, TypeVar

import pytest
import redis
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine

pytestmark = pytest.mark.integration

T = TypeVar("T")
REPO = Path(__file__).resolve().parents[2]
TEST_AGENTS = REPO / "tests" / "agents_for_tests.py"
HOST = socket.gethostname()

# The node "hold" writes its pid to started_file, then waits until
# release_file exists: the first attempt is still running when its worker
# is killed, and the attempt after the resume returns at once.
HOLD_AGENT = '''
import os
import time
from pathlib import Path

from orchestrator.agents import agent


@agent("stuck.hold", version="1.0.0")
def hold(inputs, params):
    """Write this process's pid to params.started_file, wait for params.release_file, return inputs.a + 1."""
    Path(params["started_file"]).write_text(str(os.getpid()), encoding="utf-8")
    release = Path(params["release_file"])
    deadline = time.monotonic() + 120
    while not release.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return {"total": inputs["a"] + 1}
'''


class Processes:
    """The processes of one test, each in its own session and with its own log file."""

    def __init__(self, env: dict[str, str], folder: Path) -> None:
        self.env = env
        self.folder = folder
        self.started: list[subprocess.Popen[bytes]] = []
        self.logs: list[IO[bytes]] = []

    def start(self, name: str, *args: str, ready: bytes | None = None,
              separate_stdout: bool = False) -> subprocess.Popen[bytes]:
        """Start ``orchestrator ARGS``, logging to ``<name>.log``, and wait for ``ready`` in that log.

        With ``separate_stdout``, standard output goes to ``<name>.out`` and only standard error to the log.
        """
        log = self._open(f"{name}.log")
        if separate_stdout:
            stdout, stderr = self._open(f"{name}.out"), log
        else:
            stdout, stderr = log, subprocess.STDOUT
        process = subprocess.Popen([sys.executable, "-m", "orchestrator_cli.main", *args], env=self.env, cwd=REPO,
                                   stdout=stdout, stderr=stderr, start_new_session=True)
        self.started.append(process)
        if ready is not None:
            def found() -> bool:
                if process.poll() is not None:
                    raise AssertionError(f"{name} exited early:\n{self.log(name)}")
                return ready in (self.folder / f"{name}.log").read_bytes()

            _wait_for(found, 60, f"{name} to log {ready!r}")
        return process

    def _open(self, file_name: str) -> IO[bytes]:
        opened = open(self.folder / file_name, "wb")
        self.logs.append(opened)
        return opened

    def log(self, name: str, suffix: str = ".log") -> str:
        return (self.folder / f"{name}{suffix}").read_text(errors="replace")

    def stop_all(self) -> None:
        for process in self.started:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.started:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        for log in self.logs:
            log.close()


def _wait_for(check: Callable[[], T | None], timeout: float, awaited: str) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {awaited}")


def _rows(engine: Engine, sql: str, **params: Any) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(row) for row in conn.execute(text(sql), params).mappings()]


def _delete_own_redis_keys(redis_url: str, queue: str) -> None:
    """Delete this test's queue and the unacknowledged messages kombu keeps for it, and nothing else.

    The killed worker's message stays in kombu's shared ``unacked`` hash; left
    there, some other worker would move it back into this queue hours later.
    """
    client = redis.Redis.from_url(redis_url)
    try:
        client.delete(queue, f"_kombu.binding.{queue}", f"_kombu.binding_permanent.{queue}")
        for tag, payload in client.hscan_iter("unacked"):
            try:
                routing_key = json.loads(payload)[2]
            except (ValueError, IndexError, TypeError):
                continue
            if routing_key == queue:
                client.hdel("unacked", tag)
                client.zrem("unacked_index", tag)
    finally:
        client.close()


@pytest.fixture
def processes(postgres_url: str, redis_url: str, unique_queue: str, tmp_path: Path) -> Iterator[Processes]:
    agents = tmp_path / "stuck_agents.py"
    agents.write_text(HOLD_AGENT, encoding="utf-8")
    env = {key: value for key, value in os.environ.items() if not key.startswith("GL_ORCHESTRATOR_")}
    env.update({
        "GL_ORCHESTRATOR_DATABASE_URL": postgres_url,
        "GL_ORCHESTRATOR_BROKER_URL": redis_url,
        "GL_ORCHESTRATOR_QUEUE": unique_queue,
        "GL_ORCHESTRATOR_AGENT_MODULES": f"{TEST_AGENTS},{agents}",
        "GL_ORCHESTRATOR_HOME": str(tmp_path / "home"),
        "GL_ORCHESTRATOR_HEARTBEAT_INTERVAL_SECONDS": "1",
        "GL_ORCHESTRATOR_WORKER_LOST_AFTER_SECONDS": "3",
        "GL_ORCHESTRATOR_STUCK_CHECK_INTERVAL_SECONDS": "1",
        "PYTHONPATH": str(REPO),
    })
    started = Processes(env, tmp_path)
    try:
        yield started
    finally:
        started.stop_all()
        _delete_own_redis_keys(redis_url, unique_queue)


def test_killed_worker_found_and_resumed(processes: Processes, postgres_url: str, tmp_path: Path) -> None:
    started_file = tmp_path / "hold.pid"
    release_file = tmp_path / "hold.release"
    dag_file = tmp_path / "dag.json"
    dag_file.write_text(json.dumps({"dag_id": "stuck-kill", "nodes": {
        "a": {"agent_id": "test.const", "params": {"value": 2}},
        "hold": {"agent_id": "stuck.hold", "depends_on": ["a"], "input_mapping": {"a": "results.a"},
                 "params": {"started_file": str(started_file), "release_file": str(release_file)}},
    }}), encoding="utf-8")
    engine = create_engine(postgres_url)
    try:
        w1 = processes.start("worker-w1", "worker", "--concurrency=2", "--hostname=w1@%h", ready=b"ready.")
        processes.start("beat", "beat", "--loglevel=INFO", ready=b"beat: Starting...")
        client = processes.start("run", "run", str(dag_file), "--json", "--no-local-agents", "--timeout=120",
                                 separate_stdout=True)

        # The node runs in w1's pool, and w1's main process sends heartbeats.
        holder_pid = int(_wait_for(lambda: started_file.exists() and started_file.read_text(), 60,
                                   "node 'hold' to start"))
        execution_id = _rows(engine, "SELECT execution_id FROM dag_executions WHERE dag_id = 'stuck-kill'")[0][
            "execution_id"]
        node = _rows(engine, "SELECT status, worker FROM execution_nodes WHERE execution_id = :e AND node_id = 'hold'",
                     e=execution_id)[0]
        assert node["status"] == "running"
        assert node["worker"] == f"w1@{HOST} pid={holder_pid} host={HOST}"
        _wait_for(lambda: _rows(engine, "SELECT worker FROM worker_heartbeats WHERE worker = :w", w=f"w1@{HOST}"),
                  10, "a heartbeat from w1")

        # Kill w1's main process and its pool, as when its host is lost.
        os.killpg(w1.pid, signal.SIGKILL)
        w1.wait(timeout=10)
        processes.start("worker-w2", "worker", "--concurrency=2", "--hostname=w2@%h", ready=b"ready.")

        # The check runs on w2 and fails the execution; the waiting client sees that.
        assert client.wait(timeout=60) == 1, processes.log("run")
        summary = json.loads(processes.log("run", ".out"))
        assert summary["status"] == "failed"
        assert f"node 'hold' was claimed by worker w1@{HOST}, which has sent no heartbeat for " in summary["error"]
        execution = _rows(engine, "SELECT status, error, stop_reason, completed_at FROM dag_executions "
                                  "WHERE execution_id = :e", e=execution_id)[0]
        assert execution["status"] == "failed"
        assert execution["stop_reason"] == "the worker of node 'hold' was lost"
        assert execution["completed_at"] is not None
        traces = _rows(engine, "SELECT status, worker FROM node_traces WHERE execution_id = :e AND node_id = 'hold' "
                               "ORDER BY attempt", e=execution_id)
        assert [trace["status"] for trace in traces] == ["lost"]
        w2_log = processes.log("worker-w2")
        assert f"stuck execution marked failed execution_id={execution_id} dag_id=stuck-kill" in w2_log
        assert "Sending due task detect-stuck-executions (gl_orchestrator.detect_stuck_executions)" in \
            processes.log("beat")

        # Resume on w2: "a" is reused, "hold" runs again and returns at once.
        release_file.write_text("go", encoding="utf-8")
        resumed = subprocess.run([sys.executable, "-m", "orchestrator_cli.main", "resume", execution_id, "--json",
                                  "--timeout=60"], env=processes.env, cwd=REPO, capture_output=True, text=True,
                                 timeout=90, check=False)
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        result = json.loads(resumed.stdout)
        assert result["resume"]["nodes_skipped"] == ["a"]
        assert result["resume"]["nodes_remaining"] == ["hold"]
        assert result["status"] == "completed"
        assert result["chain_valid"] is True

        traces = _rows(engine, "SELECT status, worker FROM node_traces WHERE execution_id = :e AND node_id = 'hold' "
                               "ORDER BY attempt", e=execution_id)
        assert [trace["status"] for trace in traces] == ["lost", "completed"]
        assert traces[1]["worker"].startswith(f"w2@{HOST} pid=")
        # The killed worker could not delete its row; the live one keeps beating.
        beats = {row["worker"] for row in _rows(engine, "SELECT worker FROM worker_heartbeats")}
        assert beats == {f"w1@{HOST}", f"w2@{HOST}"}
    finally:
        engine.dispose()
