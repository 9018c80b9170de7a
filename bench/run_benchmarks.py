"""Benchmark the orchestrator against a bare Celery task and against a workflow's critical path.

Two measurements, both with real worker processes on the same Redis and
PostgreSQL:

1. Per-node overhead. A DAG of ``--nodes`` no-op nodes in ``--layers``
   layers (2 or 3 parents each) runs on ``orchestrator worker`` processes,
   timed from ``Scheduler.create_execution`` to the execution row reaching a
   terminal state. The baseline sends as many messages at once to a bare
   Celery task that inserts one row (``bench/baseline_app.py``), timed until
   every row exists. Both sides use ``--concurrency`` pool processes.
2. Makespan. Each task of a workflow file becomes a ``bench.sleep`` node that
   sleeps its recorded runtime divided by ``--time-scale``. The measured
   makespan is compared with the scaled critical path and with the best a
   scheduler could do on ``--makespan-concurrency`` workers.

Every database (``glo_bench_*``), queue (``glo-bench-*``) and worker process
is created by the run and removed at its end, also after an error. Run it
from the repository root::

    python bench/run_benchmarks.py [--nodes 1000] [--concurrency 2] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import psycopg2  # noqa: E402
from celery import Celery  # noqa: E402
from sqlalchemy import select, text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from bench.baseline_app import INSERT_TASK, TABLE_DDL  # noqa: E402
from bench.dags import (  # noqa: E402
    Workflow,
    layered_document,
    list_schedule_makespan,
    load_workflow,
    schedule_bounds,
    workflow_document,
)
from bench.stack import CpuMeter, Stack  # noqa: E402
from orchestrator.agents import default_registry  # noqa: E402
from orchestrator.dag import Dag, parse_dag  # noqa: E402
from orchestrator.database import upgrade_schema  # noqa: E402
from orchestrator.models import ExecutionNodeRow, ExecutionRow  # noqa: E402
from orchestrator.repository import register_dag  # noqa: E402
from orchestrator.settings import load_settings  # noqa: E402
from workers.app import create_celery_app, runtime_of  # noqa: E402
from workers.dispatch import send_follow_up  # noqa: E402

logger = logging.getLogger("bench")

AGENTS_FILE = REPO_ROOT / "bench" / "agents.py"
DEFAULT_WORKFLOW = Path(__file__).resolve().parents[1] / "tests" / "data" / "montage-103.json"
DEFAULT_POSTGRES_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
CPU_GROUPS = ("workers", "postgres", "redis", "client")
TERMINAL_EXECUTION_STATES = frozenset({"completed", "failed", "cancelled"})
_executions = ExecutionRow.__table__
_nodes = ExecutionNodeRow.__table__


# -- results -----------------------------------------------------------------


@dataclass
class RunResult:
    """One timed run: wall time seen by the client, Redis memory and CPU seconds per process group."""

    seconds: float
    redis_growth_peak: int
    redis_growth_after: int
    cpu_seconds: dict[str, float]
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class Series:
    """The runs of one side of one benchmark."""

    label: str
    concurrency: int
    runs: list[RunResult] = field(default_factory=list)

    @property
    def median_seconds(self) -> float:
        return statistics.median(run.seconds for run in self.runs)

    def median_detail(self, key: str) -> float:
        return statistics.median(float(run.details[key]) for run in self.runs)

    def median_cpu(self, group: str) -> float:
        return statistics.median(run.cpu_seconds.get(group, 0.0) for run in self.runs)


# -- measuring ---------------------------------------------------------------


class RunProbe:
    """Samples Redis ``used_memory`` while a run is polled, and CPU time around it."""

    def __init__(self, stack: Stack, postgres_pids: Callable[[], list[int]]) -> None:
        self.stack = stack
        self.meter = CpuMeter(stack, postgres_pids)
        self.cpu_before = self.meter.snapshot()
        self.before = stack.redis_used_memory()
        self.peak = self.before

    def sample(self) -> int:
        used = self.stack.redis_used_memory()
        self.peak = max(self.peak, used)
        return used

    def result(self, seconds: float, details: dict[str, Any] | None = None) -> RunResult:
        """Take the final samples and return the run's result."""
        cpu = CpuMeter.difference(self.cpu_before, self.meter.snapshot())
        after = self.sample()
        return RunResult(seconds, self.peak - self.before, after - self.before, cpu, details or {})


