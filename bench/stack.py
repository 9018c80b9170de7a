"""Throwaway PostgreSQL databases, Celery worker processes and Redis bookkeeping for the benchmarks.

Everything a benchmark creates is registered on a :class:`Stack`, whose
:meth:`Stack.close` stops the workers, drops the databases and deletes the
Redis keys of the benchmark's own queues, also after an error.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

logger = logging.getLogger(__name__)

DATABASE_PREFIX = "glo_bench_"
QUEUE_PREFIX = "glo-bench-"
WORKER_READY_TIMEOUT = 90.0
WORKER_STOP_TIMEOUT = 30.0
# Kombu's Redis transport keeps the bindings of an exchange under these keys.
# The default queue of a Celery app is also the name of its exchange.
_BINDING_KEYS = ("_kombu.binding.{}", "_kombu.binding_permanent.{}")
# Exchanges shared by every Celery worker on the broker. Only the members that
# name this benchmark's workers are removed from them.
_SHARED_BINDING_KEYS = ("_kombu.binding.celery.pidbox", "_kombu.binding_permanent.celery.pidbox")


@dataclass
class Worker:
    """One worker process, started in its own process group."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log_tail(self, lines: int = 40) -> str:
        text_lines = self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()
        return "\n".join(text_lines[-lines:])


