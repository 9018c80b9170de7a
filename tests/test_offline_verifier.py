"""The offline verifier ``verifier/gl_audit_verify.py``, checked against the orchestrator's own code.

Its canonical JSON is compared with ``orchestrator.hashing.canonical_json``
(the rfc8785 package), its Ed25519 check with the RFC 8032 test vectors and
the ``cryptography`` package, and its bundle verdicts with
``orchestrator.provenance.verify_chain``. Bundles are built here from the
project's hashing functions and signed with ``cryptography``. The last tests
run a copy of the file alone in a fresh virtual environment.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import importlib.util
import json
import math
import os
import random
import shutil
import struct
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, NamedTuple

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import text

from orchestrator import hashing
from orchestrator.dag import Dag, dag_from_normalized, parse_dag
from orchestrator.errors import JsonDomainError
from orchestrator.provenance import verify_chain

REPO = Path(__file__).resolve().parents[1]
VERIFIER_PATH = REPO / "verifier" / "gl_audit_verify.py"


def _load_verifier() -> ModuleType:
    """Import the verifier from its path, as an auditor's copy would run, not through a package."""
    spec = importlib.util.spec_from_file_location("gl_audit_verify_under_test", VERIFIER_PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


verifier = _load_verifier()

NULL_HASH = hashing.output_hash(None)
UNSIGNED_TEXT = "chain is unsigned: anyone with write access to the store could have recomputed every hash"


# -- RFC 8785 canonical JSON --------------------------------------------------


def _double(bits: int) -> float:
    return struct.unpack(">d", bits.to_bytes(8, "big"))[0]


CANONICAL_CASES = [
    ("null", None),
    ("true", True),
    ("false", False),
    ("zero", 0),
    ("negative zero", -0.0),
    ("one point zero", 1.0),
    ("integral float", 3600.0),
    ("max safe integer", 2**53 - 1),
    ("min safe integer", -(2**53 - 1)),
    ("max safe integer as float", float(2**53 - 1)),
    ("2**53 as float", float(2**53)),
    ("1e21", 1e21),
    ("just below 1e21", 999999999999999900000.0),
    ("1e20", 1e20),
    ("1e-7", 1e-7),
    ("1e-6", 1e-6),
    ("smallest subnormal", 5e-324),
    ("largest double", 1.7976931348623157e308),
    ("negative tiny", -1.5e-10),
    ("long shortest form", 3.1630700000000003),
    ("one third", 1 / 3),
    ("0.1 + 0.2", 0.1 + 0.2),
    ("empty string", ""),
    ("escapes", '"\\\b\f\n\r\t/'),
    ("lone controls", "\x01\x07\x0b\x0e\x1f\x7f"),
    ("unicode", "tCO₂e Ünïcode ✓ 😀 \u2028\u2029 \ufeff"),
    ("nested unicode", {"😀": ["\x1f😀\n", {"é": "\ue000\U0001f600"}], "ascii": "plain"}),
    ("utf-16 key order", {"\ue000": 1, "\U0001f600": 2}),
    ("ascii key order", {"activity": 1, "EF": 2, "b": 3, "B": 4, "": 5}),
    ("empty containers", {"a": [], "b": {}, "c": [[], [{}]]}),
    ("mixed array", [1, 1.5, "x", None, True, False, {"k": -0.0}]),
    ("nested numbers", {"values": [1e22, 1e-7, 123456789.125, -0.000001, 2.5e-5]}),
]


@pytest.mark.parametrize(("name", "value"), CANONICAL_CASES, ids=[case[0] for case in CANONICAL_CASES])
def test_canonical_json_matches_project(name: str, value: Any) -> None:
    assert verifier.canonical_json(value) == hashing.canonical_json(value)


# Number serializations from RFC 8785, Appendix B: IEEE 754 bits and the expected text.
RFC8785_NUMBERS = [
    (0x0000000000000000, "0"),
    (0x8000000000000000, "0"),
    (0x0000000000000001, "5e-324"),
    (0x8000000000000001, "-5e-324"),
    (0x7FEFFFFFFFFFFFFF, "1.7976931348623157e+308"),
    (0xFFEFFFFFFFFFFFFF, "-1.7976931348623157e+308"),
    (0x4340000000000000, "9007199254740992"),
    (0xC340000000000000, "-9007199254740992"),
    (0x4430000000000000, "295147905179352830000"),
    (0x44B52D02C7E14AF5, "9.999999999999997e+22"),
    (0x44B52D02C7E14AF6, "1e+23"),
    (0x44B52D02C7E14AF7, "1.0000000000000001e+23"),
    (0x444B1AE4D6E2EF4E, "999999999999999700000"),
    (0x444B1AE4D6E2EF4F, "999999999999999900000"),
    (0x444B1AE4D6E2EF50, "1e+21"),
    (0x3EB0C6F7A0B5ED8C, "9.999999999999997e-7"),
    (0x3EB0C6F7A0B5ED8D, "0.000001"),
    (0x41B3DE4355555553, "333333333.3333332"),
    (0x41B3DE4355555554, "333333333.33333325"),
    (0x41B3DE4355555555, "333333333.3333333"),
    (0x41B3DE4355555556, "333333333.3333334"),
    (0x41B3DE4355555557, "333333333.33333343"),
    (0xBECBF647612F3696, "-0.0000033333333333333333"),
    (0x43143FF3C1CB0959, "1424953923781206.2"),
]


@pytest.mark.parametrize(("bits", "expected"), RFC8785_NUMBERS, ids=[f"{bits:016x}" for bits, _ in RFC8785_NUMBERS])
def test_format_number_matches_rfc8785_table(bits: int, expected: str) -> None:
    value = _double(bits)

    assert verifier.format_number(value) == expected
    assert hashing.canonical_json(value) == expected.encode("ascii")


def test_random_doubles_match_project() -> None:
    rng = random.Random(8785)
    mismatches = []
    checked = 0
    while checked < 20_000:
        value = _double(rng.getrandbits(64))
        if math.isnan(value) or math.isinf(value):
            continue
        checked += 1
        ours = verifier.canonical_json(value)
        expected = hashing.canonical_json(value)
        if ours != expected:
            mismatches.append((value.hex(), ours, expected))

    assert mismatches == []


def test_doubles_near_notation_boundaries_match_project() -> None:
    # Values around the ECMAScript switches between plain and exponent notation (1e-6 and 1e21).
    rng = random.Random(21)
    values = []
    for exponent in range(-9, 24):
        base = 10.0**exponent
        values.extend([base, math.nextafter(base, 0.0), math.nextafter(base, math.inf), -base])
        values.extend(base * rng.uniform(0.5, 10.0) for _ in range(50))
        values.extend(round(rng.uniform(-1e6, 1e6), rng.randint(0, 12)) * base for _ in range(20))
    mismatches = [value for value in values if verifier.canonical_json(value) != hashing.canonical_json(value)]

    assert mismatches == []


def _random_string(rng: random.Random) -> str:
    pools = [
        (0x01, 0x1F),  # controls other than NUL
        (0x20, 0x7E),
        (0x7F, 0x2FF),
        (0x2028, 0x2029),
        (0xE000, 0xF8FF),  # private use, which sorts after surrogate pairs in UTF-16
        (0xFFF0, 0xFFFF),
        (0x1F300, 0x1F64F),  # emoji, encoded as surrogate pairs in UTF-16
        (0x10000, 0x10FFFF),
    ]
    characters = []
    for _ in range(rng.randint(0, 12)):
        low, high = rng.choice(pools)
        characters.append(chr(rng.randint(low, high)))
    return "".join(characters)


def _random_document(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randint(0, 7 if depth < 4 else 4)
    if kind == 0:
        return rng.choice([None, True, False])
    if kind == 1:
        return rng.randint(-(2**53 - 1), 2**53 - 1)
    if kind == 2:
        value = _double(rng.getrandbits(64))
        return value if math.isfinite(value) else 0.5
    if kind in (3, 4):
        return _random_string(rng)
    if kind == 5:
        return [_random_document(rng, depth + 1) for _ in range(rng.randint(0, 5))]
    return {_random_string(rng): _random_document(rng, depth + 1) for _ in range(rng.randint(0, 6))}


def test_random_documents_match_project() -> None:
    rng = random.Random(16)
    mismatches = []
    for _ in range(2_000):
        document = _random_document(rng)
        if verifier.canonical_json(document) != hashing.canonical_json(document):
            mismatches.append(document)

    assert mismatches == []


def test_keys_sort_by_utf16_code_units() -> None:
    # The sorting example of RFC 8785, section 3.2.3.
    document = {"\u20ac": "Euro Sign", "\r": "Carriage Return", "\ufb33": "Hebrew Letter Dalet With Dagesh",
                "1": "One", "\U0001f600": "Emoji: Grinning Face", "\u0080": "Control", "\u00f6": "Latin Small Letter O With Diaeresis"}

    keys = list(json.loads(verifier.canonical_json(document)))

    assert keys == ["\r", "1", "\u0080", "\u00f6", "\u20ac", "\U0001f600", "\ufb33"]
    assert verifier.canonical_json(document) == hashing.canonical_json(document)


def test_strings_escaped_as_json_stringify() -> None:
    assert verifier.canonical_json("x\x1f\x7f") == b'"x\\u001f\x7f"'
    assert verifier.canonical_json("\b\f\n\r\t\"\\") == b'"\\b\\f\\n\\r\\t\\"\\\\"'
    assert verifier.canonical_json("\x0b") == b'"\\u000b"'
    assert verifier.canonical_json("₂😀") == "\"₂😀\"".encode("utf-8")


@pytest.mark.parametrize(
    "value",
    [math.nan, math.inf, -math.inf, 2**53, -(2**53), "a\x00b", {"\x00": 1}, "\ud800", ("tuple",), {1: "x"},
     b"bytes", {"deep": [[[]]]}],
    ids=["nan", "inf", "-inf", "2**53", "-2**53", "nul in string", "nul in key", "lone surrogate", "tuple",
         "int key", "bytes", "depth within limit"],
)
def test_json_domain_matches_project(value: Any) -> None:
    try:
        expected = hashing.canonical_json(value)
    except JsonDomainError:
        with pytest.raises(verifier.JsonDomainError):
            verifier.canonical_json(value)
        return
    assert verifier.canonical_json(value) == expected


def test_json_domain_depth_limit_matches_project() -> None:
    too_deep: Any = []
    for _ in range(hashing.MAX_DEPTH):
        too_deep = [too_deep]
    deepest_allowed = too_deep[0]

    with pytest.raises(JsonDomainError):
        hashing.canonical_json(too_deep)
    with pytest.raises(verifier.JsonDomainError):
        verifier.canonical_json(too_deep)
    assert verifier.canonical_json(deepest_allowed) == hashing.canonical_json(deepest_allowed)


# -- Ed25519 ------------------------------------------------------------------


class Vector(NamedTuple):
    name: str
    secret_key: str
    public_key: str
    message: str
    signature: str


# RFC 8032, section 7.1, all five Ed25519 test vectors, as hex.
RFC8032_VECTORS = [
    Vector(
        "TEST 1",
        "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
        "",
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
    ),
    Vector(
        "TEST 2",
        "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
        "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
        "72",
        "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
    ),
    Vector(
        "TEST 3",
        "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
        "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
        "af82",
        "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a",
    ),
    Vector(
        "TEST 1024",
        "f5e5767cf153319517630f226876b86c8160cc583bc013744c6bf255f5cc0ee5",
        "278117fc144c72340f67d0f2316e8386ceffbf2b2428c9c51fef7c597f1d426e",
        "08b8b2b733424243760fe426a4b54908632110a66c2f6591eabd3345e3e4eb98fa6e264bf09efe12ee50f8f54e9f77b1"
        "e355f6c50544e23fb1433ddf73be84d879de7c0046dc4996d9e773f4bc9efe5738829adb26c81b37c93a1b270b20329d"
        "658675fc6ea534e0810a4432826bf58c941efb65d57a338bbd2e26640f89ffbc1a858efcb8550ee3a5e1998bd177e93a"
        "7363c344fe6b199ee5d02e82d522c4feba15452f80288a821a579116ec6dad2b3b310da903401aa62100ab5d1a36553e"
        "06203b33890cc9b832f79ef80560ccb9a39ce767967ed628c6ad573cb116dbefefd75499da96bd68a8a97b928a8bbc10"
        "3b6621fcde2beca1231d206be6cd9ec7aff6f6c94fcd7204ed3455c68c83f4a41da4af2b74ef5c53f1d8ac70bdcb7ed1"
        "85ce81bd84359d44254d95629e9855a94a7c1958d1f8ada5d0532ed8a5aa3fb2d17ba70eb6248e594e1a2297acbbb39d"
        "502f1a8c6eb6f1ce22b3de1a1f40cc24554119a831a9aad6079cad88425de6bde1a9187ebb6092cf67bf2b13fd65f270"
        "88d78b7e883c8759d2c4f5c65adb7553878ad575f9fad878e80a0c9ba63bcbcc2732e69485bbc9c90bfbd62481d9089b"
        "eccf80cfe2df16a2cf65bd92dd597b0707e0917af48bbb75fed413d238f5555a7a569d80c3414a8d0859dc65a46128ba"
        "b27af87a71314f318c782b23ebfe808b82b0ce26401d2e22f04d83d1255dc51addd3b75a2b1ae0784504df543af8969b"
        "e3ea7082ff7fc9888c144da2af58429ec96031dbcad3dad9af0dcbaaaf268cb8fcffead94f3c7ca495e056a9b47acdb7"
        "51fb73e666c6c655ade8297297d07ad1ba5e43f1bca32301651339e22904cc8c42f58c30c04aafdb038dda0847dd988d"
        "cda6f3bfd15c4b4c4525004aa06eeff8ca61783aacec57fb3d1f92b0fe2fd1a85f6724517b65e614ad6808d6f6ee34df"
        "f7310fdc82aebfd904b01e1dc54b2927094b2db68d6f903b68401adebf5a7e08d78ff4ef5d63653a65040cf9bfd4aca7"
        "984a74d37145986780fc0b16ac451649de6188a7dbdf191f64b5fc5e2ab47b57f7f7276cd419c17a3ca8e1b939ae49e4"
        "88acba6b965610b5480109c8b17b80e1b7b750dfc7598d5d5011fd2dcc5600a32ef5b52a1ecc820e308aa342721aac09"
        "43bf6686b64b2579376504ccc493d97e6aed3fb0f9cd71a43dd497f01f17c0e2cb3797aa2a2f256656168e6c496afc5f"
        "b93246f6b1116398a346f1a641f3b041e989f7914f90cc2c7fff357876e506b50d334ba77c225bc307ba537152f3f161"
        "0e4eafe595f6d9d90d11faa933a15ef1369546868a7f3a45a96768d40fd9d03412c091c6315cf4fde7cb68606937380d"
        "b2eaaa707b4c4185c32eddcdd306705e4dc1ffc872eeee475a64dfac86aba41c0618983f8741c5ef68d3a101e8a3b8ca"
        "c60c905c15fc910840b94c00a0b9d0",
        "0aab4c900501b3e24d7cdf4663326a3a87df5e4843b2cbdb67cbf6e460fec350aa5371b1508f9f4528ecea23c436d94b5e8fcd4f681e30a6ac00a9704a188a03",
    ),
    Vector(
        "TEST SHA(abc)",
        "833fe62409237b9d62ec77587520911e9a759cec1d19755b7da901b96dca3d42",
        "ec172b93ad5e563bf4932c70e1245034c35467ef2efd4d64ebf819683467e2bf",
        "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f",
        "dc2a4459e7369633a52b1bf277839a00201009a3efbf3ecb69bea2186c26b58909351fc9ac90b3ecfdfbc7c66431e0303dca179c138ac17ad9bef1177331a704",
    ),
]


def _raw_public_key(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


@pytest.mark.parametrize("vector", RFC8032_VECTORS, ids=[vector.name for vector in RFC8032_VECTORS])
def test_ed25519_rfc8032_vector_verifies(vector: Vector) -> None:
    public_key = bytes.fromhex(vector.public_key)
    message = bytes.fromhex(vector.message)
    signature = bytes.fromhex(vector.signature)

    assert verifier.ed25519_verify(public_key, message, signature) is True
    assert verifier.ed25519_verify(public_key, message + b"\x00", signature) is False
    # The transcription is checked independently: cryptography derives the same key and signature.
    private_key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(vector.secret_key))
    assert _raw_public_key(private_key) == public_key
    assert private_key.sign(message) == signature


def test_rfc8032_message_lengths() -> None:
    lengths = {vector.name: len(bytes.fromhex(vector.message)) for vector in RFC8032_VECTORS}

    assert lengths == {"TEST 1": 0, "TEST 2": 1, "TEST 3": 2, "TEST 1024": 1023, "TEST SHA(abc)": 64}
    assert bytes.fromhex(RFC8032_VECTORS[4].message) == hashlib.sha512(b"abc").digest()


def _flip_bit(data: bytes, bit: int) -> bytes:
    changed = bytearray(data)
    changed[bit // 8] ^= 1 << (bit % 8)
    return bytes(changed)


def _cryptography_accepts(public_key: bytes, message: bytes, signature: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except InvalidSignature:
        return False
    return True


def test_ed25519_agrees_with_cryptography_on_random_keys() -> None:
    rng = random.Random(25519)
    disagreements = []
    for index in range(100):
        private_key = Ed25519PrivateKey.generate()
        public_key = _raw_public_key(private_key)
        message = rng.randbytes(rng.choice([0, 1, 31, 32, 33, 64, 200, 1023]))
        signature = private_key.sign(message)
        other_key = _raw_public_key(Ed25519PrivateKey.generate())
        cases = {
            "genuine": (public_key, message, signature),
            "message changed": (public_key, message + b"!" if index % 2 else _flip_bit(message or b"\x00", 0), signature),
            "R changed": (public_key, message, _flip_bit(signature, rng.randrange(0, 255))),
            "S changed": (public_key, message, _flip_bit(signature, rng.randrange(256, 500))),
            "other key": (other_key, message, signature),
        }
        for name, (key, data, value) in cases.items():
            expected = name == "genuine"
            ours = verifier.ed25519_verify(key, data, value)
            theirs = _cryptography_accepts(key, data, value)
            if ours is not expected or theirs is not expected:
                disagreements.append((index, name, ours, theirs))

    assert disagreements == []


def test_ed25519_rejects_s_not_below_group_order() -> None:
    private_key = Ed25519PrivateKey.generate()
    public_key = _raw_public_key(private_key)
    signature = private_key.sign(b"chain head")
    s = int.from_bytes(signature[32:], "little")
    group_order = 2**252 + 27742317777372353535851937790883648493
    # S + L denotes the same scalar, so only the range check rejects it.
    malleated = signature[:32] + (s + group_order).to_bytes(32, "little")

    assert verifier.ed25519_verify(public_key, b"chain head", signature) is True
    assert verifier.ed25519_verify(public_key, b"chain head", malleated) is False
    assert _cryptography_accepts(public_key, b"chain head", malleated) is False


def _signature_for_identity_key(seed: bytes) -> bytes:
    """Return a signature (R, S) with R = [S]B, which verifies under the identity point as public key.

    S is the secret scalar that RFC 8032, section 5.1.5 derives from ``seed``,
    so R is the public key that cryptography derives from the same seed.
    """
    digest = hashlib.sha512(seed).digest()
    scalar = int.from_bytes(digest[:32], "little")
    scalar &= (1 << 254) - 8
    scalar |= 1 << 254
    group_order = 2**252 + 27742317777372353535851937790883648493
    point_r = _raw_public_key(Ed25519PrivateKey.from_private_bytes(seed))
    return point_r + (scalar % group_order).to_bytes(32, "little")


def test_ed25519_rejects_non_canonical_key() -> None:
    field_prime = 2**255 - 19
    signature = _signature_for_identity_key(b"\x07" * 32)
    identity = (1).to_bytes(32, "little")
    # y = p + 1 denotes the same y as 1, so only the canonical-encoding check rejects it.
    y_not_reduced = (field_prime + 1).to_bytes(32, "little")
    # y = 1 gives x = 0, and the sign bit of x = 0 must be clear.
    negative_zero_x = (1 | (1 << 255)).to_bytes(32, "little")

    # The identity key is accepted with its canonical encoding: [S]B = R + [k]A holds for every message.
    assert verifier.ed25519_verify(identity, b"any message", signature) is True
    assert verifier.ed25519_verify(y_not_reduced, b"any message", signature) is False
    assert verifier.ed25519_verify(negative_zero_x, b"any message", signature) is False


def test_ed25519_rejects_non_canonical_r() -> None:
    field_prime = 2**255 - 19
    identity = (1).to_bytes(32, "little")
    zero_scalar = bytes(32)
    # With A and R the identity and S = 0, the equation holds, so only the encoding of R decides.
    assert verifier.ed25519_verify(identity, b"m", identity + zero_scalar) is True
    assert verifier.ed25519_verify(identity, b"m", (field_prime + 1).to_bytes(32, "little") + zero_scalar) is False
    assert verifier.ed25519_verify(identity, b"m", (1 | (1 << 255)).to_bytes(32, "little") + zero_scalar) is False


def test_ed25519_rejects_points_off_curve() -> None:
    private_key = Ed25519PrivateKey.generate()
    public_key = _raw_public_key(private_key)
    signature = private_key.sign(b"m")
    # No curve point has y = 2: (y*y - 1) / (d*y*y + 1) is not a square modulo p.
    off_curve = (2).to_bytes(32, "little")

    assert verifier.ed25519_verify(off_curve, b"m", signature) is False
    assert verifier.ed25519_verify(public_key, b"m", off_curve + signature[32:]) is False


def test_ed25519_rejects_wrong_lengths() -> None:
    private_key = Ed25519PrivateKey.generate()
    public_key = _raw_public_key(private_key)
    signature = private_key.sign(b"m")

    assert verifier.ed25519_verify(public_key[:31], b"m", signature) is False
    assert verifier.ed25519_verify(public_key, b"m", signature[:63]) is False
    assert verifier.ed25519_verify(public_key, b"m", signature + b"\x00") is False


# -- building bundles -------------------------------------------------------------

DAG_DOCUMENT = {
    "dag_id": "audit-demo",
    "nodes": {
        "activity": {"agent_id": "demo.fuel_use", "params": {"fuel": "diesel"},
                     "input_mapping": {"year": "input.reporting_year"}},
        "EF": {"agent_id": "demo.emission_factor", "params": {"fuel": "diesel"}},
        "co2e": {"agent_id": "demo.co2e", "depends_on": ["activity", "EF"],
                 "input_mapping": {"litres": "results.activity.litres", "kg_per_litre": "results.EF.kg_per_litre"}},
        "report": {"agent_id": "demo.report", "depends_on": ["co2e"], "input_mapping": {"total": "results.co2e.co2e_t"}},
        "scope3": {"agent_id": "demo.scope3", "depends_on": ["activity"], "condition": "input.include_scope3 == true"},
    },
}
CANONICAL_ORDER = ["EF", "activity", "co2e", "report", "scope3"]
INPUT_DATA = {"reporting_year": 2024, "include_scope3": False}
EXECUTION_ID = "3f6c1a52-8a4e-4f8e-9d0b-5f0e6b1c2d3e"
FINALIZED_AT = "2026-12-05T00:00:00.000000Z"


class NodeRun(NamedTuple):
    """How one node ended: its status, agent version, the inputs it read and what it returned."""

    status: str
    agent_version: str | None
    inputs: dict[str, Any] | None
    outputs: Any


CO2E_T = 1180.25 * 2.68 / 1000
RUNS = {
    "EF": NodeRun("completed", "2.1.0", {}, {"fuel": "diesel", "kg_per_litre": 2.68}),
    "activity": NodeRun("completed", "1.0.0", {"year": 2024},
                        {"year": 2024, "fuel": "diesel", "litres": 1180.25, "site": "Zürich ✓ 😀"}),
    "co2e": NodeRun("completed", "1.0.0", {"litres": 1180.25, "kg_per_litre": 2.68}, {"unit": "tCO₂e", "co2e_t": CO2E_T}),
    "report": NodeRun("completed", "1.0.0", {"total": CO2E_T},
                      {"\ue000": "private use", "\U0001f600": "emoji", "lines": ["a\tb", "\x1f"], "tiny": 1e-7, "big": 1e21}),
    "scope3": NodeRun("skipped", None, None, None),
}

SIGNING_KEY = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"gl-orchestrator test signing key").digest())
PUBLIC_KEY = _raw_public_key(SIGNING_KEY)
PUBLIC_KEY_BASE64 = base64.b64encode(PUBLIC_KEY).decode("ascii")
OTHER_KEY = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"someone else's key").digest())


