"""Time ``resume_execution`` on an execution of 10,000 nodes with checkpoints.

The DAG has ``--layers`` layers of ``--width`` nodes (default 100 x 100). A
node at position ``p`` depends on positions ``p`` and ``p + 1`` (modulo the
width) of the layer before and maps one value from each parent's output.
Each root maps ``input.seeds.<p>``. Every node runs the agent ``bench.mix``,
which returns ``{"value", "layer"}`` computed from its inputs.

Setup runs once per backend and is untimed. This process drives the
scheduler the way a worker's node task does (claim, prepare, the agent,
record_success or record_failure, then the finalizer), one node at a time.
So every checkpoint and provenance record is written by the product code.
The node last in topological order, a leaf, fails, and the execution ends
``failed``. That state is saved as a copy. Then the leaf's agent is fixed,
the execution is resumed and run to ``completed``, and that state is saved
too. PostgreSQL states get ``VACUUM (ANALYZE)`` before they are saved.

Each run resumes a fresh copy of one saved state through a new
``Scheduler``. In a cold run the scheduler's DAG cache is empty, so the run
also loads and parses the stored DAG, as the first resume of an execution in
a process does. In a warm run ``pending_submission`` has filled that cache
before the clock starts. Scenarios:

* ``failed-leaf``: the failed execution; the leaf runs again.
* ``completed``: the completed execution; nothing runs again.
* ``one-seed-changed``: the completed execution resumed with ``seeds[0]``
  changed; the descendants of root 0 run again (5,050 nodes at 100 x 100).
* ``all-seeds-changed``: every seed changed; every node runs again.

Each scenario gets ``--runs`` cold and ``--runs`` warm runs (medians are
reported), one cold run in a new Python process that reports its peak RSS,
one cold run under tracemalloc and, unless ``--cprofile 0``, one cold run
under cProfile. The clock covers only the ``resume_execution`` call.

PostgreSQL databases are named ``glo_bench_resume_<label>_<tag>``, and copies
are made with ``CREATE DATABASE ... TEMPLATE``. SQLite copies are made with
the backup API in a temporary folder. Every database and the folder are
removed at the end, also on an error, Ctrl-C or SIGTERM.

Run it from the repository root::

    python bench/bench_resume.py [--layers 100] [--width 100] [--backends postgres,sqlite]
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import gc
import importlib.metadata
import json
import logging
import os
import platform
import pstats
import resource
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import sqlalchemy  # noqa: E402
from prometheus_client import REGISTRY  # noqa: E402
from sqlalchemy import create_engine, event, func, select, text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402
from sqlalchemy.exc import OperationalError  # noqa: E402
from sqlalchemy.pool import NullPool  # noqa: E402

from bench.stack import _machine_busy_seconds  # noqa: E402
from orchestrator.agents import AgentRegistry  # noqa: E402
from orchestrator.dag import Dag, dag_from_normalized, parse_dag  # noqa: E402
from orchestrator.database import Database, upgrade_schema  # noqa: E402
from orchestrator.finalizer import finalize_execution  # noqa: E402
from orchestrator.hashing import canonical_json  # noqa: E402
from orchestrator.models import dag_checkpoints, execution_provenance  # noqa: E402
from orchestrator.repository import register_dag  # noqa: E402
from orchestrator.resume import resume_execution  # noqa: E402
from orchestrator.scheduler import FollowUp, Prepared, Scheduler  # noqa: E402

logger = logging.getLogger("bench.resume")

AGENT_ID = "bench.mix"
AGENT_VERSION = "1.0.0"
DEFAULT_POSTGRES_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
DATABASE_PREFIX = "glo_bench_resume_"
# SQLSTATE object_in_use: CREATE DATABASE ... TEMPLATE fails while another
# session, such as an autovacuum worker, is connected to the template.
_OBJECT_IN_USE = "55006"
TEMPLATE_ATTEMPTS = 10
# Functions whose cumulative time the cProfile summary lists, as (path suffix, function name).
KEY_FUNCTIONS = (
    ("orchestrator/resume.py", "resume_execution"),
    ("orchestrator/scheduler.py", "_lock_execution"),
    ("orchestrator/dag.py", "dag_from_normalized"),
    ("orchestrator/hashing.py", "dag_hash"),
    ("orchestrator/resume.py", "decide"),
    ("orchestrator/resume.py", "_verify"),
    ("orchestrator/resume.py", "_input_hash"),
    ("orchestrator/mapping.py", "resolve_inputs"),
    ("orchestrator/hashing.py", "canonical_json"),
    ("orchestrator/hashing.py", "check_json_domain"),
    ("orchestrator/resume.py", "_archive"),
    ("orchestrator/resume.py", "_reset"),
    ("sqlalchemy/engine/base.py", "execute"),
    ("~", "<method 'execute' of 'psycopg2.extensions.cursor' objects>"),
    ("~", "<method 'execute' of 'sqlite3.Cursor' objects>"),
)


# -- DAG and agent -------------------------------------------------------


def node_id(layer: int, position: int) -> str:
    return f"n{layer:04d}_{position:04d}"


def resume_document(layers: int, width: int) -> dict[str, Any]:
    """Build the layered DAG document described in the module docstring."""
    if not 1 <= layers <= 9999 or not 2 <= width <= 9999:
        raise ValueError(f"layers must be 1 to 9999 and width 2 to 9999, got layers={layers} width={width}")
    nodes: dict[str, Any] = {}
    for layer in range(layers):
        for position in range(width):
            node: dict[str, Any] = {"agent_id": AGENT_ID, "params": {"layer": layer, "position": position}}
            if layer == 0:
                node["input_mapping"] = {"seed": f"input.seeds.{position}"}
            else:
                left, right = node_id(layer - 1, position), node_id(layer - 1, (position + 1) % width)
                node["depends_on"] = [left, right]
                node["input_mapping"] = {"left": f"results.{left}.value", "right": f"results.{right}.value"}
            nodes[node_id(layer, position)] = node
    return {
        "dag_id": f"bench-resume-{layers}x{width}",
        "description": f"{layers} layers of {width} nodes, each mapping a value from 2 parents",
        "on_failure": "continue",
        "max_parallel_nodes": 64,
        "nodes": nodes,
    }


class MixAgent:
    """The agent of every node: a small object computed from the node's inputs and position.

    It raises RuntimeError for the nodes whose ``(layer, position)`` is in
    ``failing``, as a bug in an agent would, until the set is emptied.
    """

    def __init__(self) -> None:
        self.failing: set[tuple[int, int]] = set()

    def __call__(self, inputs: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
        layer, position = params["layer"], params["position"]
        if (layer, position) in self.failing:
            raise RuntimeError(f"bench.mix is set to fail at layer {layer}, position {position}")
        total = sum(inputs.values())
        return {"value": (total * 31 + position + 1) % 1_000_003, "layer": layer}


def descendants_count(dag: Dag, start: str) -> int:
    """Return the number of nodes reachable from ``start``, ``start`` included."""
    seen = {start}
    stack = [start]
    while stack:
        for child in dag.children(stack.pop()):
            if child not in seen:
                seen.add(child)
                stack.append(child)
    return len(seen)


# -- throwaway databases -------------------------------------------------


def database_name(url: str) -> str:
    """Return the database name of a PostgreSQL URL, or the file path of an SQLite URL."""
    name = make_url(url).database
    if not name:
        raise ValueError(f"database URL {make_url(url).render_as_string()} names no database")
    return name


class PostgresCopies:
    """Databases named ``glo_bench_resume_<label>_<tag>``, created empty or from a template."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url
        self.admin = create_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
        self.tag = uuid.uuid4().hex[:8]
        self.names: list[str] = []

    def create(self, label: str, template_url: str | None = None) -> str:
        """Create a database, a copy of ``template_url`` when given, and return its URL."""
        name = f"{DATABASE_PREFIX}{label}_{self.tag}"
        statement = f'CREATE DATABASE "{name}"'
        if template_url is not None:
            statement += f' TEMPLATE "{database_name(template_url)}"'
        for attempt in range(1, TEMPLATE_ATTEMPTS + 1):
            try:
                with self.admin.connect() as conn:
                    conn.execute(text(statement))
                break
            except OperationalError as exc:
                if getattr(exc.orig, "pgcode", None) != _OBJECT_IN_USE or attempt == TEMPLATE_ATTEMPTS:
                    raise
                logger.warning("template database in use, retrying in 1 s attempt=%d statement=%s", attempt, statement)
                time.sleep(1.0)
        self.names.append(name)
        return make_url(self.admin_url).set(database=name).render_as_string(hide_password=False)

    def drop(self, url: str) -> None:
        name = database_name(url)
        with self.admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        self.names.remove(name)

    def vacuum(self, url: str) -> None:
        """Run VACUUM (ANALYZE), so every copy starts with the same table statistics and no dead rows."""
        engine = create_engine(url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
        try:
            with engine.connect() as conn:
                conn.execute(text("VACUUM (ANALYZE)"))
        finally:
            engine.dispose()

    def server_version(self) -> str:
        with self.admin.connect() as conn:
            return str(conn.execute(text("SHOW server_version")).scalar_one())

    def close(self) -> None:
        """Drop every database this object created, logging each failure and going on."""
        for name in list(reversed(self.names)):
            try:
                with self.admin.connect() as conn:
                    conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
                self.names.remove(name)
            except Exception:
                logger.exception("dropping database failed name=%s; drop it by hand", name)
        self.admin.dispose()


class SqliteCopies:
    """SQLite files in a temporary folder, created empty or as a copy through the backup API."""

    def __init__(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="glo-bench-resume-"))

    def create(self, label: str, template_url: str | None = None) -> str:
        path = self.directory / f"{label}.db"
        if template_url is not None:
            source = sqlite3.connect(database_name(template_url))
            target = sqlite3.connect(path)
            try:
                source.backup(target)
            finally:
                target.close()
                source.close()
        return f"sqlite:///{path}"

    def drop(self, url: str) -> None:
        path = Path(database_name(url))
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)

    def vacuum(self, url: str) -> None:
        """Do nothing, so SQLite states are copied as the scheduler left them."""

    def server_version(self) -> str:
        return sqlite3.sqlite_version

    def close(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


Copies = PostgresCopies | SqliteCopies


# -- measurement helpers -------------------------------------------------


class StatementMeter:
    """SQL statements run on an engine and the time spent in ``cursor.execute``.

    With psycopg2 that time includes receiving every row of a result, but not
    turning rows into Python objects (JSON decoding included), which happens
    when they are fetched. sqlite3 computes only the first row in ``execute``.
    """

    def __init__(self, db: Database) -> None:
        self.statements = 0
        self.seconds = 0.0
        self._started: float | None = None
        event.listen(db.engine, "before_cursor_execute", self._before)
        event.listen(db.engine, "after_cursor_execute", self._after)

    def clear(self) -> None:
        self.statements = 0
        self.seconds = 0.0

    def _before(self, *args: Any) -> None:
        self._started = time.perf_counter()

    def _after(self, *args: Any) -> None:
        if self._started is not None:
            self.statements += 1
            self.seconds += time.perf_counter() - self._started
            self._started = None


def _status_kib(name: str) -> int | None:
    """Return a ``/proc/self/status`` field in KiB, or None where there is no such file."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(f"{name}:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    """Reset this process's peak RSS (VmHWM) and return whether that worked, which needs Linux 4.0 or later."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


def _machine_seconds() -> float:
    """Return the busy CPU time of the whole machine from ``/proc/stat``, or 0 where that file does not exist."""
    try:
        return _machine_busy_seconds()
    except OSError:
        return 0.0


def _verified_checkpoints() -> float:
    """Return the product's own count of checkpoints verified by resume, from its Prometheus counter."""
    value = REGISTRY.get_sample_value("gl_orchestrator_checkpoint_operations_total",
                                      {"operation": "verify", "status": "success"})
    return value or 0.0


# -- setup ---------------------------------------------------------------


def run_nodes(scheduler: Scheduler, db: Database, execution_id: str, follow_up: FollowUp) -> str:
    """Run every dispatched node in this process as the node task does, finalize, and return the final status."""
    pending = collections.deque(follow_up.dispatches)
    finalize = follow_up.finalize
    done = 0
    while pending:
        dispatch = pending.popleft()
        claim = scheduler.claim(dispatch.execution_id, dispatch.node_id, dispatch.task_id, worker="bench-resume")
        if not claim.run:
            raise RuntimeError(f"node {dispatch.node_id} was not claimed; is another process using this database?")
        prepared = scheduler.prepare(claim)
        if not isinstance(prepared, Prepared):
            raise RuntimeError(f"node {dispatch.node_id} was skipped: {prepared}")
        try:
            outputs = prepared.agent(prepared.inputs, prepared.params)
        except RuntimeError as exc:
            outcome = scheduler.record_failure(claim, f"RuntimeError: {exc}", prepared=prepared, retryable=False)
        else:
            outcome = scheduler.record_success(claim, prepared, canonical_json(outputs), outputs)
        if not isinstance(outcome, FollowUp):
            raise RuntimeError(f"node {dispatch.node_id} was scheduled for a retry; the benchmark records no retries")
        pending.extend(outcome.dispatches)
        finalize = finalize or outcome.finalize
        done += 1
        if done % 1000 == 0:
            logger.info("setup: %d nodes recorded", done)
    if not finalize:
        raise RuntimeError(f"execution {execution_id} did not reach its finalizer")
    return finalize_execution(db, execution_id).status


def _checkpoint_counts(db: Database, execution_id: str) -> tuple[dict[str, int], int]:
    with db.connect() as conn:
        checkpoints = conn.execute(
            select(dag_checkpoints.c.status, func.count()).where(dag_checkpoints.c.execution_id == execution_id)
            .group_by(dag_checkpoints.c.status)).all()
        records = conn.execute(
            select(func.count()).select_from(execution_provenance)
            .where(execution_provenance.c.execution_id == execution_id)).scalar_one()
    return {row[0]: row[1] for row in checkpoints}, int(records)


@dataclass
class SavedStates:
    """The URLs of the saved failed and completed states, and what building them took."""

    execution_id: str
    failed_url: str
    completed_url: str
    seeds: list[int]
    setup_seconds: float
    setup_nodes: int
    failed_checkpoints: dict[str, int]
    completed_checkpoints: dict[str, int]


def build_states(copies: Copies, dag: Dag, registry: AgentRegistry, agent: MixAgent) -> SavedStates:
    """Run the execution to ``failed``, save a copy, resume it to ``completed``, and save that too."""
    url = copies.create("base")
    upgrade_schema(url)
    db = Database(url)
    seeds = list(range(1, len({node.params["position"] for node in dag.nodes.values()}) + 1))
    leaf = dag.topological_order()[-1]
    if dag.children(leaf):
        raise RuntimeError(f"node {leaf} is last in topological order but has children")
    agent.failing = {(dag.nodes[leaf].params["layer"], dag.nodes[leaf].params["position"])}
    logger.info("setup: running %d nodes; node %s fails on purpose, so the execution ends failed", len(dag.nodes), leaf)
    try:
        register_dag(db, dag, replace=True)
        scheduler = Scheduler(db, registry)
        started = time.perf_counter()
        execution_id, follow_up = scheduler.create_execution(dag, {"seeds": seeds})
        status = run_nodes(scheduler, db, execution_id, follow_up)
        setup_seconds = time.perf_counter() - started
        if status != "failed":
            raise RuntimeError(f"execution {execution_id} ended {status}, expected failed")
        failed_checkpoints, failed_records = _checkpoint_counts(db, execution_id)
        if failed_checkpoints != {"completed": len(dag.nodes) - 1, "failed": 1} or failed_records != len(dag.nodes):
            raise RuntimeError(f"unexpected records after setup: checkpoints {failed_checkpoints}, "
                               f"provenance records {failed_records}")
        logger.info("setup: %d nodes run in %.1f s (%.2f ms per node) execution_id=%s",
                    len(dag.nodes), setup_seconds, 1000 * setup_seconds / len(dag.nodes), execution_id)
    finally:
        db.dispose()

    copies.vacuum(url)
    failed_url = copies.create("failed", template_url=url)

    db = Database(url)
    try:
        agent.failing = set()
        scheduler = Scheduler(db, registry)
        _, follow_up = resume_execution(scheduler, execution_id)
        status = run_nodes(scheduler, db, execution_id, follow_up)
        if status != "completed":
            raise RuntimeError(f"execution {execution_id} ended {status} after the fix, expected completed")
        completed_checkpoints, _ = _checkpoint_counts(db, execution_id)
        if completed_checkpoints != {"completed": len(dag.nodes)}:
            raise RuntimeError(f"unexpected checkpoints after the fix: {completed_checkpoints}")
    finally:
        db.dispose()
    copies.vacuum(url)
    completed_url = copies.create("completed", template_url=url)
    copies.drop(url)
    return SavedStates(execution_id, failed_url, completed_url, seeds, setup_seconds, len(dag.nodes),
                       failed_checkpoints, completed_checkpoints)


# -- scenarios and runs --------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    """One resume to time: which saved state, what input, and how many nodes must run again."""

    name: str
    state: str  # "failed" or "completed"
    expected_to_run: int
    input_data: dict[str, Any] | None = None  # None keeps the stored input


def scenarios(dag: Dag, seeds: list[int]) -> list[Scenario]:
    one_changed = [seeds[0] + 1000, *seeds[1:]]
    all_changed = [seed + 1000 for seed in seeds]
    root = node_id(0, 0)
    return [
        Scenario("failed-leaf", "failed", 1),
        Scenario("completed", "completed", 0),
        Scenario("one-seed-changed", "completed", descendants_count(dag, root), {"seeds": one_changed}),
        Scenario("all-seeds-changed", "completed", len(dag.nodes), {"seeds": all_changed}),
    ]


@dataclass
class RunResult:
    """One resume of a fresh copy."""

    seconds: float
    verified: int
    skipped: int
    to_run: int
    archived: int
    dispatched: int
    statements: int
    statement_seconds: float
    cpu_seconds: float
    # Busy CPU time of the whole machine less this process's, so the
    # PostgreSQL backend serving the resume, other programs and the kernel.
    # It is 0 where /proc/stat does not exist.
    other_cpu_seconds: float
    rss_before_kib: int | None = None
    rss_peak_kib: int | None = None
    tracemalloc_peak_bytes: int | None = None
    profile: pstats.Stats | None = field(default=None, repr=False)

    def to_json(self) -> dict[str, Any]:
        return {key: value for key, value in asdict(self).items() if key != "profile"}


def new_registry() -> tuple[AgentRegistry, MixAgent]:
    agent = MixAgent()
    registry = AgentRegistry()
    registry.register(AGENT_ID, AGENT_VERSION, agent)
    return registry, agent


def resume_database(url: str, execution_id: str, input_data: dict[str, Any] | None, registry: AgentRegistry,
                    mode: str) -> RunResult:
    """Resume the execution in the database at ``url`` once, in this process, and measure it.

    ``mode`` is "cold", "warm" (the DAG cache is filled before the clock
    starts), "tracemalloc" or "cprofile".
    """
    db = Database(url)
    try:
        meter = StatementMeter(db)
        # Open the pool's first connection before the clock starts, as in a running API process.
        with db.connect() as conn:
            conn.execute(text("SELECT 1"))
        scheduler = Scheduler(db, registry)
        if mode == "warm":
            scheduler.pending_submission(execution_id)  # a read that loads and caches the execution's DAG
        options: dict[str, Any] = {} if input_data is None else {"input_data": input_data}
        meter.clear()
        verified_before = _verified_checkpoints()
        gc.collect()
        rss_before = _status_kib("VmRSS")
        peak_reset = _reset_peak_rss()
        profiler = cProfile.Profile() if mode == "cprofile" else None
        if mode == "tracemalloc":
            tracemalloc.start()

        machine_before, cpu_before = _machine_seconds(), time.process_time()
        started = time.perf_counter()
        if profiler is not None:
            profiler.enable()
        report, follow_up = resume_execution(scheduler, execution_id, **options)
        if profiler is not None:
            profiler.disable()
        seconds = time.perf_counter() - started
        cpu_seconds = time.process_time() - cpu_before
        other_cpu_seconds = max(0.0, _machine_seconds() - machine_before - cpu_seconds) if machine_before else 0.0

        traced_peak = tracemalloc.get_traced_memory()[1] if mode == "tracemalloc" else None
        if mode == "tracemalloc":
            tracemalloc.stop()
        # Without the reset, ru_maxrss (KiB on Linux) is the peak over the whole process.
        rss_peak = _status_kib("VmHWM") if peak_reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    finally:
        db.dispose()

    return RunResult(
        seconds=seconds, verified=int(_verified_checkpoints() - verified_before), skipped=len(report.nodes_skipped),
        to_run=len(report.nodes_remaining), archived=len(report.archived), dispatched=len(follow_up.dispatches),
        statements=meter.statements, statement_seconds=meter.seconds, cpu_seconds=cpu_seconds,
        other_cpu_seconds=other_cpu_seconds, rss_before_kib=rss_before,
        rss_peak_kib=rss_peak, tracemalloc_peak_bytes=traced_peak,
        profile=pstats.Stats(profiler) if profiler is not None else None,
    )


def resume_in_new_process(url: str, execution_id: str, input_data: dict[str, Any] | None) -> RunResult:
    """Run one cold resume in a new Python process, whose peak RSS then shows what the resume used."""
    command = [sys.executable, str(Path(__file__).resolve()), "--child-resume", url, execution_id,
               json.dumps(input_data)]
    completed = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=1800, check=False)
    if completed.returncode != 0:
        raise RuntimeError(f"the resume process exited with code {completed.returncode}:\n{completed.stderr[-3000:]}")
    return RunResult(**json.loads(completed.stdout.strip().splitlines()[-1]))


