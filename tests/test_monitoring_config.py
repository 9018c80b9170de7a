"""Tests of the monitoring files in deploy/: Prometheus rules and config, and the Grafana dashboard.

The promtool tests run Debian's promtool (package ``prometheus``). Without it
they skip, or fail when GL_ORCHESTRATOR_REQUIRE_SERVICES=1. The other tests
check that every metric the rules and panels query is one the product
exposes, and the gauge of executions past their deadline through the API.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY
from sqlalchemy import select

import orchestrator.metrics as metrics
from orchestrator.models import ExecutionNodeRow, ExecutionRow
from tests.conftest import service_unavailable
from tests.test_api import Api, make_api, run_queued_nodes  # noqa: F401  (make_api is a fixture)

REPO = Path(__file__).resolve().parents[1]
PROMETHEUS_DIR = REPO / "deploy" / "prometheus"
ALERTS_FILE = PROMETHEUS_DIR / "alerts.yml"
ALERTS_TEST_FILE = PROMETHEUS_DIR / "alerts_test.yml"
PROMETHEUS_CONFIG_FILE = PROMETHEUS_DIR / "prometheus.yml"
DASHBOARD_FILE = REPO / "deploy" / "grafana" / "dashboards" / "gl-orchestrator.json"
GRAFANA_PROVISIONING_DIR = REPO / "deploy" / "grafana" / "provisioning"

EXECUTIONS = ExecutionRow.__table__
NODES = ExecutionNodeRow.__table__

METRIC_NAME = re.compile(r"gl_orchestrator_[a-z_]+")
PROMTOOL_TIMEOUT_SECONDS = 60

# The two alerts of the checkpoint corruption runbook, with its expressions.
RUNBOOK_EXPRESSIONS = {
    "OrchestratorCheckpointFailure": 'increase(gl_orchestrator_checkpoint_operations_total{status="error"}[5m]) > 0',
    "OrchestratorProvenanceChainBroken": "gl_orchestrator_provenance_chain_valid == 0",
}
# Anchors in docs/operations.md that each alert's runbook_url points to.
RUNBOOK_ANCHORS = {
    "OrchestratorCheckpointFailure": "checkpoint-failure",
    "OrchestratorProvenanceChainBroken": "provenance-chain-broken",
    "OrchestratorServiceDown": "service-down",
    "OrchestratorExecutionTimeout": "execution-stuck",
    "OrchestratorHighExecutionFailureRate": "execution-failure-rate",
    "OrchestratorHighNodeLatency": "node-latency",
    "OrchestratorQueueBacklog": "queue-backlog",
}
# Values for Grafana's variables, so that panel queries parse as PromQL.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__range": "6h", "$dag_id": ".*"}


def load_rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(ALERTS_FILE.read_text())
    groups = document["groups"]
    assert [group["name"] for group in groups] == ["gl-orchestrator"]
    return list(groups[0]["rules"])


def load_dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD_FILE.read_text()))


def panel_expressions(dashboard: dict[str, Any]) -> dict[str, list[str]]:
    """Return each panel's title with the PromQL of its targets, skipping rows."""
    expressions: dict[str, list[str]] = {}
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        expressions[panel["title"]] = [target["expr"] for target in panel["targets"]]
    return expressions


def exposed_metric_names() -> set[str]:
    """Collect the series names that the default registry exports, with their type's suffixes, plus ``up``."""
    names = {"up"}
    for family in REGISTRY.collect():
        if family.type == "counter":
            names.add(family.name + "_total")
        elif family.type == "histogram":
            names.update(family.name + suffix for suffix in ("_bucket", "_sum", "_count"))
        else:
            names.add(family.name)
        names.update(sample.name for sample in family.samples)
    return names


def product_metric_families() -> set[str]:
    return {family.name for family in REGISTRY.collect() if family.name.startswith("gl_orchestrator_")}


@pytest.fixture
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        service_unavailable("promtool", "not found on PATH; install Debian's package prometheus")
    assert path is not None
    return path


def run_promtool(promtool: str, *arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool, *arguments], capture_output=True, text=True, timeout=PROMTOOL_TIMEOUT_SECONDS, check=False
    )


# -- promtool ------------------------------------------------------------------


def test_promtool_check_rules(promtool: str) -> None:
    result = run_promtool(promtool, "check", "rules", str(ALERTS_FILE))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(load_rules())} rules found" in result.stdout


