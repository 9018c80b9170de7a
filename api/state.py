"""Shared state of the request handlers, stored on the Flask app by :func:`api.create_app`."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from flask import current_app

if TYPE_CHECKING:
    from celery import Celery

    from orchestrator.agents import AgentRegistry
    from orchestrator.database import Database
    from orchestrator.scheduler import Scheduler
    from orchestrator.settings import Settings

__all__ = ["API_PREFIX", "ApiState", "CachedCheck", "EXTENSION_KEY", "api_state"]

API_PREFIX = "/api/v1/orchestrator"
EXTENSION_KEY = "gl_orchestrator"


@dataclass
class CachedCheck:
    """The latest result of a slow health check, with the lock that lets one request at a time run it."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    result: dict[str, str] | None = None
    # time.monotonic() when ``result`` was stored.
    checked_at: float = 0.0


@dataclass(frozen=True)
class ApiState:
    """Settings, database, scheduler, agent registry and Celery app of one API app."""

    settings: Settings
    db: Database
    scheduler: Scheduler
    registry: AgentRegistry
    celery_app: Celery
    worker_check: CachedCheck = field(default_factory=CachedCheck)


def api_state() -> ApiState:
    """Return the state of the app that serves the current request."""
    state: ApiState = current_app.extensions[EXTENSION_KEY]
    return state
