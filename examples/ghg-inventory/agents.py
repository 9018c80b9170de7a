"""Agents of the scope 1 stationary-combustion inventory example.

Importing this module registers five agents in the default registry::

    ghg.load_activity          facilities and their fuel use -> energy per source in mmBtu
    ghg.load_emission_factors  emission_factors.csv, checked against its SHA-256
    ghg.gas_emissions          kg of one gas per source (nodes co2, ch4 and n2o)
    ghg.co2e                   t of each gas and t CO2e per source, with GWPs from params
    ghg.scope1_totals          t CO2e per facility and for the whole inventory

No agent reads a clock, draws random numbers or opens a path taken from the
execution input. ghg.load_emission_factors is the only agent that reads a file,
and it reads only a file that sits next to this module.

Rounding: no agent rounds. Every computed number is an unrounded IEEE 754 double,
so the hashed outputs keep full precision. Round only when presenting results.
Sums use ``math.fsum``, which returns the correctly rounded sum, so a
total does not depend on the order of the rows.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import re
from pathlib import Path
from typing import Any

from orchestrator.agents import agent

GASES = ("CO2", "CH4", "N2O")

# Energy conversions for activity data on a higher heating value (HHV) basis.
# 1 therm is exactly 100 000 Btu. The GJ and MWh factors are rounded to 7
# significant digits, so the same energy given in GJ and in MWh converts to
# mmBtu values that differ by about 2.5e-7 relative (3.6 GJ is one MWh).
GJ_PER_MMBTU = 1.055056
MMBTU_PER_THERM = 0.1
MMBTU_PER_MWH = 3.412142
ENERGY_UNITS = ("mmBtu", "GJ", "therm", "MWh")

_FACTOR_COLUMNS = (
    "fuel", "gas", "factor", "unit", "heating_value_basis", "source", "source_package", "source_file", "source_key"
)
_SHA256_PATTERN = re.compile(r"[0-9a-f]{64}")


# --- ghg.load_activity -------------------------------------------------------


def convert_to_mmbtu(quantity: float, unit: str) -> float:
    """Convert an energy quantity in ``unit`` to mmBtu, raising ValueError for other units."""
    if unit == "mmBtu":
        return float(quantity)
    if unit == "GJ":
        return quantity / GJ_PER_MMBTU
    if unit == "therm":
        return quantity * MMBTU_PER_THERM
    if unit == "MWh":
        return quantity * MMBTU_PER_MWH
    raise ValueError(f"unit {unit!r} is not an accepted energy unit; use one of {', '.join(ENERGY_UNITS)}")


def _require(record: Any, key: str, where: str) -> Any:
    if not isinstance(record, dict):
        raise ValueError(f"{where} must be an object, got {type(record).__name__}")
    if key not in record:
        raise ValueError(f"{where} is missing the field {key!r}")
    return record[key]


def _require_text(record: Any, key: str, where: str) -> str:
    value = _require(record, key, where)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{where} has an invalid {key} {value!r}; it must be a non-empty string")
    return value


def _activity_row(facility_id: str, source: Any, where: str) -> dict[str, Any]:
    """Validate one fuel source and return its row with the energy in mmBtu."""
    source_id = _require_text(source, "source_id", where)
    where = f"facility {facility_id!r} source {source_id!r}"
    fuel = _require_text(source, "fuel", where)
    quantity = _require(source, "quantity", where)
    unit = _require(source, "unit", where)

    if isinstance(quantity, bool) or not isinstance(quantity, (int, float)) or not math.isfinite(quantity):
        raise ValueError(f"{where} has an invalid quantity {quantity!r}; it must be a finite number")
    if quantity < 0:
        raise ValueError(f"{where} has a negative quantity {quantity!r}; fuel use must be zero or more")
    if unit not in ENERGY_UNITS:
        raise ValueError(f"{where} has an unknown unit {unit!r}; use one of {', '.join(ENERGY_UNITS)}")

    return {
        "facility_id": facility_id,
        "source_id": source_id,
        "fuel": fuel,
        "quantity": quantity,
        "unit": unit,
        "energy_mmbtu": convert_to_mmbtu(quantity, unit),
    }


def _facility_rows(facility: Any, index: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Validate one facility and return its id and name, and its activity rows."""
    facility_id = _require_text(facility, "facility_id", f"facility at index {index}")
    where = f"facility {facility_id!r}"
    name = _require_text(facility, "name", where)
    sources = _require(facility, "sources", where)
    if not isinstance(sources, list) or not sources:
        raise ValueError(f"{where} has no sources; give a non-empty list of fuel sources")

    rows = []
    for source_index, source in enumerate(sources):
        rows.append(_activity_row(facility_id, source, f"{where} source at index {source_index}"))

    source_ids = [row["source_id"] for row in rows]
    duplicates = sorted({source_id for source_id in source_ids if source_ids.count(source_id) > 1})
    if duplicates:
        raise ValueError(f"{where} has duplicate source_id values {duplicates}; each source needs its own id")

    return {"facility_id": facility_id, "name": name}, rows


