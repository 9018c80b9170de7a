"""Checkpoint stores: where a completed node's outputs live.

Every checkpoint has a row in ``dag_checkpoints`` (status, ``output_hash``,
attempts, size), written in the same transaction as the node's provenance
record, whatever the strategy. The strategy decides only where the outputs
themselves are kept:

``database``
    in the row's ``outputs`` column (the default, and the only strategy for
    several hosts);
``file``
    in one JSON file per checkpoint under ``GL_ORCHESTRATOR_CHECKPOINT_DIR``,
    written atomically (temporary file, fsync, rename);
``memory``
    in a mapping that lives as long as the process that made it (shared with
    the prefork children in embedded mode).

Payloads are addressed by ``(execution_id, node_id, output_hash)``. Two
writers of one node (a duplicate message) therefore never overwrite each
other's payload: the one whose row commits is the one that is read back, by
the hash in that row. A payload is written before its row commits, so a
committed row always has its payload. A payload whose transaction rolled back
is left behind, but no row points to it.

Stores never decide whether outputs are trustworthy: :func:`verify_payload`
re-hashes what a store returns, and a payload that is missing or unreadable
is reported, never skipped.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import re
import secrets
import stat
from abc import ABC, abstractmethod
from collections.abc import Iterable, MutableMapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from sqlalchemy import delete, null, select

from orchestrator.errors import CheckpointStoreError, JsonDomainError
from orchestrator.hashing import json_loads, output_hash
from orchestrator.models import checkpoint_archive, dag_checkpoints, utcnow

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

    from orchestrator.settings import Settings

__all__ = [
    "CHECKPOINT_STORES",
    "CheckpointStore",
    "DatabaseCheckpointStore",
    "FileCheckpointStore",
    "MemoryCheckpointStore",
    "NewCheckpoint",
    "PayloadKey",
    "StoredCheckpoint",
    "checkpoint_store_from_settings",
    "verify_payload",
]

logger = logging.getLogger(__name__)

# The DAG id grammar; execution ids are UUIDs, which it also admits.
_ID_PATTERN = re.compile(r"[A-Za-z0-9_.\-]{1,63}")
_HASH_PATTERN = re.compile(r"[0-9a-f]{64}")
# H(C(null)), the output hash of a node without outputs.
_NULL_HASH = output_hash(None)


class _Missing:
    """The outputs of a checkpoint whose payload its store cannot return."""

    def __repr__(self) -> str:
        return "<payload missing>"


MISSING: Any = _Missing()


@dataclass(frozen=True)
class PayloadKey:
    """The address of one payload: an execution's node and the hash of its outputs."""

    execution_id: str
    node_id: str
    output_hash: str

    def __post_init__(self) -> None:
        for name in ("execution_id", "node_id"):
            value = getattr(self, name)
            if not isinstance(value, str) or not _ID_PATTERN.fullmatch(value):
                raise CheckpointStoreError(
                    f"{name}={value!r} is not a valid id; ids are 1-63 characters of A-Z a-z 0-9 _ . -"
                )
        if not isinstance(self.output_hash, str) or not _HASH_PATTERN.fullmatch(self.output_hash):
            raise CheckpointStoreError(
                f"output_hash={self.output_hash!r} is not a SHA-256 hex digest "
                f"execution_id={self.execution_id} node_id={self.node_id}"
            )


@dataclass(frozen=True)
class NewCheckpoint:
    """A checkpoint about to be written; ``canonical`` is the canonical JSON of ``outputs``."""

    execution_id: str
    node_id: str
    status: str
    outputs: Any
    canonical: bytes | None
    output_hash: str
    attempt_count: int
    created_at: datetime = field(default_factory=utcnow)


@dataclass(frozen=True)
class StoredCheckpoint:
    """A checkpoint read back: its row, and its outputs from the store (or :data:`MISSING`)."""

    row_id: int
    execution_id: str
    node_id: str
    status: str
    outputs: Any
    output_hash: str | None
    size_bytes: int
    attempt_count: int
    created_at: datetime
    payload_removed_at: datetime | None
    # Why the outputs cannot be checked although they may be intact: they
    # were removed by retention or lived in a memory store that is gone.
    payload_problem: str | None = None
    payload_note: str | None = None

    def __getitem__(self, name: str) -> Any:
        # Verification code reads rows and checkpoints alike by key.
        return getattr(self, name)

    def get(self, name: str, default: Any = None) -> Any:
        return getattr(self, name, default)


