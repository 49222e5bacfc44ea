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

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

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
#: The approver name of an anonymous decision from the Prefect UI's form (attestor-signed).
PREFECT_UI_APPROVER = "prefect-ui"
#: The approver name of a dev-only automatic approval (attestor-signed).
AUTO_APPROVER = "auto"
#: Names no person may have in the policy: they stand for attestor-signed decisions.
RESERVED_APPROVERS = frozenset({PREFECT_UI_APPROVER, AUTO_APPROVER})


class ApprovalRefusal(RefusalReason):
    """Why the approval control refused to approve (``ControlRefused.reason``)."""

    APPROVER_NOT_ALLOWED = "approver_not_allowed"
    """The named approver is not listed for the stage in the approval policy."""
    AUTO_APPROVAL_NOT_ALLOWED = "auto_approval_not_allowed"
    """No approver was given and the policy does not auto-approve this stage."""
    MALFORMED_DECISION = "malformed_decision"
    """The submitted decision is not a signed approval statement (garbage, wrong shape)."""
    BAD_SIGNATURE = "bad_signature"
    """The decision does not verify with the named approver's public key."""
    UNKNOWN_APPROVER = "unknown_approver"
    """The site key directory holds no public key for the named approver."""
    WRONG_REQUEST = "wrong_request"
    """The decision is about another model, version, stage, digest or release manifest."""
    DUPLICATE_APPROVER = "duplicate_approver"
    """This approver (or their key) was already counted for this stage."""
    SELF_APPROVAL = "self_approval"
    """Separation of duties: the approver is whoever started the run."""
    SIGNER_ROLE_CONFLICT = "signer_role_conflict"
    """The approver's key is a pipeline role key (model-signer under separation of duties;
    attestor or gate always)."""
    SEPARATION_OF_DUTIES = "separation_of_duties"
    """Separation of duties: the production approver also approved staging."""
    ANONYMOUS_NOT_ALLOWED = "anonymous_not_allowed"
    """An anonymous Prefect UI decision for a stage not in ``anonymous_ui_stages``."""
    REJECTED = "rejected"
    """An approver rejected the release for the stage."""
    TIMED_OUT = "timed_out"
    """Not enough valid approvals arrived within the policy's ``timeout_seconds``."""
    DECISION_IGNORED = "decision_ignored"
    """A submitted decision was not counted by the run (its own reason says why)."""


def check_stage(stage: str) -> Stage:
    """Validate a stage name (``staging`` or ``production``)."""
    if stage == "staging":
        return "staging"
    if stage == "production":
        return "production"
    raise InputError(f"unknown stage {stage!r}", where="stage", fix="use staging or production")


