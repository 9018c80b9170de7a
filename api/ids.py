"""Checks of the DAG and execution ids in request paths, made before any query.

An id outside its rule cannot name a stored row, so it gets a 404 at once.
Without this check, PostgreSQL rejects a NUL character in a query parameter
with an error (a 500), and the not-found message would echo an id of any length.
"""

from __future__ import annotations

from flask import request

from api.errors import ApiError
from orchestrator import repository

__all__ = ["check_path_ids"]

# Path parameters that name an execution. The diff route has two.
_EXECUTION_ID_PARAMETERS = ("execution_id", "other_execution_id")


def check_path_ids() -> None:
    """Raise a 404 :class:`ApiError` when the route's dag_id or execution_id breaks its rule."""
    arguments = request.view_args or {}

    dag_id = arguments.get("dag_id")
    if dag_id is not None and not repository.is_valid_dag_id(dag_id):
        raise ApiError(
            404, "dag_not_found",
            f"dag_id {repository.show_value(dag_id)} in the path is invalid, so no DAG has it; "
            f"{repository.DAG_ID_RULE}",
            {"invalid_path_parameter": "dag_id"},
        )

    for name in _EXECUTION_ID_PARAMETERS:
        execution_id = arguments.get(name)
        if execution_id is not None and not repository.is_valid_execution_id(execution_id):
            raise ApiError(
                404, "execution_not_found",
                f"{name} {repository.show_value(execution_id)} in the path is invalid, so no execution has it; "
                f"{repository.EXECUTION_ID_RULE}",
                {"invalid_path_parameter": name},
            )
