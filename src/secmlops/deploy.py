"""Staged deploy: move a stage pointer only after the deploy gate verified everything.

``promote_to_stage`` runs :func:`secmlops.gate.verify_release`, writes a signed SLSA
Verification Summary (VSA) for the version and stage, then moves the stage pointer by
compare-and-swap. ``rollback_stage`` takes the stage back to the version it served before,
through the same gate. Every outcome, refusals included, goes to the audit log.
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass

from secmlops.controls.approval import (
    approval_statement,
    check_stage,
    decide_automatically,
    decide_by_preapproval,
    duty_conflict,
)
from secmlops.controls.approval_decisions import approval_request, store_decision
from secmlops.errors import ControlRefused, InputError, RefusalReason, SecMLOpsError
from secmlops.evidence.keys import KeyDirectory
from secmlops.evidence.predicates import (
    VERIFIER_ID,
    ApproverRef,
    GateCheckRecord,
    GateVerdict,
    ResourceDescriptor,
    Sha256Ref,
    Verifier,
    VsaPredicate,
    dump_predicate,
)
from secmlops.evidence.statements import (
    PREDICATE_SLSA_VSA,
    Subject,
    key_id,
    load_private_key,
    make_statement,
    sign_statement,
    utc_now,
)
from secmlops.gate import (
    GatePolicy,
    GateReport,
    passed_gate_before,
    role_key_ids,
    verify_release,
)
from secmlops.registry.models import (
    ModelRegistry,
    StagePointer,
    canonical_json,
    stamped,
)
from secmlops.registry.stores import WriteConflict

HISTORY_LIMIT = 50


class DeployRefusal(RefusalReason):
    """Why a promotion, rollback or stage check refused (``ControlRefused.reason``).

    The gate's own refusals carry a :class:`~secmlops.catalogue.GateRefusal`, approvals an
    :class:`~secmlops.controls.approval.ApprovalRefusal`.
    """

    POINTER_RACE_LOST = "pointer_race_lost"
    """The stage pointer moved between reading and writing it (a concurrent promotion)."""
    NOTHING_TO_ROLL_BACK = "nothing_to_roll_back"
    """No earlier version of the stage has a gate-signed VSA to roll back to."""
    NOTHING_DEPLOYED = "nothing_deployed"
    """The stage has no pointer: nothing is deployed there."""


@dataclass(frozen=True)
class Promotion:
    """The result of a promotion or rollback: the new pointer and the gate's report."""

    pointer: StagePointer
    report: GateReport
    vsa_key: str


def vsa_statement(
    models: ModelRegistry, report: GateReport, policy: GatePolicy
) -> dict[str, object]:
    """SLSA Verification Summary v1 for a version that passed the gate for a stage."""
    policy_digest = hashlib.sha256(canonical_json(policy.model_dump(mode="json"))).hexdigest()
    vsa = VsaPredicate(
        verifier=Verifier(id=VERIFIER_ID),
        time_verified=utc_now(),
        resource_uri=models.store.describe(models.version_prefix(report.version)),
        policy=ResourceDescriptor(
            uri=f"secmlops:gate-policy/{report.stage}", digest={"sha256": policy_digest}
        ),
        input_attestations=[ResourceDescriptor(**a) for a in report.input_attestations],
        verification_result="PASSED",
        verified_levels=[f"SECMLOPS_GATE_{report.stage.upper()}"],
        secmlops=GateVerdict(
            model=report.model,
            version=report.version,
            stage=report.stage,
            dataset_digest=report.dataset_digest,
            image_digest=report.image_digest,
            release=Sha256Ref(sha256=report.release_sha256),
            approval=ApproverRef(approver=report.approver, method=report.approval_method),
            approvals=[ApproverRef(approver=a, method=m) for a, m in report.approvals] or None,
            checks=[GateCheckRecord(**c.to_json()) for c in report.checks],
        ),
    )
    return make_statement(
        [Subject("model", report.model_digest)],
        PREDICATE_SLSA_VSA,
        dump_predicate(vsa, exclude_none=True),
    )


