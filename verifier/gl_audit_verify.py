#!/usr/bin/env python3
"""Verify a gl-orchestrator audit bundle offline, with nothing but the Python standard library.

An audit bundle (format ``gl-audit-bundle-v1``) is one execution exported as a
JSON file: the normalized DAG document, the execution input, and for every node
its provenance record and checkpoint. This script recomputes every hash of the
scheme ``gl-prov-v1`` (RFC 8785 canonical JSON, then SHA-256) and checks:

- the DAG document against ``dag_hash``, and the execution input against ``input_hash``
- per node: its ordinal against the canonical topological order, its input
  document, its checkpoint's outputs, output hash and status, its parent hashes
  and its ``chain_hash``, with the same reason strings as the orchestrator's
  own check (``orchestrator.provenance.verify_chain``)
- records for nodes that the DAG does not have, and the stored
  ``provenance_chain_hash`` against the recomputed one
- the Ed25519 signature over the chain head, when the bundle carries one

Run it with Python 3.9 or later; the file can be copied alone::

    python3 gl_audit_verify.py BUNDLE.json [--public-key KEY]... [--json]

KEY is the operator's Ed25519 public key, as base64 of the raw 32 bytes or as a
file that contains it. Obtain it from the operator by a channel other than the
bundle, for example ``GET /api/v1/orchestrator/signing-keys``. Without it the
signature is checked against the key embedded in the bundle, which proves
nothing against someone who can rewrite the whole bundle.

Exit status: 0 when every check passes, 1 when a check fails, and 2 when the
bundle or a key cannot be read or the arguments are wrong.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import heapq
import json
import math
import os
import re
import sys
from typing import Any, Dict, List, Optional, Tuple

__all__ = [
    "BUNDLE_FORMAT",
    "SCHEME",
    "BundleFormatError",
    "JsonDomainError",
    "canonical_json",
    "canonicalize",
    "ed25519_verify",
    "format_number",
    "key_id_for",
    "load_bundle",
    "load_public_key",
    "main",
    "sha256_hex",
    "verify_bundle",
]

BUNDLE_FORMAT = "gl-audit-bundle-v1"
SCHEME = "gl-prov-v1"
SIGNATURE_ALGORITHM = "ed25519"
SIGNING_KEYS_ENDPOINT = "GET /api/v1/orchestrator/signing-keys"
# The signed document has exactly these fields. finalized_at is UTC with microseconds.
SIGNED_FIELDS = ("execution_id", "dag_hash", "provenance_chain_hash", "finalized_at")
_FINALIZED_AT_PATTERN = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z")
UNSIGNED_DETAIL = "chain is unsigned: anyone with write access to the store could have recomputed every hash"

# The JSON domain of gl-prov-v1, as orchestrator.hashing defines it.
MAX_SAFE_INTEGER = 2**53 - 1
MAX_DEPTH = 200


class JsonDomainError(ValueError):
    """A value lies outside the JSON domain that gl-prov-v1 can hash; ``path`` locates it."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"value at {path} is outside the JSON domain: {reason}")


class BundleFormatError(ValueError):
    """The input is not a readable ``gl-audit-bundle-v1`` bundle, so it cannot be verified."""


# -- RFC 8785 canonical JSON ------------------------------------------------------


def check_json_domain(value: Any, path: str = "$") -> None:
    """Raise JsonDomainError unless ``value`` lies in the JSON domain of gl-prov-v1.

    Accepted: dicts with string keys, lists, strings without NUL or lone
    surrogates, booleans, None, finite floats and integers within
    ±(2**53 - 1), nested at most MAX_DEPTH levels. These are the rules of
    ``orchestrator.hashing.check_json_domain``, which the recomputed hashes
    must agree with.
    """
    stack: List[Tuple[Any, str, int]] = [(value, path, 0)]
    while stack:
        item, item_path, depth = stack.pop()
        if item is None or isinstance(item, bool):
            continue
        if isinstance(item, int):
            if not -MAX_SAFE_INTEGER <= item <= MAX_SAFE_INTEGER:
                raise JsonDomainError(item_path, f"integer {item} is outside ±(2**53 - 1)")
            continue
        if isinstance(item, float):
            if math.isnan(item) or math.isinf(item):
                raise JsonDomainError(item_path, f"{item!r} is not a finite number")
            continue
        if isinstance(item, str):
            _check_string(item, item_path)
            continue
        if isinstance(item, (dict, list)) and depth >= MAX_DEPTH:
            raise JsonDomainError(item_path, f"value is nested more than {MAX_DEPTH} levels deep")
        if isinstance(item, dict):
            for key, child in item.items():
                if not isinstance(key, str):
                    raise JsonDomainError(item_path, f"object key {key!r} is a {type(key).__name__}, not a string")
                _check_string(key, f"{item_path} (key {key!r})")
                child_path = f"{item_path}.{key}" if key.isidentifier() else f"{item_path}[{key!r}]"
                stack.append((child, child_path, depth + 1))
            continue
        if isinstance(item, list):
            for index, child in enumerate(item):
                stack.append((child, f"{item_path}[{index}]", depth + 1))
            continue
        raise JsonDomainError(item_path, f"{type(item).__name__} is not a JSON type")


def _check_string(text: str, path: str) -> None:
    if "\x00" in text:
        raise JsonDomainError(path, "string contains a NUL character (U+0000)")
    for char in text:
        if "\ud800" <= char <= "\udfff":
            raise JsonDomainError(path, f"string contains a lone surrogate U+{ord(char):04X}")


