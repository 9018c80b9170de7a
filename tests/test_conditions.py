"""Tests of node conditions: compiling, evaluating, and rejecting anything outside the grammar."""

from __future__ import annotations


import pytest



from orchestrator.conditions import MAX_CONDITION_LENGTH, compile_condition
from orchestrator.errors import ConditionError, InputMappingError

INPUT = {"include_scope1": True, "region": "EU", "year": 2024, "sites": ["a", "b"], "note": None}
RESULTS = {
    "combustion": {"total": 12.5, "by_fuel": {"gas": 10, "oil": 2.5}},
    "load-2024": {"rows": [{"fuel-type": "gas"}]},
}


def evaluate(source: str) -> bool:
    return compile_condition(source).evaluate(INPUT, RESULTS)


def test_condition_true_and_false():
    assert evaluate("input.include_scope1 == true") is True
    assert evaluate("input.include_scope1 == false") is False


def test_condition_example_with_and_in():
    assert evaluate('results.combustion.total > 0 and input.region in ["EU", "US"]') is True
    assert evaluate('results.combustion.total > 0 and input.region in ["JP"]') is False


def test_condition_comparison_operators():
    assert evaluate("input.year >= 2024") is True
    assert evaluate("input.year > 2024") is False
    assert evaluate("input.year <= 2024") is True
    assert evaluate("input.year < 2024.5") is True
    assert evaluate("input.year != 2023") is True
    assert evaluate('input.region < "FR"') is True


def test_condition_chained_comparison():
    assert evaluate("2000 < input.year < 2030") is True
    assert evaluate("2000 < input.year < 2020") is False


def test_condition_boolean_operators():
    assert evaluate("not input.include_scope1") is False
    assert evaluate("input.year == 1 or input.region == 'EU'") is True
    assert evaluate("(input.year == 1 or input.year == 2024) and not (input.region == 'US')") is True


def test_condition_membership_forms():
    assert evaluate('"a" in input.sites') is True
    assert evaluate('"c" not in input.sites') is True
    assert evaluate('"gas" in results.combustion.by_fuel') is True
    assert evaluate('"U" in input.region') is True
    assert evaluate('"X" in input.region') is False
    assert evaluate("1 in ['1', 2]") is False


def test_condition_null_comparisons():
    assert evaluate("input.note == null") is True
    assert evaluate("input.region != null") is True
    assert evaluate("input.note == None") is True


def test_condition_python_literal_spellings():
    assert evaluate("input.include_scope1 == True") is True
    assert evaluate("input.include_scope1 != False") is True


def test_condition_negative_number_literal():
    assert evaluate("results.combustion.total > -1.5") is True


def test_condition_subscript_keys():
    assert evaluate('results["load-2024"].rows[0]["fuel-type"] == "gas"') is True
    assert evaluate('input["sites"][1] == "b"') is True


def test_condition_deep_equality_follows_json_types():
    assert evaluate('input.sites == ["a", "b"]') is True
    assert evaluate("[1, true] == [1, 1]") is False


def test_condition_references():
    condition = compile_condition('results.combustion.total > 0 and results["load-2024"].rows != null')
    assert condition.node_references == frozenset({"combustion", "load-2024"})
    assert condition.reads_input is False
    assert compile_condition("input.year == 2024").reads_input is True
    assert compile_condition("input.year == 2024").node_references == frozenset()


def test_condition_missing_key():
    condition = compile_condition("input.include_scope2 == true")
    with pytest.raises(InputMappingError) as caught:
        condition.evaluate(INPUT, RESULTS, execution_id="exec-1", node_id="scope2")
    error = caught.value
    assert error.node_id == "scope2"
    assert error.execution_id == "exec-1"
    assert "condition 'input.include_scope2 == true' of node 'scope2' reads a missing key" in str(error)
    assert "key 'include_scope2' is missing" in str(error)


def test_condition_missing_results():
    with pytest.raises(InputMappingError, match="there are no results for node 'transport'"):
        evaluate("results.transport.total > 0")


def test_condition_short_circuit_skips_missing_key():
    assert evaluate("input.note != null and input.note.flag == true") is False


def test_condition_type_error_ordering():
    with pytest.raises(ConditionError, match="cannot compare input.region .*a string.* with 3 .*using '>'"):
        evaluate("input.region > 3")


