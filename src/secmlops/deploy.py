"""Staged deploy: move a stage pointer only after the deploy gate verified everything.

``promote_to_stage`` runs :func:`secmlops.gate.verify_release`, writes a signed SLSA
Verification Summary (VSA) for the version and stage, then publishes a gate-signed stage
pointer (:mod:`secmlops.registry.pointers`): it claims the next sequence in the signed stage
history create-only and moves the pointer by compare-and-swap. ``rollback_stage`` takes the
stage back to a version it served before, through the same gate, with a new, higher
sequence; ``refresh_stage`` re-verifies and re-signs an expiring pointer. Every outcome,
refusals included, goes to the signed audit log (:mod:`secmlops.audit`): an ``intent``
before the pointer moves and an ``outcome`` after.
"""

from __future__ import annotations

import contextlib
import uuid
from dataclasses import dataclass

from secmlops.controls.approval import (
    approval_statement,
    check_stage,
    decide_automatically,
    decide_by_preapproval,
    duty_conflict,
)
from secmlops.controls.approval_decisions import approval_request, store_decision
from secmlops.controls.revocation import load_revocations
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
    stamped,
)
from secmlops.registry.pointers import (
    POINTER_VALID_DAYS,
    SeenPointers,
    history_tip,
    new_pointer,
    role_signer,
    sign_pointer,
    verify_pointer_signature,
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
    vsa = VsaPredicate(
        verifier=Verifier(id=VERIFIER_ID),
        time_verified=utc_now(),
        resource_uri=models.store.describe(models.version_prefix(report.version)),
        # The signed policy in force: its file digest, signer and expiry.
        policy=policy.descriptor(report.stage),
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
    seen: SeenPointers | None = None,
) -> Promotion:
    """Verify ``version`` for ``stage``, write its VSA, and move the stage pointer to it.

    The new pointer is signed by the gate, takes the next sequence of the signed stage
    history and links to its newest entry. The audit log gets an ``intent`` (gate-signed)
    before the pointer moves and an ``outcome`` after; a lost race is audited
    (``race-lost``) and its VSA marked ``superseded``. ``reason``: ``promote``,
    ``rollback`` or ``refresh``. ``seen``: where this machine remembers verified pointers
    (default :meth:`SeenPointers.default`).
    """
    stage = check_stage(stage)
    gate_signer = role_signer(keys, "gate")
    policy_digest = policy.digest  # the signed policy file in force
    # Read before the (long) gate run: a promotion that lands meanwhile takes our sequence.
    current, current_obj = models.read_pointer(stage)
    tip, taken = history_tip(models, stage, keys.trusted("gate"))
    sequence = max(taken, _signed_sequence(models, current, keys, stage)) + 1
    try:
        report = verify_release(models, version, stage, keys=keys, policy=policy)
    except Exception as exc:
        # Every outcome is audited, a crash included; the audit write must not mask the cause.
        with contextlib.suppress(Exception):
            models.audit(
                "refused" if isinstance(exc, ControlRefused) else "failed",
                signer=gate_signer,
                version=version,
                stage=stage,
                actor=actor,
                action=reason,
                policyDigest=policy_digest,
                policy=policy.audit_record(),
                error=str(exc),
                details=exc.details if isinstance(exc, SecMLOpsError) else {},
            )
        raise
    bundle = sign_statement(vsa_statement(models, report, policy), gate_signer)
    vsa_key, vsa_sha = models.put_evidence(version, stamped(f"vsa-{stage}"), bundle)
    pointer = sign_pointer(
        new_pointer(
            model=models.model,
            stage=stage,
            version=version,
            model_digest=report.model_digest,
            vsa=vsa_key,
            vsa_sha256=vsa_sha,
            actor=actor,
            reason=reason,
            tip=tip,
            sequence=sequence,
            valid_days=int(getattr(policy, "pointer_valid_days", POINTER_VALID_DAYS)),
            history_limit=HISTORY_LIMIT,
        ),
        gate_signer,
    )
    operation = uuid.uuid4().hex
    facts = {
        "operation": operation,
        "version": version,
        "stage": stage,
        "vsa": vsa_key,
        "vsaSha256": vsa_sha,
        "sequence": sequence,
        # Every entry of the pointer move names the signed policy it happened under.
        "policyDigest": policy_digest,
    }
    models.audit(
        "intent",
        signer=gate_signer,
        action=reason,
        actor=actor,
        previous=tip.version if tip else None,
        policy=policy.audit_record(),
        **facts,
    )
    try:
        models.move_pointer(pointer, current_obj)
    except WriteConflict as exc:
        models.audit("outcome", signer=gate_signer, result="race-lost", error=str(exc), **facts)
        models.audit(
            "superseded",
            signer=gate_signer,
            reason="lost the race to move the stage pointer; this VSA never served",
            **facts,
        )
        command = (
            f"secmlops rollback {models.model} --stage {stage}"
            if reason == "rollback"
            else f"secmlops promote {models.model} {version} --stage {stage}"
        )
        raise WriteConflict(
            f"{stage} pointer moved while promoting {version}: {exc.message}",
            where=exc.where,
            # The store's own fix (register a new version) is wrong here: nothing of this
            # version was overwritten; another promotion simply moved the pointer first.
            fix=f"another promotion moved the {stage} pointer first and {version} was not "
            f"deployed (its VSA is marked superseded); check what {stage} serves now and, "
            f"if {version} should still go there, re-run `{command}`",
            details={**exc.details, "vsa": vsa_key, "superseded": True},
            reason=DeployRefusal.POINTER_RACE_LOST,
            result=report,
        ) from exc
    except Exception as exc:
        with contextlib.suppress(Exception):
            models.audit("outcome", signer=gate_signer, result="failed", error=str(exc), **facts)
        raise
    models.audit(
        "outcome",
        signer=gate_signer,
        result=_DONE.get(reason, "promoted"),
        pointerSha256=pointer.sha256,
        **facts,
    )
    (seen or SeenPointers.default()).remember(models, pointer, stage=stage)
    return Promotion(pointer=pointer, report=report, vsa_key=vsa_key)


_DONE = {"promote": "promoted", "rollback": "rolled-back", "refresh": "refreshed"}


def _signed_sequence(
    models: ModelRegistry, current: StagePointer | None, keys: KeyDirectory, stage: str
) -> int:
    """The stored pointer's sequence if the gate signed it (0 otherwise): a new pointer
    must go above it even if its history entry is gone, or readers that saw it refuse."""
    if current is None:
        return 0
    try:
        verify_pointer_signature(models, current, keys.trusted("gate"), stage=stage)
    except ControlRefused:
        return 0
    return current.sequence


def _signed_history(
    models: ModelRegistry, stage: str, keys: KeyDirectory
) -> tuple[StagePointer | None, list[dict[str, object]]]:
    """The stage's newest gate-signed history entry and what it served before (newest
    last). Without a signed history (a pointer from before issue 8): the stored pointer
    and its unsigned history; each candidate is re-verified through the gate anyway."""
    tip, _ = history_tip(models, stage, keys.trusted("gate"))
    if tip is not None:
        return tip, [*tip.history]
    current, _ = models.read_pointer(stage)
    return current, list(current.history) if current else []


def rollback_stage(
    models: ModelRegistry,
    stage: str,
    *,
    keys: KeyDirectory,
    policy: GatePolicy,
    actor: str,
    to_version: str | None = None,
    seen: SeenPointers | None = None,
) -> Promotion:
    """Move ``stage`` back to the version it served before (or ``to_version``), re-verified.

    Candidates come from the signed stage history (what the newest gate-signed pointer
    says the stage served before), skipping versions whose VSA was superseded; the rollback
    writes a new pointer with a higher sequence, so it verifies like any promotion.
    """
    stage = check_stage(stage)
    current, history = _signed_history(models, stage, keys)
    if current is None:
        raise InputError(
            f"{models.model} has nothing in {stage} to roll back", where=f"stage:{stage}"
        )
    # Only versions with a gate-signed (not superseded) VSA for this stage count as
    # "served before". The target then goes through the full gate again.
    # A revoked version is skipped: rolling back to it would only be refused by the gate.
    revoked = load_revocations(models, keys=keys, policy=policy.approval)
    candidates: list[str] = []
    for entry in reversed(history):
        version = str(entry.get("version", ""))
        if version == current.version or version in candidates:
            continue
        if revoked.of_version(version, str(entry.get("modelDigest") or "") or None):
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
        models,
        to_version,
        stage,
        keys=keys,
        policy=policy,
        actor=actor,
        reason="rollback",
        seen=seen,
    )