def audit_dag(document: dict[str, Any] | None = None) -> Dag:
    return parse_dag(document or DAG_DOCUMENT, registry=None)


def signature_block(key: Ed25519PrivateKey, execution_id: str, dag_hash: str, provenance_chain_hash: str) -> dict[str, Any]:
    """Sign a chain head as the orchestrator's finalizer does: Ed25519 over C(signed)."""
    signed = {"execution_id": execution_id, "dag_hash": dag_hash,
              "provenance_chain_hash": provenance_chain_hash, "finalized_at": FINALIZED_AT}
    public_key = _raw_public_key(key)
    return {
        "algorithm": "ed25519",
        "key_id": "ed25519:" + hashlib.sha256(public_key).hexdigest()[:16],
        "public_key": base64.b64encode(public_key).decode("ascii"),
        "signed": signed,
        "value": base64.b64encode(key.sign(hashing.canonical_json(signed))).decode("ascii"),
    }


def make_bundle(outputs: dict[str, Any] | None = None, key: Ed25519PrivateKey | None = SIGNING_KEY) -> dict[str, Any]:
    """Build a consistent bundle with every hash computed by orchestrator.hashing.

    ``outputs`` replaces the outputs of the nodes it names, and every hash
    after them is recomputed, as someone with write access to the store could do.
    """
    dag = audit_dag()
    chain_hashes: dict[str, str] = {}
    records = []
    for ordinal, node_id in enumerate(dag.topological_order()):
        run = RUNS[node_id]
        node_outputs = (outputs or {}).get(node_id, run.outputs)
        node = dag.nodes[node_id]
        document = None
        input_hash = NULL_HASH
        if run.inputs is not None:
            document = hashing.input_document(node.agent_id, run.agent_version, node.params, run.inputs)
            input_hash = hashing.input_hash(node.agent_id, run.agent_version, node.params, run.inputs)
        output_hash = hashing.output_hash(node_outputs)
        parent_hashes = sorted(chain_hashes[parent] for parent in dag.parents(node_id))
        chain_hashes[node_id] = hashing.chain_hash(node_id, run.status, input_hash, output_hash, parent_hashes)
        records.append({
            "node_id": node_id,
            "ordinal": ordinal,
            "status": run.status,
            "agent_id": node.agent_id,
            "agent_version": run.agent_version,
            "attempt_count": 1 if run.status == "completed" else 0,
            "input_document": document,
            "input_hash": input_hash,
            "checkpoint": {"status": run.status, "output_hash": output_hash, "outputs": node_outputs,
                           "outputs_removed_at": None},
            "output_hash": output_hash,
            "parent_hashes": parent_hashes,
            "chain_hash": chain_hashes[node_id],
            "timings": {"started_at": "2026-12-04T23:59:58.000000Z", "finished_at": "2026-12-04T23:59:59.500000Z",
                        "duration_seconds": 1.5},
        })
    provenance_chain_hash = hashing.provenance_chain_hash(
        dag.dag_hash, [chain_hashes[node_id] for node_id in dag.topological_order()]
    )
    # A JSON round trip shares no object between two places of the bundle, or
    # with RUNS, just as a bundle read from a file does.
    return json.loads(json.dumps({
        "bundle_format": "gl-audit-bundle-v1",
        "scheme": "gl-prov-v1",
        "exported_at": "2026-12-05T00:00:01.000000Z",
        "execution": {
            "execution_id": EXECUTION_ID,
            "dag_id": dag.dag_id,
            "status": "completed",
            "dag_hash": dag.dag_hash,
            "input_data": INPUT_DATA,
            "input_hash": hashing.output_hash(INPUT_DATA),
            "provenance_chain_hash": provenance_chain_hash,
            "chain_valid": True,
            "created_at": "2026-12-04T23:59:57.000000Z",
            "started_at": "2026-12-04T23:59:57.500000Z",
            "completed_at": FINALIZED_AT,
        },
        "dag": dag.document,
        # Exporters sort by ordinal; reverse here so that nothing relies on the order.
        "nodes": list(reversed(records)),
        "signature": None if key is None else signature_block(key, EXECUTION_ID, dag.dag_hash, provenance_chain_hash),
    }))


