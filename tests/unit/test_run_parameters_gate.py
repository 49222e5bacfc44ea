"""Provenance records the run, and the deploy gate verifies it (issue 12, finding 6 and the
"Provenance records the run" item): every flow-run parameter and the sources it selected go
into ``externalParameters``, the flow run into ``internalParameters.run``; the gate compares
every external parameter with the site's expected value and refuses unknown ones (SLSA
verification), and refuses provenance that predates run-parameter recording."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from secmlops.catalogue import (
    SCHEMA_FILE_ANNOTATION,
    Evidence,
    GateContext,
    GateRefusal,
    control,
)
from secmlops.controls.data import DatasetPull, data_pull_statement
from secmlops.controls.model_scan import model_scan_statement, scan_model_files
from secmlops.controls.training import (
    BUILD_TYPE,
    BUILD_TYPE_V1,
    PROJECT_FILES,
    DatasetSelection,
    ImageSelection,
    RegistrySelection,
    RunRecord,
    RunSources,
    TrainingResult,
    provenance_statement,
)
from secmlops.controls.validation import ValidationResult, validation_statement
from secmlops.errors import ControlRefused, InputError
from secmlops.evidence.keys import KeyDirectory
from secmlops.evidence.statements import VerifiedStatement, load_private_key
from secmlops.gate import GateCheck, GatePolicy, verify_release
from secmlops.registry.models import ModelRegistry
from secmlops.registry.stores import LocalRegistry
from secmlops.release import ReleaseEvidence, ReleaseInputs, register_release
from secmlops.settings import LocalPaths
from secmlops.site import (
    DEMO_DATA_REGISTRY_PARTS,
    RUN_PARAMETERS,
    DatasetSource,
    ImageSource,
    RegistrySource,
    Sources,
)
from tests.unit import test_predicates as writers

D = "d" * 64  # dataset sha256
SCHEMA = "c" * 64  # sha256 of the schema module's file (what a site pins)
SCHEMA_DIGEST = "5" * 64  # the schema's digest in the validation evidence
IMAGE = "ab" * 32  # image digest (hex, as the release records it)
COMMIT = "1" * 40
REPO = "https://git.example.com/data/churn-registry.git"
DEMO_REPO = "/home/ci/project/.secmlops/data-registry/repo"

SITE = Sources(
    datasets={
        "churn": DatasetSource(
            repo=REPO,
            path="data/churn.csv",
            rev="v2.3",
            schema="ml.schema:ChurnDataset",
            schema_sha256=SCHEMA,
        ),
        "churn-demo": DatasetSource(),
    },
    images={
        "serving": ImageSource(target="/srv/images/serving.tar", digest=f"sha256:{IMAGE}"),
        "demo": ImageSource(),
    },
    registries={
        "prod": RegistrySource(uri="s3://ml-models/churn", region="eu-central-1"),
        "default": RegistrySource(),
    },
)
POLICY = GatePolicy(sources=SITE)


def _parameters(**changes: Any) -> dict[str, Any]:
    parameters: dict[str, Any] = {
        "model_name": "churn-classifier",
        "dataset": "churn",
        "data_rev": "v2.3",
        "image": "serving",
        "registry": "prod",
        "promote_to_production": True,
    }
    parameters.update(changes)
    return parameters


def _sources(**changes: Any) -> RunSources:
    """What the run resolved, by default the site entries its parameters name."""
    dataset = {
        "name": "churn",
        "repo": REPO,
        "path": "data/churn.csv",
        "rev": "v2.3",
        "commit": COMMIT,
        "schema": "ml.schema:ChurnDataset",
        "schema_digest": SCHEMA_DIGEST,
        "schema_sha256": SCHEMA,
        **changes.get("dataset", {}),
    }
    image = {
        "name": "serving",
        "target": "/srv/images/serving.tar",
        "digest": f"sha256:{IMAGE}",
        **changes.get("image", {}),
    }
    registry = {"name": "prod", "uri": "s3://ml-models/churn", **changes.get("registry", {})}
    return RunSources(
        dataset=DatasetSelection.model_validate(dataset),
        image=ImageSelection.model_validate(image),
        registry=RegistrySelection.model_validate(registry),
    )


RUN = RunRecord(
    flow_run_id="0b9f3c1e-7a1d-4c3e-9a59-3f1f0a1b2c3d",
    flow_run_name="crimson-otter",
    deployment_id="5e0c6a4e-1111-4222-8333-944455556666",
    deployment_name="secure-training/churn",
    work_pool="secmlops-process",
    started_by=None,
    started_by_kind=None,
    started_by_note="the Prefect server records no identity for runs started from its UI or API",
    worker="svc-secmlops@worker-1",
)


def _training_result(tmp_path: Path) -> TrainingResult:
    workspace = tmp_path / "train"
    (workspace / "model").mkdir(parents=True)
    (workspace / "model" / "model.json").write_text('{"classes": [0, 1]}')
    for name in PROJECT_FILES:
        (workspace / name).write_text("stages:\n  train:\n    cmd: python -m ml.stages train\n")
    (workspace / "metrics.json").write_text('{"accuracy": 0.9}')
    return TrainingResult(
        model_dir=workspace / "model",
        metrics={"accuracy": 0.9},
        params={"seed": 1},
        dvc_lock={"schema": "2.0"},
        started_at="2026-01-01T00:00:00Z",
        finished_at="2026-01-01T00:00:09Z",
        workspace=workspace,
        dataset_sha256=D,
        code_digests={"ml/stages.py": "e" * 64},
        duration_seconds=9.0,
    )


def _provenance(
    tmp_path: Path,
    *,
    parameters: dict[str, Any] | None = None,
    sources: RunSources | None = None,
    run: RunRecord = RUN,
) -> dict[str, Any]:
    sources = sources or _sources()
    statement = provenance_statement(
        _training_result(tmp_path),
        dataset_sha256=D,
        dataset_uri=f"{sources.dataset.repo}#{sources.dataset.path}@{COMMIT}",
        dataset_commit=COMMIT,
        builder_id="https://secmlops.dev/builders/test",
        invocation_id=run.flow_run_id or "local",
        parameters=_parameters() if parameters is None else parameters,
        run=run,
        sources=sources,
    )
    loaded: dict[str, Any] = json.loads(json.dumps(statement))  # what the gate reads
    return loaded


def _data_pull(repo: str = REPO, rev: str = "v2.3", commit: str = COMMIT) -> dict[str, Any]:
    return data_pull_statement(
        DatasetPull(
            repo=repo,
            path="data/churn.csv",
            rev=rev,
            commit=commit,
            dvc_md5="2" * 32,
            local_path=Path("/tmp/churn.csv"),
            sha256=D,
            size_bytes=1234,
            pulled_at="2026-01-01T00:00:00Z",
        )
    )


def _validation(
    schema_digest: str = SCHEMA_DIGEST, schema_file: str | None = SCHEMA
) -> dict[str, Any]:
    statement = validation_statement(
        ValidationResult(
            data_path=Path("/tmp/churn.csv"),
            data_sha256=D,
            rows=10,
            columns=("age", "churned"),
            schema_name="ChurnDataset",
            schema_spec="ml.schema:ChurnDataset",
            schema_digest=schema_digest,
            passed=True,
            checks_run=4,
            passed_tests=("age:dtype",),
            failed_tests=(),
            failures=(),
        )
    )
    if schema_file is not None:  # the schema file's sha256, next to the schema's digest
        statement["predicate"]["configuration"][0]["annotations"] = {
            SCHEMA_FILE_ANNOTATION: schema_file
        }
    return statement


def _evidence(name: str, statement: dict[str, Any]) -> Evidence[Any]:
    entry = control(name)
    loaded = json.loads(json.dumps(statement))
    st = VerifiedStatement(statement=loaded, signer="attestor", key_id="k")
    return entry.parse(st, f"{name}.json")


def _ctx(
    prov: dict[str, Any],
    *,
    policy: GatePolicy = POLICY,
    data_pull: dict[str, Any] | None = None,
    validation: dict[str, Any] | None = None,
    image_digest: str = IMAGE,
) -> GateContext:
    return GateContext(
        model="churn-classifier",
        version="v1",
        stage="staging",
        policy=policy,
        model_digest=prov["subject"][0]["digest"]["sha256"],
        dataset_digest=D,
        image_digest=image_digest,
        release_sha256="f" * 64,
        verified={
            "data-pull": _evidence("data-pull", data_pull or _data_pull()),
            "validation": _evidence("validation", validation or _validation()),
        },
    )


def _refusals(prov: dict[str, Any], ctx: GateContext | None = None) -> dict[GateRefusal, str]:
    """{reason: details} of the failed checks of the provenance (empty: it passes)."""
    results = control("provenance").check(_evidence("provenance", prov), ctx or _ctx(prov))
    refusals: dict[GateRefusal, str] = {}
    for r in results:
        if not r.passed and r.reason:
            refusals[r.reason] = " | ".join(filter(None, (refusals.get(r.reason), r.detail)))
    return refusals


# --- what the provenance records ----------------------------------------------------------


def test_provenance_records_every_parameter_the_sources_and_the_run(tmp_path: Path) -> None:
    """Issue 12 finding 6: the evidence recorded neither the flow-run id nor who started the
    run, and the provenance's externalParameters held only params.yaml and the stages."""
    predicate = _provenance(tmp_path)["predicate"]
    build = predicate["buildDefinition"]
    assert build["buildType"] == BUILD_TYPE
    external = build["externalParameters"]
    assert set(external) == {"params", "stages", "parameters", "sources"}
    assert external["parameters"] == _parameters()
    assert set(external["parameters"]) == set(RUN_PARAMETERS)
    assert external["sources"] == {
        "dataset": {
            "name": "churn",
            "repo": REPO,
            "path": "data/churn.csv",
            "rev": "v2.3",
            "commit": COMMIT,
            "schema": "ml.schema:ChurnDataset",
            "schemaDigest": SCHEMA_DIGEST,
            "schemaSha256": SCHEMA,
        },
        "image": {
            "name": "serving",
            "target": "/srv/images/serving.tar",
            "digest": f"sha256:{IMAGE}",
        },
        "registry": {"name": "prod", "uri": "s3://ml-models/churn"},
    }
    # Who started the run is not the worker: unknown to Prefect OSS, null with a note.
    assert build["internalParameters"]["run"] == {
        "flowRunId": RUN.flow_run_id,
        "flowRunName": "crimson-otter",
        "deploymentId": RUN.deployment_id,
        "deploymentName": "secure-training/churn",
        "workPool": "secmlops-process",
        "startedBy": None,
        "startedByKind": None,
        "startedByNote": RUN.started_by_note,
        "worker": "svc-secmlops@worker-1",
    }
    assert predicate["runDetails"]["metadata"]["invocationId"] == RUN.flow_run_id


