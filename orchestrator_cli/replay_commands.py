"""The ``orchestrator diff`` and ``orchestrator replay`` commands.

Both follow the exit statuses of diff(1): 0 when the executions are the same,
1 when they differ (or the replay did not complete), 2 when the comparison
could not be made.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import click

from orchestrator.errors import OrchestratorError
from orchestrator.settings import load_settings

if TYPE_CHECKING:
    from orchestrator.settings import Settings

__all__ = ["diff", "replay"]

# Hashes in the text table are cut to this many hex characters, and --json prints them whole.
SHOWN_HASH_CHARACTERS = 16
# Params longer than this many characters of compact JSON are cut in the text table.
SHOWN_PARAMS_CHARACTERS = 48
_HASH_FIELDS = frozenset({"input", "output", "dag_hash", "input_hash", "provenance_chain_hash"})


class ComparisonError(click.ClickException):
    """The executions could not be compared, so the command exits with status 2, as diff(1) does."""

    exit_code = 2


def _settings() -> Settings:
    try:
        return load_settings()
    except OrchestratorError as exc:
        raise ComparisonError(str(exc)) from exc


def _database_failure(action: str, exc: Exception) -> ComparisonError:
    reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
    return ComparisonError(
        f"{action} failed: {reason}; check GL_ORCHESTRATOR_DATABASE_URL, "
        "and run `orchestrator db upgrade` if the tables are missing"
    )


# -- text output ------------------------------------------------------------


def _shown(field: str, value: Any) -> str:
    """Format one compared value for the text table."""
    if value is None:
        return "-"
    if field in _HASH_FIELDS:
        return f"{value[:SHOWN_HASH_CHARACTERS]}..."
    if field == "agent":
        version = value.get("agent_version")
        return str(value["agent_id"]) if version is None else f"{value['agent_id']}@{version}"
    if field == "params":
        text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return text if len(text) <= SHOWN_PARAMS_CHARACTERS else f"{text[:SHOWN_PARAMS_CHARACTERS]}..."
    return str(value)


def _difference_rows(execution_fields: dict[str, Any], nodes: Sequence[dict[str, Any]]) -> list[tuple[str, ...]]:
    """Return one row (node, what differs, A value, B value) per differing value."""
    rows = []
    for name, values in execution_fields.items():
        if values["differs"]:
            rows.append(("(execution)", name, _shown(name, values["a"]), _shown(name, values["b"])))
    for node in nodes:
        for name in node["differences"]:
            label = f"{name} (nondeterministic)" if name == "output" and node["nondeterministic"] else name
            values = node[name]
            rows.append((node["node_id"], label, _shown(name, values["a"]), _shown(name, values["b"])))
    return rows


def _echo_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(row[column]) for row in (header, *rows)) for column in range(len(header))]
    for row in (header, *rows):
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


def _node_list(node_ids: Sequence[str], nondeterministic: Sequence[str]) -> str:
    return ", ".join(f"{node_id} (nondeterministic)" if node_id in nondeterministic else node_id
                     for node_id in node_ids)


# -- diff -------------------------------------------------------------------


@click.command()
@click.argument("execution_a")
@click.argument("execution_b")
@click.option("--json", "as_json", is_flag=True, help="Print the whole diff as one JSON object.")
def diff(execution_a: str, execution_b: str, as_json: bool) -> None:
    """Compare EXECUTION_A with EXECUTION_B node by node and print each value that differs.

    For each node the diff compares the input hash, the agent and its version,
    the params, the output hash and the status. A node marked nondeterministic
    had the same input hash in both executions but a different output.
    Exits with status 0 when the executions are identical, 1 when they differ,
    and 2 when they cannot be compared.
    """
    from sqlalchemy.exc import SQLAlchemyError

    from orchestrator.comparison import diff_executions
    from orchestrator.database import Database

    settings = _settings()
    database = Database(settings.database_url)
    try:
        result = diff_executions(database, execution_a, execution_b)
    except OrchestratorError as exc:
        raise ComparisonError(str(exc)) from exc
    except SQLAlchemyError as exc:
        raise _database_failure("execution diff", exc) from exc
    finally:
        database.dispose()

    report = result.to_dict()
    if as_json:
        click.echo(json.dumps(report, indent=2, sort_keys=True))
    else:
        _echo_diff(report)
    sys.exit(0 if result.identical else 1)


def _echo_diff(report: dict[str, Any]) -> None:
    click.echo(f"A: execution {report['execution_a']} ({report['status']['a']})")
    click.echo(f"B: execution {report['execution_b']} ({report['status']['b']})")
    execution_fields = {name: report[name] for name in ("dag_hash", "input_hash", "provenance_chain_hash")}
    rows = _difference_rows(execution_fields, [node for node in report["nodes"] if node["differs"]])
    if rows:
        _echo_table(("node", "differs", "A", "B"), rows)
    differing = report["nodes_differing"]
    if report["identical"]:
        click.echo(f"executions are identical: {len(report['nodes'])} nodes, "
                   f"provenance_chain_hash {report['provenance_chain_hash']['a']}")
        return
    nodes_text = (f"{len(differing)} of {len(report['nodes'])} nodes differ: "
                  f"{_node_list(differing, report['nodes_nondeterministic'])}" if differing else "no node differs")
    same = [name for name in ("dag_hash", "input_hash") if report[f"same_{name}"]]
    same_text = f"; same {' and '.join(same)}" if same else ""
    click.echo(f"executions differ: {nodes_text}{same_text}")


# -- replay -----------------------------------------------------------------


@click.command()
@click.argument("execution_id")
@click.option("--agents", "agent_modules", multiple=True, metavar="MODULE_OR_FILE",
              help="Import this agent module (dotted name or .py path) too; repeatable.")
@click.option("--wait/--no-wait", default=True, show_default=True,
              help="Wait for the replay to end and compare it (embedded mode always waits).")
@click.option("--json", "as_json", is_flag=True, help="Print the replay report as one JSON object.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True, max=30 * 86400), default=3600.0,
              show_default=True,
              help="Seconds to wait for the replay to end.")
def replay(execution_id: str, agent_modules: tuple[str, ...], wait: bool, as_json: bool, timeout: float) -> None:
    """Run EXECUTION_ID's stored DAG again on its input and compare the two provenance chains.

    The replay is a new execution of the DAG document the original ran, even
    if the DAG was replaced since. In embedded mode, pass --agents with the
    agent module the DAG used. Exits with status 0 when the replay completed
    with the original's provenance_chain_hash, 1 when it differs or did not
    complete, and 2 when the replay could not start or did not end within
    --timeout. With --no-wait it exits 0 once the replay is started.
    """
    from sqlalchemy.exc import SQLAlchemyError

    settings = _settings()
    try:
        report = _run_replay(settings, execution_id, agent_modules, wait=wait, timeout=timeout, as_json=as_json)
    except OrchestratorError as exc:
        raise ComparisonError(str(exc)) from exc
    except SQLAlchemyError as exc:
        raise _database_failure("replay", exc) from exc

    if as_json:
        click.echo(json.dumps(report, indent=2, sort_keys=True))
    elif "matches" in report:
        _echo_replay(report)
    if "matches" not in report:
        return
    sys.exit(0 if report["matches"] and report["status"] == "completed" else 1)


def _run_replay(settings: Settings, execution_id: str, agent_modules: Sequence[str], *, wait: bool,
                timeout: float, as_json: bool) -> dict[str, Any]:
    """Start the replay, in an embedded worker or on the configured workers, and return its report."""
    from orchestrator.agents import import_agent_modules
    from orchestrator.replay import replay_report, start_replay
    from orchestrator_cli.running import wait_for_execution
    from workers.app import create_celery_app, runtime_of
    from workers.dispatch import send_follow_up
    from workers.embedded import run_with_embedded_worker

    import_agent_modules([*settings.agent_modules, *agent_modules])
    app = create_celery_app(settings)
    runtime = runtime_of(app)
    out = sys.stderr if as_json else sys.stdout
    mode = "embedded" if settings.embedded else "distributed"

    def drive(celery_app: Any) -> dict[str, Any]:
        started = start_replay(runtime.scheduler, execution_id,
                               default_execution_timeout_seconds=settings.execution_timeout_seconds)
        send_follow_up(celery_app, started.follow_up)
        click.echo(f"replay {started.execution_id} of execution {execution_id} of DAG {started.dag_id!r} "
                   f"({started.nodes_total} nodes, {mode})", file=out)
        if not (settings.embedded or wait):
            return {"execution_id": started.execution_id, "replay_of": execution_id, "status": "pending"}
        wait_for_execution(runtime.db, started.execution_id, timeout=timeout, out=out)
        return replay_report(runtime.db, started.execution_id).to_dict()

    try:
        if settings.embedded:
            return run_with_embedded_worker(app, drive, concurrency=settings.worker_concurrency)
        return drive(app)
    finally:
        runtime.db.dispose()


def _echo_replay(report: dict[str, Any]) -> None:
    hashes = report["provenance_chain_hash"]
    click.echo(f"status: {report['status']}")
    click.echo(f"provenance_chain_hash of the original: {hashes['original']}")
    click.echo(f"provenance_chain_hash of the replay:   {hashes['replay']}")
    click.echo(f"matches: {'true' if report['matches'] else 'false'}")
    differing = report["nodes_differing"]
    if differing:
        _echo_table(("node", "differs", "original", "replay"), _difference_rows({}, differing))
    if report["matches"] and report["status"] == "completed":
        click.echo("replay matches the original: same provenance_chain_hash")
    elif report["matches"]:
        click.echo(f"replay matches the original: same provenance_chain_hash, but the replay ended "
                   f"{report['status']}, as the original did")
    elif differing:
        node_ids = [node["node_id"] for node in differing]
        click.echo(f"replay differs from the original in {len(node_ids)} node(s): "
                   f"{_node_list(node_ids, report['nodes_nondeterministic'])}")
    else:
        click.echo("replay differs from the original: the provenance_chain_hash differs, but no node does")
