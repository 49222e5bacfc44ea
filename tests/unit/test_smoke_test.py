"""The staging smoke test: the model is fetched as a consumer fetches it (signed pointer, VSA
and the whole deploy gate), so the fixture is a version that really passes that gate: built
with :mod:`tests.integration.deploy_world` (real evidence, a real model signature, real
approvals, promoted to staging through the real gate) around the project's demo model, which
is loaded through the loader the caller passes (the library never imports ``ml``). Every
refusal is asserted on its reason."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from ml.model import LoadedModel as DemoModel
from ml.model import build_pipeline, load_model, prepare_features, save_model
from secmlops.catalogue import GateRefusal
from secmlops.controls.signing import sign_model
from secmlops.controls.smoke_test import SmokeTestRefusal, smoke_test_stage
from secmlops.controls.training import TrainingResult, provenance_statement
from secmlops.errors import ControlRefused, InputError
from secmlops.model import LoadedModel
from secmlops.registry.models import ModelRegistry
from secmlops.registry.stores import LocalRegistry
from tests.integration.deploy_world import MODEL, World, make_world
from tests.unit import test_predicates as writers
from tests.unit.test_model_format import SPEC, churn_frame


@dataclass
class Deployed:
    world: World
    registry: Path
    sample: Path

    @property
    def models(self) -> ModelRegistry:
        return self.world.models


@contextmanager
def _registering(model: Path) -> Iterator[None]:
    """Make :meth:`World.register` register ``model`` instead of its placeholder model: the
    provenance writer it uses digests the model directory, so the demo model is put there
    just before (model scan, signature and release manifest then cover it too)."""

    def with_model(result: TrainingResult, **kwargs: Any) -> dict[str, Any]:
        shutil.rmtree(result.model_dir)
        shutil.copytree(model, result.model_dir)
        return provenance_statement(result, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(writers, "provenance_statement", with_model)
        yield


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> Deployed:
    root = tmp_path_factory.mktemp("smoke")
    df = churn_frame(400, seed=0)
    pipeline = build_pipeline(SPEC, C=1.0, max_iter=500, seed=0)
    pipeline.fit(prepare_features(df, SPEC), df["churned"].to_numpy())
    save_model(pipeline, SPEC, root / "demo-model")
    world = make_world(root / "world", LocalRegistry(root / "registry"))
    with _registering(root / "demo-model"):
        version = world.register()
    assert version == "v1"
    world.promote(version, "staging")  # the real staging gate: approval, VSA, pointer
    sample = root / "sample.csv"
    churn_frame(200, seed=1).to_csv(sample, index=False)
    return Deployed(world, root / "registry", sample)


def _smoke(d: Deployed, models: ModelRegistry, sample: Path, **kwargs: Any) -> Any:
    """``smoke_test_stage`` on staging with the world's keys, policy and pointer memory."""
    options: dict[str, Any] = {"loader": load_model, "min_accuracy": 0.6, **kwargs}
    w = d.world
    return smoke_test_stage(
        models, "staging", sample, keys=w.keys, policy=w.policy, seen=w.seen, **options
    )


def _run(d: Deployed, loader: Any = load_model, **kwargs: Any) -> Any:
    return _smoke(d, d.models, d.sample, loader=loader, **kwargs)


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
        _smoke(deployed, empty, deployed.sample, min_accuracy=0)
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
    deployed: Deployed, bend: dict[str, Any], reason: SmokeTestRefusal
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
        _smoke(deployed, deployed.models, sample, min_accuracy=0)


def test_other_signed_files_behind_the_pointer_are_refused(
    deployed: Deployed, tmp_path: Path
) -> None:
    """An attacker with write access swaps in another model signed by the same key: the
    fetch's gate refuses the files (they are not the ones the release and pointer name)
    before anything is loaded."""
    root = tmp_path / "registry"
    shutil.copytree(deployed.registry, root)
    df = churn_frame(300, seed=5)
    pipeline = build_pipeline(SPEC, C=0.01, max_iter=500, seed=5)
    pipeline.fit(prepare_features(df, SPEC), df["churned"].to_numpy())
    other = tmp_path / "other" / "model"
    save_model(pipeline, SPEC, other)
    signer = deployed.world.keys.private("model-signer")
    sign_model(other, private_key=signer, signature=tmp_path / "s")
    version_dir = root / MODEL / "versions" / "v1"
    shutil.rmtree(version_dir / "model")
    shutil.copytree(other, version_dir / "model")
    shutil.copyfile(tmp_path / "s", version_dir / "model.sig")
    models = ModelRegistry(LocalRegistry(root), MODEL)
    loaded: list[Path] = []
    with pytest.raises(ControlRefused) as err:
        _smoke(deployed, models, deployed.sample, loader=loaded.append, min_accuracy=0)
    assert err.value.reason is GateRefusal.MODEL_SIGNATURE_INVALID
    assert "model.sig is not the signature named in the release manifest" in str(err.value)
    assert not loaded  # refused before the loader ever saw the files
