"""The execution dashboard: a static web page that reads the REST API with the operator's bearer token.

The page, its scripts and its stylesheet contain no execution data, so they
are served without a token. Everything the page shows comes from API calls
that send ``Authorization: Bearer``, which the API checks as for any client.

The dashboard is a small Flask app of its own, mounted at ``/dashboard`` in
front of the API app by :func:`mount_dashboard`. Keeping it out of the API
app leaves the API's url_map equal to the routes that the OpenAPI document
lists, and keeps the API's token check on every API route unchanged.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from flask import Blueprint, Flask, render_template, request
from werkzeug.middleware.dispatcher import DispatcherMiddleware

from api.state import API_PREFIX

if TYPE_CHECKING:
    from flask import Response

__all__ = ["CONTENT_SECURITY_POLICY", "DASHBOARD_PATH", "blueprint", "create_dashboard_app", "mount_dashboard"]

logger = logging.getLogger(__name__)

DASHBOARD_PATH = "/dashboard"
# The page loads only its own scripts and styles, and talks only to the API on
# the same origin. Without 'unsafe-inline', markup that an execution's data
# might smuggle into the page cannot run script or add styles.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
_SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}

blueprint = Blueprint(
    "dashboard", __name__,
    static_folder="static/dashboard", static_url_path="/static",
    template_folder="templates",
)


@blueprint.get("/")
def index() -> str:
    """Render the page shell, with the API's base path for the scripts to call."""
    # The dashboard app's script root ends with DASHBOARD_PATH. What comes
    # before it is where the whole WSGI app is mounted, such as a path prefix
    # that a reverse proxy adds.
    mount_root = request.script_root.removesuffix(DASHBOARD_PATH)
    return render_template("dashboard/index.html", api_base=mount_root + API_PREFIX)


@blueprint.after_app_request
def add_security_headers(response: Response) -> Response:
    for name, value in _SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response


def create_dashboard_app() -> Flask:
    """Build the Flask app that serves the dashboard's page and static files."""
    app = Flask(__name__, static_folder=None)
    app.register_blueprint(blueprint)
    return app


def mount_dashboard(app: Flask) -> None:
    """Serve the dashboard at ``DASHBOARD_PATH`` beside ``app``, which keeps every other path."""
    app.wsgi_app = DispatcherMiddleware(  # type: ignore[method-assign]
        app.wsgi_app, {DASHBOARD_PATH: create_dashboard_app()},
    )
    logger.info("dashboard mounted path=%s/", DASHBOARD_PATH)
