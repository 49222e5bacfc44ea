"""Signed evidence: in-toto Statements v1 in DSSE envelopes, stored as Sigstore bundles.

Every control describes what it looked at as an in-toto Statement whose subjects are the
sha256 digests of those things, and the pipeline signs it with a key (ECDSA P-256) into a
DSSE envelope wrapped in a Sigstore bundle (v0.3, public-key verification material), so
that ``sigstore``/``cosign`` tooling can read it.

Example::

    key = load_private_key(Path("keys/attestor.pem"))
    st = make_statement([Subject("model", digest)], PREDICATE_SLSA_PROVENANCE, {...})
    bundle = sign_statement(st, key)
    statement = verify_bundle(bundle, TrustedKeys.from_files([Path("keys/attestor.pub")]))
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from secmlops._internal.digests import sha256_bytes
from secmlops.errors import ControlRefused, InputError, RefusalReason

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"

PREDICATE_SLSA_PROVENANCE = "https://slsa.dev/provenance/v1"
PREDICATE_SLSA_VSA = "https://slsa.dev/verification_summary/v1"
PREDICATE_VULNS = "https://in-toto.io/attestation/vulns/v0.1"
PREDICATE_TEST_RESULT = "https://in-toto.io/attestation/test-result/v0.1"
# Our own predicates, for facts no standard predicate describes.
PREDICATE_DATA_PULL = "https://secmlops.dev/attestation/data-pull/v1"
PREDICATE_MODEL_SCAN = "https://secmlops.dev/attestation/model-scan/v1"
PREDICATE_APPROVAL = "https://secmlops.dev/attestation/approval/v1"
PREDICATE_SMOKE_TEST = "https://secmlops.dev/attestation/smoke-test/v1"
PREDICATE_RELEASE = "https://secmlops.dev/attestation/release/v1"


class EvidenceRefusal(RefusalReason):
    """Why :func:`verify_bundle` refused a bundle."""

    MALFORMED_BUNDLE = "malformed_bundle"
    UNTRUSTED_SIGNER = "untrusted_signer"
    BAD_SIGNATURE = "bad_signature"
    NOT_A_STATEMENT = "not_a_statement"


PrivateKey = ec.EllipticCurvePrivateKey
PublicKey = ec.EllipticCurvePublicKey


def utc_now() -> str:
    """RFC 3339 UTC timestamp, second precision, as statements use."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Subject:
    """An in-toto subject: a name and the sha256 of its bytes."""

    name: str
    sha256: str

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "digest": {"sha256": self.sha256}}


def make_statement(
    subjects: Iterable[Subject], predicate_type: str, predicate: Mapping[str, Any]
) -> dict[str, Any]:
    """Build an in-toto Statement v1. At least one subject is required."""
    subject_list = [s.to_json() for s in subjects]
    if not subject_list:
        raise InputError("an in-toto statement needs at least one subject", where=predicate_type)
    for s in subject_list:
        digest = s["digest"]["sha256"]
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise InputError(
                f"subject {s['name']!r} has no valid sha256 digest", where=predicate_type
            )
    return {
        "_type": STATEMENT_TYPE,
        "subject": subject_list,
        "predicateType": predicate_type,
        "predicate": dict(predicate),
    }


def has_subject(statement: Mapping[str, Any], digest: str, name: str | None = None) -> bool:
    """Does the statement name ``digest`` (under subject ``name``, when given)?"""
    return any(
        isinstance(s, dict)
        and (s.get("digest") or {}).get("sha256") == digest
        and (name is None or s.get("name") == name)
        for s in statement.get("subject", [])
    )


# --- keys -------------------------------------------------------------------------------


def generate_keypair(private_path: Path, public_path: Path) -> None:
    """Write a new ECDSA P-256 key pair (private key mode 0600). Refuses to overwrite."""
    if private_path.exists() or public_path.exists():
        raise InputError(
            f"refusing to overwrite existing key {private_path}",
            where=str(private_path),
            fix="delete it first if you really want a new key",
        )
    private_path.parent.mkdir(parents=True, exist_ok=True)
    public_path.parent.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    public_path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def load_private_key(path: Path) -> PrivateKey:
    """Load an unencrypted PEM ECDSA private key; ``InputError`` naming the file otherwise."""
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except FileNotFoundError as exc:
        raise InputError(f"private key {path} does not exist", where=str(path)) from exc
    except (ValueError, TypeError) as exc:
        raise InputError(
            f"{path} is not an unencrypted PEM private key: {exc}", where=str(path)
        ) from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise InputError(f"{path} is not an elliptic-curve key", where=str(path))
    return key


def load_public_key(path: Path) -> PublicKey:
    """Load a PEM ECDSA public key; ``InputError`` naming the file otherwise."""
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except FileNotFoundError as exc:
        raise InputError(f"public key {path} does not exist", where=str(path)) from exc
    except ValueError as exc:
        raise InputError(f"{path} is not a PEM public key: {exc}", where=str(path)) from exc
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise InputError(f"{path} is not an elliptic-curve public key", where=str(path))
    return key


def key_id(key: PublicKey) -> str:
    """Our key id (bundle hint): sha256 of the DER SubjectPublicKeyInfo."""
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return sha256_bytes(der)