def poll_until(done: Callable[[], bool], *, timeout: float, interval: float, probe: RunProbe, description: str) -> None:
    """Call ``done`` every ``interval`` seconds until it returns True, or raise TimeoutError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not done():
        probe.sample()
        if time.monotonic() > deadline:
            raise TimeoutError(f"{description} did not finish within {timeout:g}s; raise --timeout or check the worker logs")
        time.sleep(interval)


def _logs_ready_line(args: argparse.Namespace) -> bool:
    # Above INFO a worker logs nothing when it is ready, so the untimed warm-up run waits for it instead.
    return str(args.loglevel).upper() in {"DEBUG", "INFO"}


def worker_environment(extra: dict[str, str]) -> dict[str, str]:
    """Return this process's environment without GL_ORCHESTRATOR_* and BENCH_* variables, plus ``extra``."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("GL_ORCHESTRATOR_", "BENCH_"))}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH", "")]))
    env.update(extra)
    return env


class OrchestratorSide:
    """A migrated database, a queue and ``orchestrator worker`` processes, driven from this process."""

    def __init__(self, stack: Stack, label: str, args: argparse.Namespace) -> None:
        self.stack = stack
        self.label = label
        self.args = args
        database_url = stack.create_database(label)
        upgrade_schema(database_url)
        self.env = worker_environment({
            "GL_ORCHESTRATOR_DATABASE_URL": database_url,
            "GL_ORCHESTRATOR_BROKER_URL": args.redis_url,
            "GL_ORCHESTRATOR_QUEUE": stack.new_queue(label),
            "GL_ORCHESTRATOR_AGENT_MODULES": str(AGENTS_FILE),
            "GL_ORCHESTRATOR_HOME": str(stack.log_dir / f"home-{label}"),
            "GL_ORCHESTRATOR_LOG_LEVEL": args.loglevel,
        })
        self.app = create_celery_app(load_settings(self.env))
        self.runtime = runtime_of(self.app)

    def start_worker(self, concurrency: int) -> None:
        command = [sys.executable, "-m", "orchestrator_cli.main", "worker", f"--concurrency={concurrency}",
                   f"--hostname={self.stack.worker_hostname(self.label)}", f"--loglevel={self.args.loglevel}"]
        self.stack.start_worker(f"{self.label}-worker", command, self.env, REPO_ROOT, wait=_logs_ready_line(self.args))

    def run(self, document: dict[str, Any]) -> RunResult:
        """Submit ``document`` as a new execution and time it until the execution row is terminal."""
        dag = parse_dag(document, default_registry)
        register_dag(self.runtime.db, dag, replace=True)
        status: dict[str, Any] = {}

        def finished() -> bool:
            with self.runtime.db.connect() as conn:
                row = conn.execute(
                    select(_executions.c.status).where(_executions.c.execution_id == execution_id)
                ).one()
            status["value"] = row.status
            return row.status in TERMINAL_EXECUTION_STATES

        probe = RunProbe(self.stack, self._postgres_pids)
        started = time.perf_counter()
        execution_id, follow_up = self.runtime.scheduler.create_execution(dag, {})
        send_follow_up(self.app, follow_up)
        poll_until(finished, timeout=self.args.timeout, interval=self.args.poll_interval, probe=probe,
                   description=f"execution {execution_id}")
        seconds = time.perf_counter() - started
        result = probe.result(seconds)

        if status["value"] != "completed":
            raise RuntimeError(f"execution {execution_id} ended {status['value']}; see the logs in {self.stack.log_dir}")
        result.details = self._details(execution_id, dag)
        return result

    def _postgres_pids(self) -> list[int]:
        with self.runtime.db.connect() as conn:
            rows = conn.execute(text("SELECT pid FROM pg_stat_activity WHERE datname = current_database()")).all()
        return [row.pid for row in rows]

    def _details(self, execution_id: str, dag: Dag) -> dict[str, Any]:
        """Read timings the database recorded: server-side duration and per-node start delays."""
        with self.runtime.db.connect() as conn:
            execution = conn.execute(
                select(_executions.c.created_at, _executions.c.completed_at, _executions.c.chain_valid)
                .where(_executions.c.execution_id == execution_id)
            ).one()
            rows = conn.execute(
                select(_nodes.c.node_id, _nodes.c.status, _nodes.c.started_at, _nodes.c.finished_at)
                .where(_nodes.c.execution_id == execution_id)
            ).all()

        not_completed = [row.node_id for row in rows if row.status != "completed"]
        if not_completed or execution.chain_valid is not True:
            raise RuntimeError(
                f"execution {execution_id} has {len(not_completed)} nodes not completed "
                f"and chain_valid={execution.chain_valid}"
            )

        started = {row.node_id: row.started_at for row in rows}
        finished = {row.node_id: row.finished_at for row in rows}
        start_delays = [
            (started[node_id] - max(finished[parent] for parent in dag.parents(node_id))).total_seconds()
            for node_id in dag.nodes if dag.parents(node_id)
        ]
        node_times = [(finished[node_id] - started[node_id]).total_seconds() for node_id in dag.nodes]
        return {
            "early_starts": _early_starts(dag, started, finished),
            "server_seconds": (execution.completed_at - execution.created_at).total_seconds(),
            "node_span_seconds": (max(finished.values()) - min(started.values())).total_seconds(),
            "start_delay_median": statistics.median(start_delays) if start_delays else 0.0,
            "start_delay_p95": _percentile(start_delays, 95) if start_delays else 0.0,
            "node_time_median": statistics.median(node_times),
        }

    def close(self) -> None:
        self.runtime.db.dispose()
        self.app.close()


