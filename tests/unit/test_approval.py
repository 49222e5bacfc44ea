import pytest

from secmlops.controls.approval import (
    ApprovalPolicy,
    ApprovalRefusal,
    ApprovalRequest,
    approval_statement,
    decide_automatically,
    decide_by_preapproval,
)
from secmlops.errors import ControlRefused, InputError

REQ = ApprovalRequest(
    model="m",
    version="v1",
    model_digest="b" * 64,
    stage="production",
    release_sha256="c" * 64,
)


def test_production_auto_approval_is_rejected_at_construction() -> None:
    with pytest.raises(InputError, match="production"):
        ApprovalPolicy(unsafe_auto_approve_stages=("production",))


def test_stage_without_approvers_is_rejected() -> None:
    with pytest.raises(InputError, match="no approver"):
        ApprovalPolicy(approvers={"staging": ("alice",), "production": ()})


def test_preapproval_requires_an_allowed_approver() -> None:
    policy = ApprovalPolicy(approvers={"staging": ("alice",), "production": ("bob",)})
    with pytest.raises(ControlRefused, match="not an allowed approver") as info:
        decide_by_preapproval(REQ, "alice", policy)
    assert info.value.reason is ApprovalRefusal.APPROVER_NOT_ALLOWED
    assert info.value.result is REQ
    decision = decide_by_preapproval(REQ, "bob", policy)
    assert decision.method == "cli-preapproval" and decision.approved


def test_no_approver_and_no_auto_policy_refuses() -> None:
    with pytest.raises(ControlRefused, match="approval required") as info:
        decide_automatically(REQ, ApprovalPolicy())
    assert info.value.reason is ApprovalRefusal.AUTO_APPROVAL_NOT_ALLOWED


def test_auto_approval_for_staging_is_recorded_as_automatic() -> None:
    policy = ApprovalPolicy(unsafe_auto_approve_stages=("staging",))
    req = ApprovalRequest(
        model="m",
        version="v1",
        model_digest="b" * 64,
        stage="staging",
        release_sha256="c" * 64,
    )
    st = approval_statement(req, decide_automatically(req, policy))
    assert st["predicate"]["method"] == "unsafe-auto-approval"
    assert st["subject"][0]["digest"]["sha256"] == "b" * 64
