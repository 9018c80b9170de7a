"""The checkpoint store contract, run against the database, file and memory stores.

Every contract test takes the ``store`` fixture, so it runs once per strategy,
and the ``database`` fixture, so once on SQLite and once on PostgreSQL. The
strategy-specific tests (atomic files, ids that would leave the folder, a
memory store shared across a fork) follow the contract.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text, update
from sqlalchemy.exc import IntegrityError

import orchestrator.checkpoints as checkpoints_module
from orchestrator.checkpoints import (
    MISSING,
    CheckpointStore,
    DatabaseCheckpointStore,
    FileCheckpointStore,
    MemoryCheckpointStore,
    NewCheckpoint,
    PayloadKey,
    checkpoint_store_from_settings,
    verify_payload,
)
from orchestrator.database import Database
from orchestrator.errors import CheckpointStoreError, SettingsError
from orchestrator.hashing import canonical_json, sha256_hex
from orchestrator.models import checkpoint_archive, dag_checkpoints, dag_executions, dag_workflows, utcnow
from orchestrator.provenance import NULL_HASH
from orchestrator.settings import load_settings

EXECUTION = "5b0c7a4e-3d1f-4c55-9a7e-0d6f7f1c2a10"
OTHER_EXECUTION = "9e2d1c0b-8a7f-4e6d-b5c4-3a2f1e0d9c8b"
STRATEGIES = ["database", "file", "memory"]

VALUES: list[Any] = [
    {"total_tco2e": 5653.375864585122, "rows": [1, 2, 3]},
    {"name": "Zürich \u00e9missions \U0001f30d", "empty": {}, "list": []},
    9007199254740991,
    -0.0,
    [1.5e300, 1e-300, None, True, False],
    "plain text",
    None,
]


@pytest.fixture(params=STRATEGIES)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> CheckpointStore:
    if request.param == "file":
        return FileCheckpointStore(tmp_path / "checkpoints")
    if request.param == "memory":
        return MemoryCheckpointStore()
    return DatabaseCheckpointStore()


@pytest.fixture
def db(database: Database, store: CheckpointStore) -> Iterator[Database]:
    database.checkpoints = store
    for execution_id in (EXECUTION, OTHER_EXECUTION):
        _insert_execution(database, execution_id)
    yield database


def _insert_execution(db: Database, execution_id: str) -> None:
    def work(conn: Any) -> None:
        if conn.execute(select(dag_workflows.c.dag_id)).first() is None:
            conn.execute(dag_workflows.insert().values(
                dag_id="contract", name="contract", version="1", definition={}, dag_hash="0" * 64))
        conn.execute(dag_executions.insert().values(
            execution_id=execution_id, dag_id="contract", dag_hash="0" * 64, dag_document={}, status="running",
            input_data={}, input_hash="0" * 64, execution_options={}, nodes_total=1, nodes_remaining=1,
        ))

    db.transaction(work)


def _checkpoint(node_id: str, outputs: Any, *, execution_id: str = EXECUTION, status: str = "completed",
                attempts: int = 1) -> NewCheckpoint:
    if status != "completed":
        return NewCheckpoint(execution_id, node_id, status, None, None, NULL_HASH, attempts)
    canonical = canonical_json(outputs)
    return NewCheckpoint(execution_id, node_id, status, outputs, canonical, sha256_hex(canonical), attempts)


def _write(db: Database, checkpoint: NewCheckpoint) -> None:
    db.transaction(lambda conn: db.checkpoints.write(conn, checkpoint))


def _read(db: Database, execution_id: str = EXECUTION, node_ids: list[str] | None = None) -> dict[str, Any]:
    with db.connect() as conn:
        return db.checkpoints.read(conn, execution_id, node_ids)


def _tamper(db: Database, node_id: str, new_outputs: Any) -> None:
    """Change a stored payload behind the store's back, as an attacker with access to its storage would."""
    store = db.checkpoints
    [checkpoint] = _read(db, node_ids=[node_id]).values()
    key = PayloadKey(EXECUTION, node_id, checkpoint.output_hash)
    if isinstance(store, DatabaseCheckpointStore):
        db.transaction(lambda conn: conn.execute(update(dag_checkpoints).where(
            dag_checkpoints.c.execution_id == EXECUTION, dag_checkpoints.c.node_id == node_id,
        ).values(outputs=new_outputs)))
    elif isinstance(store, FileCheckpointStore):
        store.path_of(key).write_bytes(canonical_json(new_outputs))
    else:
        assert isinstance(store, MemoryCheckpointStore)
        store._payloads[("live", EXECUTION, node_id, key.output_hash)] = canonical_json(new_outputs)


