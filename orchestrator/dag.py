"""DAG documents: validation, normalization and the graph model.

:func:`~orchestrator.loading.load_dag_document` (re-exported here) turns
YAML or JSON text into a dict.
:func:`parse_dag` checks every rule in one pass, so one
:class:`~orchestrator.errors.DagValidationError` lists all problems, and
returns a :class:`Dag` whose ``document`` is the normalized document (every
default filled in) and whose ``dag_hash`` is the hash of that document.
Conditions live in :mod:`orchestrator.conditions` and input mappings in
:mod:`orchestrator.mapping`.
"""

from __future__ import annotations

import copy
import difflib
import heapq
import json
import math
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import TYPE_CHECKING, Any


from orchestrator.conditions import Condition, compile_condition
from orchestrator.errors import DagProblem, DagValidationError, JsonDomainError
from orchestrator.hashing import check_json_domain, dag_hash
from orchestrator.loading import load_dag_document
from orchestrator.mapping import json_type_name, parse_reference

if TYPE_CHECKING:
    from orchestrator.agents import AgentRegistry

__all__ = [
    "DEFAULT_EXECUTION_TIMEOUT_SECONDS",
    "DEFAULT_RETRY_POLICY",
    "DEFAULT_TIMEOUT_POLICY",
    "MAX_EXECUTION_TIMEOUT_SECONDS",
    "MAX_RETRIES",
    "MAX_RETRY_DELAY_SECONDS",
    "MAX_TIMEOUT_SECONDS",
    "MIN_EXECUTION_TIMEOUT_SECONDS",
    "MIN_TIMEOUT_SECONDS",
    "Dag",
    "Node",
    "RetryPolicy",
    "TimeoutPolicy",
    "dag_from_normalized",
    "load_dag_document",
    "parse_dag",
]

MAX_RETRIES = 100
MAX_TIMEOUT_SECONDS = 7 * 24 * 3600.0
# Celery's time limits are timers of the pool; below a second they would fire
# during the claim itself, before the agent starts.
MIN_TIMEOUT_SECONDS = 1.0
# A retry countdown becomes a Celery ETA; a day is far beyond any useful
# backoff and far from the datetime overflow that huge values cause.
MAX_RETRY_DELAY_SECONDS = 24 * 3600.0
# Bounds of a DAG's execution_timeout_seconds. The default applies to DAGs
# that do not set one, unless GL_ORCHESTRATOR_EXECUTION_TIMEOUT_SECONDS
# replaces it.
MIN_EXECUTION_TIMEOUT_SECONDS = 1.0
MAX_EXECUTION_TIMEOUT_SECONDS = 30 * 24 * 3600.0
DEFAULT_EXECUTION_TIMEOUT_SECONDS = 24 * 3600.0
MAX_VERSION_LENGTH = 63
RETRY_STRATEGIES = ("exponential", "linear", "fixed")
TIMEOUT_ACTIONS = ("fail", "retry", "skip")
DAG_FAILURE_MODES = ("fail_fast", "continue")
NODE_FAILURE_MODES = ("stop", "skip")

_ID_PATTERN = re.compile(r"[A-Za-z0-9_.\-]{1,63}")
_ID_RULE = "use 1-63 characters of A-Z a-z 0-9 _ . -"
_DAG_FIELDS = (
    "dag_id",
    "name",
    "version",
    "description",
    "on_failure",
    "default_retry_policy",
    "default_timeout_policy",
    "max_parallel_nodes",
    "execution_timeout_seconds",
    "nodes",
)
_NODE_FIELDS = (
    "agent_id",
    "agent_version",
    "depends_on",
    "params",
    "input_mapping",
    "condition",
    "retry_policy",
    "timeout_policy",
    "on_failure",
    "description",
)
_RETRY_FIELDS = ("max_retries", "strategy", "base_delay", "max_delay", "jitter")
_TIMEOUT_FIELDS = ("timeout_seconds", "on_timeout")
_DEFAULT_MAX_PARALLEL_NODES = 32
_DEFAULT_VERSION = "1.0.0"
_MISSING: Any = object()


def _show(value: Any) -> str:
    """Render a value as JSON for messages, so users see true and null as they wrote them."""
    return json.dumps(value, ensure_ascii=False, default=repr)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _retry_policy_errors(values: Mapping[str, Any]) -> list[str]:
    """Return one message per invalid value of a complete retry policy."""
    errors = []
    max_retries = values["max_retries"]
    if not _is_integer(max_retries) or not 0 <= max_retries <= MAX_RETRIES:
        errors.append(f"max_retries must be an integer from 0 to {MAX_RETRIES}, not {_show(max_retries)}")
    if values["strategy"] not in RETRY_STRATEGIES:
        errors.append(f"strategy must be exponential, linear or fixed, not {_show(values['strategy'])}")

    base_delay, max_delay = values["base_delay"], values["max_delay"]
    base_valid = _is_number(base_delay) and 0 <= base_delay <= MAX_RETRY_DELAY_SECONDS
    if not base_valid:
        errors.append(
            f"base_delay must be a number of seconds from 0 to {MAX_RETRY_DELAY_SECONDS:.0f} (1 day), "
            f"not {_show(base_delay)}"
        )
    if not _is_number(max_delay) or not 0 <= max_delay <= MAX_RETRY_DELAY_SECONDS:
        errors.append(
            f"max_delay must be a number of seconds from 0 to {MAX_RETRY_DELAY_SECONDS:.0f} (1 day), "
            f"not {_show(max_delay)}"
        )
    elif base_valid and max_delay < base_delay:
        errors.append(
            f"max_delay {_show(max_delay)} is less than base_delay {_show(base_delay)}; "
            "raise max_delay or lower base_delay"
        )

    if not isinstance(values["jitter"], bool):
        errors.append(f"jitter must be true or false, not {_show(values['jitter'])}")
    return errors