def resume_copy(copies: Copies, template_url: str, label: str, execution_id: str, scenario: Scenario,
                registry: AgentRegistry, mode: str) -> RunResult:
    """Resume a fresh copy of ``template_url``; ``mode`` "process" runs it in a new Python process."""
    url = copies.create(label, template_url=template_url)
    try:
        if mode == "process":
            result = resume_in_new_process(url, execution_id, scenario.input_data)
        else:
            result = resume_database(url, execution_id, scenario.input_data, registry, mode)
    finally:
        copies.drop(url)
    if result.to_run != scenario.expected_to_run:
        raise RuntimeError(f"scenario {scenario.name}: resume planned {result.to_run} nodes to run, "
                           f"expected {scenario.expected_to_run}")
    return result


@dataclass
class ScenarioResult:
    """The runs of one scenario on one backend."""

    backend: str
    scenario: str
    nodes: int
    cold_runs: list[RunResult]
    warm_runs: list[RunResult]
    process_run: RunResult
    memory_run: RunResult
    profile_run: RunResult | None

    def summary(self) -> dict[str, Any]:
        first = self.cold_runs[0]
        cold_median = statistics.median(run.seconds for run in self.cold_runs)
        process = self.process_run
        rss_growth = (None if process.rss_peak_kib is None or process.rss_before_kib is None
                      else process.rss_peak_kib - process.rss_before_kib)
        return {
            "backend": self.backend,
            "scenario": self.scenario,
            "nodes": self.nodes,
            "verified": first.verified,
            "skipped": first.skipped,
            "to_run": first.to_run,
            "archived": first.archived,
            "dispatched": first.dispatched,
            "statements": first.statements,
            "cold_runs_s": [round(run.seconds, 3) for run in self.cold_runs],
            "cold_median_s": round(cold_median, 3),
            "cold_ms_per_node": round(1000 * cold_median / self.nodes, 3),
            "statement_s_median": round(statistics.median(run.statement_seconds for run in self.cold_runs), 3),
            "cpu_s_median": round(statistics.median(run.cpu_seconds for run in self.cold_runs), 3),
            "other_cpu_s_max": round(max(run.other_cpu_seconds for run in [*self.cold_runs, *self.warm_runs]), 2),
            "warm_runs_s": [round(run.seconds, 3) for run in self.warm_runs],
            "warm_median_s": round(statistics.median(run.seconds for run in self.warm_runs), 3),
            "new_process_s": round(process.seconds, 3),
            "new_process_rss_before_mib": round((process.rss_before_kib or 0) / 1024, 1),
            "new_process_rss_growth_mib": None if rss_growth is None else round(rss_growth / 1024, 1),
            "tracemalloc_peak_mib": round((self.memory_run.tracemalloc_peak_bytes or 0) / 2**20, 1),
            "tracemalloc_run_s": round(self.memory_run.seconds, 3),
            "cprofile_run_s": round(self.profile_run.seconds, 3) if self.profile_run else None,
        }


