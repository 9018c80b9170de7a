"""The Flask app factory of the REST API."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from flask import Flask

from api import auth, dags, executions, ids, integrity, replays, service, signing_keys
from api.dashboard import mount_dashboard
from api.errors import register_error_handlers
from api.state import EXTENSION_KEY, ApiState
from orchestrator.agents import default_registry, import_agent_modules
from orchestrator.errors import SettingsError
from orchestrator.settings import load_settings
from workers.app import create_celery_app, runtime_of

if TYPE_CHECKING:
    from celery import Celery

    from orchestrator.agents import AgentRegistry
    from orchestrator.settings import Settings

__all__ = ["create_app"]

logger = logging.getLogger(__name__)


def create_app(
    settings: Settings | None = None,
    *,
    celery_app: Celery | None = None,
    registry: AgentRegistry | None = None,
) -> Flask:
    """Build the API app.

    ``settings`` defaults to :func:`load_settings`. ``celery_app`` defaults to
    :func:`create_celery_app` on the same settings, and its database and
    scheduler serve the API too. ``registry`` is the agent registry that DAGs
    are validated against (default: the process-wide registry that
    ``GL_ORCHESTRATOR_AGENT_MODULES`` fill). Raise :class:`SettingsError` when
    no API token is configured.
    """
    settings = settings or load_settings()
    if not settings.api_token_hashes:
        raise SettingsError(
            "no API tokens are configured, so every request would be rejected; set GL_ORCHESTRATOR_API_TOKENS "
            "to a comma-separated list of tokens, or GL_ORCHESTRATOR_API_TOKENS_FILE to a file with one token "
            "(or sha256:<hex digest>) per line"
        )
    registry = registry or default_registry
    import_agent_modules(settings.agent_modules)
    if celery_app is None:
        celery_app = create_celery_app(settings, registry=registry)
    runtime = runtime_of(celery_app)

    # No static folder: every route of this app is under the API prefix.
    app = Flask(__name__, static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions[EXTENSION_KEY] = ApiState(
        settings=settings, db=runtime.db, scheduler=runtime.scheduler, registry=registry, celery_app=celery_app,
    )

    # Request ids first, so that a 401 response and its log line carry one.
    # Path ids are checked after authentication, so that a client without a
    # token learns nothing about them.
    app.before_request(auth.assign_request_id)
    app.before_request(auth.authenticate_request)
    app.before_request(ids.check_path_ids)
    app.after_request(auth.add_request_id)
    app.teardown_request(auth.forget_request_id)
    register_error_handlers(app)
    for blueprint in (dags.blueprint, executions.blueprint, integrity.blueprint, replays.blueprint,
                      service.blueprint, signing_keys.blueprint):
        app.register_blueprint(blueprint)
    # The dashboard page needs no token, so it is a separate app in front of this one.
    mount_dashboard(app)

    logger.info(
        "API app created database=%s broker=%s embedded=%s accepting_new_executions=%s tokens=%d",
        runtime.db.engine.url.render_as_string(hide_password=True), celery_app.conf.broker_url.split("://", 1)[0],
        settings.embedded, settings.accept_new_executions, len(settings.api_token_hashes),
    )
    return app
