"""Canonical JSON and the hashes of scheme ``gl-prov-v1``.

``C(x)`` is the RFC 8785 (JCS) canonical form of ``x`` as UTF-8 bytes, built by
the ``rfc8785`` package. ``H(b)`` is the lowercase hex SHA-256 of ``b``. Before
canonicalizing, :func:`check_json_domain` rejects every value that could not
survive a round trip through PostgreSQL JSONB and SQLite unchanged, and names
the JSON path of the first offending value.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping
from typing import Any

import rfc8785

from orchestrator.errors import JsonDomainError

__all__ = [
    "SCHEME",
    "MAX_DEPTH",
    "MAX_SAFE_INTEGER",
    "canonical_json",
    "chain_hash",
    "check_json_domain",
    "dag_hash",
    "input_document",
    "input_hash",
    "json_loads",
    "output_hash",
    "provenance_chain_hash",
    "sha256_hex",
]

SCHEME = "gl-prov-v1"
MAX_SAFE_INTEGER = 2**53 - 1
# Deeper values are rejected: copy.deepcopy and the rfc8785 serializer recurse
# once or twice per level, and Python's default recursion limit is 1,000.
MAX_DEPTH = 200


def check_json_domain(value: Any, path: str = "$") -> None:
    """Raise :class:`JsonDomainError` if ``value`` is outside the JSON domain.

    Accepted: dicts with string keys, lists, strings without NUL or lone
    surrogates, booleans, None, finite floats and integers within
    ±(2**53 - 1). Everything else, tuples and sets included, is rejected so
    that what is hashed is exactly what every store returns.
    """
    # An explicit stack instead of recursion keeps deeply nested input from
    # hitting Python's recursion limit before the depth check can report it.
    stack: list[tuple[Any, str, int]] = [(value, path, 0)]
    while stack:
        item, item_path, depth = stack.pop()
        if item is None or isinstance(item, bool):
            continue
        if isinstance(item, int):
            if not -MAX_SAFE_INTEGER <= item <= MAX_SAFE_INTEGER:
                raise JsonDomainError(
                    item_path,
                    f"integer {item} is outside ±(2**53 - 1); send it as a string or a float",
                )
            continue
        if isinstance(item, float):
            if math.isnan(item) or math.isinf(item):
                raise JsonDomainError(item_path, f"{item!r} is not a finite number")
            continue
        if isinstance(item, str):
            _check_string(item, item_path)
            continue
        if isinstance(item, (dict, list)) and depth >= MAX_DEPTH:
            raise JsonDomainError(item_path, f"value is nested more than {MAX_DEPTH} levels deep; flatten it")
        if isinstance(item, dict):
            for key, child in item.items():
                if not isinstance(key, str):
                    raise JsonDomainError(
                        item_path, f"object key {key!r} is a {type(key).__name__}, not a string"
                    )
                _check_string(key, f"{item_path} (key {key!r})")
                child_path = f"{item_path}.{key}" if key.isidentifier() else f"{item_path}[{key!r}]"
                stack.append((child, child_path, depth + 1))
            continue
        if isinstance(item, list):
            for index, child in enumerate(item):
                stack.append((child, f"{item_path}[{index}]", depth + 1))
            continue
        raise JsonDomainError(
            item_path,
            f"{type(item).__name__} is not a JSON type; convert it to a dict, list, string, number, boolean or None",
        )


def _check_string(text: str, path: str) -> None:
    if "\x00" in text:
        raise JsonDomainError(path, "string contains a NUL character (U+0000), which PostgreSQL JSONB rejects")
    for char in text:
        if "\ud800" <= char <= "\udfff":
            raise JsonDomainError(path, f"string contains a lone surrogate U+{ord(char):04X}")


def canonical_json(value: Any) -> bytes:
    """Return ``C(value)``: the RFC 8785 canonical JSON of ``value`` as UTF-8."""
    check_json_domain(value)
    return rfc8785.dumps(value)


def sha256_hex(data: bytes) -> str:
    """Return ``H(data)``: the lowercase hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def output_hash(outputs: Any) -> str:
    """Return ``H(C(outputs))``."""
    return sha256_hex(canonical_json(outputs))


def input_document(agent_id: str, agent_version: str | None, params: Any, inputs: Any) -> dict[str, Any]:
    """Build the document whose hash is a node's ``input_hash``."""
    return {"agent_id": agent_id, "agent_version": agent_version, "params": params, "inputs": inputs}


def input_hash(agent_id: str, agent_version: str | None, params: Any, inputs: Any) -> str:
    """Return ``H(C({"agent_id", "agent_version", "params", "inputs"}))``."""
    return sha256_hex(canonical_json(input_document(agent_id, agent_version, params, inputs)))


def chain_hash(
    node_id: str,
    status: str,
    input_hash_value: str,
    output_hash_value: str,
    parent_hashes: Iterable[str],
) -> str:
    """Return a node's ``chain_hash``; ``parent_hashes`` are sorted here."""
    document = {
        "scheme": SCHEME,
        "node_id": node_id,
        "status": status,
        "input_hash": input_hash_value,
        "output_hash": output_hash_value,
        "parent_hashes": sorted(parent_hashes),
    }
    return sha256_hex(canonical_json(document))


def provenance_chain_hash(dag_hash_value: str, ordered_chain_hashes: Iterable[str]) -> str:
    """Return the execution's hash over its chain hashes in canonical topological order."""
    document = {"scheme": SCHEME, "dag_hash": dag_hash_value, "chain": list(ordered_chain_hashes)}
    return sha256_hex(canonical_json(document))


def dag_hash(normalized_document: Mapping[str, Any]) -> str:
    """Return ``H(C(normalized DAG document))``."""
    return sha256_hex(canonical_json(dict(normalized_document)))


def _parse_number_literal(text: str) -> int | float:
    """Parse a JSON integer literal as the value that was stored.

    PostgreSQL JSONB prints numbers in plain decimal notation, so a float such
    as ``1e+22`` comes back as ``10000000000000000000000``. The JSON domain
    admits no integer beyond ±(2**53 - 1), so any larger integer literal was a
    float when it was stored and is read back as one.
    """
    number = int(text)
    if -MAX_SAFE_INTEGER <= number <= MAX_SAFE_INTEGER:
        return number
    return float(text)


def json_loads(text: str | bytes) -> Any:
    """Decode JSON read back from a store, restoring floats printed as integers."""
    return json.loads(text, parse_int=_parse_number_literal)
