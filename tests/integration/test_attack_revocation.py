"""Issue 8 attack 5: no revocation, approvals never expire, a rejection does not override an
earlier approval.

Old behaviour (each test says which part): an approval once stored counted forever; nothing
could withdraw it, a version or a key; a rejection newer than *some* approvals but older than
the newest one was ignored (so with two approvals needed, ``alice`` approves, ``bob``
rejects, ``carol`` approves passed); production approvals had no age limit unless the policy
set one. Now a signed revocation (by an allowed approver or the policy owner) withdraws an
approval, a version (every stage; rollback skips it) or a key (what it signed from then on),
a rejection overrides every approval decided before it, and production approvals expire
after 30 days by default.

A real registered version (every writer's real evidence, a real model-signing signature,
real keys and trust root, a local registry) so the full gate passes before each attack.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from secmlops.catalogue import GateRefusal
from secmlops.controls.approval import ApprovalDecision, ApprovalPolicy, approval_statement
from secmlops.controls.approval_decisions import approval_request, store_decision
from secmlops.controls.model_scan import model_scan_statement, scan_model_files
from secmlops.controls.revocation import (
    PREDICATE_REVOCATION,
    RevocationKind,
    RevocationRefusal,
    load_revocations,
    revoke,
    revoked_version,
)
from secmlops.controls.signing import sign_model
from secmlops.controls.smoke_test import SmokeTestResult, smoke_test_statement
from secmlops.deploy import vsa_statement
from secmlops.errors import ControlRefused
from secmlops.evidence.keys import KeyDirectory
from secmlops.evidence.statements import (
    Subject,
    key_id,
    load_private_key,
    load_public_key,
    make_statement,
    sign_statement,
)
from secmlops.gate import GateCheck, GatePolicy, GateReport, verify_release
from secmlops.registry.models import ModelRegistry, canonical_json, stamped
from secmlops.registry.stores import LocalRegistry
from secmlops.release import ReleaseEvidence, ReleaseInputs, register_release
from tests.unit import test_predicates as writers
from tests.unit.test_catalogue import IMAGE, SITE, D

MODEL = "churn"
APPROVERS = {"staging": ["alice", "bob", "carol"], "production": ["bob", "carol"]}
PEOPLE = ("alice", "bob", "carol", "mallory")


def ago(**delta: float) -> str:
    """A time ``delta`` (timedelta arguments) before now, as statements write it."""
    return (dt.datetime.now(dt.UTC) - dt.timedelta(**delta)).strftime("%Y-%m-%dT%H:%M:%SZ")


def policy(approval: dict[str, Any] | None = None, **changes: Any) -> GatePolicy:
    """The test site's gate policy: ``APPROVERS`` (updated by ``approval``), ``changes``."""
    approvals = ApprovalPolicy.model_validate({"approvers": APPROVERS, **(approval or {})})
    return GatePolicy(sources=SITE, approval=approvals, **changes)


@dataclass
class World:
    """A registered, signed version ``v1`` of ``churn`` in a local registry, with keys for
    every role (policy owner included) and for alice, bob, carol and mallory."""

    models: ModelRegistry
    keys: KeyDirectory
    root: Path

    def decide(
        self, stage: str, approver: str, at: str | None = None, *, approved: bool = True
    ) -> str:
        """Store ``approver``'s signed decision on v1 for ``stage`` decided at ``at``."""
        request = approval_request(
            self.models, "v1", stage, keys=self.keys, requested_by="", policy=policy()
        )
        decision = ApprovalDecision(
            approver=approver,
            approved=approved,
            method="signed-decision",
            comment="looks fine" if approved else "not this one",
            decided_at=at or ago(seconds=0),
        )
        signer = load_private_key(self.keys.approver_private(approver))
        bundle = sign_statement(approval_statement(request, decision), signer)
        return store_decision(self.models, request, bundle, decision)

    def gate(self, stage: str, gate_policy: GatePolicy | None = None) -> GateReport:
        """The gate's report for v1 -> ``stage``, whether it passed or not."""
        try:
            return verify_release(
                self.models, "v1", stage, keys=self.keys, policy=gate_policy or policy()
            )
        except ControlRefused as exc:
            assert isinstance(exc.result, GateReport), exc
            return exc.result

    def check(self, stage: str, name: str, gate_policy: GatePolicy | None = None) -> GateCheck:
        return {c.name: c for c in self.gate(stage, gate_policy).checks}[name]

    def stage(self, accuracy: float = 0.75, *, result: str = "PASSED") -> GateReport:
        """Pass v1 through the staging gate (alice approves), record the gate-signed staging
        VSA and an attestor-signed staging smoke test with ``accuracy``."""
        self.decide("staging", "alice")
        report = verify_release(self.models, "v1", "staging", keys=self.keys, policy=policy())
        vsa = sign_statement(
            vsa_statement(self.models, report, policy()),
            load_private_key(self.keys.private("gate")),
        )
        self.models.put_evidence("v1", stamped("vsa-staging"), vsa)
        smoke = smoke_test_statement(
            SmokeTestResult(
                model=MODEL,
                stage="staging",
                version="v1",
                model_digest=report.model_digest,
                sample_sha256="e" * 64,
                rows=200,
                accuracy=accuracy,
                min_accuracy=0.6,
                seconds=0.5,
                passed=result == "PASSED",
                tested_at=ago(seconds=0),
            )
        )
        bundle = sign_statement(smoke, load_private_key(self.keys.private("attestor")))
        self.models.put_evidence("v1", stamped("smoke-test-staging"), bundle)
        return report

    def revoke(
        self,
        kind: RevocationKind,
        target: str,
        *,
        by: str,
        gate_policy: GatePolicy | None = None,
        effective_from: str | None = None,
    ) -> str:
        """Revoke as approver ``by`` (or ``policy-owner``); return the revocation's key."""
        pem = self.keys.private(by) if by == "policy-owner" else self.keys.approver_private(by)
        revocation = revoke(
            self.models,
            kind=kind,
            target=target,
            reason=f"{by} says no",
            private_key=pem,
            name=None if by == "policy-owner" else by,
            keys=self.keys,
            policy=(gate_policy or policy()).approval,
            effective_from=effective_from,
        )
        return revocation.key


