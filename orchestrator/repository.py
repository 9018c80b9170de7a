"""Reads and writes over the orchestrator's tables for the API and the CLI.

State changes of executions and nodes belong to :mod:`orchestrator.scheduler`
and :mod:`orchestrator.finalizer`. This module registers, retires and deletes
DAGs, and reads executions, nodes and checkpoints back as plain dicts whose
timestamps are ISO 8601 UTC strings ending in ``Z``.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import Table, and_, delete, func, or_, select, update
from sqlalchemy.engine import Connection, RowMapping
from sqlalchemy.exc import IntegrityError

from orchestrator.checkpoints import verify_payload
from orchestrator.errors import (
    CheckpointIntegrityError,
    DagConflictError,
    DagNotFoundError,
    DagRetiredError,
    ExecutionNotFoundError,
)
from orchestrator.models import (
    DagWorkflowRow,
    ExecutionNodeRow,
    ExecutionRow,
    NodeTraceRow,
    utcnow,
)
from orchestrator.states import ExecutionStatus, NodeStatus

if TYPE_CHECKING:
    from orchestrator.dag import Dag
    from orchestrator.database import Database

__all__ = [
    "DAG_ACTIVE",
    "DAG_ID_RULE",
    "DAG_RETIRED",
    "DagConflictError",
    "DagRetiredError",
    "EXECUTION_ID_RULE",
    "MAX_PAGE_SIZE",
    "MAX_SHOWN_CHARACTERS",
    "count_executions_by_status",
    "count_executions_past_deadline",
    "decode_cursor",
    "encode_cursor",
    "execution_outputs",
    "format_timestamp",
    "get_active_dag",
    "get_checkpoints",
    "get_dag",
    "get_execution",
    "get_execution_summary",
    "is_valid_dag_id",
    "is_valid_execution_id",
    "list_dags",
    "list_executions",
    "parse_dag_id",
    "parse_execution_status",
    "parse_since",
    "register_dag",
    "retire_or_delete_dag",
    "show_value",
]

logger = logging.getLogger(__name__)

DAG_ACTIVE = "active"
DAG_RETIRED = "retired"
MAX_PAGE_SIZE = 500

_dags = cast(Table, DagWorkflowRow.__table__)
_executions = cast(Table, ExecutionRow.__table__)
_nodes = cast(Table, ExecutionNodeRow.__table__)
_traces = cast(Table, NodeTraceRow.__table__)

# Messages that echo a client's value show at most this many of its characters.
MAX_SHOWN_CHARACTERS = 80
# The DAG id rule of orchestrator.dag, without "." and "..", which clients
# resolve as path segments before a request is sent.
_DAG_ID_PATTERN = re.compile(r"[A-Za-z0-9_.\-]{1,63}")
DAG_ID_RULE = "a dag_id is 1-63 characters of A-Z a-z 0-9 _ . - and is neither . nor .."
# Execution ids are UUIDs today, and the rule also admits other ids of these characters.
_EXECUTION_ID_PATTERN = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
EXECUTION_ID_RULE = "an execution_id is 1-64 characters of A-Z a-z 0-9 _ . -"

_DURATION_PATTERN = re.compile(r"([0-9]{1,9})([smhdw])")
_DURATION_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
# A datetime.timedelta cannot exceed 999999999 days, so longer durations are rejected.
_MAX_SINCE_DAYS = timedelta.max.days
_SINCE_TIMESTAMP_RANGE = "0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999999Z"
_SUMMARY_COLUMNS = (
    _executions.c.execution_id,
    _executions.c.dag_id,
    _executions.c.status,
    _executions.c.error,
    _executions.c.dag_hash,
    _executions.c.created_at,
    _executions.c.started_at,
    _executions.c.completed_at,
    _executions.c.provenance_chain_hash,
    _executions.c.chain_valid,
    _executions.c.nodes_total,
    _executions.c.nodes_remaining,
)


# -- values ---------------------------------------------------------------


def _as_utc(value: datetime) -> datetime:
    # SQLite returns naive datetimes, and every timestamp the orchestrator writes is UTC.
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def format_timestamp(value: datetime | None) -> str | None:
    """Format ``value`` as ISO 8601 UTC with microseconds and a ``Z`` suffix."""
    if value is None:
        return None
    return _as_utc(value).isoformat(timespec="microseconds").replace("+00:00", "Z")


def show_value(value: str) -> str:
    """Return ``repr(value)``, cut after MAX_SHOWN_CHARACTERS characters, for a message that echoes client input."""
    if len(value) <= MAX_SHOWN_CHARACTERS:
        return repr(value)
    return f"{value[:MAX_SHOWN_CHARACTERS]!r}... ({len(value)} characters)"


def is_valid_dag_id(value: str) -> bool:
    """Return whether ``value`` follows the dag_id rule (:data:`DAG_ID_RULE`)."""
    return _DAG_ID_PATTERN.fullmatch(value) is not None and value not in {".", ".."}


def is_valid_execution_id(value: str) -> bool:
    """Return whether ``value`` follows the execution_id rule (:data:`EXECUTION_ID_RULE`)."""
    return _EXECUTION_ID_PATTERN.fullmatch(value) is not None


def parse_dag_id(value: str) -> str:
    """Return ``value`` if it is a valid dag_id, else raise ValueError stating the rule."""
    if not is_valid_dag_id(value):
        raise ValueError(f"dag_id={show_value(value)} is invalid; {DAG_ID_RULE}")
    return value


def parse_since(value: str) -> timedelta | datetime:
    """Parse a ``since`` filter: a duration such as ``30m``, ``24h``, ``7d``, or an ISO 8601 timestamp.

    A duration is 1-9 digits and a unit (s, m, h, d or w) of at most
    999999999 days. A timestamp without a UTC offset is taken as UTC, and its
    UTC time must lie in the range of :class:`datetime.datetime`.
    """
    text = value.strip()
    match = _DURATION_PATTERN.fullmatch(text)
    if match:
        amount, unit = int(match.group(1)), match.group(2)
        try:
            return timedelta(**{_DURATION_UNITS[unit]: amount})
        except OverflowError:
            raise ValueError(
                f"since={show_value(value)} is longer than the maximum duration of {_MAX_SINCE_DAYS} days; "
                f"use at most {_MAX_SINCE_DAYS}d or {_MAX_SINCE_DAYS // 7}w"
            ) from None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"since={show_value(value)} is neither a duration (1-9 digits and a unit s, m, h, d or w, "
            f"such as 30m, 24h or 7d) nor an ISO 8601 timestamp such as 2026-01-31T00:00:00Z"
        ) from None
    try:
        return _as_utc(moment)
    except OverflowError:
        raise ValueError(
            f"since={show_value(value)} is out of range; its time in UTC must lie from {_SINCE_TIMESTAMP_RANGE}"
        ) from None


def parse_execution_status(value: str) -> str:
    """Return ``value`` if it names an execution status, else raise ValueError listing the valid ones."""
    valid = [status.value for status in ExecutionStatus]
    if value not in valid:
        raise ValueError(f"status={show_value(value)} is not an execution status; use one of {', '.join(valid)}")
    return value


def encode_cursor(created_at: datetime, execution_id: str) -> str:
    """Encode the position after one execution as an opaque URL-safe token."""
    raw = json.dumps([format_timestamp(created_at), execution_id], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode("utf-8")).decode("ascii").rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """Decode a token from :func:`encode_cursor`, or raise ValueError for anything else."""
    invalid = ValueError(
        f"cursor={show_value(cursor)} is invalid; pass the next_cursor of the previous page unchanged"
    )
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        position = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
    except (binascii.Error, UnicodeError, ValueError):
        raise invalid from None
    if not (isinstance(position, list) and len(position) == 2 and all(isinstance(p, str) for p in position)):
        raise invalid
    if not is_valid_execution_id(position[1]):
        raise invalid
    try:
        # An offset can move a valid local time out of datetime's range in UTC.
        created_at = _as_utc(datetime.fromisoformat(position[0]))
    except (ValueError, OverflowError):
        raise invalid from None
    return created_at, position[1]


# -- DAGs -----------------------------------------------------------------


def _dag_dict(row: RowMapping, *, include_definition: bool) -> dict[str, Any]:
    result = {
        "dag_id": row["dag_id"],
        "name": row["name"],
        "version": row["version"],
        "description": row["description"],
        "dag_hash": row["dag_hash"],
        "status": row["status"],
        "created_at": format_timestamp(row["created_at"]),
        "updated_at": format_timestamp(row["updated_at"]),
    }
    if include_definition:
        result["definition"] = row["definition"]
    return result


def register_dag(db: Database, dag: Dag, *, replace: bool) -> dict[str, Any]:
    """Store ``dag`` and return the stored DAG, with ``registration`` set to created, updated or unchanged.

    Without ``replace``, an identical document is accepted again and a
    different one under the same id raises :class:`DagConflictError`.
    Registering a retired DAG again makes it active.
    """
    description = dag.document.get("description")
    values = {
        "name": dag.name,
        "version": dag.version,
        "description": description if isinstance(description, str) else "",
        "definition": dag.document,
        "dag_hash": dag.dag_hash,
    }

    def work(conn: Connection) -> tuple[dict[str, Any], str]:
        now = utcnow()
        existing = conn.execute(
            select(_dags.c.dag_hash, _dags.c.status).where(_dags.c.dag_id == dag.dag_id).with_for_update()
        ).first()
        if existing is None:
            conn.execute(_dags.insert().values(
                dag_id=dag.dag_id, status=DAG_ACTIVE, created_at=now, updated_at=now, **values
            ))
            registration = "created"
        elif existing.dag_hash == dag.dag_hash and existing.status == DAG_ACTIVE:
            registration = "unchanged"
        elif existing.dag_hash != dag.dag_hash and not replace:
            raise DagConflictError(dag.dag_id, existing.dag_hash, dag.dag_hash)
        else:
            conn.execute(
                update(_dags).where(_dags.c.dag_id == dag.dag_id)
                .values(status=DAG_ACTIVE, updated_at=now, **values)
            )
            registration = "updated"
        row = conn.execute(select(_dags).where(_dags.c.dag_id == dag.dag_id)).mappings().one()
        return _dag_dict(row, include_definition=True), registration

    ids = f"dag_id={dag.dag_id}"
    try:
        stored, registration = db.transaction(work, description="register DAG", ids=ids)
    except IntegrityError:
        # Another request inserted the same dag_id between our read and our
        # insert. Running again takes the existing-row path.
        stored, registration = db.transaction(work, description="register DAG", ids=ids)
    if registration != "unchanged":
        logger.info("DAG %s dag_id=%s dag_hash=%s", registration, dag.dag_id, dag.dag_hash)
    stored["registration"] = registration
    return stored


def get_dag(db: Database, dag_id: str) -> dict[str, Any]:
    """Return the stored DAG with its definition, or raise :class:`DagNotFoundError`."""
    with db.connect() as conn:
        row = conn.execute(select(_dags).where(_dags.c.dag_id == dag_id)).mappings().first()
    if row is None:
        raise DagNotFoundError(dag_id)
    return _dag_dict(row, include_definition=True)


def get_active_dag(db: Database, dag_id: str) -> dict[str, Any]:
    """Return the stored DAG, or raise :class:`DagNotFoundError` or :class:`DagRetiredError`."""
    stored = get_dag(db, dag_id)
    if stored["status"] != DAG_ACTIVE:
        raise DagRetiredError(dag_id)
    return stored


def list_dags(db: Database, include_retired: bool = False) -> list[dict[str, Any]]:
    """Return the stored DAGs without their definitions, ordered by dag_id."""
    query = select(_dags).order_by(_dags.c.dag_id)
    if not include_retired:
        query = query.where(_dags.c.status == DAG_ACTIVE)
    with db.connect() as conn:
        rows = conn.execute(query).mappings().all()
    return [_dag_dict(row, include_definition=False) for row in rows]


def retire_or_delete_dag(db: Database, dag_id: str) -> str:
    """Retire the DAG if it has executions, else delete it, and return ``"retired"`` or ``"deleted"``.

    Executions keep their own copy of the DAG document, so retiring never
    touches their records.
    """

    def work(conn: Connection) -> str:
        exists = conn.execute(
            select(_dags.c.dag_id).where(_dags.c.dag_id == dag_id).with_for_update()
        ).first()
        if exists is None:
            raise DagNotFoundError(dag_id)
        executions = conn.execute(
            select(func.count()).select_from(_executions).where(_executions.c.dag_id == dag_id)
        ).scalar_one()
        if executions:
            conn.execute(
                update(_dags).where(_dags.c.dag_id == dag_id).values(status=DAG_RETIRED, updated_at=utcnow())
            )
            return "retired"
        conn.execute(delete(_dags).where(_dags.c.dag_id == dag_id))
        return "deleted"

    outcome = db.transaction(work, description="retire or delete DAG", ids=f"dag_id={dag_id}")
    logger.info("DAG %s dag_id=%s", outcome, dag_id)
    return outcome


# -- executions -----------------------------------------------------------


def _summary_dict(row: RowMapping) -> dict[str, Any]:
    return {
        "execution_id": row["execution_id"],
        "dag_id": row["dag_id"],
        "status": row["status"],
        "error": row["error"],
        "dag_hash": row["dag_hash"],
        "created_at": format_timestamp(row["created_at"]),
        "started_at": format_timestamp(row["started_at"]),
        "completed_at": format_timestamp(row["completed_at"]),
        "provenance_chain_hash": row["provenance_chain_hash"],
        "chain_valid": row["chain_valid"],
        "nodes_total": row["nodes_total"],
        "nodes_remaining": row["nodes_remaining"],
    }


def list_executions(
    db: Database,
    status: str | None = None,
    dag_id: str | None = None,
    since: timedelta | datetime | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> tuple[list[dict[str, Any]], str | None]:
    """Return one page of executions, newest first, and the cursor of the next page (None on the last).

    ``since`` keeps executions created within that duration or at or after
    that moment. The order is ``created_at`` then ``execution_id``, both
    descending, so pages stay stable while new executions arrive. Each item
    also has ``age_seconds``, the seconds since ``started_at`` (or since
    ``created_at`` while it has not started), and ``running_nodes``, each
    node in state ``running`` with its ``worker`` and ``started_at``.
    """
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise ValueError(f"limit={limit!r} is out of range; use 1 to {MAX_PAGE_SIZE}")
    query = select(*_SUMMARY_COLUMNS)
    if status is not None:
        query = query.where(_executions.c.status == parse_execution_status(status))
    if dag_id is not None:
        query = query.where(_executions.c.dag_id == parse_dag_id(dag_id))
    if since is not None:
        query = query.where(_executions.c.created_at >= _since_moment(since))
    if cursor is not None:
        after_created, after_id = decode_cursor(cursor)
        query = query.where(or_(
            _executions.c.created_at < after_created,
            and_(_executions.c.created_at == after_created, _executions.c.execution_id < after_id),
        ))
    query = query.order_by(_executions.c.created_at.desc(), _executions.c.execution_id.desc()).limit(limit + 1)

    with db.connect() as conn:
        rows = conn.execute(query).mappings().all()
        page = rows[:limit]
        running = _running_nodes(conn, [row["execution_id"] for row in page])
    next_cursor = None
    if len(rows) > limit:
        last = page[-1]
        next_cursor = encode_cursor(last["created_at"], last["execution_id"])

    now = utcnow()
    items = []
    for row in page:
        item = _summary_dict(row)
        began = row["started_at"] or row["created_at"]
        item["age_seconds"] = round((now - _as_utc(began)).total_seconds(), 3)
        item["running_nodes"] = running.get(row["execution_id"], [])
        items.append(item)
    return items, next_cursor


def _running_nodes(conn: Connection, execution_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
    """Return the running nodes of each execution, in canonical order, as node_id, worker and started_at."""
    if not execution_ids:
        return {}
    rows = conn.execute(
        select(_nodes.c.execution_id, _nodes.c.node_id, _nodes.c.worker, _nodes.c.started_at)
        .where(_nodes.c.execution_id.in_(execution_ids), _nodes.c.status == NodeStatus.RUNNING.value)
        .order_by(_nodes.c.execution_id, _nodes.c.ordinal)
    ).all()
    running: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        running.setdefault(row.execution_id, []).append({
            "node_id": row.node_id, "worker": row.worker, "started_at": format_timestamp(row.started_at),
        })
    return running


def _since_moment(since: timedelta | datetime) -> datetime:
    if isinstance(since, datetime):
        return _as_utc(since)
    try:
        return utcnow() - since
    except OverflowError:
        return datetime.min.replace(tzinfo=timezone.utc)


def count_executions_by_status(db: Database, statuses: Iterable[str]) -> dict[str, int]:
    """Count executions in each of ``statuses``, including 0 for a status without any."""
    requested = list(statuses)
    with db.connect() as conn:
        rows = conn.execute(
            select(_executions.c.status, func.count())
            .where(_executions.c.status.in_(requested))
            .group_by(_executions.c.status)
        ).all()
    counts = dict.fromkeys(requested, 0)
    counts.update({status: count for status, count in rows})
    return counts


def count_executions_past_deadline(db: Database, moment: datetime) -> int:
    """Count pending and running executions whose ``deadline_at`` lies before ``moment``."""
    active = [ExecutionStatus.PENDING.value, ExecutionStatus.RUNNING.value]
    with db.connect() as conn:
        count = conn.execute(
            select(func.count()).select_from(_executions).where(
                _executions.c.status.in_(active),
                _executions.c.deadline_at.is_not(None),
                _executions.c.deadline_at < moment,
            )
        ).scalar_one()
    return int(count)


def get_execution_summary(db: Database, execution_id: str) -> dict[str, Any]:
    """Return the list fields of one execution plus its input hash and options."""
    with db.connect() as conn:
        row = conn.execute(
            select(*_SUMMARY_COLUMNS, _executions.c.input_hash, _executions.c.execution_options)
            .where(_executions.c.execution_id == execution_id)
        ).mappings().first()
    if row is None:
        raise ExecutionNotFoundError(execution_id)
    summary = _summary_dict(row)
    summary["input_hash"] = row["input_hash"]
    summary["execution_options"] = row["execution_options"]
    return summary


def get_execution(db: Database, execution_id: str) -> dict[str, Any]:
    """Return one execution with its input and every node's state, attempts and timings."""
    with db.connect() as conn:
        row = conn.execute(
            select(
                *_SUMMARY_COLUMNS, _executions.c.input_data, _executions.c.input_hash,
                _executions.c.execution_options, _executions.c.stop_reason, _executions.c.verified_at,
                _executions.c.superseded_by, _executions.c.superseded_at, _executions.c.superseded_reason,
            ).where(_executions.c.execution_id == execution_id)
        ).mappings().first()
        if row is None:
            raise ExecutionNotFoundError(execution_id)
        nodes = conn.execute(
            select(_nodes).where(_nodes.c.execution_id == execution_id).order_by(_nodes.c.ordinal)
        ).mappings().all()
        traces = conn.execute(
            select(_traces).where(_traces.c.execution_id == execution_id)
            .order_by(_traces.c.node_id, _traces.c.attempt, _traces.c.id)
        ).mappings().all()

    attempts: dict[str, list[dict[str, Any]]] = {}
    for trace in traces:
        attempts.setdefault(trace["node_id"], []).append(_attempt_dict(trace))
    execution = _summary_dict(row)
    execution.update({
        "input_data": row["input_data"],
        "input_hash": row["input_hash"],
        "execution_options": row["execution_options"],
        "stop_reason": row["stop_reason"],
        "verified_at": format_timestamp(row["verified_at"]),
        "superseded_by": row["superseded_by"],
        "superseded_at": format_timestamp(row["superseded_at"]),
        "superseded_reason": row["superseded_reason"],
        "nodes": [_node_dict(node, attempts.get(node["node_id"], [])) for node in nodes],
    })
    return execution