def record_of(bundle: dict[str, Any], node_id: str) -> dict[str, Any]:
    [record] = [record for record in bundle["nodes"] if record["node_id"] == node_id]
    return record


def node_report(report: dict[str, Any], node_id: str) -> dict[str, Any]:
    [node] = [node for node in report["nodes"] if node["node_id"] == node_id]
    return node


def _stored_time(text_value: str | None) -> datetime | None:
    if text_value is None:
        return None
    return datetime.strptime(text_value, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)


def reference_report(bundle: dict[str, Any]) -> dict[str, Any]:
    """Run orchestrator.provenance.verify_chain on the bundle's data, as the API does on the stored rows."""
    records = []
    checkpoints = []
    for record in bundle["nodes"]:
        records.append({key: record[key] for key in (
            "node_id", "ordinal", "status", "input_document", "input_hash", "output_hash", "parent_hashes",
            "chain_hash")})
        checkpoint = record["checkpoint"]
        if checkpoint is not None:
            checkpoints.append({
                "node_id": record["node_id"], "status": checkpoint["status"], "outputs": checkpoint["outputs"],
                "output_hash": checkpoint["output_hash"],
                "payload_removed_at": _stored_time(checkpoint.get("outputs_removed_at")),
                "payload_problem": checkpoint.get("outputs_unavailable"),
            })
    execution = bundle["execution"]
    report = verify_chain(dag_from_normalized(bundle["dag"]), execution["execution_id"], execution["dag_hash"],
                          records, checkpoints, execution["provenance_chain_hash"])
    return report.to_dict()


