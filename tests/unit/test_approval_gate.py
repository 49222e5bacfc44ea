"""The deploy gate counts distinct valid approvers per stage (two-person rule), refuses a
rejection newer than the newest approval, counts anonymous UI decisions only where the policy
allows, and applies separation of duties. Real keys, a real local registry; the registered
model's signature is fake, so the gate always refuses and we read its ``approval`` check."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from secmlops.catalogue import GateRefusal
from secmlops.controls.approval import (
    ApprovalDecision,
    ApprovalPolicy,
    ApprovalRequest,
    approval_statement,
)
from secmlops.controls.approval_decisions import approval_request, store_decision
from secmlops.deploy import record_approval, vsa_statement
from secmlops.errors import ControlRefused, InputError
from secmlops.evidence.keys import KeyDirectory
from secmlops.evidence.statements import load_private_key, load_public_key, sign_statement
from secmlops.gate import GateCheck, GatePolicy, GateReport, verify_release
from secmlops.registry.models import ModelRegistry, stamped
from tests.unit.test_catalogue import registered  # noqa: F401 - the fixture

Setup = tuple[ModelRegistry, KeyDirectory, Path]
APPROVERS = {"staging": ("alice", "bob"), "production": ("bob", "carol")}


def _policy(**approval: object) -> GatePolicy:
    return GatePolicy(approval=ApprovalPolicy.model_validate({"approvers": APPROVERS, **approval}))


@pytest.fixture
def site(registered: Setup) -> Setup:  # noqa: F811 - the imported fixture
    models, keys, tmp_path = registered
    keys.ensure(approvers=("alice", "bob", "carol"))
    return models, keys, tmp_path


def _request(site: Setup, stage: str = "staging", requested_by: str = "") -> ApprovalRequest:
    models, keys, _ = site
    return approval_request(models, "v1", stage, keys=keys, requested_by=requested_by)


def _decide(
    site: Setup,
    request: ApprovalRequest,
    approver: str,
    at: str,
    *,
    approved: bool = True,
) -> str:
    """Store ``approver``'s decision decided at ``at`` (attestor-signed for prefect-ui)."""
    models, keys, _ = site
    anonymous = approver == "prefect-ui"
    decision = ApprovalDecision(
        approver=approver,
        approved=approved,
        method="prefect-ui" if anonymous else "signed-decision",
        comment="because",
        decided_at=at,
    )
    private = keys.private("attestor") if anonymous else keys.approver_private(approver)
    bundle = sign_statement(approval_statement(request, decision), load_private_key(private))
    return store_decision(models, request, bundle, decision)


def _ago(**delta: float) -> str:
    """A decision time ``delta`` (timedelta arguments) before now, as statements write it."""
    when = dt.datetime.now(dt.UTC) - dt.timedelta(**delta)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def _approval(site: Setup, policy: GatePolicy, stage: str = "staging") -> GateCheck:
    models, keys, _ = site
    with pytest.raises(ControlRefused) as err:
        verify_release(models, "v1", stage, keys=keys, policy=policy)
    report: GateReport = err.value.result
    return {c.name: c for c in report.checks}["approval"]


def test_two_person_rule_needs_two_distinct_approvers(site: Setup) -> None:
    two = _policy(required_approvals={"staging": 2})
    request = _request(site)
    _decide(site, request, "alice", "2024-01-01T00:00:01Z")
    assert _approval(site, _policy()).passed
    check = _approval(site, two)
    assert check.reason is GateRefusal.NOT_ENOUGH_APPROVALS and "1 of 2" in check.detail
    _decide(site, request, "alice", "2024-01-01T00:00:02Z")  # the same person again
    assert _approval(site, two).reason is GateRefusal.NOT_ENOUGH_APPROVALS
    _decide(site, request, "bob", "2024-01-01T00:00:03Z")
    check = _approval(site, two)
    assert check.passed, check.detail
    assert "alice" in check.detail and "bob" in check.detail and len(check.evidence) == 2


