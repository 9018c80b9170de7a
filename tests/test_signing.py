"""Signed chain heads: keys, settings, the finalizer, verification, the API and the migration.

Database tests run on SQLite and PostgreSQL through the ``database`` fixture
and drive the scheduler by hand, as tests/test_scheduler.py does. API tests
use the Flask test client of tests/test_api.py.
"""

from __future__ import annotations

import base64
import hashlib
import os
import stat
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import inspect, select, update

from orchestrator import hashing
from orchestrator.agents import AgentRegistry
from orchestrator.dag import dag_from_normalized
from orchestrator.database import Database, upgrade_schema
from orchestrator.errors import SettingsError
from orchestrator.finalizer import finalize_execution
from orchestrator.models import dag_checkpoints, dag_executions, execution_provenance
from orchestrator.provenance import verify_execution
from orchestrator.resume import resume_execution
from orchestrator.scheduler import Scheduler
from orchestrator.settings import load_settings
from orchestrator.signing import (
    SignatureStatus,
    SigningKeys,
    encode_public_key,
    format_finalized_at,
    key_id_for,
    load_signing_keys,
    signature_block,
    signed_document,
    verify_signature,
    verify_signature_block,
    write_private_key,
)
from tests.test_api import PREFIX, Api, assert_error, make_api, run_queued_nodes  # noqa: F401 (make_api is a fixture)
from tests.test_scheduler import _dag, _drain, _start

EXECUTION_ID = "0b6f6f3e-8d0c-4a59-9c1e-2f6c8e0a7d31"
DAG_HASH = "d" * 64
CHAIN_HASH = "c" * 64
FINALIZED_AT = datetime(2026, 12, 5, tzinfo=timezone.utc)
SIGNED_COLUMNS = ("finalized_at", "signature", "signing_key_id")

# A chain a -> b -> c whose first node reads the input, so a resume with a new
# input runs every node again.
CHAIN = {
    "a": {"agent_id": "t.add", "input_mapping": {"x": "input.x"}},
    "b": {"agent_id": "t.add", "depends_on": ["a"], "input_mapping": {"a": "results.a"}},
    "c": {"agent_id": "t.add", "depends_on": ["b"], "input_mapping": {"b": "results.b"}},
}


@pytest.fixture
def registry() -> AgentRegistry:
    agents = AgentRegistry()
    agents.register("t.add", "1.0.0", lambda inputs, params: sum(inputs.values()))
    return agents


def _key_file(folder: Path, name: str) -> Path:
    path = folder / name
    write_private_key(path)
    return path


def _public_line(key_file: Path) -> str:
    key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    assert isinstance(key, Ed25519PrivateKey)
    return encode_public_key(key.public_key())


def _key_id(key_file: Path) -> str:
    key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    assert isinstance(key, Ed25519PrivateKey)
    return key_id_for(key.public_key())


def _block(keys: SigningKeys, **signed_overrides: str) -> dict[str, Any]:
    """Sign the module's sample chain head and return its signature block."""
    signature = keys.sign(EXECUTION_ID, DAG_HASH, CHAIN_HASH, FINALIZED_AT)
    row = {"execution_id": EXECUTION_ID, "dag_hash": DAG_HASH, "provenance_chain_hash": CHAIN_HASH,
           "finalized_at": FINALIZED_AT, "signature": signature.value, "signing_key_id": signature.key_id}
    block = signature_block(row, keys)
    assert block is not None
    block["signed"].update(signed_overrides)
    return block


def _check(block: dict[str, Any] | None, keys: SigningKeys | None) -> Any:
    return verify_signature_block(block, execution_id=EXECUTION_ID, dag_hash=DAG_HASH,
                                  provenance_chain_hash=CHAIN_HASH, keys=keys)


def _execution(db: Database, execution_id: str) -> dict[str, Any]:
    with db.connect() as conn:
        row = conn.execute(select(dag_executions).where(dag_executions.c.execution_id == execution_id)).mappings()
        return dict(row.one())


