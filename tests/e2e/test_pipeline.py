"""The whole secure pipeline, for real: Prefect, git + DVC, pandera, trivy, dvc repro,
model-signing, signed evidence, approvals, the deploy gate, staged deploy, rollback."""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path

from secmlops.audit import AuditReport, verify_audit_log
from secmlops.evidence.keys import KeyDirectory
from secmlops.registry.models import ModelRegistry, StagePointer
from secmlops.registry.stores import LocalRegistry
from tests.conftest import write_site_policy
from tests.e2e.conftest import PROJECT, PipelineWorld

MODEL = "churn-classifier"
BUILD_EVIDENCE = {"release", "data-pull", "validation", "image-scan", "provenance", "model-scan"}


def _evidence_names(registry: Path, version: str) -> list[str]:
    return sorted(
        p.stem for p in (registry / MODEL / "versions" / version / "evidence").glob("*.json")
    )


def _models(registry: Path) -> ModelRegistry:
    return ModelRegistry(LocalRegistry(registry), MODEL)


def _pointer(registry: Path, stage: str) -> StagePointer:
    """The stage pointer as stored (parsed from its signed bundle, not verified)."""
    pointer, _ = _models(registry).read_pointer(stage)
    assert pointer is not None, f"nothing is deployed in {stage}"
    return pointer


def _audit(world: PipelineWorld) -> AuditReport:
    """The model's audit log, walked and verified with the world's keys."""
    return verify_audit_log(_models(world.registry), KeyDirectory(world.home / "keys"))


def test_two_runs_register_two_versions_with_full_evidence(pipeline_world: PipelineWorld) -> None:
    reg = pipeline_world.registry
    assert [r["version"] for r in pipeline_world.runs] == ["v1", "v2"]
    for run in pipeline_world.runs:
        assert all(s["status"] == "passed" for s in run["stages"]), run["stages"]
        assert [s["stage"] for s in run["stages"]][-1] == "promote-production"
    for version in ("v1", "v2"):
        vdir = reg / MODEL / "versions" / version
        assert (vdir / "model.sig").is_file()
        assert (vdir / "model" / "model.safetensors").is_file()
        # Issue 10: the serving image's cosign signature + scan attestation (no image layers),
        # named by the release manifest and re-verified by every gate run.
        assert (vdir / "image.cosign" / "index.json").is_file()
        release = json.loads((vdir / "evidence" / "release.json").read_text())
        manifest = json.loads(base64.b64decode(release["dsseEnvelope"]["payload"]))
        assert manifest["predicate"]["evidence"]["image-signature"]["key"].endswith(
            f"{version}/image.cosign/index.json"
        )
        vsa = next((vdir / "evidence").glob("vsa-production-*.json"))
        vsa_statement = json.loads(
            base64.b64decode(json.loads(vsa.read_text())["dsseEnvelope"]["payload"])
        )
        checks = {c["name"]: c for c in vsa_statement["predicate"]["secmlops"]["checks"]}
        assert checks["image-signature"]["passed"] is True
        assert (
            "cosign signature and scan attestation of localhost/secmlops-serving@sha256:"
            in (checks["image-signature"]["detail"])
        )
        names = _evidence_names(reg, version)
        assert set(names) >= BUILD_EVIDENCE
        for prefix in (
            "approval-staging-",
            "vsa-staging-",
            "smoke-test-staging-",
            "approval-production-",
            "vsa-production-",
        ):
            assert any(n.startswith(prefix) for n in names), (prefix, names)
    production = _pointer(reg, "production")
    assert production.version == "v2"
    assert [h["version"] for h in production.history] == ["v1"]
    assert _pointer(reg, "staging").version == "v2"
    audit = _audit(pipeline_world)
    assert audit.clean, audit.problems
    events = [e.event for e in audit.entries]
    promoted = [
        e for e in audit.entries if e.event == "outcome" and e.fields["result"] == "promoted"
    ]
    assert events.count("registered") == 2 and len(promoted) == 4