def assert_agrees_with_verify_chain(report: dict[str, Any], bundle: dict[str, Any]) -> None:
    reference = reference_report(bundle)
    assert report["chain_valid"] == reference["chain_valid"]
    assert report["provenance_chain_hash"] == reference["provenance_chain_hash"]
    assert report["problems"] == reference["problems"]
    assert report["nodes"] == reference["nodes"]


def run_cli(capsys: pytest.CaptureFixture[str], *arguments: str) -> tuple[int, str, str]:
    status = verifier.main(list(arguments))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def write_bundle(path: Path, bundle: dict[str, Any]) -> str:
    path.write_text(json.dumps(bundle, indent=2, ensure_ascii=False), encoding="utf-8")
    return str(path)


# -- valid bundles ----------------------------------------------------------------


def test_valid_bundle_verifies() -> None:
    bundle = make_bundle()

    report = verifier.verify_bundle(bundle, [PUBLIC_KEY])

    assert report["valid"] is True
    assert report["chain_valid"] is True
    assert [node["node_id"] for node in report["nodes"]] == CANONICAL_ORDER
    assert all(node["valid"] for node in report["nodes"])
    assert report["problems"] == []
    assert report["provenance_chain_hash"] == bundle["execution"]["provenance_chain_hash"]
    assert report["signature"]["status"] == "valid"
    assert report["signature"]["key_id"] == bundle["signature"]["key_id"]
    assert report["warnings"] == []
    assert_agrees_with_verify_chain(report, bundle)


def test_skipped_node_hashes_null() -> None:
    report = verifier.verify_bundle(make_bundle(), [PUBLIC_KEY])
    scope3 = node_report(report, "scope3")

    assert scope3["valid"] is True
    assert scope3["status"] == "skipped"
    assert scope3["input_hash"] == NULL_HASH
    assert scope3["output_hash"] == NULL_HASH


