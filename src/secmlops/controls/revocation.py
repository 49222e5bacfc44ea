"""Signed revocations: withdraw an approval, a whole model version, or a key.

A revocation is an in-toto statement (:data:`PREDICATE_REVOCATION`,
:class:`~secmlops.evidence.predicates.RevocationPredicate`) signed by an allowed approver
with their own key, or by the policy owner (role ``policy-owner``). It only ever takes trust
away, and the deploy gate applies every valid one it finds:

- ``approval``: that approval (matched by its signed statement, wherever it is copied) no
  longer counts. An approver may revoke approvals of the stages the policy lets them approve.
- ``version``: the version (and any version with the same model digest) is refused for
  every stage, and ``rollback`` skips it. Any allowed approver may revoke a version.
- ``key``: anything the key signed at or after ``effectiveFrom`` (by the statement's own
  signed time) is refused. The policy owner may revoke any key; an approver only their own.

Revocations live in the registry, create-only, under ``<model>/revocations/``. Whoever can
write the registry can add garbage there (ignored: it does not verify) or delete a
revocation (the registry's Object Lock is what stops that). A revocation whose signer is not
allowed under the policy in force, or whose signing key was itself revoked before it signed,
is ignored by the gate and refused by ``secmlops revoke``.

Example::

    revocation = revoke(models, kind="version", target="v3", reason="trained on bad data",
                        private_key=Path("keys/approvers/bob.pem"), name="bob",
                        keys=keys, policy=policy.approval)
    revocations = load_revocations(models, keys=keys, policy=policy.approval)
    revocations.of_version("v3")  # -> revocation
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from secmlops._internal.digests import sha256_bytes
from secmlops.catalogue import control
from secmlops.controls.approval import STAGES, ApprovalPolicy
from secmlops.errors import ControlRefused, InputError, RefusalReason
from secmlops.evidence.keys import KeyDirectory, check_approver_name
from secmlops.evidence.predicates import (
    ApprovalPredicate,
    RevocationPredicate,
    RevokedApproval,
    RevokedKey,
    Sha256Ref,
    dump_predicate,
)
from secmlops.evidence.statements import (
    PREDICATE_APPROVAL,
    PrivateKey,
    SigningKey,
    Subject,
    TrustedKeys,
    VerifiedStatement,
    has_subject,
    key_id,
    load_private_key,
    make_statement,
    parse_time,
    sign_statement,
    utc_now,
    verify_bundle,
)
from secmlops.evidence.statements import signed_time as statement_signed_time
from secmlops.registry.models import (
    ModelRegistry,
    canonical_json,
    check_version,
    parse_json_object,
    parse_json_value,
    stamped,
)

PREDICATE_REVOCATION = "https://secmlops.dev/attestation/revocation/v1"
#: The trust-root role of the policy owner, who may revoke anything.
OWNER_ROLE = "policy-owner"
RevocationKind = Literal["approval", "version", "key"]
KINDS: tuple[RevocationKind, ...] = ("approval", "version", "key")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class RevocationRefusal(RefusalReason):
    """Why a revocation does not count (``secmlops revoke`` refuses it; the gate ignores it)."""

    MALFORMED_REVOCATION = "malformed_revocation"
    """Not a signed revocation statement, or its fields do not fit its kind."""
    UNTRUSTED_SIGNER = "untrusted_signer"
    """Not signed by the policy owner's key nor by the key of the approver it names."""
    SIGNER_NOT_ALLOWED = "signer_not_allowed"
    """The approver may not revoke this (not an approver of the stage; not their own key)."""
    NOT_THIS_MODEL = "not_this_model"
    """The revocation is about another model than the registry folder it is stored in."""
    SIGNER_KEY_REVOKED = "signer_key_revoked"
    """The key that signed the revocation was itself revoked before it signed."""


def _time(text: object) -> dt.datetime | None:
    """An RFC 3339 time in UTC (no zone: UTC); ``None`` for anything else (unknown time)."""
    return parse_time(text) if isinstance(text, str) else None