def test_promtool_check_config(promtool: str, tmp_path: Path) -> None:
    # promtool checks that credentials files exist, so the copy points at a
    # token file of its own and at the rules file by its absolute path.
    token_file = tmp_path / "token"
    token_file.write_text("test-token\n")
    config = yaml.safe_load(PROMETHEUS_CONFIG_FILE.read_text())
    config["rule_files"] = [str(PROMETHEUS_DIR / name) for name in config["rule_files"]]
    for scrape_config in config["scrape_configs"]:
        assert scrape_config["authorization"]["type"] == "Bearer"
        scrape_config["authorization"]["credentials_file"] = str(token_file)
    copy = tmp_path / "prometheus.yml"
    copy.write_text(yaml.safe_dump(config))

    result = run_promtool(promtool, "check", "config", str(copy))

    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 1 rule files found" in result.stdout


def test_promtool_test_rules(promtool: str) -> None:
    result = run_promtool(promtool, "test", "rules", str(ALERTS_TEST_FILE))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_dashboard_queries_parse(promtool: str, tmp_path: Path) -> None:
    # promtool has no command that parses one expression, so the panel queries
    # go into a rules file as recording rules, which check rules parses.
    rules = []
    for title, expressions in panel_expressions(load_dashboard()).items():
        for index, expression in enumerate(expressions):
            for variable, value in GRAFANA_VARIABLES.items():
                expression = expression.replace(variable, value)
            assert "$" not in expression, f"panel {title!r} uses a variable this test does not replace: {expression}"
            rules.append({"record": f"dashboard:panel_{len(rules)}:query_{index}", "expr": expression})
    rules_file = tmp_path / "dashboard_queries.yml"
    rules_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))

    result = run_promtool(promtool, "check", "rules", str(rules_file))

    assert result.returncode == 0, result.stdout + result.stderr


# -- metric names ----------------------------------------------------------------


def test_alert_metrics_exist() -> None:
    exposed = exposed_metric_names()
    for rule in load_rules():
        used = set(METRIC_NAME.findall(rule["expr"]))
        assert used or "up{" in rule["expr"], f"{rule['alert']} queries no metric of the product"
        assert used <= exposed, f"{rule['alert']} queries unknown metrics {sorted(used - exposed)}"


def test_dashboard_metrics_exist() -> None:
    exposed = exposed_metric_names()
    dashboard = load_dashboard()
    for title, expressions in panel_expressions(dashboard).items():
        assert expressions, f"panel {title!r} has no query"
        for expression in expressions:
            used = set(METRIC_NAME.findall(expression))
            assert used or "up{" in expression, f"panel {title!r} queries no metric of the product: {expression}"
            assert used <= exposed, f"panel {title!r} queries unknown metrics {sorted(used - exposed)}"
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            used = set(METRIC_NAME.findall(variable["definition"]))
            assert used <= exposed, f"variable {variable['name']!r} queries unknown metrics {sorted(used - exposed)}"


def test_dashboard_shows_every_product_metric() -> None:
    queried = " ".join(
        expression for expressions in panel_expressions(load_dashboard()).values() for expression in expressions
    )
    for family in sorted(product_metric_families()):
        assert family in queried, f"no dashboard panel queries {family}"


def test_metric_name_pattern_covers_product() -> None:
    # The regex must match whole names, or the checks above would compare fragments.
    for family in product_metric_families():
        assert METRIC_NAME.fullmatch(family), family


def test_node_latency_threshold_below_buckets() -> None:
    rule = next(rule for rule in load_rules() if rule["alert"] == "OrchestratorHighNodeLatency")
    match = re.search(r"\)\s*>\s*([0-9.]+)\s*$", rule["expr"])
    assert match, rule["expr"]
    threshold = float(match.group(1))
    finite_buckets = [bound for bound in metrics.NODE_EXECUTION_DURATION._upper_bounds if bound != float("inf")]
    assert max(finite_buckets) > threshold


def test_checkpoint_error_series_start_at_zero() -> None:
    # increase() counts the first error only when the series was exported before it.
    for operation in ("save", "load", "verify", "delete"):
        for status in ("success", "error"):
            labels = {"operation": operation, "status": status}
            value = REGISTRY.get_sample_value("gl_orchestrator_checkpoint_operations_total", labels)
            assert value is not None, labels


# -- alert rules -------------------------------------------------------------------


def test_alerts_complete() -> None:
    rules = load_rules()
    assert sorted(rule["alert"] for rule in rules) == sorted(RUNBOOK_ANCHORS)
    for rule in rules:
        name = rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning"}, name
        assert rule["annotations"]["summary"].strip(), name
        assert rule["annotations"]["description"].strip(), name
        assert rule["annotations"]["runbook_url"] == f"docs/operations.md#{RUNBOOK_ANCHORS[name]}", name


def test_runbook_alerts_exact() -> None:
    rules = {rule["alert"]: rule for rule in load_rules()}
    for name, expression in RUNBOOK_EXPRESSIONS.items():
        assert rules[name]["expr"] == expression
        assert rules[name]["labels"]["severity"] == "critical"


