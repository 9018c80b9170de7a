"""``orchestrator run``: submit one DAG file, follow its progress, print the result."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
from sqlalchemy import select

from orchestrator.agents import default_registry, import_agent_modules
from orchestrator.dag import Dag, load_dag_document, parse_dag
from orchestrator.database import Database, upgrade_schema
from orchestrator.errors import ExecutionError
from orchestrator.hashing import check_json_domain
from orchestrator.models import ExecutionNodeRow, ExecutionRow
from orchestrator.repository import execution_outputs
from orchestrator.settings import Settings
from orchestrator.states import EXECUTION_TERMINAL_STATES
from orchestrator_cli.progress import ProgressLine, count_nodes

__all__ = ["load_input_file", "resume_execution_id", "run_dag_file", "wait_for_execution"]

_executions = ExecutionRow.__table__
_nodes = ExecutionNodeRow.__table__
_TERMINAL = {status.value for status in EXECUTION_TERMINAL_STATES}
_NODE_DONE = {"completed", "failed", "skipped"}


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON; the input must contain finite numbers only")


def load_input_file(path: Path) -> Any:
    """Read an input JSON file, rejecting values outside the JSON domain with their path."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"), parse_constant=_reject_constant)
        check_json_domain(value)
    except json.JSONDecodeError as exc:
        raise ValueError(f"input file {str(path)!r} is not valid JSON: {exc}") from exc
    except ValueError as exc:
        raise ValueError(f"input file {str(path)!r} is rejected: {exc}") from exc
    return value


def _prepare(settings: Settings, dag_file: Path, agent_modules: Sequence[str], local_agents: bool) -> Dag:
    modules = list(agent_modules)
    sibling = dag_file.resolve().parent / "agents.py"
    if local_agents and sibling.is_file():
        modules.append(str(sibling))
    import_agent_modules([*settings.agent_modules, *modules])
    document = load_dag_document(dag_file)
    return parse_dag(document, default_registry)


def run_dag_file(
    settings: Settings,
    dag_file: Path,
    input_file: Path | None,
    *,
    agent_modules: Sequence[str] = (),
    local_agents: bool = True,
    timeout: float = 3600.0,
    as_json: bool = False,
) -> dict[str, Any]:
    """Run a DAG file to its end, embedded or on the configured workers, and print the summary."""
    from orchestrator.repository import register_dag
    from workers.app import create_celery_app, runtime_of
    from workers.dispatch import send_follow_up
    from workers.embedded import run_with_embedded_worker

    dag = _prepare(settings, dag_file, agent_modules, local_agents)
    input_data = load_input_file(input_file) if input_file else {}
    if settings.embedded:
        upgrade_schema(settings.database_url)
    app = create_celery_app(settings)
    runtime = runtime_of(app)
    register_dag(runtime.db, dag, replace=True)
    out = sys.stderr if as_json else sys.stdout

    def drive(celery_app: Any) -> dict[str, Any]:
        execution_id, follow_up = runtime.scheduler.create_execution(
            dag, input_data, options={"checkpoint_enabled": True, "deterministic_mode": True},
            default_execution_timeout_seconds=settings.execution_timeout_seconds)
        send_follow_up(celery_app, follow_up)
        mode = "embedded" if settings.embedded else "distributed"
        click.echo(f"execution {execution_id} of DAG {dag.dag_id!r} ({len(dag.nodes)} nodes, {mode})", file=out)
        return wait_for_execution(runtime.db, execution_id, timeout=timeout, out=out)

    if settings.embedded:
        summary = run_with_embedded_worker(app, drive, concurrency=settings.worker_concurrency)
    else:
        summary = drive(app)
    summary["outputs"] = _sink_outputs(runtime.db, summary["execution_id"], dag)
    _print_summary(summary, as_json)
    return summary


