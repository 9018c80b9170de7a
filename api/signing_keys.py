"""The signing-keys route: the public keys that verify signed chain heads."""

from __future__ import annotations

from typing import TYPE_CHECKING

from flask import Blueprint, jsonify

from api.state import API_PREFIX, api_state
from workers.app import runtime_of

if TYPE_CHECKING:
    from flask import Response

    from orchestrator.signing import SigningKeys

__all__ = ["blueprint", "current_signing_keys"]

blueprint = Blueprint("signing_keys", __name__, url_prefix=API_PREFIX)


def current_signing_keys() -> SigningKeys:
    """Return the signing keys of the app that serves the current request, loaded once with its Celery app."""
    return runtime_of(api_state().celery_app).signing_keys


@blueprint.get("/signing-keys")
def list_signing_keys() -> Response:
    """List the current key and every trusted public key. current_key_id is null without a signing key."""
    return jsonify(current_signing_keys().describe())
