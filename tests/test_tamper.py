"""Tampering with stored records on PostgreSQL, caught by every verifier the product has.

Each case runs an execution to the end, changes stored data with SQL as
someone with write access to the database would, and then checks four
verifiers: the API's provenance report, ``orchestrator verify --execution``,
the integrity sweep (with the chain validity gauge on ``/metrics``), and the
offline verifier on the audit bundle. Each must name the same node and
reason. No worker runs: ``run_queued_nodes`` plays its part in this process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from orchestrator.integrity import sweep_integrity
from orchestrator.provenance import verify_execution
from tests.test_api import Api, make_api, run_queued_nodes  # noqa: F401  (make_api is a fixture)
from verifier import gl_audit_verify

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Tamper:
    """One change to stored data, and where each verifier must report it."""

    name: str
    sql: str
    node_id: str | None
    reason: str

    def apply(self, api: Api, execution_id: str) -> None:
        api.db.transaction(lambda conn: conn.execute(text(self.sql), {"e": execution_id}))


CASES = [
    Tamper(
        "output changed",
        "UPDATE dag_checkpoints SET outputs = '{\"value\": 6}' WHERE execution_id = :e AND node_id = 'left'",
        "left", "output altered",
    ),
    Tamper(
        "input document changed",
        "UPDATE execution_provenance SET input_document = jsonb_set(input_document, '{inputs,a}', '99') "
        "WHERE execution_id = :e AND node_id = 'total'",
        "total", "input altered",
    ),
    Tamper(
        "chain hash changed",
        "UPDATE execution_provenance SET chain_hash = repeat('0', 64) WHERE execution_id = :e AND node_id = 'left'",
        "left", "chain_hash altered",
    ),
    Tamper(
        "record deleted",
        "DELETE FROM execution_provenance WHERE execution_id = :e AND node_id = 'right'",
        "right", "record missing",
    ),
    Tamper(
        "record added",
        "INSERT INTO execution_provenance (execution_id, node_id, ordinal, status, agent_id, agent_version, "
        "input_document, input_hash, output_hash, parent_hashes, chain_hash, created_at) "
        "SELECT execution_id, 'ghost', 3, status, agent_id, agent_version, input_document, input_hash, "
        "output_hash, parent_hashes, chain_hash, created_at FROM execution_provenance "
        "WHERE execution_id = :e AND node_id = 'right'",
        None, "extra record: node 'ghost' is not in the DAG",
    ),
    Tamper(
        "ordinals swapped",
        "UPDATE execution_provenance SET ordinal = CASE node_id WHEN 'left' THEN 1 ELSE 0 END "
        "WHERE execution_id = :e AND node_id IN ('left', 'right')",
        "left", "order changed",
    ),
    Tamper(
        "DAG document changed",
        "UPDATE dag_executions SET dag_document = jsonb_set(dag_document, '{nodes,right,params,value}', '11') "
        "WHERE execution_id = :e",
        None, "DAG document does not match dag_hash",
    ),
    Tamper(
        "DAG dependencies reordered",
        "UPDATE dag_executions SET dag_document = jsonb_set(dag_document, '{nodes,total,depends_on}', "
        "'[\"right\", \"left\"]') WHERE execution_id = :e",
        None, "DAG document does not match dag_hash",
    ),
]


@pytest.fixture
def finished(make_api: Callable[..., Api], postgres_url: str) -> tuple[Api, str]:
    api = make_api(postgres_url)
    api.register()
    response = api.execute(input_data={"x": 5})
    assert response.status_code == 202, response.get_json()
    execution_id = response.get_json()["execution_id"]
    run_queued_nodes(api, execution_id)
    assert api.get(f"/executions/{execution_id}").get_json()["status"] == "completed"
    return api, execution_id


def _verify_cli(api: Api, execution_id: str, **variables: str) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("GL_ORCHESTRATOR_")}
    env.update({"GL_ORCHESTRATOR_DATABASE_URL": api.settings.database_url,
                "GL_ORCHESTRATOR_BROKER_URL": "memory://", "GL_ORCHESTRATOR_HOME": str(api.settings.home),
                **variables})
    return subprocess.run(
        [sys.executable, "-m", "orchestrator_cli.main", "verify", "--execution", execution_id, "--json"],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
    )


def _gauge(api: Api) -> float:
    body = api.get("/metrics").get_data(as_text=True)
    [line] = [line for line in body.splitlines() if line.startswith("gl_orchestrator_provenance_chain_valid ")]
    return float(line.split()[1])


def _reasons_of(report: dict[str, Any], node_id: str) -> list[str]:
    [node] = [node for node in report["nodes"] if node["node_id"] == node_id]
    assert node["valid"] is False, node
    return list(node["reasons"])


def _assert_caught(report: dict[str, Any], case: Tamper, channel: str) -> None:
    assert report["chain_valid"] is False, f"{channel} missed: {case.name}"
    if case.node_id is None:
        assert any(problem.startswith(case.reason) for problem in report["problems"]), (channel, report["problems"])
    else:
        reasons = _reasons_of(report, case.node_id)
        assert any(reason.startswith(case.reason) for reason in reasons), (channel, reasons)


def _valid_everywhere(api: Api, execution_id: str) -> None:
    assert api.get(f"/executions/{execution_id}/provenance").get_json()["chain_valid"] is True
    cli = _verify_cli(api, execution_id)
    assert cli.returncode == 0, cli.stdout + cli.stderr
    assert json.loads(cli.stdout)["chain_valid"] is True
    bundle = api.get(f"/executions/{execution_id}/audit-export").get_json()
    assert gl_audit_verify.verify_bundle(bundle)["chain_valid"] is True
    assert sweep_integrity(api.db, 24, verify=partial(verify_execution, signing_keys=api_keys(api))).broken == []
    assert _gauge(api) == 1.0


def test_untouched_execution_is_valid_everywhere(finished: tuple[Api, str]) -> None:
    api, execution_id = finished
    _valid_everywhere(api, execution_id)


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_tamper_is_caught_everywhere(finished: tuple[Api, str], case: Tamper) -> None:
    api, execution_id = finished
    case.apply(api, execution_id)

    _assert_caught(api.get(f"/executions/{execution_id}/provenance").get_json(), case, "API")

    cli = _verify_cli(api, execution_id)
    assert cli.returncode == 1, cli.stdout + cli.stderr
    _assert_caught(json.loads(cli.stdout), case, "CLI")

    bundle = api.get(f"/executions/{execution_id}/audit-export").get_json()
    _assert_caught(gl_audit_verify.verify_bundle(bundle), case, "offline verifier")

    result = sweep_integrity(api.db, 24, verify=partial(verify_execution, signing_keys=api_keys(api)))
    assert result.broken == [execution_id]
    assert api.get(f"/executions/{execution_id}").get_json()["chain_valid"] is False
    assert _gauge(api) == 0.0


def test_replaced_registered_dag_leaves_finished_execution_valid(finished: tuple[Api, str]) -> None:
    api, execution_id = finished
    document = api.get("/dags/adder").get_json()["definition"]
    document["nodes"]["right"]["params"]["value"] = 11
    response = api.put("/dags/adder", json=document)
    assert response.status_code == 200, response.get_json()

    _valid_everywhere(api, execution_id)


def test_gauge_clears_when_broken_execution_is_superseded(finished: tuple[Api, str]) -> None:
    api, broken_id = finished
    CASES[0].apply(api, broken_id)
    assert sweep_integrity(api.db, 24).broken == [broken_id]
    assert _gauge(api) == 0.0

    response = api.execute(input_data={"x": 5})
    regenerated = response.get_json()["execution_id"]
    run_queued_nodes(api, regenerated)
    response = api.post(f"/executions/{broken_id}/supersede", json={"superseded_by": regenerated})
    assert response.status_code == 200, response.get_json()

    result = sweep_integrity(api.db, 24)
    assert result.broken == []
    assert result.verified == 1
    assert _gauge(api) == 1.0
    stored = api.get(f"/executions/{broken_id}/provenance").get_json()
    assert stored["chain_valid"] is False  # the evidence stays as it was


def _rewrite_consistently(api: Api, execution_id: str) -> None:
    """Change left's output and recompute every hash after it, as someone with the database but no key can."""
    from sqlalchemy import select, update

    from orchestrator import hashing
    from orchestrator.models import dag_checkpoints, dag_executions, execution_provenance

    def work(conn: Any) -> None:
        records = {row["node_id"]: dict(row) for row in conn.execute(select(execution_provenance).where(
            execution_provenance.c.execution_id == execution_id)).mappings()}
        outputs = {"left": {"value": 50}, "total": {"value": 60}}
        records["total"]["input_document"]["inputs"]["a"] = 50
        chain: dict[str, str] = {}
        for node_id in ("left", "right", "total"):
            record = records[node_id]
            input_hash = hashing.sha256_hex(hashing.canonical_json(record["input_document"]))
            output_hash = hashing.output_hash(outputs[node_id]) if node_id in outputs else record["output_hash"]
            parents = sorted(chain[parent] for parent in ("left", "right")) if node_id == "total" else []
            chain[node_id] = hashing.chain_hash(node_id, record["status"], input_hash, output_hash, parents)
            conn.execute(update(execution_provenance).where(
                execution_provenance.c.execution_id == execution_id, execution_provenance.c.node_id == node_id,
            ).values(input_document=record["input_document"], input_hash=input_hash, output_hash=output_hash,
                     parent_hashes=parents, chain_hash=chain[node_id]))
            if node_id in outputs:
                conn.execute(update(dag_checkpoints).where(
                    dag_checkpoints.c.execution_id == execution_id, dag_checkpoints.c.node_id == node_id,
                ).values(outputs=outputs[node_id], output_hash=output_hash))
        dag_hash = conn.execute(select(dag_executions.c.dag_hash).where(
            dag_executions.c.execution_id == execution_id)).scalar_one()
        head = hashing.provenance_chain_hash(dag_hash, [chain["left"], chain["right"], chain["total"]])
        conn.execute(update(dag_executions).where(dag_executions.c.execution_id == execution_id)
                     .values(provenance_chain_hash=head))

    api.db.transaction(work)