def signed_time(statement: Mapping[str, Any]) -> dt.datetime | None:
    """The time a statement's signer says it was made (``None``: it records none we know):
    a revocation's ``revokedAt``, else :func:`secmlops.evidence.statements.signed_time`.

    It is the signer's claim: a stolen key can backdate. Key revocations bound what a key
    signs from then on; evidence it signed before that time still counts.
    """
    if statement.get("predicateType") == PREDICATE_REVOCATION:
        return _time(_predicate_field(statement, "revokedAt"))
    return statement_signed_time(statement)


def _predicate_field(statement: Mapping[str, Any], name: str) -> object:
    predicate = statement.get("predicate")
    return predicate.get(name) if isinstance(predicate, Mapping) else None


def statement_digest(statement: Mapping[str, Any]) -> str:
    """sha256 of a statement as signed (canonical JSON, as :func:`sign_statement` writes it)."""
    return sha256_bytes(json.dumps(statement, sort_keys=True, separators=(",", ":")).encode())


@dataclass(frozen=True)
class Revocation:
    """A revocation that verified and that its signer was allowed to make."""

    key: str
    predicate: RevocationPredicate
    signer_key_id: str

    @property
    def kind(self) -> RevocationKind:
        return self.predicate.kind

    def describe(self) -> str:
        p = self.predicate
        who = "the policy owner" if p.revoker_role == OWNER_ROLE else f"approver {p.revoked_by}"
        return f"revoked by {who} at {p.revoked_at}: {p.reason or 'no reason given'} ({self.key})"


@dataclass(frozen=True)
class Revocations:
    """Every revocation that counts for one model, and those ignored (key, why)."""

    items: tuple[Revocation, ...] = ()
    ignored: tuple[tuple[str, str], ...] = ()

    def of_version(self, version: str, model_digest: str | None = None) -> Revocation | None:
        """The revocation of ``version`` (or of any version with ``model_digest``), if any."""
        for r in self.items:
            p = r.predicate
            if r.kind != "version":
                continue
            digest = p.model_digest.sha256 if p.model_digest else None
            if p.version == version or (model_digest is not None and digest == model_digest):
                return r
        return None

    def of_approval(
        self, *, version: str, stage: str, key: str, sha256: str, statement_sha256: str
    ) -> Revocation | None:
        """The revocation of this approval evidence (by its signed statement, its bytes or its
        registry key), if any."""
        for r in self.items:
            a = r.predicate.approval
            if r.kind != "approval" or a is None or r.predicate.version != version:
                continue
            if a.stage == stage and (
                a.statement_sha256 == statement_sha256 or a.sha256 == sha256 or a.key == key
            ):
                return r
        return None

    def of_key(self, kid: str, signed_at: dt.datetime | None) -> Revocation | None:
        """The revocation of key ``kid`` in force at ``signed_at`` (``None``, an unknown time,
        counts as after every revocation: fail closed)."""
        for r in self.items:
            revoked = r.predicate.key
            if r.kind != "key" or revoked is None or revoked.key_id != kid:
                continue
            start = _time(revoked.effective_from)
            if signed_at is None or start is None or signed_at >= start:
                return r
        return None

    def signed_with_revoked_key(
        self, st: VerifiedStatement, fallback: dt.datetime | None = None
    ) -> Revocation | None:
        """The key revocation a verified statement falls under (its own signed time, else
        ``fallback``), if any."""
        return self.of_key(st.key_id, signed_time(st.statement) or fallback)


@dataclass
class RevokerTrust:
    """Who may sign revocations: the policy owner's keys and every policy approver's keys."""

    trusted: TrustedKeys = field(default_factory=TrustedKeys)
    owner_ids: set[str] = field(default_factory=set)
    #: Approver name by key id.
    approvers: dict[str, str] = field(default_factory=dict)