def test_provenance_with_the_run_parses_strictly_with_the_official_bindings(
    tmp_path: Path,
) -> None:
    from google.protobuf import json_format
    from in_toto_attestation.predicates.provenance.v1 import provenance_pb2

    json_format.ParseDict(_provenance(tmp_path)["predicate"], provenance_pb2.Provenance())


def test_secrets_in_parameters_and_sources_are_redacted(tmp_path: Path) -> None:
    """Issue 12 finding 5: a token in a repo URL must not reach the signed provenance."""
    leaky = "https://bob:ghp_s3cr3t@git.example.com/data/churn-registry.git"
    prov = _provenance(
        tmp_path,
        parameters=_parameters(data_rev="v2.3", extra={"url": leaky}),
        sources=_sources(dataset={"repo": leaky}),
    )
    text = json.dumps(prov)
    assert "ghp_s3cr3t" not in text and "bob" not in text
    external = prov["predicate"]["buildDefinition"]["externalParameters"]
    assert external["sources"]["dataset"]["repo"] == (
        "https://***@git.example.com/data/churn-registry.git"
    )
    assert external["parameters"]["extra"] == {"url": external["sources"]["dataset"]["repo"]}


def test_the_recorded_commit_must_be_the_pulled_one(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"sources\.dataset\.commit"):
        _provenance(tmp_path, sources=_sources(dataset={"commit": "9" * 40}))


