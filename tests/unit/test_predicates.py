"""Every predicate model: round trip, strictness, and what each real writer produces today."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import BaseModel, ValidationError
from safetensors.numpy import save_file

from secmlops.catalogue import CATALOGUE, control
from secmlops.controls.approval import (
    ApprovalPolicy,
    ApprovalRequest,
    approval_statement,
    decide_automatically,
    decide_by_preapproval,
)
from secmlops.controls.data import DatasetPull, data_pull_statement
from secmlops.controls.image_scan import (
    Finding,
    ImageScanResult,
    ScanPolicy,
    evaluate_scan_policy,
    image_scan_statement,
    pinned_trivy_sha256,
)
from secmlops.controls.image_scan.db import UPSTREAM_SOURCE_LABEL, TrivyDbInfo
from secmlops.controls.model_scan import model_scan_statement, scan_model_files
from secmlops.controls.smoke_test import SmokeTestResult, smoke_test_statement
from secmlops.controls.training import (
    PROJECT_FILES,
    DatasetSelection,
    ImageSelection,
    RegistrySelection,
    RunRecord,
    RunSources,
    TrainingResult,
    provenance_statement,
)
from secmlops.controls.validation import CheckFailure, ValidationResult, validation_statement
from secmlops.deploy import vsa_statement
from secmlops.evidence.predicates import (
    ApprovalPredicate,
    DataPullPredicate,
    ModelScanPredicate,
    ProvenancePredicate,
    ReleasePredicate,
    SmokeTestPredicate,
    TestResultPredicate,
    VsaPredicate,
    VulnsPredicate,
    dump_predicate,
)
from secmlops.gate import GateCheck, GatePolicy, GateRefusal, GateReport
from secmlops.registry.models import ModelRegistry
from secmlops.registry.stores import LocalRegistry

D = "d" * 64
M = "b" * 64
C = "c" * 64
#: The embedded demo data registry as a worker builds it (the default site's dataset entry).
DEMO_REPO = "/srv/project/.secmlops/data-registry/repo"


def _json(statement: dict[str, Any]) -> dict[str, Any]:
    """What a reader gets: the statement after a trip through JSON."""
    loaded: dict[str, Any] = json.loads(json.dumps(statement))
    return loaded


# --- what each writer produces today -------------------------------------------------------


def _data_pull() -> dict[str, Any]:
    pull = DatasetPull(
        repo=DEMO_REPO,
        path="data/churn.csv",
        rev="v1.0",
        commit="1" * 40,
        dvc_md5="2" * 32,
        local_path=Path("/tmp/churn.csv"),
        sha256=D,
        size_bytes=1234,
        pulled_at="2026-01-01T00:00:00Z",
    )
    return data_pull_statement(pull)


def _validation(passed: bool = True) -> dict[str, Any]:
    failures = () if passed else (CheckFailure("age", "greater_than(0)", 2, ("-1", "-3")),)
    result = ValidationResult(
        data_path=Path("/tmp/churn.csv"),
        data_sha256=D,
        rows=10,
        columns=("age", "churned"),
        schema_name="ChurnSchema",
        schema_spec="ml.schema:ChurnSchema",
        schema_digest=C,
        passed=passed,
        checks_run=4,
        passed_tests=("age:dtype",),
        failed_tests=tuple(f.test_name for f in failures),
        failures=failures,
    )
    return validation_statement(result)


def _image_scan() -> dict[str, Any]:
    db = TrivyDbInfo(
        path=Path("/cache/db/trivy.db"),
        sha256="cd" * 32,
        schema_version=2,
        updated_at="2026-01-01T00:00:00Z",
        next_update=None,
        downloaded_at=None,
        source=UPSTREAM_SOURCE_LABEL,
        advisory_count=None,
    )
    finding = Finding(
        id="CVE-2010-4756",
        package="libc6",
        installed="2.36",
        fixed="",
        status="affected",
        severity="LOW",
        title="glob",
        target="img (debian 12.7)",
        kind="os-pkgs",
    )
    result = ImageScanResult(
        target="img.tar",
        artifact_name="img.tar",
        artifact_type="container_image",
        image_digest="ab" * 32,
        archive_sha256="ef" * 32,
        repo_tags=("secmlops/serving:demo",),
        os_family="debian",
        os_name="12.7",
        os_eosl=False,
        packages_scanned=10,
        trivy_version="0.76.0",
        trivy_sha256=pinned_trivy_sha256(),
        db=db,
        scanners=("vuln", "secret"),
        findings=(finding,),
        report_sha256="01" * 32,
        scan_started_at="2026-01-01T00:00:00Z",
        scan_finished_at="2026-01-01T00:00:01Z",
        raw_report=b"{}",
    )
    verdict = evaluate_scan_policy(
        result, ScanPolicy(), trusted_db_sha256=("cd" * 32,), today=dt.date(2026, 1, 2)
    )
    return image_scan_statement(result, verdict)


def _provenance(tmp_path: Path) -> dict[str, Any]:
    workspace = tmp_path / "train"
    (workspace / "model").mkdir(parents=True)
    (workspace / "model" / "model.json").write_text('{"classes": [0, 1]}')
    for name in PROJECT_FILES:  # dvc.yaml, params.yaml, ...: whatever the writer digests
        (workspace / name).write_text("stages:\n  train:\n    cmd: python -m ml.stages train\n")
    (workspace / "metrics.json").write_text('{"accuracy": 0.9}')
    result = TrainingResult(
        model_dir=workspace / "model",
        metrics={"accuracy": 0.9},
        params={"seed": 1},
        dvc_lock={"schema": "2.0"},
        started_at="2026-01-01T00:00:00Z",
        finished_at="2026-01-01T00:00:09Z",
        workspace=workspace,
        dataset_sha256=D,
        code_digests={"ml/stages.py": C},
        duration_seconds=9.0,
    )
    return provenance_statement(
        result,
        dataset_sha256=D,
        dataset_uri=f"{DEMO_REPO}#data/churn.csv@" + "1" * 40,
        dataset_commit="1" * 40,
        builder_id="https://secmlops.dev/builders/test",
        invocation_id="run-1",
        # The default site's entries, as the writers above used them.
        parameters={
            "model_name": "churn",
            "dataset": "churn-demo",
            "data_rev": None,
            "image": "demo",
            "registry": "default",
            "promote_to_production": True,
        },
        run=RunRecord(flow_run_id="run-1", flow_run_name="test-run", worker="ci@host"),
        sources=RunSources(
            dataset=DatasetSelection(
                name="churn-demo",
                repo=DEMO_REPO,
                path="data/churn.csv",
                rev="v1.0",
                commit="1" * 40,
                schema_spec="ml.schema:ChurnDataset",
                schema_digest=C,  # as _validation records it
                schema_sha256="e" * 64,
            ),
            image=ImageSelection(name="demo", target="img.tar", digest="sha256:" + "ab" * 32),
            registry=RegistrySelection(name="default", uri="/tmp/registry"),
        ),
    )


def _model_scan(tmp_path: Path) -> dict[str, Any]:
    model = tmp_path / "model"
    model.mkdir()
    save_file({"w": np.arange(6, dtype=np.float64).reshape(2, 3)}, str(model / "model.safetensors"))
    (model / "model.json").write_text(json.dumps({"classes": [0, 1]}))
    return model_scan_statement(scan_model_files(model))


def _smoke_test() -> dict[str, Any]:
    result = SmokeTestResult(
        model="churn",
        stage="staging",
        version="v1",
        model_digest=M,
        sample_sha256=D,
        rows=100,
        accuracy=0.91,
        min_accuracy=0.6,
        seconds=0.1234,
        passed=True,
        tested_at="2026-01-01T00:00:00Z",
    )
    return smoke_test_statement(result)


REQUEST = ApprovalRequest(
    model="churn", version="v1", model_digest=M, stage="staging", release_sha256=C
)


def _approval(auto: bool = False) -> dict[str, Any]:
    if auto:
        policy = ApprovalPolicy(unsafe_auto_approve_stages=("staging",))
        return approval_statement(REQUEST, decide_automatically(REQUEST, policy))
    return approval_statement(
        REQUEST, decide_by_preapproval(REQUEST, "demo-approver", ApprovalPolicy())
    )


def _vsa(tmp_path: Path) -> dict[str, Any]:
    models = ModelRegistry(LocalRegistry(tmp_path / "reg"), "churn")
    report = GateReport(
        model="churn",
        version="v1",
        stage="staging",
        model_digest=M,
        dataset_digest=D,
        image_digest="ab" * 32,
        release_sha256=C,
        approver="demo-approver",
        approval_method="cli-preapproval",
        checks=[
            GateCheck("release", True, "signed by attestor", ["k"]),
            GateCheck("approval", False, "nope", [], reason=GateRefusal.APPROVAL_MISSING),
        ],
        input_attestations=[{"uri": "k", "digest": {"sha256": C}}],
    )
    return dict(vsa_statement(models, report, GatePolicy()))


def _release() -> dict[str, Any]:
    # The release manifest's writer (register_release) builds it through the model too;
    # tests/unit/test_catalogue.py registers a real one.
    return {
        "predicateType": control("release").predicate_type,
        "predicate": dump_predicate(
            ReleasePredicate.model_validate(
                {
                    "model": "churn",
                    "version": "v1",
                    "modelDigest": {"sha256": M},
                    "signature": {"key": "churn/versions/v1/model.sig", "sha256": C},
                    "dataset": {
                        "sha256": D,
                        "repo": "/r",
                        "path": "data/churn.csv",
                        "rev": "v1.0",
                        "commit": "1" * 40,
                    },
                    "image": {"ref": "img.tar", "sha256": "ab" * 32},
                    "evidence": {"data-pull": {"key": "k", "sha256": C}},
                    "metrics": {"accuracy": 0.9},
                    "run": "r1",
                    "builder": "b",
                    "createdAt": "2026-01-01T00:00:00Z",
                }
            )
        ),
    }


WRITERS: dict[str, Callable[[Path], dict[str, Any]]] = {
    "data-pull": lambda _: _data_pull(),
    "validation": lambda _: _validation(),
    "image-scan": lambda _: _image_scan(),
    "provenance": _provenance,
    "model-scan": _model_scan,
    "release": lambda _: _release(),
    "approval": lambda _: _approval(),
    "vsa": _vsa,
    "smoke-test": lambda _: _smoke_test(),
}


def _written(name: str, tmp_path: Path) -> dict[str, Any]:
    return _json(WRITERS[name](tmp_path))


def test_every_catalogue_control_has_a_writer_here() -> None:
    assert set(WRITERS) == {c.name for c in CATALOGUE}


@pytest.mark.parametrize("name", [c.name for c in CATALOGUE])
def test_each_writer_validates_with_its_catalogue_model(tmp_path: Path, name: str) -> None:
    """What each writer produces today, after JSON, is what the gate's model reads."""
    entry = control(name)
    statement = _written(name, tmp_path)
    assert statement["predicateType"] == entry.predicate_type
    parsed = entry.predicate.model_validate(statement["predicate"])
    # Round trip: the model dumps back to what the writer wrote (no field lost or renamed).
    assert _drop_none(_json(dump_predicate(parsed))) == _drop_none(statement["predicate"])
    assert isinstance(entry.facts(parsed), dict)