def test_evidence_command_shows_every_stage_verified(pipeline_world: PipelineWorld) -> None:
    for version in ("v1", "v2"):
        proc = pipeline_world.cli("evidence", MODEL, version, "--json")
        assert proc.returncode == 0, proc.stderr
        report = json.loads(proc.stdout)
        assert report["all_verified"] is True
        signers = {e["name"].split("-20")[0]: e["signer"] for e in report["evidence"]}
        assert signers["release"] == "attestor"
        assert signers["approval-production"] == "approver:demo-approver"
        assert signers["vsa-production"] == "gate"
    text = pipeline_world.cli("evidence", MODEL, "v2")
    assert "all evidence verified" in text.stdout
    assert "production serves v2" in " ".join(text.stdout.split())


def test_rollback_then_forward_again_through_the_gate(world_copy: PipelineWorld) -> None:
    proc = world_copy.cli("rollback", MODEL, "--stage", "production")
    assert proc.returncode == 0, proc.stderr
    assert _pointer(world_copy.registry, "production").version == "v1"
    proc = world_copy.cli("promote", MODEL, "v2", "--stage", "production")
    assert proc.returncode == 0, proc.stderr
    assert _pointer(world_copy.registry, "production").version == "v2"


def test_verify_stage_notices_tampering_after_deploy(world_copy: PipelineWorld) -> None:
    ok = world_copy.cli("verify-stage", MODEL, "--stage", "production")
    assert ok.returncode == 0, ok.stderr
    assert "serves v2" in ok.stdout
    weights = world_copy.registry / MODEL / "versions" / "v2" / "model" / "model.json"
    weights.write_text(weights.read_text().replace("churned", "churned "))
    bad = world_copy.cli("verify-stage", MODEL, "--stage", "production")
    assert bad.returncode == 1
    assert "model-signature" in bad.stderr


def test_tampered_model_file_makes_promotion_refuse(world_copy: PipelineWorld) -> None:
    reg = world_copy.registry
    assert world_copy.cli("rollback", MODEL, "--stage", "production").returncode == 0
    before = (reg / MODEL / "stages" / "production.json").read_bytes()
    weights = reg / MODEL / "versions" / "v2" / "model" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))
    proc = world_copy.cli("promote", MODEL, "v2", "--stage", "production")
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    assert "model-signature" in proc.stderr
    assert (reg / MODEL / "stages" / "production.json").read_bytes() == before
    refused = [e.fields for e in _audit(world_copy).entries if e.event == "refused"]
    assert any(e["version"] == "v2" and e["stage"] == "production" for e in refused)


def test_tampered_evidence_makes_promotion_refuse(world_copy: PipelineWorld) -> None:
    reg = world_copy.registry
    assert world_copy.cli("rollback", MODEL, "--stage", "production").returncode == 0
    scan = reg / MODEL / "versions" / "v2" / "evidence" / "image-scan.json"
    bundle = json.loads(scan.read_text())
    bundle["dsseEnvelope"]["signatures"][0]["sig"] = bundle["dsseEnvelope"]["signatures"][0]["sig"][
        ::-1
    ]
    scan.write_text(json.dumps(bundle))
    proc = world_copy.cli("promote", MODEL, "v2", "--stage", "production")
    assert proc.returncode == 1
    assert "image-scan" in proc.stderr
    assert _pointer(reg, "production").version == "v1"
    assert world_copy.cli("evidence", MODEL, "v2").returncode == 1


def test_production_needs_a_production_approval(world_copy: PipelineWorld) -> None:
    reg = world_copy.registry
    assert world_copy.cli("rollback", MODEL, "--stage", "production").returncode == 0
    for approval in (reg / MODEL / "versions" / "v2" / "evidence").glob(
        "approval-production-*.json"
    ):
        approval.unlink()
    proc = world_copy.cli("promote", MODEL, "v2", "--stage", "production")
    assert proc.returncode == 1
    assert "no approval for production" in proc.stderr
    proc = world_copy.cli(
        "promote", MODEL, "v2", "--stage", "production", "--approve-as", "demo-approver"
    )
    assert proc.returncode == 0, proc.stderr