def test_consistent_rewrite_is_caught_by_signature_everywhere(make_api: Callable[..., Api], postgres_url: str,
                                                              tmp_path: Path) -> None:
    from orchestrator.signing import encode_public_key, write_private_key

    key_file = tmp_path / "signing.pem"
    public_key = encode_public_key(write_private_key(key_file))
    api = make_api(postgres_url, signing_key_file=key_file)
    api.register()
    execution_id = api.execute(input_data={"x": 5}).get_json()["execution_id"]
    run_queued_nodes(api, execution_id)
    assert api.get(f"/executions/{execution_id}/provenance").get_json()["signature"]["status"] == "valid"
    _rewrite_consistently(api, execution_id)

    report = api.get(f"/executions/{execution_id}/provenance").get_json()
    assert [node["node_id"] for node in report["nodes"] if not node["valid"]] == []
    assert report["signature"]["status"] == "invalid"
    assert report["chain_valid"] is False

    cli = _verify_cli(api, execution_id, GL_ORCHESTRATOR_SIGNING_KEY_FILE=str(key_file))
    assert cli.returncode == 1, cli.stdout + cli.stderr
    assert json.loads(cli.stdout)["signature"]["status"] == "invalid"

    bundle = api.get(f"/executions/{execution_id}/audit-export").get_json()
    offline = gl_audit_verify.verify_bundle(bundle, [gl_audit_verify.load_public_key(public_key)])
    assert offline["valid"] is False
    assert offline["signature"]["status"] == "invalid"
    assert "signature does not verify" in offline["signature"]["detail"]
    assert all(node["valid"] for node in offline["nodes"])

    assert sweep_integrity(api.db, 24, verify=partial(verify_execution, signing_keys=api_keys(api))).broken == [
        execution_id]
    assert _gauge(api) == 0.0


