"""Checkpoint retention: remove the outputs of executions that finished long ago.

A pass sets ``outputs`` to SQL NULL and ``payload_removed_at`` to the time of
the pass on every checkpoint of an execution that is completed, failed or
cancelled and whose ``completed_at`` lies more than the retention window in
the past. It keeps what verification needs: each checkpoint's
``output_hash``, ``status``, ``attempt_count`` and ``size_bytes``, and every
provenance record. Pending and running executions are never touched, and a
failed execution inside the window keeps the outputs that a resume reuses.

A pass works in batches of at most ``batch_size`` checkpoints, each in its own
short transaction, so a large backlog never runs in one long transaction. The
transaction locks the batch's execution rows: ``FOR UPDATE`` on PostgreSQL,
the database write lock on SQLite. It then checks their state again, so an
execution that left its terminal state after the batch was read, such as one
a resume moved back to pending, keeps its outputs.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from itertools import groupby
from typing import TYPE_CHECKING, Any

from sqlalchemy import ColumnElement, and_, null, or_, select, update
from sqlalchemy.exc import SQLAlchemyError

from orchestrator import metrics
from orchestrator.models import dag_checkpoints, dag_executions
from orchestrator.states import EXECUTION_TERMINAL_STATES

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

    from orchestrator.checkpoints import CheckpointStore, PayloadKey
    from orchestrator.database import Database

__all__ = ["DEFAULT_BATCH_SIZE", "MAX_BATCH_SIZE", "RetentionResult", "remove_expired_payloads"]

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 1000
# A batch's statements bind up to two parameters per checkpoint (its id and
# its execution's id). SQLite built with its defaults accepts 32766 bound
# parameters per statement since version 3.32 (999 before).
MAX_BATCH_SIZE = 10_000

_executions = dag_executions
_checkpoints = dag_checkpoints
_TERMINAL_STATUSES = sorted(status.value for status in EXECUTION_TERMINAL_STATES)


@dataclass(frozen=True)
class RetentionResult:
    """The counts of one retention pass.

    ``checkpoints`` counts every checkpoint marked, including those of failed
    and skipped nodes, which had no payload (``size_bytes`` 0). ``errors``
    counts checkpoints whose removal failed, and the next pass tries them again.
    ``cutoff`` is None when the window reaches back before year 1, so no
    execution is old enough.
    """

    checkpoints: int
    executions: int
    bytes_freed: int
    errors: int
    retention_hours: float
    removed_at: datetime
    cutoff: datetime | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "checkpoints": self.checkpoints,
            "executions": self.executions,
            "bytes_freed": self.bytes_freed,
            "errors": self.errors,
            "retention_hours": self.retention_hours,
            "removed_at": _utc_text(self.removed_at),
            "cutoff": None if self.cutoff is None else _utc_text(self.cutoff),
        }


@dataclass(frozen=True)
class _Candidate:
    checkpoint_id: int
    execution_id: str


@dataclass
class _Totals:
    checkpoints: int = 0
    executions: int = 0
    bytes_freed: int = 0
    errors: int = 0
    # Batches run in execution_id order, so only the first execution of a
    # batch can repeat the last one of the batch before.
    last_execution_id: str | None = field(default=None, repr=False)

    def add(self, checkpoints: int, execution_ids: Sequence[str], bytes_freed: int) -> None:
        self.checkpoints += checkpoints
        self.bytes_freed += bytes_freed
        self.executions += sum(1 for execution_id in execution_ids if execution_id != self.last_execution_id)
        if execution_ids:
            self.last_execution_id = execution_ids[-1]


def remove_expired_payloads(
    db: Database,
    retention_hours: float,
    *,
    now: datetime | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> RetentionResult:
    """Remove the outputs of checkpoints of executions that finished more than ``retention_hours`` ago.

    ``now`` must be timezone-aware; it defaults to the current time in UTC and
    becomes each removed checkpoint's ``payload_removed_at``. Raises
    ValueError for a naive ``now``, a negative or non-finite window, or a
    batch size outside 1 to MAX_BATCH_SIZE. A database error on a batch is
    retried execution by execution. Errors that remain are logged with the
    execution id and counted in ``errors``, and the pass goes on with the
    next batch. A database error while reading a batch propagates.
    """
    moment = _aware_utc(now)
    if not math.isfinite(retention_hours) or retention_hours < 0:
        raise ValueError(f"retention_hours={retention_hours!r} must be a finite number of hours, at least 0")
    if not 1 <= batch_size <= MAX_BATCH_SIZE:
        raise ValueError(f"batch_size={batch_size!r} must be between 1 and {MAX_BATCH_SIZE}")

    cutoff = _cutoff(moment, retention_hours)
    totals = _Totals()
    if cutoff is not None:
        _remove_in_batches(db, cutoff, moment, batch_size, totals)

    logger.info(
        "checkpoint payloads removed count=%d executions=%d retention_hours=%g bytes=%d errors=%d cutoff=%s",
        totals.checkpoints, totals.executions, retention_hours, totals.bytes_freed, totals.errors,
        None if cutoff is None else _utc_text(cutoff),
    )
    return RetentionResult(
        checkpoints=totals.checkpoints,
        executions=totals.executions,
        bytes_freed=totals.bytes_freed,
        errors=totals.errors,
        retention_hours=retention_hours,
        removed_at=moment,
        cutoff=cutoff,
    )


def _aware_utc(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(timezone.utc)
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError(f"now={now!r} has no time zone; pass an aware datetime such as datetime.now(timezone.utc)")
    # SQLite stores datetimes without their offset, so every bound value is UTC.
    return now.astimezone(timezone.utc)


def _cutoff(now: datetime, retention_hours: float) -> datetime | None:
    try:
        return now - timedelta(hours=retention_hours)
    except OverflowError:
        return None


def _utc_text(value: datetime) -> str:
    return value.astimezone(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _expired(cutoff: datetime) -> ColumnElement[bool]:
    """Return the condition on ``dag_executions`` that makes an execution's payloads removable."""
    return and_(
        _executions.c.status.in_(_TERMINAL_STATUSES),
        _executions.c.completed_at.is_not(None),
        _executions.c.completed_at < cutoff,
    )


