"""WSGI entry point: ``gunicorn 'api.wsgi:app'``.

Reads the settings from ``GL_ORCHESTRATOR_*`` variables and configures
logging once per process before building the app.
"""

from __future__ import annotations

from api.app import create_app
from orchestrator.logs import configure_logging
from orchestrator.settings import load_settings

__all__ = ["app"]

settings = load_settings()
configure_logging(settings.log_level, settings.log_format)
app = create_app(settings)
