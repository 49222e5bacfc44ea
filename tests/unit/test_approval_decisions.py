"""Approval decisions submitted to a waiting run: verified with the site's approver keys only,
about exactly the release the run waits for, each person counted once, separation of duties;
garbage is a refusal, never a crash. Real keys, a real local registry."""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import pydantic
import pytest
import yaml

from secmlops.audit import verify_audit_log
from secmlops.controls.approval import (
    ApprovalDecision,
    ApprovalPolicy,
    ApprovalRefusal,
    ApprovalRequest,
)
from secmlops.controls.approval_decisions import (
    MAX_DECISION_BYTES,
    anonymous_ui_decision,
    approval_request,
    approvals_needed,
    audit_ignored_decision,
    sign_decision,
    store_decision,
    verify_decision,
)
from secmlops.errors import ControlRefused, InputError
from secmlops.evidence.keys import KeyDirectory
from secmlops.evidence.statements import key_id, load_public_key, verify_bundle
from secmlops.gate import GatePolicy
from secmlops.registry.models import ModelRegistry
from tests.unit.test_catalogue import registered  # noqa: F401 - the fixture

APPROVERS = ("alice", "bob", "carol")
POLICY = GatePolicy(
    approval=ApprovalPolicy(approvers={"staging": ("alice", "bob"), "production": ("bob", "carol")})
)
SOD = GatePolicy(approval=POLICY.approval.model_copy(update={"separation_of_duties": True}))

Setup = tuple[ModelRegistry, KeyDirectory, Path]


@pytest.fixture
def site(registered: Setup) -> Setup:  # noqa: F811 - the imported fixture
    models, keys, tmp_path = registered
    keys.ensure(approvers=APPROVERS)
    return models, keys, tmp_path


def _request(site: Setup, stage: str = "staging", requested_by: str = "") -> ApprovalRequest:
    models, keys, _ = site
    return approval_request(models, "v1", stage, keys=keys, requested_by=requested_by)


def _signed(
    site: Setup, request: ApprovalRequest, approver: str, approve: bool = True
) -> dict[str, Any]:
    _, keys, _ = site
    return sign_decision(
        request,
        approver=approver,
        approve=approve,
        reason="metrics look right",
        private_key=keys.approver_private(approver),
    )


def _refused(
    bundle: object,
    request: ApprovalRequest,
    keys: KeyDirectory,
    policy: GatePolicy = POLICY,
    counted: list[ApprovalDecision] | None = None,
) -> ApprovalRefusal:
    with pytest.raises(ControlRefused) as err:
        verify_decision(bundle, request, keys=keys, policy=policy, counted=counted or [])
    assert isinstance(err.value.reason, ApprovalRefusal)
    return err.value.reason


def test_a_signed_decision_by_an_allowed_approver_counts(site: Setup) -> None:
    _, keys, _ = site
    request = _request(site)
    bundle = _signed(site, request, "alice")
    decision = verify_decision(bundle, request, keys=keys, policy=POLICY, counted=[])
    assert (decision.approver, decision.approved, decision.method) == (
        "alice",
        True,
        "signed-decision",
    )
    assert decision.comment == "metrics look right" and decision.key_id
    # The same bundle as JSON text (what the form carries) verifies the same way.
    assert verify_decision(json.dumps(bundle), request, keys=keys, policy=POLICY, counted=[])
    rejection = _signed(site, request, "bob", approve=False)
    assert not verify_decision(rejection, request, keys=keys, policy=POLICY, counted=[]).approved


