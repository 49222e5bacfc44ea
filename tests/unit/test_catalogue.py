"""The catalogue is the one source: release manifest, gate and report all derive from it; and
the gate's checks refuse with a reason, never crash."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from secmlops import gate as gate_module
from secmlops import release as release_module
from secmlops import report as report_module
from secmlops.catalogue import (
    CATALOGUE,
    GateContext,
    GateRefusal,
    build_controls,
    control,
    control_for_evidence,
    evidence_order,
    required_release_evidence,
)
from secmlops.controls.approval import ApprovalPolicy
from secmlops.errors import ControlRefused, InputError, ToolError
from secmlops.evidence.keys import KeyDirectory
from secmlops.evidence.statements import (
    EvidenceRefusal,
    VerifiedStatement,
    load_private_key,
    sign_statement,
)
from secmlops.gate import GatePolicy, GateReport, gate_reason, verify_release
from secmlops.registry.models import ModelRegistry
from secmlops.registry.stores import LocalRegistry
from secmlops.release import ReleaseEvidence, ReleaseInputs, register_release
from secmlops.site import Sources, TrivyDbSource
from tests.unit import test_predicates as writers

D, M, C = writers.D, writers.M, writers.C
IMAGE = "ab" * 32


# --- one source ----------------------------------------------------------------------------
#: The site pins the Trivy DB the fixtures' scans name (a DB of unknown origin is refused).
SITE = Sources(trivy_db=TrivyDbSource(sha256=("cd" * 32,)))


def test_names_and_predicate_types_are_unique() -> None:
    assert len({c.name for c in CATALOGUE}) == len(CATALOGUE)
    assert len({c.predicate_type for c in CATALOGUE}) == len(CATALOGUE)


def test_release_gate_and_report_derive_from_the_catalogue() -> None:
    build = [c for c in CATALOGUE if c.scope == "build"]
    assert list(gate_module.REQUIRED_EVIDENCE) == [c.name for c in build]
    assert {c.name: c.predicate_type for c in build} == gate_module.REQUIRED_EVIDENCE
    assert required_release_evidence() == frozenset(c.name for c in build)
    assert build_controls() == tuple(build)
    order = evidence_order()
    # build evidence first (pipeline order), then the manifest, then each stage's evidence
    assert order[: len(build) + 1] == (*(c.name for c in build), "release")
    assert order.index("approval-staging") < order.index("vsa-staging")
    assert order.index("smoke-test-staging") < order.index("approval-production")
    names = ["vsa-production-x", "release", "approval-staging-x", "image-scan", "data-pull"]
    assert sorted(names, key=report_module._rank) == [
        "data-pull",
        "image-scan",
        "release",
        "approval-staging-x",
        "vsa-production-x",
    ]


@pytest.mark.parametrize(
    ("stem", "expected"),
    [
        ("data-pull", "data-pull"),
        ("release", "release"),
        ("approval-production-20260101t000000-abc123", "approval"),
        ("vsa-staging-20260101t000000-abc123", "vsa"),
        ("smoke-test-staging-20260101t000000-abc123", "smoke-test"),
        ("approval", None),
        ("data-pull-2", None),
        ("surprise", None),
    ],
)
def test_evidence_files_map_to_their_control(stem: str, expected: str | None) -> None:
    entry = control_for_evidence(stem)
    assert (entry.name if entry else None) == expected


def test_release_evidence_refuses_what_the_catalogue_does_not_describe(tmp_path: Path) -> None:
    keys = KeyDirectory(tmp_path / "keys")
    keys.ensure()
    evidence = ReleaseEvidence(load_private_key(keys.private("attestor")))
    assert evidence.missing() == required_release_evidence()
    evidence.add("data-pull", writers._data_pull())
    assert "data-pull" not in evidence.missing()
    with pytest.raises(InputError, match="not build evidence"):
        evidence.add("surprise", writers._data_pull())
    with pytest.raises(InputError, match="expected"):
        evidence.add("validation", writers._data_pull())
    drifted = writers._validation()
    drifted["predicate"]["summary"]["surprise"] = 1
    with pytest.raises(InputError, match="TestResultPredicate"):
        evidence.add("validation", drifted)


# --- gate checks: reasons, not crashes -----------------------------------------------------


def _verified(name: str, statement: dict[str, Any]) -> Any:
    loaded = json.loads(json.dumps(statement))
    st = VerifiedStatement(statement=loaded, signer="attestor", key_id="k")
    return control(name).parse(st, f"{name}.json")


def _ctx(**changes: Any) -> GateContext:
    ctx = GateContext(
        model="churn",
        version="v1",
        stage="staging",
        policy=GatePolicy(sources=SITE),
        model_digest=M,
        dataset_digest=D,
        image_digest=IMAGE,
        release_sha256=C,
        # What the gate verified before the provenance check (it compares the run's sources).
        verified={
            "data-pull": _verified("data-pull", writers._data_pull()),
            "validation": _verified("validation", writers._validation()),
        },
    )
    return dataclasses.replace(ctx, **changes)


def _judge(name: str, statement: dict[str, Any], signer: str = "attestor", **ctx: Any) -> set[Any]:
    """The reasons the catalogue's check for ``name`` refuses with (empty: it passes)."""
    entry = control(name)
    st = VerifiedStatement(statement=json.loads(json.dumps(statement)), signer=signer, key_id="k")
    results = entry.check(entry.parse(st, f"{name}.json"), _ctx(**ctx))
    return {r.reason for r in results if not r.passed}