def _drop_none(obj: Any) -> Any:
    """Writers may emit ``null`` for optional spec fields; dumps exclude them."""
    if isinstance(obj, dict):
        return {k: _drop_none(v) for k, v in obj.items() if v is not None}
    if isinstance(obj, list):
        return [_drop_none(v) for v in obj]
    return obj


def test_failed_validation_and_auto_approval_also_validate() -> None:
    TestResultPredicate.model_validate(_json(_validation(passed=False))["predicate"])
    auto = ApprovalPredicate.model_validate(_json(_approval(auto=True))["predicate"])
    assert auto.method == "unsafe-auto-approval" and auto.approver == "auto"


OURS: list[tuple[type[BaseModel], str]] = [
    (DataPullPredicate, "data-pull"),
    (ModelScanPredicate, "model-scan"),
    (ReleasePredicate, "release"),
    (ApprovalPredicate, "approval"),
    (SmokeTestPredicate, "smoke-test"),
]


@pytest.mark.parametrize(("model", "name"), OURS)
def test_our_predicates_refuse_unknown_fields(
    tmp_path: Path, model: type[BaseModel], name: str
) -> None:
    predicate = _written(name, tmp_path)["predicate"]
    with pytest.raises(ValidationError, match="extra"):
        model.model_validate({**predicate, "surprise": True})