def test_docs_worked_example_hashes() -> None:
    """Rebuild the worked example of docs/provenance.md and check its published hashes."""
    document = {
        "dag_id": "fuel-demo",
        "nodes": {
            "activity": {"agent_id": "demo.fuel_use", "params": {"fuel": "diesel"},
                         "input_mapping": {"year": "input.reporting_year"}},
            "EF": {"agent_id": "demo.emission_factor", "params": {"fuel": "diesel"}},
            "co2e": {"agent_id": "demo.co2e", "depends_on": ["activity", "EF"],
                     "input_mapping": {"litres": "results.activity.litres",
                                       "kg_per_litre": "results.EF.kg_per_litre"},
                     "condition": "input.include_scope1 == true"},
        },
    }
    dag = audit_dag(document)

    assert verifier.sha256_hex(verifier.canonical_json(dag.document)) == (
        "d4348ee5d8ec21d6d8a9b50fa740375cee50e4cfa3625282586f0fa47198373e")
    assert verifier.sha256_hex(verifier.canonical_json({"unit": "tCO₂e", "co2e_t": CO2E_T})) == (
        "30028663b6099be30e4d287c420f3fea88532ea4e39f83e1ecc85ca92190991b")
    chain = ["69372da29a2532a5cd2256fa12e1b3de85a4ef38b14342009290bd553bd2c36d",
             "0e10771715f6b47bd1f11be517917603a3bd7d75846813b291a92b20f24f583a",
             "111fb097d6894f7c531c85f4c63f2d4fc6d9bfdab4cae98da034cc658c27b6fe"]
    execution_document = {"scheme": "gl-prov-v1", "dag_hash": dag.dag_hash, "chain": chain}
    assert verifier.sha256_hex(verifier.canonical_json(execution_document)) == (
        "a76ba4a071a9be69c2d341ffb146a9380dce14c625286184c78cdfeafd3476df")


def test_canonical_order_uses_code_points() -> None:
    # "EF" sorts before "activity" by code point although it sorts after it case-insensitively.
    report = verifier.verify_bundle(make_bundle())

    assert [node["node_id"] for node in report["nodes"]] == list(audit_dag().topological_order())


# -- tampered bundles ---------------------------------------------------------------


class Tamper(NamedTuple):
    """One change to a bundle and what verification must report."""

    name: str
    apply: Callable[[dict[str, Any]], None]
    invalid_nodes: set[str]
    node_reason: str | None
    problem: str | None
    signature_status: str


def _change_output(bundle: dict[str, Any]) -> None:
    record_of(bundle, "co2e")["checkpoint"]["outputs"]["co2e_t"] = 3.2


def _change_input_document(bundle: dict[str, Any]) -> None:
    record_of(bundle, "co2e")["input_document"]["inputs"]["litres"] = 1000


def _change_chain_hash(bundle: dict[str, Any]) -> None:
    record_of(bundle, "activity")["chain_hash"] = "0" * 64


def _delete_record(bundle: dict[str, Any]) -> None:
    bundle["nodes"] = [record for record in bundle["nodes"] if record["node_id"] != "co2e"]


def _add_record(bundle: dict[str, Any]) -> None:
    ghost = copy.deepcopy(record_of(bundle, "report"))
    ghost["node_id"] = "ghost"
    ghost["ordinal"] = 5
    bundle["nodes"].append(ghost)


def _swap_ordinals(bundle: dict[str, Any]) -> None:
    record_of(bundle, "EF")["ordinal"] = 1
    record_of(bundle, "activity")["ordinal"] = 0


def _change_dag(bundle: dict[str, Any]) -> None:
    bundle["dag"]["nodes"]["EF"]["params"]["fuel"] = "petrol"


def _change_checkpoint_status(bundle: dict[str, Any]) -> None:
    record_of(bundle, "activity")["checkpoint"]["status"] = "failed"


def _change_checkpoint_output_hash(bundle: dict[str, Any]) -> None:
    checkpoint = record_of(bundle, "EF")["checkpoint"]
    checkpoint["outputs"] = {"fuel": "diesel", "kg_per_litre": 2.0}
    checkpoint["output_hash"] = hashing.output_hash(checkpoint["outputs"])


def _remove_checkpoint(bundle: dict[str, Any]) -> None:
    record_of(bundle, "report")["checkpoint"] = None


def _mark_outputs_unavailable(bundle: dict[str, Any]) -> None:
    checkpoint = record_of(bundle, "co2e")["checkpoint"]
    checkpoint["outputs"] = None
    checkpoint["outputs_unavailable"] = "outputs are missing from the file checkpoint store"


def _change_parent_hashes(bundle: dict[str, Any]) -> None:
    record = record_of(bundle, "co2e")
    record["parent_hashes"] = [record_of(bundle, "EF")["chain_hash"]] * 2
    record["chain_hash"] = hashing.chain_hash("co2e", record["status"], record["input_hash"], record["output_hash"],
                                              record["parent_hashes"])


TAMPERS = [
    Tamper("output changed", _change_output, {"co2e"}, "output altered: outputs hash to ", None, "valid"),
    Tamper("input document changed", _change_input_document, {"co2e"}, "input altered: input document hashes to ",
           None, "valid"),
    Tamper("chain_hash changed", _change_chain_hash, {"activity"}, "chain_hash altered: stored 0000",
           "provenance_chain_hash differs: stored ", "invalid"),
    Tamper("record deleted", _delete_record, {"co2e", "report"}, "record missing: no provenance record for this node",
           "provenance_chain_hash differs: stored ", "invalid"),
    Tamper("record added", _add_record, set(), None, "extra record: node 'ghost' is not in the DAG", "valid"),
    Tamper("ordinals swapped", _swap_ordinals, {"EF", "activity"}, "order changed: ordinal ", None, "valid"),
    Tamper("DAG document changed", _change_dag, set(), None, "DAG document does not match dag_hash: expected ", "valid"),
    Tamper("checkpoint status changed", _change_checkpoint_status, {"activity"},
           "status differs: checkpoint failed, provenance record completed", None, "valid"),
    Tamper("checkpoint rehashed alone", _change_checkpoint_output_hash, {"EF"}, "output hash differs: checkpoint ",
           None, "valid"),
    Tamper("checkpoint removed", _remove_checkpoint, {"report"}, "checkpoint missing: no checkpoint for this node",
           None, "valid"),
    Tamper("outputs unavailable", _mark_outputs_unavailable, {"co2e"}, "output unavailable: outputs are missing",
           None, "valid"),
    Tamper("parent hashes changed", _change_parent_hashes, {"co2e", "report"},
           "parent hashes differ from the chain hashes of the node's parents in the DAG",
           "provenance_chain_hash differs: stored ", "invalid"),
]


@pytest.mark.parametrize("tamper", TAMPERS, ids=[tamper.name for tamper in TAMPERS])
def test_tampered_bundle_names_node_and_reason(tamper: Tamper) -> None:
    bundle = make_bundle()
    tamper.apply(bundle)

    report = verifier.verify_bundle(bundle, [PUBLIC_KEY])

    assert report["valid"] is False
    assert report["chain_valid"] is False
    assert {node["node_id"] for node in report["nodes"] if not node["valid"]} == tamper.invalid_nodes
    if tamper.node_reason is not None:
        for node_id in tamper.invalid_nodes & {"co2e", "activity", "EF", "report"}:
            reasons = node_report(report, node_id)["reasons"]
            if node_id == "report" and tamper.name == "record deleted":
                assert reasons == ["parent missing: a parent has no provenance record",
                                   "parent hashes differ from the chain hashes of the node's parents in the DAG"]
            else:
                assert any(reason.startswith(tamper.node_reason) for reason in reasons), reasons
    if tamper.problem is not None:
        assert any(problem.startswith(tamper.problem) for problem in report["problems"]), report["problems"]
    else:
        assert report["problems"] == []
    assert report["signature"]["status"] == tamper.signature_status
    assert_agrees_with_verify_chain(report, bundle)