def _timeout_policy_errors(values: Mapping[str, Any]) -> list[str]:
    """Return one message per invalid value of a complete timeout policy."""
    errors = []
    seconds = values["timeout_seconds"]
    if not _is_number(seconds) or not MIN_TIMEOUT_SECONDS <= seconds <= MAX_TIMEOUT_SECONDS:
        errors.append(
            f"timeout_seconds must be a number of seconds from {MIN_TIMEOUT_SECONDS:g} to "
            f"{MAX_TIMEOUT_SECONDS:.0f} (7 days), not {_show(seconds)}"
        )
    if values["on_timeout"] not in TIMEOUT_ACTIONS:
        errors.append(f"on_timeout must be fail, retry or skip, not {_show(values['on_timeout'])}")
    return errors


@dataclass(frozen=True)
class RetryPolicy:
    """How often and after what delay a failed node is retried."""

    max_retries: int
    strategy: str
    base_delay: float
    max_delay: float
    jitter: bool

    def __post_init__(self) -> None:
        errors = _retry_policy_errors(self.to_dict())
        if errors:
            raise ValueError("invalid retry policy: " + "; ".join(errors))

    def delay(self, retry_number: int, random_fraction: float = 1.0) -> float:
        """Return the seconds to wait before retry ``retry_number`` (1 is the first retry).

        exponential waits ``base_delay * 2**(n - 1)``, linear ``base_delay * n``
        and fixed ``base_delay``, each capped at ``max_delay``. With jitter the
        capped delay is multiplied by ``random_fraction``, a value in [0, 1]
        that the caller draws ("full jitter"); without jitter it is ignored.
        """
        if not _is_integer(retry_number) or retry_number < 1:
            raise ValueError(f"retry_number must be an integer >= 1, not {retry_number!r}")
        if not 0.0 <= random_fraction <= 1.0:
            raise ValueError(f"random_fraction must be in [0, 1], not {random_fraction!r}")

        if self.strategy == "exponential":
            # The exponent is clamped so that the float stays finite. Any base
            # delay above zero reaches max_delay long before 2**1000.
            raw = self.base_delay * 2.0 ** min(retry_number - 1, 1000)
        elif self.strategy == "linear":
            raw = self.base_delay * retry_number
        else:
            raw = self.base_delay
        capped = min(raw, self.max_delay)
        return capped * random_fraction if self.jitter else capped

    def to_dict(self) -> dict[str, Any]:
        return {
            "max_retries": self.max_retries,
            "strategy": self.strategy,
            "base_delay": self.base_delay,
            "max_delay": self.max_delay,
            "jitter": self.jitter,
        }


@dataclass(frozen=True)
class TimeoutPolicy:
    """How long one attempt of a node may run, and what happens when it runs longer."""

    timeout_seconds: float
    on_timeout: str

    def __post_init__(self) -> None:
        errors = _timeout_policy_errors(self.to_dict())
        if errors:
            raise ValueError("invalid timeout policy: " + "; ".join(errors))

    def to_dict(self) -> dict[str, Any]:
        return {"timeout_seconds": self.timeout_seconds, "on_timeout": self.on_timeout}


DEFAULT_RETRY_POLICY = RetryPolicy(max_retries=0, strategy="exponential", base_delay=1.0, max_delay=60.0, jitter=True)
DEFAULT_TIMEOUT_POLICY = TimeoutPolicy(timeout_seconds=3600.0, on_timeout="fail")


@dataclass(frozen=True)
class Node:
    """One validated node of a DAG. Treat ``params`` as read-only: the DAG's hash covers it."""

    node_id: str
    agent_id: str
    agent_version: str | None
    depends_on: tuple[str, ...]
    params: dict[str, Any]
    input_mapping: dict[str, str]
    condition: Condition | None
    retry_policy: RetryPolicy
    timeout_policy: TimeoutPolicy
    on_failure: str