def test_alert_tests_cover_every_rule() -> None:
    document = yaml.safe_load(ALERTS_TEST_FILE.read_text())
    firing: set[str] = set()
    silent: set[str] = set()
    for test in document["tests"]:
        for case in test["alert_rule_test"]:
            (firing if case["exp_alerts"] else silent).add(case["alertname"])
    names = {rule["alert"] for rule in load_rules()}
    assert firing == names
    assert silent == names


def test_prometheus_config_jobs() -> None:
    config = yaml.safe_load(PROMETHEUS_CONFIG_FILE.read_text())
    assert config["rule_files"] == ["alerts.yml"]
    jobs = {scrape_config["job_name"]: scrape_config for scrape_config in config["scrape_configs"]}
    assert set(jobs) == {"gl-orchestrator-api", "gl-orchestrator-workers"}
    for job in jobs.values():
        assert job["metrics_path"] == "/api/v1/orchestrator/metrics"
        assert job["authorization"]["credentials_file"]


def test_grafana_provisioning_files() -> None:
    datasources = yaml.safe_load((GRAFANA_PROVISIONING_DIR / "datasources" / "prometheus.yml").read_text())
    assert [source["type"] for source in datasources["datasources"]] == ["prometheus"]
    providers = yaml.safe_load((GRAFANA_PROVISIONING_DIR / "dashboards" / "gl-orchestrator.yml").read_text())
    assert [provider["type"] for provider in providers["providers"]] == ["file"]
    dashboard = load_dashboard()
    assert dashboard["uid"] == "orchestrator-health"
    panel_ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(panel_ids) == len(set(panel_ids))


# -- executions past deadline ----------------------------------------------------------


def set_deadline(api: Api, execution_id: str, deadline: datetime | None) -> None:
    api.db.transaction(lambda conn: conn.execute(
        EXECUTIONS.update().where(EXECUTIONS.c.execution_id == execution_id).values(deadline_at=deadline)))


def set_status(api: Api, execution_id: str, status: str) -> None:
    api.db.transaction(lambda conn: conn.execute(
        EXECUTIONS.update().where(EXECUTIONS.c.execution_id == execution_id).values(status=status)))


def execution_status(api: Api, execution_id: str) -> str:
    with api.db.connect() as conn:
        return str(conn.execute(
            select(EXECUTIONS.c.status).where(EXECUTIONS.c.execution_id == execution_id)).scalar_one())


def claim_first_node(api: Api, execution_id: str) -> None:
    with api.db.connect() as conn:
        node_id, task_id = conn.execute(
            select(NODES.c.node_id, NODES.c.task_id)
            .where(NODES.c.execution_id == execution_id, NODES.c.status == "queued")
            .order_by(NODES.c.ordinal)
        ).first()
    api.scheduler.claim(execution_id, node_id, task_id, worker="test")


def past_deadline_gauge(api: Api) -> str:
    response = api.get("/metrics")
    assert response.status_code == 200
    lines = [line for line in response.get_data(as_text=True).splitlines()
             if line.startswith("gl_orchestrator_executions_past_deadline ")]
    assert len(lines) == 1
    return lines[0]


def check_past_deadline_gauge(api: Api) -> None:
    """Check that the gauge counts pending and running executions past their deadline, and no others."""
    api.register()
    now = datetime.now(timezone.utc)
    past = now - timedelta(minutes=5)
    future = now + timedelta(hours=1)

    def execute() -> str:
        response = api.execute()
        assert response.status_code == 202, response.get_json()
        return str(response.get_json()["execution_id"])

    pending_overdue = execute()
    running_overdue = execute()
    pending_in_time = execute()
    pending_without_deadline = execute()
    completed_overdue = execute()
    claim_first_node(api, running_overdue)
    run_queued_nodes(api, completed_overdue)
    assert execution_status(api, pending_overdue) == "pending"
    assert execution_status(api, running_overdue) == "running"
    assert execution_status(api, completed_overdue) == "completed"

    for execution_id in (pending_overdue, running_overdue, completed_overdue):
        set_deadline(api, execution_id, past)
    set_deadline(api, pending_in_time, future)
    set_deadline(api, pending_without_deadline, None)

    assert past_deadline_gauge(api) == "gl_orchestrator_executions_past_deadline 2.0"

    # What the stuck-execution check does to them: both leave the count.
    set_status(api, pending_overdue, "failed")
    set_status(api, running_overdue, "failed")
    assert past_deadline_gauge(api) == "gl_orchestrator_executions_past_deadline 0.0"


def test_metrics_past_deadline_sqlite(make_api: Callable[..., Api]) -> None:  # noqa: F811  (make_api is a fixture)
    check_past_deadline_gauge(make_api())


def test_metrics_past_deadline_postgres(make_api: Callable[..., Api], postgres_url: str) -> None:  # noqa: F811
    check_past_deadline_gauge(make_api(postgres_url))
