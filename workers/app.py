"""The Celery app, configured from the orchestrator's settings."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from celery import Celery

from orchestrator.agents import AgentRegistry, default_registry, import_agent_modules
from orchestrator.checkpoints import checkpoint_store_from_settings
from orchestrator.database import Database
from orchestrator.scheduler import Scheduler
from orchestrator.signing import SigningKeys, signing_keys_from_settings
from workers import filesystem_broker

if TYPE_CHECKING:
    from orchestrator.settings import Settings

__all__ = [
    "FINALIZE_TASK",
    "INTEGRITY_SCHEDULE_ENTRY",
    "INTEGRITY_TASK",
    "NODE_TASK",
    "RETENTION_SCHEDULE_ENTRY",
    "RETENTION_TASK",
    "STUCK_SCHEDULE_ENTRY",
    "STUCK_TASK",
    "WorkerRuntime",
    "create_celery_app",
    "runtime_of",
]

logger = logging.getLogger(__name__)

NODE_TASK = "gl_orchestrator.run_node"
FINALIZE_TASK = "gl_orchestrator.finalize_execution"
RETENTION_TASK = "gl_orchestrator.remove_expired_payloads"
RETENTION_SCHEDULE_ENTRY = "remove-expired-checkpoint-payloads"
STUCK_TASK = "gl_orchestrator.detect_stuck_executions"
STUCK_SCHEDULE_ENTRY = "detect-stuck-executions"
INTEGRITY_TASK = "gl_orchestrator.sweep_integrity"
INTEGRITY_SCHEDULE_ENTRY = "sweep-provenance-integrity"

@dataclass
class WorkerRuntime:
    """Per-process state of the tasks: settings, database, scheduler and signing keys."""

    settings: Settings
    db: Database
    scheduler: Scheduler
    registry: AgentRegistry
    # The finalizer signs with these, and provenance verification trusts them.
    signing_keys: SigningKeys = field(default_factory=SigningKeys)


def runtime_of(app: Celery) -> WorkerRuntime:
    runtime: WorkerRuntime = app.gl_runtime  # type: ignore[attr-defined]
    return runtime


def create_celery_app(settings: Settings, *, registry: AgentRegistry | None = None, name: str = "gl_orchestrator") -> Celery:
    """Build a Celery app with the node, finalizer and periodic tasks registered, and the beat schedule set."""
    registry = registry or default_registry
    filesystem_broker.register()
    import_agent_modules(settings.agent_modules)

    app = Celery(name, broker=settings.broker_url, backend=settings.result_backend, set_as_current=False)
    # kombu's Redis transport gives back the messages of a lost worker only
    # when a consuming worker scans for them. By default it scans about every
    # 100 s (interval 10 s, throttle 10); a throttle of 1 scans every 10 s.
    transport_options: dict[str, object] = {
        "visibility_timeout": settings.broker_visibility_timeout_seconds,
        "unacked_restore_interval": 10,
        "unacked_restore_throttle": 1,
    }
    if settings.broker_url.startswith(("glfs://", "filesystem://")):
        folder = settings.broker_folder
        folder.mkdir(parents=True, exist_ok=True)
        transport_options = {
            "data_folder_in": str(folder),
            "data_folder_out": str(folder),
            "control_folder": str(folder / "control"),
            "polling_interval": 0.02,
        }
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=settings.result_backend is None,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_queue=settings.default_queue,
        broker_transport_options=transport_options,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        worker_send_task_events=True,
        # Keep running nodes going when the broker connection drops: their
        # results go to the database, and a later duplicate is ignored.
        worker_cancel_long_running_tasks_on_connection_loss=False,
        task_send_sent_event=True,
        enable_utc=True,
        timezone="UTC",
        beat_schedule=_beat_schedule(settings),
    )
    # In embedded mode the pool's children write the payloads that the
    # driver and the other children read, so a memory store must be shared.
    store = checkpoint_store_from_settings(
        settings, share_memory=settings.embedded and settings.checkpoint_strategy == "memory")
    db = Database(settings.database_url, checkpoints=store)
    app.gl_runtime = WorkerRuntime(  # type: ignore[attr-defined]
        settings=settings,
        db=db,
        scheduler=Scheduler(db, registry, hard_timeout_grace=settings.hard_timeout_grace_seconds),
        registry=registry,
        signing_keys=signing_keys_from_settings(settings),
    )

    from workers import heartbeat, periodic, tasks

    tasks.register(app)
    periodic.register(app)
    heartbeat.connect_signals()
    return app


def _beat_schedule(settings: Settings) -> dict[str, dict[str, object]]:
    """Return the entries that ``orchestrator beat`` sends, keyed by entry name."""
    # A run still queued when the next one is due would only repeat it, so a
    # worker discards it once one interval has passed.
    retention = settings.retention_interval_seconds
    stuck = settings.stuck_check_interval_seconds
    sweep = settings.integrity_sweep_interval_seconds
    return {
        RETENTION_SCHEDULE_ENTRY: {"task": RETENTION_TASK, "schedule": retention, "options": {"expires": retention}},
        STUCK_SCHEDULE_ENTRY: {"task": STUCK_TASK, "schedule": stuck, "options": {"expires": stuck}},
        INTEGRITY_SCHEDULE_ENTRY: {"task": INTEGRITY_TASK, "schedule": sweep, "options": {"expires": sweep}},
    }
