"""Shared state of the request handlers, stored on the Flask app by :func:`api.create_app`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from flask import current_app

if TYPE_CHECKING:
    from celery import Celery

    from orchestrator.agents import AgentRegistry
    from orchestrator.database import Database
    from orchestrator.scheduler import Scheduler
    from orchestrator.settings import Settings

__all__ = ["API_PREFIX", "ApiState", "EXTENSION_KEY", "api_state"]

API_PREFIX = "/api/v1/orchestrator"
EXTENSION_KEY = "gl_orchestrator"


@dataclass(frozen=True)
class ApiState:
    """Settings, database, scheduler, agent registry and Celery app of one API app."""

    settings: Settings
    db: Database
    scheduler: Scheduler
    registry: AgentRegistry
    celery_app: Celery


def api_state() -> ApiState:
    """Return the state of the app that serves the current request."""
    state: ApiState = current_app.extensions[EXTENSION_KEY]
    return state
