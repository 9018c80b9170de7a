"""Execution and node states, and the moves allowed between them."""

from __future__ import annotations

from enum import Enum

__all__ = [
    "ExecutionStatus",
    "NodeStatus",
    "EXECUTION_TERMINAL_STATES",
    "NODE_TERMINAL_STATES",
    "NODE_TRANSITIONS",
    "can_move",
    "sources_of",
]


class ExecutionStatus(str, Enum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class NodeStatus(str, Enum):
    WAITING = "waiting"      # some parents have not finished
    READY = "ready"          # every parent finished; waiting for a free slot
    QUEUED = "queued"        # a Celery message was sent
    RUNNING = "running"      # a worker claimed it
    RETRYING = "retrying"    # the last attempt failed; a retry message is scheduled
    COMPLETED = "completed"
    FAILED = "failed"
    SKIPPED = "skipped"


EXECUTION_TERMINAL_STATES = frozenset({ExecutionStatus.COMPLETED, ExecutionStatus.FAILED, ExecutionStatus.CANCELLED})
NODE_TERMINAL_STATES = frozenset({NodeStatus.COMPLETED, NodeStatus.FAILED, NodeStatus.SKIPPED})

NODE_TRANSITIONS: dict[NodeStatus, frozenset[NodeStatus]] = {
    NodeStatus.WAITING: frozenset({NodeStatus.READY, NodeStatus.QUEUED, NodeStatus.SKIPPED, NodeStatus.FAILED}),
    NodeStatus.READY: frozenset({NodeStatus.QUEUED, NodeStatus.SKIPPED}),
    NodeStatus.QUEUED: frozenset({NodeStatus.RUNNING, NodeStatus.SKIPPED, NodeStatus.FAILED}),
    NodeStatus.RUNNING: frozenset({NodeStatus.RUNNING, NodeStatus.RETRYING, *NODE_TERMINAL_STATES}),
    NodeStatus.RETRYING: frozenset({NodeStatus.RUNNING, NodeStatus.SKIPPED, NodeStatus.FAILED}),
    NodeStatus.COMPLETED: frozenset(),
    NodeStatus.FAILED: frozenset(),
    NodeStatus.SKIPPED: frozenset(),
}


def can_move(current: NodeStatus, target: NodeStatus) -> bool:
    """Return whether a node may move from ``current`` to ``target``."""
    return target in NODE_TRANSITIONS[current]


def sources_of(target: NodeStatus) -> frozenset[NodeStatus]:
    """Return the states from which a node may move to ``target``."""
    return frozenset(source for source, targets in NODE_TRANSITIONS.items() if target in targets)