@pytest.mark.parametrize(
    ("name", "path"),
    [
        ("vsa", ("secmlops",)),  # our data inside a standard predicate is ours: strict
        ("image-scan", ("verdict",)),
        ("validation", ("summary",)),
        ("provenance", ("runDetails", "builder")),
    ],
)
def test_our_extensions_of_standard_predicates_are_strict(
    tmp_path: Path, name: str, path: tuple[str, ...]
) -> None:
    predicate = _written(name, tmp_path)["predicate"]
    node = predicate
    for step in path:
        node = node[step]
    node["surprise"] = 1
    with pytest.raises(ValidationError):
        control(name).predicate.model_validate(predicate)


@pytest.mark.parametrize(
    ("model", "bad"),
    [
        (TestResultPredicate, {"result": "passed"}),
        (SmokeTestPredicate, {"result": "OK"}),
        (ModelScanPredicate, {"verdict": "clean"}),
        (ApprovalPredicate, {"decision": "maybe"}),
        (VsaPredicate, {"verificationResult": "SORT_OF"}),
    ],
)
def test_verdict_fields_take_only_their_known_values(
    tmp_path: Path, model: type[BaseModel], bad: dict[str, str]
) -> None:
    name = next(c.name for c in CATALOGUE if c.predicate is model)
    predicate = _written(name, tmp_path)["predicate"]
    with pytest.raises(ValidationError):
        model.model_validate({**predicate, **bad})


