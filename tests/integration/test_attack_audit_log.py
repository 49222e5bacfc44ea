"""Issue 8 attack 4: audit log incomplete and unprotected.

Old behaviour: the audit entry was written after the pointer moved, so a kill in between
left a moved pointer with no entry; the loser of a promote race was not audited and left an
orphaned PASSED VSA; entries were plain JSON objects, so deleting or forging one went
unnoticed (nothing could even check). Now every entry is gate- (or attestor-) signed and
hash-chained at ``<model>/audit/<sequence>.json`` (create-only), an ``intent`` precedes every
pointer move and an ``outcome`` follows it, a lost race is audited and its VSA superseded,
and ``secmlops audit verify`` reports gaps, forgeries and intents without an outcome (exit 1).
On S3, Object Lock in compliance mode keeps every entry and every evidence file (moto).
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest

from secmlops import deploy, gate
from secmlops.audit import (
    AuditLog,
    AuditRefusal,
    require_clean,
    superseded_vsas,
    verify_audit_log,
)
from secmlops.deploy import DeployRefusal, promote_to_stage, record_approval
from secmlops.errors import ControlRefused
from secmlops.evidence.statements import generate_keypair, load_private_key, sign_statement
from secmlops.gate import passed_gate_before
from secmlops.operations import verify_stage
from secmlops.registry.pointers import PointerRefusal
from secmlops.registry.stores import LocalRegistry, S3Registry, WriteConflict
from tests.integration.deploy_world import APPROVER, World, make_world

PROJECT = Path(__file__).resolve().parents[2]


@pytest.fixture
def world(tmp_path: Path) -> World:
    w = make_world(tmp_path, LocalRegistry(tmp_path / "registry"))
    w.to_production(w.register())
    return w


def _reasons(w: World) -> list[AuditRefusal]:
    return [p.reason for p in verify_audit_log(w.models, w.keys).problems]


def test_clean_log_verifies_and_records_intent_and_outcome(world: World) -> None:
    report = verify_audit_log(world.models, world.keys)
    assert report.clean, report.problems
    events = [(e.event, e.fields.get("result") or e.fields.get("action")) for e in report.entries]
    # registration (unsigned until the pipeline passes a signer: see the report), approvals,
    # then intent -> outcome per pointer move, all gate-signed.
    moves = [e for e in report.entries if e.event in ("intent", "outcome")]
    assert [e.event for e in moves] == ["intent", "outcome", "intent", "outcome"], events
    assert all(e.signer == "gate" for e in moves)
    assert all(e.fields.get("policyDigest") for e in moves if e.event == "intent")
    ok = world.cli("audit", "verify", "churn")
    assert ok.returncode == 0, ok.stderr
    assert "chain intact" in ok.stdout


_KILL = """
import os, signal, sys
from pathlib import Path
from secmlops.deploy import promote_to_stage
from secmlops.registry.stores import LocalRegistry
from tests.integration.deploy_world import make_world

root, version, at = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
w = make_world(root, LocalRegistry(root / "registry"))
put = w.models.store.put

def put_then_die(key, data, **kwargs):
    history_entry = key.startswith("churn/stages/production/")
    if at == "history" and history_entry:
        os.kill(os.getpid(), signal.SIGKILL)  # killed before the pointer moves at all
    put(key, data, **kwargs)
    if at == "head" and history_entry:
        os.kill(os.getpid(), signal.SIGKILL)  # killed between the history entry and the head

