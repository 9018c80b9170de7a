"""Run a worker inside the current process, for embedded mode and tests.

The worker uses Celery's prefork pool, so agents run in child processes under
real soft and hard time limits, and every message goes through the
configured broker (in embedded mode a filesystem folder) and is really
serialized. The caller's ``driver`` runs in a thread while the worker owns
the main thread, which Celery needs for its signal handlers.
"""

from __future__ import annotations

import logging
import socket
import threading
import warnings
from collections.abc import Callable
from typing import TypeVar

from celery import Celery
from celery.exceptions import SecurityWarning
from celery.signals import worker_ready

__all__ = ["run_with_embedded_worker"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


def run_with_embedded_worker(app: Celery, driver: Callable[[Celery], T], *, concurrency: int = 2) -> T:
    """Start a prefork worker for ``app``, run ``driver(app)`` beside it, and stop the worker after."""
    worker = app.Worker(
        pool="prefork",
        concurrency=concurrency,
        loglevel="WARNING",
        quiet=True,
        without_heartbeat=True,
        without_mingle=True,
        without_gossip=True,
        hostname=f"embedded-{socket.gethostname()}",
        queues=[app.conf.task_default_queue],
    )
    outcome: dict[str, object] = {}
    pool_started = threading.Event()

    def on_ready(**_: object) -> None:
        pool_started.set()

    # The driver starts once the pool has forked its processes, so no
    # database connection of the driver is open across those forks.
    worker_ready.connect(on_ready, weak=False)

    def drive() -> None:
        try:
            if not pool_started.wait(timeout=60):
                raise RuntimeError("the embedded worker did not start within 60s")
            outcome["value"] = driver(app)
        except BaseException as exc:  # handed to the main thread below
            outcome["error"] = exc
        finally:
            worker.stop(in_sighandler=False)

    thread = threading.Thread(target=drive, name="gl-orchestrator-driver", daemon=True)
    thread.start()
    with warnings.catch_warnings():
        # Celery warns about running a worker as root. Here the worker is the
        # user's own process running the user's own agents, so it adds nothing.
        warnings.simplefilter("ignore", SecurityWarning)
        worker.start()
    worker_ready.disconnect(on_ready)
    thread.join(timeout=30)
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    if "value" not in outcome:
        raise RuntimeError("the embedded worker stopped before the run finished")
    return outcome["value"]  # type: ignore[return-value]