def wait_for_execution(db: Database, execution_id: str, *, timeout: float, out: Any = None,
                       poll_interval: float = 0.1) -> dict[str, Any]:
    """Poll until the execution is terminal, printing each node as it finishes and a progress bar on a terminal."""
    started = time.monotonic()
    deadline = started + timeout
    seen: dict[str, str] = {}
    total = 0
    # On a terminal the bar is redrawn in place; in a pipe the node lines are the progress.
    progress = ProgressLine(out) if out is not None and out.isatty() else None
    while True:
        with db.connect() as conn:
            execution = conn.execute(
                select(_executions.c.status, _executions.c.error, _executions.c.provenance_chain_hash,
                       _executions.c.chain_valid, _executions.c.dag_id, _executions.c.nodes_total)
                .where(_executions.c.execution_id == execution_id)
            ).mappings().one()
            nodes = conn.execute(
                select(_nodes.c.node_id, _nodes.c.status, _nodes.c.attempt_count, _nodes.c.error)
                .where(_nodes.c.execution_id == execution_id).order_by(_nodes.c.ordinal)
            ).all()
        total = execution["nodes_total"]
        for node in nodes:
            if node.status in _NODE_DONE and seen.get(node.node_id) != node.status:
                seen[node.node_id] = node.status
                if out is not None:
                    if progress is not None:
                        progress.clear()
                    detail = f"  {node.error}" if node.error else ""
                    click.echo(f"  [{len(seen)}/{total}] {node.status:<9} {node.node_id}  attempts={node.attempt_count}{detail}",
                               file=out)
        if progress is not None:
            progress.show(count_nodes(nodes, total), time.monotonic() - started)
        if execution["status"] in _TERMINAL:
            if progress is not None:
                progress.clear()
            return {
                "execution_id": execution_id,
                "dag_id": execution["dag_id"],
                "status": execution["status"],
                "error": execution["error"],
                "provenance_chain_hash": execution["provenance_chain_hash"],
                "chain_valid": execution["chain_valid"],
                "nodes": {node.node_id: {"status": node.status, "attempt_count": node.attempt_count,
                                         "error": node.error} for node in nodes},
            }
        if time.monotonic() > deadline:
            raise ExecutionError(
                f"execution {execution_id} did not finish within {timeout:g}s; it goes on, "
                f"check it with GET /executions/{execution_id}",
                execution_id=execution_id,
            )
        time.sleep(poll_interval)


def _sink_outputs(db: Database, execution_id: str, dag: Dag) -> dict[str, Any]:
    """Return the verified outputs of the DAG's sink nodes; a checkpoint that fails its hash raises."""
    return execution_outputs(db, execution_id, sorted(dag.sinks()))


def _print_summary(summary: dict[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(summary, indent=2, sort_keys=True))
        return
    click.echo(f"status: {summary['status']}")
    if summary["error"]:
        click.echo(f"error: {summary['error']}")
    for node_id, outputs in sorted(summary["outputs"].items()):
        click.echo(f"output of {node_id}:")
        click.echo(json.dumps(outputs, indent=2, sort_keys=True))
    click.echo(f"provenance_chain_hash: {summary['provenance_chain_hash']}")
    click.echo(f"chain_valid: {'true' if summary['chain_valid'] else 'false'}")


def resume_execution_id(
    settings: Settings,
    execution_id: str,
    *,
    rerun_corrupted: bool = False,
    input_file: Path | None = None,
    agent_modules: Sequence[str] = (),
    wait: bool = True,
    timeout: float = 3600.0,
    as_json: bool = False,
) -> dict[str, Any]:
    """Resume an execution, print the per-node plan, and wait for it to end when asked."""
    from orchestrator.resume import resume_execution
    from workers.app import create_celery_app, runtime_of
    from workers.dispatch import send_follow_up
    from workers.embedded import run_with_embedded_worker

    import_agent_modules([*settings.agent_modules, *agent_modules])
    options: dict[str, Any] = {"rerun_corrupted": rerun_corrupted}
    if input_file is not None:
        options["input_data"] = load_input_file(input_file)
    app = create_celery_app(settings)
    runtime = runtime_of(app)
    out = sys.stderr if as_json else sys.stdout

    def drive(celery_app: Any) -> dict[str, Any]:
        report, follow_up = resume_execution(
            runtime.scheduler, execution_id,
            default_execution_timeout_seconds=settings.execution_timeout_seconds, **options,
        )
        send_follow_up(celery_app, follow_up)
        for decision in report.decisions:
            click.echo(f"  {decision.action:<4} {decision.node_id}  {decision.reason}", file=out)
        click.echo(f"resumed execution {execution_id}: {len(report.nodes_skipped)} node(s) reused, "
                   f"{len(report.nodes_remaining)} to run", file=out)
        summary: dict[str, Any] = {"resume": report.to_dict(), "execution_id": execution_id, "status": report.status}
        if report.nodes_remaining or follow_up.finalize:
            if settings.embedded or wait:
                summary.update(wait_for_execution(runtime.db, execution_id, timeout=timeout, out=out))
        return summary

    if settings.embedded:
        summary = run_with_embedded_worker(app, drive, concurrency=settings.worker_concurrency)
    else:
        summary = drive(app)
    if as_json:
        click.echo(json.dumps(summary, indent=2, sort_keys=True))
    elif "provenance_chain_hash" in summary:
        click.echo(f"status: {summary['status']}")
        if summary.get("error"):
            click.echo(f"error: {summary['error']}")
        click.echo(f"provenance_chain_hash: {summary['provenance_chain_hash']}")
        click.echo(f"chain_valid: {'true' if summary['chain_valid'] else 'false'}")
    return summary