def _run_chain(database: Database, registry: AgentRegistry, keys: SigningKeys | None,
               input_data: dict[str, Any] | None = None) -> tuple[Scheduler, str]:
    scheduler, execution_id, follow_up = _start(database, registry, _dag(registry, CHAIN), input_data or {"x": 1})
    assert _drain(scheduler, follow_up).finalize
    result = finalize_execution(database, execution_id, signing_keys=keys)
    assert result.status == "completed"
    return scheduler, execution_id


# -- keys and signatures, no database ----------------------------------------------


def test_key_id_is_sha256_prefix_of_raw_key() -> None:
    key = Ed25519PrivateKey.generate()
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert key_id_for(key.public_key()) == "ed25519:" + hashlib.sha256(raw).hexdigest()[:16]
    assert base64.b64decode(encode_public_key(key.public_key()), validate=True) == raw
    assert SigningKeys(key).current_key_id == key_id_for(key.public_key())


def test_finalized_at_format() -> None:
    assert format_finalized_at(FINALIZED_AT) == "2026-12-05T00:00:00.000000Z"
    # SQLite returns naive datetimes, which are UTC.
    assert format_finalized_at(datetime(2026, 12, 5, 1, 2, 3, 45)) == "2026-12-05T01:02:03.000045Z"
    plus_two = timezone(timedelta(hours=2))
    assert format_finalized_at(datetime(2026, 12, 5, 2, 0, tzinfo=plus_two)) == "2026-12-05T00:00:00.000000Z"


def test_signed_bytes_are_canonical_json() -> None:
    key = Ed25519PrivateKey.generate()
    keys = SigningKeys(key)
    signature = keys.sign(EXECUTION_ID, DAG_HASH, CHAIN_HASH, FINALIZED_AT)
    expected = (
        '{"dag_hash":"' + DAG_HASH + '","execution_id":"' + EXECUTION_ID
        + '","finalized_at":"2026-12-05T00:00:00.000000Z","provenance_chain_hash":"' + CHAIN_HASH + '"}'
    ).encode()
    assert hashing.canonical_json(signed_document(EXECUTION_ID, DAG_HASH, CHAIN_HASH, FINALIZED_AT)) == expected
    # Raises InvalidSignature unless exactly these bytes were signed.
    key.public_key().verify(base64.b64decode(signature.value, validate=True), expected)


def test_sign_and_verify_round_trip() -> None:
    keys = SigningKeys(Ed25519PrivateKey.generate())
    block = _block(keys)
    assert set(block) == {"algorithm", "key_id", "public_key", "signed", "value"}
    assert block["algorithm"] == "ed25519"
    assert block["key_id"] == keys.current_key_id
    assert block["signed"] == {"execution_id": EXECUTION_ID, "dag_hash": DAG_HASH,
                               "provenance_chain_hash": CHAIN_HASH, "finalized_at": "2026-12-05T00:00:00.000000Z"}
    check = _check(block, keys)
    assert check.status is SignatureStatus.VALID
    assert check.key_id == keys.current_key_id
    assert check.breaks_chain is False
    assert check.to_dict() == {"status": "valid", "key_id": keys.current_key_id, "detail": check.detail}


@pytest.mark.parametrize(("field", "value", "detail"), [
    ("execution_id", "another-execution", "differs from the execution's id"),
    ("dag_hash", "e" * 64, "differs from the execution's dag_hash"),
    ("provenance_chain_hash", "f" * 64, "differs from the recomputed provenance_chain_hash"),
    ("finalized_at", "2026-12-05T00:00:00Z", "is not a UTC time"),
])
def test_verify_rejects_changed_signed_field(field: str, value: str, detail: str) -> None:
    keys = SigningKeys(Ed25519PrivateKey.generate())
    check = _check(_block(keys, **{field: value}), keys)
    assert check.status is SignatureStatus.INVALID
    assert detail in check.detail
    assert check.breaks_chain is True


def test_verify_rejects_changed_finalized_at() -> None:
    keys = SigningKeys(Ed25519PrivateKey.generate())
    check = _check(_block(keys, finalized_at="2026-12-05T00:00:00.000001Z"), keys)
    assert check.status is SignatureStatus.INVALID
    assert "does not verify" in check.detail


