"""The one settings object, read from ``GL_ORCHESTRATOR_*`` environment variables.

Entry points (the CLI, the API app factory, the Celery app) call
:func:`load_settings` once and pass the result down. With neither
``GL_ORCHESTRATOR_DATABASE_URL`` nor ``GL_ORCHESTRATOR_BROKER_URL`` set, the
settings describe embedded mode: a SQLite file and a filesystem broker under
``GL_ORCHESTRATOR_HOME``, served by an in-process worker.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.dag import (
    DEFAULT_EXECUTION_TIMEOUT_SECONDS,
    MAX_EXECUTION_TIMEOUT_SECONDS,
    MIN_EXECUTION_TIMEOUT_SECONDS,
)
from orchestrator.errors import SettingsError
from orchestrator.signing import load_signing_keys

__all__ = ["CHECKPOINT_STRATEGIES", "Settings", "load_settings"]

ENV_PREFIX = "GL_ORCHESTRATOR_"
CHECKPOINT_STRATEGIES = frozenset({"memory", "file", "database"})
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


@dataclass(frozen=True)
class Settings:
    """Validated configuration; every field's variable is ``GL_ORCHESTRATOR_<FIELD>``."""

    home: Path
    database_url: str
    broker_url: str
    result_backend: str | None
    embedded: bool
    agent_modules: tuple[str, ...] = ()
    accept_new_executions: bool = True
    checkpoint_retention_hours: float = 168.0
    retention_interval_seconds: float = 3600.0
    checkpoint_strategy: str = "database"
    checkpoint_dir: Path | None = None
    api_token_hashes: frozenset[str] = field(default_factory=frozenset)
    max_concurrent_executions: int = 0
    max_request_bytes: int = 10 * 1024 * 1024
    default_queue: str = "gl-orchestrator"
    worker_concurrency: int = 2
    hard_timeout_grace_seconds: float = 10.0
    # Deadline of executions whose DAG sets no execution_timeout_seconds; 0 sets none.
    execution_timeout_seconds: float = DEFAULT_EXECUTION_TIMEOUT_SECONDS
    heartbeat_interval_seconds: float = 15.0
    worker_lost_after_seconds: float = 120.0
    stuck_check_interval_seconds: float = 60.0
    # The integrity sweep re-verifies finalized executions that ended within
    # the window; the chain validity gauge counts the same executions.
    integrity_sweep_interval_seconds: float = 3600.0
    integrity_window_hours: float = 168.0
    # Nodes queued longer than this get their message sent again by the
    # stuck-execution check, in case the broker lost it.
    requeue_after_seconds: float = 300.0
    # How long an unacknowledged message may wait before a consuming worker
    # puts it back on its queue (kombu's Redis transport checks every 10 s).
    # It must exceed the longest node run plus its retry countdown.
    broker_visibility_timeout_seconds: float = 6 * 3600.0
    log_format: str = "text"
    log_level: str = "INFO"
    require_services: bool = False
    # PEM file of the Ed25519 key that signs chain heads. Without one, executions are finalized unsigned.
    signing_key_file: Path | None = None
    # File of earlier public keys that verification still trusts (format in orchestrator.signing).
    trusted_keys_file: Path | None = None
    # When true, a finalized execution without a signature fails verification,
    # so stripping the signature columns cannot pass for "finalized without a key".
    require_signed_chains: bool = False

    @property
    def broker_folder(self) -> Path:
        """Folder of the embedded filesystem broker."""
        return self.home / "broker"