def _lose(db: Database, node_id: str) -> None:
    """Make a stored payload disappear without going through the store."""
    store = db.checkpoints
    [checkpoint] = _read(db, node_ids=[node_id]).values()
    key = PayloadKey(EXECUTION, node_id, checkpoint.output_hash)
    if isinstance(store, DatabaseCheckpointStore):
        db.transaction(lambda conn: conn.execute(text(
            "UPDATE dag_checkpoints SET outputs = NULL WHERE execution_id = :e AND node_id = :n"),
            {"e": EXECUTION, "n": node_id}))
    elif isinstance(store, FileCheckpointStore):
        store.path_of(key).unlink()
    else:
        assert isinstance(store, MemoryCheckpointStore)
        del store._payloads[("live", EXECUTION, node_id, key.output_hash)]


# -- the contract ----------------------------------------------------------


@pytest.mark.parametrize("value", VALUES, ids=[f"value{index}" for index in range(len(VALUES))])
def test_round_trip_verifies(db: Database, value: Any) -> None:
    checkpoint = _checkpoint("node-1", value, attempts=2)
    _write(db, checkpoint)

    stored = _read(db)["node-1"]
    assert stored.status == "completed"
    assert canonical_json(stored.outputs) == checkpoint.canonical
    assert stored.output_hash == checkpoint.output_hash
    assert stored.attempt_count == 2
    assert stored.size_bytes == len(checkpoint.canonical or b"")
    assert stored.payload_problem is None
    assert verify_payload(stored) == (checkpoint.output_hash, None)


def test_read_filters_by_node_and_execution(db: Database) -> None:
    _write(db, _checkpoint("a", 1))
    _write(db, _checkpoint("b", 2))
    _write(db, _checkpoint("a", 3, execution_id=OTHER_EXECUTION))

    assert sorted(_read(db)) == ["a", "b"]
    assert {node: cp.outputs for node, cp in _read(db, node_ids=["b", "missing"]).items()} == {"b": 2}
    assert _read(db, node_ids=[]) == {}
    assert _read(db, OTHER_EXECUTION)["a"].outputs == 3


def test_terminal_without_outputs_has_no_payload(db: Database) -> None:
    _write(db, _checkpoint("failed-node", None, status="failed", attempts=3))

    stored = _read(db)["failed-node"]
    assert (stored.status, stored.outputs, stored.output_hash, stored.size_bytes) == ("failed", None, NULL_HASH, 0)
    assert verify_payload(stored) == (NULL_HASH, None)


def test_altered_payload_is_reported(db: Database) -> None:
    original = _checkpoint("n", {"value": 10})
    _write(db, original)
    _tamper(db, "n", {"value": 11})

    stored = _read(db)["n"]
    actual, problem = verify_payload(stored)
    assert actual == sha256_hex(canonical_json({"value": 11}))
    assert problem == f"outputs hash to {actual}, but output_hash is {original.output_hash}"


def test_lost_payload_is_reported(db: Database) -> None:
    _write(db, _checkpoint("n", {"value": 10}))
    _lose(db, "n")

    stored = _read(db)["n"]
    actual, problem = verify_payload(stored)
    if db.checkpoints.durable:
        assert problem is not None
        assert actual != _checkpoint("n", {"value": 10}).output_hash
    else:
        # Losing payloads is how a memory store works: noted, never taken for verified outputs.
        assert (actual, problem) == (None, None)
        assert stored.outputs is MISSING
        assert stored.payload_note is not None


def test_losing_duplicate_writer_changes_nothing(db: Database) -> None:
    winner = _checkpoint("n", {"value": 1})
    loser = _checkpoint("n", {"value": 2})
    _write(db, winner)

    with pytest.raises(IntegrityError):
        _write(db, loser)

    stored = _read(db)["n"]
    assert stored.outputs == {"value": 1}
    assert verify_payload(stored) == (winner.output_hash, None)


def test_rolled_back_write_leaves_nothing(db: Database) -> None:
    checkpoint = _checkpoint("n", [1, 2, 3])

    def write_then_fail(conn: Any) -> None:
        db.checkpoints.write(conn, checkpoint)
        raise RuntimeError("the transaction fails after the write")

    with pytest.raises(RuntimeError):
        db.transaction(write_then_fail)
    assert _read(db) == {}

    _write(db, checkpoint)
    assert verify_payload(_read(db)["n"]) == (checkpoint.output_hash, None)


