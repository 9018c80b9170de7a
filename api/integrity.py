"""Integrity routes: mark a regenerated execution superseded."""

from __future__ import annotations

from typing import TYPE_CHECKING

from flask import Blueprint, jsonify

from api.bodies import read_json_object
from api.errors import ApiError
from api.state import API_PREFIX, api_state
from orchestrator import repository
from orchestrator.integrity import supersede
from orchestrator.mapping import json_type_name

if TYPE_CHECKING:
    from flask import Response

__all__ = ["blueprint"]

blueprint = Blueprint("integrity", __name__, url_prefix=API_PREFIX)

SUPERSEDE_FIELDS = ("superseded_by", "reason")
_MAX_REASON_LENGTH = 2000


@blueprint.post("/executions/<execution_id>/supersede")
def supersede_execution(execution_id: str) -> Response:
    """Mark a finished execution superseded by the one that regenerated it; its records stay unchanged."""
    body = read_json_object()
    unknown = sorted(set(body) - set(SUPERSEDE_FIELDS))
    if unknown:
        raise ApiError(
            400, "invalid_request",
            f"unknown field(s) {', '.join(repr(name) for name in unknown)} in the supersede body; "
            f"allowed: {', '.join(SUPERSEDE_FIELDS)}",
            {"unknown_fields": unknown, "allowed_fields": list(SUPERSEDE_FIELDS)},
        )
    superseded_by = body.get("superseded_by")
    if not isinstance(superseded_by, str) or not repository.is_valid_execution_id(superseded_by):
        raise ApiError(
            400, "invalid_request",
            f"superseded_by must be the execution id of the execution that regenerates this one, not "
            f"{repository.show_value(superseded_by) if isinstance(superseded_by, str) else json_type_name(superseded_by)}",
            {"path": "$.superseded_by"},
        )
    reason = body.get("reason", "regenerated after a broken provenance chain")
    if not isinstance(reason, str) or not reason.strip() or len(reason) > _MAX_REASON_LENGTH:
        raise ApiError(
            400, "invalid_request",
            f"reason must be a non-empty string of at most {_MAX_REASON_LENGTH} characters",
            {"path": "$.reason"},
        )
    return jsonify(supersede(api_state().db, execution_id, superseded_by, reason.strip()))
