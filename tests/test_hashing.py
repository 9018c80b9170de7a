"""Canonical JSON (RFC 8785), the JSON domain checks and the gl-prov-v1 hashes."""

from __future__ import annotations

import hashlib
import json
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import Column, Integer, MetaData, Table, create_engine, select

from orchestrator import hashing
from orchestrator.database import Database
from orchestrator.errors import JsonDomainError
from orchestrator.models import JsonValue


def test_rfc8785_structure_example() -> None:
    # The example of RFC 8785 section 3.2.2 and its canonical output.
    value = json.loads(
        '{"numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],'
        ' "string": "\\u20ac$\\u000F\\u000aA\'\\u0042\\u0022\\u005c\\\\\\"\\/",'
        ' "literals": [null, true, false]}'
    )
    expected = (
        '{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],'
        '"string":"\u20ac$\\u000f\\nA\'B\\"\\\\\\\\\\"/"}'
    )
    assert hashing.canonical_json(value).decode("utf-8") == expected


def test_rfc8785_key_sorting_by_utf16() -> None:
    # The sorting example of RFC 8785 section 3.2.3.
    value = {
        "\u20ac": "Euro Sign", "\r": "Carriage Return", "\ufb33": "Hebrew Letter Dalet With Dagesh",
        "1": "One", "\U0001F600": "Emoji: Grinning Face", "\u0080": "Control",
        "\u00f6": "Latin Small Letter O With Diaeresis",
    }
    keys = list(json.loads(hashing.canonical_json(value)).keys())
    assert keys == ["\r", "1", "\u0080", "\u00f6", "\u20ac", "\U0001F600", "\ufb33"]


@pytest.mark.parametrize(("number", "text"), [
    (0.0, "0"), (-0.0, "0"), (1.0, "1"), (4.5, "4.5"), (1e21, "1e+21"), (1e-7, "1e-7"),
    (123456789012345680000.0, "123456789012345680000"), (9007199254740991, "9007199254740991"),
    (-9007199254740991, "-9007199254740991"), (5e-324, "5e-324"), (1.7976931348623157e308, "1.7976931348623157e+308"),
])
def test_rfc8785_number_serialization(number: float, text: str) -> None:
    assert hashing.canonical_json(number).decode() == text


@pytest.mark.parametrize(("value", "path", "fragment"), [
    ({"a": float("nan")}, "$.a", "not a finite number"),
    ({"a": [1, float("inf")]}, "$.a[1]", "not a finite number"),
    ({"a": -float("inf")}, "$.a", "not a finite number"),
    ({"big": 2**53}, "$.big", "outside ±(2**53 - 1)"),
    ({"small": -(2**53)}, "$.small", "outside ±(2**53 - 1)"),
    ({"s": "a\x00b"}, "$.s", "NUL character"),
    ({"s": "\ud800"}, "$.s", "lone surrogate U+D800"),
    ({1: "x"}, "$", "object key 1 is a int"),
    ({"k": {"a", "b"}}, "$.k", "set is not a JSON type"),
    ({"k": b"bytes"}, "$.k", "bytes is not a JSON type"),
    ({"k": Decimal("1.5")}, "$.k", "Decimal is not a JSON type"),
    ({"k": (1, 2)}, "$.k", "tuple is not a JSON type"),
    ({"odd key": {"x": float("nan")}}, "$['odd key'].x", "not a finite number"),
])
def test_json_domain_rejections(value: Any, path: str, fragment: str) -> None:
    with pytest.raises(JsonDomainError) as caught:
        hashing.canonical_json(value)
    assert caught.value.path == path
    assert fragment in str(caught.value)
    assert path in str(caught.value)


def test_json_domain_accepts_limits() -> None:
    hashing.check_json_domain({"max": 2**53 - 1, "min": -(2**53 - 1), "t": True, "n": None, "f": 1.5e300})


def test_nesting_at_limit_accepted() -> None:
    value: Any = "leaf"
    for _ in range(hashing.MAX_DEPTH):
        value = [value]
    hashing.check_json_domain(value)
    assert hashing.output_hash(value)


def test_deep_nesting_rejected_without_recursion() -> None:
    value: Any = "leaf"
    for _ in range(50_000):
        value = {"a": value}
    with pytest.raises(JsonDomainError) as caught:
        hashing.check_json_domain(value)
    assert "nested more than 200 levels deep" in str(caught.value)