def test_models_are_frozen() -> None:
    pred = DataPullPredicate.model_validate(_json(_data_pull())["predicate"])
    with pytest.raises(ValidationError):
        pred.commit = "0" * 40


def test_vulns_and_provenance_keep_their_standard_keys(tmp_path: Path) -> None:
    vulns = VulnsPredicate.model_validate(_json(_image_scan())["predicate"])
    dumped = dump_predicate(vulns)
    assert set(dumped["invocation"]) == {"parameters", "uri", "event_id", "producer_id"}
    assert set(dumped["metadata"]) == {"scanStartedOn", "scanFinishedOn"}
    assert dumped["verdict"]["blocking"] == [] and vulns.verdict.passed
    prov = ProvenancePredicate.model_validate(_json(_provenance(tmp_path))["predicate"])
    assert {d.name for d in prov.build_definition.resolved_dependencies} >= {"dataset", "dvc.yaml"}


def test_provenance_parses_strictly_with_the_official_bindings(tmp_path: Path) -> None:
    """DESIGN.md: a standard predicate must parse with in-toto-attestation's protobufs
    (unknown fields are errors). Provenance does. Not yet the VSA (our ``secmlops`` object)
    nor the test result (our ``summary``): both should move into annotations."""
    from google.protobuf import json_format
    from in_toto_attestation.predicates.provenance.v1 import provenance_pb2

    predicate = _written("provenance", tmp_path)["predicate"]
    json_format.ParseDict(predicate, provenance_pb2.Provenance())