def revoker_trust(keys: KeyDirectory, policy: ApprovalPolicy) -> RevokerTrust:
    """The keys whose revocations may count under ``policy`` (none of the owner's if the trust
    root names no policy owner)."""
    trust = RevokerTrust()
    names = tuple(sorted({n for stage in STAGES for n in policy.allowed(stage)}))
    approvers = keys.trusted_approvers(names)
    trust.trusted.extend(approvers)  # with each key's validity window
    trust.approvers = {kid: name for kid, (name, _) in approvers.keys.items()}
    try:
        owner = keys.trusted(OWNER_ROLE)
    except InputError:  # the trust root names no policy owner: only approvers can revoke
        owner = TrustedKeys()
    trust.trusted.extend(owner)
    trust.owner_ids = set(owner.keys)
    return trust


def _refuse(where: str, reason: RevocationRefusal, message: str) -> ControlRefused:
    return ControlRefused(message, where=where, reason=reason)


def _check_shape(st: VerifiedStatement, p: RevocationPredicate, where: str) -> None:
    """The fields of the revocation's kind are set (and no other's), and its subject is what
    it revokes."""
    bad = RevocationRefusal.MALFORMED_REVOCATION
    if _time(p.revoked_at) is None:
        raise _refuse(where, bad, f"revokedAt {p.revoked_at!r} is not a time")
    expected: dict[RevocationKind, tuple[bool, str | None, str]] = {
        "approval": (
            p.approval is not None and p.version is not None and p.key is None,
            p.approval.statement_sha256 if p.approval else None,
            "approval",
        ),
        "version": (
            p.model_digest is not None
            and p.version is not None
            and p.approval is None
            and p.key is None,
            p.model_digest.sha256 if p.model_digest else None,
            "model",
        ),
        "key": (
            p.key is not None and p.approval is None and p.version is None,
            p.key.key_id if p.key else None,
            "key",
        ),
    }
    fits, digest, subject = expected[p.kind]
    if not fits or digest is None:
        raise _refuse(where, bad, f"the fields of a {p.kind} revocation are not set right")
    if not has_subject(st.statement, digest, subject):
        raise _refuse(where, bad, f"its subject is not the {subject} it revokes")
    if p.version is not None:
        try:
            check_version(p.version)
        except InputError as exc:
            raise _refuse(where, bad, exc.message) from exc
    if p.key is not None and (
        not _HEX64.fullmatch(p.key.key_id) or _time(p.key.effective_from) is None
    ):
        raise _refuse(where, bad, "a key revocation needs a key id and an effectiveFrom time")


def _authorize(
    st: VerifiedStatement,
    p: RevocationPredicate,
    trust: RevokerTrust,
    policy: ApprovalPolicy,
    where: str,
) -> None:
    """The signer may make this revocation under ``policy``; else ``ControlRefused``."""
    kid = st.key_id
    if p.revoker_role == OWNER_ROLE:
        if kid not in trust.owner_ids or p.revoked_by != OWNER_ROLE:
            raise _refuse(
                where,
                RevocationRefusal.UNTRUSTED_SIGNER,
                "it claims to be the policy owner's but is not signed with the owner's key",
            )
        return
    signer = trust.approvers.get(kid)
    if signer is None or signer != p.revoked_by:
        raise _refuse(
            where,
            RevocationRefusal.UNTRUSTED_SIGNER,
            f"it names approver {p.revoked_by} but is signed by "
            f"{'approver ' + signer if signer else 'a key that is no approver of this policy'}",
        )
    if p.kind == "approval" and p.approval is not None:
        allowed = policy.allowed(p.approval.stage)
        if signer not in allowed:
            raise _refuse(
                where,
                RevocationRefusal.SIGNER_NOT_ALLOWED,
                f"{signer} is not an allowed approver for {p.approval.stage} "
                f"(allowed: {', '.join(allowed) or 'none'})",
            )
    elif p.kind == "key" and p.key is not None:
        own = {k for k, name in trust.approvers.items() if name == signer}
        if p.key.key_id not in own:
            raise _refuse(
                where,
                RevocationRefusal.SIGNER_NOT_ALLOWED,
                f"approver {signer} may revoke only their own key; the policy owner revokes "
                "any other",
            )