def _early_starts(dag: Dag, started: dict[str, datetime], finished: dict[str, datetime]) -> int:
    """Count nodes claimed before every node of the level above theirs had finished.

    A scheduler with barriers between levels would count none; a positive
    count shows nodes starting as soon as their own parents are done.
    """
    level: dict[str, int] = {}
    for node_id in dag.topological_order():
        level[node_id] = 1 + max((level[parent] for parent in dag.parents(node_id)), default=0)
    last_finish: dict[int, datetime] = {}
    for node_id, node_level in level.items():
        if node_level not in last_finish or finished[node_id] > last_finish[node_level]:
            last_finish[node_level] = finished[node_id]
    return sum(1 for node_id, node_level in level.items()
               if node_level > 1 and started[node_id] < last_finish[node_level - 1])


class BaselineSide:
    """A bare Celery app whose task inserts one row (``bench/baseline_app.py``)."""

    def __init__(self, stack: Stack, args: argparse.Namespace) -> None:
        self.stack = stack
        self.args = args
        database_url = stack.create_database("baseline")
        self.libpq_url = make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)
        self.connection = psycopg2.connect(self.libpq_url)
        self.connection.autocommit = True
        with self.connection.cursor() as cursor:
            cursor.execute(TABLE_DDL)
            cursor.execute("CREATE INDEX IF NOT EXISTS bench_rows_run_id ON bench_rows (run_id)")
        self.queue = stack.new_queue("baseline")
        self.env = worker_environment({
            "BENCH_BROKER_URL": args.redis_url,
            "BENCH_DATABASE_URL": self.libpq_url,
            "BENCH_QUEUE": self.queue,
        })
        self.app = Celery("bench_baseline_client", broker=args.redis_url, set_as_current=False)
        self.app.conf.update(task_serializer="json", task_default_queue=self.queue)

    def start_worker(self, concurrency: int) -> None:
        command = [sys.executable, "-m", "celery", "-A", "bench.baseline_app", "worker", "--pool=prefork",
                   f"--concurrency={concurrency}", f"--queues={self.queue}",
                   f"--hostname={self.stack.worker_hostname('baseline')}", f"--loglevel={self.args.loglevel}"]
        self.stack.start_worker("baseline-worker", command, self.env, REPO_ROOT, wait=_logs_ready_line(self.args))

    def run(self, count: int) -> RunResult:
        """Send ``count`` insert tasks at once and time them until every row exists."""
        run_id = uuid.uuid4().hex

        def finished() -> bool:
            with self.connection.cursor() as cursor:
                cursor.execute("SELECT count(*) FROM bench_rows WHERE run_id = %s", (run_id,))
                (rows,) = cursor.fetchone()
            return bool(rows >= count)

        probe = RunProbe(self.stack, self._postgres_pids)
        started = time.perf_counter()
        with self.app.producer_or_acquire() as producer:
            for position in range(count):
                self.app.send_task(INSERT_TASK, (run_id, position), queue=self.queue, producer=producer)
        poll_until(finished, timeout=self.args.timeout, interval=self.args.poll_interval, probe=probe,
                   description=f"baseline run {run_id}")
        return probe.result(time.perf_counter() - started)

    def _postgres_pids(self) -> list[int]:
        with self.connection.cursor() as cursor:
            cursor.execute("SELECT pid FROM pg_stat_activity WHERE datname = current_database()")
            return [pid for (pid,) in cursor.fetchall()]

    def close(self) -> None:
        self.connection.close()
        self.app.close()