def promote_to_stage(
    models: ModelRegistry,
    version: str,
    stage: str,
    *,
    keys: KeyDirectory,
    policy: GatePolicy,
    actor: str,
    reason: str = "promote",
) -> Promotion:
    """Verify ``version`` for ``stage``, write its VSA, and move the stage pointer to it."""
    stage = check_stage(stage)
    current, current_obj = models.read_pointer(stage)
    try:
        report = verify_release(models, version, stage, keys=keys, policy=policy)
    except Exception as exc:
        # Every outcome is audited, a crash included; the audit write must not mask the cause.
        with contextlib.suppress(Exception):
            models.audit(
                "refused" if isinstance(exc, ControlRefused) else "failed",
                version=version,
                stage=stage,
                actor=actor,
                reason=reason,
                error=str(exc),
                details=exc.details if isinstance(exc, SecMLOpsError) else {},
            )
        raise
    bundle = sign_statement(
        vsa_statement(models, report, policy), load_private_key(keys.require(keys.private("gate")))
    )
    vsa_key, vsa_sha = models.put_evidence(version, stamped(f"vsa-{stage}"), bundle)
    history = list(current.history) if current else []
    if current:
        history.append(
            {
                "version": current.version,
                "modelDigest": current.model_digest,
                "promotedAt": current.promoted_at,
                "vsa": current.vsa,
            }
        )
    pointer = StagePointer(
        model=models.model,
        stage=stage,
        version=version,
        model_digest=report.model_digest,
        vsa=vsa_key,
        vsa_sha256=vsa_sha,
        promoted_at=utc_now(),
        promoted_by=actor,
        reason=reason,
        history=history[-HISTORY_LIMIT:],
    )
    try:
        models.move_pointer(pointer, current_obj)
    except WriteConflict as exc:
        raise WriteConflict(
            f"{stage} pointer moved while promoting {version}: {exc.message}",
            where=exc.where,
            fix=exc.fix,
            details={**exc.details, "vsa": vsa_key},
            reason=DeployRefusal.POINTER_RACE_LOST,
            result=report,
        ) from exc
    models.audit(
        "rolled-back" if reason == "rollback" else "promoted",
        version=version,
        stage=stage,
        actor=actor,
        previous=current.version if current else None,
        vsa=vsa_key,
    )
    return Promotion(pointer=pointer, report=report, vsa_key=vsa_key)


def rollback_stage(
    models: ModelRegistry,
    stage: str,
    *,
    keys: KeyDirectory,
    policy: GatePolicy,
    actor: str,
    to_version: str | None = None,
) -> Promotion:
    """Move ``stage`` back to the version it served before (or ``to_version``), re-verified."""
    stage = check_stage(stage)
    current, _ = models.read_pointer(stage)
    if current is None:
        raise InputError(
            f"{models.model} has nothing in {stage} to roll back", where=f"stage:{stage}"
        )
    # The pointer's history is unsigned: only versions with a gate-signed VSA for this
    # stage count as "served before". The target then goes through the full gate again.
    candidates: list[str] = []
    for entry in reversed(current.history):
        version = str(entry.get("version", ""))
        if version == current.version or version in candidates:
            continue
        if passed_gate_before(models, version, stage, keys):
            candidates.append(version)
    if to_version is None:
        if not candidates:
            raise ControlRefused(
                f"{stage} has no earlier version to roll back to",
                where=models.store.describe(models.stage_key(stage)),
                fix="promote a known-good version explicitly with `secmlops promote`",
                reason=DeployRefusal.NOTHING_TO_ROLL_BACK,
            )
        to_version = candidates[0]
    elif to_version not in candidates:
        raise InputError(
            f"{to_version} was never served in {stage} before",
            where="--to-version",
            fix=f"earlier versions: {', '.join(candidates) or 'none'}",
        )
    return promote_to_stage(
        models, to_version, stage, keys=keys, policy=policy, actor=actor, reason="rollback"
    )


def record_approval(
    models: ModelRegistry,
    version: str,
    stage: str,
    *,
    keys: KeyDirectory,
    policy: GatePolicy,
    approve_as: str | None,
    requested_by: str = "",
) -> str:
    """Decide, sign and store an approval of ``version`` for ``stage``; return its key.

    With ``approve_as`` the named approver approves (signed with their own key); without
    it only a dev policy's auto-approval can pass (signed by the attestor, recorded as
    automatic), otherwise ``ControlRefused``. ``requested_by`` (who asked for the deploy,
    "" if unknown) is recorded for separation of duties. The gate later checks who signed it.
    """
    request = approval_request(
        models, version, check_stage(stage), keys=keys, requested_by=requested_by
    )
    if approve_as:
        decision = decide_by_preapproval(request, approve_as, policy.approval)
        private = keys.require(keys.approver_private(approve_as))
        signer = load_private_key(private)
        conflict = duty_conflict(
            approve_as,
            key_id(signer.public_key()),
            request=request,
            policy=policy.approval,
            role_key_ids=role_key_ids(keys),
            staging_approvers=set(request.staging_approvers),
        )
        if conflict:
            raise ControlRefused(
                conflict[1],
                where=f"approval:{request.stage}",
                fix="have another allowed approver approve",
                reason=conflict[0],
                result=request,
            )
    else:
        decision = decide_automatically(request, policy.approval)
        signer = load_private_key(keys.require(keys.private("attestor")))
    bundle = sign_statement(approval_statement(request, decision), signer)
    return store_decision(models, request, bundle, decision)


# --- Prefect -------------------------------------------------------------------------------