def verify_payload(checkpoint: StoredCheckpoint) -> tuple[str | None, str | None]:
    """Re-hash a checkpoint's outputs; return the actual hash and, when it does not verify, the reason.

    A checkpoint whose outputs retention removed returns ``(None, None)``,
    because there is nothing left to re-hash. Its ``output_hash`` stays in
    the provenance chain. Outputs still present are re-hashed, even when
    ``payload_removed_at`` is set.
    """
    if checkpoint.payload_removed_at is not None and checkpoint.outputs is None:
        return None, None
    if checkpoint.payload_note is not None:
        return None, None
    if checkpoint.payload_problem is not None:
        return None, checkpoint.payload_problem
    try:
        actual = output_hash(checkpoint.outputs)
    except JsonDomainError as exc:
        return None, f"outputs cannot be hashed: {exc}"
    if checkpoint.output_hash is None:
        return actual, "output_hash is missing"
    if actual != checkpoint.output_hash:
        return actual, f"outputs hash to {actual}, but output_hash is {checkpoint.output_hash}"
    return actual, None


class CheckpointStore(ABC):
    """Write, read, archive and expire checkpoints; subclasses decide where payloads live.

    Every method that takes a connection works inside the caller's
    transaction for the ``dag_checkpoints`` row. Work on payloads that must
    not happen unless that transaction commits (deleting them) is returned
    as keys for :meth:`discard`, which the caller runs after the commit.
    """

    strategy: ClassVar[str]
    # Whether payloads outlive the process that wrote them.
    durable: ClassVar[bool]

    # -- payloads: what each strategy implements -------------------------

    @abstractmethod
    def put_payload(self, key: PayloadKey, canonical: bytes) -> None:
        """Store the canonical JSON bytes of one payload; writing the same key again is harmless."""

    @abstractmethod
    def get_payload(self, key: PayloadKey) -> bytes | None:
        """Return one payload's bytes exactly as stored, or None when there is none."""

    @abstractmethod
    def preserve_payload(self, key: PayloadKey, archived_at: datetime) -> str | None:
        """Copy a payload aside as evidence and return where it is kept, or None when there is nothing to copy."""

    @abstractmethod
    def drop_payload(self, key: PayloadKey) -> bool:
        """Delete one payload; return whether there was one."""

    def outputs_column(self, outputs: Any) -> Any:
        """Return the value for the row's ``outputs`` column: SQL NULL unless the payload lives there."""
        # null(), because a plain None would store the JSON value null.
        return null()

    # -- checkpoints: shared by every strategy ---------------------------

    def write(self, conn: Connection, checkpoint: NewCheckpoint) -> None:
        """Store a checkpoint's payload, then insert its row in the caller's transaction."""
        size = 0
        if checkpoint.canonical is not None:
            size = len(checkpoint.canonical)
            key = PayloadKey(checkpoint.execution_id, checkpoint.node_id, checkpoint.output_hash)
            self.put_payload(key, checkpoint.canonical)

        conn.execute(dag_checkpoints.insert().values(
            execution_id=checkpoint.execution_id, node_id=checkpoint.node_id, status=checkpoint.status,
            outputs=self.outputs_column(checkpoint.outputs) if checkpoint.canonical is not None else None,
            output_hash=checkpoint.output_hash, size_bytes=size, attempt_count=checkpoint.attempt_count,
            created_at=checkpoint.created_at, payload_store=self.strategy,
        ))
        logger.debug("checkpoint saved execution_id=%s node_id=%s bytes=%d strategy=%s",
                     checkpoint.execution_id, checkpoint.node_id, size, self.strategy)

    def read(self, conn: Connection, execution_id: str, node_ids: Iterable[str] | None = None) -> dict[str, StoredCheckpoint]:
        """Return an execution's checkpoints (or those of ``node_ids``) by node id, in write order."""
        query = select(dag_checkpoints).where(dag_checkpoints.c.execution_id == execution_id)
        if node_ids is not None:
            requested = sorted(set(node_ids))
            if not requested:
                return {}
            query = query.where(dag_checkpoints.c.node_id.in_(requested))
        rows = conn.execute(query.order_by(dag_checkpoints.c.id)).mappings().all()
        return {row["node_id"]: self._stored(row) for row in rows}

    def _stored(self, row: Any) -> StoredCheckpoint:
        outputs, problem, note = self._outputs_by_writer(row)
        return StoredCheckpoint(
            row_id=row["id"], execution_id=row["execution_id"], node_id=row["node_id"], status=row["status"],
            outputs=outputs, output_hash=row["output_hash"], size_bytes=row["size_bytes"],
            attempt_count=row["attempt_count"], created_at=row["created_at"],
            payload_removed_at=row["payload_removed_at"], payload_problem=problem, payload_note=note,
        )

    def _outputs_by_writer(self, row: Any) -> tuple[Any, str | None, str | None]:
        """Read the outputs as the strategy that wrote the row keeps them: ``(outputs, problem, note)``."""
        writer = row["payload_store"] or self._legacy_writer(row)
        if writer == DatabaseCheckpointStore.strategy:
            return row["outputs"], None, None  # any process can read the column
        if writer != self.strategy:
            if row["status"] != "completed" or row["payload_removed_at"] is not None:
                return None, None, None
            return MISSING, (
                f"outputs were kept by the {writer} checkpoint store, but this process uses "
                f"GL_ORCHESTRATOR_CHECKPOINT_STRATEGY={self.strategy}; verify with the strategy (and "
                "GL_ORCHESTRATOR_CHECKPOINT_DIR) that the execution was run with"
            ), None

        outputs, problem = self._outputs_of(row)
        if outputs is MISSING and not self.durable and problem is not None and problem.startswith("outputs are missing"):
            # A memory store loses its payloads when its process ends, which is
            # how the strategy works, so the hash stays unchecked, as after retention.
            return MISSING, None, (
                f"outputs were kept in memory by the process that ran the node and are gone "
                f"({self.strategy} checkpoint strategy); output_hash kept, not re-checked"
            )
        return outputs, problem, None

    def _legacy_writer(self, row: Any) -> str:
        """Guess the strategy of a row written before rows named it.

        A completed row whose outputs column is empty, although its hash is
        not that of null and retention kept it, was not written by the
        database strategy, so it is read as this process's strategy wrote it.
        """
        unwritten = (row["status"] == "completed" and row["outputs"] is None
                     and row["payload_removed_at"] is None and row["output_hash"] != _NULL_HASH)
        return self.strategy if unwritten else DatabaseCheckpointStore.strategy

    def _outputs_of(self, row: Any) -> tuple[Any, str | None]:
        if row["status"] != "completed" or row["payload_removed_at"] is not None:
            return None, None
        try:
            key = PayloadKey(row["execution_id"], row["node_id"], row["output_hash"])
        except CheckpointStoreError:
            return MISSING, f"output_hash {row['output_hash']!r} is missing or malformed, so no payload can be found"

        try:
            payload = self.get_payload(key)
        except (CheckpointStoreError, OSError) as exc:
            logger.error("checkpoint payload unreadable execution_id=%s node_id=%s strategy=%s error=%s",
                         key.execution_id, key.node_id, self.strategy, exc)
            return MISSING, f"outputs cannot be read from the {self.strategy} checkpoint store: {exc}"
        if payload is None:
            # Expected of a memory store after a restart, so logged as an error only for durable stores.
            log = logger.error if self.durable else logger.info
            log("checkpoint payload missing execution_id=%s node_id=%s output_hash=%s strategy=%s",
                key.execution_id, key.node_id, key.output_hash, self.strategy)
            return MISSING, f"outputs are missing from the {self.strategy} checkpoint store"
        try:
            return json_loads(payload), None
        except (ValueError, UnicodeDecodeError) as exc:
            return MISSING, f"stored outputs are not valid JSON: {exc}"

    def archive(self, conn: Connection, execution_id: str, reasons: dict[str, str]) -> tuple[list[str], list[PayloadKey]]:
        """Move the checkpoints of the nodes in ``reasons`` to ``checkpoint_archive``, each with its reason.

        Returns the node ids moved and the payload keys to :meth:`discard`
        once the transaction commits; each payload was first copied aside.
        """
        if not reasons:
            return [], []
        now = utcnow()
        rows = conn.execute(select(dag_checkpoints).where(
            dag_checkpoints.c.execution_id == execution_id,
            dag_checkpoints.c.node_id.in_(sorted(reasons)),
        ).order_by(dag_checkpoints.c.id)).mappings().all()

        moved: list[str] = []
        to_discard: list[PayloadKey] = []
        for row in rows:
            reason = reasons[row["node_id"]]
            key = self._key_of(row)
            if key is not None:
                kept_at = self.preserve_payload(key, now)
                if kept_at is not None:
                    reason = f"{reason}; payload kept at {kept_at}"
                to_discard.append(key)
            conn.execute(checkpoint_archive.insert().values(
                execution_id=execution_id, node_id=row["node_id"], status=row["status"], outputs=row["outputs"],
                output_hash=row["output_hash"], size_bytes=row["size_bytes"], attempt_count=row["attempt_count"],
                created_at=row["created_at"], archived_at=now, reason=reason,
            ))
            moved.append(row["node_id"])
        conn.execute(delete(dag_checkpoints).where(
            dag_checkpoints.c.execution_id == execution_id, dag_checkpoints.c.node_id.in_(moved)))
        return moved, to_discard

    def _key_of(self, row: Any) -> PayloadKey | None:
        """Return the payload key of a row whose payload lives outside the row, if any."""
        if self.strategy == "database" or row["status"] != "completed" or row["payload_removed_at"] is not None:
            return None
        try:
            return PayloadKey(row["execution_id"], row["node_id"], row["output_hash"])
        except CheckpointStoreError:
            return None

    def payload_keys(self, rows: Iterable[Any]) -> list[PayloadKey]:
        """Return the keys of the payloads that ``rows`` (of ``dag_checkpoints``) point to outside the row."""
        return [key for key in (self._key_of(row) for row in rows) if key is not None]

    def discard(self, keys: Sequence[PayloadKey]) -> int:
        """Delete payloads whose rows a committed transaction archived or expired; return how many existed."""
        removed = 0
        for key in keys:
            try:
                removed += self.drop_payload(key)
            except (OSError, CheckpointStoreError):
                # No row points to this payload any more, so a leftover file
                # is no checkpoint. It only takes space until removed by hand.
                logger.exception("checkpoint payload not deleted execution_id=%s node_id=%s output_hash=%s",
                                 key.execution_id, key.node_id, key.output_hash)
        return removed


