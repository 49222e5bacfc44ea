"""The staging smoke test: a real registry directory, real keys, a real signed model and a
gate-signed VSA; the model is loaded through the loader the caller passes (the library never
imports ``ml``). Every refusal is asserted on its reason."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from ml.model import LoadedModel as DemoModel
from ml.model import build_pipeline, load_model, prepare_features, save_model
from secmlops._internal.digests import tree_digest
from secmlops.controls.signing import sign_model
from secmlops.controls.smoke_test import SmokeTestRefusal, smoke_test_stage
from secmlops.deploy import vsa_statement
from secmlops.errors import ControlRefused, InputError
from secmlops.evidence.keys import KeyDirectory
from secmlops.evidence.statements import load_private_key, sign_statement
from secmlops.gate import GateCheck, GatePolicy, GateReport
from secmlops.model import LoadedModel
from secmlops.registry.models import ModelRegistry, stamped
from secmlops.registry.pointers import publish_pointer
from secmlops.registry.stores import LocalRegistry
from tests.unit.test_model_format import SPEC, churn_frame

MODEL = "churn-classifier"


@dataclass
class Deployed:
    models: ModelRegistry
    registry: Path
    keys: KeyDirectory
    sample: Path


def _deploy(models: ModelRegistry, keys: KeyDirectory, model_dir: Path, version: str) -> None:
    """What the deploy gate leaves behind: model + signature, a gate-signed VSA, a
    gate-signed pointer."""
    signature = model_dir.parent / f"{version}.sig"
    sign_model(model_dir, private_key=keys.private("model-signer"), signature=signature)
    models.store.upload_tree(model_dir, models.model_prefix(version))
    models.store.put(models.signature_key(version), signature.read_bytes())
    digest = tree_digest(model_dir)
    # The VSA exactly as the deploy gate writes it (one passing check stands for all of them).
    report = GateReport(
        model=MODEL,
        version=version,
        stage="staging",
        model_digest=digest,
        dataset_digest="d" * 64,
        image_digest="e" * 64,
        release_sha256="f" * 64,
        approver="test-approver",
        approval_method="test",
        checks=[GateCheck("model-signature", True, "verified")],
    )
    vsa = vsa_statement(models, report, GatePolicy())
    bundle = sign_statement(vsa, load_private_key(keys.private("gate")))
    key, sha = models.put_evidence(version, stamped("vsa-staging"), bundle)
    publish_pointer(
        models,
        stage="staging",
        version=version,
        model_digest=digest,
        vsa=key,
        vsa_sha256=sha,
        signer=load_private_key(keys.private("gate")),
        actor="test",
    )


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> Deployed:
    root = tmp_path_factory.mktemp("smoke")
    keys = KeyDirectory(root / "keys")
    keys.ensure()
    df = churn_frame(400, seed=0)
    pipeline = build_pipeline(SPEC, C=1.0, max_iter=500, seed=0)
    pipeline.fit(prepare_features(df, SPEC), df["churned"].to_numpy())
    save_model(pipeline, SPEC, root / "build" / "model")
    models = ModelRegistry(LocalRegistry(root / "registry"), MODEL)
    _deploy(models, keys, root / "build" / "model", "v1")
    sample = root / "sample.csv"
    churn_frame(200, seed=1).to_csv(sample, index=False)
    return Deployed(models, root / "registry", keys, sample)


def _run(d: Deployed, loader: Any = load_model, **kwargs: Any) -> Any:
    options: dict[str, Any] = {"min_accuracy": 0.6, **kwargs}
    return smoke_test_stage(d.models, "staging", d.sample, keys=d.keys, loader=loader, **options)


def test_demo_model_satisfies_the_library_interface(deployed: Deployed) -> None:
    with_model = deployed.models.download_model("v1", deployed.sample.parent / "dl")[0]
    model = load_model(with_model)
    assert isinstance(model, LoadedModel)
    assert model.label == "churned" and model.feature_names == SPEC.columns


def test_smoke_test_passes_with_the_projects_loader(deployed: Deployed) -> None:
    result = _run(deployed, expect_version="v1")
    assert result.passed and result.version == "v1" and result.rows == 200
    assert result.accuracy >= 0.6


def test_accuracy_below_the_floor_is_refused(deployed: Deployed) -> None:
    with pytest.raises(ControlRefused, match="below") as err:
        _run(deployed, min_accuracy=1.0)
    assert err.value.reason is SmokeTestRefusal.ACCURACY_BELOW_FLOOR
    assert err.value.result is not None and not err.value.result.passed


def test_a_moved_pointer_is_refused(deployed: Deployed) -> None:
    with pytest.raises(ControlRefused, match="expected v9") as err:
        _run(deployed, expect_version="v9")
    assert err.value.reason is SmokeTestRefusal.WRONG_VERSION


def test_an_empty_stage_is_refused(deployed: Deployed, tmp_path: Path) -> None:
    empty = ModelRegistry(LocalRegistry(tmp_path / "registry"), MODEL)
    with pytest.raises(ControlRefused, match="nothing is deployed") as err:
        smoke_test_stage(
            empty, "staging", deployed.sample, keys=deployed.keys, loader=load_model, min_accuracy=0
        )
    assert err.value.reason is SmokeTestRefusal.NOTHING_DEPLOYED


@dataclass(frozen=True)
class _Wrapped:
    """A model whose outputs a test bends (an adversarial or buggy fork model)."""

    inner: DemoModel
    proba_scale: float = 1.0
    label_offset: int = 0

    @property
    def label(self) -> str:
        return self.inner.label

    @property
    def feature_names(self) -> tuple[str, ...]:
        return self.inner.feature_names

    @property
    def classes(self) -> tuple[Any, ...]:
        return self.inner.classes

    def predict(self, rows: pd.DataFrame) -> np.ndarray:
        return np.asarray(self.inner.predict(rows)) + self.label_offset

    def predict_proba(self, rows: pd.DataFrame) -> np.ndarray:
        return np.asarray(self.inner.predict_proba(rows)) * self.proba_scale


@pytest.mark.parametrize(
    ("bend", "reason"),
    [
        ({"proba_scale": 2.0}, SmokeTestRefusal.PROBABILITIES_OUT_OF_RANGE),
        ({"proba_scale": float("nan")}, SmokeTestRefusal.PROBABILITIES_OUT_OF_RANGE),
        ({"label_offset": 5}, SmokeTestRefusal.UNKNOWN_LABELS),
    ],
)
def test_bad_model_outputs_are_refused(
    deployed: Deployed, bend: dict[str, float], reason: SmokeTestRefusal
) -> None:
    with pytest.raises(ControlRefused) as err:
        _run(deployed, loader=lambda d: _Wrapped(load_model(d), **bend))
    assert err.value.reason is reason


def test_a_loader_that_returns_no_model_is_bad_input(deployed: Deployed) -> None:
    with pytest.raises(InputError, match="lacks label/feature_names"):
        _run(deployed, loader=lambda d: object())


def test_a_sample_without_the_models_columns_is_bad_input(
    deployed: Deployed, tmp_path: Path
) -> None:
    sample = tmp_path / "s.csv"
    pd.read_csv(deployed.sample).drop(columns=["contract"]).to_csv(sample, index=False)
    with pytest.raises(InputError, match=r"feature column\(s\) \['contract'\]"):
        smoke_test_stage(
            deployed.models,
            "staging",
            sample,
            keys=deployed.keys,
            loader=load_model,
            min_accuracy=0,
        )


def test_other_signed_files_behind_the_pointer_are_refused(
    deployed: Deployed, tmp_path: Path
) -> None:
    """An attacker with write access swaps in another model signed by the same key."""
    root = tmp_path / "registry"
    shutil.copytree(deployed.registry, root)
    df = churn_frame(300, seed=5)
    pipeline = build_pipeline(SPEC, C=0.01, max_iter=500, seed=5)
    pipeline.fit(prepare_features(df, SPEC), df["churned"].to_numpy())
    other = tmp_path / "other" / "model"
    save_model(pipeline, SPEC, other)
    sign_model(other, private_key=deployed.keys.private("model-signer"), signature=tmp_path / "s")
    version_dir = root / MODEL / "versions" / "v1"
    shutil.rmtree(version_dir / "model")
    shutil.copytree(other, version_dir / "model")
    shutil.copyfile(tmp_path / "s", version_dir / "model.sig")
    models = ModelRegistry(LocalRegistry(root), MODEL)
    with pytest.raises(ControlRefused, match="do not match its pointer") as err:
        smoke_test_stage(
            models,
            "staging",
            deployed.sample,
            keys=deployed.keys,
            loader=load_model,
            min_accuracy=0,
        )
    assert err.value.reason is SmokeTestRefusal.FILES_DO_NOT_MATCH_POINTER
