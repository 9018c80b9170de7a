"""Static checks of docker-compose.yml, the Dockerfile and the Prometheus file they use.

Docker does not run in the test environment, so these tests check what can
be checked without it: the structure, the health checks, and that every file
mounted from the repository exists and matches what the container expects.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from tests.conftest import service_unavailable

REPO = Path(__file__).resolve().parents[1]
ONE_SHOT = "migrate"


def _compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((REPO / "docker-compose.yml").read_text(encoding="utf-8"))
    return document


def _services() -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = _compose()["services"]
    return services


def _bind_mounts(service: dict[str, Any]) -> list[tuple[Path, str]]:
    """Return (host path, container path) of each volume entry that mounts a path of the repository."""
    mounts = []
    for entry in service.get("volumes", []):
        source, target = entry.split(":")[:2]
        if source.startswith("./"):
            mounts.append((REPO / source, target))
    return mounts


def test_compose_services_complete() -> None:
    expected = {"postgres", "redis", "migrate", "api", "worker", "beat", "flower", "prometheus", "grafana"}
    assert set(_services()) == expected


@pytest.mark.parametrize("name", sorted(set(_services()) - {ONE_SHOT}))
def test_compose_service_has_healthcheck(name: str) -> None:
    healthcheck = _services()[name].get("healthcheck")
    assert healthcheck, f"service {name} has no healthcheck"
    assert healthcheck["test"][0] in {"CMD", "CMD-SHELL"}
    assert healthcheck.get("retries", 0) > 0


def test_compose_migration_gates_orchestrator() -> None:
    services = _services()
    migrate = services[ONE_SHOT]
    assert migrate["command"] == ["orchestrator", "db", "upgrade"]
    assert migrate["restart"] == "no"
    assert migrate["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    for name in ("api", "worker", "beat", "flower"):
        assert services[name]["depends_on"][ONE_SHOT] == {"condition": "service_completed_successfully"}, name


def test_compose_worker_scales() -> None:
    worker = _services()["worker"]
    # --scale needs containers without fixed names or published ports.
    assert "container_name" not in worker
    assert "ports" not in worker
    assert "--hostname=worker@%h" in worker["command"][-1]


def test_compose_ports_on_loopback() -> None:
    for name, service in _services().items():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"service {name} publishes {port} beyond loopback"


def test_compose_mounted_files_exist() -> None:
    for name, service in _services().items():
        for host_path, _target in _bind_mounts(service):
            assert host_path.exists(), f"service {name} mounts {host_path}, which does not exist"


def test_compose_prometheus_mounts() -> None:
    mounts = {target: host for host, target in _bind_mounts(_services()["prometheus"])}
    assert mounts["/etc/prometheus/alerts.yml"] == REPO / "deploy/prometheus/alerts.yml"
    config = yaml.safe_load(mounts["/etc/prometheus/prometheus.yml"].read_text(encoding="utf-8"))
    assert config["rule_files"] == ["/etc/prometheus/alerts.yml"]

    # The job names are the ones alerts.yml selects in OrchestratorServiceDown.
    example = yaml.safe_load((REPO / "deploy/prometheus/prometheus.yml").read_text(encoding="utf-8"))
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {job["job_name"] for job in example["scrape_configs"]}
    assert jobs["gl-orchestrator-api"]["static_configs"][0]["targets"] == ["api:8080"]
    assert jobs["gl-orchestrator-workers"]["dns_sd_configs"][0]["names"] == ["worker"]
    token_file = "/prometheus/api-token"
    for job in jobs.values():
        assert job["metrics_path"] == "/api/v1/orchestrator/metrics"
        assert job["authorization"]["credentials_file"] == token_file
    assert f"> {token_file}" in _services()["prometheus"]["entrypoint"][-1]


def test_compose_grafana_mounts() -> None:
    mounts = {target: host for host, target in _bind_mounts(_services()["grafana"])}
    provisioning = mounts["/etc/grafana/provisioning"]
    assert provisioning == REPO / "deploy/grafana/provisioning"

    dashboards = yaml.safe_load((provisioning / "dashboards/gl-orchestrator.yml").read_text(encoding="utf-8"))
    dashboard_path = dashboards["providers"][0]["options"]["path"]
    assert mounts[dashboard_path] == REPO / "deploy/grafana/dashboards"
    assert list(mounts[dashboard_path].glob("*.json"))

    datasources = yaml.safe_load((provisioning / "datasources/prometheus.yml").read_text(encoding="utf-8"))
    host = urlsplit(datasources["datasources"][0]["url"]).hostname
    assert host in _services()


def test_dockerfile_copies_existing_paths() -> None:
    dockerfile = (REPO / "Dockerfile").read_text(encoding="utf-8")
    sources = [match.group(1).split()[:-1] for match in re.finditer(r"^COPY (.+)$", dockerfile, re.MULTILINE)]
    paths = [path for group in sources for path in group]
    assert paths
    for path in paths:
        assert (REPO / path).exists(), f"Dockerfile copies {path}, which does not exist"
    assert "'.[server,stack]'" in dockerfile


def test_compose_prometheus_config_valid(tmp_path: Path) -> None:
    """Run promtool check config on the Docker configuration, with its container paths moved into tmp_path."""
    promtool = shutil.which("promtool")
    if promtool is None:
        service_unavailable("promtool", "not on PATH; apt-get install prometheus")
    text = (REPO / "deploy/docker/prometheus.yml").read_text(encoding="utf-8")
    (tmp_path / "api-token").write_text("token", encoding="utf-8")
    text = text.replace("/etc/prometheus/alerts.yml", str(REPO / "deploy/prometheus/alerts.yml"))
    text = text.replace("/prometheus/api-token", str(tmp_path / "api-token"))
    config = tmp_path / "prometheus.yml"
    config.write_text(text, encoding="utf-8")
    checked = subprocess.run([str(promtool), "check", "config", str(config)], capture_output=True, text=True,
                             timeout=60, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
