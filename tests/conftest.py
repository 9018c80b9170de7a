"""Shared fixtures: throwaway PostgreSQL databases and a Redis check.

Tests that need a service skip when it is unreachable, unless
GL_ORCHESTRATOR_REQUIRE_SERVICES=1 (set by CI), in which case they fail.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

from orchestrator.database import Database

POSTGRES_ADMIN_URL = os.environ.get("GL_ORCHESTRATOR_TEST_POSTGRES_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("GL_ORCHESTRATOR_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def _services_required() -> bool:
    return os.environ.get("GL_ORCHESTRATOR_REQUIRE_SERVICES", "") in {"1", "true", "yes"}


def service_unavailable(name: str, detail: str) -> None:
    """Skip the test, or fail it when services are required."""
    message = f"{name} is not reachable ({detail}); start it or unset GL_ORCHESTRATOR_REQUIRE_SERVICES"
    if _services_required():
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def _port_open(url: str, default_port: int) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or default_port), timeout=2):
            return True
    except OSError:
        return False


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, migrated PostgreSQL database, dropped after the test."""
    if not _port_open(POSTGRES_ADMIN_URL, 5432):
        service_unavailable("PostgreSQL", POSTGRES_ADMIN_URL)
    from sqlalchemy import create_engine, text

    from orchestrator.database import upgrade_schema

    name = f"glo_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    try:
        upgrade_schema(url)
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    """A migrated SQLite database file in the test's temporary directory."""
    from orchestrator.database import upgrade_schema

    url = f"sqlite:///{tmp_path / 'orchestrator.db'}"
    upgrade_schema(url)
    return url


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest) -> Iterator[Database]:
    """A ``Database`` on a fresh migrated store; the test runs once on SQLite and once on PostgreSQL."""
    url = request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "postgres_url")
    db = Database(url)
    yield db
    db.dispose()


@pytest.fixture
def redis_url() -> str:
    if not _port_open(REDIS_URL, 6379):
        service_unavailable("Redis", REDIS_URL)
    return REDIS_URL


@pytest.fixture
def unique_queue() -> str:
    """A queue name of this test's own, so tests never read each other's messages."""
    return f"glo-test-{uuid.uuid4().hex[:10]}"