# --- the gate: every external parameter against the site's expected value ----------------


def test_provenance_matching_the_site_passes(tmp_path: Path) -> None:
    assert _refusals(_provenance(tmp_path)) == {}


def test_the_demo_entry_accepts_the_workers_demo_registry_path(tmp_path: Path) -> None:
    """The demo dataset entry names no repo: the worker builds it under its state home."""
    demo_repo = LocalPaths(home=Path("/x/.secmlops")).data_registry / "repo"  # the flow's
    assert demo_repo.parts[-len(DEMO_DATA_REGISTRY_PARTS) :] == DEMO_DATA_REGISTRY_PARTS
    prov = _provenance(
        tmp_path,
        parameters=_parameters(dataset="churn-demo", data_rev=None, image="demo"),
        sources=_sources(
            dataset={"name": "churn-demo", "repo": DEMO_REPO, "rev": "v1.0"},
            image={"name": "demo", "target": "/home/ci/.secmlops/images/serving-demo.tar"},
        ),
    )
    ctx = _ctx(prov, data_pull=_data_pull(repo=DEMO_REPO, rev="v1.0"))
    assert _refusals(prov, ctx) == {}
    for elsewhere in ("/tmp/attacker/repo", "https://evil.example/data-registry/repo"):
        prov = _provenance(
            tmp_path / elsewhere.replace("/", "_"),
            parameters=_parameters(dataset="churn-demo", data_rev=None),
            sources=_sources(dataset={"name": "churn-demo", "repo": elsewhere, "rev": "v1.0"}),
        )
        ctx = _ctx(prov, data_pull=_data_pull(repo=elsewhere, rev="v1.0"))
        assert set(_refusals(prov, ctx)) == {GateRefusal.SOURCE_MISMATCH}, elsewhere


