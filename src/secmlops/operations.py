"""Operator actions without Prefect: promote, roll back and re-verify a stage.

Each goes through the same deploy gate as the pipeline: a promotion or rollback that does not
verify leaves the stage pointer where it was. The Prefect flows in ``flows/operations.py`` and
the ``secmlops`` CLI both call these.
"""

from __future__ import annotations

import logging

from secmlops.controls.approval import check_stage
from secmlops.deploy import (
    DeployRefusal,
    promote_to_stage,
    record_approval,
    refresh_stage,
    rollback_stage,
)
from secmlops.errors import ControlRefused
from secmlops.evidence.keys import KeyDirectory, check_approver_name
from secmlops.gate import GatePolicy, GateReport, verify_pointer_vsa, verify_release
from secmlops.policy import load_gate_policy, policy_drift
from secmlops.registry.models import ModelRegistry, StagePointer
from secmlops.registry.pointers import SeenPointers

log = logging.getLogger(__name__)


def promote_version(
    models: ModelRegistry,
    version: str,
    stage: str,
    *,
    keys: KeyDirectory,
    approve_as: str | None = None,
    policy: GatePolicy | None = None,
) -> StagePointer:
    """Promote through the gate (recording ``approve_as``'s approval first, if given)."""
    policy = policy or load_gate_policy()
    if approve_as is not None:  # an empty name is refused, never ignored
        check_approver_name(approve_as)
        models.require_version(version)
        record_approval(models, version, stage, keys=keys, policy=policy, approve_as=approve_as)
    actor = approve_as or "operator"
    return promote_to_stage(models, version, stage, keys=keys, policy=policy, actor=actor).pointer


def rollback_version(
    models: ModelRegistry,
    stage: str,
    *,
    keys: KeyDirectory,
    to_version: str | None = None,
    policy: GatePolicy | None = None,
) -> StagePointer:
    """Roll ``stage`` back through the gate."""
    policy = policy or load_gate_policy()
    return rollback_stage(
        models, stage, keys=keys, policy=policy, actor="operator", to_version=to_version
    ).pointer


def verify_stage(
    models: ModelRegistry,
    stage: str,
    *,
    keys: KeyDirectory,
    policy: GatePolicy | None = None,
    seen: SeenPointers | None = None,
) -> tuple[StagePointer, GateReport]:
    """Re-verify what ``stage`` serves now: its signed pointer (fresh, not rolled back) and
    its VSA, then the full deploy gate. ``ControlRefused`` on any problem.

    The policy is loaded (and its signature checked) first: no verdict under a policy that
    does not verify. A VSA issued under another policy is logged as a warning; the gate
    re-judges everything under the policy in force.
    """
    policy = policy or load_gate_policy()
    pointer, _ = models.read_pointer(check_stage(stage))
    if pointer is None:
        raise ControlRefused(
            f"nothing is deployed to {stage}",
            where=f"{models.model}:{stage}",
            reason=DeployRefusal.NOTHING_DEPLOYED,
        )
    verify_pointer_vsa(models, stage, pointer, keys, seen=seen)
    # A production policy accepts no demo key, for the gate's own pointer signature too.
    hint = (pointer.bundle or {}).get("verificationMaterial", {}).get("publicKey", {}).get("hint")
    if isinstance(hint, str):
        policy.require_key_allowed(keys, hint, where=models.store.describe(models.stage_key(stage)))
    drift = policy_drift(models, pointer, policy)
    if drift:
        log.warning("%s", drift)
    report = verify_release(models, pointer.version, stage, keys=keys, policy=policy)
    return pointer, report


def refresh_stage_pointer(
    models: ModelRegistry,
    stage: str,
    *,
    keys: KeyDirectory,
    policy: GatePolicy | None = None,
    seen: SeenPointers | None = None,
) -> tuple[StagePointer, GateReport]:
    """``verify-stage --refresh``: re-verify what the signed stage history says ``stage``
    serves through the full gate and re-sign its pointer (new expiry, higher sequence)."""
    promotion = refresh_stage(
        models,
        check_stage(stage),
        keys=keys,
        policy=policy or load_gate_policy(),
        actor="operator",
        seen=seen,
    )
    return promotion.pointer, promotion.report
