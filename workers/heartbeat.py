"""Heartbeats of a worker's main process, for the stuck-execution check.

When Celery sends ``worker_ready``, a daemon thread starts in the worker's
main process. Every ``GL_ORCHESTRATOR_HEARTBEAT_INTERVAL_SECONDS`` it writes
the worker's row in ``worker_heartbeats``, keyed by the Celery node name,
which is also the name at the start of ``execution_nodes.worker``. On
``worker_shutdown`` (a warm shutdown, after running tasks have ended) the
thread stops and the row is deleted. A worker killed outright, or stopped
with a cold shutdown, leaves its row behind, and the row then ages until the
check declares the worker lost.

The embedded worker of ``orchestrator run`` sends the same signals, so it
sends heartbeats too, under the node name ``celery@embedded-<host>``.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

from celery.signals import worker_ready, worker_shutdown

from orchestrator.heartbeats import record_heartbeat, remove_heartbeat
from orchestrator.models import utcnow

if TYPE_CHECKING:
    from datetime import datetime

    from orchestrator.database import Database

__all__ = ["HeartbeatThread", "connect_signals"]

logger = logging.getLogger(__name__)

# Taken at import, which precedes the worker's start and the fork of its
# pool, so every node this process's pool claims starts later than this.
# The check relies on that to tell a restarted worker from the one that
# claimed a node under the same node name.
PROCESS_STARTED_AT = utcnow()
# After the first failed heartbeat, one in this many failures is logged.
_LOG_EVERY_FAILURES = 20
_STOP_TIMEOUT_SECONDS = 10.0

_threads: dict[str, HeartbeatThread] = {}
_threads_lock = threading.Lock()


class HeartbeatThread(threading.Thread):
    """A daemon thread that writes one worker's heartbeat row every ``interval`` seconds until stopped."""

    def __init__(self, db: Database, worker: str, interval: float, started_at: datetime) -> None:
        super().__init__(name=f"gl-orchestrator-heartbeat {worker}", daemon=True)
        self.db = db
        self.worker = worker
        self.interval = interval
        self.started_at = started_at
        self._stopping = threading.Event()
        self.failures = 0

    def run(self) -> None:
        while True:
            self.beat()
            if self._stopping.wait(self.interval):
                return

    def beat(self) -> None:
        """Write the row once; log a failure instead of raising, so the next beat can try again."""
        try:
            record_heartbeat(self.db, self.worker, started_at=self.started_at)
        except Exception as exc:
            self.failures += 1
            if self.failures == 1 or self.failures % _LOG_EVERY_FAILURES == 0:
                logger.warning("worker heartbeat failed, retrying in %gs worker=%s failures=%d error=%s",
                               self.interval, self.worker, self.failures, exc)
            return
        if self.failures:
            logger.info("worker heartbeat recorded again worker=%s failures=%d", self.worker, self.failures)
            self.failures = 0

    def stop(self, timeout: float = _STOP_TIMEOUT_SECONDS) -> None:
        self._stopping.set()
        if self.is_alive():
            self.join(timeout)


def _start(sender: Any = None, **_: Any) -> None:
    """Start the heartbeat thread of the worker whose consumer is ``sender``."""
    runtime = getattr(getattr(sender, "app", None), "gl_runtime", None)
    worker = getattr(sender, "hostname", None)
    if runtime is None or not worker:
        return  # a Celery app this package did not build
    thread = HeartbeatThread(runtime.db, worker, runtime.settings.heartbeat_interval_seconds, PROCESS_STARTED_AT)
    with _threads_lock:
        previous = _threads.pop(worker, None)
        _threads[worker] = thread
    if previous is not None:
        previous.stop()
    thread.start()
    logger.info("worker heartbeat started worker=%s interval=%gs", worker, thread.interval)


def _stop(sender: Any = None, **_: Any) -> None:
    """Stop the heartbeat thread of the worker ``sender`` and delete its row."""
    worker = getattr(sender, "hostname", None)
    with _threads_lock:
        thread = _threads.pop(worker, None) if worker else None
    if thread is None:
        return
    thread.stop()
    try:
        remove_heartbeat(thread.db, thread.worker)
    except Exception as exc:
        # The row then ages like the row of a killed worker, which is
        # harmless once this worker's nodes have ended.
        logger.warning("removing the worker heartbeat failed worker=%s error=%s", thread.worker, exc)
        return
    logger.info("worker heartbeat stopped worker=%s", thread.worker)


def connect_signals() -> None:
    """Connect the heartbeat to Celery's worker signals; connecting again changes nothing."""
    worker_ready.connect(_start, weak=False, dispatch_uid="gl_orchestrator.heartbeat.start")
    worker_shutdown.connect(_stop, weak=False, dispatch_uid="gl_orchestrator.heartbeat.stop")