def test_provenance_without_parameters_predates_run_parameter_recording(tmp_path: Path) -> None:
    prov = _provenance(tmp_path)
    build = prov["predicate"]["buildDefinition"]
    build["buildType"] = BUILD_TYPE_V1
    del build["externalParameters"]["parameters"], build["externalParameters"]["sources"]
    refusals = _refusals(prov)
    assert set(refusals) == {GateRefusal.PARAMETERS_NOT_RECORDED}
    assert "predates run-parameter recording" in refusals[GateRefusal.PARAMETERS_NOT_RECORDED]


@pytest.mark.parametrize(
    "extra",
    [
        {"schema_spec": "evil_module:Anything"},  # finding 1: a schema chosen by the starter
        {"data": {"repo": "/tmp/attacker", "schema_spec": "x:Y"}},  # the retired block
        {"trivy_cache_dir": "/tmp/crafted-db"},  # finding 3
    ],
)
def test_an_unknown_parameter_is_refused(tmp_path: Path, extra: dict[str, Any]) -> None:
    prov = _provenance(tmp_path, parameters=_parameters(**extra))
    assert set(_refusals(prov)) == {GateRefusal.UNKNOWN_PARAMETER}


def test_an_unknown_external_parameter_or_build_type_is_refused(tmp_path: Path) -> None:
    prov = _provenance(tmp_path)
    prov["predicate"]["buildDefinition"]["externalParameters"]["schema"] = "evil:Mod"
    assert set(_refusals(prov)) == {GateRefusal.UNKNOWN_PARAMETER}
    prov = _provenance(tmp_path / "b")
    prov["predicate"]["buildDefinition"]["buildType"] = "https://example.com/other/v1"
    assert set(_refusals(prov)) == {GateRefusal.UNKNOWN_PARAMETER}


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("dataset", "attacker-data"),
        ("image", "attacker-image"),
        ("registry", "http://127.0.0.1:9000"),  # finding 4: an endpoint a run names
        ("model_name", "another-model"),
        ("data_rev", "main~1"),
        ("data_rev", "--upload-pack=touch /tmp/x"),
        ("data_rev", "refs/heads/main"),
        ("promote_to_production", "yes"),
    ],
)
def test_a_parameter_the_site_does_not_allow_is_refused(
    tmp_path: Path, name: str, value: Any
) -> None:
    """Issue 12 finding 2: the gate compared none of the run's choices with an expected value."""
    prov = _provenance(tmp_path, parameters=_parameters(**{name: value}))
    refusals = _refusals(prov)
    assert GateRefusal.PARAMETER_NOT_ALLOWED in refusals
    assert f"parameter {name}" in refusals[GateRefusal.PARAMETER_NOT_ALLOWED]


def test_a_missing_parameter_is_refused(tmp_path: Path) -> None:
    parameters = _parameters()
    del parameters["registry"]
    refusals = _refusals(_provenance(tmp_path, parameters=parameters))
    assert "no value for parameter registry" in refusals[GateRefusal.PARAMETER_NOT_ALLOWED]