@pytest.mark.parametrize(("change", "detail"), [
    ({"value": base64.b64encode(bytes(64)).decode()}, "does not verify"),
    ({"value": "not base64!"}, "not the standard base64 of 64 bytes"),
    ({"value": base64.b64encode(bytes(32)).decode()}, "not the standard base64 of 64 bytes"),
    ({"algorithm": "rsa"}, "is not ed25519"),
    ({"key_id": None}, "has no key id"),
])
def test_verify_rejects_malformed_block(change: dict[str, Any], detail: str) -> None:
    keys = SigningKeys(Ed25519PrivateKey.generate())
    block = {**_block(keys), **change}
    check = _check(block, keys)
    assert check.status is SignatureStatus.INVALID
    assert detail in check.detail


def test_verify_ignores_public_key_in_block() -> None:
    keys = SigningKeys(Ed25519PrivateKey.generate())
    forger = SigningKeys(Ed25519PrivateKey.generate())
    # A forged block that names the trusted key id but carries the forger's
    # public key and signature.
    block = {**_block(forger), "key_id": keys.current_key_id,
             "public_key": encode_public_key(Ed25519PrivateKey.generate().public_key())}
    check = _check(block, keys)
    assert check.status is SignatureStatus.INVALID


def test_verify_untrusted_key_is_unknown() -> None:
    trusted = SigningKeys(Ed25519PrivateKey.generate())
    stranger = SigningKeys(Ed25519PrivateKey.generate())
    for keys in (trusted, SigningKeys(), None):
        check = _check(_block(stranger), keys)
        assert check.status is SignatureStatus.UNKNOWN_KEY
        assert check.key_id == stranger.current_key_id
        assert "GL_ORCHESTRATOR_TRUSTED_KEYS_FILE" in check.detail
        assert check.breaks_chain is True


def test_verify_unsigned() -> None:
    check = _check(None, SigningKeys(Ed25519PrivateKey.generate()))
    assert check.status is SignatureStatus.UNSIGNED
    assert check.key_id is None
    assert "unsigned" in check.detail
    assert check.breaks_chain is False
    row = {"execution_id": EXECUTION_ID, "dag_hash": DAG_HASH, "provenance_chain_hash": CHAIN_HASH,
           "finalized_at": None, "signature": None, "signing_key_id": None}
    assert signature_block(row, None) is None
    assert verify_signature(row, CHAIN_HASH, None).status is SignatureStatus.UNSIGNED


def test_block_omits_untrusted_public_key() -> None:
    signer = SigningKeys(Ed25519PrivateKey.generate())
    block = _block(signer)
    row = {"execution_id": EXECUTION_ID, "dag_hash": DAG_HASH, "provenance_chain_hash": CHAIN_HASH,
           "finalized_at": FINALIZED_AT, "signature": block["value"], "signing_key_id": block["key_id"]}
    assert signature_block(row, SigningKeys())["public_key"] is None  # type: ignore[index]
    assert signature_block(row, signer)["public_key"] == block["public_key"]  # type: ignore[index]


def test_repr_shows_key_ids_only() -> None:
    key = Ed25519PrivateKey.generate()
    raw = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                            serialization.NoEncryption())
    text = repr(SigningKeys(key))
    assert key_id_for(key.public_key()) in text
    assert base64.b64encode(raw).decode() not in text
    assert raw.hex() not in text


def test_unsigned_keys_cannot_sign() -> None:
    with pytest.raises(RuntimeError, match="GL_ORCHESTRATOR_SIGNING_KEY_FILE"):
        SigningKeys().sign(EXECUTION_ID, DAG_HASH, CHAIN_HASH, FINALIZED_AT)


def test_write_private_key_mode_and_no_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "signing.pem"
    public_key = write_private_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert load_signing_keys(path, None).current_key_id == key_id_for(public_key)
    before = path.read_bytes()
    with pytest.raises(FileExistsError):
        write_private_key(path)
    assert path.read_bytes() == before


