"""Profile the per-node database work of the scheduler, in one process and without Celery.

Runs the layered no-op DAG of ``run_benchmarks.py`` by calling the same
scheduler methods a worker's node task calls (claim, prepare, the agent,
record_success, then the finalizer), one node at a time in dispatch order,
against a throwaway PostgreSQL database. It prints, per node, the wall time
and this process's CPU time of each step and the number of SQL statements,
transactions and pool checkouts, and with ``--cprofile`` the functions that
take the most time.

Run it from the repository root::

    python bench/profile_scheduler.py [--nodes 1000] [--cprofile 25]
"""

from __future__ import annotations

import argparse
import collections
import copy
import cProfile
import logging
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from sqlalchemy import event  # noqa: E402

from bench.dags import layered_document  # noqa: E402
from bench.stack import Stack  # noqa: E402
from orchestrator.agents import default_registry, import_agent_modules  # noqa: E402
from orchestrator.dag import parse_dag  # noqa: E402
from orchestrator.database import Database, upgrade_schema  # noqa: E402
from orchestrator.finalizer import finalize_execution  # noqa: E402
from orchestrator.hashing import canonical_json  # noqa: E402
from orchestrator.repository import register_dag  # noqa: E402
from orchestrator.scheduler import Scheduler  # noqa: E402

logger = logging.getLogger("bench.profile")

AGENTS_FILE = REPO_ROOT / "bench" / "agents.py"
STEPS = ("claim", "prepare", "agent", "record")
REPORTED_STEPS = (*STEPS, "finalize")
DEFAULT_POSTGRES_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"