def measure_backend(name: str, copies: Copies, layers: int, width: int, runs: int, with_profile: bool,
                    selected: list[str]) -> tuple[SavedStates, list[ScenarioResult]]:
    registry, agent = new_registry()
    dag = parse_dag(resume_document(layers, width), registry)
    logger.info("%s: building the saved states of %d nodes", name, len(dag.nodes))
    states = build_states(copies, dag, registry, agent)
    templates = {"failed": states.failed_url, "completed": states.completed_url}

    results = []
    counter = 0

    def run(scenario: Scenario, mode: str) -> RunResult:
        nonlocal counter
        counter += 1
        result = resume_copy(copies, templates[scenario.state], f"run{counter}", states.execution_id, scenario,
                             registry, mode)
        logger.info("%s %s %s run: %.3f s", name, scenario.name, mode, result.seconds)
        return result

    for scenario in scenarios(dag, states.seeds):
        if scenario.name not in selected:
            continue
        cold = [run(scenario, "cold") for _ in range(runs)]
        warm = [run(scenario, "warm") for _ in range(runs)]
        process = run(scenario, "process")
        memory = run(scenario, "tracemalloc")
        profile = run(scenario, "cprofile") if with_profile else None
        results.append(ScenarioResult(name, scenario.name, len(dag.nodes), cold, warm, process, memory, profile))
    return states, results