@dataclass
class TrustedKeys:
    """Public keys whose signatures count, by key id, each with a name for messages."""

    keys: dict[str, tuple[str, PublicKey]] = field(default_factory=dict)

    @classmethod
    def from_files(cls, paths: Iterable[Path]) -> TrustedKeys:
        trusted = cls()
        for path in paths:
            trusted.add(path.stem, load_public_key(path))
        return trusted

    def add(self, name: str, key: PublicKey) -> None:
        self.keys[key_id(key)] = (name, key)

    def __bool__(self) -> bool:
        return bool(self.keys)


# --- DSSE / bundles ---------------------------------------------------------------------


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding."""
    t = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


def sign_statement(statement: Mapping[str, Any], key: PrivateKey) -> dict[str, Any]:
    """Sign a statement into a Sigstore bundle (v0.3) holding a DSSE envelope."""
    payload = json.dumps(statement, sort_keys=True, separators=(",", ":")).encode()
    signature = key.sign(pae(PAYLOAD_TYPE, payload), ec.ECDSA(hashes.SHA256()))
    return {
        "mediaType": BUNDLE_MEDIA_TYPE,
        "verificationMaterial": {
            "publicKey": {"hint": key_id(key.public_key())},
            "tlogEntries": [],
        },
        "dsseEnvelope": {
            "payload": base64.b64encode(payload).decode(),
            "payloadType": PAYLOAD_TYPE,
            "signatures": [{"sig": base64.b64encode(signature).decode(), "keyid": ""}],
        },
    }


@dataclass(frozen=True)
class VerifiedStatement:
    """A statement whose signature verified, and who signed it."""

    statement: dict[str, Any]
    signer: str
    key_id: str

    @property
    def predicate(self) -> dict[str, Any]:
        pred: dict[str, Any] = self.statement["predicate"]
        return pred

    @property
    def predicate_type(self) -> str:
        return str(self.statement["predicateType"])


def verify_bundle(
    bundle: Mapping[str, Any], trusted: TrustedKeys, *, where: str = "bundle"
) -> VerifiedStatement:
    """Verify a bundle's DSSE signature against trusted keys and return its statement.

    Raises ``ControlRefused`` for anything that does not verify: unknown signer, bad
    signature, wrong payload type, malformed envelope. An empty trust set is an error.
    """
    if not trusted:
        raise InputError("no trusted keys configured", where=where, fix="configure a trust policy")
    try:
        envelope = bundle["dsseEnvelope"]
        hint = bundle["verificationMaterial"]["publicKey"]["hint"]
        payload = base64.b64decode(envelope["payload"], validate=True)
        signatures = envelope["signatures"]
        payload_type = envelope["payloadType"]
    except (KeyError, TypeError, ValueError) as exc:
        raise ControlRefused(
            f"malformed evidence bundle: {exc}",
            where=where,
            reason=EvidenceRefusal.MALFORMED_BUNDLE,
        ) from exc
    if not isinstance(hint, str) or not isinstance(signatures, list) or not signatures:
        raise ControlRefused(
            "malformed evidence bundle: bad key hint or signatures",
            where=where,
            reason=EvidenceRefusal.MALFORMED_BUNDLE,
        )
    if bundle.get("mediaType") != BUNDLE_MEDIA_TYPE:
        raise ControlRefused(
            f"unexpected bundle media type {bundle.get('mediaType')!r}",
            where=where,
            reason=EvidenceRefusal.MALFORMED_BUNDLE,
        )
    if payload_type != PAYLOAD_TYPE:
        raise ControlRefused(
            f"unexpected DSSE payload type {payload_type!r}",
            where=where,
            reason=EvidenceRefusal.MALFORMED_BUNDLE,
        )
    if hint not in trusted.keys:
        raise ControlRefused(
            f"evidence was signed by an untrusted key {hint[:16]}…",
            where=where,
            fix="check the trust policy lists the key that signed this evidence",
            reason=EvidenceRefusal.UNTRUSTED_SIGNER,
        )
    name, key = trusted.keys[hint]
    message = pae(payload_type, payload)
    for sig in signatures:
        try:
            key.verify(base64.b64decode(sig["sig"]), message, ec.ECDSA(hashes.SHA256()))
        except (InvalidSignature, KeyError, TypeError, ValueError, AttributeError):
            continue
        break
    else:
        raise ControlRefused(
            "evidence signature does not verify (tampered?)",
            where=where,
            reason=EvidenceRefusal.BAD_SIGNATURE,
        )
    try:
        statement = json.loads(payload)
    except ValueError as exc:
        raise ControlRefused(
            f"signed payload is not JSON: {exc}",
            where=where,
            reason=EvidenceRefusal.NOT_A_STATEMENT,
        ) from exc
    if (
        not isinstance(statement, dict)
        or statement.get("_type") != STATEMENT_TYPE
        or not isinstance(statement.get("subject"), list)
        or not isinstance(statement.get("predicate"), dict)
        or not isinstance(statement.get("predicateType"), str)
    ):
        raise ControlRefused(
            "signed payload is not an in-toto Statement v1",
            where=where,
            reason=EvidenceRefusal.NOT_A_STATEMENT,
        )
    return VerifiedStatement(statement=statement, signer=name, key_id=hint)
