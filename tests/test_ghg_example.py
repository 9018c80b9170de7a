"""Tests of the scope 1 stationary-combustion example in examples/ghg-inventory.

The agents run in DAG order, called directly and without the orchestrator's
engine, and their totals are checked against arithmetic written out below
with the literal US EPA factors.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import math
import shutil
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_DIR = REPO_ROOT / "examples" / "ghg-inventory"


import orchestrator.agents
from orchestrator.agents import AgentRegistry
from orchestrator.hashing import check_json_domain, output_hash

DAG = yaml.safe_load((EXAMPLE_DIR / "dag.yaml").read_text(encoding="utf-8"))
INPUT_DATA = json.loads((EXAMPLE_DIR / "input.json").read_text(encoding="utf-8"))
AGENT_IDS = {
    "ghg.load_activity",
    "ghg.load_emission_factors",
    "ghg.gas_emissions",
    "ghg.co2e",
    "ghg.scope1_totals",
}


def _import_agents(directory: Path, registry: AgentRegistry, module_name: str) -> ModuleType:
    """Import ``directory/agents.py`` so that its agents register in ``registry``.

    The decorator registers in ``orchestrator.agents.default_registry``, which is
    swapped for ``registry`` during the import. This keeps the test's imports out of
    the process-wide registry, where a second module registering the same agent
    ids (the tampered copy below, or the orchestrator's own import of the example)
    would be rejected as a conflict.
    """
    spec = importlib.util.spec_from_file_location(module_name, directory / "agents.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(orchestrator.agents, "default_registry", registry)
        spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def registry() -> AgentRegistry:
    registry = AgentRegistry()
    _import_agents(EXAMPLE_DIR, registry, "ghg_inventory_agents")
    return registry


def _params(node_id: str) -> dict[str, Any]:
    return copy.deepcopy(DAG["nodes"][node_id].get("params", {}))


def _call(registry: AgentRegistry, node_id: str, inputs: dict[str, Any]) -> Any:
    """Run one node's agent with the node's params from dag.yaml."""
    agent = registry.get(DAG["nodes"][node_id]["agent_id"])
    return agent(copy.deepcopy(inputs), _params(node_id))


def _run_by_hand(registry: AgentRegistry, input_data: dict[str, Any]) -> dict[str, Any]:
    """Run every node in DAG order with the wiring written out, and return their outputs."""
    activity = _call(registry, "load_activity", {"facilities": input_data["facilities"]})
    factors = _call(registry, "load_emission_factors", {})

    gas_inputs = {"rows": activity["rows"], "factors": factors["factors"]}
    co2 = _call(registry, "co2", gas_inputs)
    ch4 = _call(registry, "ch4", gas_inputs)
    n2o = _call(registry, "n2o", gas_inputs)

    co2e = _call(registry, "co2e", {"co2": co2["rows"], "ch4": ch4["rows"], "n2o": n2o["rows"]})
    totals = _call(
        registry,
        "scope1_totals",
        {
            "rows": co2e["rows"],
            "gwp": co2e["gwp"],
            "facilities": activity["facilities"],
            "factor_source": factors["source"],
            "reporting_year": input_data["reporting_year"],
        },
    )

    return {
        "load_activity": activity,
        "load_emission_factors": factors,
        "co2": co2,
        "ch4": ch4,
        "n2o": n2o,
        "co2e": co2e,
        "scope1_totals": totals,
    }


def _resolve(reference: str, input_data: dict[str, Any], outputs: dict[str, Any]) -> Any:
    root, *keys = reference.split(".")
    assert root in ("input", "results"), reference

    value = input_data if root == "input" else outputs
    for key in keys:
        value = value[key]
    return value


def _run_dag_document(registry: AgentRegistry, input_data: dict[str, Any]) -> dict[str, Any]:
    """Run the nodes of dag.yaml, resolving its input mappings, in canonical topological order."""
    nodes = DAG["nodes"]
    outputs: dict[str, Any] = {}
    while len(outputs) < len(nodes):
        ready = [
            node_id
            for node_id, node in nodes.items()
            if node_id not in outputs and set(node.get("depends_on", [])) <= outputs.keys()
        ]
        node_id = min(ready)
        node = nodes[node_id]

        inputs = {}
        for name, reference in node.get("input_mapping", {}).items():
            if reference.startswith("results."):
                assert reference.split(".")[1] in node.get("depends_on", []), (node_id, reference)
            inputs[name] = _resolve(reference, input_data, outputs)

        outputs[node_id] = _call(registry, node_id, inputs)
    return outputs


def _facilities_with(*sources: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"facility_id": "plant-x", "name": "Plant X", "sources": list(sources)}]


# --- The DAG document and the factor file ------------------------------------


def test_agents_registered_on_import(registry: AgentRegistry) -> None:
    for agent_id in AGENT_IDS:
        assert registry.has(agent_id, "1.0.0"), agent_id

    for node_id, node in DAG["nodes"].items():
        assert registry.has(node["agent_id"]), node_id


def test_dag_document_wiring() -> None:
    nodes = DAG["nodes"]

    assert DAG["dag_id"] == "ghg-inventory"
    assert DAG["on_failure"] == "fail_fast"
    assert DAG["default_timeout_policy"]["timeout_seconds"] == 60
    assert "default_retry_policy" in DAG
    assert set(nodes) == {"load_activity", "load_emission_factors", "co2", "ch4", "n2o", "co2e", "scope1_totals"}

    assert nodes["load_activity"]["input_mapping"] == {"facilities": "input.facilities"}
    for node_id, gas in (("co2", "CO2"), ("ch4", "CH4"), ("n2o", "N2O")):
        assert nodes[node_id]["params"] == {"gas": gas}
        assert nodes[node_id]["depends_on"] == ["load_activity", "load_emission_factors"]
    assert nodes["co2e"]["input_mapping"] == {
        "co2": "results.co2.rows",
        "ch4": "results.ch4.rows",
        "n2o": "results.n2o.rows",
    }
    assert nodes["scope1_totals"]["input_mapping"]["reporting_year"] == "input.reporting_year"


def test_dag_gwp_params_are_ar5() -> None:
    params = DAG["nodes"]["co2e"]["params"]

    assert params["gwp"] == {"CO2": 1, "CH4": 28, "N2O": 265}
    assert params["gwp_source"] == "IPCC AR5 (100-year)"


def test_dag_factor_hash_matches_file() -> None:
    params = DAG["nodes"]["load_emission_factors"]["params"]
    data = (EXAMPLE_DIR / params["file"]).read_bytes()

    assert params["sha256"] == hashlib.sha256(data).hexdigest()


def test_factor_file_is_epa_block(registry: AgentRegistry) -> None:
    factors = _call(registry, "load_emission_factors", {})
    text = (EXAMPLE_DIR / "emission_factors.csv").read_text(encoding="utf-8")
    data_lines = text.splitlines()[1:]

    assert len(data_lines) == 33
    assert all(",atomic6ghg 1.1.1 (BSD-3-Clause)," in line for line in data_lines)
    assert len(factors["factors"]) == 11
    assert "US EPA" in factors["source"]
    assert "atomic6ghg 1.1.1 (BSD-3-Clause)" in factors["source"]

    # The hand calculation below uses these literal values.
    natural_gas = factors["factors"]["natural_gas"]
    assert natural_gas["CO2"] == {"factor": 53.06, "unit": "kg CO2/mmBtu", "source_key": "naturalGas"}
    assert natural_gas["CH4"]["factor"] == 1.0
    assert natural_gas["N2O"]["factor"] == 0.1
    assert factors["factors"]["gas_diesel_oil"]["CO2"]["factor"] == 73.96
    assert factors["factors"]["residual_fuel_oil"]["CO2"]["factor"] == 75.1
    assert factors["factors"]["lpg"]["CO2"]["factor"] == 61.71
    assert factors["factors"]["kerosene"]["CO2"]["factor"] == 75.2
    for fuel in ("gas_diesel_oil", "residual_fuel_oil", "lpg", "kerosene"):
        assert factors["factors"][fuel]["CH4"]["factor"] == 3.0
        assert factors["factors"][fuel]["CH4"]["unit"] == "g CH4/mmBtu"
        assert factors["factors"][fuel]["N2O"]["factor"] == 0.6
        assert factors["factors"][fuel]["N2O"]["unit"] == "g N2O/mmBtu"


# --- The inventory -----------------------------------------------------------


def test_inventory_totals_by_hand(registry: AgentRegistry) -> None:
    totals = _run_by_hand(registry, INPUT_DATA)["scope1_totals"]
    facilities = {facility["facility_id"]: facility for facility in totals["facilities"]}

    # Energy in mmBtu (HHV): 1 mmBtu = 1.055056 GJ, 1 therm = 0.1 mmBtu, 1 MWh = 3.412142 mmBtu.
    a_boiler = 48500.0 / 1.055056  # natural_gas, 48 500 GJ
    a_generator = 1200.0  # gas_diesel_oil, 1 200 mmBtu
    b_heater = 8400.0  # residual_fuel_oil, 8 400 mmBtu
    b_space_heating = 215000.0 * 0.1  # natural_gas, 215 000 therm
    b_dryer = 950.0 * 3.412142  # lpg, 950 MWh
    c_chp = 6200.0 * 3.412142  # natural_gas, 6 200 MWh
    c_heaters = 310.0  # kerosene, 310 mmBtu

    # Emissions in kg. The CO2 factors are in kg/mmBtu, the CH4 and N2O factors in g/mmBtu.
    a_co2 = a_boiler * 53.06 + a_generator * 73.96
    a_ch4 = (a_boiler * 1.0 + a_generator * 3.0) / 1000
    a_n2o = (a_boiler * 0.1 + a_generator * 0.6) / 1000
    b_co2 = b_heater * 75.1 + b_space_heating * 53.06 + b_dryer * 61.71
    b_ch4 = (b_heater * 3.0 + b_space_heating * 1.0 + b_dryer * 3.0) / 1000
    b_n2o = (b_heater * 0.6 + b_space_heating * 0.1 + b_dryer * 0.6) / 1000
    c_co2 = c_chp * 53.06 + c_heaters * 75.2
    c_ch4 = (c_chp * 1.0 + c_heaters * 3.0) / 1000
    c_n2o = (c_chp * 0.1 + c_heaters * 0.6) / 1000

    # Tonnes CO2e with the IPCC AR5 100-year GWPs: CO2 1, CH4 28, N2O 265.
    a_total = (a_co2 * 1 + a_ch4 * 28 + a_n2o * 265) / 1000
    b_total = (b_co2 * 1 + b_ch4 * 28 + b_n2o * 265) / 1000
    c_total = (c_co2 * 1 + c_ch4 * 28 + c_n2o * 265) / 1000
    overall = a_total + b_total + c_total

    expected = {
        "plant-a": (a_total, a_co2, a_ch4, a_n2o),
        "plant-b": (b_total, b_co2, b_ch4, b_n2o),
        "plant-c": (c_total, c_co2, c_ch4, c_n2o),
    }
    assert sorted(facilities) == sorted(expected)
    for facility_id, (total, co2_kg, ch4_kg, n2o_kg) in expected.items():
        facility = facilities[facility_id]
        assert facility["total_co2e_t"] == pytest.approx(total, rel=1e-12), facility_id
        assert facility["mass_t"]["CO2"] == pytest.approx(co2_kg / 1000, rel=1e-12), facility_id
        assert facility["mass_t"]["CH4"] == pytest.approx(ch4_kg / 1000, rel=1e-12), facility_id
        assert facility["mass_t"]["N2O"] == pytest.approx(n2o_kg / 1000, rel=1e-12), facility_id
        assert facility["co2e_t"]["CH4"] == pytest.approx(ch4_kg * 28 / 1000, rel=1e-12), facility_id
        assert facility["co2e_t"]["N2O"] == pytest.approx(n2o_kg * 265 / 1000, rel=1e-12), facility_id

    assert totals["total"]["total_co2e_t"] == pytest.approx(overall, rel=1e-12)
    assert totals["total"]["mass_t"]["CO2"] == pytest.approx((a_co2 + b_co2 + c_co2) / 1000, rel=1e-12)
    assert totals["total"]["source_count"] == 7


def test_inventory_matches_readme_table(registry: AgentRegistry) -> None:
    totals = _run_by_hand(registry, INPUT_DATA)["scope1_totals"]
    facilities = {facility["facility_id"]: facility for facility in totals["facilities"]}

    assert round(facilities["plant-a"]["total_co2e_t"], 3) == 2530.671
    assert round(facilities["plant-b"]["total_co2e_t"], 3) == 1975.666
    assert round(facilities["plant-c"]["total_co2e_t"], 3) == 1147.039
    assert round(totals["total"]["total_co2e_t"], 3) == 5653.376
    assert totals["reporting_year"] == 2025
    assert totals["gwp"] == {"values": {"CO2": 1, "CH4": 28, "N2O": 265}, "source": "IPCC AR5 (100-year)"}


def test_dag_mappings_reproduce_run(registry: AgentRegistry) -> None:
    by_hand = _run_by_hand(registry, INPUT_DATA)
    from_document = _run_dag_document(registry, INPUT_DATA)

    assert from_document == by_hand


def test_outputs_in_json_domain(registry: AgentRegistry) -> None:
    outputs = _run_by_hand(registry, INPUT_DATA)

    for node_id, output in outputs.items():
        check_json_domain(output, f"$.{node_id}")


def test_outputs_deterministic(registry: AgentRegistry) -> None:
    first = _run_by_hand(registry, INPUT_DATA)
    second = _run_by_hand(registry, INPUT_DATA)

    for node_id in first:
        assert output_hash(first[node_id]) == output_hash(second[node_id]), node_id


def test_input_order_irrelevant(registry: AgentRegistry) -> None:
    shuffled = copy.deepcopy(INPUT_DATA)
    shuffled["facilities"].reverse()
    for facility in shuffled["facilities"]:
        facility["sources"].reverse()

    original = _run_by_hand(registry, INPUT_DATA)
    reordered = _run_by_hand(registry, shuffled)

    assert reordered == original


# --- ghg.load_activity -------------------------------------------------------


@pytest.mark.parametrize(
    ("quantity", "unit", "expected_mmbtu"),
    [
        (105.5056, "GJ", 105.5056 / 1.055056),
        (1.055056, "GJ", 1.0),
        (250.0, "therm", 25.0),
        (2.0, "MWh", 6.824284),
        (42.5, "mmBtu", 42.5),
        (0, "MWh", 0.0),
    ],
)
def test_load_activity_unit_conversion(
    registry: AgentRegistry, quantity: float, unit: str, expected_mmbtu: float
) -> None:
    source = {"source_id": "s1", "fuel": "natural_gas", "quantity": quantity, "unit": unit}
    rows = _call(registry, "load_activity", {"facilities": _facilities_with(source)})["rows"]

    assert rows[0]["energy_mmbtu"] == pytest.approx(expected_mmbtu, rel=1e-12)
    assert rows[0]["quantity"] == quantity
    assert rows[0]["unit"] == unit


@pytest.mark.parametrize(
    ("change", "named_value"),
    [
        ({"unit": "kWh"}, "'kWh'"),
        ({"unit": "gj"}, "'gj'"),
        ({"quantity": -5.0}, "-5.0"),
        ({"quantity": "1200"}, "'1200'"),
        ({"quantity": math.nan}, "nan"),
        ({"quantity": True}, "True"),
        ({"fuel": ""}, "fuel"),
    ],
)
def test_load_activity_rejects_bad_source(registry: AgentRegistry, change: dict[str, Any], named_value: str) -> None:
    source = {"source_id": "s1", "fuel": "natural_gas", "quantity": 10.0, "unit": "GJ", **change}

    with pytest.raises(ValueError) as error:
        _call(registry, "load_activity", {"facilities": _facilities_with(source)})

    message = str(error.value)
    assert "'plant-x'" in message
    assert "'s1'" in message
    assert named_value in message


@pytest.mark.parametrize("field", ["source_id", "fuel", "quantity", "unit"])
def test_load_activity_rejects_missing_field(registry: AgentRegistry, field: str) -> None:
    source = {"source_id": "s1", "fuel": "natural_gas", "quantity": 10.0, "unit": "GJ"}
    del source[field]

    with pytest.raises(ValueError, match=f"missing the field '{field}'") as error:
        _call(registry, "load_activity", {"facilities": _facilities_with(source)})

    assert "'plant-x'" in str(error.value)


def test_load_activity_rejects_duplicate_source(registry: AgentRegistry) -> None:
    source = {"source_id": "s1", "fuel": "natural_gas", "quantity": 10.0, "unit": "GJ"}

    with pytest.raises(ValueError, match=r"'plant-x' has duplicate source_id values \['s1'\]"):
        _call(registry, "load_activity", {"facilities": _facilities_with(source, source)})


def test_load_activity_rejects_missing_facilities(registry: AgentRegistry) -> None:
    with pytest.raises(ValueError, match="input 'facilities' must be a non-empty list"):
        _call(registry, "load_activity", {})


# --- ghg.gas_emissions and ghg.co2e ------------------------------------------


def test_unknown_fuel_raises(registry: AgentRegistry) -> None:
    source = {"source_id": "s1", "fuel": "wood_pellets", "quantity": 10.0, "unit": "GJ"}
    activity = _call(registry, "load_activity", {"facilities": _facilities_with(source)})
    factors = _call(registry, "load_emission_factors", {})

    with pytest.raises(ValueError, match="no CO2 emission factor for fuel 'wood_pellets'") as error:
        _call(registry, "co2", {"rows": activity["rows"], "factors": factors["factors"]})

    message = str(error.value)
    assert "'plant-x'" in message
    assert "natural_gas" in message
    assert "residual_fuel_oil" in message


def test_gas_emissions_converts_grams(registry: AgentRegistry) -> None:
    source = {"source_id": "s1", "fuel": "gas_diesel_oil", "quantity": 1000.0, "unit": "mmBtu"}
    activity = _call(registry, "load_activity", {"facilities": _facilities_with(source)})
    factors = _call(registry, "load_emission_factors", {})
    inputs = {"rows": activity["rows"], "factors": factors["factors"]}

    assert _call(registry, "co2", inputs)["total_kg"] == pytest.approx(1000.0 * 73.96, rel=1e-12)
    assert _call(registry, "ch4", inputs)["total_kg"] == pytest.approx(1000.0 * 3.0 / 1000, rel=1e-12)
    assert _call(registry, "n2o", inputs)["total_kg"] == pytest.approx(1000.0 * 0.6 / 1000, rel=1e-12)


def test_co2e_rejects_swapped_gas(registry: AgentRegistry) -> None:
    outputs = _run_by_hand(registry, INPUT_DATA)
    inputs = {"co2": outputs["co2"]["rows"], "ch4": outputs["n2o"]["rows"], "n2o": outputs["n2o"]["rows"]}

    with pytest.raises(ValueError, match="input 'ch4' contains N2O rows"):
        _call(registry, "co2e", inputs)


# --- ghg.load_emission_factors -----------------------------------------------


def test_tampered_factor_file_rejected(tmp_path: Path) -> None:
    shutil.copy(EXAMPLE_DIR / "agents.py", tmp_path / "agents.py")
    shutil.copy(EXAMPLE_DIR / "emission_factors.csv", tmp_path / "emission_factors.csv")
    copy_registry = AgentRegistry()
    _import_agents(tmp_path, copy_registry, "ghg_inventory_agents_copy")
    load = copy_registry.get("ghg.load_emission_factors")
    params = _params("load_emission_factors")

    # The unchanged copy loads, so the failure below comes from the edit alone.
    assert load({}, params)["factors"]["natural_gas"]["CO2"]["factor"] == 53.06

    factor_file = tmp_path / "emission_factors.csv"
    data = factor_file.read_bytes()
    assert data.count(b"natural_gas,CO2,53.06,") == 1
    factor_file.write_bytes(data.replace(b"natural_gas,CO2,53.06,", b"natural_gas,CO2,53.07,"))

    with pytest.raises(ValueError, match="factor file 'emission_factors.csv' has SHA-256") as error:
        load({}, params)

    assert params["sha256"] in str(error.value)
    assert hashlib.sha256(factor_file.read_bytes()).hexdigest() in str(error.value)


@pytest.mark.parametrize("file_name", ["../input.json", "/etc/hostname", "sub/emission_factors.csv", "..", ""])
def test_factor_file_must_sit_next_to_agents(registry: AgentRegistry, file_name: str) -> None:
    params = {**_params("load_emission_factors"), "file": file_name}

    with pytest.raises(ValueError, match="params.file .* is invalid"):
        registry.get("ghg.load_emission_factors")({}, params)


def test_factor_hash_must_be_hex(registry: AgentRegistry) -> None:
    params = {**_params("load_emission_factors"), "sha256": "ABC"}

    with pytest.raises(ValueError, match="params.sha256 'ABC' is invalid"):
        registry.get("ghg.load_emission_factors")({}, params)