class ApprovalPolicy(BaseModel):
    """Who may approve which stage, how many must, and how. Auto-approval is dev-only and
    never for production; an anonymous Prefect UI decision for production logs UNSAFE."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    approvers: Mapping[str, tuple[str, ...]] = {
        "staging": ("demo-approver",),
        "production": ("demo-approver",),
    }
    #: Stages a dev setup lets pass without a person (recorded as automatic in the evidence).
    unsafe_auto_approve_stages: tuple[Stage, ...] = ()
    #: Stages where an anonymous decision from the Prefect UI form counts (as one approver,
    #: ``prefect-ui``, signed by the attestor). Prefect OSS has no user identity.
    anonymous_ui_stages: tuple[Stage, ...] = ("staging",)
    #: Distinct approvers each stage needs (2 = two-person rule); a stage not listed needs 1.
    required_approvals: Mapping[Stage, int] = {"staging": 1, "production": 1}
    #: How long a run waits for enough valid decisions before it is refused.
    timeout_seconds: int = Field(default=3600, ge=1)
    #: A saved Prefect notification block (``<block-type-slug>/<name>``, e.g.
    #: ``slack-webhook/approvals`` or ``custom-webhook/approvals``) told, with a link to the
    #: run, whenever a run waits for approval. ``None``: nobody is notified.
    notify_block: str | None = Field(
        default=None, pattern=r"^[a-z0-9][a-z0-9-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$"
    )
    #: Production must be approved by someone other than whoever approved staging; no
    #: approver may be whoever started the run, nor hold the model-signer key.
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
                if name in RESERVED_APPROVERS:
                    raise InputError(
                        f"approver name {name!r} is reserved",
                        where="ApprovalPolicy.approvers",
                        fix="it names attestor-signed decisions; give the person another name",
                    )
        return dict(value)

    @field_validator("required_approvals")
    @classmethod
    def _check_required(cls, value: Mapping[Stage, int]) -> Mapping[Stage, int]:
        for stage, count in value.items():
            check_stage(stage)
            if isinstance(count, bool) or not isinstance(count, int) or count < 1:
                raise InputError(
                    f"required_approvals for {stage} must be a whole number >= 1, not {count!r}",
                    where="ApprovalPolicy.required_approvals",
                    fix="use 1 (one approver) or 2 (two-person rule)",
                )
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
        for stage in STAGES:
            possible = len(set(self.allowed(stage)))
            possible += stage in self.anonymous_ui_stages
            possible += stage in self.unsafe_auto_approve_stages
            if self.needed(stage) > possible:
                raise InputError(
                    f"{stage} needs {self.needed(stage)} approvals but only {possible} "
                    "distinct approvers can give one",
                    where="ApprovalPolicy.required_approvals",
                    fix=f"list more approvers for {stage} or lower required_approvals",
                )
        if self.unsafe_auto_approve_stages:
            log.warning(
                "UNSAFE: auto-approval enabled for %s (dev only; recorded in evidence)",
                ", ".join(self.unsafe_auto_approve_stages),
            )
        if "production" in self.anonymous_ui_stages:
            log.warning(
                "UNSAFE: an anonymous Prefect UI decision counts as an approval for production "
                "(anyone who can open the UI can approve; recorded as prefect-ui in evidence)"
            )
        return self

    def allowed(self, stage: str) -> tuple[str, ...]:
        """The named approvers the policy lists for ``stage``."""
        return tuple(self.approvers.get(check_stage(stage), ()))

    def needed(self, stage: str) -> int:
        """How many distinct valid approvals ``stage`` needs."""
        return int(self.required_approvals.get(check_stage(stage), 1))


@dataclass(frozen=True)
class ApprovalRequest:
    """What is being approved: one model digest for one stage."""

    model: str
    version: str
    model_digest: str
    stage: Stage
    release_sha256: str
    summary: str = ""
    #: Who started the run ("" when unknown); under separation of duties they cannot approve.
    requested_by: str = ""
    #: Who approved staging, as the gate's staging VSAs record (production requests only).
    #: Context for checking decisions; not part of what is approved.
    staging_approvers: tuple[str, ...] = ()


@dataclass(frozen=True)
class ApprovalDecision:
    """A decision and who made it, how (``key_id``: the key that signed it, when verified)."""

    approver: str
    approved: bool
    method: DecisionMethod
    comment: str = ""
    decided_at: str = ""
    key_id: str = ""


def duty_conflict(
    approver: str,
    key_id: str,
    *,
    request: ApprovalRequest,
    policy: ApprovalPolicy,
    role_key_ids: Mapping[str, str],  # key id -> role
    staging_approvers: frozenset[str] | set[str] = frozenset(),
) -> tuple[ApprovalRefusal, str] | None:
    """Why ``approver`` (signing with ``key_id``; "" for attestor-signed decisions) may not
    approve ``request``; ``None`` if they may.

    The attestor and gate keys never sign a person's approval. Under separation of duties
    the model-signer key may not either, the approver may not be whoever started the run,
    and the production approver may not have approved staging.
    """
    sod = policy.separation_of_duties
    for role_kid, role in role_key_ids.items():  # key id -> role
        if key_id and key_id == role_kid and (role != "model-signer" or sod):
            return (
                ApprovalRefusal.SIGNER_ROLE_CONFLICT,
                f"{approver}'s key is the pipeline's {role} key",
            )
    if not sod:
        return None
    if request.requested_by and approver == request.requested_by:
        return (
            ApprovalRefusal.SELF_APPROVAL,
            f"{approver} started this run and may not approve it (separation of duties)",
        )
    if approver in staging_approvers:  # given for production requests only
        return (
            ApprovalRefusal.SEPARATION_OF_DUTIES,
            f"{approver} also approved staging (separation of duties)",
        )
    return None


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


def request_record(request: ApprovalRequest) -> ApprovalRequestRecord:
    """What the approver signs off on: the request minus context (``staging_approvers``)."""
    fields = asdict(request)
    fields.pop("staging_approvers")
    return ApprovalRequestRecord.model_validate(fields)


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
                request=request_record(request),
            )
        ),
    )