def test_archive_keeps_evidence_and_removes_the_live_checkpoint(db: Database) -> None:
    _write(db, _checkpoint("kept", 1))
    _write(db, _checkpoint("moved", {"value": 10}))
    _tamper(db, "moved", {"value": 99})

    moved, to_discard = db.transaction(
        lambda conn: db.checkpoints.archive(conn, EXECUTION, {"moved": "corrupted, kept as evidence"}))
    db.checkpoints.discard(to_discard)

    assert moved == ["moved"]
    assert sorted(_read(db)) == ["kept"]
    with db.connect() as conn:
        [row] = conn.execute(select(checkpoint_archive).where(checkpoint_archive.c.execution_id == EXECUTION)).mappings()
    assert row["node_id"] == "moved"
    assert row["output_hash"] == _checkpoint("moved", {"value": 10}).output_hash
    assert row["reason"].startswith("corrupted, kept as evidence")
    assert _evidence(db, row) == {"value": 99}


def _evidence(db: Database, row: Any) -> Any:
    """Return the outputs an archived checkpoint kept, wherever its strategy keeps them."""
    store = db.checkpoints
    if isinstance(store, DatabaseCheckpointStore):
        return row["outputs"]
    assert row["outputs"] is None
    kept_at = row["reason"].split("; payload kept at ", 1)[1]
    if isinstance(store, FileCheckpointStore):
        path = Path(kept_at)
        assert path.parent == store.root / EXECUTION / "archive"
        assert not store.path_of(PayloadKey(EXECUTION, "moved", row["output_hash"])).exists()
        return json.loads(path.read_bytes())
    assert isinstance(store, MemoryCheckpointStore)
    [payload] = store.archived().values()
    assert kept_at.startswith(f"memory:{EXECUTION}/moved/{row['output_hash']}@")
    return json.loads(payload)


def test_retention_discard_removes_payload_and_keeps_hash(db: Database) -> None:
    checkpoint = _checkpoint("n", {"value": 10})
    _write(db, checkpoint)
    with db.connect() as conn:
        rows = conn.execute(select(dag_checkpoints)).mappings().all()
    keys = db.checkpoints.payload_keys(rows)

    db.transaction(lambda conn: conn.execute(update(dag_checkpoints).values(outputs=None, payload_removed_at=utcnow())))
    db.checkpoints.discard(keys)

    stored = _read(db)["n"]
    assert stored.outputs is None
    assert stored.output_hash == checkpoint.output_hash
    assert stored.payload_removed_at is not None
    assert verify_payload(stored) == (None, None)
    if not isinstance(db.checkpoints, DatabaseCheckpointStore):
        assert db.checkpoints.get_payload(PayloadKey(EXECUTION, "n", checkpoint.output_hash)) is None


@pytest.mark.parametrize("execution_id, node_id, output_hash, named", [
    ("../../etc", "n", "a" * 64, "execution_id='../../etc'"),
    (EXECUTION, "a/b", "a" * 64, "node_id='a/b'"),
    (EXECUTION, "", "a" * 64, "node_id=''"),
    (EXECUTION, "x" * 64, "a" * 64, "node_id="),
    (EXECUTION, "n", "../" + "a" * 61, "output_hash='../"),
    (EXECUTION, "n", "A" * 64, "output_hash='AAAA"),
])
def test_keys_refuse_ids_outside_the_grammar(store: CheckpointStore, execution_id: str, node_id: str,
                                             output_hash: str, named: str) -> None:
    with pytest.raises(CheckpointStoreError) as caught:
        store.put_payload(PayloadKey(execution_id, node_id, output_hash), b"1")
    assert named in str(caught.value)


# -- the file store --------------------------------------------------------