def make_world(root: Path) -> World:
    keys = KeyDirectory(root / "keys")
    keys.ensure(approvers=PEOPLE)
    evidence = ReleaseEvidence(load_private_key(keys.private("attestor")))
    provenance = writers._provenance(root / "w")  # its model dir: root/w/train/model
    model_dir = root / "w" / "train" / "model"
    evidence.add("data-pull", writers._data_pull())
    evidence.add("validation", writers._validation())
    evidence.add("image-scan", writers._image_scan())
    evidence.add("provenance", provenance)
    evidence.add("model-scan", model_scan_statement(scan_model_files(model_dir)))
    signature = root / "model.sig"
    sign_model(model_dir, private_key=keys.private("model-signer"), signature=signature)
    models = ModelRegistry(LocalRegistry(root / "reg"), MODEL)
    inputs = ReleaseInputs(
        dataset={"sha256": D, "repo": "/r", "path": "data/churn.csv", "rev": "v1", "commit": "1"},
        image={"ref": "img.tar", "sha256": IMAGE},
        metrics={"accuracy": 0.9},
        run="r1",
        builder="b",
        created_by="test",
    )
    register_release(models, model_dir, signature, evidence.bundles, inputs, attestor=evidence.key)
    return World(models, keys, root)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    yield make_world(tmp_path / "home")


def test_a_revoked_approval_no_longer_counts(world: World) -> None:
    """Issue 8 attack 5: a stored approval counted forever (old: nothing could withdraw it).
    Now bob, an allowed staging approver, revokes alice's approval: the gate refuses naming
    the revocation; a copy of the same signed approval under another key is revoked too."""
    approval = world.decide("staging", "alice")
    assert world.gate("staging").passed  # the old behaviour, and still before the revocation
    revocation = world.revoke("approval", approval, by="bob")
    check = world.check("staging", "approval")
    assert not check.passed
    assert check.reason is GateRefusal.APPROVAL_REVOKED
    assert "revoked by approver bob" in check.detail and revocation in check.detail
    # Replaying the same signed approval under a new evidence name does not bring it back.
    world.models.put_evidence("v1", stamped("approval-staging"), world.models.read_json(approval))
    assert world.check("staging", "approval").reason is GateRefusal.APPROVAL_REVOKED
    world.decide("staging", "carol")  # a fresh approval by someone else counts
    assert world.gate("staging").passed


def test_a_rejection_after_an_approval_overrides_it(world: World) -> None:
    """Issue 8 attack 5: with two approvals needed, alice approves, bob rejects, carol
    approves: old behaviour PASSED (the rejection was older than the newest approval). Now
    the rejection overrides every approval decided before it."""
    two = policy(approval={"required_approvals": {"staging": 2}})
    world.decide("staging", "alice", ago(minutes=3))
    world.decide("staging", "bob", ago(minutes=2), approved=False)
    world.decide("staging", "carol", ago(minutes=1))
    check = world.check("staging", "approval", two)
    assert check.reason is GateRefusal.APPROVAL_REJECTED, check.detail
    assert "bob rejected v1" in check.detail
    assert "overrides the earlier approval of alice" in check.detail
    assert "1 of 2" in check.detail
    world.decide("staging", "alice")  # alice approves again, after the rejection
    assert world.gate("staging", two).passed