# -- output --------------------------------------------------------------


def print_results(results: list[ScenarioResult]) -> None:
    print(f"{'backend':<9} {'scenario':<18} {'verified':>8} {'to run':>6} {'archived':>8} {'stmts':>6} "
          f"{'cold runs (s)':<20} {'cold s':>7} {'ms/node':>7} {'CPU s':>6} {'SQL s':>6} {'warm s':>7} "
          f"{'new proc s':>10} {'RSS +MiB':>8} {'tracemalloc MiB':>15}")
    for result in results:
        row = result.summary()
        runs = ", ".join(f"{seconds:.2f}" for seconds in row["cold_runs_s"])
        rss = "n/a" if row["new_process_rss_growth_mib"] is None else f"{row['new_process_rss_growth_mib']:.1f}"
        print(f"{row['backend']:<9} {row['scenario']:<18} {row['verified']:>8} {row['to_run']:>6} "
              f"{row['archived']:>8} {row['statements']:>6} {runs:<20} {row['cold_median_s']:>7.3f} "
              f"{row['cold_ms_per_node']:>7.3f} {row['cpu_s_median']:>6.2f} {row['statement_s_median']:>6.2f} "
              f"{row['warm_median_s']:>7.3f} "
              f"{row['new_process_s']:>10.3f} {rss:>8} {row['tracemalloc_peak_mib']:>15.1f}")


