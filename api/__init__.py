"""The Flask REST API: routes, bearer token authentication and JSON errors.

The routes translate HTTP into calls of the core (:mod:`orchestrator`) and map
its exceptions to statuses in :mod:`api.errors`. Build the app with
:func:`create_app`; under gunicorn, serve ``api.wsgi:app``.
"""

from api.app import create_app

__all__ = ["create_app"]
