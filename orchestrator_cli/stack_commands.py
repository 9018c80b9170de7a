"""The ``orchestrator stack`` commands, which run a whole deployment on this machine, and ``orchestrator flower``."""

from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from orchestrator.errors import OrchestratorError

if TYPE_CHECKING:
    from orchestrator_cli.stack import LocalStack

__all__ = ["flower", "stack"]

logger = logging.getLogger(__name__)

_DIR_OPTION = click.option(
    "--dir", "directory", type=click.Path(file_okay=False, path_type=Path), default=Path(".gl-stack"),
    show_default=True, help="Folder of the stack's data, logs, pid files and stack.env.",
)


@click.group()
def stack() -> None:
    """Start, check and stop every orchestrator process on this machine, without Docker."""


@stack.command("up")
@_DIR_OPTION
@click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True,
              help="Celery worker processes to start, each with its own node name.")
@click.option("--concurrency", type=click.IntRange(min=1), default=2, show_default=True,
              help="Pool processes of each worker.")
@click.option("--api-workers", type=click.IntRange(min=1), default=2, show_default=True,
              help="gunicorn worker processes of the API.")
@click.option("--api-port", type=click.IntRange(0, 65535), default=8080, show_default=True,
              help="TCP port of the API on 127.0.0.1; 0 picks a free port.")
@click.option("--flower-port", type=click.IntRange(0, 65535), default=5555, show_default=True,
              help="TCP port of Flower on 127.0.0.1; 0 picks a free port.")
@click.option("--prometheus-port", type=click.IntRange(0, 65535), default=9090, show_default=True,
              help="TCP port of Prometheus on 127.0.0.1; 0 picks a free port.")
@click.option("--database-url", default=None, metavar="URL",
              help="Use this PostgreSQL database instead of starting a private cluster in DIR.")
@click.option("--broker-url", default=None, metavar="URL",
              help="Use this Redis broker instead of starting a private redis-server.")
@click.option("--queue", default="gl-orchestrator", show_default=True, help="Celery queue of the stack.")
@click.option("--agents", "agent_modules", multiple=True, metavar="MODULE_OR_FILE",
              help="Agent module (dotted name or .py path) for the API and workers; repeatable. "
                   "Default: GL_ORCHESTRATOR_AGENT_MODULES.")