def _duration_seconds(started: datetime | None, finished: datetime | None) -> float | None:
    if started is None or finished is None:
        return None
    return (_as_utc(finished) - _as_utc(started)).total_seconds()


def _node_dict(row: RowMapping, attempts: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "node_id": row["node_id"],
        "ordinal": row["ordinal"],
        "status": row["status"],
        "attempt_count": row["attempt_count"],
        "error": row["error"],
        "worker": row["worker"],
        "queued_at": format_timestamp(row["queued_at"]),
        "started_at": format_timestamp(row["started_at"]),
        "finished_at": format_timestamp(row["finished_at"]),
        "duration_seconds": _duration_seconds(row["started_at"], row["finished_at"]),
        "attempts": attempts,
    }


def _attempt_dict(row: RowMapping) -> dict[str, Any]:
    return {
        "attempt": row["attempt"],
        "status": row["status"],
        "worker": row["worker"],
        "error": row["error"],
        "started_at": format_timestamp(row["started_at"]),
        "finished_at": format_timestamp(row["finished_at"]),
        "duration_seconds": row["duration_seconds"],
    }


# -- checkpoints ----------------------------------------------------------


def _require_execution(conn: Connection, execution_id: str) -> None:
    found = conn.execute(
        select(_executions.c.execution_id).where(_executions.c.execution_id == execution_id)
    ).first()
    if found is None:
        raise ExecutionNotFoundError(execution_id)


