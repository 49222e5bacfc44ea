"""Training with the real `dvc repro`: the gate, determinism, provenance, and the model
going through the scan and signing controls."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from ml.model import load_model
from ml.stages import classification_metrics, roc_auc, split_indices
from secmlops._internal.digests import sha256_file, tree_digest
from secmlops.controls.model_scan import scan_model_files
from secmlops.controls.signing import sign_model, verify_model_signature
from secmlops.controls.training import (
    RunRecord,
    RunSources,
    TrainingRefusal,
    TrainingResult,
    provenance_statement,
    train_with_dvc,
)
from secmlops.errors import ControlRefused, InputError, ToolError
from secmlops.evidence.statements import PREDICATE_SLSA_PROVENANCE, generate_keypair

pytestmark = pytest.mark.integration

PROJECT = Path(__file__).resolve().parents[2]
TIMINGS: dict[str, float] = {}


def churn_csv(path: Path, n: int = 600, seed: int = 7) -> Path:
    """A synthetic churn CSV (the product's schema) with a learnable signal."""
    rng = np.random.default_rng(seed)
    tenure = rng.integers(1, 73, n)
    contract = rng.choice(["month-to-month", "one-year", "two-year"], n, p=[0.55, 0.25, 0.2])
    internet = rng.choice(["dsl", "fiber", "none"], n, p=[0.35, 0.45, 0.2])
    monthly = np.round(rng.uniform(20, 110, n), 2)
    calls = rng.poisson(1.5, n)
    paperless = rng.integers(0, 2, n)
    logit = (
        -0.07 * tenure
        + 0.03 * (monthly - 60)
        + 0.8 * calls
        + np.select([contract == "month-to-month", contract == "one-year"], [1.8, -0.5], -1.8)
        + np.where(internet == "fiber", 0.6, 0.0)
    )
    churned = (rng.uniform(size=n) < 1 / (1 + np.exp(-logit))).astype(int)
    pd.DataFrame(
        {
            "customer_id": [f"C{i:05d}" for i in range(n)],
            "tenure_months": tenure,
            "monthly_charges": monthly,
            "total_charges": np.round(monthly * tenure, 2),
            "contract": contract,
            "internet_service": internet,
            "support_calls": calls,
            "paperless_billing": paperless,
            "churned": churned,
        }
    ).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return churn_csv(tmp_path_factory.mktemp("data") / "churn.csv")


@pytest.fixture(scope="module")
def trained(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainingResult:
    workspace = tmp_path_factory.mktemp("run") / "ws"
    t0 = time.monotonic()
    result = train_with_dvc(dataset, workspace=workspace, project_dir=PROJECT)
    TIMINGS["first"] = time.monotonic() - t0
    return result


def _project_with(tmp_path: Path, evaluate: dict[str, float]) -> Path:
    """A copy of the project (dvc.yaml, its code, params.yaml with these thresholds)."""
    project = tmp_path / "project"
    project.mkdir()
    shutil.copyfile(PROJECT / "dvc.yaml", project / "dvc.yaml")
    shutil.copytree(PROJECT / "ml", project / "ml", ignore=shutil.ignore_patterns("__pycache__"))
    params = yaml.safe_load((PROJECT / "params.yaml").read_text())
    params["evaluate"] = evaluate
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    return project


def test_dvc_repro_trains_and_gate_passes(trained: TrainingResult, dataset: Path) -> None:
    result = trained
    assert result.metrics["accuracy"] >= result.params["evaluate"]["min_accuracy"]
    assert result.metrics["roc_auc"] >= result.params["evaluate"]["min_roc_auc"]
    assert sorted(p.name for p in result.model_dir.iterdir()) == ["model.json", "model.safetensors"]
    assert set(result.dvc_lock["stages"]) == {"train", "evaluate"}
    train_lock = result.dvc_lock["stages"]["train"]
    assert train_lock["deps"][0]["path"] == "data/dataset.csv"
    assert train_lock["outs"][0]["md5"].endswith(".dir")
    assert result.dataset_sha256 == sha256_file(dataset)
    assert result.started_at <= result.finished_at
    model = load_model(result.model_dir)
    assert model.document["metadata"]["dataset_sha256"] == result.dataset_sha256
    print(f"\ntrain_with_dvc: {TIMINGS['first']:.1f} s, metrics {result.metrics}")


def test_trained_model_scans_clean_and_signs(trained: TrainingResult, tmp_path: Path) -> None:
    scan = scan_model_files(trained.model_dir)
    assert scan.passed and scan.model_digest == trained.model_digest
    generate_keypair(tmp_path / "k.pem", tmp_path / "k.pub")
    sig = sign_model(
        trained.model_dir, private_key=tmp_path / "k.pem", signature=tmp_path / "model.sig"
    )
    assert sig.model_digest == trained.model_digest
    verify_model_signature(
        trained.model_dir, signature=tmp_path / "model.sig", public_key=tmp_path / "k.pub"
    )


def _run_kwargs(commit: str) -> dict[str, Any]:
    """The run a provenance records: parameters, the sources they selected, the flow run."""
    return {
        "parameters": {"model_name": "churn-classifier", "dataset": "churn-demo"},
        "run": RunRecord(flow_run_id="run-123", worker="ci@host"),
        "sources": RunSources.model_validate(
            {
                "dataset": {
                    "name": "churn-demo",
                    "repo": "https://example.invalid/data.git",
                    "path": "data/churn.csv",
                    "rev": "v1.0",
                    "commit": commit,
                    "schema": "ml.schema:ChurnDataset",
                    "schemaDigest": "c" * 64,
                    "schemaSha256": "e" * 64,
                },
                "image": {"name": "demo", "target": "img.tar", "digest": "sha256:" + "a" * 64},
                "registry": {"name": "default", "uri": "/tmp/registry"},
            }
        ),
    }


def test_provenance_statement(trained: TrainingResult) -> None:
    st = provenance_statement(
        trained,
        dataset_sha256=trained.dataset_sha256,
        dataset_uri="git+https://example.invalid/data.git#data/churn.csv",
        dataset_commit="a" * 40,
        builder_id="https://secmlops.dev/builders/local",
        invocation_id="run-123",
        **_run_kwargs("a" * 40),
    )
    assert st["predicateType"] == PREDICATE_SLSA_PROVENANCE
    subjects = {s["name"]: s["digest"]["sha256"] for s in st["subject"]}
    assert subjects["model"] == tree_digest(trained.model_dir)
    assert subjects["model/model.safetensors"] == sha256_file(
        trained.model_dir / "model.safetensors"
    )
    build = st["predicate"]["buildDefinition"]
    deps = {d["name"]: d for d in build["resolvedDependencies"]}
    assert deps["dataset"]["digest"] == {"sha256": trained.dataset_sha256, "gitCommit": "a" * 40}
    # The code deps are those dvc.yaml lists, not the dataset (above) nor the model (an out).
    code = {"ml/model.py", "ml/stages.py"}
    assert set(deps) == {"dataset", "dvc.yaml", "params.yaml", *code}
    for rel in code:
        assert deps[rel]["digest"]["sha256"] == sha256_file(PROJECT / rel)
    assert deps["dvc.yaml"]["digest"]["sha256"] == sha256_file(PROJECT / "dvc.yaml")
    assert deps["params.yaml"]["digest"]["sha256"] == sha256_file(PROJECT / "params.yaml")
    assert set(build["externalParameters"]["stages"]) == {"train", "evaluate"}
    assert build["externalParameters"]["params"]["train"]["label"] == "churned"
    run = st["predicate"]["runDetails"]
    assert run["metadata"]["invocationId"] == "run-123"
    assert run["byproducts"][0]["annotations"] == trained.metrics
    with pytest.raises(InputError, match="not the one trained on"):
        provenance_statement(
            trained,
            dataset_sha256="0" * 64,
            dataset_uri="x",
            dataset_commit="y",
            builder_id="b",
            invocation_id="i",
            **_run_kwargs("y"),
        )


def test_same_inputs_same_model_digest(
    trained: TrainingResult, dataset: Path, tmp_path: Path
) -> None:
    t0 = time.monotonic()
    again = train_with_dvc(dataset, workspace=tmp_path / "ws2", project_dir=PROJECT)
    TIMINGS["second"] = time.monotonic() - t0
    assert again.model_digest == trained.model_digest
    assert again.metrics == trained.metrics
    assert again.workspace != trained.workspace
    print(f"\nsecond train_with_dvc: {TIMINGS['second']:.1f} s")


def test_gate_refuses_low_accuracy(dataset: Path, tmp_path: Path) -> None:
    project = _project_with(tmp_path, {"min_accuracy": 0.99, "min_roc_auc": 0.5})
    with pytest.raises(ControlRefused) as err:
        train_with_dvc(dataset, workspace=tmp_path / "ws", project_dir=project)
    message = str(err.value)
    assert "accuracy = 0." in message and "min_accuracy = 0.99" in message
    assert "roc_auc" not in message  # only the failing metric is named
    assert err.value.exit_code == 1
    assert err.value.reason is TrainingRefusal.METRIC_BELOW_THRESHOLD
    assert [c.metric for c in err.value.result if not c.passed] == ["accuracy"]
    assert Path(err.value.details["model_dir"]).is_dir()


def test_inputs_checked_before_dvc_runs(dataset: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="sets no thresholds"):
        train_with_dvc(dataset, workspace=tmp_path / "a", project_dir=_project_with(tmp_path, {}))
    bad = tmp_path / "bad.csv"
    pd.read_csv(dataset).drop(columns=["contract"]).to_csv(bad, index=False)
    with pytest.raises(InputError, match="contract"):
        train_with_dvc(bad, workspace=tmp_path / "b", project_dir=PROJECT)
    used = tmp_path / "used"
    used.mkdir()
    (used / "x").write_text("x")
    with pytest.raises(InputError, match="not empty"):
        train_with_dvc(dataset, workspace=used, project_dir=PROJECT)


def test_split_and_metrics_match_sklearn(dataset: Path) -> None:
    from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

    y = pd.read_csv(dataset)["churned"].to_numpy()
    train_idx, test_idx = split_indices(y, test_size=0.25, seed=42)
    again = split_indices(y, test_size=0.25, seed=42)
    assert np.array_equal(test_idx, again[1]) and np.array_equal(train_idx, again[0])
    assert len(set(train_idx) & set(test_idx)) == 0 and len(train_idx) + len(test_idx) == len(y)
    assert abs(y[test_idx].mean() - y.mean()) < 0.02  # stratified
    rng = np.random.default_rng(0)
    scores = np.round(rng.uniform(size=len(y)), 1)  # many ties
    assert roc_auc(y == 1, scores) == pytest.approx(roc_auc_score(y, scores), abs=1e-12)
    pred = (scores > 0.5).astype(int)
    proba = np.column_stack([1 - scores, scores])
    metrics = classification_metrics(y, pred, proba, (0, 1))
    assert metrics["accuracy"] == pytest.approx(accuracy_score(y, pred), abs=1e-6)
    assert metrics["f1"] == pytest.approx(f1_score(y, pred), abs=1e-6)


def _with_code_deps(project: Path, deps: list[str]) -> Path:
    """Rewrite the project's dvc.yaml so both stages list ``deps`` as their code."""
    document = yaml.safe_load((project / "dvc.yaml").read_text())
    for stage in document["stages"].values():
        stage["deps"] = [d for d in stage["deps"] if not d.startswith("ml")] + deps
    (project / "dvc.yaml").write_text(yaml.safe_dump(document))
    return project


def test_code_recorded_is_read_from_dvc_yaml(dataset: Path, tmp_path: Path) -> None:
    params = yaml.safe_load((PROJECT / "params.yaml").read_text())
    project = _with_code_deps(_project_with(tmp_path, params["evaluate"]), ["ml"])
    (project / "ml" / "__pycache__").mkdir()
    (project / "ml" / "__pycache__" / "stale.pyc").write_bytes(b"\0")
    result = train_with_dvc(dataset, workspace=tmp_path / "ws", project_dir=project)
    expected = {f"ml/{p.name}": sha256_file(p) for p in (PROJECT / "ml").glob("*.py")}
    assert result.code_digests == expected  # every file of the folder, no bytecode
    st = provenance_statement(
        result,
        dataset_sha256=result.dataset_sha256,
        dataset_uri="x",
        dataset_commit="y",
        builder_id="b",
        invocation_id="i",
        **_run_kwargs("y"),
    )
    names = {d["name"] for d in st["predicate"]["buildDefinition"]["resolvedDependencies"]}
    assert names == {"dataset", "dvc.yaml", "params.yaml", *expected}


def test_code_a_stage_does_not_declare_does_not_run(dataset: Path, tmp_path: Path) -> None:
    params = yaml.safe_load((PROJECT / "params.yaml").read_text())
    project = _project_with(tmp_path, params["evaluate"])
    # ml/stages.py imports ml.model; without it in deps, the stage cannot import it.
    _with_code_deps(project, ["ml/stages.py"])
    with pytest.raises(ToolError, match="dvc repro failed") as err:
        train_with_dvc(dataset, workspace=tmp_path / "ws", project_dir=project)
    assert "ml.model" in err.value.details["stderr_tail"]
    _with_code_deps(project, ["ml/stages.py", "ml/nowhere.py"])
    with pytest.raises(InputError, match=r"depends on ml/nowhere\.py") as bad:
        train_with_dvc(dataset, workspace=tmp_path / "ws2", project_dir=project)
    assert bad.value.where == "dvc.yaml stages.evaluate.deps"
    assert not (tmp_path / "ws2").exists()  # refused before any workspace or dvc


@pytest.mark.parametrize("suffix", [".parquet", ".pq"])
def test_parquet_dataset_trains_like_its_csv(
    suffix: str, trained: TrainingResult, dataset: Path, tmp_path: Path
) -> None:
    """Issue 11: a Parquet dataset trains end to end (the stages read CSV: it is staged as
    one); the result names the Parquet file's digest, and the model is the CSV one's. Both
    names validation reads as Parquet are staged as Parquet."""
    parquet = tmp_path / f"churn{suffix}"
    pd.read_csv(dataset).to_parquet(parquet, index=False)
    result = train_with_dvc(parquet, workspace=tmp_path / "ws", project_dir=PROJECT)
    assert result.dataset_sha256 == sha256_file(parquet)
    assert result.metrics == trained.metrics
    assert result.model_digest == trained.model_digest


def test_provenance_names_pulled_dataset_and_the_clean_rows_trained_on(
    trained: TrainingResult,
) -> None:
    """Issue 11 quarantine: provenance keeps the pulled dataset (what the gate matches with
    the data pull) and adds the clean file training got; a wrong clean digest is refused."""
    pulled = "f" * 64
    st = provenance_statement(
        trained,
        dataset_sha256=pulled,
        trained_on=("clean/churn.clean.csv", trained.dataset_sha256),
        dataset_uri="x",
        dataset_commit="a" * 40,
        builder_id="b",
        invocation_id="i",
        **_run_kwargs("a" * 40),
    )
    deps = {d["name"]: d for d in st["predicate"]["buildDefinition"]["resolvedDependencies"]}
    assert deps["dataset"]["digest"]["sha256"] == pulled
    assert deps["training-data"]["digest"] == {"sha256": trained.dataset_sha256}
    with pytest.raises(InputError, match="not the one trained on"):
        provenance_statement(
            trained,
            dataset_sha256=trained.dataset_sha256,
            trained_on=("clean/x.csv", "0" * 64),
            dataset_uri="x",
            dataset_commit="a" * 40,
            builder_id="b",
            invocation_id="i",
            **_run_kwargs("a" * 40),
        )