@agent("ghg.load_activity", version="1.0.0")
def load_activity(inputs: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """Validate the facilities' fuel use and convert each quantity to mmBtu (HHV).

    Returns ``facilities`` (id and name) sorted by facility_id, and ``rows`` with
    one row per fuel source, sorted by facility_id and then source_id.
    """
    facilities = inputs.get("facilities")
    if not isinstance(facilities, list) or not facilities:
        raise ValueError(
            f"input 'facilities' must be a non-empty list, got {facilities!r}; map it from input.facilities"
        )

    summaries = []
    rows = []
    for index, facility in enumerate(facilities):
        summary, facility_rows = _facility_rows(facility, index)
        summaries.append(summary)
        rows.extend(facility_rows)

    facility_ids = [summary["facility_id"] for summary in summaries]
    duplicates = sorted({facility_id for facility_id in facility_ids if facility_ids.count(facility_id) > 1})
    if duplicates:
        raise ValueError(f"duplicate facility_id values {duplicates}; each facility needs its own id")

    summaries.sort(key=lambda summary: summary["facility_id"])
    rows.sort(key=lambda row: (row["facility_id"], row["source_id"]))
    return {"facilities": summaries, "rows": rows}


# --- ghg.load_emission_factors -----------------------------------------------


def _factor_file_path(file_name: Any) -> Path:
    """Return the path of a factor file in this module's directory, rejecting any other path."""
    if not isinstance(file_name, str) or file_name in ("", ".", "..") or Path(file_name).name != file_name:
        raise ValueError(
            f"params.file {file_name!r} is invalid; give the bare name of a file next to agents.py, "
            "such as 'emission_factors.csv'"
        )
    return Path(__file__).resolve().parent / file_name


def _check_sha256(path: Path, data: bytes, expected: Any) -> str:
    """Return the file's SHA-256 after checking that it equals ``expected``."""
    if not isinstance(expected, str) or not _SHA256_PATTERN.fullmatch(expected):
        raise ValueError(f"params.sha256 {expected!r} is invalid; give the 64 lowercase hex digits of {path.name}")

    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise ValueError(
            f"factor file {path.name!r} has SHA-256 {actual}, but params.sha256 is {expected}; "
            "restore the file, or review the change and put the new hash in dag.yaml"
        )
    return actual


def _parse_factor(row: dict[str, str], line: int) -> tuple[str, str, dict[str, Any]]:
    """Validate one CSV row and return its fuel, gas and factor entry."""
    fuel, gas, unit = row["fuel"], row["gas"], row["unit"]
    where = f"emission factor file line {line} ({fuel} {gas})"
    if gas not in GASES:
        raise ValueError(f"{where} has an unknown gas {gas!r}; expected one of {', '.join(GASES)}")
    if unit not in (f"kg {gas}/mmBtu", f"g {gas}/mmBtu"):
        raise ValueError(f"{where} has the unit {unit!r}; expected 'kg {gas}/mmBtu' or 'g {gas}/mmBtu'")

    # Activity data is on an HHV basis, so a factor on another basis would be off by
    # the ratio of the two heating values, with no visible error.
    if not row["heating_value_basis"].startswith("HHV"):
        raise ValueError(f"{where} is on a {row['heating_value_basis']!r} basis; this inventory needs HHV factors")

    try:
        factor = float(row["factor"])
    except ValueError:
        raise ValueError(f"{where} has an invalid factor {row['factor']!r}; it must be a number") from None
    if not math.isfinite(factor) or factor < 0:
        raise ValueError(f"{where} has an invalid factor {row['factor']!r}; it must be finite and zero or more")

    return fuel, gas, {"factor": factor, "unit": unit, "source_key": row["source_key"]}


def parse_factor_table(text: str) -> tuple[dict[str, dict[str, Any]], str]:
    """Parse the factor CSV into ``{fuel: {gas: entry}}`` and a citation of its sources."""
    reader = csv.DictReader(io.StringIO(text, newline=""))
    missing = [column for column in _FACTOR_COLUMNS if column not in (reader.fieldnames or [])]
    if missing:
        raise ValueError(f"emission factor file is missing the columns {missing}")

    factors: dict[str, dict[str, Any]] = {}
    sources: list[str] = []
    for row in reader:
        fuel, gas, entry = _parse_factor(row, reader.line_num)
        if gas in factors.setdefault(fuel, {}):
            raise ValueError(f"emission factor file has two {gas} factors for fuel {fuel!r}")
        factors[fuel][gas] = entry
        citation = f"{row['source']}; values as shipped in {row['source_package']}, {row['source_file']}"
        if citation not in sources:
            sources.append(citation)

    for fuel, by_gas in factors.items():
        absent = [gas for gas in GASES if gas not in by_gas]
        if absent:
            raise ValueError(f"emission factor file has no {', '.join(absent)} factor for fuel {fuel!r}")
    return factors, " | ".join(sources)


@agent("ghg.load_emission_factors", version="1.0.0")
def load_emission_factors(inputs: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """Load the emission factor CSV next to this module after checking its SHA-256.

    The hash in params makes the factor data part of the node's input hash, so the
    provenance record pins the exact factors that were used.
    """
    path = _factor_file_path(params.get("file"))
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ValueError(f"factor file {path.name!r} not found next to {Path(__file__).name}") from None

    sha256 = _check_sha256(path, data, params.get("sha256"))
    factors, source = parse_factor_table(data.decode("utf-8"))
    return {"file": path.name, "sha256": sha256, "source": source, "factors": factors}


# --- ghg.gas_emissions -------------------------------------------------------


def _emissions_kg(energy_mmbtu: float, factor: float, unit: str) -> float:
    """Return the emitted mass in kg for a factor in kg or g per mmBtu."""
    if unit.startswith("kg "):
        return energy_mmbtu * factor
    return energy_mmbtu * factor / 1000.0


@agent("ghg.gas_emissions", version="1.0.0")
def gas_emissions(inputs: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """Compute the mass of one gas (params.gas) emitted by each source, in kg."""
    gas = params.get("gas")
    if gas not in GASES:
        raise ValueError(f"params.gas {gas!r} is invalid; use one of {', '.join(GASES)}")
    rows = inputs["rows"]
    factors = inputs["factors"]

    unknown = [row for row in rows if gas not in factors.get(row["fuel"], {})]
    if unknown:
        listed = ", ".join(
            f"{row['fuel']!r} (facility {row['facility_id']!r} source {row['source_id']!r})" for row in unknown
        )
        raise ValueError(
            f"no {gas} emission factor for fuel {listed}; fuels with factors: {', '.join(sorted(factors))}"
        )

    emission_rows = []
    for row in rows:
        entry = factors[row["fuel"]][gas]
        emission_rows.append(
            {
                "facility_id": row["facility_id"],
                "source_id": row["source_id"],
                "fuel": row["fuel"],
                "gas": gas,
                "energy_mmbtu": row["energy_mmbtu"],
                "factor": entry["factor"],
                "factor_unit": entry["unit"],
                "emissions_kg": _emissions_kg(row["energy_mmbtu"], entry["factor"], entry["unit"]),
            }
        )

    total_kg = math.fsum(row["emissions_kg"] for row in emission_rows)
    return {"gas": gas, "rows": emission_rows, "total_kg": total_kg}


# --- ghg.co2e ----------------------------------------------------------------


def _validate_gwp(params: dict[str, Any]) -> tuple[dict[str, Any], str]:
    gwp = params.get("gwp")
    if not isinstance(gwp, dict) or sorted(gwp) != sorted(GASES):
        raise ValueError(f"params.gwp {gwp!r} is invalid; give a GWP for exactly {', '.join(GASES)}")
    for gas, value in gwp.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise ValueError(f"params.gwp.{gas} {value!r} is invalid; it must be a positive number")

    gwp_source = params.get("gwp_source")
    if not isinstance(gwp_source, str) or not gwp_source.strip():
        raise ValueError(f"params.gwp_source {gwp_source!r} is invalid; name the source of the GWP values")
    return gwp, gwp_source


def _index_by_source(inputs: dict[str, Any], gas: str) -> dict[tuple[str, str], dict[str, Any]]:
    """Return one gas's emission rows keyed by (facility_id, source_id), checking the wiring."""
    key = gas.lower()
    indexed: dict[tuple[str, str], dict[str, Any]] = {}
    for row in inputs[key]:
        if row["gas"] != gas:
            raise ValueError(f"input {key!r} contains {row['gas']} rows; map it from results.{key}.rows")
        source_key = (row["facility_id"], row["source_id"])
        if source_key in indexed:
            raise ValueError(f"input {key!r} has two rows for facility {source_key[0]!r} source {source_key[1]!r}")
        indexed[source_key] = row
    return indexed


@agent("ghg.co2e", version="1.0.0")
def co2e(inputs: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """Combine the three gases per source into tonnes of each gas and tonnes CO2e."""
    gwp, gwp_source = _validate_gwp(params)
    by_gas = {gas: _index_by_source(inputs, gas) for gas in GASES}

    source_keys = list(by_gas["CO2"])
    for gas in GASES[1:]:
        if set(by_gas[gas]) != set(source_keys):
            mismatched = sorted(set(by_gas[gas]) ^ set(source_keys))
            raise ValueError(f"inputs 'co2' and {gas.lower()!r} cover different sources: {mismatched}")

    rows = []
    for source_key in source_keys:
        mass_t = {gas: by_gas[gas][source_key]["emissions_kg"] / 1000.0 for gas in GASES}
        co2e_t = {gas: mass_t[gas] * gwp[gas] for gas in GASES}
        rows.append(
            {
                "facility_id": source_key[0],
                "source_id": source_key[1],
                "fuel": by_gas["CO2"][source_key]["fuel"],
                "mass_t": mass_t,
                "co2e_t": co2e_t,
                "total_co2e_t": math.fsum(co2e_t.values()),
            }
        )

    return {"gwp": {"values": gwp, "source": gwp_source}, "rows": rows}


# --- ghg.scope1_totals -------------------------------------------------------


def _sum_rows(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "total_co2e_t": math.fsum(row["total_co2e_t"] for row in rows),
        "co2e_t": {gas: math.fsum(row["co2e_t"][gas] for row in rows) for gas in GASES},
        "mass_t": {gas: math.fsum(row["mass_t"][gas] for row in rows) for gas in GASES},
        "source_count": len(rows),
    }


@agent("ghg.scope1_totals", version="1.0.0")
def scope1_totals(inputs: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """Sum the CO2e rows into a scope 1 total per facility and for the whole inventory."""
    rows = inputs["rows"]
    facilities = inputs["facilities"]
    reporting_year = inputs["reporting_year"]
    if isinstance(reporting_year, bool) or not isinstance(reporting_year, int):
        raise ValueError(f"input 'reporting_year' {reporting_year!r} is invalid; give the year as an integer")

    known_ids = {facility["facility_id"] for facility in facilities}
    orphans = sorted({row["facility_id"] for row in rows} - known_ids)
    if orphans:
        raise ValueError(f"CO2e rows name facilities {orphans} that load_activity did not return")

    facility_totals = []
    for facility in sorted(facilities, key=lambda facility: facility["facility_id"]):
        facility_rows = [row for row in rows if row["facility_id"] == facility["facility_id"]]
        if not facility_rows:
            raise ValueError(f"facility {facility['facility_id']!r} has no CO2e rows")
        facility_totals.append(
            {"facility_id": facility["facility_id"], "name": facility["name"], **_sum_rows(facility_rows)}
        )

    return {
        "reporting_year": reporting_year,
        "scope": 1,
        "category": "stationary combustion",
        "gwp": inputs["gwp"],
        "factor_source": inputs["factor_source"],
        "facilities": facility_totals,
        "total": _sum_rows(rows),
    }