# -- settings ----------------------------------------------------------------------


def _load(tmp_path: Path, **variables: str) -> Any:
    env = {"GL_ORCHESTRATOR_HOME": str(tmp_path / "home")}
    env.update({f"GL_ORCHESTRATOR_{name}": value for name, value in variables.items()})
    return load_settings(env)


def test_settings_default_to_no_keys(tmp_path: Path) -> None:
    settings = _load(tmp_path)
    assert settings.signing_key_file is None
    assert settings.trusted_keys_file is None


def test_settings_load_key_files(tmp_path: Path) -> None:
    current = _key_file(tmp_path, "current.pem")
    old = _key_file(tmp_path, "old.pem")
    trusted = tmp_path / "trusted-keys"
    trusted.write_text(f"# retired keys\n\n{_public_line(old)}  # retired 2026-12\n{_public_line(current)}\n")
    settings = _load(tmp_path, SIGNING_KEY_FILE=str(current), TRUSTED_KEYS_FILE=str(trusted))
    assert settings.signing_key_file == current
    assert settings.trusted_keys_file == trusted

    from orchestrator.signing import signing_keys_from_settings

    description = signing_keys_from_settings(settings).describe()
    assert description["current_key_id"] == _key_id(current)
    assert description["keys"] == [
        {"key_id": _key_id(current), "algorithm": "ed25519", "public_key": _public_line(current), "current": True},
        {"key_id": _key_id(old), "algorithm": "ed25519", "public_key": _public_line(old), "current": False},
    ]


def test_settings_missing_key_file(tmp_path: Path) -> None:
    with pytest.raises(SettingsError) as caught:
        _load(tmp_path, SIGNING_KEY_FILE=str(tmp_path / "absent.pem"))
    message = str(caught.value)
    assert "GL_ORCHESTRATOR_SIGNING_KEY_FILE=" in message
    assert "cannot be read" in message
    assert "absent.pem" in message


