"""The ``orchestrator watch`` and ``orchestrator status`` commands."""

from __future__ import annotations

import json
import sys
import time
from typing import TYPE_CHECKING, Any

import click
from sqlalchemy.exc import SQLAlchemyError

from orchestrator.errors import OrchestratorError
from orchestrator.settings import load_settings
from orchestrator_cli.progress import ProgressLine, count_nodes, render_bar

if TYPE_CHECKING:
    from orchestrator.database import Database
    from orchestrator.settings import Settings

__all__ = ["status", "watch"]

_TERMINAL = {"completed", "failed", "cancelled"}


def _settings() -> Settings:
    try:
        return load_settings()
    except OrchestratorError as exc:
        raise click.ClickException(str(exc)) from exc


def _database(settings: Settings) -> Database:
    from orchestrator.database import Database

    return Database(settings.database_url)


def _database_failure(exc: SQLAlchemyError) -> click.ClickException:
    reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
    return click.ClickException(
        f"reading executions failed: {reason}; check GL_ORCHESTRATOR_DATABASE_URL (or GL_ORCHESTRATOR_HOME in "
        "embedded mode), and run `orchestrator db upgrade` if the tables are missing"
    )


@click.command()
@click.argument("execution_id")
@click.option("--interval", type=click.FloatRange(min=0.1), default=1.0, show_default=True,
              help="Seconds between polls of the database.")
@click.option("--timeout", type=click.FloatRange(min=0), default=0, show_default=True,
              help="Give up after this many seconds; 0 waits until the execution ends.")
def watch(execution_id: str, interval: float, timeout: float) -> None:
    """Show EXECUTION_ID's progress live until it ends: nodes done, running, failed and retried.

    Exits with status 0 when the execution completes with a valid chain, 1
    when it fails, is cancelled or its chain is broken, and 2 on timeout.
    """
    from orchestrator import repository

    settings = _settings()
    database = _database(settings)
    progress = ProgressLine(sys.stdout)
    started = time.monotonic()
    reported: dict[str, str] = {}
    try:
        while True:
            try:
                execution = repository.get_execution(database, execution_id)
            except OrchestratorError as exc:
                raise click.ClickException(str(exc)) from exc
            except SQLAlchemyError as exc:
                raise _database_failure(exc) from exc
            _report_failures(execution, reported, progress)
            counts = count_nodes(execution["nodes"], execution["nodes_total"])
            progress.show(counts, time.monotonic() - started)
            if execution["status"] in _TERMINAL:
                break
            if timeout and time.monotonic() - started > timeout:
                progress.clear()
                click.echo(f"execution {execution_id} is still {execution['status']} after {timeout:g}s", err=True)
                sys.exit(2)
            time.sleep(interval)
    finally:
        database.dispose()

    progress.clear()
    click.echo(render_bar(counts, time.monotonic() - started))
    click.echo(f"execution {execution_id} {execution['status']}; chain_valid: "
               f"{json.dumps(execution['chain_valid'])}; provenance_chain_hash: {execution['provenance_chain_hash']}")
    if execution["error"]:
        click.echo(f"error: {execution['error']}")
    sys.exit(0 if execution["status"] == "completed" and execution["chain_valid"] else 1)


def _report_failures(execution: dict[str, Any], reported: dict[str, str], progress: ProgressLine) -> None:
    """Print one line for each node that newly failed or waits to retry, with its error."""
    for node in execution["nodes"]:
        if node["status"] not in {"failed", "retrying"}:
            continue
        key = f"{node['status']}:{node['attempt_count']}"
        if reported.get(node["node_id"]) == key:
            continue
        reported[node["node_id"]] = key
        progress.clear()
        click.echo(f"  {node['status']:<8} {node['node_id']} attempt {node['attempt_count']}: {node['error'] or ''}")


@click.command()
@click.option("--status", "status_filter", default=None, help="Only executions in this state, e.g. running or failed.")
@click.option("--dag", "dag_id", default=None, help="Only executions of this DAG id.")
@click.option("--since", default="24h", show_default=True,
              help="Only executions created within this duration (30m, 24h, 7d) or after an ISO 8601 time.")
@click.option("--limit", type=click.IntRange(1, 500), default=50, show_default=True, help="Executions to list.")
@click.option("--json", "as_json", is_flag=True, help="Print the items as JSON, as GET /executions returns them.")
def status(status_filter: str | None, dag_id: str | None, since: str, limit: int, as_json: bool) -> None:
    """List executions, newest first, with their age, node counts, chain validity and running nodes."""
    from orchestrator import repository

    settings = _settings()
    database = _database(settings)
    try:
        items, _ = repository.list_executions(
            database, status=status_filter, dag_id=dag_id, since=repository.parse_since(since), limit=limit)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    except SQLAlchemyError as exc:
        raise _database_failure(exc) from exc
    finally:
        database.dispose()

    if as_json:
        click.echo(json.dumps(items, indent=2, sort_keys=True))
        return
    if not items:
        click.echo(f"no executions created within {since}" + (f" with status {status_filter}" if status_filter else ""))
        return
    click.echo(f"{'EXECUTION':<36}  {'DAG':<24}  {'STATUS':<9}  {'AGE':>8}  {'NODES':>11}  {'CHAIN':<7}  RUNNING")
    for item in items:
        finished = item["nodes_total"] - item["nodes_remaining"]
        chain = {True: "valid", False: "BROKEN", None: "-"}[item["chain_valid"]]
        running = ", ".join(node["node_id"] for node in item["running_nodes"][:3])
        if len(item["running_nodes"]) > 3:
            running += f" and {len(item['running_nodes']) - 3} more"
        click.echo(f"{item['execution_id']:<36}  {item['dag_id'][:24]:<24}  {item['status']:<9}  "
                   f"{_age(item['age_seconds']):>8}  {finished:>5}/{item['nodes_total']:<5}  {chain:<7}  {running}")


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"

