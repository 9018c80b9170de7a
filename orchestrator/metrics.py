"""Prometheus metric definitions; names and labels are part of the contract.

The metrics live in prometheus-client's default registry. When
``PROMETHEUS_MULTIPROC_DIR`` is set before the process starts, prometheus-client
writes them to that directory, and :func:`render_latest` aggregates every
process's files, so prefork children and gunicorn workers add up.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

__all__ = [
    "ACTIVE_EXECUTIONS",
    "CHECKPOINT_OPERATIONS",
    "CHECKPOINT_SIZE_BYTES",
    "CONTENT_TYPE_LATEST",
    "DAG_EXECUTIONS",
    "DAG_EXECUTION_DURATION",
    "DAG_VALIDATION_ERRORS",
    "EXECUTIONS_PAST_DEADLINE",
    "NODE_EXECUTIONS",
    "NODE_EXECUTION_DURATION",
    "NODE_RETRIES",
    "NODE_TIMEOUTS",
    "PROVENANCE_CHAIN_LENGTH",
    "PROVENANCE_CHAIN_VALID",
    "QUEUED_EXECUTIONS",
    "render_latest",
]

# Buckets reach past every alert threshold: node latency alerts at minutes,
# execution durations at hours, and chains up to montage-2122's 2,122 nodes.
_SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600)
_BYTES_BUCKETS = (64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864)
_CHAIN_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)

CHECKPOINT_OPERATIONS = Counter(
    "gl_orchestrator_checkpoint_operations_total",
    "Checkpoint operations by operation (save, load, verify, delete) and status (success, error).",
    ["operation", "status"],
)
CHECKPOINT_SIZE_BYTES = Histogram(
    "gl_orchestrator_checkpoint_size_bytes",
    "Size of each saved checkpoint's canonical JSON outputs, in bytes.",
    buckets=_BYTES_BUCKETS,
)
# Every operation and status is exported from the start at 0. Prometheus
# computes no increase() for a series whose first scraped sample is already 1,
# so without these zeros the first checkpoint error would fire no alert.
for _operation in ("save", "load", "verify", "delete"):
    for _status in ("success", "error"):
        CHECKPOINT_OPERATIONS.labels(_operation, _status)
PROVENANCE_CHAIN_VALID = Gauge(
    "gl_orchestrator_provenance_chain_valid",
    "0 while a finalized, unsuperseded execution that ended within GL_ORCHESTRATOR_INTEGRITY_WINDOW_HOURS "
    "has a broken provenance chain, else 1; read from the database at each scrape.",
    multiprocess_mode="mostrecent",
)
PROVENANCE_CHAIN_LENGTH = Histogram(
    "gl_orchestrator_provenance_chain_length",
    "Number of node records in each verified provenance chain.",
    buckets=_CHAIN_BUCKETS,
)
DAG_EXECUTIONS = Counter(
    "gl_orchestrator_dag_executions_total",
    "Executions that reached a terminal state, by DAG and status.",
    ["dag_id", "status"],
)
DAG_EXECUTION_DURATION = Histogram(
    "gl_orchestrator_dag_execution_duration_seconds",
    "Wall-clock time from an execution's first node start to its finalization.",
    ["dag_id"],
    buckets=_SECONDS_BUCKETS,
)
NODE_EXECUTIONS = Counter(
    "gl_orchestrator_node_executions_total",
    "Node attempts that ended, by DAG and status (completed, failed, skipped, retried, timed_out, lost).",
    ["dag_id", "status"],
)
NODE_EXECUTION_DURATION = Histogram(
    "gl_orchestrator_node_execution_duration_seconds",
    "Wall-clock time of one node attempt, agent call and checkpoint write included.",
    ["dag_id"],
    buckets=_SECONDS_BUCKETS,
)
NODE_RETRIES = Counter("gl_orchestrator_node_retries_total", "Node attempts scheduled for a retry.")
NODE_TIMEOUTS = Counter("gl_orchestrator_node_timeouts_total", "Node attempts stopped by their timeout.")
ACTIVE_EXECUTIONS = Gauge(
    "gl_orchestrator_active_executions",
    "Executions in state running.",
    multiprocess_mode="livemostrecent",
)
QUEUED_EXECUTIONS = Gauge(
    "gl_orchestrator_queued_executions",
    "Executions in state pending: accepted but no node started yet.",
    multiprocess_mode="livemostrecent",
)
EXECUTIONS_PAST_DEADLINE = Gauge(
    "gl_orchestrator_executions_past_deadline",
    "Executions in state pending or running whose deadline_at has passed.",
    multiprocess_mode="livemostrecent",
)
DAG_VALIDATION_ERRORS = Counter(
    "gl_orchestrator_dag_validation_errors_total",
    "DAG validation problems found, by problem code.",
    ["error_type"],
)


def render_latest() -> bytes:
    """Return the exposition text, aggregated across processes in multiprocess mode."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
    return generate_latest()
