"""The ``orchestrator`` command: run DAGs, serve the API, run workers, migrate."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import click

from orchestrator.errors import DagValidationError, JsonDomainError, OrchestratorError
from orchestrator.settings import Settings, load_settings

__all__ = ["main"]

logger = logging.getLogger(__name__)


def _settings() -> Settings:
    try:
        return load_settings()
    except OrchestratorError as exc:
        raise click.ClickException(str(exc)) from exc


@click.group()
@click.version_option(package_name="gl-orchestrator")
def main() -> None:
    """Run auditable calculation DAGs on Celery workers."""


@main.command()
@click.argument("dag_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--input", "input_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="JSON file with the execution's input data (default: {}).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of progress lines.")
@click.option("--agents", "agent_modules", multiple=True, metavar="MODULE_OR_FILE",
              help="Import this agent module (dotted name or .py path) too; repeatable.")
@click.option("--local-agents/--no-local-agents", default=True, show_default=True,
              help="Import agents.py from the DAG file's folder when it exists.")
@click.option("--timeout", type=float, default=3600.0, show_default=True,
              help="Seconds to wait for the execution to finish.")
def run(dag_file: Path, input_file: Path | None, as_json: bool, agent_modules: tuple[str, ...],
        local_agents: bool, timeout: float) -> None:
    """Run DAG_FILE and print each node's progress, the sink outputs and the chain hash.

    With neither GL_ORCHESTRATOR_DATABASE_URL nor GL_ORCHESTRATOR_BROKER_URL
    set, the DAG runs embedded: a SQLite file and an in-process worker. With
    both set, it is submitted to the running workers.
    """
    from orchestrator_cli.running import run_dag_file

    settings = _settings()
    try:
        summary = run_dag_file(settings, dag_file, input_file, agent_modules=agent_modules,
                               local_agents=local_agents, timeout=timeout, as_json=as_json)
    except DagValidationError as exc:
        raise click.ClickException(str(exc)) from exc
    except (JsonDomainError, OrchestratorError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    ok = summary["status"] == "completed" and summary["chain_valid"] is True
    sys.exit(0 if ok else 1)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8080, show_default=True, help="TCP port to listen on.")
def api(host: str, port: int) -> None:
    """Serve the REST API with the development server (use gunicorn in production)."""
    from orchestrator.logs import configure_logging

    settings = _settings()
    configure_logging(settings.log_level, settings.log_format)
    from api import create_app

    try:
        app = create_app(settings)
    except OrchestratorError as exc:
        raise click.ClickException(str(exc)) from exc
    app.run(host=host, port=port, threaded=True)


@main.command()
@click.option("--concurrency", type=int, default=None, help="Pool processes (default: GL_ORCHESTRATOR_WORKER_CONCURRENCY).")
@click.option("--hostname", default=None, help="Worker node name, e.g. worker1@%h.")
@click.option("--loglevel", default=None, help="Log level (default: GL_ORCHESTRATOR_LOG_LEVEL).")
def worker(concurrency: int | None, hostname: str | None, loglevel: str | None) -> None:
    """Run a Celery worker that executes nodes and finalizers."""
    from orchestrator.logs import configure_logging
    from workers.app import create_celery_app

    settings = _settings()
    level = (loglevel or settings.log_level).upper()
    configure_logging(level, settings.log_format)
    if settings.embedded:
        logger.warning("no GL_ORCHESTRATOR_BROKER_URL or DATABASE_URL set; this worker serves the embedded "
                       "filesystem broker and SQLite database under %s", settings.home)
    app = create_celery_app(settings)
    argv = ["worker", f"--concurrency={concurrency or settings.worker_concurrency}", f"--loglevel={level}",
            f"--queues={settings.default_queue}", "--pool=prefork"]
    if hostname:
        argv.append(f"--hostname={hostname}")
    app.worker_main(argv)


@main.group()
def db() -> None:
    """Manage the database schema."""


@db.command()
@click.option("--revision", default="head", show_default=True, help="Alembic revision to upgrade to.")
def upgrade(revision: str) -> None:
    """Apply the Alembic migrations to GL_ORCHESTRATOR_DATABASE_URL."""
    from orchestrator.database import upgrade_schema

    from sqlalchemy.exc import OperationalError

    settings = _settings()
    try:
        upgrade_schema(settings.database_url, revision)
    except OperationalError as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        raise click.ClickException(
            f"cannot open the database of GL_ORCHESTRATOR_DATABASE_URL: {reason}; "
            "check the URL, and create the database first (for example with createdb)"
        ) from exc
    click.echo(f"database upgraded to {revision}")


def _print_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
