"""Every process of a deployment on one machine, started as child processes on 127.0.0.1.

:class:`LocalStack` starts what ``docker-compose.yml`` starts, without
Docker: a private PostgreSQL and Redis (unless URLs are given), the one-shot
migration, the API under gunicorn, N Celery workers sharing one emptied
``PROMETHEUS_MULTIPROC_DIR``, beat, Flower and Prometheus with the project's
alert rules. Grafana is left to Docker, because Debian does not package it.

Everything lives under one directory::

    DIR/stack.env      GL_ORCHESTRATOR_* settings for `orchestrator run`, `status`, ...
    DIR/stack.json     pids, ports and URLs, read by `stack down` and `stack status` (mode 0600)
    DIR/run/*.pid      one pid file per process
    DIR/logs/*.log     one log per process
    DIR/secrets/       generated passwords and the API token (mode 0600)
    DIR/metrics/       PROMETHEUS_MULTIPROC_DIR, emptied at each start

The children run in sessions of their own, so a Ctrl-C in the terminal
reaches only ``stack up``, which then stops them in reverse start order.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import logging
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import requests

from orchestrator_cli.stack_servers import (
    PrivatePostgres,
    PrivateRedis,
    StackError,
    free_port,
    read_secret,
    tail,
)

__all__ = ["API_PREFIX", "DEFAULT_RULES", "FLOWER_USER", "Component", "LocalStack", "StackError", "StackOptions"]

logger = logging.getLogger(__name__)

API_PREFIX = "/api/v1/orchestrator"
DEFAULT_RULES = Path(__file__).resolve().parents[1] / "deploy" / "prometheus" / "alerts.yml"
FLOWER_USER = "admin"
STATE_FILE = "stack.json"
ENV_FILE = "stack.env"
# Seconds a process may take to exit after SIGTERM before it gets SIGKILL. A
# worker's warm shutdown waits for its running nodes, so it gets the longest.
_STOP_TIMEOUTS = {"worker": 30.0, "api": 20.0}
_DEFAULT_STOP_TIMEOUT = 10.0
_POLL_SECONDS = 0.2
# Settings that the stack sets itself; the caller's values of these are dropped.
_STACK_SETTINGS = (
    "GL_ORCHESTRATOR_DATABASE_URL", "GL_ORCHESTRATOR_BROKER_URL", "GL_ORCHESTRATOR_QUEUE",
    "GL_ORCHESTRATOR_API_TOKENS", "GL_ORCHESTRATOR_API_TOKENS_FILE", "GL_ORCHESTRATOR_HOME",
)


@dataclass
class StackOptions:
    """Options of ``stack up``: which components start, their ports and intervals; a port of 0 picks a free port."""

    directory: Path
    workers: int = 2
    concurrency: int = 2
    api_workers: int = 2
    api_port: int = 0
    flower_port: int = 0
    prometheus_port: int = 0
    database_url: str | None = None
    broker_url: str | None = None
    queue: str = "gl-orchestrator"
    agent_modules: tuple[str, ...] = ()
    beat: bool = True
    flower: bool = True
    prometheus: bool = True
    rules_file: Path | None = None
    # Prometheus durations, such as "15s" or "1m".
    scrape_interval: str = "15s"
    evaluation_interval: str = "15s"
    start_timeout: float = 90.0


@dataclass
class Component:
    """One process of the stack, as recorded in ``stack.json``."""

    name: str
    kind: str
    log: str
    url: str = ""
    pid: int | None = None
    # The process's start time in clock ticks since boot (/proc/PID/stat), so
    # that a pid reused by another process is never signalled.
    start_ticks: int | None = None
    node_name: str = ""
    data_dir: str = ""
    run_as: list[str] = field(default_factory=list)


class LocalStack:
    """Start, check and stop the processes of one stack directory."""

    def __init__(self, options: StackOptions, env: Mapping[str, str] | None = None) -> None:
        self.options = options
        self.directory = options.directory.resolve()
        self.base_env = dict(os.environ if env is None else env)
        self.components: dict[str, Component] = {}
        self.env: dict[str, str] = {}
        self.token = ""
        self.database_url = ""
        self.admin_database_url = ""
        self.broker_url = ""
        self._processes: dict[str, subprocess.Popen[bytes]] = {}
        self._postgres: PrivatePostgres | None = None
        self._celery: Any = None

    # -- paths -----------------------------------------------------------------

    @property
    def env_file(self) -> Path:
        return self.directory / ENV_FILE

    @property
    def state_file(self) -> Path:
        return self.directory / STATE_FILE

    @property
    def logs_dir(self) -> Path:
        return self.directory / "logs"

    @property
    def metrics_dir(self) -> Path:
        return self.directory / "metrics"

    def url_of(self, name: str) -> str:
        return self.components[name].url

    @property
    def api_url(self) -> str:
        return self.url_of("api")

    # -- start -----------------------------------------------------------------

    def start(self) -> None:
        """Start every component and wait for its health check; on any failure stop what started and raise."""
        self._check_no_running_stack()
        self._check_prerequisites()
        for folder in (self.logs_dir, self.directory / "run", self.directory / "home"):
            folder.mkdir(parents=True, exist_ok=True)
        # Files of processes from an earlier run would be added to the new
        # processes' metrics, so the folder starts empty.
        shutil.rmtree(self.metrics_dir, ignore_errors=True)
        self.metrics_dir.mkdir(parents=True)
        self.token = read_secret(self.directory / "secrets" / "api-token")

        try:
            self._start_database()
            self._start_broker()
            self.env = self._child_env()
            self._write_env_file()
            self._migrate()
            self._start_services()
            self._wait_for_services()
        except BaseException:
            logger.error("stack start failed, stopping the components that started directory=%s", self.directory)
            self.stop()
            raise
        logger.info("stack started directory=%s components=%d", self.directory, len(self.components))

    def _check_no_running_stack(self) -> None:
        if not self.state_file.exists():
            return
        previous = LocalStack.attach(self.directory)
        running = [component.name for component in previous.components.values() if _alive(component)]
        if running:
            raise StackError(
                f"a stack is already running in {self.directory} ({', '.join(running)}); stop it with "
                f"`orchestrator stack down --dir {self.directory}` or choose another --dir"
            )

    def _check_prerequisites(self) -> None:
        options = self.options
        if options.workers < 1 or options.concurrency < 1 or options.api_workers < 1:
            raise StackError("--workers, --concurrency and --api-workers must be at least 1")
        if importlib.util.find_spec("gunicorn") is None:
            raise StackError("gunicorn is not installed; install it with pip install 'gl-orchestrator[server]'")
        if options.flower and importlib.util.find_spec("flower") is None:
            raise StackError("flower is not installed; install it with pip install 'gl-orchestrator[stack]', "
                             "or pass --no-flower")
        if options.prometheus:
            if shutil.which("prometheus") is None:
                raise StackError("the prometheus binary is not on PATH; install it with apt-get install "
                                 "prometheus, or pass --no-prometheus")
            rules = options.rules_file or DEFAULT_RULES
            if not rules.is_file():
                raise StackError(f"alert rules file {rules} not found; pass --prometheus-rules FILE")

    def _start_database(self) -> None:
        if self.options.database_url:
            self.database_url = self.admin_database_url = self.options.database_url
            return
        server = PrivatePostgres(self.directory, self.directory / "secrets", free_port())
        server.init()
        # The server writes its log inside the cluster, which under root only
        # the postgres user may write to; a link puts it beside the others.
        log_link = self.logs_dir / "postgres.log"
        if not log_link.is_symlink():
            log_link.symlink_to(server.log_path)
        component = Component("postgres", "postgres", str(log_link),
                              url=f"postgresql://127.0.0.1:{server.port}/gl_orchestrator",
                              data_dir=str(server.data), run_as=[*server.run_as, str(server.bin / "pg_ctl")])
        self.components["postgres"] = component
        component.pid = server.start()
        component.start_ticks = _start_ticks(component.pid)
        self._save_state()
        server.create_database()
        self.database_url, self.admin_database_url = server.app_url, server.superuser_url
        self._postgres = server
        logger.info("postgres started port=%d pid=%d data=%s", server.port, component.pid, server.data)

    def _start_broker(self) -> None:
        if self.options.broker_url:
            self.broker_url = self.options.broker_url
            return
        server = PrivateRedis(self.directory / "redis", self.directory / "secrets", free_port())
        self.broker_url = server.url
        self._spawn("redis", "redis", server.command(), env=dict(self.base_env),
                    url=f"redis://127.0.0.1:{server.port}/0")
        self._wait("redis", server.ping)

    def _child_env(self) -> dict[str, str]:
        env = {key: value for key, value in self.base_env.items() if key not in _STACK_SETTINGS}
        env.update({
            "GL_ORCHESTRATOR_DATABASE_URL": self.database_url,
            "GL_ORCHESTRATOR_BROKER_URL": self.broker_url,
            "GL_ORCHESTRATOR_QUEUE": self.options.queue,
            "GL_ORCHESTRATOR_API_TOKENS": self.token,
            "GL_ORCHESTRATOR_HOME": str(self.directory / "home"),
            "PROMETHEUS_MULTIPROC_DIR": str(self.metrics_dir),
        })
        if self.options.agent_modules:
            # A file path is made absolute, so that stack.env works from any folder.
            modules = [str(Path(module).resolve()) if module.endswith(".py") else module
                       for module in self.options.agent_modules]
            env["GL_ORCHESTRATOR_AGENT_MODULES"] = ",".join(modules)
        return env

    def settings_env(self) -> dict[str, str]:
        """Return the GL_ORCHESTRATOR_* settings of the stack's processes, as written to stack.env.

        PROMETHEUS_MULTIPROC_DIR is left out: a command run with these settings
        would otherwise add its own counters to the ones the API serves.
        """
        return {key: value for key, value in self.env.items() if key.startswith("GL_ORCHESTRATOR_")}

    def _write_env_file(self) -> None:
        lines = [
            "# Settings of the stack started by `orchestrator stack up`. Load them with:",
            f"#   set -a; . {shlex.quote(str(self.env_file))}; set +a",
        ]
        lines += [f"{key}={shlex.quote(value)}" for key, value in sorted(self.settings_env().items())]
        descriptor = os.open(self.env_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write("\n".join(lines) + "\n")

    def _migrate(self) -> None:
        """Run `orchestrator db upgrade` as the database owner, then grant the application role its rights."""
        log_path = self.logs_dir / "migrate.log"
        env = {**self.env, "GL_ORCHESTRATOR_DATABASE_URL": self.admin_database_url}
        env.pop("PROMETHEUS_MULTIPROC_DIR")
        with open(log_path, "ab") as log:
            completed = subprocess.run([sys.executable, "-m", "orchestrator_cli.main", "db", "upgrade"], env=env,
                                       stdout=log, stderr=subprocess.STDOUT, timeout=300, check=False)
        if completed.returncode != 0:
            raise StackError(f"`orchestrator db upgrade` failed with exit status {completed.returncode}:\n"
                             f"{tail(log_path)}")
        if self._postgres is not None:
            self._postgres.grant_app_role()
        logger.info("database migrated log=%s", log_path)

    def _start_services(self) -> None:
        options = self.options
        api_port = options.api_port or free_port()
        self._spawn("api", "api", self._gunicorn_command(api_port), url=f"http://127.0.0.1:{api_port}{API_PREFIX}")

        host = socket.gethostname()
        for index in range(1, options.workers + 1):
            name = f"worker{index}"
            command = [sys.executable, "-m", "orchestrator_cli.main", "worker", f"--concurrency={options.concurrency}",
                       f"--hostname={name}@%h", "--loglevel=INFO"]
            self._spawn(name, "worker", command, node_name=f"{name}@{host}")

        if options.beat:
            schedule = self.directory / "home" / "celerybeat-schedule"
            self._spawn("beat", "beat", [sys.executable, "-m", "orchestrator_cli.main", "beat", "--loglevel=INFO",
                                         f"--schedule={schedule}"])
        if options.flower:
            port = options.flower_port or free_port()
            env = {**self.env, "FLOWER_BASIC_AUTH": f"{FLOWER_USER}:{self.token}"}
            self._spawn("flower", "flower", [sys.executable, "-m", "orchestrator_cli.main", "flower",
                                             "--address=127.0.0.1", f"--port={port}"],
                        env=env, url=f"http://127.0.0.1:{port}/")
        if options.prometheus:
            port = options.prometheus_port or free_port()
            config = self._write_prometheus_config(api_port)
            self._spawn("prometheus", "prometheus", [
                "prometheus", f"--config.file={config}",
                f"--storage.tsdb.path={self.directory / 'prometheus' / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}", "--web.enable-lifecycle",
            ], env=dict(self.base_env), url=f"http://127.0.0.1:{port}/")

    def _gunicorn_command(self, port: int) -> list[str]:
        config = self.directory / "gunicorn.conf.py"
        config.write_text(
            "# Written by `orchestrator stack up`.\n"
            "from prometheus_client import multiprocess\n\n\n"
            "def child_exit(server, worker):\n"
            "    # prometheus-client keeps a dead process's live gauges until told.\n"
            "    multiprocess.mark_process_dead(worker.pid)\n",
            encoding="utf-8",
        )
        return [sys.executable, "-m", "gunicorn", f"--bind=127.0.0.1:{port}", f"--workers={self.options.api_workers}",
                f"--config={config}", "--graceful-timeout=15", "api.wsgi:app"]

    def _write_prometheus_config(self, api_port: int) -> Path:
        folder = self.directory / "prometheus"
        folder.mkdir(parents=True, exist_ok=True)
        token_file = self.directory / "secrets" / "api-token"
        rules = (self.options.rules_file or DEFAULT_RULES).resolve()
        # Only the API is scraped: the workers share its PROMETHEUS_MULTIPROC_DIR
        # on this host, so its /metrics already adds up their metrics.
        config = {
            "global": {"scrape_interval": self.options.scrape_interval,
                       "evaluation_interval": self.options.evaluation_interval},
            "rule_files": [str(rules)],
            "scrape_configs": [{
                "job_name": "gl-orchestrator-api",
                "metrics_path": f"{API_PREFIX}/metrics",
                "authorization": {"type": "Bearer", "credentials_file": str(token_file)},
                "static_configs": [{"targets": [f"127.0.0.1:{api_port}"]}],
            }],
        }
        path = folder / "prometheus.yml"
        path.write_text("# Written by `orchestrator stack up`.\n" + json.dumps(config, indent=2) + "\n",
                        encoding="utf-8")
        promtool = shutil.which("promtool")
        if promtool is not None:
            checked = subprocess.run([promtool, "check", "config", str(path)], capture_output=True, text=True,
                                     timeout=60, check=False)
            if checked.returncode != 0:
                raise StackError(f"promtool check config {path} failed:\n{checked.stdout}{checked.stderr}")
        return path

    def _spawn(self, name: str, kind: str, command: list[str], *, env: dict[str, str] | None = None,
               url: str = "", node_name: str = "") -> None:
        log_path = self.logs_dir / f"{name}.log"
        component = Component(name, kind, str(log_path), url=url, node_name=node_name)
        self.components[name] = component
        with open(log_path, "ab") as log:
            process = subprocess.Popen(command, env=env if env is not None else self.env, stdin=subprocess.DEVNULL,
                                       stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self._processes[name] = process
        component.pid = process.pid
        component.start_ticks = _start_ticks(process.pid)
        self._save_state()
        logger.info("component started name=%s pid=%d log=%s", name, process.pid, log_path)

    def _wait_for_services(self) -> None:
        for component in list(self.components.values()):
            if component.kind in {"postgres", "redis"}:
                continue
            self._wait(component.name, functools.partial(self._is_healthy, component))

    def _is_healthy(self, component: Component) -> bool:
        return self.check(component)[0] == "ok"

    def _wait(self, name: str, healthy: Callable[[], bool]) -> None:
        component = self.components[name]
        deadline = time.monotonic() + self.options.start_timeout
        while time.monotonic() < deadline:
            if not _alive(component):
                raise StackError(f"{name} exited during start-up; last lines of {component.log}:\n"
                                 f"{tail(Path(component.log))}")
            if healthy():
                logger.info("component healthy name=%s", name)
                return
            time.sleep(_POLL_SECONDS)
        raise StackError(f"{name} did not pass its health check within {self.options.start_timeout:g}s; "
                         f"last lines of {component.log}:\n{tail(Path(component.log))}")

    # -- checks ----------------------------------------------------------------

    def check(self, component: Component) -> tuple[str, str]:
        """Return ``("ok" | "down" | "unhealthy", detail)`` for one component."""
        if not _alive(component):
            return "down", "process not running"
        try:
            return self._probe(component)
        except (requests.RequestException, ValueError) as exc:
            return "unhealthy", f"{type(exc).__name__}: {exc}"
        except Exception as exc:  # noqa: BLE001 - each driver and transport raises its own errors; all mean down.
            return "unhealthy", f"{component.kind} check failed: {type(exc).__name__}: {exc}"

    def _probe(self, component: Component) -> tuple[str, str]:
        """Run the health check of a component whose process runs."""
        if component.kind == "api":
            response = requests.get(f"{component.url}/health", timeout=5)
            if response.status_code == 200:
                return "ok", f"health {response.json().get('status')}"
            return "unhealthy", f"/health returned {response.status_code}: {response.text[:200]}"
        if component.kind in {"flower", "prometheus"}:
            path = "healthcheck" if component.kind == "flower" else "-/ready"
            response = requests.get(f"{component.url}{path}", timeout=5)
            if response.status_code == 200:
                return "ok", f"/{path} returned 200"
            return "unhealthy", f"/{path} returned {response.status_code}"
        if component.kind == "worker":
            replies = self._celery_app().control.ping(destination=[component.node_name], timeout=1.0)
            return ("ok", "pong") if replies else ("unhealthy", "no reply to celery ping")
        if component.kind == "beat":
            started = b"beat: Starting..." in Path(component.log).read_bytes()
            return ("ok", "scheduler running") if started else ("unhealthy", "scheduler not started yet")
        if component.kind == "redis":
            import redis

            client = redis.Redis.from_url(self.broker_url, socket_timeout=2, socket_connect_timeout=2)
            try:
                client.ping()
            finally:
                client.close()
            return "ok", "PING returned PONG"
        if component.kind == "postgres":
            import psycopg2
            from sqlalchemy.engine import make_url

            url = make_url(self.admin_database_url)
            connection = psycopg2.connect(host=url.host, port=url.port, user=url.username, password=url.password,
                                          dbname=url.database, connect_timeout=2)
            connection.close()
            return "ok", "accepts connections"
        return "ok", "process running"

    def _celery_app(self) -> Any:
        if self._celery is None:
            from celery import Celery

            self._celery = Celery("gl_orchestrator_stack", broker=self.broker_url, set_as_current=False)
        return self._celery

    def statuses(self) -> list[tuple[Component, str, str]]:
        return [(component, *self.check(component)) for component in self.components.values()]

    # -- stop ------------------------------------------------------------------

    def stop(self) -> list[str]:
        """Stop every component in reverse start order and return the names of those that were running."""
        stopped = []
        for component in reversed(list(self.components.values())):
            if self._stop_component(component):
                stopped.append(component.name)
        if self._celery is not None:
            self._celery.close()
            self._celery = None
        self._reap_all()
        for name in [component.name for component in self.components.values()]:
            (self.directory / "run" / f"{name}.pid").unlink(missing_ok=True)
        self._save_state()
        return stopped

    def remove_data(self) -> None:
        """Delete the stack directory and a PostgreSQL cluster kept outside it; the stack must be stopped."""
        running = [component.name for component in self.components.values() if _alive(component)]
        if running:
            raise StackError(f"cannot remove the data of {self.directory} while {', '.join(running)} run; "
                             "stop the stack first")
        location = self.directory / "postgres.location"
        if location.exists():
            shutil.rmtree(location.read_text(encoding="utf-8").strip(), ignore_errors=True)
        shutil.rmtree(self.directory, ignore_errors=True)
        logger.info("stack data removed directory=%s", self.directory)

    def _stop_component(self, component: Component) -> bool:
        if not _alive(component):
            self._reap(component.name)
            return False
        assert component.pid is not None
        if component.kind == "postgres":
            completed = subprocess.run([*component.run_as, "-D", component.data_dir, "-w", "-t", "60", "stop",
                                        "-m", "fast"], capture_output=True, text=True, timeout=90, check=False)
            if completed.returncode != 0:
                logger.error("postgres stop failed pid=%d output=%s", component.pid,
                             (completed.stdout + completed.stderr).strip())
            logger.info("component stopped name=%s", component.name)
            return True

        # Each child leads its own process group, so the signal reaches its
        # pool processes (gunicorn and Celery workers) too.
        os.killpg(component.pid, signal.SIGTERM)
        timeout = _STOP_TIMEOUTS.get(component.kind, _DEFAULT_STOP_TIMEOUT)
        if not self._wait_for_exit(component, timeout):
            logger.warning("component did not stop after SIGTERM, sending SIGKILL name=%s pid=%d timeout=%gs",
                           component.name, component.pid, timeout)
            try:
                os.killpg(component.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self._wait_for_exit(component, 10)
        logger.info("component stopped name=%s", component.name)
        return True

    def _wait_for_exit(self, component: Component, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._reap(component.name)
            if not _alive(component):
                return True
            time.sleep(_POLL_SECONDS)
        return False

    def _reap_all(self) -> None:
        """Collect the exit status of every child started here, so none is left a zombie.

        A child can look stopped to the /proc checks (a pid reused, or a
        process that exited between two checks) while this process has not
        waited for it yet.
        """
        for name, process in self._processes.items():
            if process.poll() is not None:
                continue
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                logger.warning("child still running after stop, killing it name=%s pid=%d", name, process.pid)
                process.kill()
                process.wait(timeout=10)

    def _reap(self, name: str) -> None:
        process = self._processes.get(name)
        if process is not None:
            process.poll()

    # -- foreground ------------------------------------------------------------

    def run_until_signalled(self) -> int:
        """Wait for SIGINT or SIGTERM, or for a component to exit; stop everything and return an exit status."""
        received: list[int] = []

        def on_signal(signum: int, _frame: Any) -> None:
            received.append(signum)

        previous = {signum: signal.signal(signum, on_signal) for signum in (signal.SIGINT, signal.SIGTERM)}
        status = 0
        try:
            while not received:
                exited = [name for name, process in self._processes.items() if process.poll() is not None]
                if exited:
                    name = exited[0]
                    logger.error("component exited, stopping the stack name=%s exit_status=%s log=%s", name,
                                 self._processes[name].returncode, self.components[name].log)
                    status = 1
                    break
                time.sleep(0.5)
            if received:
                logger.info("stopping the stack signal=%s", signal.Signals(received[0]).name)
            self.stop()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        return status

    # -- state -----------------------------------------------------------------

    def _save_state(self) -> None:
        state = {
            "directory": str(self.directory),
            "env_file": str(self.env_file),
            "database_url": self.database_url,
            "admin_database_url": self.admin_database_url,
            "broker_url": self.broker_url,
            "components": [asdict(component) for component in self.components.values()],
        }
        self.directory.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(self.state_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            json.dump(state, handle, indent=2)
        run = self.directory / "run"
        run.mkdir(exist_ok=True)
        for component in self.components.values():
            if component.pid is not None and _alive(component):
                (run / f"{component.name}.pid").write_text(f"{component.pid}\n", encoding="ascii")

    @classmethod
    def attach(cls, directory: Path) -> LocalStack:
        """Load the stack recorded in ``directory/stack.json``, for ``stack down`` and ``stack status``."""
        stack = cls(StackOptions(directory=directory))
        try:
            state = json.loads(stack.state_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise StackError(f"no stack in {stack.directory}: {stack.state_file} does not exist") from None
        except ValueError as exc:
            raise StackError(f"{stack.state_file} is not valid JSON: {exc}") from exc
        stack.database_url = state["database_url"]
        stack.admin_database_url = state["admin_database_url"]
        stack.broker_url = state["broker_url"]
        for entry in state["components"]:
            component = Component(**entry)
            # The pid file is what `stack down` acts on; stack.json only vouches for it.
            pid_file = stack.directory / "run" / f"{component.name}.pid"
            if not pid_file.exists():
                component.pid = None
            stack.components[component.name] = component
        stack.token = read_secret(stack.directory / "secrets" / "api-token")
        return stack


def _start_ticks(pid: int) -> int | None:
    """Return the start time of ``pid`` in clock ticks since boot, or None without /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    # Field 22; the command name before it is in parentheses and may hold spaces.
    fields = stat.rsplit(")", 1)[-1].split()
    return int(fields[19])


def _alive(component: Component) -> bool:
    """Return whether the recorded process still runs and is the one that was started (not a reused pid)."""
    if component.pid is None:
        return False
    ticks = _start_ticks(component.pid)
    if ticks is None:
        return False
    if component.start_ticks is not None and ticks != component.start_ticks:
        return False
    try:
        state = Path(f"/proc/{component.pid}/stat").read_text(encoding="ascii").rsplit(")", 1)[-1].split()[0]
    except OSError:
        return False
    return state not in {"Z", "X"}