w.models.store.put = put_then_die
promote_to_stage(
    w.models, version, "production", keys=w.keys, policy=w.policy, actor="t", seen=w.seen
)
"""


@pytest.mark.parametrize("at", ["history", "head"])
def test_kill_between_audit_intent_and_pointer_write_is_reported(
    world: World, tmp_path: Path, at: str
) -> None:
    v2 = world.register()
    world.promote(v2, "staging")
    record_approval(
        world.models, v2, "production", keys=world.keys, policy=world.policy, approve_as=APPROVER
    )
    before = world.models.store.read(world.models.stage_key("production"))
    script = tmp_path / "kill.py"
    script.write_text(textwrap.dedent(_KILL))
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path), v2, at],
        cwd=PROJECT,
        env={**os.environ, "PYTHONPATH": str(PROJECT), "SECMLOPS_HOME": str(tmp_path / "home")},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == -9, proc.stderr  # SIGKILL
    assert world.models.store.read(world.models.stage_key("production")) == before
    report = verify_audit_log(world.models, world.keys)
    assert [p.reason for p in report.problems] == [AuditRefusal.INTENT_WITHOUT_OUTCOME]
    assert f"of {v2} to production" in report.problems[0].detail
    bad = world.cli("audit", "verify", "churn")
    assert bad.returncode == 1 and "intent_without_outcome" in bad.stderr + bad.stdout
    if at == "history":
        verify_stage(
            world.models, "production", keys=world.keys, policy=world.policy, seen=world.seen
        )
    else:
        # The signed history went one further than the pointer: readers refuse until an
        # operator re-promotes (the audit log tells a crash from a replay).
        with pytest.raises(ControlRefused, match="interrupted") as err:
            verify_stage(
                world.models, "production", keys=world.keys, policy=world.policy, seen=world.seen
            )
        assert err.value.reason is PointerRefusal.POINTER_ROLLED_BACK
        promote_to_stage(
            world.models,
            v2,
            "production",
            keys=world.keys,
            policy=world.policy,
            actor="t",
            seen=world.seen,
        )
        verify_stage(
            world.models, "production", keys=world.keys, policy=world.policy, seen=world.seen
        )


def test_concurrent_promotions_one_wins_the_loser_is_audited_and_superseded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = make_world(tmp_path, LocalRegistry(tmp_path / "registry"))
    versions = [w.register(), w.register()]
    for v in versions:
        record_approval(w.models, v, "staging", keys=w.keys, policy=w.policy, approve_as=APPROVER)
    # Both read the pointer, then both pass the real gate before either writes.
    both_verified = threading.Barrier(2, timeout=60)
    real_verify = gate.verify_release

    def verify_then_wait(*args: Any, **kwargs: Any) -> Any:
        report = real_verify(*args, **kwargs)
        both_verified.wait()
        return report

    monkeypatch.setattr(deploy, "verify_release", verify_then_wait)
    results: dict[str, Any] = {}

    def promote(version: str) -> None:
        try:
            results[version] = promote_to_stage(
                w.models, version, "staging", keys=w.keys, policy=w.policy, actor="t", seen=w.seen
            )
        except Exception as exc:
            results[version] = exc

    threads = [threading.Thread(target=promote, args=(v,)) for v in versions]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    losers = [v for v, r in results.items() if isinstance(r, Exception)]
    winners = [v for v in versions if v not in losers]
    assert len(winners) == 1 and len(losers) == 1, results
    lost = results[losers[0]]
    assert isinstance(lost, WriteConflict) and lost.reason is DeployRefusal.POINTER_RACE_LOST
    loser_vsa = lost.details["vsa"]

    report = verify_audit_log(w.models, w.keys)
    assert report.clean, report.problems
    outcomes = {
        e.fields["version"]: e.fields["result"] for e in report.entries if e.event == "outcome"
    }
    assert outcomes == {winners[0]: "promoted", losers[0]: "race-lost"}
    superseded = [e for e in report.entries if e.event == "superseded"]
    assert [e.fields["vsa"] for e in superseded] == [loser_vsa] and superseded[0].signer == "gate"
    # Readers ignore the orphaned PASSED VSA: it does not make the loser "served before".
    assert superseded_vsas(w.models, w.keys) == {loser_vsa}
    assert not passed_gate_before(w.models, losers[0], "staging", w.keys)
    assert passed_gate_before(w.models, winners[0], "staging", w.keys)
    pointer, _ = verify_stage(w.models, "staging", keys=w.keys, policy=w.policy, seen=w.seen)
    assert pointer.version == winners[0] and pointer.sequence == 1


def test_concurrent_appends_never_fork_the_chain(world: World) -> None:
    log = AuditLog(world.models)
    signer = load_private_key(world.keys.private("gate"))

    def append(n: int) -> None:
        for i in range(5):
            log.append("note", signer=signer, writer=n, i=i)

    threads = [threading.Thread(target=append, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    report = verify_audit_log(world.models, world.keys)
    assert report.clean, report.problems
    assert sum(e.event == "note" for e in report.entries) == 20


def test_deleted_entry_is_reported(world: World) -> None:
    chained, _ = AuditLog(world.models).chain()
    victim = chained[len(chained) - 2]  # e.g. the intent of the production promotion
    (world.root / "registry" / victim).unlink()
    assert AuditRefusal.ENTRY_MISSING in _reasons(world)
    bad = world.cli("audit", "verify", "churn")
    assert bad.returncode == 1
    assert f"audit entry {len(chained) - 2} is missing" in bad.stdout + bad.stderr


def _payload(raw: bytes) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(
        base64.b64decode(json.loads(raw)["dsseEnvelope"]["payload"])
    )
    return loaded


def test_forged_entries_are_reported(world: World, tmp_path: Path) -> None:
    log = AuditLog(world.models)
    chained, _ = log.chain()
    last = max(chained)
    path = world.root / "registry" / chained[last]
    original = path.read_bytes()
    statement = _payload(original)
    statement["predicate"]["fields"]["result"] = "nothing-happened"
    # 1. Re-signed with a key no audit role holds (mallory's).
    generate_keypair(tmp_path / "mallory.pem", tmp_path / "mallory.pub")
    forged = sign_statement(statement, load_private_key(tmp_path / "mallory.pem"))
    path.write_text(json.dumps(forged))
    # ... and the promotion it was the outcome of now has none that counts.
    forged_outcome = [AuditRefusal.ENTRY_FORGED, AuditRefusal.INTENT_WITHOUT_OUTCOME]
    assert _reasons(world) == forged_outcome
    # 2. Payload edited, signature kept.
    tampered = json.loads(original)
    tampered["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    path.write_text(json.dumps(tampered))
    assert _reasons(world) == forged_outcome
    # 3. A pointer event signed by the attestor: the wrong role.
    path.write_text(
        json.dumps(sign_statement(statement, load_private_key(world.keys.private("attestor"))))
    )
    assert _reasons(world) == [AuditRefusal.WRONG_SIGNER, AuditRefusal.INTENT_WITHOUT_OUTCOME]
    # 4. An entry replaced by a validly gate-signed one that does not link to its predecessor.
    statement["predicate"]["previous"] = {"sha256": "0" * 64}
    path.write_text(
        json.dumps(sign_statement(statement, load_private_key(world.keys.private("gate"))))
    )
    assert _reasons(world) == [AuditRefusal.CHAIN_BROKEN]
    with pytest.raises(ControlRefused, match="does not link") as err:
        require_clean(verify_audit_log(world.models, world.keys))
    assert err.value.reason is AuditRefusal.CHAIN_BROKEN
    bad = world.cli("audit", "verify", "churn", "--json")
    assert bad.returncode == 1
    assert json.loads(bad.stdout)["problems"][0]["reason"] == "chain_broken"


# --- S3 Object Lock (compliance mode) ------------------------------------------------------


@pytest.fixture
def locked_bucket(s3_endpoint: str, aws_env: None, request: pytest.FixtureRequest) -> str:
    """A bucket created with Object Lock and a default COMPLIANCE retention rule (the
    configuration docs/security-model.md documents for the log and the evidence)."""
    import boto3

    name = f"secmlops-lock-{abs(hash(request.node.nodeid)) % 10**10}"
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket=name, ObjectLockEnabledForBucket=True)
    s3.put_object_lock_configuration(
        Bucket=name,
        ObjectLockConfiguration={
            "ObjectLockEnabled": "Enabled",
            "Rule": {"DefaultRetention": {"Mode": "COMPLIANCE", "Days": 1}},
        },
    )
    return name


def test_object_lock_keeps_the_log_and_the_evidence(
    locked_bucket: str, s3_endpoint: str, tmp_path: Path
) -> None:
    import boto3
    from botocore.exceptions import ClientError

    store = S3Registry(locked_bucket, "models", endpoint_url=s3_endpoint)
    w = make_world(tmp_path, store)
    w.to_production(w.register())
    report = verify_audit_log(w.models, w.keys)
    assert report.clean, report.problems
    assert report.retention == "Object Lock COMPLIANCE, 1 days default retention"
    verify_stage(w.models, "production", keys=w.keys, policy=w.policy, seen=w.seen)

    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    chained, _ = AuditLog(w.models).chain()
    entry = f"models/{chained[max(chained)]}"
    vsa = f"models/{w.models.read_pointer('production')[0].vsa}"  # type: ignore[union-attr]
    history = f"models/{w.models.stage_history('production')[1]}"
    for key in (entry, vsa, history):
        head = s3.head_object(Bucket=locked_bucket, Key=key)
        assert head["ObjectLockMode"] == "COMPLIANCE"
        # No version can be deleted, not even by the bucket's owner (moto enforces it).
        with pytest.raises(ClientError, match="AccessDenied"):
            s3.delete_object(Bucket=locked_bucket, Key=key, VersionId=head["VersionId"])
        # The registry's own writes are create-only.
        with pytest.raises(WriteConflict):
            store.put(key.removeprefix("models/"), b"{}")

    # An attacker can still hide an entry behind a delete marker, or put a new version over
    # it: both are reported, and the original version is still there.
    original = s3.get_object(Bucket=locked_bucket, Key=entry)["Body"].read()
    s3.delete_object(Bucket=locked_bucket, Key=entry)
    report = verify_audit_log(w.models, w.keys)
    assert AuditRefusal.ENTRY_MISSING in [p.reason for p in report.problems]
    assert any("deleted or overwritten" in p.detail for p in report.problems)
    s3.put_object(Bucket=locked_bucket, Key=entry, Body=original)  # "restored" as new version
    assert any(
        "deleted or overwritten" in p.detail for p in verify_audit_log(w.models, w.keys).problems
    )
    versions = s3.list_object_versions(Bucket=locked_bucket, Prefix=entry)["Versions"]
    assert len(versions) == 2
    # Same for the signed stage history a pointer is checked against.
    s3.delete_object(Bucket=locked_bucket, Key=history)
    with pytest.raises(ControlRefused, match="deleted or overwritten") as err:
        verify_stage(w.models, "production", keys=w.keys, policy=w.policy, seen=w.seen)
    assert err.value.reason is PointerRefusal.POINTER_ROLLED_BACK