def test_bad_usage_exits_2(pipeline_world: PipelineWorld) -> None:
    assert pipeline_world.cli("promote", MODEL, "v1", "--stage", "qa").returncode == 2
    assert pipeline_world.cli("evidence", MODEL, "v99").returncode == 2
    assert pipeline_world.cli("frobnicate").returncode == 2


def test_separation_of_duties_refuses_the_staging_approver(world_copy: PipelineWorld) -> None:
    policy = world_copy.home / "sod-policy.yaml"
    text = (Path(__file__).resolve().parents[2] / "secmlops-policy.yaml").read_text()
    policy.write_text(text.replace("separation_of_duties: false", "separation_of_duties: true"))
    env = {**world_copy.env, "SECMLOPS_POLICY": str(policy)}
    world = PipelineWorld(world_copy.home, world_copy.registry, env, world_copy.runs)
    proc = world.cli("rollback", MODEL, "--stage", "production")
    assert proc.returncode == 1
    assert "separation of duties" in proc.stderr
    assert _pointer(world_copy.registry, "production").version == "v2"


def test_approval_signed_by_an_unlisted_key_is_refused(world_copy: PipelineWorld) -> None:
    from secmlops.controls.approval import ApprovalDecision, ApprovalRequest, approval_statement
    from secmlops.evidence.statements import generate_keypair, load_private_key, sign_statement

    reg = world_copy.registry
    assert world_copy.cli("rollback", MODEL, "--stage", "production").returncode == 0
    evidence = reg / MODEL / "versions" / "v2" / "evidence"
    for approval in evidence.glob("approval-production-*.json"):
        approval.unlink()
    digest = _pointer(reg, "staging").model_digest
    generate_keypair(world_copy.home / "mallory.pem", world_copy.home / "mallory.pub")
    request = ApprovalRequest(MODEL, "v2", digest, "production", "c" * 64)
    forged = approval_statement(
        request,
        ApprovalDecision("demo-approver", True, "cli-preapproval", "", "2026-01-01T00:00:00Z"),
    )
    bundle = sign_statement(forged, load_private_key(world_copy.home / "mallory.pem"))
    (evidence / "approval-production-forged.json").write_text(json.dumps(bundle))
    proc = world_copy.cli("promote", MODEL, "v2", "--stage", "production")
    assert proc.returncode == 1
    assert "untrusted key" in proc.stderr
    assert _pointer(reg, "production").version == "v1"


def test_run_without_an_approver_stops_before_staging(
    pipeline_world: PipelineWorld, tmp_path: Path
) -> None:
    registry = tmp_path / "registry"
    policy = tmp_path / "policy.yaml"
    text = (PROJECT / "secmlops-policy.yaml").read_text()
    policy.write_text(text.replace("timeout_seconds: 3600", "timeout_seconds: 5"))
    assert "timeout_seconds: 5" in policy.read_text()
    env = {
        **pipeline_world.env,
        "SECMLOPS_REGISTRY": str(registry),
        "SECMLOPS_POLICY": str(policy),
    }
    world = PipelineWorld(pipeline_world.home, registry, env, pipeline_world.runs)
    proc = world.cli("run")
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "no valid approval of churn-classifier v1 for staging within 5 s" in proc.stderr
    assert "reason: timed_out" in proc.stderr
    assert "secmlops approve" in proc.stderr  # the run said how to approve it
    assert (registry / MODEL / "versions" / "v1" / "evidence" / "release.json").is_file()
    assert not (registry / MODEL / "stages").exists()


