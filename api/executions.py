"""Execution routes: submit, list, read, and read provenance and checkpoints."""

from __future__ import annotations

import logging
import re
import uuid
from typing import TYPE_CHECKING, Any

from flask import Blueprint, g, jsonify, request, url_for
from kombu.exceptions import KombuError
from sqlalchemy.exc import IntegrityError

from api.bodies import parse_limit, query_parameters, read_json_object
from api.errors import ApiError
from api.signing_keys import current_signing_keys
from api.state import API_PREFIX, ApiState, api_state
from orchestrator import repository
from orchestrator.audit import build_bundle
from orchestrator.dag import Dag, parse_dag
from orchestrator.errors import DagValidationError, ExecutionNotFoundError
from orchestrator.hashing import output_hash
from orchestrator.mapping import json_type_name
from orchestrator.provenance import verify_execution
from orchestrator.resume import cancel_execution, resume_execution
from orchestrator.states import ExecutionStatus
from workers.dispatch import QUICK_RETRY_POLICY, send_follow_up

if TYPE_CHECKING:
    from flask import Response

    from orchestrator.scheduler import FollowUp

__all__ = ["EXECUTE_FIELDS", "EXECUTION_OPTIONS", "IDEMPOTENCY_HEADER", "blueprint"]

logger = logging.getLogger(__name__)

blueprint = Blueprint("executions", __name__, url_prefix=API_PREFIX)

EXECUTE_FIELDS = ("input_data", "execution_options")
# Boolean options the execute body accepts, stored on the execution as given.
# Both describe how every execution already runs, so only true is accepted:
# checkpoints are always written (provenance and resume depend on them), and
# no time-dependent value ever enters a hash.
EXECUTION_OPTIONS = ("checkpoint_enabled", "deterministic_mode")
IDEMPOTENCY_HEADER = "Idempotency-Key"
# No comma: WSGI servers join repeated headers with commas, so a comma marks
# a key that was sent more than once.
_IDEMPOTENCY_KEY_PATTERN = re.compile(r"[\x21-\x2b\x2d-\x7e]{1,255}")
# Execution ids of idempotent submissions are UUIDv5 of the DAG id and the
# key in this namespace, so a repeated request finds the first execution.
_IDEMPOTENCY_NAMESPACE = uuid.UUID("6f1f1d2e-4f0b-5a59-9b1e-2f6c8e0a7d31")
# Fields of a node's provenance report that exist only when it has a record.
_RECORD_FIELDS = ("status", "chain_hash", "input_hash", "output_hash")


def _execution_links(execution_id: str) -> dict[str, str]:
    return {
        "self": url_for("executions.get_execution", execution_id=execution_id),
        "provenance": url_for("executions.get_provenance", execution_id=execution_id),
        "checkpoints": url_for("executions.get_checkpoints", execution_id=execution_id),
        "audit_export": url_for("executions.get_audit_export", execution_id=execution_id),
    }


# -- submission -----------------------------------------------------------


def _read_execute_body() -> tuple[dict[str, Any], dict[str, Any]]:
    """Return the input data and execution options of the execute body, validated."""
    body = read_json_object(default={})
    unknown = sorted(set(body) - set(EXECUTE_FIELDS))
    if unknown:
        raise ApiError(
            400, "invalid_request",
            f"unknown field(s) {', '.join(repr(name) for name in unknown)} in the execute body; "
            f"allowed: {', '.join(EXECUTE_FIELDS)}",
            {"unknown_fields": unknown, "allowed_fields": list(EXECUTE_FIELDS)},
        )

    input_data = body.get("input_data", {})
    if not isinstance(input_data, dict):
        raise ApiError(400, "invalid_request", f"input_data must be a JSON object, not {json_type_name(input_data)}",
                       {"path": "$.input_data"})

    options = body.get("execution_options", {})
    if not isinstance(options, dict):
        raise ApiError(400, "invalid_request",
                       f"execution_options must be a JSON object, not {json_type_name(options)}",
                       {"path": "$.execution_options"})
    for name, value in options.items():
        if name not in EXECUTION_OPTIONS:
            raise ApiError(
                400, "invalid_request",
                f"unknown execution option {name!r}; allowed: {', '.join(EXECUTION_OPTIONS)}",
                {"path": f"$.execution_options.{name}", "allowed_options": list(EXECUTION_OPTIONS)},
            )
        if not isinstance(value, bool):
            raise ApiError(
                400, "invalid_request",
                f"execution option {name!r} must be true or false, not {json_type_name(value)}",
                {"path": f"$.execution_options.{name}"},
            )
        if value is False:
            raise ApiError(
                400, "invalid_request",
                f"execution option {name!r} cannot be false: every execution writes checkpoints and hashes "
                "nothing time-dependent; omit the option or set it to true",
                {"path": f"$.execution_options.{name}"},
            )
    return input_data, options


