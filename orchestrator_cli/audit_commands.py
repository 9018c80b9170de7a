"""The ``orchestrator export``, ``verify`` and ``integrity`` commands."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from orchestrator.errors import OrchestratorError
from orchestrator.settings import MAX_INTEGRITY_WINDOW_HOURS, load_settings

if TYPE_CHECKING:
    from orchestrator.database import Database
    from orchestrator.settings import Settings

__all__ = ["export", "integrity", "verify"]


def _settings() -> Settings:
    try:
        return load_settings()
    except OrchestratorError as exc:
        raise click.ClickException(str(exc)) from exc


def _database(settings: Settings) -> Database:
    from orchestrator.checkpoints import checkpoint_store_from_settings
    from orchestrator.database import Database

    return Database(settings.database_url, checkpoints=checkpoint_store_from_settings(settings))


@click.command()
@click.argument("execution_id")
@click.option("-o", "--output", "output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="File to write the bundle to (default: standard output).")
@click.option("--force", is_flag=True, help="Overwrite the output file if it exists.")
def export(execution_id: str, output: Path | None, force: bool) -> None:
    """Write the audit bundle of EXECUTION_ID, for `orchestrator verify BUNDLE` or the offline verifier."""
    from sqlalchemy.exc import SQLAlchemyError

    from orchestrator.audit import build_bundle
    from orchestrator.signing import signing_keys_from_settings

    settings = _settings()
    if output is not None and output.exists() and not force:
        raise click.ClickException(f"{output} exists; choose another file or pass --force to overwrite it")
    database = _database(settings)
    try:
        bundle = build_bundle(database, execution_id, signing_keys=signing_keys_from_settings(settings))
    except OrchestratorError as exc:
        raise click.ClickException(str(exc)) from exc
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise click.ClickException(f"export failed: {reason}; check GL_ORCHESTRATOR_DATABASE_URL") from exc
    finally:
        database.dispose()

    text = json.dumps(bundle, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    if output is None:
        click.echo(text, nl=False)
        return
    output.write_text(text, encoding="utf-8")
    click.echo(f"audit bundle of execution {execution_id} written to {output} ({len(bundle['nodes'])} nodes)",
               err=True)


@click.command()
@click.argument("bundle", required=False, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--execution", "execution_id", metavar="EXECUTION_ID",
              help="Verify a stored execution through the database instead of a bundle file.")
@click.option("--public-key", "public_keys", multiple=True, metavar="KEY",
              help="Trusted Ed25519 public key (base64, or a file holding it) for a bundle's signature; repeatable.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
def verify(bundle: Path | None, execution_id: str | None, public_keys: tuple[str, ...], as_json: bool) -> None:
    """Recompute every hash of a BUNDLE file, or of a stored execution with --execution.

    Exits with status 0 when the chain verifies, 1 when it does not.
    """
    if (bundle is None) == (execution_id is None):
        raise click.UsageError("give either a BUNDLE file or --execution EXECUTION_ID, not both or neither")
    report = _verify_stored(execution_id) if execution_id is not None else _verify_file(bundle, public_keys)

    # A bundle's report also has "valid", which adds the signature's verdict
    # to the chain's; a stored execution's chain_valid already includes it.
    valid = report.get("valid", report["chain_valid"])
    if as_json:
        click.echo(json.dumps(report, indent=2, sort_keys=True))
    else:
        _print_report(report, valid)
    sys.exit(0 if valid else 1)


def _verify_stored(execution_id: str) -> dict[str, Any]:
    from orchestrator.provenance import verify_execution
    from orchestrator.signing import signing_keys_from_settings

    settings = _settings()
    database = _database(settings)
    try:
        return verify_execution(database, execution_id, signing_keys=signing_keys_from_settings(settings)).to_dict()
    except OrchestratorError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        database.dispose()


def _verify_file(bundle: Path | None, public_keys: tuple[str, ...]) -> dict[str, Any]:
    from verifier import gl_audit_verify

    assert bundle is not None
    try:
        # The verifier's own reader rejects duplicate keys, NaN and excessive nesting.
        document = gl_audit_verify.load_bundle(str(bundle))
    except gl_audit_verify.BundleFormatError as exc:
        _unreadable(f"{bundle} is not a readable JSON audit bundle: {exc}")
    try:
        trusted = [gl_audit_verify.load_public_key(key) for key in public_keys]
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    settings = _settings()
    if not trusted:
        # Without --public-key, pin the keys this host trusts, as verification through the database does.
        trusted = _configured_public_keys(settings)
    try:
        report: dict[str, Any] = gl_audit_verify.verify_bundle(document, trusted or None)
    except (gl_audit_verify.BundleFormatError, ValueError) as exc:
        _unreadable(f"{bundle} is not a valid audit bundle: {exc}")
    if settings.require_signed_chains and report["signature"]["status"] == "unsigned":
        report["valid"] = False
        report["problems"].append(
            "signature missing: the bundle is unsigned and GL_ORCHESTRATOR_REQUIRE_SIGNED_CHAINS is true")
    return report


def _unreadable(message: str) -> NoReturn:
    """Exit with status 2, as the offline verifier does, so that 1 always means a failing chain."""
    click.echo(f"Error: {message}", err=True)
    sys.exit(2)


def _configured_public_keys(settings: Settings) -> list[bytes]:
    import base64

    from orchestrator.signing import encode_public_key, signing_keys_from_settings

    keys = signing_keys_from_settings(settings)
    trusted = []
    for key_id in keys.trusted_key_ids:
        public_key = keys.public_key(key_id)
        if public_key is not None:
            trusted.append(base64.b64decode(encode_public_key(public_key)))
    return trusted


def _print_report(report: dict[str, Any], valid: bool) -> None:
    for node in report["nodes"]:
        if node["valid"]:
            click.echo(f"ok       {node['node_id']}")
        else:
            click.echo(f"INVALID  {node['node_id']}: {'; '.join(node['reasons'])}")
        for note in node.get("notes") or []:
            click.echo(f"         note: {note}")
    for problem in report.get("problems") or []:
        click.echo(f"problem: {problem}")
    signature = report.get("signature")
    if isinstance(signature, dict):
        click.echo(f"signature: {signature.get('status')}" + (f" ({signature['detail']})" if signature.get("detail") else ""))
    verdict = "valid" if valid else "INVALID"
    click.echo(f"provenance_chain_hash: {report.get('provenance_chain_hash')}")
    click.echo(f"chain {verdict}")


@click.group()
def integrity() -> None:
    """Verify finished executions again and mark regenerated ones superseded."""


@integrity.command("sweep")
@click.option("--window-hours", type=float, default=None,
              help="Verify executions that ended within this many hours (default: GL_ORCHESTRATOR_INTEGRITY_WINDOW_HOURS).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
def integrity_sweep(window_hours: float | None, as_json: bool) -> None:
    """Run one integrity sweep now, as `orchestrator beat` schedules it, and list broken executions.

    Exits with status 1 when a broken chain is found.
    """
    from functools import partial

    from orchestrator.integrity import sweep_integrity
    from orchestrator.logs import configure_logging
    from orchestrator.provenance import verify_execution
    from orchestrator.signing import signing_keys_from_settings

    settings = _settings()
    configure_logging(settings.log_level, settings.log_format)
    window = settings.integrity_window_hours if window_hours is None else window_hours
    if not 0 < window <= MAX_INTEGRITY_WINDOW_HOURS:  # also false for nan
        raise click.BadParameter(f"{window_hours!r} must be greater than 0 and at most "
                                 f"{MAX_INTEGRITY_WINDOW_HOURS:.0f}", param_hint="--window-hours")
    database = _database(settings)
    try:
        keys = signing_keys_from_settings(settings)
        result = sweep_integrity(database, window, verify=partial(verify_execution, signing_keys=keys))
    finally:
        database.dispose()

    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2, sort_keys=True))
    else:
        click.echo(f"verified {result.verified} executions that ended within {window:g} hours; "
                   f"{len(result.broken)} broken, {result.errors} could not be checked")
        for execution_id in result.broken:
            click.echo(f"BROKEN  {execution_id}  (see `orchestrator verify --execution {execution_id}`)")
    sys.exit(1 if result.broken or result.errors else 0)


@integrity.command("supersede")
@click.argument("execution_id")
@click.option("--by", "superseded_by", required=True, metavar="NEW_EXECUTION_ID",
              help="The execution that regenerated EXECUTION_ID.")
@click.option("--reason", default="regenerated after a broken provenance chain", show_default=True,
              help="Why EXECUTION_ID is superseded; stored with the mark.")
def integrity_supersede(execution_id: str, superseded_by: str, reason: str) -> None:
    """Mark EXECUTION_ID superseded by NEW_EXECUTION_ID; its records stay unchanged as evidence.

    The integrity sweep and the chain validity gauge then skip EXECUTION_ID.
    """
    from orchestrator.integrity import supersede

    if not reason.strip() or len(reason) > 2000:
        raise click.BadParameter("must be a non-empty text of at most 2000 characters", param_hint="--reason")
    settings = _settings()
    database = _database(settings)
    try:
        marked = supersede(database, execution_id, superseded_by, reason)
    except OrchestratorError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        database.dispose()
    click.echo(f"execution {execution_id} superseded by {marked['superseded_by']} at {marked['superseded_at']}")