def key_function_rows(stats: pstats.Stats) -> list[tuple[str, int, float, float]]:
    """Return (name, calls, own seconds, cumulative seconds) of the functions in KEY_FUNCTIONS that ran."""
    rows = []
    entries: dict[tuple[str, int, str], tuple[Any, ...]] = stats.stats  # type: ignore[attr-defined]
    for suffix, function in KEY_FUNCTIONS:
        calls, own, cumulative = 0, 0.0, 0.0
        for (filename, _line, name), (_primitive, total_calls, tottime, cumtime, _callers) in entries.items():
            if name == function and filename.replace(os.sep, "/").endswith(suffix):
                calls += total_calls
                own += tottime
                cumulative += cumtime
        if calls:
            label = function if suffix == "~" else f"{suffix.rsplit('/', 1)[-1]}:{function}"
            rows.append((label, calls, own, cumulative))
    return rows


def print_profile(result: ScenarioResult, lines: int) -> None:
    assert result.profile_run is not None and result.profile_run.profile is not None
    stats = result.profile_run.profile
    print(f"\n== cProfile: {result.backend} {result.scenario}, {result.profile_run.seconds:.2f} s under the profiler")
    print(f"{'function':<70} {'calls':>8} {'own s':>7} {'cumulative s':>12}")
    for label, calls, own, cumulative in key_function_rows(stats):
        print(f"{label:<70} {calls:>8} {own:>7.3f} {cumulative:>12.3f}")
    stats.strip_dirs().sort_stats("tottime").print_stats(lines)