def test_output_hash_is_sha256_of_canonical_bytes() -> None:
    value = {"b": 1, "a": [True, None]}
    expected = hashlib.sha256(b'{"a":[true,null],"b":1}').hexdigest()
    assert hashing.output_hash(value) == expected


def test_chain_hash_sorts_parent_hashes() -> None:
    first = hashing.chain_hash("n", "completed", "i" * 64, "o" * 64, ["b" * 64, "a" * 64])
    second = hashing.chain_hash("n", "completed", "i" * 64, "o" * 64, ["a" * 64, "b" * 64])
    assert first == second


def test_chain_hash_depends_on_every_field() -> None:
    base = ("n", "completed", "1" * 64, "2" * 64, ["3" * 64])
    reference = hashing.chain_hash(*base)
    variants = [
        ("m", "completed", "1" * 64, "2" * 64, ["3" * 64]),
        ("n", "skipped", "1" * 64, "2" * 64, ["3" * 64]),
        ("n", "completed", "4" * 64, "2" * 64, ["3" * 64]),
        ("n", "completed", "1" * 64, "4" * 64, ["3" * 64]),
        ("n", "completed", "1" * 64, "2" * 64, ["4" * 64]),
        ("n", "completed", "1" * 64, "2" * 64, []),
    ]
    for variant in variants:
        assert hashing.chain_hash(*variant) != reference


def test_provenance_chain_hash_depends_on_order() -> None:
    assert hashing.provenance_chain_hash("d" * 64, ["a", "b"]) != hashing.provenance_chain_hash("d" * 64, ["b", "a"])


def test_json_loads_restores_large_floats() -> None:
    assert hashing.json_loads("10000000000000000000000") == 1e22
    assert isinstance(hashing.json_loads("10000000000000000000000"), float)
    assert hashing.json_loads("9007199254740991") == 9007199254740991


ROUND_TRIP_VALUES: list[Any] = [
    {"float": 1e22, "tiny": 1e-7, "neg_zero": -0.0, "third": 1 / 3, "max": 1.7976931348623157e308},
    {"int_max": 2**53 - 1, "int_min": -(2**53 - 1), "whole_float": 3.0, "exp": 1.5e300, "e16": 1e16},
    {"unicode": "\u20ac \U0001F600 \u00f6 \ufb33", "escapes": "tab\tnew\nline\"quote\\", "empty": ""},
    {"nested": [[{"a": []}], {}, None, True, False], "order": {"z": 1, "a": 2, "\u00e9": 3}},
    [0.1, 0.2, 0.30000000000000004, 5e-324, 123456789.123456789],
    "plain string",
    None,
]


def _round_trip(url: str, values: list[Any]) -> list[Any]:
    db = Database(url)
    metadata = MetaData()
    table = Table("round_trip", metadata, Column("id", Integer, primary_key=True), Column("value", JsonValue))
    try:
        metadata.create_all(db.engine)
        db.transaction(lambda conn: conn.execute(table.insert(), [{"id": i, "value": v} for i, v in enumerate(values)]))
        with db.connect() as conn:
            return [row.value for row in conn.execute(select(table).order_by(table.c.id))]
    finally:
        metadata.drop_all(db.engine)
        db.dispose()


def test_round_trip_hashes_sqlite(sqlite_url: str) -> None:
    stored = _round_trip(sqlite_url, ROUND_TRIP_VALUES)
    for original, loaded in zip(ROUND_TRIP_VALUES, stored):
        assert hashing.output_hash(loaded) == hashing.output_hash(original)


def test_round_trip_hashes_postgres_jsonb(postgres_url: str) -> None:
    stored = _round_trip(postgres_url, ROUND_TRIP_VALUES)
    for original, loaded in zip(ROUND_TRIP_VALUES, stored):
        assert hashing.output_hash(loaded) == hashing.output_hash(original), (original, loaded)


def test_postgres_jsonb_prints_floats_as_integers(postgres_url: str) -> None:
    # Shows why json_loads exists: without it, 1e22 comes back as an integer
    # outside the JSON domain and no longer hashes.
    engine = create_engine(postgres_url)
    try:
        with engine.connect() as conn:
            text_form = conn.exec_driver_sql("SELECT '1e22'::jsonb::text").scalar_one()
    finally:
        engine.dispose()
    assert text_form == "10000000000000000000000"