def test_run_with_a_vulnerable_image_registers_nothing(
    pipeline_world: PipelineWorld, tmp_path: Path
) -> None:
    from secmlops.demo.serving_image import build_serving_image

    image = build_serving_image(
        tmp_path / "vulnerable.tar",
        lock_file=Path(__file__).resolve().parents[2] / "uv.lock",
        extra_python_packages={"PyYAML": "5.3"},
    )
    registry = tmp_path / "registry"
    policy = write_site_policy(
        tmp_path / "policy.yaml",
        images={
            "demo": {},
            "vulnerable": {"target": str(image.path), "digest": f"sha256:{image.image_digest}"},
        },
    )
    env = {
        **pipeline_world.env,
        "SECMLOPS_REGISTRY": str(registry),
        "SECMLOPS_POLICY": str(policy),
    }
    world = PipelineWorld(pipeline_world.home, registry, env, pipeline_world.runs)
    proc = world.cli("run", "--approve-as", "demo-approver", "--image", "vulnerable")
    assert proc.returncode == 1
    assert "CVE-2020-14343" in proc.stderr
    assert not (registry / MODEL / "versions").exists()


def test_evidence_copied_from_another_version_is_refused(world_copy: PipelineWorld) -> None:
    """v1 and v2 have the same model digest (deterministic training): v1's approval must
    still not approve v2, because it names another version and release manifest."""
    reg = world_copy.registry
    assert world_copy.cli("rollback", MODEL, "--stage", "production").returncode == 0
    v1 = reg / MODEL / "versions" / "v1" / "evidence"
    v2 = reg / MODEL / "versions" / "v2" / "evidence"
    for approval in v2.glob("approval-production-*.json"):
        approval.unlink()
    for copied in v1.glob("approval-production-*.json"):
        (v2 / copied.name).write_bytes(copied.read_bytes())
    proc = world_copy.cli("promote", MODEL, "v2", "--stage", "production")
    assert proc.returncode == 1
    assert "is for version='v1'" in proc.stderr
    assert _pointer(reg, "production").version == "v1"
    report = world_copy.cli("evidence", MODEL, "v2")
    assert report.returncode == 1 and "copied?" in report.stdout


