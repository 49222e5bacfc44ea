"""The approval control: a named person approves one model digest for one stage.

An approval is an in-toto statement (``PREDICATE_APPROVAL``) about the model digest, signed
with the approver's own key, so the deploy gate can check *who* approved *what* for *which
stage*. Decisions come from a provider: today ``--approve-as NAME`` on the command line
(the person running the pipeline approves up front, recorded as such) or an explicit
dev-only auto-approval policy; the Prefect UI pause plugs in as another provider.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator, model_validator

from secmlops.errors import ControlRefused, InputError, RefusalReason
from secmlops.evidence.keys import check_approver_name
from secmlops.evidence.predicates import (
    ApprovalMethod,
    ApprovalPredicate,
    ApprovalRequestRecord,
    Sha256Ref,
    StageName,
    dump_predicate,
)
from secmlops.evidence.statements import PREDICATE_APPROVAL, Subject, make_statement, utc_now

log = logging.getLogger(__name__)

STAGES = ("staging", "production")
Stage = StageName
DecisionMethod = ApprovalMethod


class ApprovalRefusal(RefusalReason):
    """Why the approval control refused to approve (``ControlRefused.reason``)."""

    APPROVER_NOT_ALLOWED = "approver_not_allowed"
    """The named approver is not listed for the stage in the approval policy."""
    AUTO_APPROVAL_NOT_ALLOWED = "auto_approval_not_allowed"
    """No approver was given and the policy does not auto-approve this stage."""


def check_stage(stage: str) -> Stage:
    """Validate a stage name (``staging`` or ``production``)."""
    if stage == "staging":
        return "staging"
    if stage == "production":
        return "production"
    raise InputError(f"unknown stage {stage!r}", where="--stage", fix="use staging or production")


class ApprovalPolicy(BaseModel):
    """Who may approve which stage. Auto-approval is dev-only and never for production."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    approvers: Mapping[str, tuple[str, ...]] = {
        "staging": ("demo-approver",),
        "production": ("demo-approver",),
    }
    #: Stages a dev setup lets pass without a person (recorded as automatic in the evidence).
    unsafe_auto_approve_stages: tuple[Stage, ...] = ()
    #: Production must be approved by someone other than whoever approved staging.
    separation_of_duties: bool = False

    @field_validator("approvers")
    @classmethod
    def _check_approvers(
        cls, value: Mapping[str, tuple[str, ...]]
    ) -> Mapping[str, tuple[str, ...]]:
        for stage, names in value.items():
            check_stage(stage)
            for name in names:
                check_approver_name(name)
        return dict(value)

    @model_validator(mode="after")
    def _check_coverage(self) -> ApprovalPolicy:
        if "production" in self.unsafe_auto_approve_stages:
            raise InputError(
                "auto-approval for production is not allowed",
                where="ApprovalPolicy.unsafe_auto_approve_stages",
                fix="remove production; production always needs a named approver",
            )
        for stage in STAGES:
            if not self.approvers.get(stage) and stage not in self.unsafe_auto_approve_stages:
                raise InputError(
                    f"no approver configured for stage {stage}",
                    where="ApprovalPolicy.approvers",
                    fix=f"list at least one approver for {stage}",
                )
        if self.unsafe_auto_approve_stages:
            log.warning(
                "UNSAFE: auto-approval enabled for %s (dev only; recorded in evidence)",
                ", ".join(self.unsafe_auto_approve_stages),
            )
        return self

    def allowed(self, stage: str) -> tuple[str, ...]:
        return tuple(self.approvers.get(check_stage(stage), ()))


@dataclass(frozen=True)
class ApprovalRequest:
    """What is being approved: one model digest for one stage."""

    model: str
    version: str
    model_digest: str
    stage: Stage
    release_sha256: str
    summary: str = ""


@dataclass(frozen=True)
class ApprovalDecision:
    """A decision and who made it, how."""

    approver: str
    approved: bool
    method: DecisionMethod
    comment: str = ""
    decided_at: str = ""


def decide_by_preapproval(
    request: ApprovalRequest, approver: str, policy: ApprovalPolicy, comment: str = ""
) -> ApprovalDecision:
    """The person running the pipeline approves up front (``--approve-as NAME``)."""
    check_approver_name(approver)
    if approver not in policy.allowed(request.stage):
        raise ControlRefused(
            f"{approver} is not an allowed approver for {request.stage}",
            where=f"approval:{request.stage}",
            fix=f"allowed approvers: {', '.join(policy.allowed(request.stage)) or 'none'}",
            reason=ApprovalRefusal.APPROVER_NOT_ALLOWED,
            result=request,
        )
    return ApprovalDecision(
        approver=approver,
        approved=True,
        method="cli-preapproval",
        comment=comment or f"approved up front with --approve-as {approver}",
        decided_at=utc_now(),
    )


def decide_automatically(request: ApprovalRequest, policy: ApprovalPolicy) -> ApprovalDecision:
    """Dev-only auto-approval; refused unless the policy names this stage."""
    if request.stage not in policy.unsafe_auto_approve_stages:
        raise ControlRefused(
            f"approval required for {request.stage}: no approver was given",
            where=f"approval:{request.stage}",
            fix="rerun with --approve-as NAME (an allowed approver with a key), "
            "or allow dev auto-approval for this stage in the approval policy",
            reason=ApprovalRefusal.AUTO_APPROVAL_NOT_ALLOWED,
            result=request,
        )
    return ApprovalDecision(
        approver="auto",
        approved=True,
        method="unsafe-auto-approval",
        comment="approved automatically by a dev-only policy",
        decided_at=utc_now(),
    )


def approval_statement(request: ApprovalRequest, decision: ApprovalDecision) -> dict[str, Any]:
    """The in-toto statement an approver signs: decision about this model digest and stage."""
    return make_statement(
        [Subject("model", request.model_digest)],
        PREDICATE_APPROVAL,
        dump_predicate(
            ApprovalPredicate(
                model=request.model,
                version=request.version,
                stage=request.stage,
                decision="approved" if decision.approved else "rejected",
                approver=decision.approver,
                method=decision.method,
                comment=decision.comment,
                decided_at=decision.decided_at or utc_now(),
                release=Sha256Ref(sha256=request.release_sha256),
                request=ApprovalRequestRecord.model_validate(asdict(request)),
            )
        ),
    )
