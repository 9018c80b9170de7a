"""The node task and the finalizer task.

Both take ids only. The node task claims its node, runs the agent under the
node's Celery time limits, and records the outcome; a failure that the
retry policy allows becomes a Celery retry with the policy's countdown.
"""

from __future__ import annotations

import copy
import logging
import os
import re
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from celery.exceptions import Retry, SoftTimeLimitExceeded
from celery.worker.request import Request
from sqlalchemy.exc import DBAPIError

from orchestrator import metrics
from orchestrator.errors import (
    CheckpointIntegrityError,
    CheckpointStoreError,
    ConditionError,
    ExecutionNotFoundError,
    InputMappingError,
    JsonDomainError,
)
from orchestrator.finalizer import finalize_execution
from orchestrator.hashing import canonical_json
from orchestrator.logs import bind_log_context, log_context
from orchestrator.scheduler import Claim, FollowUp, Prepared, RetryDecision, Scheduler
from workers.app import FINALIZE_TASK, NODE_TASK, runtime_of
from workers.dispatch import send_follow_up

if TYPE_CHECKING:
    from celery import Celery, Task

__all__ = ["NodeRequest", "register"]

logger = logging.getLogger(__name__)

# Errors that the same inputs would raise again: retrying cannot help.
_PERMANENT_ERRORS = (InputMappingError, ConditionError, CheckpointIntegrityError, JsonDomainError)
_INFRASTRUCTURE_RETRY_LIMIT = 20


class NodeRequest(Request):
    """Records a node whose agent ignored the soft time limit and was killed.

    The hard time limit ends the pool process, so the task itself cannot
    record anything; this runs in the worker's main process instead.
    """

    def on_timeout(self, soft: bool, timeout: float) -> None:
        super().on_timeout(soft, timeout)
        if soft:
            return
        execution_id, node_id = self.args[0], self.args[1]
        message = f"timed out: killed by the hard time limit after {timeout:g}s (the agent ignored the soft limit)"
        metrics.NODE_TIMEOUTS.inc()
        try:
            runtime = runtime_of(self.task.app)
            follow_up = runtime.scheduler.record_lost(execution_id, node_id, self.id, message, timed_out=True)
            send_follow_up(self.task.app, follow_up)
        except Exception:
            logger.exception("recording a hard time limit failed execution_id=%s node_id=%s task_id=%s",
                             execution_id, node_id, self.id)


def _describe(exc: BaseException) -> str:
    text = str(exc) or exc.__class__.__name__
    return f"{exc.__class__.__name__}: {text}"


def run_node(task: Task, execution_id: str, node_id: str) -> None:
    """Run one attempt of one node; see the module docstring."""
    scheduler = runtime_of(task.app).scheduler
    ids = f"execution_id={execution_id} node_id={node_id} task_id={task.request.id}"
    redelivered = bool((task.request.delivery_info or {}).get("redelivered"))
    # A Celery retry of this task is sent only after the previous delivery
    # stopped working on the node, so the process holding the claim is done with it.
    retried = task.request.retries > 0
    try:
        claim = scheduler.claim(
            execution_id, node_id, task.request.id, worker=worker_identity(task.request.hostname),
            holder_gone=lambda holder: retried or holder_gone(holder, redelivered=redelivered),
        )
    except ExecutionNotFoundError:
        # Nothing to record: the execution is not in this worker's database.
        logger.error(
            "node message dropped, execution not found in this worker's database %s queue=%s; check that every "
            "deployment sharing this broker uses its own GL_ORCHESTRATOR_QUEUE",
            ids, (task.request.delivery_info or {}).get("routing_key"),
        )
        return
    except (DBAPIError, SoftTimeLimitExceeded) as exc:
        _retry_later(task, exc, f"claiming node failed {ids}")
    except Exception as exc:
        logger.exception("claiming node raised an unexpected error %s", ids)
        _retry_later(task, exc, f"claiming node failed {ids}")
    if claim.lost_attempts:
        # The pool process that ran the earlier attempt died without counting it.
        metrics.NODE_EXECUTIONS.labels(claim.dag_id, "lost").inc(claim.lost_attempts)
    if not claim.run:
        _send_recorded(task, claim.follow_up, ids)
        return
    bind_log_context(attempt=claim.attempt)

    started = time.monotonic()
    try:
        outcome = _attempt_and_record(scheduler, claim, ids)
    except DBAPIError as exc:
        # The database is unreachable or rejected the write. The message goes
        # back to the broker, and the next delivery counts a new attempt.
        _retry_later(task, exc, f"node attempt could not be recorded {ids}")
    except Retry:
        raise
    except Exception as exc:
        logger.exception("recording the node attempt raised an unexpected error %s", ids)
        _retry_later(task, exc, f"node attempt could not be recorded {ids}")
    metrics.NODE_EXECUTION_DURATION.labels(claim.dag_id).observe(time.monotonic() - started)

    if isinstance(outcome, RetryDecision):
        metrics.NODE_RETRIES.inc()
        metrics.NODE_EXECUTIONS.labels(claim.dag_id, "retried").inc()
        raise task.retry(countdown=outcome.delay, max_retries=None)
    _send_recorded(task, outcome, ids)