def test_writers_output_passes_its_check() -> None:
    assert _judge("data-pull", writers._data_pull()) == set()
    assert _judge("validation", writers._validation()) == set()
    assert _judge("smoke-test", writers._smoke_test()) == set()
    assert _judge("approval", writers._approval(), signer="demo-approver") == set()


def test_build_checks_refuse_with_reasons() -> None:
    assert _judge("data-pull", writers._data_pull(), dataset_digest="0" * 64) == {
        GateRefusal.WRONG_SUBJECT
    }
    assert _judge("validation", writers._validation(passed=False)) == {
        GateRefusal.VALIDATION_FAILED
    }
    pinned = GatePolicy(sources=SITE, required_schema_digests=("0" * 64,))
    assert _judge("validation", writers._validation(), policy=pinned) == {
        GateRefusal.SCHEMA_NOT_PINNED
    }


def test_model_scan_and_provenance_checks(tmp_path: Path) -> None:
    scan = writers._model_scan(tmp_path)
    digest = scan["subject"][0]["digest"]["sha256"]
    assert _judge("model-scan", scan, model_digest=digest) == set()
    scan["predicate"]["verdict"] = "refused"
    assert _judge("model-scan", scan, model_digest=digest) == {GateRefusal.MODEL_SCAN_FAILED}
    prov = writers._provenance(tmp_path / "p")
    digest = prov["subject"][0]["digest"]["sha256"]
    assert _judge("provenance", prov, model_digest=digest) == set()
    assert _judge("provenance", prov, model_digest=digest, dataset_digest="0" * 64) == {
        GateRefusal.PROVENANCE_MISMATCH
    }


def test_image_scan_is_rejudged_under_todays_policy() -> None:
    scan = writers._image_scan()
    assert _judge("image-scan", scan, image_digest="0" * 64) >= {GateRefusal.WRONG_SUBJECT}
    strict = GatePolicy.model_validate({"scan": {"fail_on": ["CRITICAL", "HIGH", "LOW"]}})
    assert _judge("image-scan", scan, policy=strict) == {GateRefusal.SCAN_FAILED_POLICY}


def test_approval_checks_refuse_with_reasons() -> None:
    ok = writers._approval()
    assert _judge("approval", ok, signer="mallory") == {GateRefusal.APPROVER_MISMATCH}
    assert _judge("approval", ok, signer="demo-approver", version="v2") == {
        GateRefusal.NOT_THIS_RELEASE
    }
    assert _judge("approval", ok, signer="demo-approver", release_sha256="0" * 64) == {
        GateRefusal.NOT_THIS_RELEASE
    }
    sod = GatePolicy(sources=SITE, approval=ApprovalPolicy(separation_of_duties=True))
    assert _judge(
        "approval",
        ok,
        signer="demo-approver",
        policy=sod,
        staging_approvers=frozenset({"demo-approver"}),
    ) == {GateRefusal.SEPARATION_OF_DUTIES}
    old = writers._approval()
    old["predicate"]["decidedAt"] = "2020-01-01T00:00:00Z"
    aged = GatePolicy(sources=SITE, max_approval_age_days=30)
    assert _judge("approval", old, signer="demo-approver", policy=aged) == {
        GateRefusal.STALE_APPROVAL
    }
    auto = writers._approval(auto=True)
    dev = GatePolicy(sources=SITE, approval=ApprovalPolicy(unsafe_auto_approve_stages=("staging",)))
    assert _judge("approval", auto, signer="attestor", policy=dev) == set()
    assert _judge("approval", auto, signer="attestor") == {GateRefusal.UNTRUSTED_SIGNER}
    # An approver's decision must not carry an attestor-only method, nor name someone else.
    forged = writers._approval()
    forged["predicate"]["method"] = "prefect-ui"
    assert _judge("approval", forged, signer="demo-approver") == {GateRefusal.APPROVER_MISMATCH}
    assert _judge("approval", ok, signer="attestor") == {GateRefusal.APPROVER_MISMATCH}


