"""Real processes for integration tests: Celery workers and the API server.

Every test gets its own PostgreSQL database and its own Redis queue name, so
parallel runs never read each other's messages or rows.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
from sqlalchemy import create_engine, text

from tests.integration.servers import PrivatePostgres, PrivateRedis

REPO = Path(__file__).resolve().parents[2]
TEST_AGENTS = REPO / "tests" / "agents_for_tests.py"
GHG_AGENTS = REPO / "examples" / "ghg-inventory" / "agents.py"
TOKEN = "integration-test-token"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Stack:
    """Environment and processes of one distributed test stack."""

    env: dict[str, str]
    tmp_path: Path
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    logs: list[Any] = field(default_factory=list)
    api_url: str = ""
    _celery_app: Any = None

    def start_worker(self, name: str = "w1", concurrency: int = 2, *, script: Path | None = None,
                     extra_env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Start ``orchestrator worker`` (or ``script``, which takes the same arguments)."""
        log = open(self.tmp_path / f"worker-{name}.log", "wb")
        self.logs.append(log)
        command = [str(script)] if script else ["-m", "orchestrator_cli.main"]
        process = subprocess.Popen(
            [sys.executable, *command, "worker", f"--concurrency={concurrency}",
             f"--hostname={name}@%h", "--loglevel=INFO"],
            env={**self.env, **(extra_env or {})}, stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
            start_new_session=True,
        )
        self.processes.append(process)
        self._wait_for_worker(name, process)
        return process

    def _wait_for_worker(self, name: str, process: subprocess.Popen[bytes]) -> None:
        log = self.tmp_path / f"worker-{name}.log"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"worker {name} exited early:\n{log.read_text(errors='replace')}")
            if b"ready." in log.read_bytes():
                return
            time.sleep(0.2)
        raise RuntimeError(f"worker {name} did not become ready:\n{log.read_text(errors='replace')}")

    def start_beat(self, *, extra_env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Start ``orchestrator beat`` and wait until its scheduler runs."""
        log_path = self.tmp_path / "beat.log"
        log = open(log_path, "wb")
        self.logs.append(log)
        process = subprocess.Popen(
            [sys.executable, "-m", "orchestrator_cli.main", "beat", "--loglevel=INFO"],
            env={**self.env, **(extra_env or {})}, stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
            start_new_session=True,
        )
        self.processes.append(process)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"beat exited early:\n{log_path.read_text(errors='replace')}")
            if b"beat: Starting..." in log_path.read_bytes():
                return process
            time.sleep(0.2)
        raise RuntimeError(f"beat did not start:\n{log_path.read_text(errors='replace')}")

    def start_api(self) -> str:
        port = _free_port()
        log = open(self.tmp_path / "api.log", "wb")
        self.logs.append(log)
        process = subprocess.Popen(
            [sys.executable, "-m", "orchestrator_cli.main", "api", "--host", "127.0.0.1", "--port", str(port)],
            env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True,
        )
        self.processes.append(process)
        self.api_url = f"http://127.0.0.1:{port}/api/v1/orchestrator"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"API exited early:\n{(self.tmp_path / 'api.log').read_text(errors='replace')}")
            try:
                requests.get(f"{self.api_url}/health", timeout=10)
                return self.api_url
            except (requests.ConnectionError, requests.Timeout):
                time.sleep(0.2)
        raise RuntimeError("API did not start")

    def request(self, method: str, path: str, *, headers: dict[str, str] | None = None,
                **kwargs: Any) -> requests.Response:
        all_headers = {"Authorization": f"Bearer {TOKEN}", **(headers or {})}
        return requests.request(method, f"{self.api_url}{path}", headers=all_headers, timeout=30, **kwargs)

    def wait_for_execution(self, execution_id: str, timeout: float = 120) -> dict[str, object]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            body = self.request("GET", f"/executions/{execution_id}").json()
            if body["status"] in {"completed", "failed", "cancelled"}:
                return body
            time.sleep(0.2)
        raise AssertionError(f"execution {execution_id} did not finish in {timeout}s: {body}")

    @property
    def database_url(self) -> str:
        return self.env["GL_ORCHESTRATOR_DATABASE_URL"]

    @property
    def queue(self) -> str:
        return self.env["GL_ORCHESTRATOR_QUEUE"]

    def worker_log(self, name: str) -> str:
        return (self.tmp_path / f"worker-{name}.log").read_text(errors="replace")

    def all_worker_logs(self) -> str:
        return "".join(path.read_text(errors="replace") for path in sorted(self.tmp_path.glob("worker-*.log")))

    def stop_worker(self, process: subprocess.Popen[bytes], timeout: float = 30) -> int:
        """Send SIGTERM (Celery's warm shutdown) to a worker's main process and wait for it to exit."""
        process.send_signal(signal.SIGTERM)
        return process.wait(timeout=timeout)

    def celery_app(self) -> Any:
        """Return a Celery app of the test process, built from the stack's settings, to send messages."""
        if self._celery_app is None:
            from orchestrator.settings import load_settings
            from workers.app import create_celery_app

            # Only the test agents: the example's agents are imported under
            # another module name by its own tests, and registering them twice
            # in this process would be rejected.
            settings = load_settings({**self.env, "GL_ORCHESTRATOR_AGENT_MODULES": str(TEST_AGENTS)})
            self._celery_app = create_celery_app(settings)
        return self._celery_app

    def submit(self, document: dict[str, Any], input_data: Any = None) -> str:
        """Register ``document``, start an execution of it as ``orchestrator run`` does, and return the execution id."""
        from orchestrator.agents import default_registry
        from orchestrator.dag import parse_dag
        from orchestrator.repository import register_dag
        from workers.app import runtime_of
        from workers.dispatch import send_follow_up

        app = self.celery_app()
        runtime = runtime_of(app)
        dag = parse_dag(document, default_registry)
        register_dag(runtime.db, dag, replace=True)
        execution_id, follow_up = runtime.scheduler.create_execution(dag, {} if input_data is None else input_data)
        send_follow_up(app, follow_up)
        return execution_id

    def wait_until_finished(self, execution_id: str, timeout: float = 60) -> dict[str, Any]:
        """Poll the database until the execution has ended. Raise ``ExecutionError`` after ``timeout`` seconds."""
        from orchestrator_cli.running import wait_for_execution
        from workers.app import runtime_of

        return wait_for_execution(runtime_of(self.celery_app()).db, execution_id, timeout=timeout,
                                  poll_interval=0.2)

    def rows(self, sql: str, **params: Any) -> list[dict[str, Any]]:
        engine = create_engine(self.database_url)
        try:
            with engine.connect() as conn:
                return [dict(row) for row in conn.execute(text(sql), params).mappings()]
        finally:
            engine.dispose()

    def stop(self) -> None:
        if self._celery_app is not None:
            from workers.app import runtime_of

            runtime_of(self._celery_app).db.dispose()
            self._celery_app.close()
            self._celery_app = None
        for process in self.processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        for log in self.logs:
            log.close()


def stack_env(database_url: str, broker_url: str, queue: str, tmp_path: Path) -> dict[str, str]:
    """Return this process's environment with the GL_ORCHESTRATOR_* settings of a stack in place of its own."""
    env = {
        key: value for key, value in os.environ.items() if not key.startswith("GL_ORCHESTRATOR_")
    }
    env.update({
        "GL_ORCHESTRATOR_DATABASE_URL": database_url,
        "GL_ORCHESTRATOR_BROKER_URL": broker_url,
        "GL_ORCHESTRATOR_QUEUE": queue,
        "GL_ORCHESTRATOR_AGENT_MODULES": f"{TEST_AGENTS},{GHG_AGENTS}",
        "GL_ORCHESTRATOR_API_TOKENS": TOKEN,
        "GL_ORCHESTRATOR_HARD_TIMEOUT_GRACE_SECONDS": "2",
        "GL_ORCHESTRATOR_HOME": str(tmp_path / "home"),
        "PYTHONPATH": str(REPO),
    })
    return env


@pytest.fixture
def stack(postgres_url: str, redis_url: str, unique_queue: str, tmp_path: Path) -> Iterator[Stack]:
    test_stack = Stack(env=stack_env(postgres_url, redis_url, unique_queue, tmp_path), tmp_path=tmp_path)
    try:
        yield test_stack
    finally:
        test_stack.stop()
        _delete_queue_keys(redis_url, unique_queue)


def _delete_queue_keys(redis_url: str, queue: str) -> None:
    """Delete the Redis keys kombu made for this test's own queue, and only those."""
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        client.delete(queue, f"_kombu.binding.{queue}", f"_kombu.binding_permanent.{queue}")
    finally:
        client.close()


@pytest.fixture
def make_stack(unique_queue: str, tmp_path: Path) -> Iterator[Callable[[str, str], Stack]]:
    """Build stacks on the given database and broker URLs, such as private servers, and stop them after the test."""
    stacks: list[Stack] = []

    def make(database_url: str, broker_url: str) -> Stack:
        test_stack = Stack(env=stack_env(database_url, broker_url, unique_queue, tmp_path), tmp_path=tmp_path)
        stacks.append(test_stack)
        return test_stack

    try:
        yield make
    finally:
        for test_stack in stacks:
            test_stack.stop()
            try:
                _delete_queue_keys(test_stack.env["GL_ORCHESTRATOR_BROKER_URL"], unique_queue)
            except redis.ConnectionError:
                pass  # A private Redis that has already stopped took the keys with it.


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[Callable[..., PrivateRedis]]:
    """Start private Redis servers on free ports (``appendonly`` as asked) and stop them after the test."""
    servers: list[PrivateRedis] = []

    def start(*, appendonly: bool) -> PrivateRedis:
        server = PrivateRedis(tmp_path / f"redis-{len(servers)}", appendonly=appendonly)
        servers.append(server)
        server.start()
        return server

    try:
        yield start
    finally:
        for server in servers:
            server.stop()


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    """A running private PostgreSQL cluster with the schema migrated, deleted after the test."""
    from orchestrator.database import upgrade_schema

    server = PrivatePostgres()
    try:
        server.init()
        server.start()
        upgrade_schema(server.url)
        yield server
    finally:
        server.destroy()