def median_parse_seconds(document: dict[str, Any], runs: int) -> float:
    """Return the median time of ``dag_from_normalized`` on ``document``, the parse a cold resume does."""
    timings = []
    for _ in range(runs):
        started = time.perf_counter()
        dag_from_normalized(document)
        timings.append(time.perf_counter() - started)
    return statistics.median(timings)


def _package_version(*names: str) -> str:
    """Return the installed version of the first distribution in ``names`` that is installed."""
    for name in names:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return "not installed"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=100, help="Layers of the DAG (default 100).")
    parser.add_argument("--width", type=int, default=100, help="Nodes per layer, at least 2 (default 100).")
    parser.add_argument("--runs", type=int, default=3,
                        help="Cold runs and warm runs per scenario; medians are reported (default 3).")
    parser.add_argument("--backends", default="postgres,sqlite",
                        help="Comma-separated backends to measure: postgres, sqlite (default both).")
    parser.add_argument("--scenarios", default="failed-leaf,completed,one-seed-changed,all-seeds-changed",
                        help="Comma-separated scenarios to run (default all four).")
    parser.add_argument("--cprofile", type=int, default=20, metavar="N",
                        help="Print the N functions with the most own time in one extra run per scenario under "
                             "cProfile; 0 skips that run (default 20).")
    parser.add_argument("--postgres-url", default=os.environ.get("GL_ORCHESTRATOR_BENCH_POSTGRES_URL", DEFAULT_POSTGRES_URL),
                        help="Administrative PostgreSQL URL used to create and drop the databases.")
    parser.add_argument("--json", type=Path, metavar="FILE", help="Also write the summary rows to FILE as JSON.")
    # Internal: URL, execution id and input JSON of one cold resume in a new process, see resume_in_new_process.
    parser.add_argument("--child-resume", nargs=3, metavar=("URL", "EXECUTION_ID", "INPUT_JSON"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child_resume:
        logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s %(message)s")
        url, execution_id, input_json = args.child_resume
        registry, _ = new_registry()
        child_result = resume_database(url, execution_id, json.loads(input_json), registry, "cold")
        print(json.dumps(child_result.to_json()))
        return 0
    if args.runs < 1:
        parser.error(f"--runs must be at least 1, got {args.runs}")
    backends = [name.strip() for name in args.backends.split(",") if name.strip()]
    unknown = sorted(set(backends) - {"postgres", "sqlite"})
    if unknown:
        parser.error(f"unknown backends {unknown}; use postgres, sqlite or both")
    selected = [name.strip() for name in args.scenarios.split(",") if name.strip()]
    known = {"failed-leaf", "completed", "one-seed-changed", "all-seeds-changed"}
    if set(selected) - known:
        parser.error(f"unknown scenarios {sorted(set(selected) - known)}; choose from {sorted(known)}")

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logger.setLevel(logging.INFO)
    # SIGTERM raises SystemExit, so the finally blocks below drop the databases.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))

    document = resume_document(args.layers, args.width)
    parse_seconds = median_parse_seconds(document, 3)
    versions = {"python": platform.python_version(), "sqlalchemy": sqlalchemy.__version__,
                "psycopg2": _package_version("psycopg2-binary", "psycopg2"), "sqlite": sqlite3.sqlite_version}

    all_results: list[ScenarioResult] = []
    setups: dict[str, SavedStates] = {}
    for backend in backends:
        copies: Copies = PostgresCopies(args.postgres_url) if backend == "postgres" else SqliteCopies()
        try:
            if backend == "postgres":
                versions["postgresql"] = copies.server_version()
            states, results = measure_backend(backend, copies, args.layers, args.width, args.runs,
                                              args.cprofile > 0, selected)
        finally:
            copies.close()
        setups[backend] = states
        all_results.extend(results)

    print(f"\nversions: {', '.join(f'{name} {value}' for name, value in versions.items())}")
    print(f"DAG: {args.layers} layers x {args.width} nodes = {args.layers * args.width} nodes; "
          f"dag_from_normalized takes {parse_seconds:.3f} s (median of 3), included in every cold resume below")
    for backend, states in setups.items():
        print(f"setup on {backend}: {states.setup_nodes} nodes run in {states.setup_seconds:.1f} s "
              f"({1000 * states.setup_seconds / states.setup_nodes:.2f} ms per node), untimed below")
    print(f"cold s and warm s: median of {args.runs} runs, each on a fresh copy and a new Scheduler, with the DAG "
          "cache empty (cold) or filled (warm). CPU s and SQL s: this process's CPU time and client-side statement "
          "time in the cold runs. new proc s and RSS +MiB: one cold run in a new Python process, and its peak RSS "
          "above its RSS before the call.\n")
    print_results(all_results)
    for backend in setups:
        other = max(result.summary()["other_cpu_s_max"] for result in all_results if result.backend == backend)
        server = ", including the PostgreSQL backend" if backend == "postgres" else ""
        print(f"{backend}: at most {other:.2f} s of other CPU in one cold or warm run (busy CPU time of the machine "
              f"less this process's{server})")
    if args.cprofile > 0:
        for result in all_results:
            print_profile(result, args.cprofile)
    if args.json is not None:
        summary = {
            "versions": versions,
            "layers": args.layers,
            "width": args.width,
            "dag_from_normalized_s": round(parse_seconds, 3),
            "setup": {backend: {key: value for key, value in asdict(states).items() if not key.endswith("_url")}
                      for backend, states in setups.items()},
            "results": [result.summary() for result in all_results],
        }
        args.json.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
