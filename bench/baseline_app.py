"""The baseline of the per-node overhead benchmark: a bare Celery task that inserts one row.

The app uses the orchestrator's broker settings that matter for throughput
(``acks_late``, prefetch multiplier 1, JSON, no result backend) and nothing
else. ``bench/run_benchmarks.py`` starts it with::

    celery -A bench.baseline_app worker --pool=prefork --concurrency=N --queues=QUEUE

and reads its configuration from three environment variables:
``BENCH_BROKER_URL``, ``BENCH_DATABASE_URL`` (a libpq URL such as
``postgresql://postgres@127.0.0.1:5432/glo_bench_x``) and ``BENCH_QUEUE``.
"""

from __future__ import annotations

import os
from typing import Any

import psycopg2
from celery import Celery

INSERT_TASK = "bench.insert_row"
TABLE_DDL = (
    "CREATE TABLE IF NOT EXISTS bench_rows ("
    " id bigserial PRIMARY KEY, run_id text NOT NULL, position integer NOT NULL,"
    " created_at timestamptz NOT NULL DEFAULT now())"
)

app = Celery(
    "bench_baseline",
    broker=os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/0"),
    set_as_current=False,
)
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    task_ignore_result=True,
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_default_queue=os.environ.get("BENCH_QUEUE", "glo-bench-baseline"),
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    enable_utc=True,
)

# One connection per pool process, opened on the first task after the fork.
_connection: dict[int, Any] = {}


def _connect() -> Any:
    pid = os.getpid()
    connection = _connection.get(pid)
    if connection is None or connection.closed:
        _connection.clear()
        connection = psycopg2.connect(os.environ["BENCH_DATABASE_URL"])
        _connection[pid] = connection
    return connection


@app.task(name=INSERT_TASK, acks_late=True)
def insert_row(run_id: str, position: int) -> None:
    """Insert one row and commit it."""
    connection = _connect()
    with connection.cursor() as cursor:
        cursor.execute("INSERT INTO bench_rows (run_id, position) VALUES (%s, %s)", (run_id, position))
    connection.commit()