def api_keys(api: Api) -> Any:
    from workers.app import runtime_of

    return runtime_of(api.celery_app).signing_keys


def test_record_from_another_execution_is_caught_everywhere(finished: tuple[Api, str]) -> None:
    api, execution_id = finished
    other = api.execute(input_data={"x": 7}).get_json()["execution_id"]
    run_queued_nodes(api, other)
    api.db.transaction(lambda conn: conn.execute(text(
        "DELETE FROM execution_provenance WHERE execution_id = :e AND node_id = 'left'"), {"e": execution_id}))
    api.db.transaction(lambda conn: conn.execute(text(
        "UPDATE execution_provenance SET execution_id = :e WHERE execution_id = :o AND node_id = 'left'"),
        {"e": execution_id, "o": other}))
    case = Tamper("record from another execution", "", "left", "output hash differs")

    _assert_caught(api.get(f"/executions/{execution_id}/provenance").get_json(), case, "API")
    cli = _verify_cli(api, execution_id)
    assert cli.returncode == 1, cli.stdout + cli.stderr
    _assert_caught(json.loads(cli.stdout), case, "CLI")
    bundle = api.get(f"/executions/{execution_id}/audit-export").get_json()
    offline = gl_audit_verify.verify_bundle(bundle)
    _assert_caught(offline, case, "offline verifier")
    assert any(reason.startswith("parent hashes differ") for reason in _reasons_of(offline, "total"))
    broken = sweep_integrity(api.db, 24, verify=partial(verify_execution, signing_keys=api_keys(api))).broken
    assert execution_id in broken