# -- the two benchmarks --------------------------------------------------------


def _stop_workers(stack: Stack) -> None:
    # One side's idle workers would otherwise share the two cores with the next side's.
    for worker in list(stack.workers):
        stack.stop_worker(worker)


def run_overhead(stack: Stack, args: argparse.Namespace) -> dict[str, Any]:
    """Time the layered no-op DAG on our workers and as many bare Celery inserts."""
    document = layered_document(args.nodes, args.layers, args.max_parallel_nodes)
    warmup = layered_document(2 * args.concurrency, 1, args.max_parallel_nodes)
    warmup["dag_id"] = "bench-warmup"

    ours = Series("orchestrator", args.concurrency)
    side = OrchestratorSide(stack, "overhead", args)
    try:
        side.start_worker(args.concurrency)
        side.run(warmup)
        for index in range(args.runs):
            ours.runs.append(side.run(document))
            logger.info("orchestrator run %d of %d seconds=%.3f", index + 1, args.runs, ours.runs[-1].seconds)
    finally:
        side.close()
        _stop_workers(stack)

    bare = Series("bare Celery insert", args.concurrency)
    baseline = BaselineSide(stack, args)
    try:
        baseline.start_worker(args.concurrency)
        baseline.run(2 * args.concurrency)
        for index in range(args.runs):
            bare.runs.append(baseline.run(args.nodes))
            logger.info("baseline run %d of %d seconds=%.3f", index + 1, args.runs, bare.runs[-1].seconds)
    finally:
        baseline.close()
        _stop_workers(stack)

    return {"nodes": args.nodes, "layers": args.layers, "ours": ours, "baseline": bare}


def run_makespan(stack: Stack, args: argparse.Namespace, workflow: Workflow) -> dict[str, Any]:
    """Time the workflow, scaled down, once per concurrency in ``--makespan-concurrency``."""
    document = workflow_document(workflow, args.time_scale, args.makespan_max_parallel_nodes)
    series = []
    for concurrency in args.makespan_concurrency:
        side = OrchestratorSide(stack, f"makespan{concurrency}", args)
        try:
            side.start_worker(concurrency)
            warmup = layered_document(2 * concurrency, 1, args.makespan_max_parallel_nodes)
            warmup["dag_id"] = "bench-warmup"
            side.run(warmup)
            runs = Series(f"{workflow.name}, concurrency {concurrency}", concurrency)
            for index in range(args.runs):
                runs.runs.append(side.run(document))
                logger.info("makespan run %d of %d concurrency=%d seconds=%.3f",
                            index + 1, args.runs, concurrency, runs.runs[-1].seconds)
            series.append(runs)
        finally:
            side.close()
            _stop_workers(stack)
    return {"workflow": workflow, "series": series}


# -- report ------------------------------------------------------------------


def _percentile(values: Sequence[float], percent: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(percent / 100 * (len(ordered) - 1))))
    return ordered[index]