def _remove_in_batches(db: Database, cutoff: datetime, moment: datetime, batch_size: int, totals: _Totals) -> None:
    # The cursor moves past every batch, so a checkpoint that fails or that
    # turns out not to be removable is not read again in this pass.
    cursor: tuple[str, int] | None = None
    while True:
        candidates = _read_candidates(db, cutoff, cursor, batch_size)
        if not candidates:
            return
        cursor = (candidates[-1].execution_id, candidates[-1].checkpoint_id)
        _remove_batch(db, candidates, cutoff, moment, totals)
        if len(candidates) < batch_size:
            return


def _read_candidates(
    db: Database, cutoff: datetime, cursor: tuple[str, int] | None, batch_size: int
) -> list[_Candidate]:
    query = (
        select(_checkpoints.c.id, _checkpoints.c.execution_id)
        .join(_executions, _executions.c.execution_id == _checkpoints.c.execution_id)
        .where(_expired(cutoff), _checkpoints.c.payload_removed_at.is_(None))
        .order_by(_checkpoints.c.execution_id, _checkpoints.c.id)
        .limit(batch_size)
    )
    if cursor is not None:
        last_execution_id, last_id = cursor
        query = query.where(or_(
            _checkpoints.c.execution_id > last_execution_id,
            and_(_checkpoints.c.execution_id == last_execution_id, _checkpoints.c.id > last_id),
        ))
    with db.connect() as conn:
        rows = conn.execute(query).all()
    return [_Candidate(row.id, row.execution_id) for row in rows]