def test_an_approvers_own_rejection_withdraws_their_approval(world: World) -> None:
    """Issue 8 attack 5: alice approves then rejects, bob approves; two needed. Old behaviour:
    alice's earlier approval still counted (PASSED). Now it is withdrawn."""
    two = policy(approval={"required_approvals": {"staging": 2}})
    world.decide("staging", "alice", ago(minutes=3))
    world.decide("staging", "alice", ago(minutes=2), approved=False)
    world.decide("staging", "bob", ago(minutes=1))
    assert world.check("staging", "approval", two).reason is GateRefusal.APPROVAL_REJECTED


def test_a_revoked_version_is_refused_for_every_stage_and_skipped_by_rollback(
    world: World,
) -> None:
    """Issue 8 attack 5: nothing could withdraw a version (old: it kept passing). The policy
    owner revokes v1: every stage refuses it (VERSION_REVOKED) and the rollback selection
    (:meth:`Revocations.of_version`, by version or by model digest) skips it.

    ``deploy.rollback_stage`` (engineer C's) does not call the selection yet: the lead wires
    it; this test checks the selection function itself."""
    world.stage()
    world.decide("production", "bob")
    assert world.gate("production").passed
    digest = world.gate("staging").model_digest
    revocation = world.revoke("version", "v1", by="policy-owner")
    for stage in ("staging", "production"):
        check = world.check(stage, "revocation")
        assert check.reason is GateRefusal.VERSION_REVOKED
        assert "churn v1 is revoked by the policy owner" in check.detail
        assert revocation in check.detail
    found = revoked_version(world.models, "v1", keys=world.keys, policy=policy().approval)
    assert found is not None and found.key == revocation
    revocations = load_revocations(world.models, keys=world.keys, policy=policy().approval)
    assert revocations.of_version("v2") is None
    assert revocations.of_version("v7", model_digest=digest) == found  # same files, new name
    # An approver of either stage may revoke a version too.
    assert world.revoke("version", "v1", by="carol")


def test_a_revoked_staging_approval_unstages_the_version(world: World) -> None:
    """Issue 8 attack 5: the staging VSA counted alice's approval; once it is revoked, the
    VSA no longer makes v1 staged, so production is refused (old: it passed)."""
    world.stage()
    world.decide("production", "bob")
    assert world.gate("production").passed
    [approval] = [k for k in world.models.evidence_keys("v1") if "/approval-staging-" in k]
    world.revoke("approval", approval, by="bob")
    check = world.check("production", "staged")
    assert check.reason is GateRefusal.APPROVAL_REVOKED, check.detail
    assert "no staging VSA that still counts" in check.detail


def test_a_revocation_by_someone_not_allowed_is_refused_and_ignored(world: World) -> None:
    """Issue 8 attack 5: only an allowed approver (for that stage; their own key) or the
    policy owner may revoke. ``secmlops revoke`` refuses anyone else before writing, and the
    gate ignores such a revocation written straight into the registry."""
    approval = world.decide("staging", "alice")
    for kind, target in (("approval", approval), ("version", "v1")):
        with pytest.raises(ControlRefused) as err:  # mallory is no approver of this policy
            world.revoke(kind, target, by="mallory")  # type: ignore[arg-type]
        assert err.value.reason is RevocationRefusal.UNTRUSTED_SIGNER
    prod_only = policy(approval={"approvers": {"staging": ["alice"], "production": ["carol"]}})
    with pytest.raises(ControlRefused) as err:  # carol approves production only here
        world.revoke("approval", approval, by="carol", gate_policy=prod_only)
    assert err.value.reason is RevocationRefusal.SIGNER_NOT_ALLOWED
    bob_key = key_id(load_public_key(world.keys.approver_public("bob")))
    with pytest.raises(ControlRefused) as err:  # an approver revokes only their own key
        world.revoke("key", bob_key, by="alice")
    assert err.value.reason is RevocationRefusal.SIGNER_NOT_ALLOWED
    assert not world.models.store.list_keys(f"{MODEL}/revocations")  # nothing was written
    # mallory writes her revocation of v1 straight into the registry: ignored.
    forged = make_statement(
        [Subject("model", world.gate("staging").model_digest)],
        PREDICATE_REVOCATION,
        {
            "kind": "version",
            "model": MODEL,
            "version": "v1",
            "modelDigest": {"sha256": world.gate("staging").model_digest},
            "reason": "mallory says no",
            "revokedBy": "mallory",
            "revokerRole": "approver",
            "revokedAt": ago(seconds=0),
        },
    )
    bundle = sign_statement(forged, load_private_key(world.keys.approver_private("mallory")))
    world.models.store.put(f"{MODEL}/revocations/forged.json", canonical_json(bundle))
    world.models.store.put(f"{MODEL}/revocations/garbage.json", b"{not json")
    report = world.gate("staging")
    assert report.passed
    assert "2 ignored" in {c.name: c for c in report.checks}["revocation"].detail