@pytest.mark.parametrize(
    ("changes", "what"),
    [
        ({"dataset": {"repo": "https://evil.example/churn.git"}}, "site's entry names"),
        ({"dataset": {"path": "data/other.csv"}}, "path"),
        ({"dataset": {"schema": "ml.schema:Permissive"}}, "validated against"),
        ({"image": {"target": "/tmp/other.tar"}}, "scanned"),
        ({"registry": {"uri": "s3://attacker-bucket/churn"}}, "registry prod"),
        ({"dataset": {"name": "churn-demo"}}, "parameter dataset"),
    ],
)
def test_a_source_that_is_not_the_site_entry_is_refused(
    tmp_path: Path, changes: dict[str, Any], what: str
) -> None:
    prov = _provenance(tmp_path, sources=_sources(**changes))
    refusals = _refusals(prov)
    assert GateRefusal.SOURCE_MISMATCH in refusals
    assert what in refusals[GateRefusal.SOURCE_MISMATCH]


def test_the_registry_uri_is_compared_in_one_spelling(tmp_path: Path) -> None:
    prov = _provenance(tmp_path, sources=_sources(registry={"uri": "s3://ml-models/churn/"}))
    assert _refusals(prov) == {}


def test_the_release_image_must_be_the_one_the_site_serves(tmp_path: Path) -> None:
    """Issue 12 finding 2: nothing tied the scanned image to the image actually served."""
    other = "99" * 32
    prov = _provenance(tmp_path, sources=_sources(image={"digest": f"sha256:{other}"}))
    refusals = _refusals(prov, _ctx(prov, image_digest=other))
    assert set(refusals) == {GateRefusal.SOURCE_MISMATCH}
    assert "is not the image the site serves as serving" in refusals[GateRefusal.SOURCE_MISMATCH]
    # ... and the provenance must record the release's image.
    prov = _provenance(tmp_path / "b")
    assert set(_refusals(prov, _ctx(prov, image_digest=other))) == {GateRefusal.SOURCE_MISMATCH}


def test_a_schema_other_than_the_pinned_one_is_refused(tmp_path: Path) -> None:
    weaker, weaker_file = "0" * 64, "1" * 64
    # Recorded honestly: the provenance and the validation evidence name the weaker schema.
    prov = _provenance(
        tmp_path, sources=_sources(dataset={"schema_digest": weaker, "schema_sha256": weaker_file})
    )
    ctx = _ctx(prov, validation=_validation(schema_digest=weaker, schema_file=weaker_file))
    refusals = _refusals(prov, ctx)
    assert set(refusals) == {GateRefusal.SOURCE_MISMATCH}
    assert "pins" in refusals[GateRefusal.SOURCE_MISMATCH]
    assert "validated against a schema whose file" in refusals[GateRefusal.SOURCE_MISMATCH]
    # The provenance claims the pinned schema, the validation evidence says otherwise.
    prov = _provenance(tmp_path / "b")
    ctx = _ctx(prov, validation=_validation(schema_digest=weaker, schema_file=weaker_file))
    assert set(_refusals(prov, ctx)) == {GateRefusal.SOURCE_MISMATCH}
    # A validation statement that does not record its schema file cannot meet a pin.
    prov = _provenance(tmp_path / "c")
    refusals = _refusals(prov, _ctx(prov, validation=_validation(schema_file=None)))
    assert set(refusals) == {GateRefusal.SOURCE_MISMATCH}


def test_an_unpinned_schema_need_not_record_its_file(tmp_path: Path) -> None:
    prov = _provenance(
        tmp_path,
        parameters=_parameters(dataset="churn-demo", data_rev=None),
        sources=_sources(dataset={"name": "churn-demo", "repo": DEMO_REPO, "rev": "v1.0"}),
    )
    ctx = _ctx(
        prov,
        data_pull=_data_pull(repo=DEMO_REPO, rev="v1.0"),
        validation=_validation(schema_file=None),
    )
    assert _refusals(prov, ctx) == {}


def test_the_recorded_dataset_must_be_what_the_data_pull_says(tmp_path: Path) -> None:
    prov = _provenance(tmp_path)
    ctx = _ctx(prov, data_pull=_data_pull(rev="v9.9"))
    assert "data-pull evidence says" in _refusals(prov, ctx)[GateRefusal.SOURCE_MISMATCH]