def _mib(size: int) -> str:
    return f"{size / (1024 * 1024):+.2f} MiB"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    lines = ["  ".join(str(cell).ljust(width) for cell, width in zip(line, widths)).rstrip() for line in [header, *rows]]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def report_overhead(result: dict[str, Any], runs: int) -> str:
    ours: Series = result["ours"]
    bare: Series = result["baseline"]
    nodes = result["nodes"]
    rows = []
    cpu_rows = []
    for series in (ours, bare):
        rows.append([
            series.label,
            f"{series.concurrency}",
            " ".join(f"{run.seconds:.2f}" for run in series.runs),
            f"{series.median_seconds:.2f}",
            f"{1000 * series.median_seconds / nodes:.2f}",
            _mib(int(statistics.median(run.redis_growth_peak for run in series.runs))),
            _mib(int(statistics.median(run.redis_growth_after for run in series.runs))),
            " ".join(f"{run.cpu_seconds.get('other', 0.0):.1f}" for run in series.runs),
        ])
        cpu_rows.append([series.label, *(f"{1000 * series.median_cpu(group) / nodes:.2f}" for group in CPU_GROUPS)])
    ratio = ours.median_seconds / bare.median_seconds
    extra = 1000 * (ours.median_seconds - bare.median_seconds) / nodes
    header = ["side", "concurrency", "runs (s)", "median s", "ms/node", "Redis peak", "Redis after", "other CPU s"]
    return "\n".join([
        f"Per-node overhead: {nodes} nodes in {result['layers']} layers vs {nodes} bare tasks, median of {runs}",
        _table(header, rows),
        f"overhead ratio: {ratio:.1f}x   extra per node: {extra:.2f} ms   "
        "(other CPU s = CPU time of programs outside the benchmark during each run)",
        f"orchestrator, database clock: execution {ours.median_detail('server_seconds'):.2f} s, "
        f"median node claim-to-record {1000 * ours.median_detail('node_time_median'):.1f} ms",
        "",
        "CPU time per node (ms), median of the runs",
        _table(["side", *CPU_GROUPS], cpu_rows),
    ])


def report_makespan(result: dict[str, Any], args: argparse.Namespace) -> str:
    workflow: Workflow = result["workflow"]
    bounds = schedule_bounds(workflow)
    scale = args.time_scale
    lines = [
        f"Makespan: {workflow.name}, {bounds.tasks} tasks, depth {bounds.depth}, runtimes divided by {scale:g}, "
        f"median of {args.runs}",
        f"critical path {bounds.critical_path:.3f} s -> {bounds.critical_path / scale:.3f} s scaled; "
        f"level-barrier path {bounds.level_barrier_path / scale:.3f} s; "
        f"total work {bounds.total_runtime / scale:.3f} s",
    ]
    rows = []
    for series in result["series"]:
        workers = series.concurrency
        lower = bounds.lower_bound(workers) / scale
        greedy = list_schedule_makespan(workflow, workers) / scale
        makespan = series.median_seconds
        rows.append([
            f"{workers}",
            " ".join(f"{run.seconds:.3f}" for run in series.runs),
            f"{makespan:.3f}",
            f"{lower:.3f}",
            f"{greedy:.3f}",
            f"{makespan / (bounds.critical_path / scale):.2f}",
            f"{makespan / lower:.2f}",
            f"{1000 * series.median_detail('start_delay_median'):.0f}/{1000 * series.median_detail('start_delay_p95'):.0f}",
            f"{series.median_detail('early_starts'):.0f}",
            " ".join(f"{run.cpu_seconds.get('other', 0.0):.1f}" for run in series.runs),
        ])
    header = ["concurrency", "runs (s)", "median s", "lower bound s", "greedy s", "/critical path", "/lower bound",
              "start delay ms p50/p95", "early starts", "other CPU s"]
    lines.append(_table(header, rows))
    lines.append("lower bound = max(critical path, total work / concurrency); greedy = zero-overhead list schedule; "
                 "start delay = node claimed minus its last parent recorded; "
                 "early starts = nodes claimed before the level above them had finished; "
                 "other CPU s = CPU time of programs outside the benchmark during each run")
    return "\n".join(lines)