def test_a_revoked_key_refuses_what_it_signed_from_then_on(world: World) -> None:
    """Issue 8 attack 5: a key could not be revoked (old: everything it signed counted).
    alice revokes her own key from an hour ago: her approval made since is refused, one she
    made before still counts. The policy owner revokes the attestor key from before the
    release was signed: the release is refused."""
    alice_key = key_id(load_public_key(world.keys.approver_public("alice")))
    world.revoke("key", alice_key, by="alice", effective_from=ago(hours=1))
    world.decide("staging", "alice")
    check = world.check("staging", "approval")
    assert check.reason is GateRefusal.KEY_REVOKED, check.detail
    world.decide("staging", "alice", ago(hours=2))
    assert world.check("staging", "approval").passed
    attestor = key_id(load_public_key(world.keys.public("attestor")))
    world.revoke("key", attestor, by="policy-owner", effective_from=ago(days=1))
    check = world.check("staging", "revocation")
    assert check.reason is GateRefusal.KEY_REVOKED
    assert "release.json was signed with a key revoked by the policy owner" in check.detail


def test_production_approvals_expire_by_default(world: World) -> None:
    """Issue 8 attack 5: approvals never expired by default (old: a year-old production
    approval counted). With ``max_approval_age_days`` unset, production approvals count for
    30 days; staging ones (demo policy) still have no limit; a policy value wins."""
    assert policy().max_approval_age_days is None
    world.stage()
    world.decide("production", "bob", ago(days=31))
    check = world.check("production", "approval")
    assert check.reason is GateRefusal.STALE_APPROVAL, check.detail
    assert "older than 30 days" in check.detail
    assert world.check("production", "approval", policy(max_approval_age_days=60)).passed
    world.decide("production", "carol", ago(days=29))
    assert world.gate("production").passed
    world.decide("staging", "bob", ago(days=400))
    assert world.check("staging", "approval").passed


# --- the CLI -------------------------------------------------------------------------------

SECMLOPS = Path(sys.executable).parent / "secmlops"


def test_secmlops_revoke_exit_codes(world: World, tmp_path: Path) -> None:
    """Issue 8 attack 5: ``secmlops revoke`` writes a revocation the gate applies (exit 0),
    refuses a signer who may not revoke (exit 1, nothing written) and bad input (exit 2)."""
    from tests.conftest import PROJECT_POLICY

    document = yaml.safe_load(PROJECT_POLICY.read_text())
    document["approval"]["approvers"] = APPROVERS
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(yaml.safe_dump(document, sort_keys=False))
    env = {
        **os.environ,
        "SECMLOPS_HOME": str(world.root),  # the embedded demo: keys in <home>/keys
        "SECMLOPS_POLICY": str(policy_file),
    }
    env.pop("SECMLOPS_KEYS", None)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(SECMLOPS), "--registry", str(world.root / "reg"), "revoke", MODEL, *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    approval = world.decide("staging", "alice")
    mallory = str(world.keys.approver_private("mallory"))
    refused = run("--approval", approval, "--reason", "no", "--key", mallory)
    assert refused.returncode == 1, refused.stderr
    assert "untrusted_signer" in refused.stderr
    assert not world.models.store.list_keys(f"{MODEL}/revocations")
    bob = str(world.keys.approver_private("bob"))
    assert run("--reason", "no", "--key", bob).returncode == 2  # what to revoke?
    both = run("--version", "v1", "--approval", approval, "--reason", "x", "--key", bob)
    assert both.returncode == 2 and "exactly one of" in both.stderr
    assert run("--key-id", "nope", "--reason", "x", "--key", bob).returncode == 2
    ok = run("--approval", approval, "--reason", "wrong release notes", "--key", bob)
    assert ok.returncode == 0, ok.stderr
    assert "revoked by approver bob" in ok.stdout
    assert world.check("staging", "approval").reason is GateRefusal.APPROVAL_REVOKED
    assert any(b'"revoked"' in _audit_text(world, k) for k in _audit_keys(world))


def _audit_keys(world: World) -> list[str]:
    return world.models.store.list_keys(f"{MODEL}/audit")


def _audit_text(world: World, key: str) -> bytes:
    """An audit entry's bytes, with a signed payload decoded (the log's format is C's)."""
    raw = world.models.store.read(key)
    payload = json.loads(raw).get("dsseEnvelope", {}).get("payload")
    return raw + (base64.b64decode(payload) if payload else b"")