def get_checkpoints(db: Database, execution_id: str) -> list[dict[str, Any]]:
    """Return an execution's checkpoints, each re-hashed and marked ``verified`` or not, in write order."""
    with db.connect() as conn:
        _require_execution(conn, execution_id)
        stored = db.checkpoints.read(conn, execution_id)

    checkpoints = []
    for checkpoint in stored.values():
        removed = (checkpoint.payload_removed_at is not None and checkpoint.outputs is None) \
            or checkpoint.payload_note is not None
        actual, problem = verify_payload(checkpoint)
        if problem is not None:
            logger.warning(
                "checkpoint failed verification execution_id=%s node_id=%s expected=%s actual=%s reason=%s",
                execution_id, checkpoint.node_id, checkpoint.output_hash, actual, problem,
            )
        checkpoints.append({
            "node_id": checkpoint.node_id,
            "status": checkpoint.status,
            "output_hash": checkpoint.output_hash,
            "actual_output_hash": actual,
            "attempt_count": checkpoint.attempt_count,
            "size_bytes": checkpoint.size_bytes,
            "created_at": format_timestamp(checkpoint.created_at),
            # Retention removed the outputs: the kept hash cannot be re-checked.
            "verified": None if removed else problem is None,
            "verification_error": problem,
            "payload_removed_at": format_timestamp(checkpoint.payload_removed_at),
            "strategy": db.checkpoints.strategy,
            "note": checkpoint.payload_note,
        })
    return checkpoints


def execution_outputs(db: Database, execution_id: str, node_ids: Sequence[str]) -> dict[str, Any]:
    """Return the verified outputs of the given nodes that have a checkpoint, by node id.

    Raises :class:`CheckpointIntegrityError` for a checkpoint whose outputs do
    not re-hash to its ``output_hash``, so a caller never shows altered results.
    """
    with db.connect() as conn:
        _require_execution(conn, execution_id)
        stored = db.checkpoints.read(conn, execution_id, node_ids)

    outputs = {}
    for node_id, checkpoint in stored.items():
        if (checkpoint.payload_removed_at is not None and checkpoint.outputs is None) or checkpoint.payload_note:
            continue  # retention removed the outputs, or a memory store forgot them; there is nothing to show
        actual, problem = verify_payload(checkpoint)
        if problem is not None:
            raise CheckpointIntegrityError(execution_id, node_id, checkpoint.output_hash, actual or "unavailable",
                                           problem)
        outputs[node_id] = checkpoint.outputs
    return outputs
