"""Replay and diff routes: run a finished execution again, and compare two executions.

A replay here is a new execution of a stored DAG document. It is unrelated to
the ``Idempotent-Replayed`` header, which marks a repeated execute request.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from flask import Blueprint, g, jsonify, url_for
from kombu.exceptions import KombuError

from api.bodies import read_json_object
from api.errors import ApiError
from api.executions import _check_concurrency_limit, _execution_links
from api.state import API_PREFIX, ApiState, api_state
from orchestrator import repository
from orchestrator.comparison import diff_executions
from orchestrator.errors import DagValidationError
from orchestrator.replay import StartedReplay, replay_report, start_replay
from orchestrator.states import ExecutionStatus
from workers.dispatch import QUICK_RETRY_POLICY, send_follow_up

if TYPE_CHECKING:
    from flask import Response

__all__ = ["blueprint"]

logger = logging.getLogger(__name__)

blueprint = Blueprint("replays", __name__, url_prefix=API_PREFIX)


def _replay_links(execution_id: str, replay_of: str) -> dict[str, str]:
    links = _execution_links(execution_id)
    links["replay_report"] = url_for("replays.get_replay_report", execution_id=execution_id)
    links["replay_of"] = url_for("executions.get_execution", execution_id=replay_of)
    links["diff"] = url_for("replays.diff_execution", execution_id=replay_of, other_execution_id=execution_id)
    return links


@blueprint.get("/executions/<execution_id>/diff/<other_execution_id>")
def diff_execution(execution_id: str, other_execution_id: str) -> Response:
    """Compare the execution (A) with ``other_execution_id`` (B) node by node."""
    return jsonify(diff_executions(api_state().db, execution_id, other_execution_id).to_dict())


@blueprint.post("/executions/<execution_id>/replay")
def replay_execution(execution_id: str) -> Response:
    """Start a new execution of the finished execution's stored DAG document on its input; 202 with its id."""
    state = api_state()
    if not state.settings.accept_new_executions:
        raise ApiError(
            503, "not_accepting_executions",
            "this orchestrator is not accepting new executions (GL_ORCHESTRATOR_ACCEPT_NEW_EXECUTIONS=false), "
            "and a replay is a new execution; retry after an operator enables executions again",
        )
    body = read_json_object(default={})
    if body:
        unknown = sorted(body)
        raise ApiError(
            400, "invalid_request",
            f"unknown field(s) {', '.join(repr(name) for name in unknown)} in the replay body; "
            "a replay takes no fields, because it reuses the original's DAG document and input",
            {"unknown_fields": unknown, "allowed_fields": []},
        )

    # Look the original up first, so that an unknown id gets its 404 even at the concurrency limit.
    repository.get_execution_summary(state.db, execution_id)
    _check_concurrency_limit(state.settings.max_concurrent_executions)
    try:
        started = start_replay(state.scheduler, execution_id,
                               default_execution_timeout_seconds=state.settings.execution_timeout_seconds)
    except DagValidationError as exc:
        raise ApiError(
            409, "dag_invalid",
            f"the DAG document of execution {execution_id} does not validate against the registered agents, "
            "so it cannot be replayed; check GL_ORCHESTRATOR_AGENT_MODULES",
            {"execution_id": execution_id, "problems": [problem.to_dict() for problem in exc.problems]},
        ) from None

    _send_replay_nodes(state, started)
    logger.info("replay accepted execution_id=%s replay_of=%s request_id=%s",
                started.execution_id, execution_id, g.get("request_id"))
    links = _replay_links(started.execution_id, execution_id)
    response = jsonify({
        "execution_id": started.execution_id,
        "replay_of": execution_id,
        "dag_id": started.dag_id,
        "dag_hash": started.dag_hash,
        "status": ExecutionStatus.PENDING.value,
        "links": links,
    })
    response.status_code = 202
    response.headers["Location"] = links["self"]
    return response


def _send_replay_nodes(state: ApiState, started: StartedReplay) -> None:
    """Send the replay's first nodes, or raise a 503 that names the stored replay."""
    try:
        send_follow_up(state.celery_app, started.follow_up, retry_policy=QUICK_RETRY_POLICY)
    except (KombuError, OSError) as exc:
        logger.error("sending first nodes of a replay failed execution_id=%s replay_of=%s request_id=%s error=%s",
                     started.execution_id, started.replay_of, g.get("request_id"), exc)
        raise ApiError(
            503, "broker_unavailable",
            f"replay {started.execution_id} was stored, but sending its first nodes to the broker failed: {exc}; "
            "it stays pending until `orchestrator beat` sends them again "
            "(after GL_ORCHESTRATOR_REQUEUE_AFTER_SECONDS), or cancel it and replay again",
            {"execution_id": started.execution_id, "replay_of": started.replay_of},
        ) from None


@blueprint.get("/executions/<execution_id>/replay-report")
def get_replay_report(execution_id: str) -> Response:
    """Compare the replay with its original; ``matches`` is null while the replay runs."""
    report: dict[str, Any] = replay_report(api_state().db, execution_id).to_dict()
    report["links"] = _replay_links(execution_id, report["replay_of"])
    return jsonify(report)