def verify_revocation(
    raw: bytes, key: str, *, model: str, trust: RevokerTrust, policy: ApprovalPolicy
) -> Revocation:
    """The revocation stored at ``key`` if it verifies and its signer may make it; else
    ``ControlRefused`` with a :class:`RevocationRefusal`."""
    bad = RevocationRefusal.MALFORMED_REVOCATION
    try:
        bundle = parse_json_object(raw, key)
    except ControlRefused as exc:
        raise _refuse(key, bad, exc.message) from exc
    if not trust.trusted:
        raise _refuse(key, RevocationRefusal.UNTRUSTED_SIGNER, "no approver or owner key to trust")
    try:
        st = verify_bundle(bundle, trust.trusted, where=key)
    except ControlRefused as exc:
        raise _refuse(key, RevocationRefusal.UNTRUSTED_SIGNER, exc.message) from exc
    if st.predicate_type != PREDICATE_REVOCATION:
        raise _refuse(key, bad, f"predicate {st.predicate_type} is not a revocation")
    try:
        predicate = RevocationPredicate.model_validate(st.predicate)
    except ValidationError as exc:
        raise _refuse(
            key, bad, f"not a revocation predicate ({exc.error_count()} error(s))"
        ) from exc
    if predicate.model != model:
        raise _refuse(
            key, RevocationRefusal.NOT_THIS_MODEL, f"it revokes for model {predicate.model!r}"
        )
    _check_shape(st, predicate, key)
    _authorize(st, predicate, trust, policy, key)
    return Revocation(key=key, predicate=predicate, signer_key_id=st.key_id)


def revocations_prefix(models: ModelRegistry) -> str:
    return f"{models.model}/revocations"


def load_revocations(
    models: ModelRegistry, *, keys: KeyDirectory, policy: ApprovalPolicy
) -> Revocations:
    """Every revocation stored for ``models`` that counts under ``policy``.

    One that does not verify, names a signer the policy does not allow, or was signed with a
    key revoked before it signed is ignored (listed in ``ignored``). A registry that cannot be
    read is a ``ToolError``: never read as "nothing revoked".
    """
    trust = revoker_trust(keys, policy)
    valid: list[Revocation] = []
    ignored: list[tuple[str, str]] = []
    for key in models.store.list_keys(revocations_prefix(models)):
        if not key.endswith(".json"):
            continue
        try:
            raw = models.store.read(key)
            valid.append(
                verify_revocation(raw, key, model=models.model, trust=trust, policy=policy)
            )
        except (ControlRefused, InputError) as exc:
            ignored.append((key, exc.message))
    first = Revocations(tuple(valid))
    kept: list[Revocation] = []
    for r in valid:
        self_revocation = r.predicate.key is not None and r.predicate.key.key_id == r.signer_key_id
        by = first.of_key(r.signer_key_id, _time(r.predicate.revoked_at))
        if by is not None and not self_revocation:
            ignored.append((r.key, f"signed with a key {by.describe()}"))
            continue
        kept.append(r)
    return Revocations(tuple(kept), tuple(ignored))


def revoked_version(
    models: ModelRegistry,
    version: str,
    *,
    keys: KeyDirectory,
    policy: ApprovalPolicy,
    model_digest: str | None = None,
) -> Revocation | None:
    """The revocation of ``version`` (or of its ``model_digest``), if one counts."""
    return load_revocations(models, keys=keys, policy=policy).of_version(version, model_digest)


# --- making one ----------------------------------------------------------------------------


