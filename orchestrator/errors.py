"""Exceptions raised by the orchestrator core.

Every exception derives from :class:`OrchestratorError`, so callers can catch
anything the orchestrator raises with one clause. The families are::

    OrchestratorError
    ├── SettingsError              invalid or missing configuration
    ├── JsonDomainError            a value outside the JSON domain of gl-prov-v1
    ├── DagValidationError         a DAG document breaks one or more rules
    ├── DagNotFoundError           no DAG with that id
    ├── DagConflictError           another document is registered under that id
    ├── DagRetiredError            the DAG accepts no new executions
    ├── AgentError
    │   ├── AgentNotFoundError     no registered agent with that id and version
    │   └── AgentRegistrationError a bad or conflicting registration
    ├── ExecutionError             an execution-level failure (keeps execution_id)
    │   ├── ExecutionNotFoundError
    │   ├── ExecutionConflictError the execution's state forbids the request
    │   ├── NotAReplayError        the execution was not started as a replay
    │   ├── CheckpointsCorruptedError  resume found checkpoints that fail their hash
    │   └── NodeError              a node-level failure (keeps node_id too)
    │       ├── InputMappingError  a mapping or condition reads a missing key
    │       ├── ConditionError     a condition cannot be evaluated
    │       └── NodeTimeoutError   an agent ran past its timeout
    ├── CheckpointIntegrityError   a stored checkpoint does not match its hash
    ├── CheckpointStoreError       a checkpoint store cannot take or give a payload
    └── ProvenanceError            a provenance record cannot be built or verified
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "AgentError",
    "AgentNotFoundError",
    "AgentRegistrationError",
    "CheckpointIntegrityError",
    "CheckpointStoreError",
    "ConditionError",
    "DagConflictError",
    "DagNotFoundError",
    "DagRetiredError",
    "DagProblem",
    "DagValidationError",
    "CheckpointsCorruptedError",
    "CorruptedCheckpoint",
    "ExecutionConflictError",
    "ExecutionError",
    "ExecutionNotFoundError",
    "InputMappingError",
    "JsonDomainError",
    "NodeError",
    "NodeTimeoutError",
    "NotAReplayError",
    "OrchestratorError",
    "ProvenanceError",
    "SettingsError",
]


class OrchestratorError(Exception):
    """Base class of every error raised by gl-orchestrator."""


class SettingsError(OrchestratorError):
    """A configuration value is missing or invalid."""


class JsonDomainError(OrchestratorError, ValueError):
    """A value lies outside the JSON domain that gl-prov-v1 can hash.

    ``path`` is a JSONPath-like location such as ``$.rows[3].fuel``.
    """

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"value at {path} is outside the JSON domain: {reason}")


@dataclass(frozen=True)
class DagProblem:
    """One rule a DAG document breaks, with the node ids involved."""

    code: str
    message: str
    node_ids: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "node_ids": list(self.node_ids)}


@dataclass
class DagValidationError(OrchestratorError):
    """A DAG document breaks one or more validation rules."""

    problems: list[DagProblem] = field(default_factory=list)
    dag_id: str | None = None

    def __post_init__(self) -> None:
        super().__init__(str(self))

    def __str__(self) -> str:
        name = f"DAG {self.dag_id!r}" if self.dag_id else "DAG document"
        lines = [f"{name} is invalid ({len(self.problems)} problem(s)):"]
        lines.extend(f"  - {problem.message}" for problem in self.problems)
        return "\n".join(lines)


class DagNotFoundError(OrchestratorError):
    """No DAG is registered under the requested id."""

    def __init__(self, dag_id: str) -> None:
        self.dag_id = dag_id
        super().__init__(f"DAG {dag_id!r} not found; register it with POST /dags first")


class AgentError(OrchestratorError):
    """Base class for agent registry errors."""


class AgentNotFoundError(AgentError):
    """No agent is registered under the requested id and version."""

    def __init__(self, agent_id: str, version: str | None = None, known: list[str] | None = None) -> None:
        self.agent_id = agent_id
        self.version = version
        label = agent_id if version is None else f"{agent_id}@{version}"
        hint = ("; check that GL_ORCHESTRATOR_AGENT_MODULES (or the command's --agents option) imports the module "
                "that registers it")
        if known:
            hint += f" (registered versions: {', '.join(known)})"
        super().__init__(f"agent {label!r} is not registered{hint}")


class AgentRegistrationError(AgentError):
    """An agent registration is invalid or conflicts with an existing one."""


class ExecutionError(OrchestratorError):
    """An error that belongs to one execution."""

    def __init__(self, message: str, *, execution_id: str | None = None) -> None:
        self.execution_id = execution_id
        super().__init__(message)


class ExecutionNotFoundError(ExecutionError):
    """No execution has the requested id."""

    def __init__(self, execution_id: str) -> None:
        super().__init__(f"execution {execution_id!r} not found", execution_id=execution_id)


class NodeError(ExecutionError):
    """An error that belongs to one node of one execution."""

    def __init__(self, message: str, *, execution_id: str | None = None, node_id: str | None = None) -> None:
        self.node_id = node_id
        super().__init__(message, execution_id=execution_id)


class InputMappingError(NodeError):
    """An input mapping or a condition reads a key that does not exist."""


class ConditionError(NodeError):
    """A node condition could not be evaluated."""


class NodeTimeoutError(NodeError):
    """An agent ran longer than its node's timeout_seconds."""