def test_without_verified_data_pull_and_validation_the_check_refuses(tmp_path: Path) -> None:
    prov = _provenance(tmp_path)
    ctx = _ctx(prov)
    bare = GateContext(
        model=ctx.model,
        version=ctx.version,
        stage=ctx.stage,
        policy=ctx.policy,
        model_digest=ctx.model_digest,
        dataset_digest=ctx.dataset_digest,
        image_digest=ctx.image_digest,
        release_sha256=ctx.release_sha256,
    )
    assert set(_refusals(prov, bare)) == {GateRefusal.MISSING_EVIDENCE}


def test_an_entry_removed_from_the_site_is_refused(tmp_path: Path) -> None:
    """Expected values are today's site configuration: an entry removed is no longer allowed."""
    prov = _provenance(tmp_path)
    site = SITE.model_copy(update={"datasets": {"churn-demo": DatasetSource()}})
    refusals = _refusals(prov, _ctx(prov, policy=GatePolicy(sources=site)))
    assert set(refusals) == {GateRefusal.PARAMETER_NOT_ALLOWED}


# --- through the deploy gate ---------------------------------------------------------------


def _registered(tmp_path: Path, prov: dict[str, Any]) -> tuple[ModelRegistry, KeyDirectory]:
    """A version registered with ``prov`` and consistent build evidence (signature fake)."""
    keys = KeyDirectory(tmp_path / "keys")
    keys.ensure()
    evidence = ReleaseEvidence(load_private_key(keys.private("attestor")))
    model_dir = tmp_path / "train" / "model"
    evidence.add("data-pull", _data_pull())
    evidence.add("validation", _validation())
    evidence.add("image-scan", writers._image_scan())
    evidence.add("provenance", prov)
    evidence.add("model-scan", model_scan_statement(scan_model_files(model_dir)))
    signature = tmp_path / "model.sig"
    signature.write_text("{}")
    models = ModelRegistry(LocalRegistry(tmp_path / "reg"), "churn-classifier")
    inputs = ReleaseInputs(
        dataset={
            "sha256": D,
            "repo": REPO,
            "path": "data/churn.csv",
            "rev": "v2.3",
            "commit": COMMIT,
        },
        image={"ref": "/srv/images/serving.tar", "sha256": IMAGE},
        metrics={"accuracy": 0.9},
        run=RUN.flow_run_id or "",
        builder="b",
        created_by=RUN.worker,
        started_by=RUN.started_by,
    )
    register_release(models, model_dir, signature, evidence.bundles, inputs, attestor=evidence.key)
    return models, keys


def _gate_check(models: ModelRegistry, keys: KeyDirectory, name: str) -> GateCheck:
    with pytest.raises(ControlRefused) as err:  # the fake model signature, no approval
        verify_release(models, "v1", "staging", keys=keys, policy=POLICY)
    return next(c for c in err.value.result.checks if c.name == name)


def test_the_deploy_gate_verifies_the_recorded_run(tmp_path: Path) -> None:
    """Issue 12 finding 2, end to end: a run that chose a dataset the site does not list is
    refused by the deploy gate itself; the same release with the site's choices passes."""
    honest = _provenance(tmp_path / "good")
    good = _gate_check(*_registered(tmp_path / "good", honest), "provenance")
    assert good.passed, good.detail
    chosen = _provenance(tmp_path / "bad", parameters=_parameters(dataset="attacker-data"))
    bad = _gate_check(*_registered(tmp_path / "bad", chosen), "provenance")
    assert bad.reason is GateRefusal.PARAMETER_NOT_ALLOWED
    assert "attacker-data" in bad.detail


def test_the_version_claim_names_the_worker_and_the_starter_apart(tmp_path: Path) -> None:
    """Issue 12 finding 6: ``createdBy`` was the worker's OS user, as if they started the run."""
    models, _ = _registered(tmp_path, _provenance(tmp_path))
    claim = json.loads(models.store.read(f"{models.version_prefix('v1')}/version.json"))
    assert claim["worker"] == "svc-secmlops@worker-1"
    assert claim["startedBy"] is None
    assert "createdBy" not in claim
