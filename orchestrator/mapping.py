"""Input mappings: references from a node's inputs to the execution input and to upstream results.

A reference has one of four forms::

    input                    the whole execution input
    input.<path>             a value inside the execution input
    results.<node>           the whole output of an upstream node
    results.<node>.<path>    a value inside that output

A path is a dotted list of segments: dict keys, or non-negative indices for
lists (``rows.0.fuel``). Node ids may contain dots, so the node id in
``results.<node>.<path>`` is the dotted prefix that names a known node. DAG
validation rejects a reference that more than one node id could match.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from orchestrator.errors import InputMappingError

if TYPE_CHECKING:
    from orchestrator.dag import Node

__all__ = [
    "INPUT",
    "RESULTS",
    "Reference",
    "json_type_name",
    "parse_reference",
    "read_path",
    "read_segments",
    "resolve_inputs",
]

INPUT = "input"
RESULTS = "results"
_FORMS = "'input', 'input.<path>', 'results.<node>' or 'results.<node>.<path>'"
_MAX_LISTED_KEYS = 10


@dataclass(frozen=True)
class Reference:
    """A parsed reference: where it reads from and the path inside that value."""

    text: str
    source: str  # INPUT or RESULTS
    node_id: str | None  # set when source is RESULTS
    segments: tuple[str, ...]


def parse_reference(reference: str, node_ids: Collection[str]) -> Reference:
    """Parse ``reference``, matching its node id against ``node_ids``.

    Raise ValueError with the reason when the reference is malformed, names no
    node in ``node_ids``, or could name two of them (``results.a.b.c`` when both
    ``a`` and ``a.b`` are node ids).
    """
    if not isinstance(reference, str):
        raise ValueError(f"a reference must be a string such as 'results.load.rows', not {json_type_name(reference)}")
    if reference != reference.strip():
        raise ValueError(f"{reference!r} has leading or trailing whitespace; remove it")

    if reference == INPUT:
        return Reference(reference, INPUT, None, ())
    if reference.startswith(INPUT + "."):
        return Reference(reference, INPUT, None, _split_path(reference, reference[len(INPUT) + 1 :]))
    if not reference.startswith(RESULTS + "."):
        raise ValueError(f"{reference!r} must have the form {_FORMS}")

    rest = reference[len(RESULTS) + 1 :]
    if not rest:
        raise ValueError(f"{reference!r} names no node; write results.<node> or results.<node>.<path>")

    # Every prefix of ``rest`` that ends before a dot, or at its end, could be
    # the node id, because node ids may contain dots themselves.
    candidates = [index for index, char in enumerate(rest) if char == "."] + [len(rest)]
    matches = [index for index in candidates if rest[:index] in node_ids]
    if not matches:
        tried = [repr(rest[:index]) for index in candidates if index > 0]
        if len(tried) == 1:
            reason = f"{tried[0]} is not a known node id"
        else:
            reason = f"none of {', '.join(tried)} is a known node id"
        raise ValueError(f"{reference!r} names no known node: {reason}")
    if len(matches) > 1:
        names = " and ".join(repr(rest[:index]) for index in matches)
        raise ValueError(f"{reference!r} is ambiguous because {names} are both node ids; rename one of those nodes")

    end = matches[0]
    node_id = rest[:end]
    segments = _split_path(reference, rest[end + 1 :]) if end < len(rest) else ()
    return Reference(reference, RESULTS, node_id, segments)


def _split_path(reference: str, path: str) -> tuple[str, ...]:
    segments = tuple(path.split("."))
    if "" in segments:
        raise ValueError(f"{reference!r} has an empty path segment; remove the extra dot")
    return segments


def read_path(root: Any, path: str, *, what: str) -> Any:
    """Read the value at dotted ``path`` inside ``root``. The empty path reads ``root`` itself.

    ``what`` is the full reference shown in errors. Raise InputMappingError
    naming it and the first missing segment.
    """
    if path == "":
        return root
    return read_segments(root, tuple(path.split(".")), what=what)


def read_segments(root: Any, segments: Sequence[str], *, what: str) -> Any:
    """Read the value at ``segments`` inside ``root``: dict keys, and list indices for lists."""
    value = root
    for position, segment in enumerate(segments):
        location = ".".join(segments[:position])
        where = f" under {location!r}" if location else ""

        if isinstance(value, Mapping):
            if segment not in value:
                available = f"available keys: {_list_keys(value)}" if value else "the object is empty"
                raise InputMappingError(f"{what} not found: key {segment!r} is missing{where} ({available})")
            value = value[segment]
        elif isinstance(value, list):
            if not segment.isdigit() or not segment.isascii():
                raise InputMappingError(
                    f"{what} not found: {segment!r} is not a list index{where}; "
                    "lists take non-negative integer indices such as 0"
                )
            index = int(segment)
            if index >= len(value):
                raise InputMappingError(
                    f"{what} not found: index {index} is out of range{where}, a list of length {len(value)}"
                )
            value = value[index]
        else:
            holder = repr(location) if location else "the top-level value"
            raise InputMappingError(
                f"{what} not found: {holder} is {json_type_name(value)}, "
                f"not an object or a list, so it has no {segment!r}"
            )
    return value


def _list_keys(value: Mapping[Any, Any]) -> str:
    if not value:
        return "none"
    keys = sorted(str(key) for key in value)
    listed = ", ".join(repr(key) for key in keys[:_MAX_LISTED_KEYS])
    more = f" and {len(keys) - _MAX_LISTED_KEYS} more" if len(keys) > _MAX_LISTED_KEYS else ""
    return f"{listed}{more}"


def json_type_name(value: Any) -> str:
    """Return the JSON type of ``value`` with an article, for messages: "a number", "null"."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, Mapping):
        return "an object"
    return f"a {type(value).__name__}"


def resolve_inputs(
    node: Node,
    input_data: Any,
    results: Mapping[str, Any],
    *,
    execution_id: str | None = None,
) -> dict[str, Any]:
    """Return ``{input name: value}`` for ``node.input_mapping``.

    ``results`` maps node id to that node's outputs. A reference to a missing
    key, or to a node absent from ``results``, raises InputMappingError with
    ``execution_id`` and ``node_id`` set. A key that is present with a null
    value resolves to None. Values are not copied, so callers that hand them to
    an agent must not share them with another node.
    """
    inputs: dict[str, Any] = {}
    for name, text in node.input_mapping.items():
        prefix = f"node {node.node_id!r}: input mapping {name!r} -> {text!r} cannot be resolved"
        try:
            reference = parse_reference(text, results.keys())
        except ValueError as exc:
            raise InputMappingError(
                f"{prefix}: {exc} (results are available for nodes: {_list_keys(results)})",
                execution_id=execution_id,
                node_id=node.node_id,
            ) from exc

        if reference.node_id is None:
            root = input_data
        else:
            root = results[reference.node_id]
        try:
            inputs[name] = read_segments(root, reference.segments, what=text)
        except InputMappingError as exc:
            raise InputMappingError(f"{prefix}: {exc}", execution_id=execution_id, node_id=node.node_id) from exc
    return inputs