def test_a_predicate_that_does_not_validate_is_a_refusal_not_a_crash() -> None:
    entry = control("validation")
    bad = writers._validation()
    bad["predicate"]["result"] = {"nested": "garbage"}
    st = VerifiedStatement(statement=bad, signer="attestor", key_id="k")
    with pytest.raises(ControlRefused) as err:
        entry.parse(st, "validation.json")
    assert err.value.reason is GateRefusal.INVALID_PREDICATE
    st = VerifiedStatement(statement=writers._data_pull(), signer="attestor", key_id="k")
    with pytest.raises(ControlRefused) as err:
        entry.parse(st, "validation.json")
    assert err.value.reason is GateRefusal.WRONG_PREDICATE_TYPE


def test_gate_reason_maps_evidence_refusals_and_tool_errors() -> None:
    assert gate_reason(ControlRefused("x", reason=EvidenceRefusal.BAD_SIGNATURE)) is (
        GateRefusal.BAD_SIGNATURE
    )
    assert gate_reason(ControlRefused("x", reason=EvidenceRefusal.NOT_A_STATEMENT)) is (
        GateRefusal.MALFORMED_EVIDENCE
    )
    assert gate_reason(ToolError("s3 down")) is GateRefusal.CHECK_ERROR
    assert gate_reason(ControlRefused("x"), GateRefusal.NOT_STAGED) is GateRefusal.NOT_STAGED


# --- the gate end to end over a local registry ---------------------------------------------


@pytest.fixture
def registered(tmp_path: Path) -> tuple[ModelRegistry, KeyDirectory, Path]:
    """A version registered with every writer's real output (model signature left fake)."""
    keys = KeyDirectory(tmp_path / "keys")
    keys.ensure(approvers=("demo-approver",))
    evidence = ReleaseEvidence(load_private_key(keys.private("attestor")))
    prov = writers._provenance(tmp_path / "w")  # its model dir: tmp_path/w/train/model
    model_dir = tmp_path / "w" / "train" / "model"
    evidence.add("data-pull", writers._data_pull())
    evidence.add("validation", writers._validation())
    evidence.add("image-scan", writers._image_scan())
    evidence.add("provenance", prov)
    from secmlops.controls.model_scan import model_scan_statement, scan_model_files

    evidence.add("model-scan", model_scan_statement(scan_model_files(model_dir)))
    signature = tmp_path / "model.sig"
    signature.write_text("{}")
    models = ModelRegistry(LocalRegistry(tmp_path / "reg"), "churn")
    inputs = ReleaseInputs(
        dataset={"sha256": D, "repo": "/r", "path": "data/churn.csv", "rev": "v1", "commit": "1"},
        image={"ref": "img.tar", "sha256": IMAGE},
        metrics={"accuracy": 0.9},
        run="r1",
        builder="b",
        created_by="test",
    )
    register_release(models, model_dir, signature, evidence.bundles, inputs, attestor=evidence.key)
    return models, keys, tmp_path


def _refusal(models: ModelRegistry, keys: KeyDirectory, **policy: Any) -> ControlRefused:
    with pytest.raises(ControlRefused) as err:
        verify_release(
            models, "v1", "staging", keys=keys, policy=GatePolicy(sources=SITE, **policy)
        )
    assert isinstance(err.value.result, GateReport)
    return err.value