@pytest.mark.parametrize(
    "garbage",
    [
        None,
        "",
        "not json {",
        "[1, 2]",
        123,
        ["a"],
        {},
        {"dsseEnvelope": {}},
        {"dsseEnvelope": {"payload": "!!!"}},
        {"dsseEnvelope": {"payload": base64.b64encode(b"[]").decode()}},
        {"dsseEnvelope": {"payload": base64.b64encode(b'{"predicateType": "x"}').decode()}},
        {"x": {1, 2}},
        "x" * (MAX_DECISION_BYTES + 1),
        {"pad": "x" * MAX_DECISION_BYTES},
        b"\xff\xfe",
    ],
)
def test_garbage_is_a_malformed_decision_never_a_crash(site: Setup, garbage: object) -> None:
    _, keys, _ = site
    assert _refused(garbage, _request(site), keys) is ApprovalRefusal.MALFORMED_DECISION


def test_a_decision_with_a_wrong_predicate_or_method_is_malformed(site: Setup) -> None:
    _, keys, _ = site
    request = _request(site)
    bundle = _signed(site, request, "alice")
    statement = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
    statement["predicate"]["method"] = "prefect-ui"
    bundle["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    assert _refused(bundle, request, keys) is ApprovalRefusal.MALFORMED_DECISION
    statement["predicate"]["decision"] = "maybe"
    bundle["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    assert _refused(bundle, request, keys) is ApprovalRefusal.MALFORMED_DECISION


def test_only_the_named_approvers_site_key_verifies(site: Setup, tmp_path: Path) -> None:
    _, keys, _ = site
    request = _request(site)
    # Signed with bob's key but naming alice (the payload names who must have signed).
    forged = sign_decision(
        request,
        approver="alice",
        approve=True,
        reason="",
        private_key=keys.approver_private("bob"),
    )
    assert _refused(forged, request, keys) is ApprovalRefusal.BAD_SIGNATURE
    tampered = _signed(site, request, "alice")
    sig = tampered["dsseEnvelope"]["signatures"][0]
    sig["sig"] = base64.b64encode(b"\x00" * 70).decode()
    assert _refused(tampered, request, keys) is ApprovalRefusal.BAD_SIGNATURE
    # A key the bundle carries is never trusted: dave has a key, but not in the site's dir.
    elsewhere = KeyDirectory(tmp_path / "daves-laptop")
    elsewhere.ensure(approvers=("dave",))
    daves = sign_decision(
        request,
        approver="dave",
        approve=True,
        reason="",
        private_key=elsewhere.approver_private("dave"),
    )
    assert _refused(daves, request, keys) is ApprovalRefusal.UNKNOWN_APPROVER
    with pytest.raises(InputError, match="reserved"):
        sign_decision(
            request,
            approver="prefect-ui",
            approve=True,
            reason="",
            private_key=keys.approver_private("alice"),
        )


def test_an_approver_not_listed_for_the_stage_is_refused(site: Setup) -> None:
    _, keys, _ = site
    request = _request(site)
    refusal = _refused(_signed(site, request, "carol"), request, keys)
    assert refusal is ApprovalRefusal.APPROVER_NOT_ALLOWED


@pytest.mark.parametrize(
    "change",
    [
        {"version": "v2"},
        {"stage": "production"},
        {"model_digest": "0" * 64},
        {"release_sha256": "0" * 64},
        {"requested_by": "mallory"},
        {"model": "other"},
    ],
)
def test_a_decision_about_another_request_is_refused(site: Setup, change: dict[str, str]) -> None:
    _, keys, _ = site
    request = _request(site)
    other = ApprovalRequest(**{**request.__dict__, **change})
    bundle = _signed(site, other, "bob")
    assert _refused(bundle, request, keys) is ApprovalRefusal.WRONG_REQUEST


def test_each_person_and_key_counts_once(site: Setup) -> None:
    """Each approver counts once, and so does each key: the trust root never lists one key
    for two approvers, and a run that counted a key does not count it again for someone
    else after the trust root moved it (alice's key re-listed for bob meanwhile)."""
    _, keys, _ = site
    request = _request(site)
    first = verify_decision(
        _signed(site, request, "alice"), request, keys=keys, policy=POLICY, counted=[]
    )
    again = _signed(site, request, "alice")
    assert _refused(again, request, keys, counted=[first]) is ApprovalRefusal.DUPLICATE_APPROVER
    # bob holding alice's key is alice again: the trust root refuses to list it for bob too.
    alice_key = load_public_key(keys.approver_public("alice"))
    with pytest.raises(InputError, match="approver alice"):
        keys.trust_root().with_key("approver:bob", alice_key)
    # The trust root changes while the run waits: alice's key is now bob's (and only bob's).
    root = keys.trust_root()
    moved = dataclasses.replace(
        root, entries=tuple(e for e in root.entries if e.subject != "approver:alice")
    )
    moved.with_key("approver:bob", alice_key).save()
    bob = sign_decision(
        request,
        approver="bob",
        approve=True,
        reason="metrics look right",
        private_key=keys.approver_private("alice"),
    )
    alone = verify_decision(bob, request, keys=keys, policy=POLICY, counted=[])
    assert (alone.approver, alone.key_id) == ("bob", first.key_id)  # verifies as bob's key
    assert _refused(bob, request, keys, counted=[first]) is ApprovalRefusal.DUPLICATE_APPROVER


def test_separation_of_duties_refuses_the_runs_starter(site: Setup) -> None:
    _, keys, _ = site
    request = _request(site, requested_by="alice")
    bundle = _signed(site, request, "alice")
    assert _refused(bundle, request, keys, policy=SOD) is ApprovalRefusal.SELF_APPROVAL
    assert verify_decision(bundle, request, keys=keys, policy=POLICY, counted=[]).approved
    # A rejection by the starter still counts: it can only stop a deploy.
    no = _signed(site, request, "alice", approve=False)
    assert not verify_decision(no, request, keys=keys, policy=SOD, counted=[]).approved


def test_an_approver_holding_a_pipeline_key_is_a_role_conflict(site: Setup) -> None:
    """One key for a pipeline role and an approver is one person or machine holding two
    duties: the trust root refuses to list it (added, or written into the file by hand), and
    a key file under ``approvers/`` is not what a run trusts, so bob signing with the
    model-signer or attestor key copied there never counts, separation of duties or not."""
    _, keys, _ = site
    request = _request(site)
    for role in ("model-signer", "attestor"):
        role_key = load_public_key(keys.public(role))
        with pytest.raises(InputError, match=role):
            keys.trust_root().with_key("approver:bob", role_key)
        for suffix in ("pem", "pub"):
            shutil.copy(keys.root / f"{role}.{suffix}", keys.root / "approvers" / f"bob.{suffix}")
        keys.ensure(approvers=APPROVERS)  # lists no key a role already holds
        bobs = [e.key_id for e in keys.trust_root().entries_for("approver:bob")]
        assert len(bobs) == 1 and key_id(role_key) not in bobs
        bundle = _signed(site, request, "bob")
        for policy in (SOD, POLICY):
            assert _refused(bundle, request, keys, policy=policy) is ApprovalRefusal.BAD_SIGNATURE
    # Hand-written into the trust root file: it is refused when read, so nothing verifies.
    path = keys.trust_root_file
    raw = yaml.safe_load(path.read_text())
    raw["approvers"]["bob"].append({"public_key": keys.public("model-signer").read_text()})
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(InputError, match="model-signer and for approver bob"):
        keys.trust_root()
    # Refused, never counted (today as UNKNOWN_APPROVER: the unreadable trust root lists no
    # key for bob; InputError naming the file would be as good).
    with pytest.raises((InputError, ControlRefused)):
        verify_decision(_signed(site, request, "bob"), request, keys=keys, policy=SOD, counted=[])


def test_the_staging_approver_may_not_approve_production(site: Setup) -> None:
    _, keys, _ = site
    request = ApprovalRequest(
        **{**_request(site, "production").__dict__, "staging_approvers": ("bob",)}
    )
    bundle = _signed(site, request, "bob")
    assert _refused(bundle, request, keys, policy=SOD) is ApprovalRefusal.SEPARATION_OF_DUTIES
    assert verify_decision(
        _signed(site, request, "carol"), request, keys=keys, policy=SOD, counted=[]
    )


def test_anonymous_ui_decisions_count_for_staging_only_by_default(site: Setup) -> None:
    _, keys, _ = site
    staging = _request(site)
    bundle, decision = anonymous_ui_decision(
        staging, approve=True, reason="", keys=keys, policy=POLICY, counted=[]
    )
    assert (decision.approver, decision.method) == ("prefect-ui", "prefect-ui")
    st = verify_bundle(bundle, keys.trusted("attestor"))
    assert st.predicate["approver"] == "prefect-ui" and st.predicate["decision"] == "approved"
    with pytest.raises(ControlRefused) as err:
        anonymous_ui_decision(
            staging, approve=True, reason="", keys=keys, policy=POLICY, counted=[decision]
        )
    assert err.value.reason is ApprovalRefusal.DUPLICATE_APPROVER
    production = _request(site, "production")
    for approve in (True, False):
        with pytest.raises(ControlRefused) as err:
            anonymous_ui_decision(
                production, approve=approve, reason="", keys=keys, policy=POLICY, counted=[]
            )
        assert err.value.reason is ApprovalRefusal.ANONYMOUS_NOT_ALLOWED


def test_decisions_and_ignored_decisions_are_stored_and_audited(site: Setup) -> None:
    models, keys, _ = site
    request = _request(site)
    bundle = _signed(site, request, "alice", approve=False)
    decision = verify_decision(bundle, request, keys=keys, policy=POLICY, counted=[])
    attestor = keys.signer("attestor")  # the pipeline signs its audit entries
    key = store_decision(models, request, bundle, decision, audit_signer=attestor)
    assert key.rsplit("/", 1)[-1].startswith("approval-staging-")
    audit_ignored_decision(
        models,
        request,
        ControlRefused("x", reason=ApprovalRefusal.BAD_SIGNATURE),
        audit_signer=attestor,
    )
    report = verify_audit_log(models, keys)
    # Both entries verify as attestor-signed (the registration before them is release.py's).
    assert not [p for p in report.problems if p.sequence is not None and p.sequence > 1]
    assert {e.event for e in report.entries} >= {"rejected", "decision-ignored"}
    ignored = next(e for e in report.entries if e.event == "decision-ignored")
    assert ignored.fields["reason"] == "bad_signature"


def test_approval_policy_knobs_are_validated(caplog: pytest.LogCaptureFixture) -> None:
    approvers = {"staging": ("alice", "bob"), "production": ("bob", "carol")}
    two = ApprovalPolicy(approvers=approvers, required_approvals={"production": 2})
    assert approvals_needed(two, "production") == 2
    assert approvals_needed(GatePolicy(approval=two), "staging") == 1
    assert ApprovalPolicy().timeout_seconds == 3600
    assert ApprovalPolicy().anonymous_ui_stages == ("staging",)
    with pytest.raises(InputError, match=">= 1"):
        ApprovalPolicy(required_approvals={"staging": 0})
    with pytest.raises(InputError, match="only 2 distinct"):
        ApprovalPolicy(approvers=approvers, required_approvals={"production": 3})
    with pytest.raises(InputError, match="reserved"):
        ApprovalPolicy(approvers={"staging": ("prefect-ui",), "production": ("bob",)})
    with pytest.raises(pydantic.ValidationError):
        ApprovalPolicy(timeout_seconds=0)
    with pytest.raises(pydantic.ValidationError):
        ApprovalPolicy(anonymous_ui_minutes=3)  # type: ignore[call-arg]
    with caplog.at_level(logging.WARNING, logger="secmlops.controls.approval"):
        ApprovalPolicy(anonymous_ui_stages=("staging", "production"))
    assert "UNSAFE" in caplog.text and "production" in caplog.text