def _remove_batch(
    db: Database, candidates: list[_Candidate], cutoff: datetime, moment: datetime, totals: _Totals
) -> None:
    """Remove one batch in one transaction, or one execution at a time after a database error."""
    try:
        _remove_group(db, candidates, cutoff, moment, totals)
        return
    except SQLAlchemyError as exc:
        logger.warning(
            "removing a batch of checkpoint payloads failed, retrying execution by execution "
            "checkpoints=%d first_execution_id=%s error=%s",
            len(candidates), candidates[0].execution_id, exc,
        )

    for execution_id, group in groupby(candidates, key=lambda candidate: candidate.execution_id):
        members = list(group)
        try:
            _remove_group(db, members, cutoff, moment, totals)
        except SQLAlchemyError:
            metrics.CHECKPOINT_OPERATIONS.labels("delete", "error").inc(len(members))
            totals.errors += len(members)
            logger.exception(
                "removing checkpoint payloads failed, the next pass tries again execution_id=%s checkpoints=%d",
                execution_id, len(members),
            )


def _remove_group(
    db: Database, candidates: list[_Candidate], cutoff: datetime, moment: datetime, totals: _Totals
) -> None:
    # The database's order of the candidates, which its collation may make
    # differ from Python's sorted().
    execution_ids = list(dict.fromkeys(candidate.execution_id for candidate in candidates))
    checkpoint_ids = [candidate.checkpoint_id for candidate in candidates]

    def work(conn: Connection) -> tuple[int, set[str], int, list[PayloadKey]]:
        return _remove_locked(conn, db.checkpoints, execution_ids, checkpoint_ids, cutoff, moment)

    count, removed_from, bytes_freed, payloads = db.transaction(
        work, description="remove expired checkpoint payloads",
        ids=f"first_execution_id={execution_ids[0]} executions={len(execution_ids)} checkpoints={len(checkpoint_ids)}",
    )
    # Payloads kept outside the database go only once no row points to them.
    db.checkpoints.discard(payloads)
    totals.add(count, [execution_id for execution_id in execution_ids if execution_id in removed_from], bytes_freed)
    metrics.CHECKPOINT_OPERATIONS.labels("delete", "success").inc(count)
    logger.debug("checkpoint payload batch removed count=%d executions=%d bytes=%d first_execution_id=%s",
                 count, len(removed_from), bytes_freed, execution_ids[0])


def _remove_locked(
    conn: Connection, store: CheckpointStore, execution_ids: list[str], checkpoint_ids: list[int],
    cutoff: datetime, moment: datetime,
) -> tuple[int, set[str], int, list[PayloadKey]]:
    """Lock the executions, check them again and mark the payloads removed.

    Returns the number of checkpoints changed, the ids of their executions,
    the sum of their ``size_bytes``, and the payloads the store must delete
    after the commit.
    """
    # Locking in execution_id order keeps two concurrent passes from deadlocking.
    eligible = conn.execute(
        select(_executions.c.execution_id)
        .where(_executions.c.execution_id.in_(execution_ids), _expired(cutoff))
        .order_by(_executions.c.execution_id)
        .with_for_update()
    ).scalars().all()
    if not eligible:
        return 0, set(), 0, []

    # Read again under the lock, because a concurrent pass may have removed some already.
    rows = conn.execute(
        select(_checkpoints.c.id, _checkpoints.c.execution_id, _checkpoints.c.node_id, _checkpoints.c.status,
               _checkpoints.c.output_hash, _checkpoints.c.payload_removed_at, _checkpoints.c.size_bytes).where(
            _checkpoints.c.id.in_(checkpoint_ids),
            _checkpoints.c.execution_id.in_(list(eligible)),
            _checkpoints.c.payload_removed_at.is_(None),
        )
    ).mappings().all()
    if not rows:
        return 0, set(), 0, []

    # null() writes SQL NULL, because a plain None would store the JSON value null.
    conn.execute(
        update(_checkpoints)
        .where(_checkpoints.c.id.in_([row["id"] for row in rows]))
        .values(outputs=null(), payload_removed_at=moment)
    )
    executions = {row["execution_id"] for row in rows}
    return len(rows), executions, sum(row["size_bytes"] or 0 for row in rows), store.payload_keys(rows)