def _parse_bool(name: str, raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise SettingsError(f"{ENV_PREFIX}{name}={raw!r} is not a boolean; use true or false")


def _parse_number(name: str, raw: str, *, minimum: float = 0.0) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{ENV_PREFIX}{name}={raw!r} is not a number") from None
    if not math.isfinite(value):
        raise SettingsError(f"{ENV_PREFIX}{name}={raw!r} is not a finite number")
    if value < minimum:
        raise SettingsError(f"{ENV_PREFIX}{name}={raw!r} must be at least {minimum:g}")
    return value


def _parse_positive(name: str, raw: str) -> float:
    value = _parse_number(name, raw)
    if value <= 0:
        raise SettingsError(f"{ENV_PREFIX}{name}={raw!r} must be greater than 0")
    return value


# 100 years: a longer window would reach back before year 1 on some clocks.
MAX_INTEGRITY_WINDOW_HOURS = 876000.0


def _parse_window_hours(raw: str) -> float:
    value = _parse_positive("INTEGRITY_WINDOW_HOURS", raw)
    if value > MAX_INTEGRITY_WINDOW_HOURS:
        raise SettingsError(
            f"{ENV_PREFIX}INTEGRITY_WINDOW_HOURS={raw!r} must be at most {MAX_INTEGRITY_WINDOW_HOURS:.0f} (100 years)"
        )
    return value


def _parse_execution_timeout(raw: str) -> float:
    """Parse the default execution timeout: 0 for no deadline, else the range a DAG may set."""
    value = _parse_number("EXECUTION_TIMEOUT_SECONDS", raw)
    if value != 0 and not MIN_EXECUTION_TIMEOUT_SECONDS <= value <= MAX_EXECUTION_TIMEOUT_SECONDS:
        raise SettingsError(
            f"{ENV_PREFIX}EXECUTION_TIMEOUT_SECONDS={raw!r} must be 0 (no deadline) or from "
            f"{MIN_EXECUTION_TIMEOUT_SECONDS:g} to {MAX_EXECUTION_TIMEOUT_SECONDS:.0f} seconds (30 days)"
        )
    return value


def _check_worker_lost_after(heartbeat_interval: float, lost_after: float) -> None:
    # A worker that beats on time must never look lost between two beats.
    if lost_after <= heartbeat_interval:
        raise SettingsError(
            f"{ENV_PREFIX}WORKER_LOST_AFTER_SECONDS={lost_after:g} must be greater than "
            f"{ENV_PREFIX}HEARTBEAT_INTERVAL_SECONDS={heartbeat_interval:g}; use several intervals, "
            "such as the defaults 120 and 15"
        )


def _hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _load_token_hashes(env: Mapping[str, str]) -> frozenset[str]:
    """Collect API tokens from GL_ORCHESTRATOR_API_TOKENS and GL_ORCHESTRATOR_API_TOKENS_FILE.

    Only SHA-256 digests are kept, so the settings object never contains a token.
    A line of the file contains either a token or ``sha256:<hex digest>``.
    """
    entries: list[str] = []
    inline = env.get(f"{ENV_PREFIX}API_TOKENS", "")
    entries.extend(part.strip() for part in inline.split(","))
    tokens_file = env.get(f"{ENV_PREFIX}API_TOKENS_FILE")
    if tokens_file:
        path = Path(tokens_file)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise SettingsError(
                f"{ENV_PREFIX}API_TOKENS_FILE={tokens_file!r} cannot be read: {exc.strerror}"
            ) from exc
        entries.extend(line.strip() for line in text.splitlines() if not line.strip().startswith("#"))
    hashes = set()
    for entry in entries:
        if not entry:
            continue
        if entry.startswith("sha256:"):
            digest = entry[len("sha256:"):].lower()
            if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
                raise SettingsError("an API token entry 'sha256:...' must hold 64 hex digits")
            hashes.add(digest)
        else:
            hashes.add(_hash_token(entry))
    return frozenset(hashes)


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Read and validate settings from ``env`` (default: ``os.environ``)."""
    env = os.environ if env is None else env

    def get(name: str, default: str | None = None) -> str | None:
        value = env.get(ENV_PREFIX + name)
        return default if value is None or value == "" else value

    home = Path(get("HOME") or Path.home() / ".gl-orchestrator").expanduser()
    database_url = get("DATABASE_URL")
    broker_url = get("BROKER_URL")
    embedded = database_url is None and broker_url is None
    if database_url is None:
        database_url = f"sqlite:///{home / 'orchestrator.db'}"
    if broker_url is None:
        broker_url = "glfs://localhost/" if embedded else "redis://127.0.0.1:6379/0"

    strategy = (get("CHECKPOINT_STRATEGY", "database") or "database").lower()
    if strategy not in CHECKPOINT_STRATEGIES:
        raise SettingsError(
            f"{ENV_PREFIX}CHECKPOINT_STRATEGY={strategy!r} is not one of {sorted(CHECKPOINT_STRATEGIES)}"
        )
    checkpoint_dir = get("CHECKPOINT_DIR")
    modules = tuple(part.strip() for part in (get("AGENT_MODULES", "") or "").split(",") if part.strip())
    log_format = (get("LOG_FORMAT", "text") or "text").lower()
    if log_format not in {"text", "json"}:
        raise SettingsError(f"{ENV_PREFIX}LOG_FORMAT={log_format!r} must be text or json")
    heartbeat_interval = _parse_positive("HEARTBEAT_INTERVAL_SECONDS", get("HEARTBEAT_INTERVAL_SECONDS", "15") or "15")
    lost_after = _parse_positive("WORKER_LOST_AFTER_SECONDS", get("WORKER_LOST_AFTER_SECONDS", "120") or "120")
    _check_worker_lost_after(heartbeat_interval, lost_after)
    signing_key_file = get("SIGNING_KEY_FILE")
    trusted_keys_file = get("TRUSTED_KEYS_FILE")
    signing_key_path = Path(signing_key_file).expanduser() if signing_key_file else None
    trusted_keys_path = Path(trusted_keys_file).expanduser() if trusted_keys_file else None
    # Loading the keys here makes a bad key file stop start-up instead of the first finalization.
    load_signing_keys(signing_key_path, trusted_keys_path)

    return Settings(
        home=home,
        database_url=database_url,
        broker_url=broker_url,
        result_backend=get("RESULT_BACKEND"),
        embedded=embedded,
        agent_modules=modules,
        accept_new_executions=_parse_bool("ACCEPT_NEW_EXECUTIONS", get("ACCEPT_NEW_EXECUTIONS", "true") or "true"),
        checkpoint_retention_hours=_parse_number(
            "CHECKPOINT_RETENTION_HOURS", get("CHECKPOINT_RETENTION_HOURS", "168") or "168"
        ),
        retention_interval_seconds=_parse_positive(
            "RETENTION_INTERVAL_SECONDS", get("RETENTION_INTERVAL_SECONDS", "3600") or "3600"
        ),
        checkpoint_strategy=strategy,
        checkpoint_dir=Path(checkpoint_dir) if checkpoint_dir else None,
        api_token_hashes=_load_token_hashes(env),
        max_concurrent_executions=int(
            _parse_number("MAX_CONCURRENT_EXECUTIONS", get("MAX_CONCURRENT_EXECUTIONS", "0") or "0")
        ),
        max_request_bytes=int(
            _parse_number("MAX_REQUEST_BYTES", get("MAX_REQUEST_BYTES", str(10 * 1024 * 1024)) or "0", minimum=1024)
        ),
        default_queue=get("QUEUE", "gl-orchestrator") or "gl-orchestrator",
        worker_concurrency=int(_parse_number("WORKER_CONCURRENCY", get("WORKER_CONCURRENCY", "2") or "2", minimum=1)),
        hard_timeout_grace_seconds=_parse_number(
            "HARD_TIMEOUT_GRACE_SECONDS", get("HARD_TIMEOUT_GRACE_SECONDS", "10") or "10", minimum=1
        ),
        execution_timeout_seconds=_parse_execution_timeout(
            get("EXECUTION_TIMEOUT_SECONDS") or f"{DEFAULT_EXECUTION_TIMEOUT_SECONDS:g}"
        ),
        heartbeat_interval_seconds=heartbeat_interval,
        worker_lost_after_seconds=lost_after,
        stuck_check_interval_seconds=_parse_positive(
            "STUCK_CHECK_INTERVAL_SECONDS", get("STUCK_CHECK_INTERVAL_SECONDS", "60") or "60"
        ),
        integrity_sweep_interval_seconds=_parse_positive(
            "INTEGRITY_SWEEP_INTERVAL_SECONDS", get("INTEGRITY_SWEEP_INTERVAL_SECONDS", "3600") or "3600"
        ),
        integrity_window_hours=_parse_window_hours(get("INTEGRITY_WINDOW_HOURS", "168") or "168"),
        requeue_after_seconds=_parse_positive(
            "REQUEUE_AFTER_SECONDS", get("REQUEUE_AFTER_SECONDS", "300") or "300"
        ),
        broker_visibility_timeout_seconds=_parse_number(
            "BROKER_VISIBILITY_TIMEOUT_SECONDS", get("BROKER_VISIBILITY_TIMEOUT_SECONDS", "21600") or "21600",
            minimum=10,
        ),
        log_format=log_format,
        log_level=(get("LOG_LEVEL", "INFO") or "INFO").upper(),
        require_services=_parse_bool("REQUIRE_SERVICES", get("REQUIRE_SERVICES", "false") or "false"),
        signing_key_file=signing_key_path,
        trusted_keys_file=trusted_keys_path,
        require_signed_chains=_parse_bool(
            "REQUIRE_SIGNED_CHAINS", get("REQUIRE_SIGNED_CHAINS", "false") or "false"),
    )