@pytest.mark.parametrize("tamper", TAMPERS, ids=[tamper.name for tamper in TAMPERS])
def test_tampered_bundle_exits_1(tamper: Tamper, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bundle = make_bundle()
    tamper.apply(bundle)
    path = write_bundle(tmp_path / "bundle.json", bundle)

    status, out, err = run_cli(capsys, path, "--public-key", PUBLIC_KEY_BASE64)

    assert status == 1, out + err
    assert out.splitlines()[-1].startswith("verdict: FAIL: ")
    for node_id in tamper.invalid_nodes:
        assert any(line.startswith(f"INVALID  {node_id}: ") for line in out.splitlines()), out
    if tamper.problem is not None:
        assert any(line.startswith(f"problem: {tamper.problem}") for line in out.splitlines()), out


def test_execution_input_altered() -> None:
    bundle = make_bundle()
    bundle["execution"]["input_data"]["reporting_year"] = 2023

    report = verifier.verify_bundle(bundle, [PUBLIC_KEY])

    assert report["chain_valid"] is False
    expected = (f"execution input altered: input_data hashes to {hashing.output_hash(bundle['execution']['input_data'])}, "
                f"execution has {hashing.output_hash(INPUT_DATA)}")
    assert report["problems"] == [expected]
    assert all(node["valid"] for node in report["nodes"])


def test_duplicate_record_reported() -> None:
    bundle = make_bundle()
    bundle["nodes"].append(copy.deepcopy(record_of(bundle, "EF")))

    report = verifier.verify_bundle(bundle, [PUBLIC_KEY])

    assert report["chain_valid"] is False
    assert report["problems"] == ["duplicate record: node 'EF' has 2 records; only the first was checked"]


def test_dag_with_cycle_reported() -> None:
    bundle = make_bundle()
    bundle["dag"]["nodes"]["EF"]["depends_on"] = ["report"]

    report = verifier.verify_bundle(bundle, [PUBLIC_KEY])

    assert report["chain_valid"] is False
    assert report["problems"][0].startswith("DAG document does not match dag_hash: ")
    assert report["problems"][1] == (
        "DAG document is invalid: nodes 'EF', 'co2e', 'report' are on a cycle or depend on a node that is not in "
        "the DAG, so they have no canonical position and were not verified")
    assert [node["node_id"] for node in report["nodes"]] == ["activity", "scope3"]


def test_dag_with_unknown_parent_reported() -> None:
    bundle = make_bundle()
    bundle["dag"]["nodes"]["scope3"]["depends_on"] = ["activity", "nowhere"]

    report = verifier.verify_bundle(bundle, [PUBLIC_KEY])

    assert report["chain_valid"] is False
    assert ("DAG document is invalid: node 'scope3' depends on 'nowhere', which is not a node of the DAG"
            in report["problems"])


def test_stored_chain_hash_null_not_compared() -> None:
    bundle = make_bundle(key=None)
    bundle["execution"]["provenance_chain_hash"] = None

    report = verifier.verify_bundle(bundle)

    assert report["chain_valid"] is True
    assert report["stored_provenance_chain_hash"] is None
    assert_agrees_with_verify_chain(report, bundle)


# -- retention ---------------------------------------------------------------------


def test_removed_outputs_get_note() -> None:
    bundle = make_bundle()
    checkpoint = record_of(bundle, "co2e")["checkpoint"]
    checkpoint["outputs"] = None
    checkpoint["outputs_removed_at"] = "2031-05-05T17:08:09.123456Z"

    report = verifier.verify_bundle(bundle, [PUBLIC_KEY])

    co2e = node_report(report, "co2e")
    assert co2e["valid"] is True
    assert co2e["notes"] == [
        "outputs removed by retention at 2031-05-05T17:08:09.123456Z; output_hash kept, not re-checked"]
    assert report["valid"] is True
    assert_agrees_with_verify_chain(report, bundle)


def test_removed_outputs_hash_still_checked() -> None:
    bundle = make_bundle()
    checkpoint = record_of(bundle, "co2e")["checkpoint"]
    checkpoint["outputs"] = None
    checkpoint["outputs_removed_at"] = "2031-05-05T17:08:09.123456Z"
    checkpoint["output_hash"] = "f" * 64

    report = verifier.verify_bundle(bundle, [PUBLIC_KEY])

    reasons = node_report(report, "co2e")["reasons"]
    assert reasons == [f"output hash differs: checkpoint {'f' * 64}, provenance record "
                       f"{record_of(bundle, 'co2e')['output_hash']}"]
    assert_agrees_with_verify_chain(report, bundle)


def test_outputs_present_after_removal_rehashed() -> None:
    bundle = make_bundle()
    checkpoint = record_of(bundle, "co2e")["checkpoint"]
    checkpoint["outputs_removed_at"] = "2031-05-05T17:08:09.123456Z"
    checkpoint["outputs"]["co2e_t"] = 0.0

    report = verifier.verify_bundle(bundle, [PUBLIC_KEY])

    co2e = node_report(report, "co2e")
    assert co2e["notes"] == []
    assert co2e["reasons"][0].startswith("output altered: ")
    assert_agrees_with_verify_chain(report, bundle)


def test_removed_null_output_needs_no_note() -> None:
    bundle = make_bundle()
    checkpoint = record_of(bundle, "scope3")["checkpoint"]
    checkpoint["outputs_removed_at"] = "2031-05-05T17:08:09.123456Z"

    report = verifier.verify_bundle(bundle, [PUBLIC_KEY])

    assert node_report(report, "scope3")["notes"] == []
    assert node_report(report, "scope3")["valid"] is True
    assert_agrees_with_verify_chain(report, bundle)


# -- signatures ---------------------------------------------------------------------


def test_recomputed_chain_caught_only_by_signature(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    genuine = make_bundle()
    forged = make_bundle(outputs={"co2e": {"unit": "tCO₂e", "co2e_t": 1.0}}, key=None)
    forged["signature"] = genuine["signature"]

    report = verifier.verify_bundle(forged, [PUBLIC_KEY])

    assert report["chain_valid"] is True
    assert reference_report(forged)["chain_valid"] is True
    assert report["signature"]["status"] == "invalid"
    assert "signed provenance_chain_hash" in report["signature"]["detail"]
    assert "does not verify" not in report["signature"]["detail"]
    assert report["valid"] is False
    status, out, _ = run_cli(capsys, write_bundle(tmp_path / "forged.json", forged), "--public-key", PUBLIC_KEY_BASE64)
    assert status == 1
    assert out.splitlines()[-1] == "verdict: FAIL: signature invalid"


def test_resigned_forgery_passes_without_pinned_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    forged = make_bundle(outputs={"co2e": {"unit": "tCO₂e", "co2e_t": 1.0}}, key=OTHER_KEY)
    path = write_bundle(tmp_path / "forged.json", forged)

    status, out, _ = run_cli(capsys, path)

    # Without a pinned key the embedded key is the only key, so only the warning alerts the auditor.
    assert status == 0
    assert "warning: the signing key ed25519:" in out
    assert "was not pinned" in out
    status, out, _ = run_cli(capsys, path, "--public-key", PUBLIC_KEY_BASE64)
    assert status == 1
    assert "signature: untrusted-key: the bundle is signed by key " in out


def test_wrong_public_key_pinned(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bundle = make_bundle()
    other = base64.b64encode(_raw_public_key(OTHER_KEY)).decode("ascii")

    report = verifier.verify_bundle(bundle, [_raw_public_key(OTHER_KEY)])
    status, out, _ = run_cli(capsys, write_bundle(tmp_path / "bundle.json", bundle), "--public-key", other)

    assert report["chain_valid"] is True
    assert report["signature"]["status"] == "untrusted-key"
    assert report["valid"] is False
    assert status == 1
    assert out.splitlines()[-1] == "verdict: FAIL: signature untrusted-key"


def test_any_of_several_pinned_keys_accepted() -> None:
    report = verifier.verify_bundle(make_bundle(), [_raw_public_key(OTHER_KEY), PUBLIC_KEY])

    assert report["signature"]["status"] == "valid"
    assert report["signature"]["pinned"] is True


def test_embedded_key_warns_when_not_pinned() -> None:
    report = verifier.verify_bundle(make_bundle())

    assert report["valid"] is True
    assert report["signature"]["status"] == "valid"
    assert report["signature"]["pinned"] is False
    assert "was not pinned" in report["signature"]["detail"]
    assert len(report["warnings"]) == 1


def _corrupt_value(signature: dict[str, Any]) -> None:
    value = base64.b64decode(signature["value"])
    signature["value"] = base64.b64encode(_flip_bit(value, 300)).decode("ascii")


def _change_key_id(signature: dict[str, Any]) -> None:
    signature["key_id"] = "ed25519:0000000000000000"


def _change_signed_execution(signature: dict[str, Any]) -> None:
    signature["signed"]["execution_id"] = "another-execution"


def _change_finalized_at(signature: dict[str, Any]) -> None:
    signature["signed"]["finalized_at"] = "2026-12-06T00:00:00.000000Z"


def _add_signed_field(signature: dict[str, Any]) -> None:
    signature["signed"]["note"] = "added"


def _change_algorithm(signature: dict[str, Any]) -> None:
    signature["algorithm"] = "rsa"


def _truncate_value(signature: dict[str, Any]) -> None:
    signature["value"] = signature["value"][:40]


SIGNATURE_TAMPERS = {
    "value changed": (_corrupt_value, "the Ed25519 signature does not verify with key ed25519:"),
    "key_id changed": (_change_key_id, "key_id 'ed25519:0000000000000000' does not match public_key"),
    "signed execution_id changed": (_change_signed_execution, "signed execution_id 'another-execution' differs"),
    "finalized_at changed": (_change_finalized_at, "the Ed25519 signature does not verify with key ed25519:"),
    "extra signed field": (_add_signed_field, "signed must be an object with exactly the fields "),
    "other algorithm": (_change_algorithm, "signature algorithm is 'rsa'; this verifier checks only 'ed25519'"),
    "value truncated": (_truncate_value, "value is not base64 of a 64-byte Ed25519 signature"),
}


@pytest.mark.parametrize("name", sorted(SIGNATURE_TAMPERS))
def test_tampered_signature_invalid(name: str) -> None:
    change, expected_detail = SIGNATURE_TAMPERS[name]
    bundle = make_bundle()
    change(bundle["signature"])

    report = verifier.verify_bundle(bundle, [PUBLIC_KEY])

    assert report["chain_valid"] is True
    assert report["signature"]["status"] == "invalid"
    assert expected_detail in report["signature"]["detail"]
    assert report["valid"] is False


def test_unsigned_bundle(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bundle = make_bundle(key=None)
    path = write_bundle(tmp_path / "bundle.json", bundle)

    report = verifier.verify_bundle(bundle)
    status, out, _ = run_cli(capsys, path)

    assert report["signature"]["status"] == "unsigned"
    assert report["signature"]["detail"] == UNSIGNED_TEXT
    assert report["valid"] is True
    assert status == 0
    assert f"signature: unsigned: {UNSIGNED_TEXT}" in out.splitlines()
    assert out.splitlines()[-1] == "verdict: PASS: all 5 nodes verify, but the chain is unsigned"


def test_unsigned_bundle_fails_when_key_pinned(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Otherwise stripping the signature would get a forged bundle past a pinned key.
    bundle = make_bundle(key=None)

    report = verifier.verify_bundle(bundle, [PUBLIC_KEY])
    status, out, _ = run_cli(capsys, write_bundle(tmp_path / "bundle.json", bundle), "--public-key", PUBLIC_KEY_BASE64)

    assert report["chain_valid"] is True
    assert report["signature"]["status"] == "unsigned"
    assert report["valid"] is False
    assert status == 1
    assert out.splitlines()[-1] == "verdict: FAIL: signature unsigned"


def test_missing_public_key_found_by_key_id() -> None:
    bundle = make_bundle()
    bundle["signature"]["public_key"] = None

    pinned = verifier.verify_bundle(bundle, [_raw_public_key(OTHER_KEY), PUBLIC_KEY])
    unpinned = verifier.verify_bundle(bundle)

    assert pinned["signature"]["status"] == "valid"
    assert unpinned["signature"]["status"] == "untrusted-key"
    assert unpinned["valid"] is False


def test_signature_made_by_orchestrator_signing() -> None:
    """A chain head signed by orchestrator.signing, in its signature_block form, verifies offline."""
    signing = pytest.importorskip("orchestrator.signing")
    bundle = make_bundle(key=None)
    execution = bundle["execution"]
    keys = signing.SigningKeys(SIGNING_KEY)
    finalized_at = datetime(2026, 12, 5, tzinfo=timezone.utc)
    head = keys.sign(EXECUTION_ID, execution["dag_hash"], execution["provenance_chain_hash"], finalized_at)
    row = {"execution_id": EXECUTION_ID, "dag_hash": execution["dag_hash"],
           "provenance_chain_hash": execution["provenance_chain_hash"], "finalized_at": finalized_at,
           "signature": head.value, "signing_key_id": head.key_id}
    bundle["signature"] = signing.signature_block(row, keys)

    report = verifier.verify_bundle(bundle, [PUBLIC_KEY])

    assert report["signature"]["status"] == "valid", report["signature"]
    assert report["signature"]["key_id"] == head.key_id


# -- the command line ---------------------------------------------------------------


def test_cli_text_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_bundle(tmp_path / "bundle.json", make_bundle())

    status, out, err = run_cli(capsys, path, "--public-key", PUBLIC_KEY_BASE64)

    lines = out.splitlines()
    assert status == 0, out + err
    assert lines[:5] == [f"ok       {node_id}" for node_id in CANONICAL_ORDER]
    assert lines[5].startswith("signature: valid: signature verifies with the pinned key ed25519:")
    assert lines[-1] == "verdict: PASS: all 5 nodes verify and the signature is valid"
    assert err == ""


def test_cli_json_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bundle = make_bundle()
    path = write_bundle(tmp_path / "bundle.json", bundle)

    status, out, _ = run_cli(capsys, path, "--json", "--public-key", PUBLIC_KEY_BASE64)

    report = json.loads(out)
    assert status == 0
    assert report == json.loads(json.dumps(verifier.verify_bundle(bundle, [PUBLIC_KEY])))
    assert set(report) >= {"chain_valid", "provenance_chain_hash", "signature", "nodes", "problems"}
    assert set(report["signature"]) >= {"status", "detail"}
    assert set(report["nodes"][0]) >= {"node_id", "valid", "reasons", "notes", "chain_hash",
                                       "expected_parent_hashes", "actual_parent_hashes"}


def test_cli_public_key_from_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_bundle(tmp_path / "bundle.json", make_bundle())
    key_file = tmp_path / "operator.pub"
    key_file.write_text(PUBLIC_KEY_BASE64 + "\n", encoding="ascii")
    pem_file = tmp_path / "operator.pem"
    pem_file.write_bytes(SIGNING_KEY.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))

    assert run_cli(capsys, path, "--public-key", str(key_file))[0] == 0
    assert run_cli(capsys, path, "--public-key", str(pem_file))[0] == 0


def test_cli_missing_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nowhere.json"

    status, out, err = run_cli(capsys, str(missing))

    assert status == 2
    assert out == ""
    assert f"cannot read bundle {missing}" in err


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "is not valid JSON"),
        ('{"a": NaN}', "NaN is not valid JSON"),
        ('{"a": 1, "a": 2}', "duplicate object key 'a'"),
        ("[]", "contains a JSON array, not a gl-audit-bundle-v1 object"),
        ('{"bundle_format": "gl-audit-bundle-v0"}', "bundle_format is 'gl-audit-bundle-v0'"),
    ],
    ids=["invalid json", "nan", "duplicate key", "array", "other format"],
)
def test_cli_unreadable_bundle_exits_2(content: str, message: str, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bundle.json"
    path.write_text(content, encoding="utf-8")

    status, out, err = run_cli(capsys, str(path))

    assert status == 2
    assert out == ""
    assert message in err
    assert str(path) in err


def test_cli_missing_field_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bundle = make_bundle()
    del bundle["nodes"][0]["chain_hash"]

    status, _, err = run_cli(capsys, write_bundle(tmp_path / "bundle.json", bundle))

    assert status == 2
    assert "$.nodes[0].chain_hash is missing" in err


@pytest.mark.parametrize("key", ["not base64!", base64.b64encode(b"short").decode("ascii")], ids=["garbage", "short"])
def test_cli_invalid_public_key_exits_2(key: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_bundle(tmp_path / "bundle.json", make_bundle())

    status, out, err = run_cli(capsys, path, "--public-key", key)

    assert status == 2
    assert out == ""
    assert "is not an Ed25519 public key" in err


def test_cli_usage_error_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        verifier.main([])

    assert exit_info.value.code == 2
    assert "BUNDLE.json" in capsys.readouterr().err


def test_large_integer_literal_read_as_float(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # PostgreSQL JSONB prints the float 1e+22 as 10000000000000000000000.
    bundle = make_bundle(outputs={"report": {"big": 1e22}})
    text_value = json.dumps(bundle)
    assert text_value.count("1e+22") == 1
    path = tmp_path / "bundle.json"
    path.write_text(text_value.replace("1e+22", "10000000000000000000000"), encoding="utf-8")

    status, out, _ = run_cli(capsys, str(path), "--public-key", PUBLIC_KEY_BASE64)

    assert status == 0, out
    assert verifier.verify_bundle(json.loads(path.read_text()), [PUBLIC_KEY])["valid"] is True


def test_parse_bundle_json_number_types() -> None:
    values = verifier.parse_bundle_json("[9007199254740991, -9007199254740992, 10000000000000000000000, 2.0, 1e-7]")

    assert values == [2**53 - 1, -(2.0**53), 1e22, 2.0, 1e-7]
    assert [type(value) for value in values] == [int, float, float, float, float]


def test_control_characters_escaped_in_text(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bundle = make_bundle()
    ghost = copy.deepcopy(record_of(bundle, "report"))
    ghost["node_id"] = "\x1b[2K\rok       fine"
    bundle["nodes"].append(ghost)

    status, out, _ = run_cli(capsys, write_bundle(tmp_path / "bundle.json", bundle))

    assert status == 1
    assert "\x1b" not in out
    assert "\r" not in out
    assert "problem: extra record: node '\\x1b[2K\\rok       fine' is not in the DAG" in out


def test_subprocess_exit_codes(tmp_path: Path) -> None:
    good = write_bundle(tmp_path / "good.json", make_bundle())
    tampered = make_bundle()
    _change_output(tampered)
    bad = write_bundle(tmp_path / "bad.json", tampered)

    def run(*arguments: str) -> int:
        return subprocess.run([sys.executable, str(VERIFIER_PATH), *arguments], capture_output=True, timeout=60).returncode

    assert run(good, "--public-key", PUBLIC_KEY_BASE64) == 0
    assert run(bad, "--public-key", PUBLIC_KEY_BASE64) == 1
    assert run(str(tmp_path / "missing.json")) == 2


# -- the file alone, outside the project ------------------------------------------


def _clean_environment() -> dict[str, str]:
    return {name: value for name, value in os.environ.items()
            if name not in {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP"}}


def _run_copy(python: Path | str, workdir: Path) -> None:
    """Run the copied verifier under ``python`` on a valid and a tampered bundle in ``workdir``."""
    write_bundle(workdir / "good.json", make_bundle())
    tampered = make_bundle()
    _change_output(tampered)
    bad = write_bundle(workdir / "bad.json", tampered)
    command = [str(python), "gl_audit_verify.py"]

    passed = subprocess.run([*command, "good.json", "--public-key", PUBLIC_KEY_BASE64], cwd=workdir,
                            env=_clean_environment(), capture_output=True, text=True, timeout=120)
    failed = subprocess.run([*command, bad, "--public-key", PUBLIC_KEY_BASE64, "--json"], cwd=workdir,
                            env=_clean_environment(), capture_output=True, text=True, timeout=120)

    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert passed.stdout.splitlines()[-1] == "verdict: PASS: all 5 nodes verify and the signature is valid"
    assert failed.returncode == 1, failed.stdout + failed.stderr
    report = json.loads(failed.stdout)
    assert node_report(report, "co2e")["reasons"][0].startswith("output altered: ")


def test_standalone_copy_in_fresh_venv(tmp_path: Path) -> None:
    venv_dir = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv_dir)], check=True, timeout=120)
    python = venv_dir / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    workdir = tmp_path / "audit"
    workdir.mkdir()
    shutil.copy(VERIFIER_PATH, workdir / "gl_audit_verify.py")

    probe = subprocess.run(
        [str(python), "-c", "import importlib.util as u; "
         "print([m for m in ('orchestrator', 'rfc8785', 'cryptography', 'verifier') if u.find_spec(m)])"],
        cwd=workdir, env=_clean_environment(), capture_output=True, text=True, timeout=60, check=True,
    )
    assert probe.stdout.strip() == "[]"
    _run_copy(python, workdir)


# -- a bundle exported by the orchestrator -------------------------------------------


def _run_execution(db: Any, dag: Dag, registry: Any, input_data: Any, signing_keys: Any) -> str:
    """Run every node in this process as the node task does, finalize and sign, and return the execution id."""
    from orchestrator.finalizer import finalize_execution
    from orchestrator.repository import register_dag
    from orchestrator.scheduler import Scheduler

    register_dag(db, dag, replace=True)
    scheduler = Scheduler(db, registry)
    execution_id, follow_up = scheduler.create_execution(dag, input_data)
    pending = list(follow_up.dispatches)
    while pending:
        dispatch = pending.pop(0)
        claim = scheduler.claim(dispatch.execution_id, dispatch.node_id, dispatch.task_id)
        prepared = scheduler.prepare(claim)
        if isinstance(prepared, str):
            last = scheduler.record_skip(claim, prepared)
        else:
            outputs = prepared.agent(prepared.inputs, prepared.params)
            last = scheduler.record_success(claim, prepared, hashing.canonical_json(outputs), outputs)
        pending.extend(last.dispatches)
    finalize_execution(db, execution_id, signing_keys=signing_keys)
    return execution_id


class Exported(NamedTuple):
    """A finished, signed execution on SQLite, the keys that signed it, and its bundle exporter."""

    db: Any
    execution_id: str
    signing_keys: Any
    export: Callable[..., dict[str, Any]]


@pytest.fixture
def exported(sqlite_url: str) -> Any:
    audit = pytest.importorskip("orchestrator.audit")
    signing = pytest.importorskip("orchestrator.signing")
    from orchestrator.agents import AgentRegistry
    from orchestrator.database import Database

    registry = AgentRegistry()
    registry.register("demo.fuel_use", "1.0.0", lambda inputs, params: {"year": inputs["year"], "litres": 1180.25})
    registry.register("demo.emission_factor", "2.1.0", lambda inputs, params: {"kg_per_litre": 2.68})
    registry.register("demo.co2e", "1.0.0",
                      lambda inputs, params: {"unit": "tCO₂e", "co2e_t": inputs["litres"] * inputs["kg_per_litre"] / 1000})
    registry.register("demo.report", "1.0.0", lambda inputs, params: {"total": inputs["total"]})
    registry.register("demo.scope3", "1.0.0", lambda inputs, params: {"never": "runs"})
    keys = signing.SigningKeys(SIGNING_KEY)
    db = Database(sqlite_url)
    execution_id = _run_execution(db, parse_dag(DAG_DOCUMENT, registry), registry, INPUT_DATA, keys)

    def export(signing_keys: Any = keys) -> dict[str, Any]:
        """Export the bundle as the export command does, and read it back from its JSON text."""
        bundle = audit.build_bundle(db, execution_id, signing_keys=signing_keys)
        return verifier.parse_bundle_json(json.dumps(bundle, ensure_ascii=False, allow_nan=False))

    yield Exported(db, execution_id, keys, export)
    db.dispose()


def test_exported_bundle_verifies(exported: Exported) -> None:
    from orchestrator.provenance import verify_execution

    report = verifier.verify_bundle(exported.export(), [PUBLIC_KEY])
    api_report = verify_execution(exported.db, exported.execution_id, signing_keys=exported.signing_keys).to_dict()

    assert report["valid"] is True, report
    assert report["chain_valid"] is True
    assert api_report["chain_valid"] is True
    assert report["nodes"] == api_report["nodes"]
    assert report["provenance_chain_hash"] == api_report["provenance_chain_hash"]
    assert report["signature"]["status"] == "valid"
    assert api_report["signature"]["status"] == "valid"
    assert node_report(report, "scope3")["status"] == "skipped"


def test_exported_bundle_without_public_key(exported: Exported) -> None:
    # Exported without the signing keys, the bundle names the key id but carries no public key.
    bundle = exported.export(signing_keys=None)

    assert bundle["signature"]["public_key"] is None
    assert verifier.verify_bundle(bundle, [PUBLIC_KEY])["signature"]["status"] == "valid"
    assert verifier.verify_bundle(bundle)["signature"]["status"] == "untrusted-key"


def test_exported_tampered_bundle_matches_api(exported: Exported) -> None:
    from orchestrator.provenance import verify_execution

    exported.db.transaction(lambda conn: conn.execute(text(
        "UPDATE execution_provenance SET status = 'failed' WHERE execution_id = :e AND node_id = 'EF'"),
        {"e": exported.execution_id}))
    report = verifier.verify_bundle(exported.export(), [PUBLIC_KEY])
    api_report = verify_execution(exported.db, exported.execution_id, signing_keys=exported.signing_keys).to_dict()

    assert report["chain_valid"] is False
    assert api_report["chain_valid"] is False
    assert report["nodes"] == api_report["nodes"]
    ef = node_report(report, "EF")
    assert ef["reasons"][0] == "status differs: checkpoint completed, provenance record failed"
    assert ef["reasons"][1].startswith("chain_hash altered: ")
    # The stored chain hashes are unchanged, so the signed chain head still matches.
    assert report["signature"]["status"] == "valid"
    assert api_report["signature"]["status"] == "valid"
