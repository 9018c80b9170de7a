"""Database engines, transactions with retry, and schema upgrades.

One code path serves PostgreSQL (psycopg2) and SQLite. Every transaction that
changes an execution's state runs through :meth:`Database.transaction`, which
retries serialization failures, deadlocks and lost connections with backoff.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.pool import NullPool

from orchestrator.checkpoints import CheckpointStore, DatabaseCheckpointStore
from orchestrator.hashing import json_loads

__all__ = ["Database", "upgrade_schema"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

# SQLSTATE codes worth retrying: serialization_failure, deadlock_detected,
# and the connection-exception class (08xxx) for a restarted server.
_RETRYABLE_SQLSTATES = {"40001", "40P01"}
_MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


def _json_dumps(value: Any) -> str:
    # allow_nan=False is a last line of defence: values are domain-checked before.
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def _is_retryable(exc: DBAPIError) -> bool:
    if exc.connection_invalidated:
        return True
    code = getattr(exc.orig, "pgcode", None)
    if code in _RETRYABLE_SQLSTATES or (isinstance(code, str) and code.startswith("08")):
        return True
    message = str(exc.orig).lower()
    return isinstance(exc, OperationalError) and (
        "database is locked" in message
        or "server closed the connection" in message
        or "could not connect" in message
        or "connection refused" in message
        or "terminating connection" in message
    )


def _configure_sqlite(engine: Engine) -> None:
    """Make pysqlite take the write lock at BEGIN, so concurrent writers queue
    instead of failing on lock upgrade, and turn on WAL and foreign keys."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


class Database:
    """An engine plus transaction helpers and the checkpoint store; safe to use after a fork.

    ``checkpoints`` is where completed nodes' outputs live (see
    :mod:`orchestrator.checkpoints`); it defaults to the database itself.
    """

    def __init__(self, url: str, *, echo: bool = False, pool_size: int = 5,
                 checkpoints: CheckpointStore | None = None) -> None:
        self.url = url
        self.checkpoints: CheckpointStore = checkpoints or DatabaseCheckpointStore()
        self.is_sqlite = url.startswith("sqlite")
        if self.is_sqlite:
            path = url.split("///", 1)[1] if "///" in url else ""
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            # No pooled connections: an SQLite connection must never cross a
            # fork (the prefork pool forks while the embedded driver runs),
            # and opening one costs well under a millisecond.
            self.engine = create_engine(
                url, echo=echo, json_serializer=_json_dumps, json_deserializer=json_loads,
                connect_args={"timeout": 30, "check_same_thread": False}, poolclass=NullPool,
            )
            _configure_sqlite(self.engine)
        else:
            self.engine = create_engine(
                url, echo=echo, json_serializer=_json_dumps, json_deserializer=json_loads,
                pool_pre_ping=True, pool_size=pool_size, max_overflow=10,
            )
        self._pid = os.getpid()

    def _check_fork(self) -> None:
        # A connection inherited across fork() is shared with the parent; a
        # child must open its own. close=False leaves the parent's sockets be.
        if os.getpid() != self._pid:
            self.engine.dispose(close=False)
            self._pid = os.getpid()

    @contextmanager
    def connect(self) -> Iterator[Connection]:
        """Yield a connection for reads (autocommit semantics are not assumed)."""
        self._check_fork()
        with self.engine.connect() as connection:
            yield connection

    def transaction(
        self,
        work: Callable[[Connection], T],
        *,
        attempts: int = 6,
        description: str = "transaction",
        ids: str = "",
    ) -> T:
        """Run ``work`` in one transaction, retrying transient database errors.

        ``work`` must be safe to run again from the start: every retry opens a
        new transaction.
        """
        self._check_fork()
        delay = 0.05
        for attempt in range(1, attempts + 1):
            try:
                with self.engine.begin() as connection:
                    return work(connection)
            except DBAPIError as exc:
                if attempt == attempts or not _is_retryable(exc):
                    raise
                logger.warning(
                    "database %s failed, retrying attempt=%d delay=%.2fs %s error=%s",
                    description, attempt, delay, ids, exc.orig,
                )
                time.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 2.0)
        raise AssertionError("unreachable")

    def dispose(self) -> None:
        self.engine.dispose()


def upgrade_schema(database_url: str, revision: str = "head") -> None:
    """Run the Alembic migrations up to ``revision`` on ``database_url``."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    config.attributes["configure_logging"] = False
    if database_url.startswith("sqlite"):
        path = database_url.split("///", 1)[1] if "///" in database_url else ""
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
    command.upgrade(config, revision)