class DatabaseCheckpointStore(CheckpointStore):
    """Keep outputs in the ``outputs`` column of their ``dag_checkpoints`` row."""

    strategy = "database"
    durable = True

    def put_payload(self, key: PayloadKey, canonical: bytes) -> None:
        """Do nothing: :meth:`outputs_column` puts the outputs in the row itself."""

    def get_payload(self, key: PayloadKey) -> bytes | None:
        raise NotImplementedError("the database store reads outputs from the row")

    def preserve_payload(self, key: PayloadKey, archived_at: datetime) -> str | None:
        return None

    def drop_payload(self, key: PayloadKey) -> bool:
        return False

    def outputs_column(self, outputs: Any) -> Any:
        return outputs

    def _outputs_of(self, row: Any) -> tuple[Any, str | None]:
        return row["outputs"], None


class MemoryCheckpointStore(CheckpointStore):
    """Keep payloads in a mapping, for tests and single-process runs.

    ``mapping`` may be a :class:`multiprocessing.managers.DictProxy`, so the
    children of a prefork pool share one store with their parent.
    """

    strategy = "memory"
    durable = False

    def __init__(self, mapping: MutableMapping[Any, bytes] | None = None) -> None:
        self._payloads: MutableMapping[Any, bytes] = {} if mapping is None else mapping
        self._manager: Any = None

    @classmethod
    def shared(cls) -> MemoryCheckpointStore:
        """Return a store whose mapping lives in a manager process, so forked children share it.

        Create it before the pool forks; the manager stops with this process.
        """
        manager = multiprocessing.Manager()
        store = cls(manager.dict())
        store._manager = manager
        return store

    @staticmethod
    def _slot(key: PayloadKey, area: str = "live") -> tuple[str, str, str, str]:
        return area, key.execution_id, key.node_id, key.output_hash

    def put_payload(self, key: PayloadKey, canonical: bytes) -> None:
        self._payloads[self._slot(key)] = bytes(canonical)

    def get_payload(self, key: PayloadKey) -> bytes | None:
        return self._payloads.get(self._slot(key))

    def preserve_payload(self, key: PayloadKey, archived_at: datetime) -> str | None:
        payload = self.get_payload(key)
        if payload is None:
            return None
        slot = ("archive", key.execution_id, key.node_id, f"{key.output_hash}@{archived_at.isoformat()}")
        self._payloads[slot] = payload
        return f"memory:{slot[1]}/{slot[2]}/{slot[3]}"

    def drop_payload(self, key: PayloadKey) -> bool:
        return self._payloads.pop(self._slot(key), None) is not None

    def archived(self) -> dict[tuple[str, str, str], bytes]:
        """Return the payloads copied aside, by execution id, node id and hash with time."""
        return {slot[1:]: payload for slot, payload in list(self._payloads.items()) if slot[0] == "archive"}