def _send_recorded(task: Task, follow_up: FollowUp, ids: str) -> None:
    """Send what a committed transaction queued; on failure, leave it to the recovery job.

    The queued nodes are in the database, so raising here would only lose
    this task's acknowledgement, not the work: the periodic recovery job sends
    messages of nodes that stay queued too long.
    """
    try:
        send_follow_up(task.app, follow_up)
    except Exception as exc:
        logger.error(
            "sending queued nodes failed after the commit %s nodes=%s finalizer=%s error=%s; "
            "the recovery job sends them again", ids,
            ",".join(dispatch.node_id for dispatch in follow_up.dispatches) or "-", follow_up.finalize, _describe(exc),
        )


def worker_identity(node_name: str | None) -> str:
    """Return how a claim names its pool process: ``<celery node name> pid=<pid> host=<host>``."""
    return f"{node_name or 'unknown'} pid={os.getpid()} host={socket.gethostname()}"


_IDENTITY = re.compile(r" pid=(?P<pid>\d+) host=(?P<host>\S+)$")


def holder_gone(holder: str | None, *, redelivered: bool) -> bool:
    """Return whether the pool process that claimed a running node is gone.

    On this host the process id decides. For another host only the broker's
    mark decides: Redis marks a message it gives back after a lost worker as
    redelivered, and a copy without that mark is a duplicate.
    """
    match = _IDENTITY.search(holder or "")
    if match is None or match["host"] != socket.gethostname():
        return redelivered
    pid = int(match["pid"])
    if pid == os.getpid():
        return True  # this process held it and is free again, so that attempt ended
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    """Return whether ``pid`` has exited but not been reaped; os.kill(pid, 0) still succeeds on it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return False  # no /proc (not Linux), or the process went away meanwhile
    # The state follows the command name, which is in parentheses and may contain spaces.
    fields = stat.rsplit(")", 1)[-1].split()
    return bool(fields) and fields[0] in {"Z", "X"}


def _retry_later(task: Task, exc: BaseException, failure: str) -> NoReturn:
    """Send the message again with backoff, at most _INFRASTRUCTURE_RETRY_LIMIT times."""
    countdown = min(60, 2 ** task.request.retries)
    logger.error("%s, retrying in %ds error=%s", failure, countdown, _describe(exc))
    raise task.retry(countdown=countdown, exc=exc, max_retries=_INFRASTRUCTURE_RETRY_LIMIT) from exc


def _attempt_and_record(scheduler: Scheduler, claim: Claim, ids: str) -> RetryDecision | FollowUp:
    """Run the attempt; a soft time limit that fires while recording becomes a recorded timeout."""
    try:
        return _attempt(scheduler, claim)
    except SoftTimeLimitExceeded:
        # The limit fired outside the agent call, while the result was being
        # recorded; that transaction rolled back, so record a timeout instead.
        metrics.NODE_TIMEOUTS.inc()
        logger.warning("node timed out while recording %s", ids)
        outcome = scheduler.record_failure(claim, "timed out while recording the result", timed_out=True)
        return _count_final_failure(claim, "timed_out", outcome)


def _attempt(scheduler: Scheduler, claim: Claim) -> RetryDecision | FollowUp:
    """Prepare, call the agent and record the outcome; agent errors become recorded failures."""
    prepared: Prepared | None = None
    ids = f"execution_id={claim.execution_id} node_id={claim.node_id} attempt={claim.attempt}"
    try:
        ready = scheduler.prepare(claim)
        if isinstance(ready, str):
            metrics.NODE_EXECUTIONS.labels(claim.dag_id, "skipped").inc()
            return scheduler.record_skip(claim, ready)
        prepared = ready
        logger.info("node started %s agent=%s@%s", ids, prepared.agent.agent_id, prepared.agent.version)
        outputs = prepared.agent(copy.deepcopy(prepared.inputs), copy.deepcopy(prepared.params))
        canonical = canonical_json(outputs)
    except SoftTimeLimitExceeded:
        metrics.NODE_TIMEOUTS.inc()
        assert claim.dag is not None
        limit = claim.dag.nodes[claim.node_id].timeout_policy.timeout_seconds
        logger.warning("node timed out %s timeout_seconds=%g", ids, limit)
        outcome = scheduler.record_failure(claim, f"timed out after {limit:g}s", prepared=prepared, timed_out=True)
        return _count_final_failure(claim, "timed_out", outcome)
    except _PERMANENT_ERRORS as exc:
        metrics.NODE_EXECUTIONS.labels(claim.dag_id, "failed").inc()
        logger.error("node failed %s error=%s", ids, _describe(exc))
        if isinstance(exc, JsonDomainError):
            message = f"agent output is not valid JSON for hashing: {exc}"
        else:
            message = _describe(exc)
        return scheduler.record_failure(claim, message, prepared=prepared, retryable=False)
    except (Retry, DBAPIError):
        raise
    except BaseException as exc:
        # BaseException too: an agent that calls sys.exit() or raises its own
        # BaseException subclass fails its attempt instead of killing the pool
        # process, which Celery would redeliver without counting it.
        logger.warning("node attempt raised %s error=%s", ids, _describe(exc))
        logger.debug("traceback of the failed attempt %s", ids, exc_info=True)
        return _count_final_failure(claim, "failed", scheduler.record_failure(claim, _describe(exc), prepared=prepared))

    # NOTE: only checkpoints with outputs (completed nodes) count as saves. A
    # failed or skipped node's checkpoint is written in the same transaction
    # as its state, and a database error there is retried but not counted.
    try:
        follow_up = scheduler.record_success(claim, prepared, canonical, outputs)
    except CheckpointStoreError as exc:
        # The checkpoint store rejected the payload (an unwritable folder, a
        # planted link). Retrying cannot help, so the node fails with the reason.
        metrics.CHECKPOINT_OPERATIONS.labels("save", "error").inc()
        logger.error("checkpoint save failed %s error=%s", ids, exc)
        outcome = scheduler.record_failure(claim, f"checkpoint write failed: {exc}", prepared=prepared, retryable=False)
        return _count_final_failure(claim, "failed", outcome)
    except Exception:
        metrics.CHECKPOINT_OPERATIONS.labels("save", "error").inc()
        logger.exception("checkpoint save failed %s", ids)
        raise
    metrics.CHECKPOINT_OPERATIONS.labels("save", "success").inc()
    metrics.CHECKPOINT_SIZE_BYTES.observe(len(canonical))
    metrics.NODE_EXECUTIONS.labels(claim.dag_id, "completed").inc()
    return follow_up


def _count_final_failure(claim: Claim, status: str, outcome: RetryDecision | FollowUp) -> RetryDecision | FollowUp:
    """Count a failed attempt that ended its node as ``status``.

    An attempt that is retried is counted once, as "retried", by run_node.
    """
    if not isinstance(outcome, RetryDecision):
        metrics.NODE_EXECUTIONS.labels(claim.dag_id, status).inc()
    return outcome


def finalize(task: Task, execution_id: str) -> dict[str, Any]:
    """Verify the execution's chain and end it; a repeated delivery changes nothing."""
    runtime = runtime_of(task.app)
    try:
        result = finalize_execution(runtime.db, execution_id, signing_keys=runtime.signing_keys)
    except ExecutionNotFoundError:
        logger.error("finalizer message dropped, execution not found in this worker's database execution_id=%s; "
                     "check that every deployment sharing this broker uses its own GL_ORCHESTRATOR_QUEUE",
                     execution_id)
        return {"execution_id": execution_id, "status": "not_found", "chain_valid": None}
    except DBAPIError as exc:
        logger.error("finalizing failed, retrying execution_id=%s error=%s", execution_id, exc)
        raise task.retry(countdown=min(60, 2 ** task.request.retries), exc=exc,
                         max_retries=_INFRASTRUCTURE_RETRY_LIMIT) from exc
    if result.changed:
        metrics.PROVENANCE_CHAIN_VALID.set(1 if result.chain_valid else 0)
        metrics.PROVENANCE_CHAIN_LENGTH.observe(result.chain_length)
        metrics.DAG_EXECUTIONS.labels(result.dag_id, result.status).inc()
        if result.duration_seconds is not None:
            metrics.DAG_EXECUTION_DURATION.labels(result.dag_id).observe(result.duration_seconds)
    return {"execution_id": execution_id, "status": result.status, "chain_valid": result.chain_valid}


def _run_node_with_ids(task: Task, execution_id: str, node_id: str) -> None:
    # Every line logged during the attempt, Celery's own included, carries these ids.
    with log_context(execution_id=execution_id, node_id=node_id, task_id=task.request.id):
        run_node(task, execution_id, node_id)


def _finalize_with_ids(task: Task, execution_id: str) -> dict[str, Any]:
    with log_context(execution_id=execution_id, task_id=task.request.id):
        return finalize(task, execution_id)


def register(app: Celery) -> None:
    """Register the tasks on ``app`` under their explicit names."""
    app.task(name=NODE_TASK, bind=True, acks_late=True, reject_on_worker_lost=True, Request=NodeRequest,
             max_retries=None)(_run_node_with_ids)
    app.task(name=FINALIZE_TASK, bind=True, acks_late=True, reject_on_worker_lost=True)(_finalize_with_ids)