def test_condition_type_error_equality():
    with pytest.raises(ConditionError, match="which needs values of the same type"):
        evaluate('input.year == "2024"')


def test_condition_boolean_is_not_number():
    with pytest.raises(ConditionError, match="cannot compare true"):
        evaluate("true == 1")


def test_condition_type_error_membership():
    with pytest.raises(ConditionError, match="using 'in'"):
        evaluate("1 in input.region")


def test_condition_non_boolean_result():
    condition = compile_condition("input.year")
    with pytest.raises(ConditionError) as caught:
        condition.evaluate(INPUT, RESULTS, node_id="n1")
    assert "condition 'input.year' of node 'n1' evaluated to 2024, a number, not a boolean" in str(caught.value)
    assert caught.value.node_id == "n1"


def test_condition_and_needs_booleans():
    with pytest.raises(ConditionError, match="'and' needs booleans, but input.year is 2024"):
        evaluate("input.year and true")


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        ("__import__('os')", "cannot contain function calls"),
        ("input.__class__", "attribute '__class__' is not allowed"),
        ("input.year.__class__.__bases__", "attribute '__class__' is not allowed"),
        ("input.sites.count('a') > 0", "cannot contain function calls"),
        ("input.year + 1 > 2024", "cannot contain arithmetic"),
        ("(lambda: True)()", "cannot contain function calls"),
        ("lambda: True", "cannot contain lambda expressions"),
        ("os.system", "attributes and subscripts may only follow input or results"),
        ("'abc'.upper", "attributes and subscripts may only follow input or results"),
        ("open", "name 'open' is not allowed"),
        ("results", "the condition is the whole results object"),
        ("input.sites[-1] == 'b'", r"subscript \[-1\] is not allowed"),
        ("input.sites[0:1] == []", r"subscript \[0:1\] is not allowed"),
        ("input[input.region] == 1", r"subscript \[input.region\] is not allowed"),
        ("[x for x in input.sites]", "cannot contain comprehensions"),
        ("(x := 1) == 1", "cannot contain assignment expressions"),
        ("f'{input}' == 'x'", "cannot contain f-strings"),
        ("{'a': 1} == input", "cannot contain dict literals"),
        ("input.year is None", "operator Is is not allowed"),
        ("-input.year < 0", "unary minus applies only to number literals"),
        ("b'x' == input.region", "literal b'x' is not allowed"),
        ("1e999 > input.year", "literal inf is not allowed"),
        ("1 if input.year else 0", "cannot contain conditional expressions"),
    ],
)
def test_condition_rejects_unsafe(source, reason):
    with pytest.raises(ValueError, match=reason):
        compile_condition(source)


def test_condition_invalid_syntax():
    with pytest.raises(ValueError, match="invalid syntax at column 9"):
        compile_condition("input.x = 1")


def test_condition_empty():
    with pytest.raises(ValueError, match="the condition is empty"):
        compile_condition("   ")


def test_condition_not_a_string():
    with pytest.raises(ValueError, match="a condition must be a string, not a boolean"):
        compile_condition(True)  # type: ignore[arg-type]


def test_condition_too_long():
    source = "input.year == 1 or " * 300 + "true"
    assert len(source) > MAX_CONDITION_LENGTH
    with pytest.raises(ValueError, match=f"the maximum is {MAX_CONDITION_LENGTH}"):
        compile_condition(source)


def test_condition_too_deep():
    with pytest.raises(ValueError, match="nested more than 32 levels deep"):
        compile_condition("not " * 40 + "true")


def test_condition_surrounding_whitespace_allowed():
    condition = compile_condition("  input.year == 2024\n")
    assert condition.evaluate(INPUT, RESULTS) is True
    assert condition.source == "  input.year == 2024\n"


def test_non_ascii_name_rejected() -> None:
    with pytest.raises(ValueError, match="not ASCII; read such keys with a subscript"):
        compile_condition("input.\ufb01 == 1")


def test_non_ascii_key_by_subscript() -> None:
    condition = compile_condition('input["\ufb01"] == 1')
    assert condition.evaluate({"\ufb01": 1}, {}) is True


@pytest.mark.parametrize("source", ["1", "'yes'", "null", "input", "results"])
def test_non_boolean_whole_condition_rejected(source: str) -> None:
    with pytest.raises(ValueError, match="condition is"):
        compile_condition(source)
