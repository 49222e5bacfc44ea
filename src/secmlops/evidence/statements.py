"""Signed evidence: in-toto Statements v1 in DSSE envelopes, stored as Sigstore bundles.

Every control describes what it looked at as an in-toto Statement whose subjects are the
sha256 digests of those things, and the pipeline signs it with a key (ECDSA P-256) into a
DSSE envelope wrapped in a Sigstore bundle (v0.3, public-key verification material), so
that ``sigstore``/``cosign`` tooling can read it.

A signature counts only while its key is valid: each trusted key may carry a validity window
(from the trust root, :mod:`secmlops.evidence.trust_root`), judged at the statement's own
signed time (:func:`signed_time`), so evidence signed before a key was retired still verifies
and a retired key cannot sign anything new.

Example::

    key = load_private_key(Path("keys/attestor.pem"))   # or KeyDirectory.signer("attestor")
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
from typing import TYPE_CHECKING, Any, TypeAlias

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from secmlops._internal.digests import sha256_bytes
from secmlops.errors import ControlRefused, InputError, RefusalReason

if TYPE_CHECKING:
    from secmlops.evidence.signers import Signer

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
# Trust-model statements (issue 8); their writers live in their own modules.
PREDICATE_STAGE_POINTER = "https://secmlops.dev/attestation/stage-pointer/v1"
PREDICATE_AUDIT_ENTRY = "https://secmlops.dev/attestation/audit-entry/v1"
PREDICATE_REVOCATION = "https://secmlops.dev/attestation/revocation/v1"
PREDICATE_POLICY = "https://secmlops.dev/attestation/policy/v1"


class EvidenceRefusal(RefusalReason):
    """Why :func:`verify_bundle` refused a bundle."""

    MALFORMED_BUNDLE = "malformed_bundle"
    UNTRUSTED_SIGNER = "untrusted_signer"
    BAD_SIGNATURE = "bad_signature"
    NOT_A_STATEMENT = "not_a_statement"
    #: The key was not valid (outside its trust-root window) at the statement's signed time.
    KEY_NOT_VALID = "key_not_valid"


PrivateKey = ec.EllipticCurvePrivateKey
PublicKey = ec.EllipticCurvePublicKey
#: What :func:`sign_statement` signs with: a private key, or a :class:`Signer` (file, KMS).
SigningKey: TypeAlias = "PrivateKey | Signer"

#: How far in the future a statement may be dated (clock skew) when its key has a window.
CLOCK_SKEW = dt.timedelta(minutes=5)


def utc_now() -> str:
    """RFC 3339 UTC timestamp, second precision, as statements use."""
    return format_time(dt.datetime.now(dt.UTC))


def format_time(when: dt.datetime) -> str:
    """``when`` as statements write it: RFC 3339 UTC, second precision."""
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: object) -> dt.datetime | None:
    """An RFC 3339 / ISO 8601 timestamp as an aware UTC datetime; ``None`` if it is not one.

    A time without a zone is taken as UTC; fractions beyond microseconds (Trivy writes
    nanoseconds) are cut.
    """
    if isinstance(value, dt.datetime):
        when = value
    elif isinstance(value, str) and value.strip():
        text = value.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        head, dot, rest = text.partition(".")
        if dot:
            digits = len(rest) - len(rest.lstrip("0123456789"))
            text = f"{head}.{rest[: min(digits, 6)]}{rest[digits:]}"
        try:
            when = dt.datetime.fromisoformat(text)
        except ValueError:
            return None
    else:
        return None
    return when.replace(tzinfo=dt.UTC) if when.tzinfo is None else when.astimezone(dt.UTC)


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


#: Where each predicate type records when it was signed: candidate paths into the
#: predicate, first present wins. Types not listed here may carry a top-level ``signedAt``.
_SIGNED_TIME_FIELDS: dict[str, tuple[tuple[str, ...], ...]] = {
    PREDICATE_SLSA_VSA: (("timeVerified",),),
    PREDICATE_APPROVAL: (("decidedAt",),),
    PREDICATE_SLSA_PROVENANCE: (
        ("runDetails", "metadata", "finishedOn"),
        ("runDetails", "metadata", "startedOn"),
    ),
    PREDICATE_RELEASE: (("createdAt",),),
    PREDICATE_DATA_PULL: (("pulledAt",),),
    PREDICATE_TEST_RESULT: (("summary", "validatedAt"),),
    PREDICATE_VULNS: (
        ("metadata", "scanFinishedOn"),
        ("verdict", "evaluatedOn"),
        ("metadata", "scanStartedOn"),
    ),
    PREDICATE_SMOKE_TEST: (("testedAt",),),
    # model-scan/v1 records no time: the gate judges it at its release manifest's time.
    PREDICATE_MODEL_SCAN: (),
    PREDICATE_STAGE_POINTER: (("promotedAt",),),
    PREDICATE_AUDIT_ENTRY: (("at",),),
    PREDICATE_REVOCATION: (("revokedAt",),),
    PREDICATE_POLICY: (("signedAt",),),
}
_GENERIC_SIGNED_TIME = (("signedAt",),)


def signed_time(statement: Mapping[str, Any]) -> dt.datetime | None:
    """When the statement says it was signed (its predicate type's time field), UTC.

    ``None`` when it records no (readable) time: then its key must be valid when it is
    verified (or at a time the caller vouches for, see :func:`verify_bundle`'s ``at``). The
    time is the signer's own claim: a window bounds what a key may sign *after* retirement
    only for signers that tell the truth; a stolen key is revoked, not retired.
    """
    predicate = statement.get("predicate")
    if not isinstance(predicate, Mapping):
        return None
    paths = _SIGNED_TIME_FIELDS.get(str(statement.get("predicateType")), _GENERIC_SIGNED_TIME)
    for path in paths:
        value: Any = predicate
        for part in path:
            value = value.get(part) if isinstance(value, Mapping) else None
        when = parse_time(value)
        if when is not None:
            return when
    return None


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


def load_private_key(path: Path, *, subject: str | None = None) -> PrivateKey:
    """Load a PEM ECDSA P-256 private key, unencrypted or passphrase-encrypted (PKCS#8).

    The passphrase of an encrypted key comes from ``SECMLOPS_<SUBJECT>_KEY_PASSPHRASE[_FILE]``
    (``subject``: a role or ``approver:NAME``), then ``SECMLOPS_KEY_PASSPHRASE[_FILE]``, then
    a prompt when stdin is a terminal. ``InputError`` naming the file otherwise (a wrong
    passphrase included).
    """
    from secmlops.evidence.signers import load_pem_private_key

    return load_pem_private_key(path, subject=subject)


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


@dataclass(frozen=True)
class KeyWindow:
    """When a key's signatures count: ``not_before`` <= signed time < ``not_after`` (a key
    retired at ``not_after`` signs nothing dated from then on)."""

    not_before: dt.datetime | None = None
    not_after: dt.datetime | None = None

    def __bool__(self) -> bool:
        return self.not_before is not None or self.not_after is not None

    def contains(self, when: dt.datetime) -> bool:
        if self.not_before is not None and when < self.not_before:
            return False
        return self.not_after is None or when < self.not_after

    def describe(self) -> str:
        start = format_time(self.not_before) if self.not_before else "always"
        end = format_time(self.not_after) if self.not_after else "no end"
        return f"{start} .. {end}"


@dataclass
class TrustedKeys:
    """Public keys whose signatures count, by key id, each with a name for messages and
    (from the trust root) the window in which its signatures count."""

    keys: dict[str, tuple[str, PublicKey]] = field(default_factory=dict)
    windows: dict[str, KeyWindow] = field(default_factory=dict)

    @classmethod
    def from_files(cls, paths: Iterable[Path]) -> TrustedKeys:
        trusted = cls()
        for path in paths:
            trusted.add(path.stem, load_public_key(path))
        return trusted

    def add(self, name: str, key: PublicKey, window: KeyWindow | None = None) -> None:
        kid = key_id(key)
        self.keys[kid] = (name, key)
        if window:
            self.windows[kid] = window
        else:
            self.windows.pop(kid, None)

    def extend(self, other: TrustedKeys, *, name: str | None = None) -> None:
        """Add every key of ``other`` with its window (renamed ``name`` when given)."""
        for kid, (own, key) in other.keys.items():
            self.keys[kid] = (name or own, key)
            if kid in other.windows:
                self.windows[kid] = other.windows[kid]
            else:
                self.windows.pop(kid, None)

    def window(self, kid: str) -> KeyWindow:
        """The window of key ``kid`` (an empty one: no bounds)."""
        return self.windows.get(kid, KeyWindow())

    def __bool__(self) -> bool:
        return bool(self.keys)


# --- DSSE / bundles ---------------------------------------------------------------------


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding."""
    t = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


def sign_statement(statement: Mapping[str, Any], key: SigningKey) -> dict[str, Any]:
    """Sign a statement into a Sigstore bundle (v0.3) holding a DSSE envelope.

    ``key``: a private key, or any :class:`~secmlops.evidence.signers.Signer` (an encrypted
    PEM file, an AWS KMS key; see :meth:`KeyDirectory.signer`).
    """
    payload = json.dumps(statement, sort_keys=True, separators=(",", ":")).encode()
    message = pae(PAYLOAD_TYPE, payload)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        signature, hint = key.sign(message, ec.ECDSA(hashes.SHA256())), key_id(key.public_key())
    else:
        signature, hint = key.sign(message), key.key_id
    return {
        "mediaType": BUNDLE_MEDIA_TYPE,
        "verificationMaterial": {
            "publicKey": {"hint": hint},
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
    bundle: Mapping[str, Any],
    trusted: TrustedKeys,
    *,
    where: str = "bundle",
    at: dt.datetime | None = None,
) -> VerifiedStatement:
    """Verify a bundle's DSSE signature against trusted keys and return its statement.

    Raises ``ControlRefused`` for anything that does not verify: unknown signer, bad
    signature, wrong payload type, malformed envelope, or a key outside its validity window
    at the statement's :func:`signed_time` (``KEY_NOT_VALID``). A statement that records no
    signed time is judged at ``at`` (a time the caller vouches for, e.g. the signed time of
    the release manifest that names this bundle by digest), else now. An empty trust set is
    an error.
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
    _check_window(statement, trusted.window(hint), name, hint, where=where, at=at)
    return VerifiedStatement(statement=statement, signer=name, key_id=hint)


def _check_window(
    statement: Mapping[str, Any],
    window: KeyWindow,
    name: str,
    kid: str,
    *,
    where: str,
    at: dt.datetime | None,
) -> None:
    """``KEY_NOT_VALID`` unless the key was in its window when the statement was signed."""
    if not window:
        return
    now = dt.datetime.now(dt.UTC)
    claimed = signed_time(statement)
    when = claimed or at or now
    what = "signed" if claimed else ("vouched for" if at else "verified (no signed time)")
    if claimed is not None and claimed > now + CLOCK_SKEW:
        raise ControlRefused(
            f"evidence signed by {name} key {kid[:16]}… is dated in the future "
            f"({format_time(claimed)})",
            where=where,
            reason=EvidenceRefusal.KEY_NOT_VALID,
        )
    if not window.contains(when):
        raise ControlRefused(
            f"{name} key {kid[:16]}… was not valid when this evidence was {what} "
            f"({format_time(when)}; key valid {window.describe()})",
            where=where,
            fix="sign with a key the trust root accepts now (`secmlops trust show`)",
            reason=EvidenceRefusal.KEY_NOT_VALID,
        )