def test_file_store_writes_through_fsync_and_rename(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = FileCheckpointStore(tmp_path)
    key = PayloadKey(EXECUTION, "n", "b" * 64)
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(checkpoints_module.os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(checkpoints_module.os, "replace",
                        lambda src, dst: (events.append(f"replace {Path(src).name} -> {Path(dst).name}"),
                                          real_replace(src, dst))[1])

    store.put_payload(key, b'{"a":1}')

    assert events[0] == "fsync"
    assert events[1].startswith(f"replace .n@{'b' * 64}.json.")
    assert events[1].endswith(f".tmp -> n@{'b' * 64}.json")
    assert events[2] == "fsync"  # the folder, so the rename itself survives a crash
    assert store.get_payload(key) == b'{"a":1}'
    assert [path.name for path in (tmp_path / EXECUTION).iterdir()] == [f"n@{'b' * 64}.json"]


def test_file_store_crash_keeps_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = FileCheckpointStore(tmp_path)
    key = PayloadKey(EXECUTION, "n", "c" * 64)
    store.put_payload(key, b'"first"')

    def crash(src: str, dst: str) -> None:
        raise OSError("simulated crash before the rename")

    monkeypatch.setattr(checkpoints_module.os, "replace", crash)
    with pytest.raises(CheckpointStoreError, match="simulated crash before the rename"):
        store.put_payload(key, b'"second"')

    assert store.get_payload(key) == b'"first"'
    assert [path.name for path in (tmp_path / EXECUTION).iterdir()] == [f"n@{'c' * 64}.json"]


def test_file_store_readers_never_see_a_partial_file(tmp_path: Path) -> None:
    store = FileCheckpointStore(tmp_path)
    key = PayloadKey(EXECUTION, "big", "d" * 64)
    payloads = [json.dumps({"fill": str(index) * 200_000}).encode() for index in range(3)]
    store.put_payload(key, payloads[0])
    seen: set[bytes | None] = set()
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            seen.add(store.get_payload(key))

    reader = threading.Thread(target=read)
    reader.start()
    for round_ in range(30):
        store.put_payload(key, payloads[round_ % 3])
    stop.set()
    reader.join()

    assert seen <= set(payloads)


@pytest.mark.parametrize("node_id", [".", "..", "-rf", "...", "a.b"])
def test_file_store_dot_ids_stay_inside(tmp_path: Path, node_id: str) -> None:
    store = FileCheckpointStore(tmp_path)
    key = PayloadKey(EXECUTION, node_id, "e" * 64)
    store.put_payload(key, b"1")

    assert store.path_of(key).parent == store.root / EXECUTION
    assert store.get_payload(key) == b"1"


def test_file_store_refuses_a_folder_linked_outside(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    store = FileCheckpointStore(tmp_path / "checkpoints")
    (store.root / EXECUTION).symlink_to(outside, target_is_directory=True)

    with pytest.raises(CheckpointStoreError, match="would leave the checkpoint folder"):
        store.put_payload(PayloadKey(EXECUTION, "n", "f" * 64), b"1")
    assert list(outside.iterdir()) == []


def test_file_store_survives_a_new_process(tmp_path: Path, database: Database) -> None:
    database.checkpoints = FileCheckpointStore(tmp_path / "checkpoints")
    _insert_execution(database, EXECUTION)
    _write(database, _checkpoint("n", {"kept": True}))

    fresh = Database(database.url, checkpoints=FileCheckpointStore(tmp_path / "checkpoints"))
    try:
        stored = _read(fresh)["n"]
    finally:
        fresh.dispose()
    assert stored.outputs == {"kept": True}


# -- the memory store ------------------------------------------------------


def _write_in_child(store: MemoryCheckpointStore) -> None:
    store.put_payload(PayloadKey(EXECUTION, "child", "1" * 64), b'"from the child"')


def test_shared_memory_store_crosses_a_fork() -> None:
    store = MemoryCheckpointStore.shared()
    context = multiprocessing.get_context("fork")
    child = context.Process(target=_write_in_child, args=(store,))
    child.start()
    child.join(timeout=30)

    assert child.exitcode == 0
    assert store.get_payload(PayloadKey(EXECUTION, "child", "1" * 64)) == b'"from the child"'


def test_unshared_memory_store_forgets_with_its_process(database: Database) -> None:
    database.checkpoints = MemoryCheckpointStore()
    _insert_execution(database, EXECUTION)
    _write(database, _checkpoint("n", 1))

    database.checkpoints = MemoryCheckpointStore()
    stored = _read(database)["n"]
    assert stored.outputs is MISSING
    assert stored.payload_problem is None
    assert stored.payload_note is not None
    assert stored.payload_note.startswith("outputs were kept in memory by the process that ran the node")
    assert verify_payload(stored) == (None, None)


def test_rows_name_the_strategy_that_kept_their_outputs(database: Database, tmp_path: Path) -> None:
    _insert_execution(database, EXECUTION)
    database.checkpoints = DatabaseCheckpointStore()
    _write(database, _checkpoint("in-row", {"value": 1}))
    database.checkpoints = FileCheckpointStore(tmp_path / "files")
    _write(database, _checkpoint("in-file", {"value": 2}))

    # The file store still reads rows the database store wrote.
    assert {node: cp.outputs for node, cp in _read(database).items()} == {"in-row": {"value": 1},
                                                                        "in-file": {"value": 2}}

    database.checkpoints = DatabaseCheckpointStore()
    stored = _read(database)
    assert stored["in-row"].outputs == {"value": 1}
    actual, problem = verify_payload(stored["in-file"])
    assert actual is None
    assert problem is not None
    assert problem.startswith("outputs were kept by the file checkpoint store, but this process uses "
                              "GL_ORCHESTRATOR_CHECKPOINT_STRATEGY=database")


# -- choosing a strategy ---------------------------------------------------


@pytest.mark.parametrize("strategy, kind", [("database", DatabaseCheckpointStore), ("FILE", FileCheckpointStore),
                                            ("memory", MemoryCheckpointStore)])
def test_settings_choose_the_store(tmp_path: Path, strategy: str, kind: type[CheckpointStore]) -> None:
    settings = load_settings({"GL_ORCHESTRATOR_HOME": str(tmp_path), "GL_ORCHESTRATOR_CHECKPOINT_STRATEGY": strategy})

    store = checkpoint_store_from_settings(settings)

    assert isinstance(store, kind)
    if isinstance(store, FileCheckpointStore):
        assert store.root == (tmp_path / "checkpoints").resolve()


def test_settings_reject_unknown_strategy(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="CHECKPOINT_STRATEGY='redis' is not one of"):
        load_settings({"GL_ORCHESTRATOR_HOME": str(tmp_path), "GL_ORCHESTRATOR_CHECKPOINT_STRATEGY": "redis"})


@pytest.mark.parametrize("strategy", ["memory", "file"])
def test_outside_embedded_mode_memory_and_file_warn(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                    strategy: str) -> None:
    settings = load_settings({
        "GL_ORCHESTRATOR_HOME": str(tmp_path), "GL_ORCHESTRATOR_CHECKPOINT_STRATEGY": strategy,
        "GL_ORCHESTRATOR_CHECKPOINT_DIR": str(tmp_path / "dir"),
        "GL_ORCHESTRATOR_DATABASE_URL": "postgresql://127.0.0.1/x", "GL_ORCHESTRATOR_BROKER_URL": "redis://127.0.0.1",
    })
    with caplog.at_level(logging.WARNING, logger="orchestrator.checkpoints"):
        checkpoint_store_from_settings(settings)

    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert f"checkpoint strategy {strategy} keeps outputs outside the shared database" in record.getMessage()


@pytest.mark.parametrize("strategy", ["memory", "file", "database"])
def test_embedded_mode_does_not_warn(tmp_path: Path, caplog: pytest.LogCaptureFixture, strategy: str) -> None:
    settings = load_settings({"GL_ORCHESTRATOR_HOME": str(tmp_path), "GL_ORCHESTRATOR_CHECKPOINT_STRATEGY": strategy})
    with caplog.at_level(logging.WARNING, logger="orchestrator.checkpoints"):
        checkpoint_store_from_settings(settings)

    assert caplog.records == []


def test_every_strategy_is_registered() -> None:
    from orchestrator.checkpoints import CHECKPOINT_STORES
    from orchestrator.settings import CHECKPOINT_STRATEGIES

    assert set(CHECKPOINT_STORES) == set(CHECKPOINT_STRATEGIES)




@pytest.mark.parametrize("plant", ["directory", "symlink", "fifo"])
def test_file_store_planted_payload_is_reported(database: Database, tmp_path: Path, plant: str) -> None:
    store = FileCheckpointStore(tmp_path / "checkpoints")
    database.checkpoints = store
    _insert_execution(database, EXECUTION)
    checkpoint = _checkpoint("n", {"value": 1})
    _write(database, checkpoint)
    path = store.path_of(PayloadKey(EXECUTION, "n", checkpoint.output_hash))
    path.unlink()
    if plant == "directory":
        path.mkdir()
    elif plant == "symlink":
        outside = tmp_path / "outside.json"
        outside.write_bytes(checkpoint.canonical or b"")
        path.symlink_to(outside)
    else:
        os.mkfifo(path)

    stored = _read(database)["n"]  # returns at once, even for a FIFO that no one writes

    actual, problem = verify_payload(stored)
    assert actual is None
    assert problem is not None
    assert problem.startswith("outputs cannot be read from the file checkpoint store")


def test_file_store_reads_legacy_rows(database: Database, tmp_path: Path) -> None:
    database.checkpoints = FileCheckpointStore(tmp_path / "checkpoints")
    _insert_execution(database, EXECUTION)
    _write(database, _checkpoint("n", {"value": 1}))
    _write(database, _checkpoint("nothing", None))
    database.transaction(lambda conn: conn.execute(text("UPDATE dag_checkpoints SET payload_store = NULL")))

    stored = _read(database)
    assert verify_payload(stored["n"]) == (_checkpoint("n", {"value": 1}).output_hash, None)
    assert verify_payload(stored["nothing"]) == (NULL_HASH, None)