@click.option("--beat/--no-beat", default=True, show_default=True, help="Start Celery beat.")
@click.option("--flower/--no-flower", "with_flower", default=True, show_default=True, help="Start Flower.")
@click.option("--prometheus/--no-prometheus", default=True, show_default=True, help="Start Prometheus.")
@click.option("--prometheus-rules", "rules_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="Alert rules file (default: deploy/prometheus/alerts.yml of this checkout).")
@click.option("--scrape-interval", default="15s", show_default=True,
              help="Prometheus scrape interval, as a Prometheus duration.")
@click.option("--evaluation-interval", default="15s", show_default=True,
              help="Prometheus rule evaluation interval, as a Prometheus duration.")
@click.option("--detach", is_flag=True,
              help="Return once everything is healthy and leave it running; stop it with `stack down`.")
@click.option("--timeout", "start_timeout", type=click.FloatRange(min=1), default=90.0, show_default=True,
              help="Seconds each component may take to pass its health check.")
def stack_up(directory: Path, workers: int, concurrency: int, api_workers: int, api_port: int, flower_port: int,
             prometheus_port: int, database_url: str | None, broker_url: str | None, queue: str,
             agent_modules: tuple[str, ...], beat: bool, with_flower: bool, prometheus: bool,
             rules_file: Path | None, scrape_interval: str, evaluation_interval: str, detach: bool,
             start_timeout: float) -> None:
    """Start PostgreSQL, Redis, the migration, the API, workers, beat, Flower and Prometheus on 127.0.0.1.

    Without --detach it runs until Ctrl-C or SIGTERM, then stops everything.
    It exits with status 1 when a component exits on its own. Grafana is not
    started, because Debian has no package for it: run it with
    `docker compose up grafana`.
    """
    from orchestrator.logs import configure_logging
    from orchestrator_cli.stack import LocalStack, StackOptions

    configure_logging("INFO")
    options = StackOptions(
        directory=directory, workers=workers, concurrency=concurrency, api_workers=api_workers,
        api_port=api_port, flower_port=flower_port, prometheus_port=prometheus_port, database_url=database_url,
        broker_url=broker_url, queue=queue, agent_modules=agent_modules, beat=beat, flower=with_flower,
        prometheus=prometheus, rules_file=rules_file, scrape_interval=scrape_interval,
        evaluation_interval=evaluation_interval, start_timeout=start_timeout,
    )
    local_stack = LocalStack(options)
    # SIGTERM during start-up interrupts it like Ctrl-C, so that no child is left behind.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        local_stack.start()
    except OrchestratorError as exc:
        raise click.ClickException(str(exc)) from exc
    except KeyboardInterrupt:
        # start() stops what it started before it lets the interrupt through.
        raise click.ClickException("interrupted during start-up; every component that had started was stopped")
    finally:
        signal.signal(signal.SIGTERM, previous)

    _echo_table(local_stack)
    if detach:
        click.echo(f"running in the background; stop with: orchestrator stack down --dir {directory}")
        return
    click.echo("press Ctrl-C to stop")
    sys.exit(local_stack.run_until_signalled())


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


@stack.command("down")
@_DIR_OPTION
@click.option("--remove-data", is_flag=True,
              help="Also delete DIR with the database, the broker's data and the logs.")
def stack_down(directory: Path, remove_data: bool) -> None:
    """Stop the stack recorded in DIR (started with --detach), in reverse start order."""
    from orchestrator.logs import configure_logging
    from orchestrator_cli.stack import LocalStack

    configure_logging("INFO")
    try:
        local_stack = LocalStack.attach(directory)
        stopped = local_stack.stop()
        if remove_data:
            local_stack.remove_data()
    except OrchestratorError as exc:
        raise click.ClickException(str(exc)) from exc
    if stopped:
        click.echo(f"stopped {', '.join(stopped)}")
    else:
        click.echo(f"nothing was running in {directory}")
    if remove_data:
        click.echo(f"removed {directory}")


@stack.command("status")
@_DIR_OPTION
def stack_status(directory: Path) -> None:
    """Print each component of the stack in DIR with its health; exit with status 1 when one is not ok."""
    from orchestrator_cli.stack import LocalStack

    try:
        local_stack = LocalStack.attach(directory)
    except OrchestratorError as exc:
        raise click.ClickException(str(exc)) from exc
    healthy = _echo_table(local_stack)
    sys.exit(0 if healthy else 1)


def _echo_table(local_stack: LocalStack) -> bool:
    """Print one line per component, the env file and the log folder; return whether every component is ok."""
    from orchestrator_cli.stack import FLOWER_USER

    rows = [("component", "pid", "health", "url or detail")]
    healthy = True
    for component, health, detail in local_stack.statuses():
        healthy = healthy and health == "ok"
        url_or_detail = component.url or component.node_name or detail
        if health != "ok":
            url_or_detail = f"{url_or_detail} ({detail})" if url_or_detail != detail else detail
        rows.append((component.name, str(component.pid or "-"), health, url_or_detail))
    widths = [max(len(row[column]) for row in rows) for column in range(3)]
    for row in rows:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[3])
    click.echo(f"env file:  {local_stack.env_file}  (set -a; . {local_stack.env_file}; set +a)")
    click.echo(f"logs:      {local_stack.logs_dir}/")
    if "flower" in local_stack.components:
        click.echo(f"flower:    user {FLOWER_USER}, password = GL_ORCHESTRATOR_API_TOKENS in the env file")
    click.echo("grafana:   not started (Debian has no package); run `docker compose up grafana prometheus`")
    return healthy


@click.command(context_settings={"ignore_unknown_options": True})
@click.option("--address", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(1, 65535), default=5555, show_default=True, help="TCP port to listen on.")
@click.argument("flower_args", nargs=-1, type=click.UNPROCESSED)
def flower(address: str, port: int, flower_args: tuple[str, ...]) -> None:
    """Run Flower, Celery's web monitor, on this deployment's broker and tasks.

    Further arguments go to Flower, and so do FLOWER_* environment variables
    (FLOWER_BASIC_AUTH=user:password turns on authentication). Needs the
    `stack` extra: pip install 'gl-orchestrator[stack]'.
    """
    import importlib.util

    from orchestrator.logs import configure_logging
    from orchestrator.settings import load_settings
    from workers.app import create_celery_app

    if importlib.util.find_spec("flower") is None:
        raise click.ClickException("flower is not installed; install it with pip install 'gl-orchestrator[stack]'")
    try:
        settings = load_settings()
    except OrchestratorError as exc:
        raise click.ClickException(str(exc)) from exc
    if settings.embedded:
        raise click.ClickException("Flower needs a broker that other processes can reach; set "
                                   "GL_ORCHESTRATOR_BROKER_URL and GL_ORCHESTRATOR_DATABASE_URL")
    configure_logging(settings.log_level, settings.log_format)
    app = create_celery_app(settings)
    logger.info("flower starting address=%s port=%d queue=%s", address, port, settings.default_queue)
    app.start(["flower", f"--address={address}", f"--port={port}", *flower_args])
