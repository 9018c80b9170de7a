"""Tests of input-mapping references: parsing, reading paths and resolving a node's inputs."""

from __future__ import annotations


import pytest



from orchestrator.dag import Node, parse_dag
from orchestrator.errors import InputMappingError
from orchestrator.mapping import parse_reference, read_path, resolve_inputs

OUTPUTS = {"rows": [{"fuel": "gas", "kwh": 10}, {"fuel": "oil", "kwh": None}], "total": 3.5}


def make_node(input_mapping: dict[str, str]) -> Node:
    document = {
        "dag_id": "mapping-test",
        "nodes": {
            "load": {"agent_id": "t.load"},
            "calc": {"agent_id": "t.calc", "depends_on": ["load"], "input_mapping": input_mapping},
        },
    }
    return parse_dag(document).nodes["calc"]


def test_read_path_dict_and_list():
    assert read_path(OUTPUTS, "rows.0.fuel", what="results.load.rows.0.fuel") == "gas"
    assert read_path(OUTPUTS, "rows.1", what="x") == {"fuel": "oil", "kwh": None}
    assert read_path(OUTPUTS, "total", what="x") == 3.5


def test_read_path_empty_path_returns_root():
    assert read_path(OUTPUTS, "", what="results.load") is OUTPUTS


def test_read_path_null_value_is_returned():
    assert read_path(OUTPUTS, "rows.1.kwh", what="x") is None


def test_read_path_digit_key_on_dict():
    assert read_path({"2024": {"total": 1}}, "2024.total", what="x") == 1


def test_read_path_missing_key():
    with pytest.raises(InputMappingError) as caught:
        read_path(OUTPUTS, "rows.0.fuel_type", what="results.load.rows.0.fuel_type")
    message = str(caught.value)
    assert "results.load.rows.0.fuel_type not found" in message
    assert "key 'fuel_type' is missing under 'rows.0'" in message
    assert "available keys: 'fuel', 'kwh'" in message


def test_read_path_missing_top_level_key():
    with pytest.raises(InputMappingError, match=r"input.year not found: key 'year' is missing \(the object is empty\)"):
        read_path({}, "year", what="input.year")


def test_read_path_index_out_of_range():
    with pytest.raises(InputMappingError, match="index 5 is out of range under 'rows', a list of length 2"):
        read_path(OUTPUTS, "rows.5", what="results.load.rows.5")


def test_read_path_non_index_on_list():
    with pytest.raises(InputMappingError, match="'first' is not a list index under 'rows'"):
        read_path(OUTPUTS, "rows.first", what="results.load.rows.first")


def test_read_path_negative_index_rejected():
    with pytest.raises(InputMappingError, match="'-1' is not a list index"):
        read_path(OUTPUTS, "rows.-1", what="results.load.rows.-1")


def test_read_path_through_scalar():
    with pytest.raises(InputMappingError, match="'total' is a number, not an object or a list, so it has no 'unit'"):
        read_path(OUTPUTS, "total.unit", what="results.load.total.unit")


def test_parse_reference_forms():
    node_ids = {"load"}
    assert parse_reference("input", node_ids).segments == ()
    assert parse_reference("input.year", node_ids).segments == ("year",)
    whole = parse_reference("results.load", node_ids)
    assert whole.node_id == "load"
    assert whole.segments == ()
    nested = parse_reference("results.load.rows.0", node_ids)
    assert nested.source == "results"
    assert nested.node_id == "load"
    assert nested.segments == ("rows", "0")


def test_parse_reference_dotted_node_id():
    reference = parse_reference("results.ghg.load.rows", {"ghg.load", "other"})
    assert reference.node_id == "ghg.load"
    assert reference.segments == ("rows",)


def test_parse_reference_ambiguous_node_id():
    with pytest.raises(ValueError, match="ambiguous because 'ghg' and 'ghg.load' are both node ids"):
        parse_reference("results.ghg.load.rows", {"ghg", "ghg.load"})


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("result.load.rows", "must have the form 'input', 'input.<path>', 'results.<node>'"),
        ("inputs.year", "must have the form"),
        ("results.", "names no node"),
        ("results", "must have the form"),
        ("input..year", "empty path segment"),
        ("input.year.", "empty path segment"),
        (" input.year", "leading or trailing whitespace"),
        ("results.lod.rows", "none of 'lod', 'lod.rows' is a known node id"),
        ("results.lod", "'lod' is not a known node id"),
    ],
)
def test_parse_reference_rejects(text, reason):
    with pytest.raises(ValueError, match=reason):
        parse_reference(text, {"load"})


def test_resolve_inputs_all_forms():
    node = make_node({"everything": "input", "year": "input.year", "outputs": "results.load", "fuel": "results.load.rows.0.fuel"})
    inputs = resolve_inputs(node, {"year": 2024}, {"load": OUTPUTS})
    assert inputs == {"everything": {"year": 2024}, "year": 2024, "outputs": OUTPUTS, "fuel": "gas"}


def test_resolve_inputs_empty_mapping():
    assert resolve_inputs(make_node({}), {"year": 2024}, {"load": OUTPUTS}) == {}


def test_resolve_inputs_null_value_is_kept():
    node = make_node({"kwh": "results.load.rows.1.kwh"})
    assert resolve_inputs(node, {}, {"load": OUTPUTS}) == {"kwh": None}


def test_resolve_inputs_missing_key():
    node = make_node({"year": "input.reporting_year"})
    with pytest.raises(InputMappingError) as caught:
        resolve_inputs(node, {"year": 2024}, {"load": OUTPUTS}, execution_id="exec-1")
    error = caught.value
    assert error.execution_id == "exec-1"
    assert error.node_id == "calc"
    assert "node 'calc': input mapping 'year' -> 'input.reporting_year' cannot be resolved" in str(error)
    assert "key 'reporting_year' is missing" in str(error)


def test_resolve_inputs_missing_results():
    node = make_node({"rows": "results.load.rows"})
    with pytest.raises(InputMappingError) as caught:
        resolve_inputs(node, {}, {}, execution_id="exec-2")
    error = caught.value
    assert error.node_id == "calc"
    assert error.execution_id == "exec-2"
    assert "none of 'load', 'load.rows' is a known node id" in str(error)
    assert "results are available for nodes: none" in str(error)
