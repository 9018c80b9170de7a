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
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

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

    def stop(self) -> None:
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


@pytest.fixture
def stack(postgres_url: str, redis_url: str, unique_queue: str, tmp_path: Path) -> Iterator[Stack]:
    env = {
        key: value for key, value in os.environ.items() if not key.startswith("GL_ORCHESTRATOR_")
    }
    env.update({
        "GL_ORCHESTRATOR_DATABASE_URL": postgres_url,
        "GL_ORCHESTRATOR_BROKER_URL": redis_url,
        "GL_ORCHESTRATOR_QUEUE": unique_queue,
        "GL_ORCHESTRATOR_AGENT_MODULES": f"{TEST_AGENTS},{GHG_AGENTS}",
        "GL_ORCHESTRATOR_API_TOKENS": TOKEN,
        "GL_ORCHESTRATOR_HARD_TIMEOUT_GRACE_SECONDS": "2",
        "GL_ORCHESTRATOR_HOME": str(tmp_path / "home"),
        "PYTHONPATH": str(REPO),
    })
    test_stack = Stack(env=env, tmp_path=tmp_path)
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