def _idempotency_key() -> str | None:
    keys = request.headers.getlist(IDEMPOTENCY_HEADER)
    if not keys:
        return None
    if len(keys) > 1 or "," in keys[0]:
        raise ApiError(400, "invalid_request",
                       f"the {IDEMPOTENCY_HEADER} header is given more than once; give it once",
                       {"header": IDEMPOTENCY_HEADER})
    key = keys[0]
    if not _IDEMPOTENCY_KEY_PATTERN.fullmatch(key):
        raise ApiError(400, "invalid_request",
                       f"the {IDEMPOTENCY_HEADER} header must be 1-255 printable ASCII characters "
                       "without spaces or commas",
                       {"header": IDEMPOTENCY_HEADER})
    return key


def _replay(
    state: ApiState,
    execution_id: str,
    dag_id: str,
    input_data: Any,
    options: dict[str, Any],
    *,
    send_pending: bool,
) -> Response | None:
    """Return the response of an earlier submission with the same idempotency key, or None if there is none.

    With ``send_pending``, an earlier execution that is still pending gets its
    first nodes sent again, because its submission may have failed to send
    them (a 503 that named the execution). A broker failure raises that 503 again.
    """
    try:
        earlier = repository.get_execution_summary(state.db, execution_id)
    except ExecutionNotFoundError:
        return None
    same = (
        earlier["dag_id"] == dag_id
        and earlier["input_hash"] == output_hash(input_data)
        and earlier["execution_options"] == options
    )
    if not same:
        raise ApiError(
            409, "idempotency_key_reused",
            f"the {IDEMPOTENCY_HEADER} was already used for execution {execution_id} with a different request; "
            "use a new key for a new request",
            {"execution_id": execution_id},
        )

    if send_pending and earlier["status"] == ExecutionStatus.PENDING.value:
        # The database does not record whether the first send succeeded, so a
        # replay also sends again when the earlier messages still wait in the
        # broker. The worker's claim ignores the second copy of a node message.
        follow_up = state.scheduler.pending_submission(execution_id)
        _send_first_nodes(state, follow_up, dag_id, idempotent=True)
        logger.info(
            "first nodes sent again for a replayed submission execution_id=%s dag_id=%s nodes=%d request_id=%s",
            execution_id, dag_id, len(follow_up.dispatches), g.get("request_id"),
        )

    response = _accepted(earlier["execution_id"], earlier["dag_id"], earlier["dag_hash"], earlier["status"])
    response.headers["Idempotent-Replayed"] = "true"
    return response


def _accepted(execution_id: str, dag_id: str, dag_hash: str, status: str) -> Response:
    links = _execution_links(execution_id)
    response = jsonify({
        "execution_id": execution_id, "dag_id": dag_id, "dag_hash": dag_hash, "status": status, "links": links,
    })
    response.status_code = 202
    response.headers["Location"] = links["self"]
    return response


def _executable_dag(dag_id: str) -> Dag:
    """Load the active DAG and validate it against the agents registered now."""
    state = api_state()
    stored = repository.get_active_dag(state.db, dag_id)
    try:
        return parse_dag(stored["definition"], state.registry)
    except DagValidationError as exc:
        raise ApiError(
            409, "dag_invalid",
            f"the stored DAG {dag_id!r} no longer validates against the registered agents; "
            "check GL_ORCHESTRATOR_AGENT_MODULES or replace the DAG with PUT",
            {"dag_id": dag_id, "problems": [problem.to_dict() for problem in exc.problems]},
        ) from None


def _check_concurrency_limit(limit: int) -> None:
    """Reject a new execution while ``limit`` executions are pending or running (0 means no limit)."""
    if limit <= 0:
        return
    counts = repository.count_executions_by_status(
        api_state().db, [ExecutionStatus.PENDING.value, ExecutionStatus.RUNNING.value]
    )
    active = sum(counts.values())
    if active >= limit:
        raise ApiError(
            503, "too_many_executions",
            f"{active} executions are pending or running, and GL_ORCHESTRATOR_MAX_CONCURRENT_EXECUTIONS is {limit}; "
            "retry when one finishes",
        )


