"""The integrity sweep, the superseded mark, and their API routes and commands."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from orchestrator.errors import ExecutionConflictError, ExecutionNotFoundError
from orchestrator.integrity import count_broken_chains, supersede, sweep_integrity
from orchestrator.provenance import ChainReport
from tests.test_api import Api, assert_error, dag_document, make_api, run_queued_nodes  # noqa: F401  (make_api is a fixture)
from workers.app import INTEGRITY_SCHEDULE_ENTRY, INTEGRITY_TASK, create_celery_app

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(params=["sqlite", "postgres"])
def api(request: pytest.FixtureRequest, make_api: Callable[..., Api]) -> Api:
    if request.param == "sqlite":
        return make_api()
    return make_api(request.getfixturevalue("postgres_url"))


def _finished(api: Api, x: int = 5) -> str:
    if api.get("/dags/adder").status_code == 404:
        api.register()
    execution_id = api.execute(input_data={"x": x}).get_json()["execution_id"]
    run_queued_nodes(api, execution_id)
    return str(execution_id)


def _alter_output(api: Api, execution_id: str) -> None:
    api.db.transaction(lambda conn: conn.execute(text(
        "UPDATE dag_checkpoints SET outputs = :v WHERE execution_id = :e AND node_id = 'left'"),
        {"v": json.dumps({"value": 999}), "e": execution_id}))


def _end_at(api: Api, execution_id: str, moment: datetime) -> None:
    api.db.transaction(lambda conn: conn.execute(text(
        "UPDATE dag_executions SET completed_at = :t WHERE execution_id = :e"), {"t": moment, "e": execution_id}))


def test_sweep_finds_altered_output_and_stores_it(api: Api, caplog: pytest.LogCaptureFixture) -> None:
    intact, broken = _finished(api), _finished(api, x=6)
    _alter_output(api, broken)

    with caplog.at_level(logging.ERROR, logger="orchestrator.integrity"):
        result = sweep_integrity(api.db, 24)

    assert result.verified == 2
    assert result.broken == [broken]
    assert result.changed == [broken]
    [line] = [record.getMessage() for record in caplog.records if record.levelno == logging.ERROR]
    assert line.startswith(f"provenance chain broken execution_id={broken} broken_nodes=1")
    assert "left: output altered" in line
    assert api.get(f"/executions/{broken}").get_json()["chain_valid"] is False
    assert api.get(f"/executions/{intact}").get_json()["chain_valid"] is True
    assert count_broken_chains(api.db, datetime.now(timezone.utc) - timedelta(hours=24)) == 1


def test_sweep_skips_executions_outside_window(api: Api) -> None:
    old = _finished(api)
    _alter_output(api, old)
    _end_at(api, old, datetime.now(timezone.utc) - timedelta(hours=200))

    result = sweep_integrity(api.db, 168)

    assert (result.verified, result.broken) == (0, [])
    assert count_broken_chains(api.db, datetime.now(timezone.utc) - timedelta(hours=168)) == 0


def test_sweep_marks_repaired_execution_valid_again(api: Api) -> None:
    execution_id = _finished(api)
    api.db.transaction(lambda conn: conn.execute(text(
        "UPDATE dag_executions SET chain_valid = false WHERE execution_id = :e"), {"e": execution_id}))

    result = sweep_integrity(api.db, 24)

    assert result.broken == []
    assert result.changed == [execution_id]
    assert api.get(f"/executions/{execution_id}").get_json()["chain_valid"] is True


def test_sweep_counts_a_database_failure(api: Api, caplog: pytest.LogCaptureFixture) -> None:
    execution_id = _finished(api)

    def failing(db: object, checked_id: str) -> ChainReport:
        raise OperationalError("SELECT 1", {}, Exception("server closed the connection"))

    with caplog.at_level(logging.ERROR, logger="orchestrator.integrity"):
        result = sweep_integrity(api.db, 24, verify=failing)

    assert (result.verified, result.errors, result.broken) == (0, 1, [])
    assert f"integrity check failed to run execution_id={execution_id}" in caplog.text
    assert api.get(f"/executions/{execution_id}").get_json()["chain_valid"] is True


def test_sweep_marks_unreadable_records_broken(api: Api) -> None:
    execution_id = _finished(api)
    api.db.transaction(lambda conn: conn.execute(text(
        "UPDATE execution_provenance SET parent_hashes = :v WHERE execution_id = :e AND node_id = 'total'"),
        {"v": "5", "e": execution_id}))

    assert sweep_integrity(api.db, 24).broken == [execution_id]
    report = api.get(f"/executions/{execution_id}/provenance").get_json()
    [total] = [node for node in report["nodes"] if node["node_id"] == "total"]
    assert "parent hashes malformed: 5 is not a list of hashes" in total["reasons"]


def test_sweep_reports_stored_dag_that_no_longer_parses(api: Api) -> None:
    execution_id = _finished(api)
    api.db.transaction(lambda conn: conn.execute(text(
        "UPDATE dag_executions SET dag_document = :d WHERE execution_id = :e"),
        {"d": json.dumps({"dag_id": "adder", "nodes": {"a": {"depends_on": ["a"]}}}), "e": execution_id}))

    assert sweep_integrity(api.db, 24).broken == [execution_id]
    report = api.get(f"/executions/{execution_id}/provenance")
    assert report.status_code == 200
    assert report.get_json()["chain_valid"] is False
    assert report.get_json()["problems"][0].startswith("DAG document is invalid: ")


def test_supersede_rules(api: Api) -> None:
    broken, regenerated = _finished(api), _finished(api)

    with pytest.raises(ExecutionConflictError, match="cannot supersede itself"):
        supersede(api.db, broken, broken, "x")
    with pytest.raises(ExecutionNotFoundError):
        supersede(api.db, broken, "00000000-0000-4000-8000-000000000000", "x")

    api.register(dag_document("other", "Other"))
    other_dag = api.execute(dag_id="other", input_data={"x": 5}).get_json()["execution_id"]
    run_queued_nodes(api, other_dag)
    with pytest.raises(ExecutionConflictError, match="ran DAG 'other', not 'adder'"):
        supersede(api.db, broken, other_dag, "x")
    api.db.transaction(lambda conn: conn.execute(text(
        "UPDATE dag_executions SET chain_valid = false WHERE execution_id = :e"), {"e": regenerated}))
    with pytest.raises(ExecutionConflictError, match="only a completed execution with a valid chain"):
        supersede(api.db, broken, regenerated, "x")
    api.db.transaction(lambda conn: conn.execute(text(
        "UPDATE dag_executions SET chain_valid = true WHERE execution_id = :e"), {"e": regenerated}))

    marked = supersede(api.db, broken, regenerated, "regenerated")
    assert marked["superseded_by"] == regenerated
    assert marked["superseded_at"].endswith("Z")
    with pytest.raises(ExecutionConflictError, match=f"execution {broken} is itself superseded by {regenerated}"):
        supersede(api.db, regenerated, broken, "a cycle")
    with pytest.raises(ExecutionConflictError, match=f"already superseded by {regenerated}"):
        supersede(api.db, broken, regenerated, "again")


def test_supersede_rejects_running_execution(api: Api) -> None:
    api.register()
    running = api.execute(input_data={"x": 1}).get_json()["execution_id"]
    done = _finished(api)

    with pytest.raises(ExecutionConflictError, match="cancel it or wait for it to end"):
        supersede(api.db, running, done, "x")


def test_supersede_route_validates_body(make_api: Callable[..., Api]) -> None:
    api = make_api()
    broken, regenerated = _finished(api), _finished(api)

    assert_error(api.post(f"/executions/{broken}/supersede", json={}), 400, "invalid_request")
    error = assert_error(api.post(f"/executions/{broken}/supersede", json={"superseded_by": "../x"}), 400,
                         "invalid_request")
    assert "superseded_by must be the execution id" in error["message"]
    assert_error(api.post(f"/executions/{broken}/supersede", json={"superseded_by": regenerated, "why": 1}), 400,
                 "invalid_request")
    assert_error(api.post(f"/executions/{broken}/supersede", json={"superseded_by": regenerated, "reason": " "}),
                 400, "invalid_request")

    response = api.post(f"/executions/{broken}/supersede", json={"superseded_by": regenerated, "reason": "rerun"})
    assert response.status_code == 200
    assert response.get_json()["reason"] == "rerun"
    execution = api.get(f"/executions/{broken}").get_json()
    assert execution["superseded_by"] == regenerated
    assert execution["superseded_reason"] == "rerun"
    assert execution["superseded_at"] is not None
    assert_error(api.post(f"/executions/{broken}/supersede", json={"superseded_by": regenerated}), 409,
                 "execution_conflict")


def test_beat_schedules_the_sweep(tmp_path: Path) -> None:
    from orchestrator.settings import load_settings

    settings = load_settings({"GL_ORCHESTRATOR_HOME": str(tmp_path),
                              "GL_ORCHESTRATOR_INTEGRITY_SWEEP_INTERVAL_SECONDS": "120"})
    app = create_celery_app(settings)
    try:
        entry = app.conf.beat_schedule[INTEGRITY_SCHEDULE_ENTRY]
        assert entry["task"] == INTEGRITY_TASK
        assert entry["schedule"] == 120
        assert INTEGRITY_TASK in app.tasks
    finally:
        app.close()


def _cli(api: Api, *args: str, **variables: str) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("GL_ORCHESTRATOR_")}
    env.update({"GL_ORCHESTRATOR_DATABASE_URL": api.settings.database_url,
                "GL_ORCHESTRATOR_BROKER_URL": "memory://", "GL_ORCHESTRATOR_HOME": str(api.settings.home),
                **variables})
    return subprocess.run([sys.executable, "-m", "orchestrator_cli.main", *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=120, check=False)


def test_cli_sweep_and_supersede(make_api: Callable[..., Api]) -> None:
    api = make_api()
    broken, regenerated = _finished(api), _finished(api)
    _alter_output(api, broken)

    swept = _cli(api, "integrity", "sweep", "--json")
    assert swept.returncode == 1, swept.stderr
    assert json.loads(swept.stdout)["broken"] == [broken]

    marked = _cli(api, "integrity", "supersede", broken, "--by", regenerated)
    assert marked.returncode == 0, marked.stderr
    assert f"execution {broken} superseded by {regenerated}" in marked.stdout

    again = _cli(api, "integrity", "sweep")
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith("verified 1 executions that ended within 168 hours; 0 broken")

    refused = _cli(api, "integrity", "supersede", broken, "--by", regenerated)
    assert refused.returncode == 1
    assert "already superseded" in refused.stderr


def test_cli_export_writes_bundle_and_keeps_existing_file(make_api: Callable[..., Api], tmp_path: Path) -> None:
    api = make_api()
    execution_id = _finished(api)
    target = tmp_path / "bundle.json"

    written = _cli(api, "export", execution_id, "-o", str(target))
    assert written.returncode == 0, written.stderr
    bundle = json.loads(target.read_text(encoding="utf-8"))
    assert bundle["bundle_format"] == "gl-audit-bundle-v1"
    assert [node["node_id"] for node in bundle["nodes"]] == ["left", "right", "total"]

    refused = _cli(api, "export", execution_id, "-o", str(target))
    assert refused.returncode == 1
    assert "pass --force to overwrite it" in refused.stderr

    verified = _cli(api, "verify", str(target))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert verified.stdout.rstrip().endswith("chain valid")

    unknown = _cli(api, "export", "00000000-0000-4000-8000-000000000000")
    assert unknown.returncode == 1
    assert "not found" in unknown.stderr


def test_cli_verify_needs_exactly_one_source(make_api: Callable[..., Api], tmp_path: Path) -> None:
    api = make_api()
    neither = _cli(api, "verify")
    assert neither.returncode == 2
    assert "give either a BUNDLE file or --execution" in neither.stderr

    broken = tmp_path / "broken.json"
    broken.write_text("{not json", encoding="utf-8")
    unreadable = _cli(api, "verify", str(broken))
    assert unreadable.returncode == 2
    assert "is not a readable JSON audit bundle" in unreadable.stderr

    duplicated = tmp_path / "duplicated.json"
    duplicated.write_text('{"bundle_format": "gl-audit-bundle-v1", "bundle_format": "x"}', encoding="utf-8")
    rejected = _cli(api, "verify", str(duplicated))
    assert rejected.returncode == 2
    assert "duplicate" in rejected.stderr


def test_cli_verify_bundle_pins_host_keys(make_api: Callable[..., Api], tmp_path: Path) -> None:
    from orchestrator.signing import write_private_key

    signing = tmp_path / "signing.pem"
    write_private_key(signing)
    other = tmp_path / "other.pem"
    write_private_key(other)
    api = make_api(signing_key_file=signing)
    execution_id = _finished(api)
    bundle = tmp_path / "bundle.json"
    bundle.write_text(json.dumps(api.get(f"/executions/{execution_id}/audit-export").get_json()), encoding="utf-8")

    trusted = _cli(api, "verify", str(bundle), "--json", GL_ORCHESTRATOR_SIGNING_KEY_FILE=str(signing))
    assert trusted.returncode == 0, trusted.stdout + trusted.stderr
    assert json.loads(trusted.stdout)["signature"]["status"] == "valid"
    assert json.loads(trusted.stdout)["signature"]["pinned"] is True

    wrong_host = _cli(api, "verify", str(bundle), "--json", GL_ORCHESTRATOR_SIGNING_KEY_FILE=str(other))
    assert wrong_host.returncode == 1
    assert json.loads(wrong_host.stdout)["signature"]["status"] == "untrusted-key"

    unsigned = json.loads(bundle.read_text(encoding="utf-8"))
    unsigned["signature"] = None
    bundle.write_text(json.dumps(unsigned), encoding="utf-8")
    lenient = _cli(api, "verify", str(bundle))
    assert lenient.returncode == 0, lenient.stdout + lenient.stderr
    strict = _cli(api, "verify", str(bundle), "--json", GL_ORCHESTRATOR_REQUIRE_SIGNED_CHAINS="true")
    assert strict.returncode == 1
    assert any(problem.startswith("signature missing:") for problem in json.loads(strict.stdout)["problems"])


@pytest.mark.parametrize("value", ["nan", "inf", "1e8", "0", "-1"])
def test_window_hours_rejected(make_api: Callable[..., Api], tmp_path: Path, value: str) -> None:
    from orchestrator.errors import SettingsError
    from orchestrator.settings import load_settings

    api = make_api()
    swept = _cli(api, "integrity", "sweep", "--window-hours", value)
    assert swept.returncode == 2
    assert "--window-hours" in swept.stderr
    with pytest.raises(SettingsError, match="INTEGRITY_WINDOW_HOURS"):
        load_settings({"GL_ORCHESTRATOR_HOME": str(tmp_path), "GL_ORCHESTRATOR_INTEGRITY_WINDOW_HOURS": value})
