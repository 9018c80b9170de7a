"""Worker heartbeats: one ``worker_heartbeats`` row per live worker, keyed by its Celery node name.

A worker's main process writes its row every few seconds
(:func:`record_heartbeat`) and deletes it on a clean shutdown
(:func:`remove_heartbeat`). :mod:`orchestrator.stuck` reads the rows to
find running nodes whose worker has gone silent. Times are written from the
worker's clock in UTC, so the hosts' clocks must agree (NTP); any skew counts
against ``GL_ORCHESTRATOR_WORKER_LOST_AFTER_SECONDS``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, select
from sqlalchemy.dialects import postgresql, sqlite

from orchestrator.models import utcnow, worker_heartbeats

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

    from orchestrator.database import Database

__all__ = ["Heartbeat", "as_utc", "read_heartbeats", "record_heartbeat", "remove_heartbeat", "worker_name_of"]

_heartbeats = worker_heartbeats


@dataclass(frozen=True)
class Heartbeat:
    """The last heartbeat of one worker, and when that worker's process started."""

    worker: str
    last_seen_at: datetime
    started_at: datetime


def as_utc(value: datetime) -> datetime:
    """Return ``value`` as an aware UTC datetime; SQLite returns naive ones, which are UTC here."""
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def worker_name_of(claimed_by: str | None) -> str | None:
    """Return the Celery node name from ``execution_nodes.worker`` (``<node name> pid=<pid> host=<host>``)."""
    if not claimed_by:
        return None
    return claimed_by.split(" pid=", 1)[0]


def record_heartbeat(db: Database, worker: str, *, started_at: datetime, now: datetime | None = None) -> None:
    """Insert or update the row of ``worker`` with ``last_seen_at`` = ``now`` (default: the current UTC time).

    ``started_at`` is when the worker's process started. The stuck-execution
    check compares it with a node's start, so it must not be later than any
    claim that process made.
    """
    values = {"worker": worker, "last_seen_at": now or utcnow(), "started_at": started_at}

    def work(conn: Connection) -> None:
        conn.execute(_upsert(conn, values))

    # One attempt: the heartbeat thread tries again at its next interval, and
    # retrying here would log a warning per attempt during an outage.
    db.transaction(work, attempts=1, description="record worker heartbeat", ids=f"worker={worker}")


def _upsert(conn: Connection, values: dict[str, Any]) -> Any:
    changed = {"last_seen_at": values["last_seen_at"], "started_at": values["started_at"]}
    if conn.dialect.name == "postgresql":
        return postgresql.insert(_heartbeats).values(**values).on_conflict_do_update(
            index_elements=[_heartbeats.c.worker], set_=changed)
    if conn.dialect.name == "sqlite":
        return sqlite.insert(_heartbeats).values(**values).on_conflict_do_update(
            index_elements=[_heartbeats.c.worker], set_=changed)
    raise NotImplementedError(f"worker heartbeats support PostgreSQL and SQLite, not {conn.dialect.name}")


def remove_heartbeat(db: Database, worker: str) -> bool:
    """Delete the row of ``worker``; return whether there was one."""

    def work(conn: Connection) -> bool:
        return bool(conn.execute(delete(_heartbeats).where(_heartbeats.c.worker == worker)).rowcount)

    return db.transaction(work, description="remove worker heartbeat", ids=f"worker={worker}")


def read_heartbeats(conn: Connection) -> dict[str, Heartbeat]:
    """Return every worker's heartbeat by Celery node name."""
    rows = conn.execute(select(_heartbeats.c.worker, _heartbeats.c.last_seen_at, _heartbeats.c.started_at)).all()
    return {
        row.worker: Heartbeat(row.worker, as_utc(row.last_seen_at), as_utc(row.started_at))
        for row in rows
    }
