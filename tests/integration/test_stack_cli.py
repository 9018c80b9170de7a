"""``orchestrator stack up --detach``, ``stack status`` and ``stack down`` as a user runs them."""

from __future__ import annotations

import glob
import importlib.util
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator_cli.stack import LocalStack
from tests.conftest import service_unavailable
from tests.integration.conftest import REPO, TEST_AGENTS

pytestmark = pytest.mark.integration

DAG = """\
dag_id: stack-cli
nodes:
  a:
    agent_id: test.const
    params: {value: 2}
  b:
    agent_id: test.echo
    depends_on: [a]
    input_mapping: {x: results.a}
"""


def _orchestrator(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "orchestrator_cli.main", *args], env=env, capture_output=True,
                          text=True, timeout=240, cwd=REPO, check=False)


def _env_file_settings(path: Path) -> dict[str, str]:
    """Read stack.env as `set -a; . stack.env` would."""
    settings = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            settings[key] = shlex.split(value)[0] if value else ""
    return settings


@pytest.fixture
def directory(tmp_path: Path) -> Iterator[Path]:
    """The stack directory; whatever a failed test left running there is stopped and deleted."""
    path = tmp_path / "stack"
    yield path
    if (path / "stack.json").exists():
        leftover = LocalStack.attach(path)
        leftover.stop()
        leftover.remove_data()


def test_stack_detach_status_down(tmp_path: Path, directory: Path) -> None:
    if not glob.glob("/usr/lib/postgresql/*/bin/pg_ctl") and shutil.which("pg_ctl") is None:
        service_unavailable("PostgreSQL server", "no pg_ctl; apt-get install postgresql")
    if shutil.which("redis-server") is None:
        service_unavailable("Redis server", "no redis-server on PATH; apt-get install redis-server")
    if importlib.util.find_spec("gunicorn") is None:
        service_unavailable("gunicorn", "not installed; pip install -e '.[server]'")
    env = {key: value for key, value in os.environ.items() if not key.startswith("GL_ORCHESTRATOR_")}
    env["PYTHONPATH"] = str(REPO)
    common = ["--dir", str(directory)]

    up = _orchestrator("stack", "up", *common, "--detach", "--workers=1", "--concurrency=1", "--api-workers=1",
                       "--api-port=0", "--no-flower", "--no-prometheus", "--no-beat", f"--agents={TEST_AGENTS}",
                       env=env)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert f"env file:  {directory / 'stack.env'}" in up.stdout
        for name in ("postgres", "redis", "api", "worker1"):
            assert (directory / "run" / f"{name}.pid").exists(), name
            assert (directory / "logs" / f"{name}.log").exists(), name
        assert oct((directory / "stack.env").stat().st_mode & 0o777) == "0o600"

        again = _orchestrator("stack", "up", *common, "--api-port=0", env=env)
        assert again.returncode == 1
        assert "a stack is already running" in again.stderr

        status = _orchestrator("stack", "status", *common, env=env)
        assert status.returncode == 0, status.stdout + status.stderr
        assert "worker1" in status.stdout

        # `orchestrator run` and `status` work with the settings of stack.env.
        dag_file = tmp_path / "dag.yaml"
        dag_file.write_text(DAG, encoding="utf-8")
        client_env = {**env, **_env_file_settings(directory / "stack.env")}
        run = _orchestrator("run", str(dag_file), "--no-local-agents", "--timeout=60", env=client_env)
        assert run.returncode == 0, run.stdout + run.stderr
        assert "chain_valid: true" in run.stdout
        listed = _orchestrator("status", env=client_env)
        assert listed.returncode == 0, listed.stdout + listed.stderr
        assert "stack-cli" in listed.stdout
    finally:
        down = _orchestrator("stack", "down", *common, env=env)
    assert down.returncode == 0, down.stdout + down.stderr
    # Reverse start order: the worker stops before the API, and both before the servers.
    assert "stopped worker1, api, redis, postgres" in down.stdout

    recorded = LocalStack.attach(directory)
    assert [name for name, component in recorded.components.items() if component.pid] == []
    after = _orchestrator("stack", "status", *common, env=env)
    assert after.returncode == 1
    assert "down" in after.stdout
    assert list((directory / "run").iterdir()) == []

    purged = _orchestrator("stack", "down", *common, "--remove-data", env=env)
    assert purged.returncode == 0, purged.stdout + purged.stderr
    assert f"nothing was running in {directory}" in purged.stdout
    assert not directory.exists()
