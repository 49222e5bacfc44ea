"""Approval decisions submitted to a waiting run: make, verify, count and store them.

A run waiting for approval (the Prefect pause in ``flows/approval.py``) gets decisions two
ways. ``secmlops approve`` signs one with the approver's own key (:func:`sign_decision`,
method ``signed-decision``); the run accepts it only if :func:`verify_decision` says it
verifies with ``approvers/<name>.pub`` of the site's key directory (never a key carried in
the bundle), is about exactly the release the run waits for, comes from an allowed approver
not counted yet, and keeps separation of duties. A decision from the Prefect UI form is
anonymous (Prefect OSS has no user identity): :func:`anonymous_ui_decision` records it,
signed by the attestor as approver ``prefect-ui``, only for the policy's
``anonymous_ui_stages``. Every refusal is a ``ControlRefused`` with an
:class:`~secmlops.controls.approval.ApprovalRefusal`; garbage is ``MALFORMED_DECISION``.

Example::

    request = approval_request(models, "v3", "production", keys=keys, requested_by="alice")
    bundle = sign_decision(request, approver="bob", approve=True, reason="metrics ok",
                           private_key=Path("keys/approvers/bob.pem"))
    decision = verify_decision(bundle, request, keys=keys, policy=policy, counted=[])
    store_decision(models, request, bundle, decision)
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from secmlops._internal.digests import sha256_bytes
from secmlops.catalogue import control
from secmlops.controls.approval import (
    PREFECT_UI_APPROVER,
    RESERVED_APPROVERS,
    ApprovalDecision,
    ApprovalPolicy,
    ApprovalRefusal,
    ApprovalRequest,
    approval_statement,
    check_stage,
    duty_conflict,
    request_record,
)
from secmlops.errors import ControlRefused, InputError, SecMLOpsError
from secmlops.evidence.keys import KeyDirectory, check_approver_name
from secmlops.evidence.predicates import ApprovalPredicate, ReleasePredicate
from secmlops.evidence.statements import (
    PREDICATE_APPROVAL,
    EvidenceRefusal,
    SigningKey,
    TrustedKeys,
    VerifiedStatement,
    has_subject,
    load_private_key,
    sign_statement,
    utc_now,
    verify_bundle,
)
from secmlops.gate import GatePolicy, role_key_ids, staging_approvers
from secmlops.registry.models import ModelRegistry, parse_json_object, stamped

#: A signed decision is a few KiB; anything much larger is refused before it is parsed.
MAX_DECISION_BYTES = 256 * 1024

#: The request fields a decision must match exactly (what the approver signs off on).
_REQUEST_FIELDS = ("model", "version", "stage", "model_digest", "release_sha256", "requested_by")


def verified_release(models: ModelRegistry, version: str, keys: KeyDirectory) -> tuple[str, str]:
    """The (model digest, sha256) of a version's release manifest, after verifying its signature.

    An approver signs off on exactly this manifest; one that does not verify is not approved.
    """
    key = f"{models.evidence_prefix(version)}/release.json"
    raw = models.store.read(key)  # read once: the digest approved is of the bytes verified
    statement = verify_bundle(parse_json_object(raw, key), keys.trusted("attestor"), where=key)
    manifest: ReleasePredicate = control("release").parse(statement, key).predicate
    return manifest.model_digest.sha256, sha256_bytes(raw)


def approval_request(
    models: ModelRegistry,
    version: str,
    stage: str,
    *,
    keys: KeyDirectory,
    requested_by: str,
    summary: str = "",
    policy: GatePolicy | None = None,
) -> ApprovalRequest:
    """What approving ``version`` for ``stage`` means: its verified release manifest.

    For production it also carries who approved staging (from the gate's signed staging
    VSAs), so :func:`verify_decision` can apply separation of duties.
    """
    stage = check_stage(stage)
    model_digest, release_sha256 = verified_release(models, version, keys)
    policy = policy or GatePolicy()
    earlier = (
        staging_approvers(models, version, keys=keys, policy=policy)
        if stage == "production"
        else frozenset()
    )
    return ApprovalRequest(
        model=models.model,
        version=version,
        model_digest=model_digest,
        stage=stage,
        release_sha256=release_sha256,
        summary=summary or f"deploy {models.model} {version} to {stage}",
        requested_by=requested_by,
        staging_approvers=tuple(sorted(earlier)),
    )


def approvals_needed(policy: GatePolicy | ApprovalPolicy, stage: str) -> int:
    """How many distinct valid approvals ``stage`` needs under ``policy``."""
    approval = policy.approval if isinstance(policy, GatePolicy) else policy
    return approval.needed(stage)


def sign_decision(
    request: ApprovalRequest,
    *,
    approver: str,
    approve: bool,
    reason: str,
    private_key: Path | SigningKey,
) -> dict[str, Any]:
    """``approver``'s decision on ``request``, signed with their key (a PEM file, or any
    signer, e.g. ``keys.approver_signer(approver)`` or a KMS key): a Sigstore bundle."""
    check_approver_name(approver)
    if approver in RESERVED_APPROVERS:
        raise InputError(
            f"{approver!r} is reserved for attestor-signed decisions",
            where="--as",
            fix="sign as yourself (your approver name)",
        )
    decision = ApprovalDecision(
        approver=approver,
        approved=approve,
        method="signed-decision",
        comment=reason,
        decided_at=utc_now(),
    )
    key = load_private_key(private_key) if isinstance(private_key, Path) else private_key
    return sign_statement(approval_statement(request, decision), key)


def _refuse(
    request: ApprovalRequest, reason: ApprovalRefusal, message: str, fix: str | None = None
) -> ControlRefused:
    return ControlRefused(
        message, where=f"approval:{request.stage}", fix=fix, reason=reason, result=request
    )


def _as_bundle(bundle: object, request: ApprovalRequest) -> dict[str, Any]:
    """A JSON object of bounded size (a str or bytes is parsed), else MALFORMED_DECISION."""
    malformed = ApprovalRefusal.MALFORMED_DECISION
    try:
        if isinstance(bundle, str | bytes):
            if len(bundle) > MAX_DECISION_BYTES:
                raise _refuse(request, malformed, "the decision is too large")
            bundle = json.loads(bundle)
        size = len(json.dumps(bundle))
    except (TypeError, ValueError, RecursionError) as exc:
        raise _refuse(request, malformed, f"the decision is not JSON: {exc}") from exc
    if size > MAX_DECISION_BYTES:
        raise _refuse(request, malformed, f"the decision is too large ({size} bytes)")
    if not isinstance(bundle, dict):
        raise _refuse(request, malformed, "the decision is not a signed bundle (JSON object)")
    return bundle


def _claimed(bundle: dict[str, Any], request: ApprovalRequest) -> ApprovalPredicate:
    """The approval statement a bundle carries, *not yet verified* (to find whose key)."""
    try:
        payload = base64.b64decode(bundle["dsseEnvelope"]["payload"], validate=True)
        statement = json.loads(payload)
        if statement["predicateType"] != PREDICATE_APPROVAL:
            raise ValueError(f"predicate type {statement['predicateType']!r}")
        claimed = ApprovalPredicate.model_validate(statement["predicate"])
        if claimed.method != "signed-decision":
            raise ValueError(f"method {claimed.method}, not signed-decision")
        return claimed
    except (KeyError, TypeError, ValueError, RecursionError) as exc:
        detail = f"{exc.error_count()} error(s)" if isinstance(exc, ValidationError) else exc
        raise _refuse(
            request,
            ApprovalRefusal.MALFORMED_DECISION,
            f"the decision is not a signed approval statement: {detail}",
            fix="sign decisions with `secmlops approve`",
        ) from exc


def _verified(
    bundle: dict[str, Any], approver: str, keys: KeyDirectory, request: ApprovalRequest
) -> tuple[ApprovalPredicate, VerifiedStatement]:
    """Verify ``bundle`` with ``approver``'s keys in the trust root only (the same keys the
    gate uses, with their validity windows); (predicate, statement)."""
    try:
        check_approver_name(approver)
        valid_name = approver not in RESERVED_APPROVERS
    except InputError:  # not a valid approver name: no key can be listed for it
        valid_name = False
    # The site's keys, never the bundle's; a trust root that cannot be read is bad input.
    trusted = keys.trusted_approvers((approver,)) if valid_name else TrustedKeys()
    if not trusted:
        raise _refuse(
            request,
            ApprovalRefusal.UNKNOWN_APPROVER,
            f"no key for approver {approver!r} in the site's trust root",
            fix="add the approver's public key: `secmlops trust add-key approver:NAME KEY.pub`"
            " (the demo: `secmlops keygen --approver NAME`)",
        )
    where = f"approval:{request.stage}"
    try:
        st = verify_bundle(bundle, trusted, where=where)
        pred: ApprovalPredicate = control("approval").parse(st, where).predicate
    except ControlRefused as exc:
        bad = exc.reason in (EvidenceRefusal.UNTRUSTED_SIGNER, EvidenceRefusal.BAD_SIGNATURE)
        reason = ApprovalRefusal.BAD_SIGNATURE if bad else ApprovalRefusal.MALFORMED_DECISION
        raise _refuse(request, reason, f"{approver}'s decision: {exc.message}") from exc
    return pred, st


def _wrong_request(
    st: VerifiedStatement, pred: ApprovalPredicate, request: ApprovalRequest
) -> str | None:
    """What about the decision differs from ``request`` (``None``: it is about exactly it)."""
    if not has_subject(st.statement, request.model_digest, "model"):
        return "its subject is not this model digest"
    expected = request_record(request).model_dump()
    signed = {**pred.request.model_dump(), "release": pred.release.sha256}
    signed |= {f"top-{k}": getattr(pred, k) for k in ("model", "version", "stage")}
    expected |= {"release": request.release_sha256}
    expected |= {f"top-{k}": expected[k] for k in ("model", "version", "stage")}
    for name in (*_REQUEST_FIELDS, "release", "top-model", "top-version", "top-stage"):
        if signed.get(name) != expected.get(name):
            return f"it is for {name}={signed.get(name)!r}, not {expected.get(name)!r}"
    return None


def _check_counted(
    approver: str, kid: str, request: ApprovalRequest, counted: Sequence[ApprovalDecision]
) -> None:
    if any(d.approver == approver or (kid and d.key_id == kid) for d in counted):
        raise _refuse(
            request,
            ApprovalRefusal.DUPLICATE_APPROVER,
            f"{approver} (or their key) already decided on {request.stage}; "
            "each person counts once",
            fix="ask another allowed approver",
        )


def verify_decision(
    bundle: object,
    request: ApprovalRequest,
    *,
    keys: KeyDirectory,
    policy: GatePolicy,
    counted: Sequence[ApprovalDecision],
) -> ApprovalDecision:
    """The decision a signed bundle stands for, if the run may count it; else ``ControlRefused``.

    Checked in order: well-formed (MALFORMED_DECISION), a site key for the named approver
    (UNKNOWN_APPROVER), the signature with that key only (BAD_SIGNATURE), about exactly
    ``request`` (WRONG_REQUEST), an allowed approver for the stage (APPROVER_NOT_ALLOWED),
    not yet ``counted`` (DUPLICATE_APPROVER); for an approval also separation of duties
    (SIGNER_ROLE_CONFLICT, SELF_APPROVAL, SEPARATION_OF_DUTIES), which does not apply to a
    rejection: a rejection can only stop a deploy.
    """
    data = _as_bundle(bundle, request)
    approver = _claimed(data, request).approver
    pred, st = _verified(data, approver, keys, request)
    kid = st.key_id
    wrong = _wrong_request(st, pred, request)
    if wrong:
        raise _refuse(
            request,
            ApprovalRefusal.WRONG_REQUEST,
            f"the decision is not about what this run waits for: {wrong}",
            fix="sign the request this run published (`secmlops approve FLOW_RUN_ID`)",
        )
    allowed = policy.approval.allowed(request.stage)
    if approver not in allowed:
        raise _refuse(
            request,
            ApprovalRefusal.APPROVER_NOT_ALLOWED,
            f"{approver} is not an allowed approver for {request.stage}",
            fix=f"allowed approvers: {', '.join(allowed) or 'none'}",
        )
    _check_counted(approver, kid, request, counted)
    approved = pred.decision == "approved"
    if approved:
        _check_duties(approver, kid, request, keys, policy)
    return ApprovalDecision(
        approver, approved, "signed-decision", pred.comment, pred.decided_at, kid
    )


def _check_duties(
    approver: str, kid: str, request: ApprovalRequest, keys: KeyDirectory, policy: GatePolicy
) -> None:
    """Separation of duties (:func:`duty_conflict`) for an approval; ``kid`` "" for the
    attestor-signed anonymous one."""
    if policy.approval.separation_of_duties:
        keys.require(keys.public("model-signer"))  # cannot check it without: fail closed
    conflict = duty_conflict(
        approver,
        kid,
        request=request,
        policy=policy.approval,
        role_key_ids=role_key_ids(keys),
        staging_approvers=set(request.staging_approvers),
    )
    if conflict:
        raise _refuse(request, conflict[0], conflict[1], fix="ask another allowed approver")


def anonymous_ui_decision(
    request: ApprovalRequest,
    *,
    approve: bool,
    reason: str,
    keys: KeyDirectory,
    policy: GatePolicy,
    counted: Sequence[ApprovalDecision],
) -> tuple[dict[str, Any], ApprovalDecision]:
    """Record an anonymous Prefect UI decision: (attestor-signed bundle, decision).

    ``ANONYMOUS_NOT_ALLOWED`` unless ``request.stage`` is in the policy's
    ``anonymous_ui_stages`` (rejections included: nobody knows who sent them). It counts as
    one approver, ``prefect-ui``, at most once.
    """
    stage = request.stage
    if stage not in policy.approval.anonymous_ui_stages:
        raise _refuse(
            request,
            ApprovalRefusal.ANONYMOUS_NOT_ALLOWED,
            f"an anonymous decision from the Prefect UI does not count for {stage}",
            fix="decide with `secmlops approve FLOW_RUN_ID --approve|--reject --key YOUR_KEY`",
        )
    _check_counted(PREFECT_UI_APPROVER, "", request, counted)
    if approve:
        _check_duties(PREFECT_UI_APPROVER, "", request, keys, policy)
    signer = keys.signer("attestor")
    decision = ApprovalDecision(
        approver=PREFECT_UI_APPROVER,
        approved=approve,
        method="prefect-ui",
        comment=reason or "decided anonymously in the Prefect UI",
        decided_at=utc_now(),
        key_id=signer.key_id,
    )
    return sign_statement(approval_statement(request, decision), signer), decision


def store_decision(
    models: ModelRegistry,
    request: ApprovalRequest,
    bundle: dict[str, Any],
    decision: ApprovalDecision,
    *,
    audit_signer: SigningKey | None = None,
) -> str:
    """Store a counted decision as evidence ``approval-<stage>-<stamp>`` (a rejection too,
    with decision ``rejected``) and audit it (the entry signed by ``audit_signer``, the
    pipeline's attestor; ``None`` writes an unsigned entry); return its key."""
    key, _ = models.put_evidence(request.version, stamped(f"approval-{request.stage}"), bundle)
    models.audit(
        "approved" if decision.approved else "rejected",
        signer=audit_signer,
        version=request.version,
        stage=request.stage,
        approver=decision.approver,
        method=decision.method,
        reason=decision.comment,
        evidence=key,
    )
    return key


def audit_ignored_decision(
    models: ModelRegistry,
    request: ApprovalRequest,
    refusal: SecMLOpsError,
    *,
    audit_signer: SigningKey | None = None,
) -> str:
    """Audit a decision the run refused to count, with its reason; return the audit key."""
    return models.audit(
        "decision-ignored",
        signer=audit_signer,
        version=request.version,
        stage=request.stage,
        reason=refusal.reason.value if refusal.reason is not None else "",
        error=str(refusal),
    )


__all__ = [
    "MAX_DECISION_BYTES",
    "anonymous_ui_decision",
    "approval_request",
    "approvals_needed",
    "audit_ignored_decision",
    "sign_decision",
    "store_decision",
    "verified_release",
    "verify_decision",
]