class Counters:
    """SQL statements, commits and pool checkouts seen on an engine, by step, and time per statement text."""

    def __init__(self, db: Database) -> None:
        self.step = "submit"
        self.statements: collections.Counter[str] = collections.Counter()
        self.commits: collections.Counter[str] = collections.Counter()
        self.checkouts: collections.Counter[str] = collections.Counter()
        self.statement_seconds: dict[str, float] = collections.defaultdict(float)
        self.statement_calls: collections.Counter[str] = collections.Counter()
        self._started: float | None = None
        event.listen(db.engine, "before_cursor_execute", self._before_statement)
        event.listen(db.engine, "after_cursor_execute", self._after_statement)
        event.listen(db.engine, "commit", self._on_commit)
        event.listen(db.engine.pool, "checkout", self._on_checkout)

    def clear(self) -> None:
        for counter in (self.statements, self.commits, self.checkouts, self.statement_seconds, self.statement_calls):
            counter.clear()

    def _before_statement(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        self.statements[self.step] += 1
        self._started = time.perf_counter()

    def _after_statement(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if self._started is None:
            return
        # The text of an IN list varies with its length, so the key is the step and the text's start.
        key = f"{self.step}: {' '.join(statement.split())[:110]}"
        self.statement_seconds[key] += time.perf_counter() - self._started
        self.statement_calls[key] += 1
        self._started = None

    def _on_commit(self, *args: Any) -> None:
        self.commits[self.step] += 1

    def _on_checkout(self, *args: Any) -> None:
        self.checkouts[self.step] += 1


def run_serially(scheduler: Scheduler, db: Database, document: dict[str, Any], counters: Counters) -> dict[str, list[float]]:
    """Run every node of ``document`` in this process and return wall and CPU seconds per step."""
    counters.step = "submit"
    dag = parse_dag(document, default_registry)
    register_dag(db, dag, replace=True)
    execution_id, follow_up = scheduler.create_execution(dag, {})
    pending = collections.deque(follow_up.dispatches)
    wall: dict[str, float] = collections.defaultdict(float)
    cpu: dict[str, float] = collections.defaultdict(float)

    def timed(step: str, call: Any) -> Any:
        counters.step = step
        wall_start, cpu_start = time.perf_counter(), time.process_time()
        value = call()
        wall[step] += time.perf_counter() - wall_start
        cpu[step] += time.process_time() - cpu_start
        return value

    finalized = False
    while pending:
        dispatch = pending.popleft()
        claim = timed("claim", lambda: scheduler.claim(execution_id, dispatch.node_id, dispatch.task_id, worker="profile"))
        if not claim.run:
            raise RuntimeError(f"node {dispatch.node_id} was not claimed; is another worker on this database?")
        prepared = timed("prepare", lambda: scheduler.prepare(claim))
        if isinstance(prepared, str):
            raise RuntimeError(f"node {dispatch.node_id} was skipped: {prepared}")
        outputs = timed("agent", lambda: prepared.agent(copy.deepcopy(prepared.inputs), copy.deepcopy(prepared.params)))
        canonical = canonical_json(outputs)
        follow_up = timed("record", lambda: scheduler.record_success(claim, prepared, canonical, outputs))
        pending.extend(follow_up.dispatches)
        if follow_up.finalize:
            timed("finalize", lambda: finalize_execution(db, execution_id))
            finalized = True

    if not finalized:
        raise RuntimeError(f"execution {execution_id} did not reach its finalizer")
    return {"wall": [wall[step] for step in REPORTED_STEPS], "cpu": [cpu[step] for step in REPORTED_STEPS]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=1000, help="Nodes of the layered no-op DAG (default 1000).")
    parser.add_argument("--layers", type=int, default=10, help="Layers of the DAG (default 10).")
    parser.add_argument("--cprofile", type=int, default=0, metavar="N",
                        help="Also print the N functions with the most own time under cProfile (default: off).")
    parser.add_argument("--statements", type=int, default=0, metavar="N",
                        help="Also print the N SQL statements with the most total time, client-side (default: off).")
    parser.add_argument("--postgres-url", default=os.environ.get("GL_ORCHESTRATOR_BENCH_POSTGRES_URL", DEFAULT_POSTGRES_URL),
                        help="Administrative PostgreSQL URL used to create and drop the database.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s %(message)s")

    import_agent_modules([str(AGENTS_FILE)])
    log_dir = Path(tempfile.mkdtemp(prefix="glo-bench-profile-"))
    # Only the database is used: a stack without queues never connects to Redis.
    stack = Stack(args.postgres_url, "redis://127.0.0.1:6379/0", log_dir)
    db = None
    try:
        database_url = stack.create_database("profile")
        upgrade_schema(database_url)
        db = Database(database_url)
        scheduler = Scheduler(db, default_registry)
        counters = Counters(db)
        run_serially(scheduler, db, layered_document(10, 1, 10), counters)
        counters.clear()

        profiler = cProfile.Profile() if args.cprofile else None
        document = layered_document(args.nodes, args.layers, 64)
        started = time.perf_counter()
        if profiler is not None:
            profiler.enable()
        times = run_serially(scheduler, db, document, counters)
        if profiler is not None:
            profiler.disable()
        total = time.perf_counter() - started
    finally:
        if db is not None:
            db.dispose()
        stack.close()
        os.rmdir(log_dir)

    nodes = args.nodes
    print(f"{nodes} nodes run one at a time in one process: {total:.2f} s, {1000 * total / nodes:.2f} ms per node"
          + (" (under cProfile)" if profiler is not None else ""))
    print(f"{'step':<9} {'wall ms/node':>12} {'CPU ms/node':>11} {'statements/node':>15} {'commits/node':>12} {'checkouts/node':>14}")
    for index, step in enumerate(REPORTED_STEPS):
        print(f"{step:<9} {1000 * times['wall'][index] / nodes:>12.3f} {1000 * times['cpu'][index] / nodes:>11.3f} "
              f"{counters.statements[step] / nodes:>15.2f} {counters.commits[step] / nodes:>12.2f} "
              f"{counters.checkouts[step] / nodes:>14.2f}")
    if args.statements:
        print(f"\n{'ms/node':>8} {'calls/node':>10} {'ms/call':>8}  step: statement")
        slowest = sorted(counters.statement_seconds.items(), key=lambda item: item[1], reverse=True)
        for key, seconds in slowest[:args.statements]:
            calls = counters.statement_calls[key]
            print(f"{1000 * seconds / nodes:>8.3f} {calls / nodes:>10.2f} {1000 * seconds / calls:>8.3f}  {key}")
    if profiler is not None:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(args.cprofile)
    return 0


if __name__ == "__main__":
    sys.exit(main())