def test_anonymous_ui_approval_counts_for_staging_not_production(site: Setup) -> None:
    _decide(site, _request(site), "prefect-ui", "2024-01-01T00:00:01Z")
    assert _approval(site, _policy()).passed
    assert _approval(site, _policy(anonymous_ui_stages=[])).reason is (
        GateRefusal.ANONYMOUS_NOT_ALLOWED
    )
    # Counts once: with two required, one anonymous decision and nobody else is not enough.
    _decide(site, _request(site), "prefect-ui", "2024-01-01T00:00:02Z")
    two = _policy(required_approvals={"staging": 2})
    assert _approval(site, two).reason is GateRefusal.NOT_ENOUGH_APPROVALS
    _decide(site, _request(site, "production"), "prefect-ui", "2024-01-01T00:00:03Z")
    assert _approval(site, _policy(), "production").reason is GateRefusal.ANONYMOUS_NOT_ALLOWED


def test_a_rejection_newer_than_the_newest_approval_blocks(site: Setup) -> None:
    request = _request(site)
    _decide(site, request, "alice", "2024-01-01T00:00:01Z")
    _decide(site, request, "bob", "2024-01-01T00:00:02Z", approved=False)
    check = _approval(site, _policy())
    assert check.reason is GateRefusal.APPROVAL_REJECTED and "bob rejected" in check.detail
    _decide(site, request, "alice", "2024-01-01T00:00:03Z")  # approved again afterwards
    assert _approval(site, _policy()).passed
    # An anonymous rejection counts where anonymous decisions do.
    _decide(site, request, "prefect-ui", "2024-01-01T00:00:04Z", approved=False)
    assert _approval(site, _policy()).reason is GateRefusal.APPROVAL_REJECTED


def test_a_rejection_alone_is_a_rejection(site: Setup) -> None:
    _decide(site, _request(site), "bob", "2024-01-01T00:00:01Z", approved=False)
    assert _approval(site, _policy()).reason is GateRefusal.APPROVAL_REJECTED


def test_separation_of_duties_at_the_gate(site: Setup) -> None:
    sod = _policy(separation_of_duties=True)
    _decide(site, _request(site, requested_by="alice"), "alice", "2024-01-01T00:00:01Z")
    assert _approval(site, _policy()).passed
    assert _approval(site, sod).reason is GateRefusal.SELF_APPROVAL


def test_an_approval_key_that_is_the_model_signer_key_is_refused(site: Setup) -> None:
    """An approver holding a pipeline role key (bob = the model-signer key): the trust root
    refuses to list one key for two subjects, so such a key never verifies an approval."""
    _, keys, _ = site
    model_signer = load_public_key(keys.public("model-signer"))
    with pytest.raises(InputError, match="model-signer"):
        keys.trust_root().with_key("approver:bob", model_signer)


def test_production_approver_must_differ_from_the_staging_approvers(site: Setup) -> None:
    models, keys, _ = site
    sod = _policy(separation_of_duties=True)
    request = _request(site)
    # A gate-signed staging VSA that counted alice and bob (two-person rule).
    report = GateReport(
        model="churn",
        version="v1",
        stage="staging",
        model_digest=request.model_digest,
        release_sha256=request.release_sha256,
        approver="alice",
        approval_method="signed-decision",
        approvals=[("alice", "signed-decision"), ("bob", "signed-decision")],
        checks=[GateCheck("approval", True, "ok")],
    )
    vsa = sign_statement(vsa_statement(models, report, sod), load_private_key(keys.private("gate")))
    models.put_evidence("v1", stamped("vsa-staging"), vsa)
    production = _request(site, "production")
    assert set(production.staging_approvers) == {"alice", "bob"}
    # Recent: production approvals expire after 30 days unless the policy says otherwise.
    _decide(site, production, "bob", _ago(seconds=2))
    assert _approval(site, sod, "production").reason is GateRefusal.SEPARATION_OF_DUTIES
    _decide(site, production, "carol", _ago(seconds=1))
    assert _approval(site, sod, "production").passed


def test_record_approval_keeps_working(site: Setup) -> None:
    models, keys, _ = site
    policy = GatePolicy()  # demo-approver for both stages
    key = record_approval(
        models, "v1", "staging", keys=keys, policy=policy, approve_as="demo-approver"
    )
    assert key.rsplit("/", 1)[-1].startswith("approval-staging-")
    check = _approval(site, policy)
    assert check.passed and "demo-approver (cli-preapproval)" in check.detail
    sod = GatePolicy(approval=ApprovalPolicy(separation_of_duties=True))
    with pytest.raises(ControlRefused) as err:
        record_approval(
            models,
            "v1",
            "staging",
            keys=keys,
            policy=sod,
            approve_as="demo-approver",
            requested_by="demo-approver",
        )
    assert err.value.reason is not None and err.value.reason.value == "self_approval"
