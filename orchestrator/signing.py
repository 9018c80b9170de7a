"""Ed25519 signatures over an execution's chain head.

The hashes of scheme gl-prov-v1 detect accidental and partial changes, but
anyone with write access to the database can change an output and recompute
every hash after it. When a signing key is configured, the finalizer also
signs the chain head, which cannot be redone without the private key.

The signed bytes are ``C(signed)``, the RFC 8785 canonical JSON built by
:func:`orchestrator.hashing.canonical_json`, of::

    {"execution_id": "...", "dag_hash": "...", "provenance_chain_hash": "...",
     "finalized_at": "2026-12-05T00:00:00.000000Z"}

``finalized_at`` is UTC with microseconds and a ``Z`` suffix. A key is named
by its key id: ``ed25519:`` and the first 16 hex characters of the SHA-256 of
its raw 32-byte public key. Signatures and public keys are written in
standard base64 with padding.

The private key is a PEM file (PKCS#8, unencrypted) named by
``GL_ORCHESTRATOR_SIGNING_KEY_FILE``. Verification trusts its public key and
the public keys in ``GL_ORCHESTRATOR_TRUSTED_KEYS_FILE``, which keeps the
keys of earlier rotations. That file has one key per line, the base64 of its
raw 32 bytes. Blank lines are ignored, and so is text from ``#`` to the end
of a line, which base64 never contains.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os
import re
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, rsa, x448, x25519
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from orchestrator.errors import SettingsError
from orchestrator.hashing import canonical_json

if TYPE_CHECKING:
    from orchestrator.settings import Settings

__all__ = [
    "ALGORITHM",
    "SIGNED_FIELDS",
    "SIGNING_KEY_VARIABLE",
    "TRUSTED_KEYS_VARIABLE",
    "ChainHeadSignature",
    "SignatureCheck",
    "SignatureStatus",
    "SigningKeys",
    "encode_public_key",
    "format_finalized_at",
    "key_id_for",
    "load_private_key",
    "load_signing_keys",
    "load_trusted_keys",
    "signature_block",
    "signed_document",
    "signing_keys_from_settings",
    "verify_signature",
    "verify_signature_block",
    "write_private_key",
]

logger = logging.getLogger(__name__)

ALGORITHM = "ed25519"
SIGNED_FIELDS = ("execution_id", "dag_hash", "provenance_chain_hash", "finalized_at")
SIGNING_KEY_VARIABLE = "GL_ORCHESTRATOR_SIGNING_KEY_FILE"
TRUSTED_KEYS_VARIABLE = "GL_ORCHESTRATOR_TRUSTED_KEYS_FILE"
_PUBLIC_KEY_BYTES = 32
_SIGNATURE_BYTES = 64
_FINALIZED_AT_PATTERN = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z")
_GENERATE_HINT = "create one with `orchestrator keys generate --out PATH`"


class SignatureStatus(str, Enum):
    """The outcome of checking an execution's signature."""

    VALID = "valid"
    INVALID = "invalid"
    UNSIGNED = "unsigned"
    UNKNOWN_KEY = "unknown-key"
    # Unsigned although GL_ORCHESTRATOR_REQUIRE_SIGNED_CHAINS is true.
    MISSING = "missing"


@dataclass(frozen=True)
class ChainHeadSignature:
    """A signature made by the finalizer, in the form stored in ``dag_executions``."""

    key_id: str
    # Standard base64 of the 64 signature bytes.
    value: str
    finalized_at: datetime


@dataclass(frozen=True)
class SignatureCheck:
    """The result of checking one signature, with a sentence that explains the status."""

    status: SignatureStatus
    key_id: str | None
    detail: str

    @property
    def breaks_chain(self) -> bool:
        """Whether this result makes the chain invalid: a bad signature or one no trusted key can check."""
        return self.status in {SignatureStatus.INVALID, SignatureStatus.UNKNOWN_KEY, SignatureStatus.MISSING}

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status.value, "key_id": self.key_id, "detail": self.detail}