def refresh_stage(
    models: ModelRegistry,
    stage: str,
    *,
    keys: KeyDirectory,
    policy: GatePolicy,
    actor: str,
    seen: SeenPointers | None = None,
) -> Promotion:
    """Re-verify what the signed stage history says ``stage`` serves through the full gate
    (under today's policy) and re-sign its pointer with a new expiry and a higher sequence.

    The answer to an expired pointer. The version comes from the newest gate-signed
    history entry, never from an unsigned or replayed pointer.
    """
    stage = check_stage(stage)
    tip, _ = history_tip(models, stage, keys.trusted("gate"))
    if tip is None:
        raise ControlRefused(
            f"{stage} has no gate-signed pointer to refresh",
            where=models.store.describe(models.stage_key(stage)),
            fix=f"promote a version: `secmlops promote {models.model} VERSION --stage {stage}`",
            reason=DeployRefusal.NOTHING_DEPLOYED,
        )
    return promote_to_stage(
        models,
        tip.version,
        stage,
        keys=keys,
        policy=policy,
        actor=actor,
        reason="refresh",
        seen=seen,
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
    # The audit entry is signed by whoever signed the decision: the approver (on their own
    # machine, with no pipeline key there), or the attestor for an automatic one.
    return store_decision(models, request, bundle, decision, audit_signer=signer)


# --- Prefect -------------------------------------------------------------------------------