@dataclass
class Stack:
    """The databases, queues and workers of one benchmark run, and their clean-up."""

    admin_url: str
    redis_url: str
    log_dir: Path
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    databases: list[str] = field(default_factory=list)
    queues: list[str] = field(default_factory=list)
    workers: list[Worker] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.redis = redis.Redis.from_url(self.redis_url)

    # -- PostgreSQL ------------------------------------------------------

    def create_database(self, label: str) -> str:
        """Create an empty database and return its SQLAlchemy URL."""
        name = f"{DATABASE_PREFIX}{label}_{self.tag}"
        admin = create_engine(self.admin_url, isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as conn:
                conn.execute(text(f'CREATE DATABASE "{name}"'))
        finally:
            admin.dispose()
        self.databases.append(name)
        logger.info("database created name=%s", name)
        return make_url(self.admin_url).set(database=name).render_as_string(hide_password=False)

    def _drop_databases(self) -> None:
        admin = create_engine(self.admin_url, isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as conn:
                for name in reversed(self.databases):
                    conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
                    logger.info("database dropped name=%s", name)
        finally:
            admin.dispose()
        self.databases.clear()

    # -- Redis -----------------------------------------------------------

    def new_queue(self, label: str) -> str:
        queue = f"{QUEUE_PREFIX}{label}-{self.tag}"
        self.queues.append(queue)
        return queue

    def worker_hostname(self, name: str) -> str:
        return f"{QUEUE_PREFIX}{self.tag}-{name}@%h"

    def redis_used_memory(self) -> int:
        return int(self.redis.info("memory")["used_memory"])

    def redis_pid(self) -> int:
        return int(self.redis.info("server")["process_id"])

    def _delete_redis_keys(self) -> None:
        """Delete this run's queues and bindings, and leave every other key alone."""
        for queue in self.queues:
            keys = [queue, *(template.format(queue) for template in _BINDING_KEYS)]
            self.redis.delete(*keys)
        marker = f"{QUEUE_PREFIX}{self.tag}-".encode()
        for key in _SHARED_BINDING_KEYS:
            members = [member for member in self.redis.smembers(key) if marker in member]
            if members:
                self.redis.srem(key, *members)
        self.queues.clear()

    # -- workers ---------------------------------------------------------

    def start_worker(self, name: str, command: list[str], env: dict[str, str], cwd: Path, *, wait: bool = True) -> Worker:
        """Start a worker in its own process group and wait until it logs that it is ready.

        Celery logs ``ready.`` at INFO, so a worker started with a higher log
        level needs ``wait=False``. The caller must then wait for it another
        way, such as an untimed warm-up run.
        """
        log_path = self.log_dir / f"{name}.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                command, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        worker = Worker(name, process, log_path)
        self.workers.append(worker)
        if not wait:
            return worker

        deadline = time.monotonic() + WORKER_READY_TIMEOUT
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"worker {name} exited with code {process.returncode}:\n{worker.log_tail()}")
            if b" ready." in log_path.read_bytes():
                logger.info("worker ready name=%s pid=%d", name, process.pid)
                return worker
            time.sleep(0.2)
        raise RuntimeError(f"worker {name} did not log 'ready.' within {WORKER_READY_TIMEOUT:g}s:\n{worker.log_tail()}")

    def stop_worker(self, worker: Worker) -> None:
        """Stop the worker's process group: a warm shutdown, then SIGKILL after a grace period."""
        if worker.process.poll() is None:
            _signal_group(worker.process.pid, signal.SIGTERM)
            try:
                worker.process.wait(timeout=WORKER_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                logger.warning("worker did not stop, killing it name=%s pid=%d", worker.name, worker.process.pid)
                _signal_group(worker.process.pid, signal.SIGKILL)
                worker.process.wait()
        # Pool processes outlive a killed main process; end what is left of the group.
        _signal_group(worker.process.pid, signal.SIGKILL)
        if worker in self.workers:
            self.workers.remove(worker)
        logger.info("worker stopped name=%s", worker.name)

    # -- clean-up --------------------------------------------------------

    def close(self) -> None:
        """Stop workers, drop databases and delete Redis keys, logging any step that fails and going on."""
        steps: list[tuple[str, Any]] = [
            *((f"stop worker {worker.name}", lambda worker=worker: self.stop_worker(worker)) for worker in list(self.workers)),
            ("drop databases", self._drop_databases),
        ]
        if self.queues:
            steps.append(("delete Redis keys", self._delete_redis_keys))
        for description, step in steps:
            try:
                step()
            except Exception:
                logger.exception("clean-up step failed step=%r", description)
        self.redis.close()


class CpuMeter:
    """CPU seconds of the processes that serve a run, read from ``/proc`` (Linux, local services only).

    Groups: ``workers`` (every process in the sessions of the stack's
    workers), ``postgres`` (the backends ``postgres_pids`` returns), ``redis``
    (the server, shared with every other client of it) and ``client`` (this
    process). ``other`` is the busy CPU time of the whole machine less these
    groups: other programs, the kernel, and PostgreSQL backends of other
    databases. A process that exits between two snapshots is not counted.
    """

    def __init__(self, stack: Stack, postgres_pids: Callable[[], list[int]]) -> None:
        self.stack = stack
        self.postgres_pids = postgres_pids
        self.available = Path("/proc/self/stat").exists()

    def snapshot(self) -> dict[str, dict[int, float]]:
        if not self.available:
            return {}
        sessions = {worker.process.pid for worker in self.stack.workers}
        groups = {
            "workers": [pid for pid in _all_pids() if _session_of(pid) in sessions],
            "postgres": self.postgres_pids(),
            "redis": [self.stack.redis_pid()],
            "client": [os.getpid()],
        }
        snapshot = {name: {pid: seconds for pid in pids if (seconds := _cpu_seconds(pid)) is not None}
                    for name, pids in groups.items()}
        snapshot["machine"] = {0: _machine_busy_seconds()}
        return snapshot

    @staticmethod
    def difference(before: dict[str, dict[int, float]], after: dict[str, dict[int, float]]) -> dict[str, float]:
        """Return CPU seconds used per group. A process that is new in ``after`` counts from zero."""
        used = {}
        for name, pids in after.items():
            earlier = before.get(name, {})
            used[name] = sum(seconds - earlier.get(pid, 0.0) for pid, seconds in pids.items())
        if "machine" in used:
            used["other"] = used.pop("machine") - sum(used.values())
        return used


def _all_pids() -> list[int]:
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            text = stat.read()
    except OSError:
        return None
    # The command name in brackets may contain spaces, but the fields after it cannot.
    return text.rsplit(")", 1)[1].split()


def _session_of(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return int(fields[3]) if fields else None


def _cpu_seconds(pid: int) -> float | None:
    fields = _stat_fields(pid)
    if fields is None:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _machine_busy_seconds() -> float:
    """Return the CPU time all cores spent outside idle and iowait since boot."""
    with open("/proc/stat", encoding="ascii") as stat:
        fields = stat.readline().split()
    # cpu user nice system idle iowait irq softirq steal ...
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(value) for value in fields[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _signal_group(pid: int, signum: int) -> None:
    try:
        os.killpg(pid, signum)
    except ProcessLookupError:
        pass
