"""Agents of the non-deterministic meter report example.

Importing this module registers five agents in the default registry::

    meter.load_readings   meter readings from the input, checked and sorted by meter id
    meter.total_kwh       the sum of the readings in kWh
    meter.stamped_report  the total with the current time and a random report id
    meter.publish         a publication record of the whole report
    meter.check_limit     whether the total stays within the input's limit

``meter.stamped_report`` is non-deterministic on purpose: it reads the clock and
draws a random id, so two runs on the same input return different outputs.
Every other agent is a pure function of its inputs and params.
"""

from __future__ import annotations

import math
import uuid
from datetime import datetime, timezone
from typing import Any

from orchestrator.agents import agent


@agent("meter.load_readings", version="1.0.0")
def load_readings(inputs: dict[str, Any], params: dict[str, Any]) -> Any:
    """Check each reading's meter id and kWh value, and return the readings sorted by meter id."""
    readings = []
    for index, reading in enumerate(inputs["readings"]):
        meter, kwh = reading.get("meter"), reading.get("kwh")
        if not isinstance(meter, str) or not meter:
            raise ValueError(f"reading {index} has no meter id; give each reading a non-empty 'meter'")
        if isinstance(kwh, bool) or not isinstance(kwh, (int, float)) or not math.isfinite(kwh) or kwh < 0:
            raise ValueError(f"reading {index} of meter {meter!r} has kwh={kwh!r}; use a finite number >= 0")
        readings.append({"meter": meter, "kwh": kwh})
    return {"readings": sorted(readings, key=lambda reading: reading["meter"])}


@agent("meter.total_kwh", version="1.0.0")
def total_kwh(inputs: dict[str, Any], params: dict[str, Any]) -> Any:
    """Return the correctly rounded sum of the readings in kWh."""
    return {"total_kwh": math.fsum(reading["kwh"] for reading in inputs["readings"])}


@agent("meter.stamped_report", version="1.0.0")
def stamped_report(inputs: dict[str, Any], params: dict[str, Any]) -> Any:
    """Return the total with the time of the call and a random report id: a non-deterministic output."""
    return {
        "total_kwh": inputs["total_kwh"],
        "generated_at": datetime.now(timezone.utc).isoformat(),
        "report_id": uuid.uuid4().hex,
    }


@agent("meter.publish", version="1.0.0")
def publish(inputs: dict[str, Any], params: dict[str, Any]) -> Any:
    """Return the publication record of the report: its id, time and total."""
    report = inputs["report"]
    return {
        "published_report": report["report_id"],
        "generated_at": report["generated_at"],
        "total_kwh": report["total_kwh"],
    }


@agent("meter.check_limit", version="1.0.0")
def check_limit(inputs: dict[str, Any], params: dict[str, Any]) -> Any:
    """Return whether the total is within the limit, and the remaining kWh."""
    return {
        "within_limit": inputs["total_kwh"] <= inputs["limit_kwh"],
        "remaining_kwh": inputs["limit_kwh"] - inputs["total_kwh"],
    }