@blueprint.post("/dags/<dag_id>/execute")
def execute_dag(dag_id: str) -> Response:
    """Store a pending execution, send its first nodes, and return 202 without waiting for the run."""
    state = api_state()
    if not state.settings.accept_new_executions:
        raise ApiError(
            503, "not_accepting_executions",
            "this orchestrator is not accepting new executions (GL_ORCHESTRATOR_ACCEPT_NEW_EXECUTIONS=false); "
            "running executions continue, and reads work. Retry after an operator enables executions again.",
        )
    input_data, options = _read_execute_body()
    key = _idempotency_key()

    # A repeated submission returns the first one's execution, even if the DAG
    # was retired since.
    execution_id = None
    if key is not None:
        execution_id = str(uuid.uuid5(_IDEMPOTENCY_NAMESPACE, f"{dag_id}\n{key}"))
        replayed = _replay(state, execution_id, dag_id, input_data, options, send_pending=True)
        if replayed is not None:
            return replayed

    dag = _executable_dag(dag_id)
    _check_concurrency_limit(state.settings.max_concurrent_executions)
    try:
        execution_id, follow_up = state.scheduler.create_execution(
            dag, input_data, options=options, execution_id=execution_id,
            default_execution_timeout_seconds=state.settings.execution_timeout_seconds,
        )
    except IntegrityError:
        # Either a concurrent request with the same idempotency key stored the
        # execution first, or the DAG was deleted in between (foreign key).
        # That request is still sending the first nodes, so they are not sent here.
        if execution_id is not None:
            replayed = _replay(state, execution_id, dag_id, input_data, options, send_pending=False)
            if replayed is not None:
                return replayed
        repository.get_active_dag(state.db, dag_id)
        raise

    _send_first_nodes(state, follow_up, dag_id, idempotent=key is not None)
    return _accepted(execution_id, dag.dag_id, dag.dag_hash, ExecutionStatus.PENDING.value)


def _send_first_nodes(state: ApiState, follow_up: FollowUp, dag_id: str, *, idempotent: bool) -> None:
    """Send the node messages of a stored execution, or raise a 503 naming the execution."""
    execution_id = follow_up.execution_id
    try:
        send_follow_up(state.celery_app, follow_up, retry_policy=QUICK_RETRY_POLICY)
    except (KombuError, OSError) as exc:
        logger.error(
            "sending first nodes failed execution_id=%s dag_id=%s request_id=%s error=%s",
            execution_id, dag_id, g.get("request_id"), exc,
        )
        # The execution stays pending with its first nodes marked queued. A
        # replay with the same Idempotency-Key sends them again.
        if idempotent:
            next_step = f"retry with the same {IDEMPOTENCY_HEADER} header to send them again"
        else:
            next_step = (
                f"this request had no {IDEMPOTENCY_HEADER} header, so a retry stores a new execution; "
                f"send one to make retries safe"
            )
        raise ApiError(
            503, "broker_unavailable",
            f"execution {execution_id} was stored, but sending its first nodes to the broker failed: {exc}; "
            f"{next_step}",
            {"execution_id": execution_id},
        ) from None


# -- reads ----------------------------------------------------------------


def _cursor(value: str) -> str:
    repository.decode_cursor(value)
    return value


@blueprint.get("/executions")
def list_executions() -> Response:
    """List executions newest first, filtered by status, dag_id and since, one page per cursor."""
    params = query_parameters({
        "status": repository.parse_execution_status,
        "dag_id": repository.parse_dag_id,
        "since": repository.parse_since,
        "limit": parse_limit(repository.MAX_PAGE_SIZE),
        "cursor": _cursor,
    })
    items, next_cursor = repository.list_executions(
        api_state().db,
        status=params.get("status"),
        dag_id=params.get("dag_id"),
        since=params.get("since"),
        limit=params.get("limit", 50),
        cursor=params.get("cursor"),
    )
    return jsonify({"items": items, "next_cursor": next_cursor})


@blueprint.get("/executions/<execution_id>")
def get_execution(execution_id: str) -> Response:
    execution = repository.get_execution(api_state().db, execution_id)
    execution["links"] = _execution_links(execution_id)
    return jsonify(execution)


