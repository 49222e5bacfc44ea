"""The trust root, signers and key validity windows (issue 8: keys held apart, rotation).

Before issue 8 each role trusted exactly the one ``<role>.pub`` in the key directory, every
approver's key sat unencrypted next to them, encrypted PEM keys were refused, and a key had
no validity window.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from secmlops.errors import ControlRefused, InputError
from secmlops.evidence.keys import KeyDirectory
from secmlops.evidence.signers import (
    FileSigner,
    parse_signer_spec,
    write_private_key,
)
from secmlops.evidence.statements import (
    PREDICATE_APPROVAL,
    PREDICATE_AUDIT_ENTRY,
    PREDICATE_DATA_PULL,
    PREDICATE_MODEL_SCAN,
    PREDICATE_POLICY,
    PREDICATE_RELEASE,
    PREDICATE_REVOCATION,
    PREDICATE_SLSA_PROVENANCE,
    PREDICATE_SLSA_VSA,
    PREDICATE_SMOKE_TEST,
    PREDICATE_STAGE_POINTER,
    PREDICATE_TEST_RESULT,
    PREDICATE_VULNS,
    EvidenceRefusal,
    KeyWindow,
    Subject,
    TrustedKeys,
    key_id,
    load_private_key,
    make_statement,
    sign_statement,
    signed_time,
    verify_bundle,
)
from secmlops.evidence.trust_root import TrustRoot
from tests.unit import test_predicates as writers

UTC = dt.UTC
T = dt.datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def _at(days: float) -> dt.datetime:
    return T + dt.timedelta(days=days)


def _statement(predicate_type: str, predicate: dict[str, Any]) -> dict[str, Any]:
    return make_statement([Subject("model", "a" * 64)], predicate_type, predicate)


# --- signed time ---------------------------------------------------------------------------


def test_signed_time_knows_every_predicate_types_time_field(tmp_path: Path) -> None:
    stamp = "2025-03-01T12:00:00Z"
    cases: dict[str, dict[str, Any]] = {
        PREDICATE_SLSA_VSA: {"timeVerified": stamp},
        PREDICATE_APPROVAL: {"decidedAt": stamp},
        PREDICATE_SLSA_PROVENANCE: {"runDetails": {"metadata": {"finishedOn": stamp}}},
        PREDICATE_RELEASE: {"createdAt": stamp},
        PREDICATE_DATA_PULL: {"pulledAt": stamp},
        PREDICATE_TEST_RESULT: {"summary": {"validatedAt": stamp}},
        PREDICATE_VULNS: {"metadata": {"scanFinishedOn": "2025-03-01T12:00:00.123456789Z"}},
        PREDICATE_SMOKE_TEST: {"testedAt": "2025-03-01T12:00:00+00:00"},
        PREDICATE_STAGE_POINTER: {"promotedAt": stamp},
        PREDICATE_AUDIT_ENTRY: {"at": stamp},
        PREDICATE_REVOCATION: {"revokedAt": stamp},
        PREDICATE_POLICY: {"signedAt": stamp},
        "https://example.org/new-type/v1": {"signedAt": stamp},
    }
    for predicate_type, predicate in cases.items():
        when = signed_time(_statement(predicate_type, predicate))
        assert when is not None and when.replace(microsecond=0) == T, predicate_type
    # Nothing to go by: the key must be valid now.
    assert signed_time(_statement(PREDICATE_MODEL_SCAN, {"signedAt": stamp})) is None
    assert signed_time(_statement(PREDICATE_SLSA_VSA, {"timeVerified": "yesterday"})) is None
    # The writers' real statements carry a time where their type has one.
    for statement in (
        writers._data_pull(),
        writers._validation(),
        writers._image_scan(),
        writers._provenance(tmp_path / "w"),
    ):
        assert signed_time(statement) is not None, statement["predicateType"]


# --- windows -------------------------------------------------------------------------------


def _key(tmp_path: Path, name: str) -> ec.EllipticCurvePrivateKey:
    keys = KeyDirectory(tmp_path / name)
    keys.ensure()
    return load_private_key(keys.private("gate"))


def _vsa(when: dt.datetime) -> dict[str, Any]:
    return _statement(PREDICATE_SLSA_VSA, {"timeVerified": when.strftime("%Y-%m-%dT%H:%M:%SZ")})


def test_a_key_counts_only_inside_its_window_at_the_signed_time(tmp_path: Path) -> None:
    key = _key(tmp_path, "k")
    trusted = TrustedKeys()
    trusted.add("gate", key.public_key(), KeyWindow(_at(0), _at(10)))
    assert verify_bundle(sign_statement(_vsa(_at(5)), key), trusted).signer == "gate"
    for when in (_at(-1), _at(11)):
        with pytest.raises(ControlRefused, match="not valid when this evidence was signed") as err:
            verify_bundle(sign_statement(_vsa(when), key), trusted)
        assert err.value.reason is EvidenceRefusal.KEY_NOT_VALID
    # Dated in the future: never inside a window.
    future = dt.datetime.now(UTC) + dt.timedelta(days=1)
    open_ended = TrustedKeys()
    open_ended.add("gate", key.public_key(), KeyWindow(_at(0), None))
    with pytest.raises(ControlRefused, match="dated in the future"):
        verify_bundle(sign_statement(_vsa(future), key), open_ended)


def test_a_statement_without_a_signed_time_is_judged_now_or_at_a_vouched_time(
    tmp_path: Path,
) -> None:
    key = _key(tmp_path, "k")
    retired = TrustedKeys()
    retired.add("attestor", key.public_key(), KeyWindow(None, _at(10)))
    scan = sign_statement(_statement(PREDICATE_MODEL_SCAN, {"verdict": "pass"}), key)
    with pytest.raises(ControlRefused, match="no signed time") as err:
        verify_bundle(scan, retired)
    assert err.value.reason is EvidenceRefusal.KEY_NOT_VALID
    assert verify_bundle(scan, retired, at=_at(1)).signer == "attestor"


def test_extend_keeps_windows() -> None:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    source = TrustedKeys()
    source.add("alice", key, KeyWindow(None, _at(1)))
    merged = TrustedKeys()
    merged.extend(source, name="approver")
    assert merged.keys[key_id(key)][0] == "approver"
    assert merged.window(key_id(key)).not_after == _at(1)


# --- the trust root ------------------------------------------------------------------------


def test_the_demo_writes_a_trust_root_with_every_key_marked_demo(tmp_path: Path) -> None:
    keys = KeyDirectory(tmp_path / "keys")
    keys.ensure(approvers=("alice",))
    root = keys.trust_root()
    assert root.subjects() == [
        "policy-owner",
        "attestor",
        "model-signer",
        "gate",
        "approver:alice",
    ]
    assert all(e.demo for e in root.entries)
    assert keys.demo_key_ids() == frozenset(e.key_id for e in root.entries)
    gate_kid = key_id(load_private_key(keys.private("gate")).public_key())
    assert root.is_demo_key(gate_kid)
    assert keys.role_key_ids()[gate_kid] == "gate"
    # Idempotent; a later approver is added.
    before = keys.trust_root_file.read_text()
    keys.ensure(approvers=("alice",))
    assert keys.trust_root_file.read_text() == before
    keys.ensure(approvers=("bob",))
    assert "approver:bob" in keys.trust_root().subjects()
    assert keys.trusted_approvers(("alice", "bob", "carol")).keys.keys() == {
        e.key_id for e in keys.trust_root().entries if e.subject.startswith("approver:")
    }


def test_one_key_for_two_duties_is_refused(tmp_path: Path) -> None:
    keys = KeyDirectory(tmp_path / "keys")
    keys.ensure()
    root = keys.trust_root()
    gate = load_private_key(keys.private("gate")).public_key()
    with pytest.raises(InputError, match="role gate and for approver bob"):
        root.with_key("approver:bob", gate)
    with pytest.raises(InputError, match="role gate and for role attestor"):
        root.with_key("attestor", gate)
    with pytest.raises(InputError, match="role gate and for role gate twice"):
        root.with_key("gate", gate)
    # Also when the file is edited by hand.
    text = keys.trust_root_file.read_text()
    gate_entry = text.split("  gate:\n", 1)[1].split("approvers:", 1)[0]
    keys.trust_root_file.write_text(
        text.replace("approvers: {}\n", "approvers:\n  mallory:\n" + gate_entry)
    )
    with pytest.raises(InputError, match="role gate and for approver mallory"):
        keys.trusted("gate")


def test_a_site_trust_root_is_never_generated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = tmp_path / "site-trust-root.yaml"
    monkeypatch.setenv("SECMLOPS_TRUST_ROOT", str(site))
    keys = KeyDirectory(tmp_path / "keys")
    keys.ensure()
    assert not site.exists() and not (tmp_path / "keys" / "trust-root.yaml").exists()
    with pytest.raises(InputError, match="no trust root") as err:
        keys.trusted("gate")
    assert err.value.fix and "SECMLOPS_TRUST_ROOT" in err.value.fix


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.replace("version: 1", "version: 2"), "version: 1"),
        (lambda t: t.replace("roles:", "roles:\n  janitor: []", 1), "unknown role"),
        (lambda t: t.replace("demo: true", "demo: maybe", 1), "demo must be"),
        (lambda t: t.replace("key_id: ", "key_id: 00", 1), "is not the id"),
        (lambda t: t.replace("demo: true", "demo: true\n    colour: red", 1), "unknown fields"),
        (lambda t: t.replace("demo: true", "not_after: someday\n    demo: true", 1), "ISO 8601"),
        (lambda t: "", "empty"),
    ],
)
def test_a_malformed_trust_root_is_bad_input(tmp_path: Path, edit: Any, message: str) -> None:
    keys = KeyDirectory(tmp_path / "keys")
    keys.ensure()
    keys.trust_root_file.write_text(edit(keys.trust_root_file.read_text()))
    with pytest.raises(InputError, match=message):
        TrustRoot.load(keys.trust_root_file)


def test_add_retire_and_reload_round_trip(tmp_path: Path) -> None:
    keys = KeyDirectory(tmp_path / "keys")
    keys.ensure()
    new = ec.generate_private_key(ec.SECP256R1()).public_key()
    old_kid = keys.trust_root().trusted("gate").keys.copy().popitem()[0]
    root = (
        keys.trust_root()
        .with_key("gate", new, not_before=_at(0))
        .retire("gate", old_kid[:12], at=_at(1))
    )
    root.save()
    again = TrustRoot.load(keys.trust_root_file)
    windows = {e.key_id: e.window for e in again.entries_for("gate")}
    assert windows == {old_kid: KeyWindow(None, _at(1)), key_id(new): KeyWindow(_at(0), None)}
    assert not again.is_demo_key(key_id(new))
    with pytest.raises(InputError, match="no single key"):
        again.retire("gate", "abc", at=_at(2))


# --- signers -------------------------------------------------------------------------------


def test_signer_specs() -> None:
    assert str(parse_signer_spec("kms:alias/secmlops-gate")) == "kms:alias/secmlops-gate"
    arn = "arn:aws:kms:eu-west-1:111122223333:key/1234"
    assert parse_signer_spec(f"kms:{arn}").target == arn
    assert parse_signer_spec("file:/k/gate.pem") == parse_signer_spec("/k/gate.pem")
    assert parse_signer_spec("keys/gate.pem").kind == "file"
    for bad in ("vault:secret/gate", "kms:", "file:"):
        with pytest.raises(InputError):
            parse_signer_spec(bad, where="SECMLOPS_GATE_SIGNER")


def test_encrypted_keys_load_with_a_passphrase_from_env_or_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    path = tmp_path / "gate.pem"
    write_private_key(path, key, b"correct horse")
    monkeypatch.setattr("sys.stdin", None)  # no terminal to ask on
    with pytest.raises(InputError, match="encrypted and no passphrase") as err:
        load_private_key(path, subject="gate")
    assert err.value.fix and "SECMLOPS_GATE_KEY_PASSPHRASE" in err.value.fix
    monkeypatch.setenv("SECMLOPS_KEY_PASSPHRASE", "correct horse")
    assert key_id(load_private_key(path).public_key()) == key_id(key.public_key())
    # The role's own passphrase comes first.
    monkeypatch.setenv("SECMLOPS_GATE_KEY_PASSPHRASE", "wrong")
    with pytest.raises(InputError, match=f"wrong passphrase for {path}"):
        load_private_key(path, subject="gate")
    monkeypatch.delenv("SECMLOPS_GATE_KEY_PASSPHRASE")
    secret = tmp_path / "passphrase.txt"
    secret.write_text("correct horse\n")
    monkeypatch.delenv("SECMLOPS_KEY_PASSPHRASE")
    monkeypatch.setenv("SECMLOPS_APPROVER_ALICE_KEY_PASSPHRASE_FILE", str(secret))
    signer = FileSigner.load(path, subject="approver:alice")
    assert signer.key_id == key_id(key.public_key())


def test_the_signer_must_be_the_trust_roots_key_for_its_role(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = KeyDirectory(tmp_path / "keys")
    keys.ensure(approvers=("alice",))
    assert keys.signer("gate").key_id == key_id(load_private_key(keys.private("gate")).public_key())
    assert keys.approver_signer("alice").description.endswith("approvers/alice.pem")
    monkeypatch.setenv("SECMLOPS_GATE_SIGNER", f"file:{keys.private('attestor')}")
    with pytest.raises(InputError, match="is listed for role attestor"):
        keys.signer("gate")
    stray = tmp_path / "stray.pem"
    write_private_key(stray, ec.generate_private_key(ec.SECP256R1()), None)
    monkeypatch.setenv("SECMLOPS_GATE_SIGNER", str(stray))
    with pytest.raises(InputError, match="is not listed"):
        keys.signer("gate")
    monkeypatch.delenv("SECMLOPS_GATE_SIGNER")
    gate_kid = keys.signer("gate").key_id
    keys.trust_root().retire("gate", gate_kid, at=_at(0)).save()
    with pytest.raises(InputError, match="is not valid now"):
        keys.signer("gate")


def test_kms_signs_long_messages_as_a_digest_and_checks_every_signature() -> None:
    """AWS KMS takes at most 4096 bytes RAW; a VSA is longer, so its SHA-256 goes as a DIGEST
    (moto_server hashes DIGEST messages again, so this path is checked against the request
    botocore would send; the RAW path runs against moto_server in
    tests/integration/test_attack_key_custody.py)."""
    import hashlib

    import boto3
    from botocore.stub import Stubber
    from cryptography.hazmat.primitives import hashes, serialization

    from secmlops.errors import ToolError
    from secmlops.evidence.signers import KmsSigner

    key = ec.generate_private_key(ec.SECP256R1())
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    client = boto3.client(
        "kms", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x"
    )
    data = b"x" * 5000
    with Stubber(client) as stub:
        stub.add_response(
            "get_public_key",
            {
                "KeyId": "arn:aws:kms:us-east-1:1:key/k",
                "PublicKey": der,
                "KeySpec": "ECC_NIST_P256",
                "KeyUsage": "SIGN_VERIFY",
                "SigningAlgorithms": ["ECDSA_SHA_256"],
            },
            {"KeyId": "alias/gate"},
        )
        for signature in (
            key.sign(data, ec.ECDSA(hashes.SHA256())),
            key.sign(b"other", ec.ECDSA(hashes.SHA256())),
        ):
            stub.add_response(
                "sign",
                {"KeyId": "k", "Signature": signature, "SigningAlgorithm": "ECDSA_SHA_256"},
                {
                    "KeyId": "alias/gate",
                    "Message": hashlib.sha256(data).digest(),
                    "MessageType": "DIGEST",
                    "SigningAlgorithm": "ECDSA_SHA_256",
                },
            )
        signer = KmsSigner("alias/gate", client=client)
        assert signer.key_id == key_id(key.public_key())
        key.public_key().verify(signer.sign(data), data, ec.ECDSA(hashes.SHA256()))
        with pytest.raises(ToolError, match="does not verify"):
            signer.sign(data)