# JSON.stringify escapes these two characters and the C0 controls, and writes
# every other character as itself.
_STRING_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
for _code in range(0x20):
    _STRING_ESCAPES.setdefault(chr(_code), f"\\u{_code:04x}")
del _code
_CHARACTERS_TO_ESCAPE = re.compile('["\\\\\x00-\x1f]')


def _quote(text: str) -> str:
    return '"' + _CHARACTERS_TO_ESCAPE.sub(lambda match: _STRING_ESCAPES[match.group()], text) + '"'


def format_number(value: Any) -> str:
    """Format an int or a finite float as ECMAScript's Number::toString does, as RFC 8785 requires.

    Raises JsonDomainError for NaN, infinities and integers beyond ±(2**53 - 1).
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{value!r} is not a number")
    if isinstance(value, int):
        # Every integer within ±(2**53 - 1) is exactly a double below 1e21, which
        # ECMAScript writes as plain decimal digits.
        if not -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
            raise JsonDomainError("$", f"integer {value} is outside ±(2**53 - 1)")
        return str(value)
    if not math.isfinite(value):
        raise JsonDomainError("$", f"{value!r} is not a finite number")
    if value == 0:
        return "0"  # -0 as well
    if value < 0:
        return "-" + _format_positive_double(-value)
    return _format_positive_double(value)


def _format_positive_double(value: float) -> str:
    # In the terms of ECMA-262 Number::toString: value = 0.DIGITS × 10**n,
    # where DIGITS has k digits and no leading or trailing zero.
    digits, n = _shortest_digits(value)
    k = len(digits)
    if k <= n <= 21:
        return digits + "0" * (n - k)
    if 0 < n <= 21:
        return digits[:n] + "." + digits[n:]
    if -6 < n <= 0:
        return "0." + "0" * -n + digits
    exponent = n - 1
    sign = "+" if exponent >= 0 else "-"
    mantissa = digits if k == 1 else digits[0] + "." + digits[1:]
    return f"{mantissa}e{sign}{abs(exponent)}"


def _shortest_digits(value: float) -> Tuple[str, int]:
    """Return the shortest round-trip decimal digits of a positive double and the position n of its point.

    Python's repr writes the shortest digit string that reads back as the same
    double, and of several such strings the one closest to the double. These are
    the digits of ECMAScript's Number::toString that RFC 8785 uses.
    """
    text = repr(value)
    mantissa, _, exponent_text = text.partition("e")
    exponent = int(exponent_text) if exponent_text else 0
    whole, _, fraction = mantissa.partition(".")
    digits = whole + fraction
    point = len(whole) + exponent
    stripped = digits.lstrip("0")
    point -= len(digits) - len(stripped)
    return stripped.rstrip("0"), point


def _utf16_sort_key(key: str) -> bytes:
    # Big-endian UTF-16 bytes compare in the order of their UTF-16 code units.
    return key.encode("utf-16-be", "surrogatepass")


def _serialize(value: Any, parts: List[str]) -> None:
    if value is None:
        parts.append("null")
    elif value is True:
        parts.append("true")
    elif value is False:
        parts.append("false")
    elif isinstance(value, (int, float)):
        parts.append(format_number(value))
    elif isinstance(value, str):
        parts.append(_quote(value))
    elif isinstance(value, list):
        parts.append("[")
        for index, item in enumerate(value):
            if index:
                parts.append(",")
            _serialize(item, parts)
        parts.append("]")
    elif isinstance(value, dict):
        parts.append("{")
        for index, key in enumerate(sorted(value, key=_utf16_sort_key)):
            if index:
                parts.append(",")
            parts.append(_quote(key))
            parts.append(":")
            _serialize(value[key], parts)
        parts.append("}")
    else:
        raise JsonDomainError("$", f"{type(value).__name__} is not a JSON type")


def canonical_json(value: Any) -> bytes:
    """Return ``C(value)``: the RFC 8785 canonical JSON of ``value`` as UTF-8 bytes.

    Raises JsonDomainError when ``value`` lies outside the JSON domain, as
    ``orchestrator.hashing.canonical_json`` does.
    """
    check_json_domain(value)
    parts: List[str] = []
    _serialize(value, parts)
    return "".join(parts).encode("utf-8")


# The same function under the name of the RFC 8785 operation, canonicalization.
canonicalize = canonical_json


def sha256_hex(data: bytes) -> str:
    """Return ``H(data)``: the lowercase hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def _hash_value(value: Any) -> Optional[str]:
    """Return ``H(C(value))``, or None for a value outside the JSON domain, as verify_chain does."""
    try:
        return sha256_hex(canonical_json(value))
    except JsonDomainError:
        return None


NULL_HASH = sha256_hex(b"null")


# -- Ed25519 signature verification (RFC 8032, section 5.1) --------------------------