def _payload(bundle: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The statement a bundle carries, not verified (to name what is revoked)."""
    try:  # bounded: size and depth checked before parsing (the bundle is not verified yet)
        statement = parse_json_value(
            base64.b64decode(bundle["dsseEnvelope"]["payload"], validate=True), where
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"{where} is not a signed bundle: {exc}", where=where) from exc
    if not isinstance(statement, dict):
        raise InputError(f"{where} does not carry a statement", where=where)
    return statement


def approval_target(models: ModelRegistry, evidence_key: str) -> tuple[str, RevokedApproval]:
    """(version, what to revoke) for the approval stored at registry key ``evidence_key``."""
    where = "--approval"
    found = re.fullmatch(
        rf"{re.escape(models.model)}/versions/(v[0-9]+)/evidence/"
        r"approval-(staging|production)-[a-z0-9._-]+\.json",
        evidence_key,
    )
    if not found:
        raise InputError(
            f"{evidence_key!r} is not an approval of {models.model}",
            where=where,
            fix=f"give its registry key as `secmlops evidence {models.model} VERSION` lists it, "
            f"e.g. {models.model}/versions/v1/evidence/approval-production-….json",
        )
    version, stage = check_version(found[1]), found[2]
    stored = models.store.get(evidence_key)
    if stored is None:
        raise InputError(f"{models.store.describe(evidence_key)} does not exist", where=where)
    try:
        statement = _payload(parse_json_object(stored.data, evidence_key), evidence_key)
        if statement.get("predicateType") != PREDICATE_APPROVAL:
            raise ValueError(f"predicate {statement.get('predicateType')!r}")
        pred = ApprovalPredicate.model_validate(statement.get("predicate"))
    except (ControlRefused, ValueError) as exc:
        raise InputError(f"{evidence_key} is not an approval: {exc}", where=where) from exc
    if (pred.model, pred.version, pred.stage) != (models.model, version, stage):
        raise InputError(
            f"{evidence_key} holds an approval of {pred.model} {pred.version} for {pred.stage}",
            where=where,
        )
    if pred.decision != "approved":
        raise InputError(
            f"{evidence_key} is a rejection: nothing to revoke",
            where=where,
            fix="a rejection already blocks; an approval decided after it lifts it",
        )
    return version, RevokedApproval(
        key=evidence_key,
        sha256=sha256_bytes(stored.data),
        statement_sha256=statement_digest(statement),
        stage=pred.stage,
        approver=pred.approver,
    )


def version_digest(models: ModelRegistry, version: str, keys: KeyDirectory) -> str:
    """The model digest of ``version``'s release manifest, after verifying its signature."""
    models.require_version(version)
    key = f"{models.evidence_prefix(version)}/release.json"
    raw = models.store.read(key)
    st = verify_bundle(parse_json_object(raw, key), keys.trusted("attestor"), where=key)
    digest: str = control("release").parse(st, key).predicate.model_digest.sha256
    return digest


def revocation_statement(
    models: ModelRegistry,
    *,
    kind: RevocationKind,
    target: str,
    reason: str,
    revoked_by: str,
    revoker_role: Literal["approver", "policy-owner"],
    keys: KeyDirectory,
    effective_from: str | None = None,
) -> dict[str, Any]:
    """The statement revoking ``target`` (an approval's registry key, a version, or a key id)."""
    now = utc_now()
    common: dict[str, Any] = {
        "kind": kind,
        "model": models.model,
        "reason": reason,
        "revoked_by": revoked_by,
        "revoker_role": revoker_role,
        "revoked_at": now,
    }
    if kind == "approval":
        version, approval = approval_target(models, target)
        predicate = RevocationPredicate(**common, version=version, approval=approval)
        subject = Subject("approval", approval.statement_sha256)
    elif kind == "version":
        digest = version_digest(models, check_version(target), keys)
        predicate = RevocationPredicate(
            **common, version=target, model_digest=Sha256Ref(sha256=digest)
        )
        subject = Subject("model", digest)
    else:
        if not _HEX64.fullmatch(target):
            raise InputError(
                f"{target!r} is not a key id",
                where="--key-id",
                fix="a key id is the sha256 (64 lowercase hex) of the DER public key, as "
                "evidence bundles name it in verificationMaterial.publicKey.hint",
            )
        start = effective_from or now
        if _time(start) is None:
            raise InputError(
                f"{start!r} is not a time", where="--from", fix="use e.g. 2026-01-31T00:00:00Z"
            )
        predicate = RevocationPredicate(
            **common, key=RevokedKey(key_id=target, effective_from=start)
        )
        subject = Subject("key", target)
    return make_statement([subject], PREDICATE_REVOCATION, dump_predicate(predicate))


def revoke(
    models: ModelRegistry,
    *,
    kind: RevocationKind,
    target: str,
    reason: str,
    private_key: Path | SigningKey,
    name: str | None,
    keys: KeyDirectory,
    policy: ApprovalPolicy,
    effective_from: str | None = None,
) -> Revocation:
    """Sign a revocation of ``target`` with ``private_key`` (a PEM file, a private key or a
    :class:`~secmlops.evidence.signers.Signer`, e.g. ``keys.approver_signer(name)`` or a KMS
    key), check it counts, store it create-only and audit it.

    The signer is the policy owner if the key is the owner's and ``name`` is ``None`` or
    ``policy-owner``; otherwise approver ``name`` (default: the key file's name). A
    revocation the gate would ignore is refused here (``ControlRefused``, exit 1), before
    anything is written.
    """
    if kind not in KINDS:
        raise InputError(f"unknown revocation kind {kind!r}", where="revoke")
    if not reason.strip():
        raise InputError("say why", where="--reason", fix="give --reason TEXT (it is signed)")
    signer = load_private_key(private_key) if isinstance(private_key, Path) else private_key
    kid = key_id(signer.public_key()) if isinstance(signer, PrivateKey) else signer.key_id
    trust = revoker_trust(keys, policy)
    role: Literal["approver", "policy-owner"] = "approver"
    if kid in trust.owner_ids and name in (None, OWNER_ROLE):
        revoked_by, role = OWNER_ROLE, "policy-owner"
    else:
        default = private_key.name.removesuffix(".pem") if isinstance(private_key, Path) else ""
        revoked_by = check_approver_name(name or default)
    statement = revocation_statement(
        models,
        kind=kind,
        target=target,
        reason=reason,
        revoked_by=revoked_by,
        revoker_role=role,
        keys=keys,
        effective_from=effective_from,
    )
    bundle = sign_statement(statement, signer)
    key = f"{revocations_prefix(models)}/{stamped(f'revocation-{kind}')}.json"
    data = canonical_json(bundle)
    revocation = verify_revocation(data, key, model=models.model, trust=trust, policy=policy)
    p = revocation.predicate
    own_key = p.key is not None and p.key.key_id == kid
    by = load_revocations(models, keys=keys, policy=policy).of_key(kid, _time(p.revoked_at))
    if by is not None and not own_key:
        raise _refuse(
            key,
            RevocationRefusal.SIGNER_KEY_REVOKED,
            f"the signing key was {by.describe()}",
        )
    models.store.put(key, data)  # create-only
    # Signed by the revoker: the revocation is their act (``secmlops audit verify`` must
    # trust approver and policy-owner keys for this event).
    models.audit(
        "revoked",
        signer=signer,
        kind=kind,
        target=target,
        version=p.version,
        revoked_by=p.revoked_by,
        role=p.revoker_role,
        reason=reason,
        revocation=key,
    )
    return revocation


__all__ = [
    "KINDS",
    "OWNER_ROLE",
    "PREDICATE_REVOCATION",
    "Revocation",
    "RevocationRefusal",
    "Revocations",
    "approval_target",
    "load_revocations",
    "revocation_statement",
    "revoke",
    "revoked_version",
    "revoker_trust",
    "signed_time",
    "statement_digest",
    "verify_revocation",
    "version_digest",
]