class FileCheckpointStore(CheckpointStore):
    """Keep payloads as files ``<root>/<execution_id>/<node_id>@<output_hash>.json``.

    Files are written atomically: a temporary file in the same folder, fsync,
    rename over the final name, and fsync of the folder. Payloads copied
    aside by a resume go to ``<root>/<execution_id>/archive/``.
    """

    strategy = "file"
    durable = True

    def __init__(self, root: Path) -> None:
        self.root = Path(root).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def path_of(self, key: PayloadKey) -> Path:
        """Return the file of one payload, refusing any path outside the root."""
        path = (self.root / key.execution_id / f"{key.node_id}@{key.output_hash}.json").resolve()
        if path.parent.parent != self.root:
            raise CheckpointStoreError(
                f"checkpoint path {str(path)!r} would leave the checkpoint folder {str(self.root)!r} "
                f"execution_id={key.execution_id!r} node_id={key.node_id!r}"
            )
        return path

    def put_payload(self, key: PayloadKey, canonical: bytes) -> None:
        path = self.path_of(key)
        try:
            _write_atomically(path, canonical)
        except OSError as exc:
            raise CheckpointStoreError(
                f"writing checkpoint file {str(path)!r} failed: {exc}; check that GL_ORCHESTRATOR_CHECKPOINT_DIR "
                f"is a writable folder execution_id={key.execution_id} node_id={key.node_id}"
            ) from exc

    def get_payload(self, key: PayloadKey) -> bytes | None:
        """Return the file's bytes; raise OSError for anything but a regular file, symbolic links included."""
        path = self.path_of(key)
        try:
            # O_NONBLOCK keeps a planted FIFO from blocking the open; O_NOFOLLOW rejects a link.
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError:
            return None
        with os.fdopen(fd, "rb") as handle:
            if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                raise OSError(f"{path} is not a regular file")
            return handle.read()

    def preserve_payload(self, key: PayloadKey, archived_at: datetime) -> str | None:
        payload = self.get_payload(key)
        if payload is None:
            return None
        stamp = archived_at.strftime("%Y%m%dT%H%M%S.%fZ")
        target = self.path_of(key).parent / "archive" / f"{key.node_id}@{key.output_hash}.{stamp}.json"
        _write_atomically(target, payload)
        return str(target)

    def drop_payload(self, key: PayloadKey) -> bool:
        path = self.path_of(key)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        _fsync_folder(path.parent)
        return True