@dataclass(frozen=True)
class Dag:
    """A validated DAG: its nodes, the normalized document and its hash.

    Build it with :func:`parse_dag` or :func:`dag_from_normalized`, which
    guarantee that the nodes form an acyclic graph matching ``document``.
    """

    dag_id: str
    name: str
    version: str
    on_failure: str
    max_parallel_nodes: int
    nodes: Mapping[str, Node]
    document: dict[str, Any]
    dag_hash: str
    # None when the document sets no execution_timeout_seconds; the caller's default then applies.
    execution_timeout_seconds: float | None = None
    _children: Mapping[str, tuple[str, ...]] = field(init=False, repr=False, compare=False)
    _order: list[tuple[str, ...]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        nodes = MappingProxyType(dict(self.nodes))
        children: dict[str, list[str]] = {node_id: [] for node_id in nodes}
        for node_id, node in nodes.items():
            if node.node_id != node_id:
                raise ValueError(f"node {node.node_id!r} is stored under the key {node_id!r}")
            for parent in node.depends_on:
                if parent not in children:
                    raise ValueError(f"node {node_id!r} depends on {parent!r}, which is not a node of this DAG")
                children[parent].append(node_id)

        object.__setattr__(self, "nodes", nodes)
        object.__setattr__(self, "_children", {node_id: tuple(sorted(ids)) for node_id, ids in children.items()})
        # The list caches the topological order once computed, because a frozen dataclass cannot assign it.
        object.__setattr__(self, "_order", [])

    def execution_timeout(self, default_seconds: float | None = None) -> float | None:
        """Return the seconds an execution of this DAG may take: its own timeout, else ``default_seconds``.

        ``default_seconds`` None stands for DEFAULT_EXECUTION_TIMEOUT_SECONDS.
        A default of 0 means no deadline, so the result is None when the DAG
        sets no timeout of its own.
        """
        if self.execution_timeout_seconds is not None:
            return self.execution_timeout_seconds
        if default_seconds is None:
            return DEFAULT_EXECUTION_TIMEOUT_SECONDS
        return default_seconds if default_seconds > 0 else None

    def deadline_after(self, start: datetime, default_seconds: float | None = None) -> datetime | None:
        """Return the deadline of an execution that starts (or resumes) at ``start``, or None for no deadline."""
        timeout = self.execution_timeout(default_seconds)
        return None if timeout is None else start + timedelta(seconds=timeout)

    def parents(self, node_id: str) -> tuple[str, ...]:
        return self.nodes[node_id].depends_on

    def children(self, node_id: str) -> tuple[str, ...]:
        return self._children[node_id]

    def ancestors(self, node_id: str) -> frozenset[str]:
        """Return every node upstream of ``node_id``, parents included."""
        found: set[str] = set()
        stack = list(self.nodes[node_id].depends_on)
        while stack:
            parent = stack.pop()
            if parent not in found:
                found.add(parent)
                stack.extend(self.nodes[parent].depends_on)
        return frozenset(found)

    def roots(self) -> tuple[str, ...]:
        return tuple(sorted(node_id for node_id, node in self.nodes.items() if not node.depends_on))

    def sinks(self) -> tuple[str, ...]:
        return tuple(sorted(node_id for node_id, children in self._children.items() if not children))

    def topological_order(self) -> tuple[str, ...]:
        """Return the canonical order: Kahn's algorithm, taking the smallest ready id by code point."""
        if not self._order:
            parents = {node_id: node.depends_on for node_id, node in self.nodes.items()}
            order = _topological_order(parents, self._children)
            if len(order) != len(self.nodes):
                raise ValueError(f"DAG {self.dag_id!r} has a cycle; validate it with parse_dag")
            self._order.append(tuple(order))
        return self._order[0]

    def referenced_nodes(self, node_id: str) -> frozenset[str]:
        """Return the ids of the nodes whose results the node's input mapping and condition read."""
        node = self.nodes[node_id]
        referenced = set(node.condition.node_references) if node.condition is not None else set()
        for reference in node.input_mapping.values():
            parsed = parse_reference(reference, self.nodes)
            if parsed.node_id is not None:
                referenced.add(parsed.node_id)
        return frozenset(referenced)


def _topological_order(
    parents: Mapping[str, Sequence[str]], children: Mapping[str, Sequence[str]]
) -> list[str]:
    """Run Kahn's algorithm with a heap, so the smallest ready id by code point comes first.

    Nodes on a cycle, and nodes downstream of one, are left out of the result.
    Python compares strings by code point, so the heap gives the canonical order.
    """
    waiting = {node_id: len(ids) for node_id, ids in parents.items()}
    ready = [node_id for node_id, count in waiting.items() if count == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        node_id = heapq.heappop(ready)
        order.append(node_id)
        for child in children[node_id]:
            waiting[child] -= 1
            if waiting[child] == 0:
                heapq.heappush(ready, child)
    return order


def parse_dag(document: Mapping[str, Any], registry: AgentRegistry | None = None) -> Dag:
    """Validate and normalize a DAG document.

    Raise one DagValidationError listing every problem found. With
    ``registry`` set, every node's agent (and pinned version) must be
    registered in it. Pass None to skip that rule, as when a stored document is
    loaded again.
    """
    return _DagParser(document, registry).parse()


def dag_from_normalized(document: Mapping[str, Any]) -> Dag:
    """Rebuild a Dag from a normalized document; the result has the same ``dag_hash``."""
    return parse_dag(document, registry=None)


@dataclass
class _Header:
    dag_id: Any
    name: str
    version: str
    description: str
    on_failure: str
    retry_policy: dict[str, Any]
    timeout_policy: dict[str, Any]
    max_parallel_nodes: int
    execution_timeout_seconds: float | None


@dataclass
class _NodeDraft:
    """A node's fields as read from the document, before the graph rules are checked."""

    node_id: str
    agent_id: str = ""
    agent_version: str | None = None
    depends_on: list[str] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    input_mapping: dict[str, str] = field(default_factory=dict)
    condition: Condition | None = None
    retry_policy: dict[str, Any] = field(default_factory=DEFAULT_RETRY_POLICY.to_dict)
    timeout_policy: dict[str, Any] = field(default_factory=DEFAULT_TIMEOUT_POLICY.to_dict)
    on_failure: str = "stop"
    description: str = ""
    parents: list[str] = field(default_factory=list)


class _DagParser:
    """Collect every problem of one document, then build the Dag if there are none."""

    def __init__(self, document: Mapping[str, Any], registry: AgentRegistry | None) -> None:
        self.document = document
        self.registry = registry
        self.problems: list[DagProblem] = []
        # Every string node id in the document, including nodes rejected for
        # their own problems, so that references to them are not reported twice.
        self.declared_ids: set[str] = set()

    def add(self, code: str, message: str, node_ids: Sequence[str] = ()) -> None:
        self.problems.append(DagProblem(code, message, tuple(node_ids)))

    def parse(self) -> Dag:
        if not isinstance(self.document, Mapping):
            problem = DagProblem(
                "invalid_field",
                f"a DAG document must be a mapping with dag_id and nodes, not {json_type_name(self.document)}",
            )
            raise DagValidationError(problems=[problem])

        header = self._parse_header(self.document)
        drafts = self._parse_nodes(self.document.get("nodes", _MISSING), header)
        if drafts:
            self._check_dependencies(drafts)
            self._check_cycles(drafts)
            self._check_references(drafts)

        document: dict[str, Any] = {}
        digest = ""
        if not self.problems:
            document = _normalized_document(header, drafts)
            try:
                digest = dag_hash(document)
            except JsonDomainError as exc:
                self.add("invalid_field", f"the DAG document is outside the JSON domain: {exc}")

        if self.problems:
            dag_id = header.dag_id if isinstance(header.dag_id, str) else None
            raise DagValidationError(problems=self.problems, dag_id=dag_id)
        return _build_dag(header, drafts, document, digest)

    def _parse_header(self, document: Mapping[str, Any]) -> _Header:
        self._check_unknown_fields(document, _DAG_FIELDS, "the DAG document", ())

        dag_id = document.get("dag_id", _MISSING)
        if dag_id is _MISSING:
            self.add("invalid_field", "dag_id is missing; add an id such as ghg-inventory")
        elif not isinstance(dag_id, str) or not _ID_PATTERN.fullmatch(dag_id):
            self.add("invalid_id", f"dag_id {_show(dag_id)} is invalid; {_ID_RULE}")
        elif dag_id in (".", ".."):
            # Clients drop . and .. path segments, so /dags/.. could never be reached.
            self.add("invalid_id", f"dag_id {_show(dag_id)} is invalid; it must contain a letter, digit, _ or -")

        fallback_name = dag_id if isinstance(dag_id, str) else ""
        name = self._string(document, "name", fallback_name, "the DAG's name", ())
        version = self._version(document.get("version", _DEFAULT_VERSION), "version", ())
        description = self._string(document, "description", "", "the DAG's description", ())
        on_failure = self._failure_mode(document, DAG_FAILURE_MODES, "", ())
        retry = self._policy(
            document, "default_retry_policy", DEFAULT_RETRY_POLICY.to_dict(), _RETRY_FIELDS, _retry_policy_errors, ""
        )
        timeout = self._policy(
            document, "default_timeout_policy", DEFAULT_TIMEOUT_POLICY.to_dict(), _TIMEOUT_FIELDS,
            _timeout_policy_errors, "",
        )

        max_parallel = document.get("max_parallel_nodes", _DEFAULT_MAX_PARALLEL_NODES)
        if not _is_integer(max_parallel) or max_parallel < 1:
            self.add("invalid_field", f"max_parallel_nodes must be an integer >= 1, not {_show(max_parallel)}")
            max_parallel = _DEFAULT_MAX_PARALLEL_NODES

        execution_timeout = self._execution_timeout(document.get("execution_timeout_seconds"))
        return _Header(dag_id, name, version, description, on_failure, retry, timeout, max_parallel,
                       execution_timeout)

    def _execution_timeout(self, value: Any) -> float | None:
        """Return the DAG's execution timeout as a float, or None when it is absent, null or invalid."""
        if value is None:
            return None
        if not _is_number(value) or not MIN_EXECUTION_TIMEOUT_SECONDS <= value <= MAX_EXECUTION_TIMEOUT_SECONDS:
            self.add(
                "invalid_field",
                f"execution_timeout_seconds must be a number of seconds from {MIN_EXECUTION_TIMEOUT_SECONDS:g} to "
                f"{MAX_EXECUTION_TIMEOUT_SECONDS:.0f} (30 days), not {_show(value)}; remove it to use "
                "GL_ORCHESTRATOR_EXECUTION_TIMEOUT_SECONDS",
            )
            return None
        return float(value)

    def _parse_nodes(self, nodes: Any, header: _Header) -> dict[str, _NodeDraft]:
        if nodes is _MISSING:
            self.add("invalid_field", "nodes is missing; add a mapping of node id to node")
            return {}
        if not isinstance(nodes, Mapping):
            self.add("invalid_field", f"nodes must be a mapping of node id to node, not {json_type_name(nodes)}")
            return {}
        if not nodes:
            label = f"DAG {header.dag_id!r}" if isinstance(header.dag_id, str) else "the DAG"
            self.add("empty_dag", f"{label} has no nodes; add at least one node under nodes")
            return {}

        drafts = {}
        for node_id, raw in nodes.items():
            if not isinstance(node_id, str):
                self.add("invalid_id", f"node id {_show(node_id)} must be a string; quote it")
                continue
            self.declared_ids.add(node_id)
            if not _ID_PATTERN.fullmatch(node_id):
                self.add("invalid_id", f"node id {node_id!r} is invalid; {_ID_RULE}", (node_id,))
            if not isinstance(raw, Mapping):
                self.add(
                    "invalid_field",
                    f"node {node_id!r} must be a mapping of fields such as agent_id, not {json_type_name(raw)}",
                    (node_id,),
                )
                continue
            drafts[node_id] = self._parse_node(node_id, raw, header)
        return drafts

    def _parse_node(self, node_id: str, raw: Mapping[str, Any], header: _Header) -> _NodeDraft:
        ids = (node_id,)
        where = f"node {node_id!r}: "
        self._check_unknown_fields(raw, _NODE_FIELDS, f"node {node_id!r}", ids)
        draft = _NodeDraft(node_id)

        agent_id = raw.get("agent_id", _MISSING)
        if agent_id is _MISSING:
            self.add("invalid_field", f"{where}agent_id is missing; set it to the id of a registered agent", ids)
        elif not isinstance(agent_id, str) or not _ID_PATTERN.fullmatch(agent_id):
            self.add("invalid_field", f"{where}agent_id {_show(agent_id)} is invalid; {_ID_RULE}", ids)
        else:
            draft.agent_id = agent_id

        agent_version = raw.get("agent_version")
        if agent_version is not None:
            draft.agent_version = self._version(agent_version, f"{where}agent_version", ids)

        draft.depends_on = self._depends_on(raw.get("depends_on", []), where, ids)
        draft.params = self._params(raw.get("params", {}), where, ids)
        draft.input_mapping = self._input_mapping(raw.get("input_mapping", {}), where, ids)
        draft.condition = self._condition(raw.get("condition"), where, ids)
        draft.retry_policy = self._policy(
            raw, "retry_policy", header.retry_policy, _RETRY_FIELDS, _retry_policy_errors, where, ids
        )
        draft.timeout_policy = self._policy(
            raw, "timeout_policy", header.timeout_policy, _TIMEOUT_FIELDS, _timeout_policy_errors, where, ids
        )
        draft.on_failure = self._failure_mode(raw, NODE_FAILURE_MODES, where, ids)
        draft.description = self._string(raw, "description", "", f"{where}description", ids)

        if self.registry is not None and draft.agent_id:
            self._check_agent(self.registry, draft, where)
        return draft

    def _check_unknown_fields(
        self, mapping: Mapping[Any, Any], allowed: Sequence[str], label: str, node_ids: Sequence[str]
    ) -> None:
        for key in mapping:
            if key in allowed:
                continue
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            self.add(
                "unknown_field",
                f"{label} has an unknown field {_show(key)}; {hint}allowed fields are {', '.join(allowed)}",
                node_ids,
            )

    def _string(
        self, mapping: Mapping[str, Any], key: str, default: str, label: str, node_ids: Sequence[str]
    ) -> str:
        value = mapping.get(key, default)
        if not isinstance(value, str):
            self.add("invalid_field", f"{label} must be a string, not {_show(value)}", node_ids)
            return default
        return value

    def _version(self, value: Any, label: str, node_ids: Sequence[str]) -> str:
        if _is_number(value):
            # YAML reads an unquoted 1.0 as a float, and the float cannot tell 1.1 from 1.10.
            self.add("invalid_field", f'{label} {_show(value)} must be a string; quote it: "{value}"', node_ids)
            return _DEFAULT_VERSION
        if not isinstance(value, str) or not value.strip():
            self.add("invalid_field", f'{label} must be a non-empty string such as "1.0.0", not {_show(value)}', node_ids)
            return _DEFAULT_VERSION
        if len(value) > MAX_VERSION_LENGTH:
            self.add("invalid_field", f"{label} is {len(value)} characters long; use at most {MAX_VERSION_LENGTH}",
                     node_ids)
            return _DEFAULT_VERSION
        return value

    def _failure_mode(
        self, mapping: Mapping[str, Any], allowed: Sequence[str], where: str, node_ids: Sequence[str]
    ) -> str:
        value = mapping.get("on_failure", allowed[0])
        choices = " or ".join(allowed)
        if value == "compensate":
            self.add("unsupported", f"{where}on_failure 'compensate' is not supported yet; use {choices}", node_ids)
        elif value not in allowed:
            self.add("invalid_field", f"{where}on_failure {_show(value)} is invalid; use {choices}", node_ids)
        else:
            return str(value)
        return allowed[0]

    def _policy(
        self,
        mapping: Mapping[str, Any],
        key: str,
        base: dict[str, Any],
        allowed: Sequence[str],
        check: Callable[[Mapping[str, Any]], list[str]],
        where: str,
        node_ids: Sequence[str] = (),
    ) -> dict[str, Any]:
        """Merge a partial policy over ``base``, or return a copy of ``base`` when the result is invalid."""
        raw = mapping.get(key, _MISSING)
        if raw is _MISSING:
            return dict(base)
        if not isinstance(raw, Mapping):
            self.add("invalid_policy", f"{where}{key} must be a mapping of {', '.join(allowed)}", node_ids)
            return dict(base)

        self._check_unknown_fields(raw, allowed, f"{where}{key}", node_ids)
        merged = {**base, **{name: raw[name] for name in allowed if name in raw}}
        errors = check(merged)
        inherited = [name for name in allowed if name not in raw]
        origin = f"default_{key}" if where else "the built-in default"
        for error in errors:
            # A node's max_delay can clash with its own base_delay while coming from the DAG's default.
            named = [name for name in inherited if re.search(rf"\b{name}\b", error)]
            note = f" ({', '.join(named)} inherited from {origin})" if named else ""
            self.add("invalid_policy", f"{where}{key}: {error}{note}", node_ids)
        if errors:
            return dict(base)

        for name in ("base_delay", "max_delay", "timeout_seconds"):
            if name in merged:
                merged[name] = float(merged[name])
        return merged

    def _depends_on(self, value: Any, where: str, node_ids: Sequence[str]) -> list[str]:
        if isinstance(value, str):
            self.add(
                "invalid_field",
                f"{where}depends_on must be a list of node ids, not a string; write depends_on: [{value}]",
                node_ids,
            )
            return []
        if not isinstance(value, list):
            self.add("invalid_field", f"{where}depends_on must be a list of node ids, not {_show(value)}", node_ids)
            return []

        valid = []
        for item in value:
            if isinstance(item, str):
                valid.append(item)
            else:
                self.add("invalid_field", f"{where}depends_on entry {_show(item)} must be a node id string", node_ids)
        return valid

    def _params(self, value: Any, where: str, node_ids: Sequence[str]) -> dict[str, Any]:
        if not isinstance(value, Mapping):
            self.add("invalid_field", f"{where}params must be a JSON object, not {json_type_name(value)}", node_ids)
            return {}
        try:
            check_json_domain(dict(value), "params")
        except JsonDomainError as exc:
            self.add("invalid_field", f"{where}{exc}", node_ids)
            return {}
        return copy.deepcopy(dict(value))

    def _input_mapping(self, value: Any, where: str, node_ids: Sequence[str]) -> dict[str, str]:
        if not isinstance(value, Mapping):
            self.add(
                "invalid_field",
                f"{where}input_mapping must map input names to references such as results.load.rows, "
                f"not {json_type_name(value)}",
                node_ids,
            )
            return {}

        mapping = {}
        for name, reference in value.items():
            if not isinstance(name, str) or not name:
                self.add("invalid_mapping", f"{where}input name {_show(name)} must be a non-empty string", node_ids)
            elif not isinstance(reference, str):
                self.add(
                    "invalid_mapping",
                    f"{where}input mapping {name!r} must be a reference string such as results.load.rows, "
                    f"not {_show(reference)}",
                    node_ids,
                )
            else:
                mapping[name] = reference
        return mapping

    def _condition(self, value: Any, where: str, node_ids: Sequence[str]) -> Condition | None:
        if value is None:
            return None
        if not isinstance(value, str):
            self.add("invalid_field", f"{where}condition must be a string or null, not {_show(value)}", node_ids)
            return None
        try:
            return compile_condition(value)
        except ValueError as exc:
            self.add("invalid_condition", f"{where}condition {value!r} is invalid: {exc}", node_ids)
            return None

    def _check_agent(self, registry: AgentRegistry, draft: _NodeDraft, where: str) -> None:
        ids = (draft.node_id,)
        if not registry.has(draft.agent_id):
            self.add(
                "unknown_agent",
                f"{where}agent {draft.agent_id!r} is not registered; check the id, and check that "
                "GL_ORCHESTRATOR_AGENT_MODULES (or the command's --agents option) imports the module that "
                "registers it",
                ids,
            )
        elif draft.agent_version is not None and not registry.has(draft.agent_id, draft.agent_version):
            self.add(
                "unknown_agent",
                f"{where}agent {draft.agent_id!r} has no registered version {draft.agent_version!r}; pin a "
                "registered version, or remove agent_version to use the highest one",
                ids,
            )

    def _check_dependencies(self, drafts: dict[str, _NodeDraft]) -> None:
        """Report self, duplicate and unknown dependencies, and keep the valid ones as ``parents``."""
        for node_id, draft in drafts.items():
            for parent, count in Counter(draft.depends_on).items():
                if count > 1:
                    self.add(
                        "duplicate_dependency",
                        f"node {node_id!r} lists {parent!r} {count} times in depends_on; list it once",
                        (node_id,),
                    )
                if parent == node_id:
                    self.add(
                        "self_dependency",
                        f"node {node_id!r} depends on itself; remove {node_id!r} from its depends_on",
                        (node_id,),
                    )
                elif parent in self.declared_ids and parent not in drafts:
                    continue
                elif parent not in drafts:
                    self.add(
                        "unknown_dependency",
                        f"node {node_id!r} depends on {parent!r}, which is not a node of this DAG; "
                        f"fix the id in depends_on or add a node {parent!r}",
                        (node_id,),
                    )
                else:
                    draft.parents.append(parent)
            draft.parents.sort()

    def _check_cycles(self, drafts: dict[str, _NodeDraft]) -> None:
        for cycle in _find_cycles({node_id: draft.parents for node_id, draft in drafts.items()}):
            path = " -> ".join(cycle + (cycle[0],))
            self.add(
                "cycle",
                f"cycle: {path}; each node depends on the one before it, so remove one of these "
                "dependencies from depends_on",
                cycle,
            )

    def _check_references(self, drafts: dict[str, _NodeDraft]) -> None:
        """Check that input mappings and conditions read only the results of upstream nodes."""
        upstream = _Ancestry({node_id: draft.parents for node_id, draft in drafts.items()})
        for node_id, draft in drafts.items():
            where = f"node {node_id!r}: "
            for name, text in draft.input_mapping.items():
                try:
                    reference = parse_reference(text, self.declared_ids)
                except ValueError as exc:
                    self.add("invalid_mapping", f"{where}input mapping {name!r} is invalid: {exc}", (node_id,))
                    continue
                if reference.node_id is not None:
                    label = f"input mapping {name!r} -> {text!r}"
                    self._check_upstream(upstream, node_id, reference.node_id, label, "mapping_not_ancestor")

            if draft.condition is None:
                continue
            label = f"condition {draft.condition.source!r}"
            for source_id in sorted(draft.condition.node_references):
                if source_id in self.declared_ids:
                    self._check_upstream(upstream, node_id, source_id, label, "condition_not_ancestor")
                    continue
                self.add(
                    "invalid_condition",
                    f"{where}{label} reads results of {source_id!r}, which is not a node of this DAG; "
                    f"fix the node id, and write results[\"<node id>\"] for an id that contains dots or hyphens",
                    (node_id,),
                )

    def _check_upstream(self, upstream: _Ancestry, node_id: str, source_id: str, label: str, code: str) -> None:
        if source_id not in upstream.bits:
            return  # The node was rejected for its own problems, which are reported already.
        if source_id == node_id:
            self.add(
                code,
                f"node {node_id!r}: {label} reads the results of {node_id!r} itself; a node can read only "
                "the results of nodes upstream of it",
                (node_id,),
            )
        elif not upstream.is_ancestor(source_id, node_id):
            self.add(
                code,
                f"node {node_id!r}: {label} reads the results of node {source_id!r}, which is not upstream "
                f"of {node_id!r}; add {source_id!r} to the depends_on of {node_id!r}",
                (node_id, source_id),
            )


class _Ancestry:
    """Ancestor sets of every node as integer bit sets, so "is A upstream of B" takes constant time.

    The sets are built over the strongly connected components, so nodes on or
    below a cycle get correct sets too, and their references are checked in
    the same pass that reports the cycle.
    """

    def __init__(self, parents: Mapping[str, Sequence[str]]) -> None:
        children: dict[str, list[str]] = {node_id: [] for node_id in parents}
        for node_id, ids in parents.items():
            for parent in ids:
                children[parent].append(node_id)

        self.bits = {node_id: 1 << position for position, node_id in enumerate(parents)}
        components = _strongly_connected_components(children)
        self.component_of = {node_id: number for number, members in enumerate(components) for node_id in members}
        member_masks = [sum(self.bits[node_id] for node_id in members) for members in components]

        # Tarjan's algorithm emits a component after every component below it,
        # so walking the list backwards visits each component after its parents.
        self.ancestor_masks = [0] * len(components)
        for number in reversed(range(len(components))):
            mask = member_masks[number] if len(components[number]) > 1 else 0
            for node_id in components[number]:
                for parent in parents[node_id]:
                    parent_component = self.component_of[parent]
                    if parent_component != number:
                        mask |= self.ancestor_masks[parent_component] | member_masks[parent_component]
            self.ancestor_masks[number] = mask

    def is_ancestor(self, candidate: str, node_id: str) -> bool:
        return bool(self.ancestor_masks[self.component_of[node_id]] & self.bits[candidate])


def _strongly_connected_components(children: Mapping[str, Sequence[str]]) -> list[list[str]]:
    """Return the strongly connected components, each after all components reachable from it.

    This is Tarjan's algorithm with an explicit stack instead of recursion,
    because a chain of 10,000 nodes would pass Python's recursion limit.
    """
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    for root in children:
        if root in index:
            continue
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        work = [(root, iter(children[root]))]
        while work:
            node_id, pending = work[-1]
            child = next(pending, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(children[child])))
                elif child in on_stack:
                    low[node_id] = min(low[node_id], index[child])
                continue

            work.pop()
            if work:
                caller = work[-1][0]
                low[caller] = min(low[caller], low[node_id])
            if low[node_id] == index[node_id]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node_id:
                        break
                components.append(component)
    return components


def _find_cycles(parents: Mapping[str, Sequence[str]]) -> list[tuple[str, ...]]:
    """Return one cycle per back edge of an iterative depth-first search, as paths along the edges.

    Each path starts at its smallest id and follows parent -> child edges.
    Nodes and children are visited in sorted order, so the result is stable.
    """
    children: dict[str, list[str]] = {node_id: [] for node_id in parents}
    for node_id in sorted(parents):
        for parent in parents[node_id]:
            children[parent].append(node_id)

    on_path, finished = 1, 2
    state: dict[str, int] = {}
    cycles: dict[tuple[str, ...], None] = {}
    for start in sorted(parents):
        if start in state:
            continue
        state[start] = on_path
        path, position, iterators = [start], {start: 0}, [iter(children[start])]
        while iterators:
            child = next(iterators[-1], None)
            if child is None:
                done = path.pop()
                del position[done]
                state[done] = finished
                iterators.pop()
            elif child not in state:
                state[child] = on_path
                position[child] = len(path)
                path.append(child)
                iterators.append(iter(children[child]))
            elif state[child] == on_path:
                cycle = path[position[child] :]
                smallest = cycle.index(min(cycle))
                cycles[tuple(cycle[smallest:] + cycle[:smallest])] = None
    return list(cycles)


def _normalized_document(header: _Header, drafts: Mapping[str, _NodeDraft]) -> dict[str, Any]:
    nodes = {}
    for node_id, draft in drafts.items():
        nodes[node_id] = {
            "agent_id": draft.agent_id,
            "agent_version": draft.agent_version,
            "depends_on": list(draft.parents),
            "params": draft.params,
            "input_mapping": dict(draft.input_mapping),
            "condition": draft.condition.source if draft.condition is not None else None,
            "retry_policy": dict(draft.retry_policy),
            "timeout_policy": dict(draft.timeout_policy),
            "on_failure": draft.on_failure,
            "description": draft.description,
        }
    document: dict[str, Any] = {
        "dag_id": header.dag_id,
        "name": header.name,
        "version": header.version,
        "description": header.description,
        "on_failure": header.on_failure,
        "default_retry_policy": dict(header.retry_policy),
        "default_timeout_policy": dict(header.timeout_policy),
        "max_parallel_nodes": header.max_parallel_nodes,
        "nodes": nodes,
    }
    # Present only when set, so that documents without it keep the dag_hash
    # they had before the field existed.
    if header.execution_timeout_seconds is not None:
        document["execution_timeout_seconds"] = header.execution_timeout_seconds
    return document


def _build_dag(header: _Header, drafts: Mapping[str, _NodeDraft], document: dict[str, Any], digest: str) -> Dag:
    nodes = {}
    for node_id, draft in drafts.items():
        nodes[node_id] = Node(
            node_id=node_id,
            agent_id=draft.agent_id,
            agent_version=draft.agent_version,
            depends_on=tuple(draft.parents),
            params=document["nodes"][node_id]["params"],
            input_mapping=dict(draft.input_mapping),
            condition=draft.condition,
            retry_policy=RetryPolicy(**draft.retry_policy),
            timeout_policy=TimeoutPolicy(**draft.timeout_policy),
            on_failure=draft.on_failure,
        )
    return Dag(
        dag_id=header.dag_id,
        name=header.name,
        version=header.version,
        on_failure=header.on_failure,
        max_parallel_nodes=header.max_parallel_nodes,
        nodes=nodes,
        document=document,
        dag_hash=digest,
        execution_timeout_seconds=header.execution_timeout_seconds,
    )