def to_json(results: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    document: dict[str, Any] = {"date": datetime.now().astimezone().isoformat(timespec="seconds"),
                                "arguments": {key: str(value) for key, value in vars(args).items()}}
    if "overhead" in results:
        overhead = results["overhead"]
        document["overhead"] = {"nodes": overhead["nodes"], "layers": overhead["layers"],
                                "ours": asdict(overhead["ours"]), "baseline": asdict(overhead["baseline"])}
    if "makespan" in results:
        makespan = results["makespan"]
        bounds = schedule_bounds(makespan["workflow"])
        document["makespan"] = {"workflow": makespan["workflow"].name, "bounds": asdict(bounds),
                                "series": [asdict(series) for series in makespan["series"]]}
    return document


# -- command line ------------------------------------------------------------


def _concurrency_list(text: str) -> list[int]:
    values = [int(part) for part in text.split(",") if part.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be a comma-separated list of integers >= 1")
    return values


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=["overhead", "makespan"], help="Run one benchmark (default: both).")

    parser.add_argument("--nodes", type=int, default=1000, help="Nodes of the no-op DAG and baseline tasks (default 1000).")
    parser.add_argument("--layers", type=int, default=10, help="Layers of the no-op DAG; nodes must divide evenly (default 10).")
    parser.add_argument("--concurrency", type=int, default=2,
                        help="Pool processes of each worker in the overhead benchmark (default 2).")
    parser.add_argument("--max-parallel-nodes", type=int, default=64,
                        help="max_parallel_nodes of the no-op DAG (default 64).")

    parser.add_argument("--workflow", type=Path, default=DEFAULT_WORKFLOW,
                        help=f"Workflow file of the makespan benchmark (default {DEFAULT_WORKFLOW}).")
    parser.add_argument("--time-scale", type=float, default=100.0,
                        help="Divide each task's runtime_s by this to get its sleep in seconds (default 100).")
    parser.add_argument("--makespan-concurrency", type=_concurrency_list, default=[8, 24],
                        help="Comma-separated pool sizes to run the workflow with, one worker each (default 8,24).")
    parser.add_argument("--makespan-max-parallel-nodes", type=int, default=64,
                        help="max_parallel_nodes of the workflow DAG (default 64).")

    parser.add_argument("--runs", type=int, default=3, help="Timed runs per measurement; the median is reported (default 3).")
    parser.add_argument("--timeout", type=float, default=900.0, help="Seconds to wait for one run (default 900).")
    parser.add_argument("--poll-interval", type=float, default=0.02,
                        help="Seconds between completion checks (default 0.02).")
    parser.add_argument("--loglevel", default="INFO", help="Log level of the worker processes (default INFO).")
    parser.add_argument("--postgres-url", default=os.environ.get("GL_ORCHESTRATOR_BENCH_POSTGRES_URL", DEFAULT_POSTGRES_URL),
                        help="Administrative PostgreSQL URL used to create and drop the benchmark databases.")
    parser.add_argument("--redis-url", default=os.environ.get("GL_ORCHESTRATOR_BENCH_REDIS_URL", DEFAULT_REDIS_URL),
                        help="Redis broker URL.")
    parser.add_argument("--log-dir", type=Path, help="Keep the worker logs in this folder (default: a temporary folder, removed).")
    parser.add_argument("--json", type=Path, help="Also write the raw results to this JSON file.")

    args = parser.parse_args(argv)
    if args.runs < 1 or args.nodes < 1 or args.concurrency < 1:
        parser.error("--runs, --nodes and --concurrency must be at least 1")
    return args


def _raise_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    # Clean-up runs in ``finally`` blocks, so SIGTERM must unwind like Ctrl-C does.
    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    workflow = load_workflow(args.workflow) if args.only != "overhead" else None

    remove_logs = args.log_dir is None
    if args.log_dir is None:
        log_dir = Path(tempfile.mkdtemp(prefix="glo-bench-"))
    else:
        log_dir = args.log_dir
        log_dir.mkdir(parents=True, exist_ok=True)

    stack = Stack(args.postgres_url, args.redis_url, log_dir)
    results: dict[str, Any] = {}
    try:
        if args.only != "makespan":
            results["overhead"] = run_overhead(stack, args)
        if workflow is not None:
            results["makespan"] = run_makespan(stack, args, workflow)
    except Exception:
        logger.exception("benchmark failed; worker logs are kept in %s", log_dir)
        remove_logs = False
        return 1
    finally:
        stack.close()
        if remove_logs:
            shutil.rmtree(log_dir, ignore_errors=True)

    sections = []
    if "overhead" in results:
        sections.append(report_overhead(results["overhead"], args.runs))
    if "makespan" in results:
        sections.append(report_makespan(results["makespan"], args))
    print("\n\n".join(sections))
    if args.json:
        args.json.write_text(json.dumps(to_json(results, args), indent=2, default=str) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
