"""Measure verification of a 10,000-node execution: API, offline verifier, and the raw hashing cost.

Setup (untimed) runs the layered DAG of ``bench_resume.py`` (``--layers`` x
``--width`` nodes, default 100 x 100) to ``completed`` on a fresh PostgreSQL
database. It drives the scheduler in this process as the node task does, so
the product code writes every record.

Then, each ``--runs`` times (medians are reported):

* ``api provenance``: ``GET /executions/<id>/provenance`` through Flask's
  test client (no network): load every record and checkpoint, recompute and
  check every hash, and serialize the report.
* ``core verify_execution``: the same verification without Flask.
* ``api audit-export``: building and serializing the audit bundle.
* ``offline verify_bundle``: ``verifier/gl_audit_verify.py``'s
  ``verify_bundle`` on the parsed bundle, in this process.
* ``offline command``: ``python verifier/gl_audit_verify.py bundle.json`` in a
  new process, reading and parsing the file included.

Beside them, the raw cost of the hashing those verifiers do on the same
data: for every node, C() and SHA-256 of its outputs, its input document and
its chain-hash document, once with the ``rfc8785`` package the product uses
and once with the verifier's standard-library canonicalizer.

The database is dropped at the end, also on an error or Ctrl-C. Run it from
the repository root::

    python bench/bench_verify.py [--layers 100] [--width 100] [--runs 5]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from sqlalchemy import create_engine, select, text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from bench.bench_resume import new_registry, resume_document, run_nodes  # noqa: E402
from orchestrator.dag import parse_dag  # noqa: E402
from orchestrator.database import Database, upgrade_schema  # noqa: E402
from orchestrator.hashing import canonical_json  # noqa: E402
from orchestrator.models import execution_provenance  # noqa: E402
from orchestrator.provenance import verify_execution  # noqa: E402
from orchestrator.repository import register_dag  # noqa: E402
from orchestrator.scheduler import Scheduler  # noqa: E402
from verifier import gl_audit_verify  # noqa: E402

logger = logging.getLogger("bench.verify")

DEFAULT_POSTGRES_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
TOKEN = "bench-verify-token"


def _median_seconds(function: Callable[[], Any], runs: int) -> tuple[float, Any]:
    times = []
    result = None
    for _ in range(runs):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def _create_database(admin_url: str) -> str:
    name = f"glo_bench_verify_{uuid.uuid4().hex[:10]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False)


def _drop_database(admin_url: str, url: str) -> None:
    name = make_url(url).database
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def build_execution(url: str, layers: int, width: int) -> tuple[str, float]:
    """Run the layered DAG to ``completed`` and return its execution id and the setup time."""
    upgrade_schema(url)
    registry, _ = new_registry()
    dag = parse_dag(resume_document(layers, width), registry)
    db = Database(url)
    start = time.perf_counter()
    try:
        register_dag(db, dag, replace=True)
        scheduler = Scheduler(db, registry)
        execution_id, follow_up = scheduler.create_execution(dag, {"seeds": list(range(width))})
        status = run_nodes(scheduler, db, execution_id, follow_up)
    finally:
        db.dispose()
    if status != "completed":
        raise RuntimeError(f"setup execution ended {status}, expected completed")
    return execution_id, time.perf_counter() - start


def raw_hashing(url: str, execution_id: str, runs: int) -> dict[str, float]:
    """Time C() and SHA-256 of every node's outputs, input document and chain-hash document."""
    db = Database(url)
    try:
        with db.connect() as conn:
            records = conn.execute(select(execution_provenance).where(
                execution_provenance.c.execution_id == execution_id)).mappings().all()
            checkpoints = db.checkpoints.read(conn, execution_id)
    finally:
        db.dispose()
    documents: list[Any] = []
    for record in records:
        documents.append(checkpoints[record["node_id"]].outputs)
        documents.append(record["input_document"])
        documents.append({"scheme": "gl-prov-v1", "node_id": record["node_id"], "status": record["status"],
                          "input_hash": record["input_hash"], "output_hash": record["output_hash"],
                          "parent_hashes": sorted(record["parent_hashes"])})

    def with_package() -> None:
        for document in documents:
            hashlib.sha256(canonical_json(document)).hexdigest()

    def with_stdlib() -> None:
        for document in documents:
            hashlib.sha256(gl_audit_verify.canonical_json(document)).hexdigest()

    return {
        "rfc8785 package": _median_seconds(with_package, runs)[0],
        "verifier stdlib JCS": _median_seconds(with_stdlib, runs)[0],
    }