def test_forged_stage_pointer_fails_the_smoke_test(world_copy: PipelineWorld) -> None:
    """A production pointer naming a genuine gate-signed VSA, but staging's: edited in the
    registry (the signature no longer verifies), or even signed by the gate (the VSA does
    not vouch for production), the smoke test refuses it."""
    import base64

    import pytest

    from ml.model import load_model
    from secmlops.controls.smoke_test import smoke_test_stage
    from secmlops.demo.data_registry import generate_churn_dataset, write_dataset_csv
    from secmlops.errors import ControlRefused
    from secmlops.evidence.statements import load_private_key
    from secmlops.gate import GateRefusal
    from secmlops.registry.pointers import PointerRefusal, publish_pointer

    reg = world_copy.registry
    models = _models(reg)
    keys = KeyDirectory(world_copy.home / "keys")
    production, staging = _pointer(reg, "production"), _pointer(reg, "staging")
    sample = world_copy.home / "sample.csv"
    write_dataset_csv(generate_churn_dataset("v1.1"), sample)

    def smoke() -> ControlRefused:
        with pytest.raises(ControlRefused) as err:
            smoke_test_stage(
                models, "production", sample, keys=keys, loader=load_model, min_accuracy=0.5
            )
        return err.value

    # Someone with write access to the registry edits the stored pointer's statement.
    stored = reg / MODEL / "stages" / "production.json"
    bundle = json.loads(stored.read_text())
    statement = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
    statement["predicate"]["vsa"] = {"key": staging.vsa, "sha256": staging.vsa_sha256}
    bundle["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    stored.write_text(json.dumps(bundle))
    assert _pointer(reg, "production").vsa == staging.vsa
    assert smoke().reason is PointerRefusal.POINTER_BAD_SIGNATURE

    # A gate-signed pointer (next in the signed stage history) naming staging's VSA.
    publish_pointer(
        models,
        stage="production",
        version=production.version,
        model_digest=production.model_digest,
        vsa=staging.vsa,  # a genuine gate-signed VSA, but for staging
        vsa_sha256=staging.vsa_sha256,
        signer=load_private_key(keys.private("gate")),
        actor="test",
    )
    refused = smoke()
    assert "VSA" in refused.message
    assert refused.reason is GateRefusal.POINTER_NOT_VOUCHED


def test_stale_approval_is_refused_when_policy_limits_age(world_copy: PipelineWorld) -> None:
    from secmlops._internal.digests import sha256_file
    from secmlops.controls.approval import ApprovalDecision, ApprovalRequest, approval_statement
    from secmlops.evidence.statements import load_private_key, sign_statement

    reg = world_copy.registry
    assert world_copy.cli("rollback", MODEL, "--stage", "production").returncode == 0
    evidence = reg / MODEL / "versions" / "v2" / "evidence"
    for approval in evidence.glob("approval-production-*.json"):
        approval.unlink()
    digest = _pointer(reg, "staging").model_digest
    request = ApprovalRequest(
        MODEL, "v2", digest, "production", sha256_file(evidence / "release.json")
    )
    old = approval_statement(
        request,
        ApprovalDecision("demo-approver", True, "cli-preapproval", "", "2020-01-01T00:00:00Z"),
    )
    key = load_private_key(world_copy.home / "keys" / "approvers" / "demo-approver.pem")
    (evidence / "approval-production-old.json").write_text(json.dumps(sign_statement(old, key)))
    text = (Path(__file__).resolve().parents[2] / "secmlops-policy.yaml").read_text()

    def promote_with_age_limit(days: int) -> subprocess.CompletedProcess[str]:
        # One file per policy: a signed policy file is never rewritten (issue 8).
        policy = world_copy.home / f"aged-policy-{days}.yaml"
        policy.write_text(text + f"max_approval_age_days: {days}\n")
        env = {**world_copy.env, "SECMLOPS_POLICY": str(policy)}
        world = PipelineWorld(world_copy.home, reg, env, world_copy.runs)
        return world.cli("promote", MODEL, "v2", "--stage", "production")

    # A policy that allows old approvals counts it (production's default limit would not).
    assert promote_with_age_limit(100_000).returncode == 0
    assert world_copy.cli("rollback", MODEL, "--stage", "production").returncode == 0
    proc = promote_with_age_limit(30)
    assert proc.returncode == 1
    assert "older than 30 days" in proc.stderr


def test_pinned_schema_digest_is_enforced(world_copy: PipelineWorld) -> None:
    import base64

    reg = world_copy.registry
    assert world_copy.cli("rollback", MODEL, "--stage", "production").returncode == 0
    bundle = json.loads(
        (reg / MODEL / "versions" / "v2" / "evidence" / "validation.json").read_text()
    )
    statement = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
    used = statement["predicate"]["configuration"][0]["digest"]["sha256"]
    text = (Path(__file__).resolve().parents[2] / "secmlops-policy.yaml").read_text()

    def promote_with_pins(*digests: str) -> int:
        # One file per policy: a signed policy file is never rewritten (issue 8).
        policy = world_copy.home / f"pinned-policy-{len(digests)}.yaml"
        policy.write_text(text + f"required_schema_digests: {list(digests)}\n")
        env = {**world_copy.env, "SECMLOPS_POLICY": str(policy)}
        world = PipelineWorld(world_copy.home, reg, env, world_copy.runs)
        return world.cli("promote", MODEL, "v2", "--stage", "production").returncode

    assert promote_with_pins("0" * 64) == 1
    assert _pointer(reg, "production").version == "v1"
    assert promote_with_pins("0" * 64, used) == 0
    assert _pointer(reg, "production").version == "v2"


def test_site_key_directory_is_never_filled_with_generated_keys(
    pipeline_world: PipelineWorld, tmp_path: Path
) -> None:
    keys = tmp_path / "site-keys"
    keys.mkdir()
    env = {
        **pipeline_world.env,
        "SECMLOPS_KEYS": str(keys),
        "SECMLOPS_REGISTRY": str(tmp_path / "registry"),
    }
    world = PipelineWorld(pipeline_world.home, tmp_path / "registry", env, pipeline_world.runs)
    proc = world.cli("run", "--approve-as", "demo-approver")
    assert proc.returncode == 2, proc.stderr[-2000:]
    # The approver's key is looked up first (before the run starts); role keys likewise
    # are never generated into a site's directory.
    assert f"{keys}/approvers/demo-approver.pem does not exist" in proc.stderr
    assert list(keys.iterdir()) == []
    assert not (tmp_path / "registry").exists()


def test_gate_rejudges_the_scan_under_todays_policy(world_copy: PipelineWorld) -> None:
    """The stored verdict passed; a stricter policy (block LOW too) must refuse the same
    evidence at the next promotion, and so must dropping the curated-DB allowance."""
    reg = world_copy.registry
    assert world_copy.cli("rollback", MODEL, "--stage", "production").returncode == 0
    text = (Path(__file__).resolve().parents[2] / "secmlops-policy.yaml").read_text()

    def promote_under(name: str, policy_text: str) -> subprocess.CompletedProcess[str]:
        # One file per policy: a signed policy file is never rewritten (issue 8).
        policy = world_copy.home / f"{name}-policy.yaml"
        policy.write_text(policy_text)
        env = {**world_copy.env, "SECMLOPS_POLICY": str(policy)}
        world = PipelineWorld(world_copy.home, reg, env, world_copy.runs)
        return world.cli("promote", MODEL, "v2", "--stage", "production")

    proc = promote_under(
        "strict", text.replace("fail_on: [CRITICAL, HIGH]", "fail_on: [CRITICAL, HIGH, LOW]")
    )
    assert proc.returncode == 1
    assert "image-scan" in proc.stderr and "CVE-2010-4756" in proc.stderr

    proc = promote_under(
        "no-curated-db",
        text.replace("unsafe_allow_curated_db: true", "unsafe_allow_curated_db: false"),
    )
    assert proc.returncode == 1
    assert "image-scan" in proc.stderr
    assert _pointer(reg, "production").version == "v1"


def test_approval_cli_promote_waits_and_is_approved_from_another_shell(
    world_copy: PipelineWorld,
) -> None:
    """`secmlops promote --wait-for-approval` on a version nobody approved for staging: it
    pauses, prints the `secmlops approve` command, and promotes once that is run."""
    import re
    import subprocess
    import time

    from tests.e2e.conftest import SECMLOPS

    evidence = world_copy.registry / MODEL / "versions" / "v1" / "evidence"
    for approval in evidence.glob("approval-*"):
        approval.unlink()
    waiting = subprocess.Popen(
        [str(SECMLOPS), "promote", MODEL, "v1", "--stage", "staging", "--wait-for-approval"],
        env=world_copy.env,
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert waiting.stderr is not None
        deadline, hint = time.monotonic() + 240, None
        while hint is None and time.monotonic() < deadline:
            line = waiting.stderr.readline()
            assert line or waiting.poll() is None, "promote ended before pausing"
            hint = re.search(r"PREFECT_API_URL=(\S+) secmlops approve ([0-9a-f-]{36})", line)
        assert hint, "promote never said how to approve it"
        key = world_copy.home / "keys" / "approvers" / "demo-approver.pem"
        approve = subprocess.run(
            [str(SECMLOPS), "approve", hint.group(2), "--approve", "--reason", "ok", "--key",
             str(key)],
            env={**world_copy.env, "PREFECT_API_URL": hint.group(1)},
            capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        assert approve.returncode == 0, approve.stdout + approve.stderr
        out, _ = waiting.communicate(timeout=300)
        assert waiting.returncode == 0
        assert f"{MODEL} staging -> v1" in out
    finally:
        if waiting.poll() is None:
            waiting.kill()