def _write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a reader sees the old file or the whole new one, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.parent / f".{path.name}.{secrets.token_hex(8)}.tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)


def _fsync_folder(folder: Path) -> None:
    # The rename or unlink is durable only once the folder's entry is.
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


CHECKPOINT_STORES: dict[str, type[CheckpointStore]] = {
    store.strategy: store for store in (DatabaseCheckpointStore, FileCheckpointStore, MemoryCheckpointStore)
}


def checkpoint_store_from_settings(settings: Settings, *, share_memory: bool = False) -> CheckpointStore:
    """Build the store that ``GL_ORCHESTRATOR_CHECKPOINT_STRATEGY`` names, warning where it does not fit.

    ``share_memory`` makes a memory store that the children of a prefork
    pool started after this call share with this process.
    """
    strategy = settings.checkpoint_strategy
    if strategy == "database":
        return DatabaseCheckpointStore()

    if not settings.embedded:
        logger.warning(
            "checkpoint strategy %s keeps outputs outside the shared database: a worker or API process on "
            "another host (memory: any other process) cannot read them, and a resume reruns what it cannot "
            "read. Use GL_ORCHESTRATOR_CHECKPOINT_STRATEGY=database for several processes or hosts",
            strategy,
        )
    if strategy == "memory":
        return MemoryCheckpointStore.shared() if share_memory else MemoryCheckpointStore()
    return FileCheckpointStore(settings.checkpoint_dir or settings.home / "checkpoints")