_P = 2**255 - 19
_L = 2**252 + 27742317777372353535851937790883648493
_D = -121665 * pow(121666, _P - 2, _P) % _P
_SQRT_MINUS_ONE = pow(2, (_P - 1) // 4, _P)

# A point in extended homogeneous coordinates (X, Y, Z, T): x = X/Z, y = Y/Z, x*y = T/Z.
_Point = Tuple[int, int, int, int]
_NEUTRAL: _Point = (0, 1, 1, 0)


def _recover_x(y: int, sign: int) -> Optional[int]:
    """Return the x coordinate with the low bit ``sign`` of the curve point with coordinate y, or None."""
    x_squared = (y * y - 1) * pow(_D * y * y + 1, _P - 2, _P) % _P
    if x_squared == 0:
        return None if sign else 0
    # p = 5 (mod 8), so a candidate square root is x_squared ** ((p + 3) / 8),
    # possibly times sqrt(-1).
    x = pow(x_squared, (_P + 3) // 8, _P)
    if (x * x - x_squared) % _P != 0:
        x = x * _SQRT_MINUS_ONE % _P
    if (x * x - x_squared) % _P != 0:
        return None
    if x & 1 != sign:
        x = _P - x
    return x


def _decode_point(encoded: bytes) -> Optional[_Point]:
    """Decode a 32-byte point encoding, or return None when it is not a canonical encoding of a curve point."""
    if len(encoded) != 32:
        return None
    number = int.from_bytes(encoded, "little")
    sign = number >> 255
    y = number & ((1 << 255) - 1)
    if y >= _P:
        return None
    x = _recover_x(y, sign)
    if x is None:
        return None
    return (x, y, 1, x * y % _P)


def _point_add(first: _Point, second: _Point) -> _Point:
    # The unified addition formula for a = -1 twisted Edwards curves (RFC 8032, section 5.1.4).
    x1, y1, z1, t1 = first
    x2, y2, z2, t2 = second
    a = (y1 - x1) * (y2 - x2) % _P
    b = (y1 + x1) * (y2 + x2) % _P
    c = 2 * t1 * t2 * _D % _P
    d = 2 * z1 * z2 % _P
    e, f, g, h = b - a, d - c, d + c, b + a
    return (e * f % _P, g * h % _P, f * g % _P, e * h % _P)


def _point_double(point: _Point) -> _Point:
    # The doubling formula of RFC 8032, section 5.1.4.
    x1, y1, z1, _ = point
    a = x1 * x1 % _P
    b = y1 * y1 % _P
    c = 2 * z1 * z1 % _P
    h = a + b
    e = h - (x1 + y1) * (x1 + y1)
    g = a - b
    f = c + g
    return (e * f % _P, g * h % _P, f * g % _P, e * h % _P)


def _scalar_multiply(scalar: int, point: _Point) -> _Point:
    result = _NEUTRAL
    for bit in bin(scalar)[2:]:
        result = _point_double(result)
        if bit == "1":
            result = _point_add(result, point)
    return result


def _points_equal(first: _Point, second: _Point) -> bool:
    x1, y1, z1, _ = first
    x2, y2, z2, _ = second
    return (x1 * z2 - x2 * z1) % _P == 0 and (y1 * z2 - y2 * z1) % _P == 0


_BASE_Y = 4 * pow(5, _P - 2, _P) % _P
_BASE_X = _recover_x(_BASE_Y, 0)
assert _BASE_X is not None
_BASE: _Point = (_BASE_X, _BASE_Y, 1, _BASE_X * _BASE_Y % _P)


def ed25519_verify(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """Return whether ``signature`` is a valid Ed25519 signature of ``message`` by ``public_key``.

    Implements the verification of RFC 8032, section 5.1.7, with the
    cofactorless equation [S]B = R + [k]A. A key or R that is not the
    canonical encoding of a curve point, and an S of L or more, are rejected.
    This code is not constant-time, which is harmless because it handles no secret.
    """
    if len(public_key) != 32 or len(signature) != 64:
        return False
    point_a = _decode_point(public_key)
    point_r = _decode_point(signature[:32])
    if point_a is None or point_r is None:
        return False
    s = int.from_bytes(signature[32:], "little")
    if s >= _L:
        return False
    k = int.from_bytes(hashlib.sha512(signature[:32] + public_key + message).digest(), "little") % _L
    return _points_equal(_scalar_multiply(s, _BASE), _point_add(point_r, _scalar_multiply(k, point_a)))


def key_id_for(public_key: bytes) -> str:
    """Return the key id of a raw 32-byte Ed25519 public key: ``ed25519:`` and 16 hex digits of its SHA-256."""
    return "ed25519:" + hashlib.sha256(public_key).hexdigest()[:16]


# -- reading bundles and keys ---------------------------------------------------------


def _parse_integer_literal(text: str) -> Any:
    # The JSON domain has no integer beyond ±(2**53 - 1), so a larger integer
    # literal was a float when it was hashed. PostgreSQL JSONB prints 1e+22 as
    # 10000000000000000000000, for example.
    number = int(text)
    if -MAX_SAFE_INTEGER <= number <= MAX_SAFE_INTEGER:
        return number
    return float(text)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _object_without_duplicate_keys(pairs: List[Tuple[str, Any]]) -> Dict[str, Any]:
    # Two parsers may keep different copies of a duplicated key, so a bundle
    # with one cannot be verified unambiguously.
    result: Dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate object key {key!r}")
        result[key] = value
    return result


def parse_bundle_json(text: str) -> Any:
    """Decode bundle JSON: integers stay ints, floats stay floats, and integer literals beyond ±(2**53 - 1) become floats.

    Raises ValueError for invalid JSON, NaN and Infinity, and duplicate object keys.
    """
    return json.loads(
        text,
        parse_int=_parse_integer_literal,
        parse_constant=_reject_constant,
        object_pairs_hook=_object_without_duplicate_keys,
    )


def load_bundle(path: str) -> Dict[str, Any]:
    """Read and decode the bundle file at ``path``.

    Raises BundleFormatError, naming the file, when it cannot be read or is not a JSON object.
    """
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except OSError as exc:
        raise BundleFormatError(f"cannot read bundle {path}: {exc.strerror or exc}; check the path") from exc
    try:
        document = parse_bundle_json(raw.decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise BundleFormatError(f"bundle {path} is not UTF-8 text ({exc}); export it again") from exc
    except RecursionError as exc:
        raise BundleFormatError(f"bundle {path} is nested too deeply to parse") from exc
    except ValueError as exc:
        raise BundleFormatError(
            f"bundle {path} is not valid JSON: {exc}; export it again with `orchestrator export EXECUTION_ID`"
        ) from exc
    if not isinstance(document, dict):
        raise BundleFormatError(f"bundle {path} contains a JSON {_json_type(document)}, not a {BUNDLE_FORMAT} object")
    return document


# The DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410), as in PEM files
# that `openssl pkey -pubout` writes; the raw 32-byte key follows it.
_ED25519_SPKI_PREFIX = bytes.fromhex("302a300506032b6570032100")


def load_public_key(value: str) -> bytes:
    """Return the raw 32-byte Ed25519 public key given as base64 text or as a file containing it.

    The file may also contain a PEM ``PUBLIC KEY`` block. Raises ValueError when
    the value is neither.
    """
    source = f"--public-key {value!r}"
    text = value
    if os.path.isfile(value):
        source = f"public key file {value}"
        try:
            with open(value, encoding="utf-8") as handle:
                text = handle.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"cannot read {source}: {exc}") from exc
    # A "#" starts a comment, as in the lines that `orchestrator keys show` prints.
    lines = [line.split("#", 1)[0].strip() for line in text.strip().splitlines()
             if not line.strip().startswith("-----")]
    try:
        raw = base64.b64decode("".join(lines), validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) == len(_ED25519_SPKI_PREFIX) + 32 and raw.startswith(_ED25519_SPKI_PREFIX):
        raw = raw[len(_ED25519_SPKI_PREFIX):]
    if len(raw) != 32:
        raise ValueError(
            f"{source} is not an Ed25519 public key: give base64 of the raw 32-byte key, "
            f"as {SIGNING_KEYS_ENDPOINT} publishes it, or the path of an existing file containing it"
        )
    return raw


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _with_article(type_name: str) -> str:
    if type_name == "null":
        return type_name
    return ("an " if type_name[0] in "aeiou" else "a ") + type_name


def _restore_large_integers(value: Any) -> Any:
    """Return a copy of ``value`` with every integer beyond ±(2**53 - 1) turned into a float.

    A caller that decoded the bundle with plain ``json.loads`` then gets the
    same verdict as one that used :func:`parse_bundle_json`.
    """
    root: List[Any] = [value]
    # Each entry is a container to fill, the key or index in it, and the source value.
    stack: List[Tuple[Any, Any, Any]] = [(root, 0, value)]
    while stack:
        target, slot, item = stack.pop()
        if isinstance(item, dict):
            copy: Any = {}
            for key, child in item.items():
                stack.append((copy, key, child))
            target[slot] = copy
        elif isinstance(item, list):
            copy = [None] * len(item)
            for index, child in enumerate(item):
                stack.append((copy, index, child))
            target[slot] = copy
        elif isinstance(item, int) and not isinstance(item, bool) and abs(item) > MAX_SAFE_INTEGER:
            target[slot] = float(item)
        else:
            target[slot] = item
    return root[0]


# -- checking the bundle's structure ---------------------------------------------------

_ABSENT = object()


def _field(container: Dict[str, Any], key: str, path: str, *types: str, required: bool = True) -> Any:
    """Return ``container[key]`` after checking its JSON type.

    Raises BundleFormatError naming ``path`` when the field is missing or has another type.
    """
    value = container.get(key, _ABSENT)
    if value is _ABSENT:
        if not required:
            return None
        raise BundleFormatError(f"{path}.{key} is missing")
    if types and _json_type(value) not in types:
        expected = " or ".join(_with_article(name) for name in types)
        raise BundleFormatError(f"{path}.{key} must be {expected}, not {_with_article(_json_type(value))}")
    return value


def _integer_field(container: Dict[str, Any], key: str, path: str) -> int:
    value = _field(container, key, path, "number")
    if not isinstance(value, int):
        raise BundleFormatError(f"{path}.{key} must be an integer, not {value!r}")
    return value


def _read_structure(bundle: Any) -> Tuple[Dict[str, Any], Dict[str, Any], Dict[str, List[str]], List[Dict[str, Any]]]:
    """Check the bundle's structure and return its execution, DAG, parents by node id and node records."""
    if not isinstance(bundle, dict):
        raise BundleFormatError(f"a bundle must be a JSON object, not {_with_article(_json_type(bundle))}")
    bundle_format = _field(bundle, "bundle_format", "$", "string")
    if bundle_format != BUNDLE_FORMAT:
        raise BundleFormatError(f"bundle_format is {bundle_format!r}; this verifier reads only {BUNDLE_FORMAT!r}")
    scheme = _field(bundle, "scheme", "$", "string")
    if scheme != SCHEME:
        raise BundleFormatError(f"scheme is {scheme!r}; this verifier checks only {SCHEME!r}")

    execution = _field(bundle, "execution", "$", "object")
    for key in ("execution_id", "dag_hash", "input_hash"):
        _field(execution, key, "$.execution", "string")
    _field(execution, "input_data", "$.execution")
    _field(execution, "provenance_chain_hash", "$.execution", "string", "null", required=False)

    dag = _field(bundle, "dag", "$", "object")
    dag_nodes = _field(dag, "nodes", "$.dag", "object")
    parents: Dict[str, List[str]] = {}
    for node_id, node in dag_nodes.items():
        path = f"$.dag.nodes[{node_id!r}]"
        if not isinstance(node, dict):
            raise BundleFormatError(f"{path} must be an object, not {_with_article(_json_type(node))}")
        depends_on = _field(node, "depends_on", path, "array")
        if not all(isinstance(parent, str) for parent in depends_on):
            raise BundleFormatError(f"{path}.depends_on must be an array of node ids")
        parents[node_id] = list(depends_on)

    records = _field(bundle, "nodes", "$", "array")
    for index, record in enumerate(records):
        _check_record_structure(record, f"$.nodes[{index}]")
    return execution, dag, parents, records


def _check_record_structure(record: Any, path: str) -> None:
    if not isinstance(record, dict):
        raise BundleFormatError(f"{path} must be an object, not {_with_article(_json_type(record))}")
    for key in ("node_id", "status", "input_hash", "output_hash", "chain_hash"):
        _field(record, key, path, "string")
    _integer_field(record, "ordinal", path)
    _field(record, "input_document", path)
    parent_hashes = _field(record, "parent_hashes", path, "array")
    if not all(isinstance(item, str) for item in parent_hashes):
        raise BundleFormatError(f"{path}.parent_hashes must be an array of strings")
    checkpoint = _field(record, "checkpoint", path, "object", "null")
    if checkpoint is not None:
        checkpoint_path = f"{path}.checkpoint"
        _field(checkpoint, "status", checkpoint_path, "string")
        _field(checkpoint, "output_hash", checkpoint_path, "string", "null")
        _field(checkpoint, "outputs", checkpoint_path)
        _field(checkpoint, "outputs_removed_at", checkpoint_path, "string", "null", required=False)
        _field(checkpoint, "outputs_unavailable", checkpoint_path, "string", "null", required=False)


# -- verifying the chain ---------------------------------------------------------------


def _canonical_order(parents: Dict[str, List[str]]) -> List[str]:
    """Return the canonical topological order: Kahn's algorithm, taking the smallest ready id by code point.

    Nodes on a cycle, downstream of one, or depending on an unknown node are left out.
    Python compares strings by code point.
    """
    children: Dict[str, List[str]] = {node_id: [] for node_id in parents}
    waiting: Dict[str, int] = {}
    for node_id, node_parents in parents.items():
        waiting[node_id] = len(node_parents)
        for parent in node_parents:
            if parent in children:
                children[parent].append(node_id)
    ready = [node_id for node_id, count in waiting.items() if count == 0]
    heapq.heapify(ready)
    order: List[str] = []
    while ready:
        node_id = heapq.heappop(ready)
        order.append(node_id)
        for child in children[node_id]:
            waiting[child] -= 1
            if waiting[child] == 0:
                heapq.heappush(ready, child)
    return order


def _dag_problems(parents: Dict[str, List[str]], order: List[str]) -> List[str]:
    problems = []
    for node_id in sorted(parents):
        for parent in parents[node_id]:
            if parent not in parents:
                problems.append(
                    f"DAG document is invalid: node {node_id!r} depends on {parent!r}, which is not a node of the DAG"
                )
    unordered = sorted(set(parents) - set(order))
    if unordered:
        names = ", ".join(repr(node_id) for node_id in unordered)
        problems.append(
            f"DAG document is invalid: nodes {names} are on a cycle or depend on a node that is not in the DAG, "
            "so they have no canonical position and were not verified"
        )
    return problems


def _removal_note(checkpoint: Dict[str, Any]) -> Optional[str]:
    """Return the note for outputs that retention removed, or None when the outputs can be re-hashed.

    Outputs still present are always re-hashed. A removed payload whose
    output_hash is H(C(null)) re-hashes correctly from the null left behind.
    """
    removed_at = checkpoint.get("outputs_removed_at")
    if removed_at is None or checkpoint["outputs"] is not None or checkpoint["output_hash"] == NULL_HASH:
        return None
    return f"outputs removed by retention at {removed_at}; output_hash kept, not re-checked"


def _check_record(node_id: str, ordinal: int, record: Dict[str, Any]) -> Tuple[List[str], List[str]]:
    """Return the reasons that make a record invalid and the notes that do not, in verify_chain's order."""
    reasons: List[str] = []
    notes: List[str] = []
    if record["ordinal"] != ordinal:
        reasons.append(f"order changed: ordinal {record['ordinal']}, canonical position {ordinal}")
    document = record["input_document"]
    input_hash = NULL_HASH if document is None else _hash_value(document)
    if input_hash != record["input_hash"]:
        reasons.append(f"input altered: input document hashes to {input_hash}, record has {record['input_hash']}")
    checkpoint = record["checkpoint"]
    if checkpoint is None:
        reasons.append("checkpoint missing: no checkpoint for this node")
        return reasons, notes

    removal = _removal_note(checkpoint)
    not_kept = checkpoint.get("outputs_not_kept")
    unavailable = checkpoint.get("outputs_unavailable")
    if removal is not None:
        notes.append(removal)
    elif isinstance(not_kept, str) and checkpoint["outputs"] is None:
        # Only absent outputs can be "not kept": present ones are always re-hashed.
        notes.append(not_kept)
    elif unavailable is not None:
        reasons.append(f"output unavailable: {unavailable}")
    else:
        actual_output = _hash_value(checkpoint["outputs"])
        if checkpoint["output_hash"] != actual_output:
            reasons.append(
                f"output altered: outputs hash to {actual_output}, checkpoint has {checkpoint['output_hash']}"
            )
    if checkpoint["output_hash"] != record["output_hash"]:
        reasons.append(
            f"output hash differs: checkpoint {checkpoint['output_hash']}, provenance record {record['output_hash']}"
        )
    if checkpoint["status"] != record["status"]:
        reasons.append(f"status differs: checkpoint {checkpoint['status']}, provenance record {record['status']}")
    return reasons, notes


def _chain_hash(node_id: str, record: Dict[str, Any]) -> Optional[str]:
    document = {
        "scheme": SCHEME,
        "node_id": node_id,
        "status": record["status"],
        "input_hash": record["input_hash"],
        "output_hash": record["output_hash"],
        "parent_hashes": sorted(record["parent_hashes"]),
    }
    return _hash_value(document)


def _node_report(node_id: str, record: Optional[Dict[str, Any]], expected_parents: List[str],
                 reasons: List[str], notes: List[str]) -> Dict[str, Any]:
    return {
        "node_id": node_id,
        "valid": not reasons,
        "status": record["status"] if record is not None else None,
        "chain_hash": record["chain_hash"] if record is not None else None,
        "input_hash": record["input_hash"] if record is not None else None,
        "output_hash": record["output_hash"] if record is not None else None,
        "expected_parent_hashes": expected_parents,
        "actual_parent_hashes": list(record["parent_hashes"]) if record is not None else [],
        "reasons": reasons,
        "notes": notes,
    }


def _verify_nodes(parents: Dict[str, List[str]], order: List[str],
                  records: Dict[str, Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Check every node in canonical order, comparing its parent hashes with its parents' recomputed chain hashes."""
    recomputed: Dict[str, Optional[str]] = {}
    results = []
    for ordinal, node_id in enumerate(order):
        record = records.get(node_id)
        node_parents = parents[node_id]
        # A parent whose chain document cannot be hashed counts as missing, as one without a record does.
        expected_parents = sorted(parent_hash for parent_hash in map(recomputed.get, node_parents)
                                  if parent_hash is not None)
        if record is None:
            results.append(_node_report(node_id, None, expected_parents, [
                "record missing: no provenance record for this node"], []))
            continue
        reasons, notes = _check_record(node_id, ordinal, record)
        if len(expected_parents) != len(node_parents):
            reasons.append("parent missing: a parent has no provenance record")
        if sorted(record["parent_hashes"]) != expected_parents:
            reasons.append("parent hashes differ from the chain hashes of the node's parents in the DAG")
        recomputed[node_id] = _chain_hash(node_id, record)
        if recomputed[node_id] != record["chain_hash"]:
            reasons.append(f"chain_hash altered: stored {record['chain_hash']}, recomputed {recomputed[node_id]}")
        results.append(_node_report(node_id, record, expected_parents, reasons, notes))
    return results


def _index_records(records: List[Dict[str, Any]], parents: Dict[str, List[str]]) -> Tuple[Dict[str, Dict[str, Any]], List[str]]:
    """Return the records by node id, and the problems of duplicate records and records for unknown nodes."""
    by_node: Dict[str, Dict[str, Any]] = {}
    counts: Dict[str, int] = {}
    for record in records:
        node_id = record["node_id"]
        counts[node_id] = counts.get(node_id, 0) + 1
        by_node.setdefault(node_id, record)
    problems = []
    for node_id in sorted(node_id for node_id, count in counts.items() if count > 1):
        problems.append(f"duplicate record: node {node_id!r} has {counts[node_id]} records; only the first was checked")
    for extra in sorted(set(by_node) - set(parents)):
        problems.append(f"extra record: node {extra!r} is not in the DAG")
    return by_node, problems


# -- verifying the signature ------------------------------------------------------------


def _decode_base64(value: Any, length: int) -> Optional[bytes]:
    if not isinstance(value, str):
        return None
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if len(raw) == length else None


def _check_signature(signature: Any, execution: Dict[str, Any], provenance_chain_hash: str,
                     trusted_keys: Optional[List[bytes]]) -> Dict[str, Any]:
    """Return the signature part of the report: status, detail, key_id and whether the key was pinned."""
    pinned = bool(trusted_keys)
    if signature is None:
        detail = UNSIGNED_DETAIL
        if pinned:
            detail += ". A public key was pinned, so the bundle must carry a signature by it"
        return {"status": "unsigned", "detail": detail, "key_id": None, "pinned": pinned}

    def invalid(*failures: str, key_id: Optional[str] = None) -> Dict[str, Any]:
        return {"status": "invalid", "detail": "; ".join(failures), "key_id": key_id, "pinned": pinned}

    if not isinstance(signature, dict):
        return invalid(f"signature must be an object or null, not {_json_type(signature)}")
    algorithm = signature.get("algorithm")
    if algorithm != SIGNATURE_ALGORITHM:
        return invalid(f"signature algorithm is {algorithm!r}; this verifier checks only {SIGNATURE_ALGORITHM!r}")
    claimed_key_id = signature.get("key_id")
    if signature.get("public_key") is None:
        # The exporter leaves public_key null when it does not trust the
        # signing key itself. A pinned key with the same key id can still check it.
        public_key = next((key for key in trusted_keys or [] if key_id_for(key) == claimed_key_id), None)
        if public_key is None:
            return {
                "status": "untrusted-key",
                "detail": (f"the bundle names signing key {claimed_key_id!r} but carries no public key, and no "
                           f"pinned key has that key id; pass --public-key with that key from {SIGNING_KEYS_ENDPOINT}"),
                "key_id": claimed_key_id if isinstance(claimed_key_id, str) else None,
                "pinned": pinned,
            }
    else:
        public_key = _decode_base64(signature.get("public_key"), 32)
        if public_key is None:
            return invalid("public_key is not base64 of a raw 32-byte Ed25519 public key")
    key_id = key_id_for(public_key)
    if trusted_keys and public_key not in trusted_keys:
        pinned_ids = ", ".join(key_id_for(key) for key in trusted_keys)
        return {
            "status": "untrusted-key",
            "detail": f"the bundle is signed by key {key_id}, which is not among the pinned keys ({pinned_ids})",
            "key_id": key_id,
            "pinned": pinned,
        }

    failures = []
    if claimed_key_id != key_id:
        failures.append(f"key_id {signature.get('key_id')!r} does not match public_key, whose key_id is {key_id}")
    value = _decode_base64(signature.get("value"), 64)
    if value is None:
        failures.append("value is not base64 of a 64-byte Ed25519 signature")
    signed = signature.get("signed")
    if not isinstance(signed, dict) or sorted(signed) != sorted(SIGNED_FIELDS):
        return invalid(*failures, f"signed must be an object with exactly the fields {', '.join(SIGNED_FIELDS)}",
                       key_id=key_id)
    expected = {
        "execution_id": execution["execution_id"],
        "dag_hash": execution["dag_hash"],
        "provenance_chain_hash": provenance_chain_hash,
    }
    for field_name, expected_value in expected.items():
        if signed.get(field_name) != expected_value:
            source = "recomputed" if field_name == "provenance_chain_hash" else "bundle's"
            failures.append(f"signed {field_name} {signed.get(field_name)!r} differs from the {source} {expected_value!r}")
    finalized_at = signed["finalized_at"]
    if not isinstance(finalized_at, str) or not _FINALIZED_AT_PATTERN.fullmatch(finalized_at):
        failures.append(f"signed finalized_at {finalized_at!r} is not a UTC time such as 2026-12-05T00:00:00.000000Z")
    signed_bytes = None
    try:
        signed_bytes = canonical_json(signed)
    except JsonDomainError as exc:
        failures.append(f"signed cannot be canonicalized: {exc}")
    if value is not None and signed_bytes is not None and not ed25519_verify(public_key, signed_bytes, value):
        failures.append(f"the Ed25519 signature does not verify with key {key_id}")
    if failures:
        return invalid(*failures, key_id=key_id)

    if pinned:
        detail = f"signature verifies with the pinned key {key_id}"
    else:
        detail = (f"signature verifies with the key embedded in the bundle ({key_id}), but that key was not pinned: "
                  "whoever can rewrite the bundle can re-sign it with a key of their own")
    return {"status": "valid", "detail": detail, "key_id": key_id, "pinned": pinned}


# -- the report ---------------------------------------------------------------------------


def verify_bundle(bundle: Dict[str, Any], trusted_public_keys: Optional[List[bytes]] = None) -> Dict[str, Any]:
    """Recompute and check every hash of an audit bundle and its signature, and return the report.

    ``trusted_public_keys`` are raw 32-byte Ed25519 keys that the auditor
    obtained from the operator. When given, the bundle must be signed by one
    of them. The report contains ``valid`` (the overall verdict), ``chain_valid``,
    the recomputed ``provenance_chain_hash``, ``signature``, one entry per DAG
    node in canonical order in ``nodes``, execution-level ``problems`` and
    ``warnings``. Node entries and problems use the reason strings of
    ``orchestrator.provenance.verify_chain``.

    Raises BundleFormatError when the bundle lacks a field that verification
    needs, or a field has the wrong JSON type.
    """
    if trusted_public_keys is not None:
        for key in trusted_public_keys:
            if not isinstance(key, bytes) or len(key) != 32:
                raise ValueError(f"trusted public key {key!r} is not a raw 32-byte Ed25519 key")
    bundle = _restore_large_integers(bundle)
    execution, dag, parents, record_list = _read_structure(bundle)
    order = _canonical_order(parents)
    records, record_problems = _index_records(record_list, parents)

    problems: List[str] = []
    stored_dag_hash = execution["dag_hash"]
    actual_dag_hash = _hash_value(dag)
    if actual_dag_hash != stored_dag_hash:
        problems.append(f"DAG document does not match dag_hash: expected {stored_dag_hash}, actual {actual_dag_hash}")
    actual_input_hash = _hash_value(execution["input_data"])
    if actual_input_hash != execution["input_hash"]:
        problems.append(
            f"execution input altered: input_data hashes to {actual_input_hash}, execution has {execution['input_hash']}"
        )
    problems.extend(_dag_problems(parents, order))
    problems.extend(record_problems)

    nodes = _verify_nodes(parents, order, records)
    # As in verify_chain: the stored chain hashes in canonical order, under the stored dag_hash.
    chain = [records[node_id]["chain_hash"] for node_id in order if node_id in records]
    computed = _hash_value({"scheme": SCHEME, "dag_hash": stored_dag_hash, "chain": chain})
    stored_chain_hash = execution.get("provenance_chain_hash")
    if stored_chain_hash is not None and stored_chain_hash != computed:
        problems.append(f"provenance_chain_hash differs: stored {stored_chain_hash}, recomputed {computed}")
    chain_valid = not problems and all(node["valid"] for node in nodes)

    signature = _check_signature(bundle.get("signature"), execution, computed or "", trusted_public_keys)
    warnings = []
    if signature["status"] == "valid" and not signature["pinned"]:
        warnings.append(
            f"the signing key {signature['key_id']} was not pinned; pass --public-key with the operator's key "
            f"from {SIGNING_KEYS_ENDPOINT}"
        )
    signature_passes = signature["status"] == "valid" or (signature["status"] == "unsigned" and not signature["pinned"])

    return {
        "bundle_format": BUNDLE_FORMAT,
        "scheme": SCHEME,
        "execution_id": execution["execution_id"],
        "valid": chain_valid and signature_passes,
        "chain_valid": chain_valid,
        "dag_hash": stored_dag_hash,
        "provenance_chain_hash": computed,
        "stored_provenance_chain_hash": stored_chain_hash,
        "chain_length": sum(1 for node in nodes if node["chain_hash"] is not None),
        "signature": signature,
        "nodes": nodes,
        "problems": problems,
        "warnings": warnings,
    }


def _printable(text: Any) -> str:
    # A bundle is untrusted input: escape control characters so that a node id
    # cannot rewrite the terminal line that reports it.
    return "".join(char if char.isprintable() else char.encode("unicode_escape").decode("ascii") for char in str(text))


def format_report(report: Dict[str, Any]) -> str:
    """Return the text report: one line per node, then problems, signature, warnings and the verdict."""
    lines = []
    for node in report["nodes"]:
        node_id = _printable(node["node_id"])
        if node["valid"]:
            lines.append(f"ok       {node_id}")
        else:
            lines.append(f"INVALID  {node_id}: {_printable('; '.join(node['reasons']))}")
        for note in node["notes"]:
            lines.append(f"         note: {_printable(note)}")
    for problem in report["problems"]:
        lines.append(f"problem: {_printable(problem)}")
    signature = report["signature"]
    lines.append(f"signature: {signature['status']}: {_printable(signature['detail'])}")
    for warning in report["warnings"]:
        lines.append(f"warning: {_printable(warning)}")
    lines.append(f"provenance_chain_hash (recomputed): {report['provenance_chain_hash']}")
    lines.append(_verdict(report))
    return "\n".join(lines)


def _verdict(report: Dict[str, Any]) -> str:
    nodes = report["nodes"]
    invalid = sum(1 for node in nodes if not node["valid"])
    status = report["signature"]["status"]
    if report["valid"]:
        if status == "unsigned":
            return f"verdict: PASS: all {len(nodes)} nodes verify, but the chain is unsigned"
        return f"verdict: PASS: all {len(nodes)} nodes verify and the signature is valid"
    failures = []
    if invalid:
        failures.append(f"{invalid} of {len(nodes)} nodes invalid")
    if report["problems"]:
        count = len(report["problems"])
        failures.append(f"{count} execution-level problem{'s' if count != 1 else ''}")
    if status != "valid":
        failures.append(f"signature {status}")
    return "verdict: FAIL: " + ", ".join(failures)


def main(argv: Optional[List[str]] = None) -> int:
    """Run the command line; return 0 when the bundle verifies, 1 when it does not and 2 on unreadable input."""
    parser = argparse.ArgumentParser(
        prog="gl_audit_verify.py",
        description=f"Verify a {BUNDLE_FORMAT} audit bundle (hash scheme {SCHEME}) offline.",
        epilog="Exit status: 0 when every check passes, 1 when a check fails, 2 for unreadable input or usage errors.",
    )
    parser.add_argument("bundle", metavar="BUNDLE.json", help="the audit bundle file to verify")
    parser.add_argument(
        "--public-key", action="append", metavar="KEY", dest="public_keys",
        help=("trusted Ed25519 public key of the operator: base64 of the raw 32 bytes, or a file containing it. "
              f"Obtain it from the operator ({SIGNING_KEYS_ENDPOINT}), not from the bundle. Repeat for several keys."),
    )
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")
    arguments = parser.parse_args(argv)

    # Reports quote untrusted text, so characters that the output encoding
    # cannot represent are written as backslash escapes instead of raising.
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(errors="backslashreplace")

    try:
        trusted = [load_public_key(key) for key in arguments.public_keys] if arguments.public_keys else None
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        bundle = load_bundle(arguments.bundle)
    except BundleFormatError as exc:
        print(f"error: {_printable(exc)}", file=sys.stderr)
        return 2
    try:
        report = verify_bundle(bundle, trusted)
    except BundleFormatError as exc:
        print(f"error: bundle {_printable(arguments.bundle)} cannot be verified: {_printable(exc)}; "
              "export it again with `orchestrator export EXECUTION_ID`", file=sys.stderr)
        return 2

    if arguments.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_report(report))
    return 0 if report["valid"] else 1


if __name__ == "__main__":
    sys.exit(main())