def test_gate_judges_registered_evidence_per_catalogue_control(
    registered: tuple[ModelRegistry, KeyDirectory, Path],
) -> None:
    models, keys, _ = registered
    refusal = _refusal(models, keys)
    report: GateReport = refusal.result
    by_name = {c.name: c for c in report.checks}
    assert list(by_name) == [
        "release",
        "model-signature",
        *gate_module.REQUIRED_EVIDENCE,
        "image-signature",
        "revocation",
        "approval",
    ]
    for name in gate_module.REQUIRED_EVIDENCE:
        assert by_name[name].passed, by_name[name].detail
    assert by_name["model-signature"].reason is GateRefusal.MODEL_SIGNATURE_INVALID
    assert by_name["approval"].reason is GateRefusal.APPROVAL_MISSING
    assert refusal.reason is GateRefusal.MODEL_SIGNATURE_INVALID  # the first failed check


def test_gate_refuses_tampered_and_missing_evidence_with_reasons(
    registered: tuple[ModelRegistry, KeyDirectory, Path],
) -> None:
    models, keys, tmp_path = registered
    evidence = tmp_path / "reg" / "churn" / "versions" / "v1" / "evidence"
    scan = evidence / "image-scan.json"
    bundle = json.loads(scan.read_text())
    sig = bundle["dsseEnvelope"]["signatures"][0]
    sig["sig"] = sig["sig"][::-1]
    scan.chmod(0o644)
    scan.write_text(json.dumps(bundle))
    (evidence / "model-scan.json").unlink()
    checks = {c.name: c for c in _refusal(models, keys).result.checks}
    assert checks["image-scan"].reason is GateRefusal.EVIDENCE_CHANGED
    assert checks["model-scan"].reason is GateRefusal.MISSING_EVIDENCE
    assert checks["data-pull"].passed
    (evidence / "release.json").unlink()
    refusal = _refusal(models, keys)
    assert refusal.reason is GateRefusal.MISSING_EVIDENCE
    assert [c.name for c in refusal.result.checks] == ["release"]


def test_report_shows_catalogue_facts_and_flags_unknown_files(
    registered: tuple[ModelRegistry, KeyDirectory, Path],
) -> None:
    """The report is the gate's verdict: the ``registered`` fixture's fake model signature
    is refused even though every bundle verifies; a version that really passes the gate
    (:mod:`tests.integration.deploy_world`) is all verified, with the catalogue's facts,
    until a file the catalogue does not know turns up."""
    from tests.integration.deploy_world import make_world

    models, keys, tmp_path = registered
    policy = GatePolicy(sources=SITE)
    fake = report_module.evidence_report(models, "v1", keys, policy=policy)
    assert all(e["verified"] for e in fake["evidence"])
    assert fake["all_verified"] is False
    assert fake["gate"]["build"]["failed"] == ["model-signature"]
    signature = {c["name"]: c for c in fake["gate"]["build"]["checks"]}["model-signature"]
    assert signature["reason"] == GateRefusal.MODEL_SIGNATURE_INVALID.value

    world = make_world(tmp_path / "world", LocalRegistry(tmp_path / "world-registry"))
    version = world.register()
    report = report_module.evidence_report(world.models, version, world.keys, policy=policy)
    assert report["all_verified"] is True
    assert report["gate"]["build"]["passed"] is True
    names = [e["name"] for e in report["evidence"]]
    assert names == [*gate_module.REQUIRED_EVIDENCE, "release"]
    facts = {e["name"]: e["facts"] for e in report["evidence"]}
    assert facts["validation"]["result"] == "PASSED"
    assert facts["release"]["dataset"]["sha256"] == D
    attestor = load_private_key(world.keys.private("attestor"))
    world.models.put_evidence(version, "surprise", sign_statement(writers._data_pull(), attestor))
    report = report_module.evidence_report(world.models, version, world.keys, policy=policy)
    assert report["all_verified"] is False
    assert report["gate"]["build"]["passed"] is True  # only the stray file is at fault
    assert "catalogue" in report["evidence"][-1]["error"]
    assert report["evidence"][-1]["reason"] == report_module.EvidenceReportRefusal.UNKNOWN_EVIDENCE


def test_register_release_needs_every_build_control(tmp_path: Path) -> None:
    missing = sorted(required_release_evidence())
    with pytest.raises(InputError, match=", ".join(missing)):
        release_module.register_release(
            ModelRegistry(LocalRegistry(tmp_path), "churn"),
            tmp_path,
            tmp_path / "sig",
            {},
            ReleaseInputs({}, {}, {}, "r", "b", "c"),
            attestor=None,  # type: ignore[arg-type]
        )
