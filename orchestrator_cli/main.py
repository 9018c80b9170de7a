"""The ``orchestrator`` command: run DAGs, serve the API, run workers and beat, apply retention, check for stuck
executions, migrate."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import click

from orchestrator.errors import DagValidationError, JsonDomainError, OrchestratorError
from orchestrator.retention import DEFAULT_BATCH_SIZE, MAX_BATCH_SIZE
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
@click.argument("execution_id")
@click.option("--rerun-corrupted", is_flag=True,
              help="Keep corrupted checkpoints aside as evidence and run those nodes again.")
@click.option("--input", "input_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="JSON file with new input data; nodes whose inputs change run again.")
@click.option("--agents", "agent_modules", multiple=True, metavar="MODULE_OR_FILE",
              help="Import this agent module (dotted name or .py path) too; repeatable.")
@click.option("--wait/--no-wait", default=True, show_default=True,
              help="Wait for the execution to end (embedded mode always waits).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@click.option("--timeout", type=float, default=3600.0, show_default=True, help="Seconds to wait.")
def resume(execution_id: str, rerun_corrupted: bool, input_file: Path | None, agent_modules: tuple[str, ...],
           wait: bool, as_json: bool, timeout: float) -> None:
    """Resume EXECUTION_ID from its verified checkpoints."""
    from orchestrator_cli.running import resume_execution_id

    settings = _settings()
    try:
        summary = resume_execution_id(settings, execution_id, rerun_corrupted=rerun_corrupted, input_file=input_file,
                                      agent_modules=agent_modules, wait=wait, timeout=timeout, as_json=as_json)
    except (OrchestratorError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    if summary.get("status") in {"failed", "cancelled"} or summary.get("chain_valid") is False:
        sys.exit(1)


@main.command()
@click.argument("execution_id")
def cancel(execution_id: str) -> None:
    """Cancel EXECUTION_ID and revoke its queued and running node tasks."""
    from orchestrator.resume import cancel_execution
    from workers.app import create_celery_app, runtime_of

    settings = _settings()
    app = create_celery_app(settings)
    try:
        report = cancel_execution(runtime_of(app).scheduler, execution_id)
    except OrchestratorError as exc:
        raise click.ClickException(str(exc)) from exc
    if report.revoke_task_ids and not settings.embedded:
        app.control.revoke(report.revoke_task_ids, terminate=True, signal="SIGTERM")
    click.echo(f"execution {execution_id} cancelled (was {report.previous_status}); "
               f"{len(report.revoke_task_ids)} node task(s) revoked, {len(report.nodes_completed)} completed node(s) kept")


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


@main.command()
@click.option("--loglevel", default=None, help="Log level (default: GL_ORCHESTRATOR_LOG_LEVEL).")
@click.option("--schedule", "schedule_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="File where beat records when each periodic task last ran "
                   "(default: GL_ORCHESTRATOR_HOME/celerybeat-schedule).")
def beat(loglevel: str | None, schedule_file: Path | None) -> None:
    """Run Celery beat, which sends retention, the stuck-execution check and the integrity sweep to the workers.

    Run one beat per deployment. Each beat sends every scheduled task, so a
    second beat doubles the passes and checks, which is harmless but wasted
    work. The intervals are GL_ORCHESTRATOR_RETENTION_INTERVAL_SECONDS,
    GL_ORCHESTRATOR_STUCK_CHECK_INTERVAL_SECONDS and
    GL_ORCHESTRATOR_INTEGRITY_SWEEP_INTERVAL_SECONDS.
    """
    from orchestrator.logs import configure_logging
    from workers.app import create_celery_app

    settings = _settings()
    level = (loglevel or settings.log_level).upper()
    configure_logging(level, settings.log_format)
    if settings.embedded:
        logger.warning("no GL_ORCHESTRATOR_BROKER_URL or DATABASE_URL set; beat sends to the embedded "
                       "filesystem broker under %s, which only a running `orchestrator worker` serves", settings.home)
    schedule = schedule_file or settings.home / "celerybeat-schedule"
    schedule.parent.mkdir(parents=True, exist_ok=True)
    app = create_celery_app(settings)
    logger.info("beat starting schedule=%s retention_interval_seconds=%g stuck_check_interval_seconds=%g "
                "integrity_sweep_interval_seconds=%g", schedule, settings.retention_interval_seconds,
                settings.stuck_check_interval_seconds, settings.integrity_sweep_interval_seconds)
    app.Beat(loglevel=level, schedule=str(schedule)).run()


@main.group()
def retention() -> None:
    """Remove checkpoint outputs of executions that finished long ago."""


@retention.command("run")
@click.option("--hours", type=float, default=None,
              help="Retention window in hours (default: GL_ORCHESTRATOR_CHECKPOINT_RETENTION_HOURS).")
@click.option("--batch-size", type=click.IntRange(1, MAX_BATCH_SIZE), default=DEFAULT_BATCH_SIZE, show_default=True,
              help="Checkpoints changed per transaction.")
@click.option("--json", "as_json", is_flag=True, help="Print the counts as one JSON object.")
def retention_run(hours: float | None, batch_size: int, as_json: bool) -> None:
    """Run one retention pass now and print what it removed.

    The pass removes the outputs of every checkpoint of each execution that
    completed, failed or was cancelled more than the retention window ago. It
    keeps the hashes and provenance records, so the chain still verifies.
    Exits with status 1 when the removal failed for some checkpoints.
    """
    from sqlalchemy.exc import SQLAlchemyError

    from orchestrator.checkpoints import checkpoint_store_from_settings
    from orchestrator.database import Database
    from orchestrator.logs import configure_logging
    from orchestrator.retention import remove_expired_payloads

    settings = _settings()
    configure_logging(settings.log_level, settings.log_format)
    window = settings.checkpoint_retention_hours if hours is None else hours
    database = Database(settings.database_url, checkpoints=checkpoint_store_from_settings(settings))
    try:
        result = remove_expired_payloads(database, window, batch_size=batch_size)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise click.ClickException(
            f"checkpoint retention failed: {reason}; check GL_ORCHESTRATOR_DATABASE_URL, "
            "and run `orchestrator db upgrade` if the tables are missing"
        ) from exc
    finally:
        database.dispose()

    if as_json:
        _print_json(result.to_dict())
    else:
        click.echo(_retention_summary(result.to_dict()))
    if result.errors:
        click.echo(f"removal failed for {result.errors} checkpoints; see the log for their execution ids", err=True)
        sys.exit(1)


@main.group()
def stuck() -> None:
    """Find executions past their deadline or on lost workers, and mark them failed."""


@stuck.command("check")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
def stuck_check(as_json: bool) -> None:
    """Run one stuck-execution check now and print each execution it marked failed.

    An execution is stuck when it is past its deadline, or when a node runs in
    a worker whose heartbeat is older than GL_ORCHESTRATOR_WORKER_LOST_AFTER_SECONDS.
    Resume a marked execution with `orchestrator resume EXECUTION_ID`.
    """
    from sqlalchemy.exc import SQLAlchemyError

    from orchestrator.agents import AgentRegistry
    from orchestrator.database import Database
    from orchestrator.logs import configure_logging
    from orchestrator.scheduler import Scheduler
    from orchestrator.stuck import detect_stuck_executions

    settings = _settings()
    configure_logging(settings.log_level, settings.log_format)
    database = Database(settings.database_url)
    try:
        # The check reads DAG documents from the database and calls no agent,
        # so an empty registry will do.
        result = detect_stuck_executions(
            Scheduler(database, AgentRegistry()),
            worker_lost_after_seconds=settings.worker_lost_after_seconds,
            default_execution_timeout_seconds=settings.execution_timeout_seconds,
        )
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise click.ClickException(
            f"stuck execution check failed: {reason}; check GL_ORCHESTRATOR_DATABASE_URL, "
            "and run `orchestrator db upgrade` if the tables are missing"
        ) from exc
    finally:
        database.dispose()

    if as_json:
        _print_json(result.to_dict())
        return
    for execution in result.marked:
        click.echo(f"execution {execution.execution_id} of DAG {execution.dag_id!r} marked failed "
                   f"(was {execution.previous_status}): {execution.error}")
    if not result.marked:
        click.echo(f"no stuck executions among {result.checked} pending or running")
    else:
        click.echo(f"{len(result.marked)} of {result.checked} pending or running executions marked failed; "
                   "resume them with `orchestrator resume EXECUTION_ID`")
    if result.errors:
        click.echo(f"marking failed for {result.errors} executions; see the log for their execution ids", err=True)
        sys.exit(1)


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


@main.group()
def keys() -> None:
    """Create and show the Ed25519 keys that sign chain heads."""


@keys.command("generate")
@click.option("--out", "out_file", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="File to write the new private key to (PEM, PKCS#8, mode 0600). An existing file is never "
                   "overwritten.")
def keys_generate(out_file: Path) -> None:
    """Write a new Ed25519 signing key and print its key id and public key.

    Set GL_ORCHESTRATOR_SIGNING_KEY_FILE to the file to sign with the key.
    When you rotate to a newer key, add the printed public key line to
    GL_ORCHESTRATOR_TRUSTED_KEYS_FILE so that signatures made with this key
    still verify.
    """
    from orchestrator.signing import encode_public_key, key_id_for, write_private_key

    try:
        public_key = write_private_key(out_file)
    except FileExistsError:
        raise click.ClickException(
            f"{out_file} already exists and was left unchanged; choose another --out path"
        ) from None
    except OSError as exc:
        raise click.ClickException(f"cannot write the key to {out_file}: {exc.strerror or exc}") from exc
    key_id = key_id_for(public_key)
    click.echo(f"key id: {key_id}")
    click.echo(f"private key written to {out_file} (mode 0600); set GL_ORCHESTRATOR_SIGNING_KEY_FILE={out_file}")
    click.echo("public key line for GL_ORCHESTRATOR_TRUSTED_KEYS_FILE, to add when this key is retired:")
    click.echo(f"{encode_public_key(public_key)}  # {key_id}")


@keys.command("show")
@click.option("--json", "as_json", is_flag=True, help="Print the keys as one JSON object.")
def keys_show(as_json: bool) -> None:
    """Print the configured signing key id and every public key that verification trusts."""
    from orchestrator.signing import signing_keys_from_settings

    settings = _settings()
    try:
        description = signing_keys_from_settings(settings).describe()
    except OrchestratorError as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        _print_json(description)
        return
    if description["current_key_id"] is None:
        click.echo("no signing key: GL_ORCHESTRATOR_SIGNING_KEY_FILE is not set, so executions are finalized unsigned")
    else:
        click.echo(f"signing key id: {description['current_key_id']}")
    if not description["keys"]:
        click.echo("no trusted public keys")
        return
    click.echo("trusted public keys:")
    for key in description["keys"]:
        label = f"{key['key_id']} (current)" if key["current"] else key["key_id"]
        click.echo(f"{key['public_key']}  # {label}")


def _retention_summary(counts: dict[str, Any]) -> str:
    window = f"retention window {counts['retention_hours']:g} h"
    if counts["cutoff"] is None:
        return f"no checkpoint outputs to remove: the {window} reaches back before year 1"
    if counts["checkpoints"] == 0 and counts["errors"] == 0:
        return (f"no checkpoint outputs to remove: no execution that finished before {counts['cutoff']} "
                f"has outputs left ({window})")
    return (f"removed the outputs of {counts['checkpoints']} checkpoints of {counts['executions']} executions, "
            f"{counts['bytes_freed']} bytes ({window}, cutoff {counts['cutoff']})")


def _print_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=True))


def _register_audit_commands() -> None:
    from orchestrator_cli.audit_commands import export, integrity, verify

    main.add_command(export)
    main.add_command(verify)
    main.add_command(integrity)

    from orchestrator_cli.watch_commands import status, watch

    main.add_command(watch)
    main.add_command(status)


_register_audit_commands()


def _register_replay_commands() -> None:
    from orchestrator_cli.replay_commands import diff, replay

    main.add_command(diff)
    main.add_command(replay)


_register_replay_commands()


def _register_stack_commands() -> None:
    from orchestrator_cli.stack_commands import flower, stack

    main.add_command(stack)
    main.add_command(flower)


_register_stack_commands()


if __name__ == "__main__":
    main()