def test_settings_reject_non_ed25519_key(tmp_path: Path) -> None:
    path = tmp_path / "ec.pem"
    path.write_bytes(ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    with pytest.raises(SettingsError) as caught:
        _load(tmp_path, SIGNING_KEY_FILE=str(path))
    message = str(caught.value)
    assert "GL_ORCHESTRATOR_SIGNING_KEY_FILE=" in message
    assert "contains a private key of type EC," in message
    assert "orchestrator keys generate --out PATH" in message


def test_settings_reject_encrypted_key(tmp_path: Path) -> None:
    path = tmp_path / "encrypted.pem"
    path.write_bytes(Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret")))
    with pytest.raises(SettingsError, match="GL_ORCHESTRATOR_SIGNING_KEY_FILE=.*encrypted private key"):
        _load(tmp_path, SIGNING_KEY_FILE=str(path))


def test_settings_reject_non_pem_key(tmp_path: Path) -> None:
    path = tmp_path / "public.pem"
    path.write_bytes(Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    with pytest.raises(SettingsError, match="GL_ORCHESTRATOR_SIGNING_KEY_FILE=.*is not a PEM private key"):
        _load(tmp_path, SIGNING_KEY_FILE=str(path))


@pytest.mark.parametrize(("line", "detail"), [
    ("not-base64!", "is not standard base64"),
    (base64.b64encode(bytes(31)).decode(), "decodes to 31 bytes"),
    (base64.b64encode(bytes(32)).decode() + " extra", "is not standard base64"),
])
def test_settings_reject_malformed_trusted_key(tmp_path: Path, line: str, detail: str) -> None:
    trusted = tmp_path / "trusted-keys"
    trusted.write_text(f"# header\n{_public_line(_key_file(tmp_path, 'ok.pem'))}\n{line}\n")
    with pytest.raises(SettingsError) as caught:
        _load(tmp_path, TRUSTED_KEYS_FILE=str(trusted))
    message = str(caught.value)
    assert "GL_ORCHESTRATOR_TRUSTED_KEYS_FILE=" in message
    assert "line 3" in message
    assert detail in message
    assert "one key per line" in message


def test_settings_missing_trusted_keys_file(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="GL_ORCHESTRATOR_TRUSTED_KEYS_FILE=.*cannot be read"):
        _load(tmp_path, TRUSTED_KEYS_FILE=str(tmp_path / "absent"))


def test_settings_warn_on_readable_key_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = _key_file(tmp_path, "shared.pem")
    os.chmod(path, 0o644)
    _load(tmp_path, SIGNING_KEY_FILE=str(path))
    assert "signing key file is accessible to other users" in caplog.text


# -- finalizer and verification, on SQLite and PostgreSQL --------------------------


def test_finalizer_stores_verifiable_signature(database: Database, registry: AgentRegistry) -> None:
    keys = SigningKeys(Ed25519PrivateKey.generate())
    _, execution_id = _run_chain(database, registry, keys)

    row = _execution(database, execution_id)
    assert row["signing_key_id"] == keys.current_key_id
    assert row["finalized_at"] == row["completed_at"]
    block = signature_block(row, keys)
    assert block is not None
    assert block["signed"]["provenance_chain_hash"] == row["provenance_chain_hash"]
    assert block["signed"]["finalized_at"] == format_finalized_at(row["completed_at"])

    report = verify_execution(database, execution_id, signing_keys=keys)
    assert report.chain_valid is True
    assert report.problems == []
    assert report.signature is not None
    assert report.signature.status is SignatureStatus.VALID
    assert report.to_dict()["signature"] == {"status": "valid", "key_id": keys.current_key_id,
                                             "detail": report.signature.detail}


def test_unsigned_execution_verifies(database: Database, registry: AgentRegistry) -> None:
    _, execution_id = _run_chain(database, registry, None)
    row = _execution(database, execution_id)
    assert [row[column] for column in SIGNED_COLUMNS] == [None, None, None]

    report = verify_execution(database, execution_id, signing_keys=SigningKeys(Ed25519PrivateKey.generate()))
    assert report.chain_valid is True
    assert report.problems == []
    assert report.signature is not None
    assert report.signature.status is SignatureStatus.UNSIGNED
    assert "unsigned" in report.signature.detail


def test_stripped_signature_fails_when_signatures_are_required(database: Database, registry: AgentRegistry) -> None:
    private_key = Ed25519PrivateKey.generate()
    _, execution_id = _run_chain(database, registry, SigningKeys(private_key))
    database.transaction(lambda conn: conn.execute(update(dag_executions).where(
        dag_executions.c.execution_id == execution_id).values(finalized_at=None, signature=None, signing_key_id=None)))

    lenient = verify_execution(database, execution_id, signing_keys=SigningKeys(private_key))
    assert lenient.chain_valid is True
    assert lenient.signature is not None
    assert lenient.signature.status is SignatureStatus.UNSIGNED

    strict = verify_execution(database, execution_id,
                              signing_keys=SigningKeys(private_key, require_signatures=True))
    database.transaction(lambda conn: conn.execute(update(dag_executions).where(
        dag_executions.c.execution_id == execution_id).values(provenance_chain_hash=None)))
    no_head = verify_execution(database, execution_id,
                               signing_keys=SigningKeys(private_key, require_signatures=True))
    assert no_head.chain_valid is False  # a completed execution was finalized, with or without its hash
    assert no_head.signature is not None
    assert no_head.signature.status is SignatureStatus.MISSING
    assert strict.chain_valid is False
    assert strict.signature is not None
    assert strict.signature.status is SignatureStatus.MISSING
    assert any(problem.startswith("signature missing:") for problem in strict.problems)


def test_settings_require_signed_chains(tmp_path: Path) -> None:
    from orchestrator.signing import signing_keys_from_settings

    assert signing_keys_from_settings(_load(tmp_path)).require_signatures is False
    settings = _load(tmp_path, REQUIRE_SIGNED_CHAINS="true")
    assert signing_keys_from_settings(settings).require_signatures is True


def _rewrite_outputs(db: Database, execution_id: str, outputs: dict[str, Any]) -> None:
    """Change node outputs and recompute every hash, as someone with database access but no key can.

    The children's input documents are rewritten to the new outputs too,
    so every input, output, chain and execution hash stays consistent.
    """
    def work(conn: Any) -> None:
        execution = conn.execute(select(dag_executions).where(dag_executions.c.execution_id == execution_id)
                                 ).mappings().one()
        dag = dag_from_normalized(execution["dag_document"])
        records = {row["node_id"]: dict(row) for row in conn.execute(
            select(execution_provenance).where(execution_provenance.c.execution_id == execution_id)).mappings()}
        chain: dict[str, str] = {}
        for node_id in dag.topological_order():
            record = records[node_id]
            document = record["input_document"]
            for parent, value in outputs.items():
                if parent in document["inputs"]:
                    document["inputs"][parent] = value
            input_hash = hashing.sha256_hex(hashing.canonical_json(document))
            output_hash = hashing.output_hash(outputs[node_id]) if node_id in outputs else record["output_hash"]
            parent_hashes = sorted(chain[parent] for parent in dag.parents(node_id))
            chain[node_id] = hashing.chain_hash(node_id, record["status"], input_hash, output_hash, parent_hashes)
            conn.execute(update(execution_provenance).where(
                execution_provenance.c.execution_id == execution_id, execution_provenance.c.node_id == node_id,
            ).values(input_document=document, input_hash=input_hash, output_hash=output_hash,
                     parent_hashes=parent_hashes, chain_hash=chain[node_id]))
            if node_id in outputs:
                conn.execute(update(dag_checkpoints).where(
                    dag_checkpoints.c.execution_id == execution_id, dag_checkpoints.c.node_id == node_id,
                ).values(outputs=outputs[node_id], output_hash=output_hash))
        head = hashing.provenance_chain_hash(execution["dag_hash"], [chain[n] for n in dag.topological_order()])
        conn.execute(update(dag_executions).where(dag_executions.c.execution_id == execution_id)
                     .values(provenance_chain_hash=head))

    db.transaction(work)


def test_consistent_rewrite_caught_only_by_signature(database: Database, registry: AgentRegistry) -> None:
    keys = SigningKeys(Ed25519PrivateKey.generate())
    _, execution_id = _run_chain(database, registry, keys)
    signed_head = _execution(database, execution_id)["provenance_chain_hash"]

    _rewrite_outputs(database, execution_id, {"b": 99, "c": 99})

    report = verify_execution(database, execution_id, signing_keys=keys)
    assert report.provenance_chain_hash != signed_head
    assert report.stored_provenance_chain_hash == report.provenance_chain_hash
    assert [node.node_id for node in report.nodes if not node.valid] == []
    assert report.signature is not None
    assert report.signature.status is SignatureStatus.INVALID
    assert report.chain_valid is False
    assert len(report.problems) == 1
    assert report.problems[0].startswith("signature invalid: ")


def test_signature_of_untrusted_key_rejected(database: Database, registry: AgentRegistry) -> None:
    trusted = SigningKeys(Ed25519PrivateKey.generate())
    forger = SigningKeys(Ed25519PrivateKey.generate())
    _, execution_id = _run_chain(database, registry, forger)

    report = verify_execution(database, execution_id, signing_keys=trusted)
    assert report.signature is not None
    assert report.signature.status is SignatureStatus.UNKNOWN_KEY
    assert report.signature.key_id == forger.current_key_id
    assert report.chain_valid is False
    assert report.problems[-1].startswith("signature unknown-key: ")

    # The forger's signature under the trusted key's id does not verify either.
    database.transaction(lambda conn: conn.execute(update(dag_executions).where(
        dag_executions.c.execution_id == execution_id).values(signing_key_id=trusted.current_key_id)))
    report = verify_execution(database, execution_id, signing_keys=trusted)
    assert report.signature is not None
    assert report.signature.status is SignatureStatus.INVALID
    assert report.chain_valid is False


def test_rotation_keeps_old_signatures_verifiable(database: Database, registry: AgentRegistry,
                                                  tmp_path: Path) -> None:
    old_file = _key_file(tmp_path, "old.pem")
    new_file = _key_file(tmp_path, "new.pem")
    _, execution_id = _run_chain(database, registry, load_signing_keys(old_file, None))

    trusted = tmp_path / "trusted-keys"
    trusted.write_text(f"{_public_line(old_file)}  # retired\n")
    rotated = load_signing_keys(new_file, trusted)
    report = verify_execution(database, execution_id, signing_keys=rotated)
    assert report.signature is not None
    assert report.signature.status is SignatureStatus.VALID
    assert report.signature.key_id == _key_id(old_file)
    assert report.chain_valid is True

    _, newer_id = _run_chain(database, registry, rotated, {"x": 2})
    assert _execution(database, newer_id)["signing_key_id"] == _key_id(new_file)

    trusted.write_text("# the old key was removed\n")
    report = verify_execution(database, execution_id, signing_keys=load_signing_keys(new_file, trusted))
    assert report.signature is not None
    assert report.signature.status is SignatureStatus.UNKNOWN_KEY
    assert report.chain_valid is False


def test_resume_clears_and_renews_signature(database: Database, registry: AgentRegistry) -> None:
    keys = SigningKeys(Ed25519PrivateKey.generate())
    scheduler, execution_id = _run_chain(database, registry, keys)
    first = _execution(database, execution_id)

    _, follow_up = resume_execution(scheduler, execution_id, input_data={"x": 5})
    reset = _execution(database, execution_id)
    assert [reset[column] for column in SIGNED_COLUMNS] == [None, None, None]
    assert verify_execution(database, execution_id, signing_keys=keys).signature.status is (  # type: ignore[union-attr]
        SignatureStatus.UNSIGNED)

    assert _drain(scheduler, follow_up).finalize
    assert finalize_execution(database, execution_id, signing_keys=keys).status == "completed"
    second = _execution(database, execution_id)
    assert second["provenance_chain_hash"] != first["provenance_chain_hash"]
    assert second["signature"] != first["signature"]
    assert second["finalized_at"] > first["finalized_at"]
    report = verify_execution(database, execution_id, signing_keys=keys)
    assert report.signature is not None
    assert report.signature.status is SignatureStatus.VALID
    assert report.chain_valid is True


# -- migration ---------------------------------------------------------------------


def test_migration_adds_signature_columns(database: Database) -> None:
    from alembic import command
    from alembic.config import Config

    def columns() -> dict[str, Any]:
        return {column["name"]: column for column in inspect(database.engine).get_columns("dag_executions")}

    added = columns()
    for name in SIGNED_COLUMNS:
        assert added[name]["nullable"] is True

    config = Config()
    config.set_main_option("script_location", str(Path(__file__).resolve().parent.parent / "migrations"))
    config.set_main_option("sqlalchemy.url", database.url.replace("%", "%%"))
    config.attributes["configure_logging"] = False
    command.downgrade(config, "0002")
    assert not set(SIGNED_COLUMNS) & set(columns())
    upgrade_schema(database.url)
    assert set(SIGNED_COLUMNS) <= set(columns())


# -- API ---------------------------------------------------------------------------


def _finalize_as_worker(api: Api, execution_id: str) -> None:
    """Run the queued nodes, then finalize through the worker's finalize task and its runtime's keys."""
    from workers.tasks import finalize

    task = SimpleNamespace(app=api.celery_app, request=SimpleNamespace(retries=0))
    run_queued_nodes(api, execution_id, before_finalize=lambda: finalize(task, execution_id))  # type: ignore[arg-type]


@pytest.fixture
def key_files(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A current key file, a retired key file, and a trusted keys file that lists the retired key."""
    current = _key_file(tmp_path, "current.pem")
    retired = _key_file(tmp_path, "retired.pem")
    trusted = tmp_path / "trusted-keys"
    trusted.write_text(f"{_public_line(retired)}\n")
    return current, retired, trusted


def test_api_signing_keys(make_api: Callable[..., Api], key_files: tuple[Path, Path, Path]) -> None:
    current, retired, trusted = key_files
    api = make_api(signing_key_file=current, trusted_keys_file=trusted)
    response = api.get("/signing-keys")
    assert response.status_code == 200
    assert response.get_json() == {
        "current_key_id": _key_id(current),
        "keys": [
            {"key_id": _key_id(current), "algorithm": "ed25519", "public_key": _public_line(current),
             "current": True},
            {"key_id": _key_id(retired), "algorithm": "ed25519", "public_key": _public_line(retired),
             "current": False},
        ],
    }
    assert_error(api.client.get(f"{PREFIX}/signing-keys"), 401, "unauthorized")


def test_api_signing_keys_none_configured(make_api: Callable[..., Api]) -> None:
    response = make_api().get("/signing-keys")
    assert response.status_code == 200
    assert response.get_json() == {"current_key_id": None, "keys": []}


def test_api_provenance_signature(make_api: Callable[..., Api], database: Database,
                                  key_files: tuple[Path, Path, Path]) -> None:
    current, _, trusted = key_files
    api = make_api(database.url, signing_key_file=current, trusted_keys_file=trusted)
    api.register()
    execution_id = api.execute().get_json()["execution_id"]
    _finalize_as_worker(api, execution_id)

    provenance = api.get(f"/executions/{execution_id}/provenance").get_json()
    assert provenance["chain_valid"] is True
    assert provenance["signature"]["status"] == "valid"
    assert provenance["signature"]["key_id"] == _key_id(current)
    assert set(provenance["signature"]) == {"status", "key_id", "detail"}

    other = base64.b64encode(Ed25519PrivateKey.generate().sign(b"something else")).decode()
    with api.db.engine.begin() as conn:
        conn.execute(update(dag_executions).where(dag_executions.c.execution_id == execution_id)
                     .values(signature=other))
    provenance = api.get(f"/executions/{execution_id}/provenance").get_json()
    assert provenance["chain_valid"] is False
    assert provenance["signature"]["status"] == "invalid"
    assert any(problem.startswith("signature invalid: ") for problem in provenance["problems"])


def test_api_provenance_unsigned(make_api: Callable[..., Api]) -> None:
    api = make_api()
    api.register()
    execution_id = api.execute().get_json()["execution_id"]
    _finalize_as_worker(api, execution_id)

    provenance = api.get(f"/executions/{execution_id}/provenance").get_json()
    assert provenance["chain_valid"] is True
    assert provenance["signature"]["status"] == "unsigned"
    assert provenance["signature"]["key_id"] is None
    assert "unsigned" in provenance["signature"]["detail"]


def test_openapi_documents_signatures(make_api: Callable[..., Api]) -> None:
    from api.openapi import openapi_document

    document = openapi_document()
    operation = document["paths"]["/signing-keys"]["get"]
    assert operation["operationId"] == "listSigningKeys"
    assert operation["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/SigningKeys"}
    schemas = document["components"]["schemas"]
    assert "signature" in schemas["Provenance"]["required"]
    assert schemas["SignatureCheck"]["properties"]["status"]["enum"] == ["valid", "invalid", "unsigned", "unknown-key", "missing"]
    served = {rule.rule for rule in make_api().app.url_map.iter_rules()}
    assert f"{PREFIX}/signing-keys" in served


def test_block_from_orm_row_without_keys(database: Database, registry: AgentRegistry) -> None:
    from sqlalchemy.orm import Session

    from orchestrator.models import ExecutionRow

    keys = SigningKeys(Ed25519PrivateKey.generate())
    _, execution_id = _run_chain(database, registry, keys)
    with Session(database.engine) as session:
        row = session.get(ExecutionRow, execution_id)
        assert row is not None
        block = signature_block(row)
    assert block is not None
    assert block["public_key"] is None
    assert block["key_id"] == keys.current_key_id
    check = verify_signature_block(block, execution_id=execution_id, dag_hash=block["signed"]["dag_hash"],
                                   provenance_chain_hash=block["signed"]["provenance_chain_hash"], keys=keys)
    assert check.status is SignatureStatus.VALID