@blueprint.get("/executions/<execution_id>/provenance")
def get_provenance(execution_id: str) -> Response:
    """Recompute and check every hash of the execution's provenance chain, and its signature.

    A node without a provenance record has no hashes, so those keys are left
    out rather than set to null. Operator scripts read them with
    ``node.get("chain_hash", "MISSING")[:16]``, which fails on null.
    """
    report = verify_execution(api_state().db, execution_id, signing_keys=current_signing_keys()).to_dict()
    for node in report["nodes"]:
        for key in _RECORD_FIELDS:
            if node.get(key) is None:
                node.pop(key, None)
    return jsonify(report)


@blueprint.get("/executions/<execution_id>/checkpoints")
def get_checkpoints(execution_id: str) -> Response:
    """Return the checkpoints, each re-hashed against its output_hash."""
    checkpoints = repository.get_checkpoints(api_state().db, execution_id)
    return jsonify({
        "execution_id": execution_id,
        "all_verified": all(checkpoint["verified"] is not False for checkpoint in checkpoints),
        "checkpoints": checkpoints,
    })


@blueprint.get("/executions/<execution_id>/audit-export")
def get_audit_export(execution_id: str) -> Response:
    """Return the execution's audit bundle, which ``verifier/gl_audit_verify.py`` checks offline."""
    bundle = build_bundle(api_state().db, execution_id, signing_keys=current_signing_keys())
    response = jsonify(bundle)
    response.headers["Content-Disposition"] = f'attachment; filename="audit-{execution_id}.json"'
    logger.info("audit bundle exported execution_id=%s nodes=%d", execution_id, len(bundle["nodes"]))
    return response


# -- resume and cancel ----------------------------------------------------

RESUME_FIELDS = ("rerun_corrupted", "input_data")


@blueprint.post("/executions/<execution_id>/resume")
def resume(execution_id: str) -> Response:
    """Resume from verified checkpoints; 202 with the plan, or 409 when a checkpoint fails its hash."""
    state = api_state()
    body = read_json_object(default={})
    unknown = sorted(set(body) - set(RESUME_FIELDS))
    if unknown:
        raise ApiError(
            400, "invalid_request",
            f"unknown field(s) {', '.join(repr(name) for name in unknown)} in the resume body; "
            f"allowed: {', '.join(RESUME_FIELDS)}",
            {"unknown_fields": unknown, "allowed_fields": list(RESUME_FIELDS)},
        )
    rerun_corrupted = body.get("rerun_corrupted", False)
    if not isinstance(rerun_corrupted, bool):
        raise ApiError(400, "invalid_request",
                       f"rerun_corrupted must be true or false, not {json_type_name(rerun_corrupted)}",
                       {"path": "$.rerun_corrupted"})
    options: dict[str, Any] = {"rerun_corrupted": rerun_corrupted}
    if "input_data" in body:
        if not isinstance(body["input_data"], dict):
            raise ApiError(400, "invalid_request",
                           f"input_data must be a JSON object, not {json_type_name(body['input_data'])}",
                           {"path": "$.input_data"})
        options["input_data"] = body["input_data"]

    report, follow_up = resume_execution(
        state.scheduler, execution_id,
        default_execution_timeout_seconds=state.settings.execution_timeout_seconds, **options,
    )
    _send_resumed(state, execution_id, follow_up)
    response = jsonify(report.to_dict())
    response.status_code = 202 if report.status == ExecutionStatus.PENDING.value else 200
    return response


def _send_resumed(state: ApiState, execution_id: str, follow_up: Any) -> None:
    try:
        send_follow_up(state.celery_app, follow_up, retry_policy=QUICK_RETRY_POLICY)
    except (KombuError, OSError) as exc:
        logger.error("sending resumed nodes failed execution_id=%s request_id=%s error=%s",
                     execution_id, g.get("request_id"), exc)
        raise ApiError(
            503, "broker_unavailable",
            f"execution {execution_id} was resumed, but sending its nodes to the broker failed: {exc}",
            {"execution_id": execution_id},
        ) from exc


@blueprint.post("/executions/<execution_id>/cancel")
def cancel(execution_id: str) -> Response:
    """Cancel a pending or running execution and revoke its queued and running node tasks."""
    state = api_state()
    report = cancel_execution(state.scheduler, execution_id)
    if report.revoke_task_ids:
        try:
            state.celery_app.control.revoke(report.revoke_task_ids, terminate=True, signal="SIGTERM")
        except (KombuError, OSError) as exc:
            # The execution is cancelled either way: workers ignore its messages.
            logger.warning("revoking node tasks failed execution_id=%s tasks=%d error=%s",
                           execution_id, len(report.revoke_task_ids), exc)
    return jsonify(report.to_dict())