def key_id_for(public_key: Ed25519PublicKey) -> str:
    """Return ``ed25519:`` and the first 16 hex characters of SHA-256 of the raw public key."""
    return f"{ALGORITHM}:{hashlib.sha256(_raw_public_bytes(public_key)).hexdigest()[:16]}"


def encode_public_key(public_key: Ed25519PublicKey) -> str:
    """Return the standard base64 of the raw 32-byte public key."""
    return base64.b64encode(_raw_public_bytes(public_key)).decode("ascii")


def _raw_public_bytes(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _decode_public_key(text: str) -> Ed25519PublicKey:
    """Parse the base64 of a raw public key, raising ValueError when it is not one."""
    try:
        raw = base64.b64decode(text, validate=True)
    except binascii.Error as exc:
        raise ValueError(f"{text!r} is not standard base64") from exc
    if len(raw) != _PUBLIC_KEY_BYTES:
        raise ValueError(f"{text!r} decodes to {len(raw)} bytes, but an Ed25519 public key has {_PUBLIC_KEY_BYTES}")
    return Ed25519PublicKey.from_public_bytes(raw)


def format_finalized_at(value: datetime) -> str:
    """Write a time as signed: UTC, microseconds and ``Z``, such as ``2026-12-05T00:00:00.000000Z``."""
    # SQLite returns naive datetimes, and every stored time is UTC.
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def signed_document(execution_id: str, dag_hash: str, provenance_chain_hash: str,
                    finalized_at: datetime) -> dict[str, str]:
    """Build the document whose canonical JSON the finalizer signs."""
    return {
        "execution_id": execution_id,
        "dag_hash": dag_hash,
        "provenance_chain_hash": provenance_chain_hash,
        "finalized_at": format_finalized_at(finalized_at),
    }


class SigningKeys:
    """Signing keys: the key the finalizer signs with, if any, and the public keys that verification trusts.

    The current key's public key is always trusted. ``retired_public_keys``
    are the keys of earlier rotations, read from the trusted keys file.
    """

    def __init__(self, private_key: Ed25519PrivateKey | None = None,
                 retired_public_keys: Iterable[Ed25519PublicKey] = (), *, require_signatures: bool = False) -> None:
        self._private_key = private_key
        self.require_signatures = require_signatures
        self.current_key_id: str | None = None
        trusted: dict[str, Ed25519PublicKey] = {}
        if private_key is not None:
            current = private_key.public_key()
            self.current_key_id = key_id_for(current)
            trusted[self.current_key_id] = current
        for public_key in retired_public_keys:
            trusted.setdefault(key_id_for(public_key), public_key)
        self._trusted = trusted

    def __repr__(self) -> str:
        # Lists key ids only: the private key never appears in a repr or a log line.
        return f"SigningKeys(current_key_id={self.current_key_id!r}, trusted={sorted(self._trusted)!r})"

    @property
    def can_sign(self) -> bool:
        return self._private_key is not None

    @property
    def trusted_key_ids(self) -> list[str]:
        """Key ids that verification accepts: the current key first, then the others in key id order."""
        others = sorted(key_id for key_id in self._trusted if key_id != self.current_key_id)
        return ([self.current_key_id] if self.current_key_id else []) + others

    def public_key(self, key_id: str) -> Ed25519PublicKey | None:
        """Return the trusted public key with this key id, or None when none is trusted."""
        return self._trusted.get(key_id)

    def sign(self, execution_id: str, dag_hash: str, provenance_chain_hash: str,
             finalized_at: datetime) -> ChainHeadSignature:
        """Sign the chain head, raising RuntimeError when no signing key is configured."""
        if self._private_key is None or self.current_key_id is None:
            raise RuntimeError(f"no signing key is configured; set {SIGNING_KEY_VARIABLE}")
        document = signed_document(execution_id, dag_hash, provenance_chain_hash, finalized_at)
        value = self._private_key.sign(canonical_json(document))
        return ChainHeadSignature(self.current_key_id, base64.b64encode(value).decode("ascii"), finalized_at)

    def describe(self) -> dict[str, Any]:
        """Return the current key id and every trusted public key, as ``GET /signing-keys`` sends them."""
        keys = []
        for key_id in self.trusted_key_ids:
            keys.append({
                "key_id": key_id,
                "algorithm": ALGORITHM,
                "public_key": encode_public_key(self._trusted[key_id]),
                "current": key_id == self.current_key_id,
            })
        return {"current_key_id": self.current_key_id, "keys": keys}


# -- loading keys --------------------------------------------------------------


def _read_bytes(path: Path, variable: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise SettingsError(
            f"{variable}={str(path)!r} cannot be read: {exc.strerror or exc}; check the path and its permissions"
        ) from exc


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """Load an unencrypted PKCS#8 PEM Ed25519 private key.

    Raise a SettingsError that names the variable and the fix when the file
    cannot be read or contains anything else.
    """
    data = _read_bytes(path, SIGNING_KEY_VARIABLE)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError as exc:
        # cryptography raises TypeError for an encrypted key loaded without a password.
        raise SettingsError(
            f"{SIGNING_KEY_VARIABLE}={str(path)!r} is an encrypted private key, but the orchestrator "
            f"reads only unencrypted keys; protect the file with mode 0600 instead, or {_GENERATE_HINT}"
        ) from exc
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise SettingsError(
            f"{SIGNING_KEY_VARIABLE}={str(path)!r} is not a PEM private key (PKCS#8, BEGIN PRIVATE KEY); "
            f"{_GENERATE_HINT}"
        ) from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise SettingsError(
            f"{SIGNING_KEY_VARIABLE}={str(path)!r} contains a private key of type {_key_type_name(key)}, "
            f"but chain heads are signed with Ed25519; {_GENERATE_HINT}"
        )
    _warn_if_readable_by_others(path)
    return key


def _key_type_name(key: object) -> str:
    names = (
        (rsa.RSAPrivateKey, "RSA"), (ec.EllipticCurvePrivateKey, "EC"), (dsa.DSAPrivateKey, "DSA"),
        (ed448.Ed448PrivateKey, "Ed448"), (x25519.X25519PrivateKey, "X25519"), (x448.X448PrivateKey, "X448"),
    )
    for key_type, name in names:
        if isinstance(key, key_type):
            return name
    return type(key).__name__


def _warn_if_readable_by_others(path: Path) -> None:
    try:
        mode = path.stat().st_mode
    except OSError:
        return
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        logger.warning("signing key file is accessible to other users path=%s mode=%o; run chmod 600 on it",
                       path, stat.S_IMODE(mode))


def load_trusted_keys(path: Path) -> list[Ed25519PublicKey]:
    """Read the trusted keys file, raising a SettingsError that names the line of a malformed key."""
    data = _read_bytes(path, TRUSTED_KEYS_VARIABLE)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SettingsError(f"{TRUSTED_KEYS_VARIABLE}={str(path)!r} is not UTF-8 text") from exc

    keys = []
    for number, line in enumerate(text.splitlines(), start=1):
        entry = line.split("#", 1)[0].strip()
        if not entry:
            continue
        try:
            keys.append(_decode_public_key(entry))
        except ValueError as exc:
            raise SettingsError(
                f"{TRUSTED_KEYS_VARIABLE}={str(path)!r} line {number} is not a trusted public key: {exc}; "
                "write one key per line as the base64 of its raw 32 bytes, as `orchestrator keys show` prints it"
            ) from exc
    return keys


def load_signing_keys(signing_key_file: Path | None, trusted_keys_file: Path | None, *,
                      require_signatures: bool = False) -> SigningKeys:
    """Load the signing key and the trusted keys from their files, leaving out each one whose path is None."""
    private_key = load_private_key(signing_key_file) if signing_key_file is not None else None
    retired = load_trusted_keys(trusted_keys_file) if trusted_keys_file is not None else []
    return SigningKeys(private_key, retired, require_signatures=require_signatures)


def signing_keys_from_settings(settings: Settings) -> SigningKeys:
    """Load the keys that ``GL_ORCHESTRATOR_SIGNING_KEY_FILE`` and ``GL_ORCHESTRATOR_TRUSTED_KEYS_FILE`` name."""
    return load_signing_keys(settings.signing_key_file, settings.trusted_keys_file,
                             require_signatures=settings.require_signed_chains)


def write_private_key(path: Path) -> Ed25519PublicKey:
    """Write a new Ed25519 private key to ``path`` as PKCS#8 PEM with mode 0600, and return its public key.

    Raise FileExistsError when ``path`` exists: a key file is never overwritten,
    because signatures made with the old key could then no longer be checked.
    """
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    # O_EXCL makes creation fail if the path appeared after any earlier check.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, pem)
        os.fsync(fd)
    finally:
        os.close(fd)
    return key.public_key()


# -- signature blocks and verification -----------------------------------------


def _column(execution_row: Any, name: str) -> Any:
    if isinstance(execution_row, Mapping):
        return execution_row[name]
    return getattr(execution_row, name)


def signature_block(execution_row: Any, keys: SigningKeys | None = None) -> dict[str, Any] | None:
    """Return the execution's signed chain head for the audit bundle, or None when it is unsigned.

    ``execution_row`` is a ``dag_executions`` row: a mapping or an
    :class:`~orchestrator.models.ExecutionRow`. The database stores no public
    key, so ``public_key`` comes from ``keys``. It is None when ``keys`` is
    None or does not trust the signing key. ``signed`` contains the stored
    values as they are.
    """
    value = _column(execution_row, "signature")
    if value is None:
        return None
    key_id = _column(execution_row, "signing_key_id")
    finalized_at = _column(execution_row, "finalized_at")
    public_key = keys.public_key(key_id) if keys is not None and key_id is not None else None
    return {
        "algorithm": ALGORITHM,
        "key_id": key_id,
        "public_key": encode_public_key(public_key) if public_key is not None else None,
        "signed": {
            "execution_id": _column(execution_row, "execution_id"),
            "dag_hash": _column(execution_row, "dag_hash"),
            "provenance_chain_hash": _column(execution_row, "provenance_chain_hash"),
            "finalized_at": format_finalized_at(finalized_at) if finalized_at is not None else None,
        },
        "value": value,
    }


def _unsigned() -> SignatureCheck:
    # NOTE: clearing the three signature columns also reads as unsigned.
    # Verification cannot distinguish that from an execution finalized without
    # a key, unless GL_ORCHESTRATOR_REQUIRE_SIGNED_CHAINS is true.
    return SignatureCheck(
        SignatureStatus.UNSIGNED, None,
        "no signature is stored, so the chain is unsigned: the execution is not finalized yet, or no "
        f"signing key ({SIGNING_KEY_VARIABLE}) was configured when it was finalized",
    )


def _finalized(execution_row: Any) -> bool:
    """Return whether the finalizer ended the execution: it stored a chain hash, or the status is completed.

    Only the finalizer sets ``completed``, so clearing the chain hash as well
    as the signature does not make a completed execution look unfinalized.
    """
    status = execution_row.get("status") if isinstance(execution_row, Mapping) else getattr(execution_row, "status", None)
    return bool(_column(execution_row, "provenance_chain_hash")) or status == "completed"


def verify_signature(execution_row: Any, provenance_chain_hash: str, keys: SigningKeys | None) -> SignatureCheck:
    """Check a ``dag_executions`` row's signature against the recomputed ``provenance_chain_hash``."""
    block = signature_block(execution_row, keys)
    if block is None:
        if keys is not None and keys.require_signatures and _finalized(execution_row):
            return SignatureCheck(
                SignatureStatus.MISSING, None,
                "the execution is finalized but has no signature, and GL_ORCHESTRATOR_REQUIRE_SIGNED_CHAINS is "
                "true: its signature columns were cleared, or it was finalized before a signing key was set",
            )
        return _unsigned()
    return verify_signature_block(
        block, execution_id=_column(execution_row, "execution_id"), dag_hash=_column(execution_row, "dag_hash"),
        provenance_chain_hash=provenance_chain_hash, keys=keys,
    )


def verify_signature_block(block: Mapping[str, Any] | None, *, execution_id: str, dag_hash: str,
                           provenance_chain_hash: str, keys: SigningKeys | None) -> SignatureCheck:
    """Check a signature block against an execution's id, its ``dag_hash`` and its recomputed chain hash.

    The block's ``public_key`` is never used: only a key that ``keys``
    trusts under the block's key id can make a signature valid.
    """
    if block is None:
        return _unsigned()
    key_id = block.get("key_id")
    problem = _block_problem(block, execution_id, dag_hash, provenance_chain_hash)
    if problem is not None:
        return SignatureCheck(SignatureStatus.INVALID, key_id if isinstance(key_id, str) else None, problem)
    assert isinstance(key_id, str)

    public_key = keys.public_key(key_id) if keys is not None else None
    if public_key is None:
        return SignatureCheck(
            SignatureStatus.UNKNOWN_KEY, key_id,
            f"key {key_id} is not a trusted key, so the signature cannot be checked; if it is an earlier key "
            f"of this deployment, add its public key to {TRUSTED_KEYS_VARIABLE}",
        )

    signature = base64.b64decode(block["value"], validate=True)
    try:
        public_key.verify(signature, canonical_json(dict(block["signed"])))
    except InvalidSignature:
        return SignatureCheck(
            SignatureStatus.INVALID, key_id,
            f"signature does not verify with key {key_id}: the signature, or the execution_id, dag_hash, "
            "provenance_chain_hash or finalized_at that it covers, changed after signing",
        )
    finalized_at = block["signed"]["finalized_at"]
    return SignatureCheck(
        SignatureStatus.VALID, key_id,
        f"signature by key {key_id} verifies over the execution id, dag_hash, the recomputed "
        f"provenance_chain_hash and finalized_at {finalized_at}",
    )


def _block_problem(block: Mapping[str, Any], execution_id: str, dag_hash: str,
                   provenance_chain_hash: str) -> str | None:
    """Return why the block cannot be a valid signature of this execution, or None when its fields fit."""
    if block.get("algorithm") != ALGORITHM:
        return f"algorithm {block.get('algorithm')!r} is not {ALGORITHM}"
    if not isinstance(block.get("key_id"), str):
        return "the signature has no key id (dag_executions.signing_key_id is empty)"
    signed = block.get("signed")
    if not isinstance(signed, Mapping) or sorted(signed) != sorted(SIGNED_FIELDS):
        return f"signed must be an object with exactly the fields {', '.join(SIGNED_FIELDS)}"

    expected = {
        "execution_id": ("the execution's id", execution_id),
        "dag_hash": ("the execution's dag_hash", dag_hash),
        "provenance_chain_hash": ("the recomputed provenance_chain_hash", provenance_chain_hash),
    }
    for name, (description, expected_value) in expected.items():
        if signed[name] != expected_value:
            return f"signed {name} {signed[name]} differs from {description} {expected_value}"
    finalized_at = signed["finalized_at"]
    if not isinstance(finalized_at, str) or not _FINALIZED_AT_PATTERN.fullmatch(finalized_at):
        return f"signed finalized_at {finalized_at!r} is not a UTC time such as 2026-12-05T00:00:00.000000Z"

    encoded = block.get("value")
    try:
        signature = base64.b64decode(encoded, validate=True) if isinstance(encoded, str) else b""
    except binascii.Error:
        signature = b""
    if len(signature) != _SIGNATURE_BYTES:
        return f"signature value is not the standard base64 of {_SIGNATURE_BYTES} bytes"
    return None