def measure(url: str, execution_id: str, nodes: int, runs: int, workdir: Path) -> list[tuple[str, float]]:
    from api import create_app
    from orchestrator.settings import load_settings
    from workers.app import create_celery_app, runtime_of

    settings = load_settings({
        "GL_ORCHESTRATOR_DATABASE_URL": url, "GL_ORCHESTRATOR_BROKER_URL": "memory://",
        "GL_ORCHESTRATOR_API_TOKENS": TOKEN, "GL_ORCHESTRATOR_HOME": str(workdir),
    })
    celery_app = create_celery_app(settings)
    app = create_app(settings, celery_app=celery_app)
    client = app.test_client()
    headers = {"Authorization": f"Bearer {TOKEN}"}
    prefix = "/api/v1/orchestrator/executions/" + execution_id
    rows: list[tuple[str, float]] = []
    try:
        def provenance() -> dict[str, Any]:
            response = client.get(prefix + "/provenance", headers=headers)
            assert response.status_code == 200
            return dict(response.get_json())

        seconds, report = _median_seconds(provenance, runs)
        if report["chain_valid"] is not True:
            raise RuntimeError("the API found the benchmark chain invalid")
        rows.append(("api provenance", seconds))

        seconds, _ = _median_seconds(lambda: verify_execution(runtime_of(celery_app).db, execution_id), runs)
        rows.append(("core verify_execution", seconds))

        def export() -> bytes:
            response = client.get(prefix + "/audit-export", headers=headers)
            assert response.status_code == 200
            return bytes(response.get_data())

        seconds, raw = _median_seconds(export, runs)
        rows.append(("api audit-export", seconds))
    finally:
        celery_app.close()
        runtime_of(celery_app).db.dispose()

    bundle = json.loads(raw)
    seconds, offline = _median_seconds(lambda: gl_audit_verify.verify_bundle(bundle), runs)
    if offline["chain_valid"] is not True:
        raise RuntimeError("the offline verifier found the benchmark chain invalid")
    rows.append(("offline verify_bundle", seconds))

    path = workdir / "bundle.json"
    path.write_bytes(raw)

    def command() -> None:
        subprocess.run([sys.executable, str(REPO_ROOT / "verifier" / "gl_audit_verify.py"), str(path)],
                       check=True, capture_output=True, cwd=workdir)

    seconds, _ = _median_seconds(command, runs)
    rows.append(("offline command", seconds))
    logger.info("bundle size bytes=%d nodes=%d", len(raw), nodes)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--layers", type=int, default=100, help="Layers of the DAG.")
    parser.add_argument("--width", type=int, default=100, help="Nodes per layer.")
    parser.add_argument("--runs", type=int, default=5, help="Timed runs per measurement; the median is reported.")
    parser.add_argument("--postgres-url", default=DEFAULT_POSTGRES_URL,
                        help="Administrative PostgreSQL URL; a scratch database is created beside it.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("orchestrator").setLevel(logging.WARNING)

    nodes = args.layers * args.width
    url = _create_database(args.postgres_url)
    try:
        execution_id, setup = build_execution(url, args.layers, args.width)
        logger.info("setup: %d nodes completed in %.1fs", nodes, setup)
        with tempfile.TemporaryDirectory(prefix="glo-bench-verify-") as folder:
            rows = measure(url, execution_id, nodes, args.runs, Path(folder))
        raw = raw_hashing(url, execution_id, args.runs)
    finally:
        _drop_database(args.postgres_url, url)

    print(f"verification of {nodes} nodes ({args.layers} x {args.width}), median of {args.runs} runs, "
          f"Python {platform.python_version()} on {platform.machine()}")
    print(f"{'measurement':<32} {'seconds':>9} {'nodes/s':>10}")
    for name, seconds in rows:
        print(f"{name:<32} {seconds:>9.3f} {nodes / seconds:>10.0f}")
    for name, seconds in raw.items():
        print(f"{'raw C()+SHA-256, ' + name:<32} {seconds:>9.3f} {nodes / seconds:>10.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