class CheckpointIntegrityError(OrchestratorError):
    """A stored checkpoint's outputs do not re-hash to its output_hash."""

    def __init__(self, execution_id: str, node_id: str, expected: str | None, actual: str,
                 reason: str | None = None) -> None:
        self.execution_id = execution_id
        self.node_id = node_id
        self.expected = expected
        self.actual = actual
        self.reason = reason
        super().__init__(
            f"checkpoint integrity verification failed execution_id={execution_id} node_id={node_id} "
            f"expected_hash={expected} actual_hash={actual}" + (f" reason={reason}" if reason else "")
        )


class CheckpointStoreError(OrchestratorError, ValueError):
    """A checkpoint store was given an id or hash it cannot address, or cannot store a payload."""


class ProvenanceError(OrchestratorError):
    """A provenance record cannot be built or verified."""


class DagConflictError(OrchestratorError):
    """A different document is already registered under the DAG id."""

    def __init__(self, dag_id: str, stored_hash: str, new_hash: str) -> None:
        self.dag_id = dag_id
        self.stored_hash = stored_hash
        self.new_hash = new_hash
        super().__init__(
            f"DAG {dag_id!r} is already registered with a different document "
            f"(stored dag_hash {stored_hash}, new dag_hash {new_hash}); replace it with PUT /dags/{dag_id}"
        )


class DagRetiredError(OrchestratorError):
    """The DAG is retired, so it accepts no new executions."""

    def __init__(self, dag_id: str) -> None:
        self.dag_id = dag_id
        super().__init__(
            f"DAG {dag_id!r} is retired and accepts no new executions; register it again with PUT /dags/{dag_id}"
        )


class ExecutionConflictError(ExecutionError):
    """The execution's state does not allow the request (HTTP 409)."""


class NotAReplayError(ExecutionError):
    """The execution was not started as a replay, so it has no replay report."""

    def __init__(self, execution_id: str) -> None:
        super().__init__(
            f"execution {execution_id!r} was not started as a replay, so it has no replay report; "
            f"POST /executions/{execution_id}/replay starts a replay of it",
            execution_id=execution_id,
        )


@dataclass(frozen=True)
class CorruptedCheckpoint:
    node_id: str
    expected_hash: str | None
    actual_hash: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"node_id": self.node_id, "expected_hash": self.expected_hash, "actual_hash": self.actual_hash}


class CheckpointsCorruptedError(ExecutionError):
    """Checkpoints whose outputs do not re-hash to their ``output_hash``."""

    def __init__(self, execution_id: str, corrupted: list[CorruptedCheckpoint]) -> None:
        self.corrupted = corrupted
        details = "; ".join(
            f"node {item.node_id!r} expected {item.expected_hash} actual {item.actual_hash}" for item in corrupted
        )
        super().__init__(
            f"checkpoint integrity verification failed for execution {execution_id}: {details}; "
            'resume with {"rerun_corrupted": true} (orchestrator resume --rerun-corrupted) to keep these records '
            "aside as evidence and run the nodes again",
            execution_id=execution_id,
        )
