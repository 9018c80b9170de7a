"""DAG routes: register, list, read, replace, retire or delete, and validate."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from flask import Blueprint, jsonify, url_for

from api.bodies import parse_bool, query_parameters, read_dag_document
from api.errors import ApiError
from api.state import API_PREFIX, api_state
from orchestrator import metrics, repository
from orchestrator.dag import parse_dag
from orchestrator.errors import DagNotFoundError, DagProblem, DagValidationError

if TYPE_CHECKING:
    from flask import Response

    from orchestrator.dag import Dag

__all__ = ["blueprint", "validate_document"]

blueprint = Blueprint("dags", __name__, url_prefix=API_PREFIX)


def _count_problems(problems: Iterable[DagProblem]) -> None:
    for problem in problems:
        metrics.DAG_VALIDATION_ERRORS.labels(problem.code).inc()


def validate_document(document: dict[str, Any]) -> Dag:
    """Parse ``document`` against the app's agent registry, counting each problem found."""
    try:
        return parse_dag(document, api_state().registry)
    except DagValidationError as exc:
        _count_problems(exc.problems)
        raise


def _dag_response(stored: dict[str, Any], *, created: bool) -> Response:
    response = jsonify(stored)
    if created:
        response.status_code = 201
        response.headers["Location"] = url_for("dags.get_dag", dag_id=stored["dag_id"])
    return response


@blueprint.post("/dags")
def create_dag() -> Response:
    """Register a DAG: 201 when stored, 200 when the same document is already registered."""
    document = read_dag_document()
    assert document is not None
    dag = validate_document(document)
    stored = repository.register_dag(api_state().db, dag, replace=False)
    return _dag_response(stored, created=stored["registration"] == "created")


@blueprint.get("/dags")
def list_dags() -> Response:
    params = query_parameters({"include_retired": parse_bool})
    items = repository.list_dags(api_state().db, include_retired=params.get("include_retired", False))
    return jsonify({"items": items})


@blueprint.get("/dags/<dag_id>")
def get_dag(dag_id: str) -> Response:
    return jsonify(repository.get_dag(api_state().db, dag_id))


@blueprint.put("/dags/<dag_id>")
def replace_dag(dag_id: str) -> Response:
    """Register or replace the DAG under ``dag_id``, which the body's dag_id must equal."""
    document = read_dag_document()
    assert document is not None
    _check_body_dag_id(document, dag_id)
    dag = validate_document(document)
    stored = repository.register_dag(api_state().db, dag, replace=True)
    return _dag_response(stored, created=stored["registration"] == "created")


@blueprint.delete("/dags/<dag_id>")
def delete_dag(dag_id: str) -> Response:
    """Retire the DAG when it has executions, else delete it."""
    outcome = repository.retire_or_delete_dag(api_state().db, dag_id)
    return jsonify({"dag_id": dag_id, "status": outcome})


@blueprint.post("/dags/<dag_id>/validate")
def validate_dag(dag_id: str) -> Response:
    """Validate the document in the body, or the stored DAG when the body is empty, and respond 200 either way."""
    document = read_dag_document(required=False)
    stored: dict[str, Any] | None = None
    try:
        stored = repository.get_dag(api_state().db, dag_id)
    except DagNotFoundError:
        if document is None:
            raise
    stored_hash = stored["dag_hash"] if stored is not None else None

    if document is not None:
        _check_body_dag_id(document, dag_id)
        source = "body"
    else:
        assert stored is not None
        document = stored["definition"]
        source = "stored"

    try:
        dag = validate_document(document)
    except DagValidationError as exc:
        return jsonify({
            "valid": False, "dag_id": dag_id, "source": source, "dag_hash": None, "stored_dag_hash": stored_hash,
            "problems": [problem.to_dict() for problem in exc.problems],
        })
    return jsonify({
        "valid": True, "dag_id": dag_id, "source": source, "dag_hash": dag.dag_hash, "stored_dag_hash": stored_hash,
        "problems": [],
    })


def _check_body_dag_id(document: dict[str, Any], dag_id: str) -> None:
    body_id = document.get("dag_id")
    if body_id != dag_id:
        raise ApiError(
            400, "invalid_request",
            f"the document's dag_id {body_id!r} does not match the dag_id {dag_id!r} in the path; make them equal",
            {"path_dag_id": dag_id, "document_dag_id": body_id},
        )
