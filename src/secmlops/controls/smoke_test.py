"""Smoke test a deployed stage: serve what the stage pointer names, exactly as a consumer would.

Fetches what the stage pointer names exactly as ``secmlops fetch`` does (signed pointer, its
VSA and the whole deploy gate on the downloaded copy), loads it with
the project's loader (a :class:`secmlops.model.ModelLoader`, passed in: this library never
imports the project's model code) and predicts on a held-out sample: predictions must be
valid labels, probabilities finite and in [0, 1], and accuracy at least the policy's floor.
A refusal carries a :class:`SmokeTestRefusal` reason.

Example::

    from ml.model import load_model  # in the Prefect layer: the project's loader

    result = smoke_test_stage(models, "staging", Path("held-out.csv"), keys=keys,
                              loader=load_model, min_accuracy=0.7, expect_version="v3")
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from secmlops._internal.digests import sha256_file
from secmlops.consume import fetch
from secmlops.errors import ControlRefused, InputError, RefusalReason
from secmlops.evidence.keys import KeyDirectory
from secmlops.evidence.predicates import SmokeTestPredicate, dump_predicate
from secmlops.evidence.statements import (
    PREDICATE_SMOKE_TEST,
    Subject,
    make_statement,
    utc_now,
)
from secmlops.gate import GatePolicy
from secmlops.model import LoadedModel, ModelLoader
from secmlops.registry.models import ModelRegistry
from secmlops.registry.pointers import SeenPointers


class SmokeTestRefusal(RefusalReason):
    """Why the smoke test refused what a stage serves.

    A VSA or model signature that does not verify is refused by those checks, with theirs.
    """

    NOTHING_DEPLOYED = "nothing_deployed"
    WRONG_VERSION = "wrong_version"
    FILES_DO_NOT_MATCH_POINTER = "files_do_not_match_pointer"
    PROBABILITIES_OUT_OF_RANGE = "probabilities_out_of_range"
    UNKNOWN_LABELS = "unknown_labels"
    ACCURACY_BELOW_FLOOR = "accuracy_below_floor"


@dataclass(frozen=True)
class SmokeTestResult:
    """What the smoke test saw and decided."""

    model: str
    stage: str
    version: str
    model_digest: str
    sample_sha256: str
    rows: int
    accuracy: float
    min_accuracy: float
    seconds: float
    passed: bool
    tested_at: str

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "stage": self.stage,
            "version": self.version,
            "sample": {"sha256": self.sample_sha256, "rows": self.rows},
            "accuracy": self.accuracy,
            "minAccuracy": self.min_accuracy,
            "seconds": round(self.seconds, 3),
            "result": "PASSED" if self.passed else "FAILED",
            "testedAt": self.tested_at,
        }


def smoke_test_stage(
    models: ModelRegistry,
    stage: str,
    sample: Path,
    *,
    keys: KeyDirectory,
    loader: ModelLoader,
    min_accuracy: float,
    max_rows: int = 2000,
    expect_version: str | None = None,
    policy: GatePolicy | None = None,
    seen: SeenPointers | None = None,
) -> SmokeTestResult:
    """Load and exercise the model a stage serves; ``ControlRefused`` if anything is off.

    The model is fetched as a consumer fetches it (:func:`secmlops.consume.fetch`): the
    gate-signed pointer (fresh, not rolled back against ``seen``), its VSA and the full deploy
    gate under ``policy`` (default the signed policy in force) must all pass first.
    ``expect_version`` guards against a concurrent promotion moving the pointer meanwhile.
    ``loader`` loads the downloaded model directory (after its signature verified); the
    ``sample`` CSV must hold the model's label and feature columns.
    """
    start = time.monotonic()
    pointer, _ = models.read_pointer(stage)
    where = f"smoke-test:{stage}"
    if pointer is None:
        raise ControlRefused(
            f"nothing is deployed to {stage}",
            where=where,
            reason=SmokeTestRefusal.NOTHING_DEPLOYED,
        )
    if expect_version is not None and pointer.version != expect_version:
        raise ControlRefused(
            f"{stage} serves {pointer.version}, expected {expect_version} (moved meanwhile?)",
            where=where,
            reason=SmokeTestRefusal.WRONG_VERSION,
        )
    try:
        frame = pd.read_csv(sample)
    except (OSError, ValueError) as exc:
        raise InputError(
            f"cannot read smoke-test sample {sample}: {exc}", where=str(sample)
        ) from exc
    frame = frame.head(max_rows)
    with tempfile.TemporaryDirectory(prefix="secmlops-smoke-") as tmp:
        # Exactly what a model server's init container does (`secmlops fetch`): the signed
        # pointer, its VSA and the whole deploy gate, on the copy that is then loaded.
        got = fetch(models, stage, Path(tmp) / "model", keys=keys, policy=policy, seen=seen)
        if got.version != pointer.version or got.model_digest != pointer.model_digest:
            raise ControlRefused(
                f"{stage} moved to {got.version} while the smoke test ran",
                where=where,
                reason=SmokeTestRefusal.WRONG_VERSION,
            )
        model_dir = got.dest
        model = _load(loader, model_dir)
        label = model.label
        if label not in frame.columns or frame.empty:
            raise InputError(f"sample {sample} has no rows with label {label!r}", where=str(sample))
        missing = [c for c in model.feature_names if c not in frame.columns]
        if missing:
            raise InputError(
                f"sample {sample} lacks the model's feature column(s) {missing}",
                where=str(sample),
                fix="write the sample from the same dataset the model was trained on",
            )
        proba = np.asarray(model.predict_proba(frame), dtype=float)
        predictions = np.asarray(model.predict(frame))
    classes = list(model.classes)
    if (
        proba.shape != (len(frame), len(classes))
        or not np.all(np.isfinite(proba))
        or proba.min() < 0
        or proba.max() > 1
    ):
        raise ControlRefused(
            "model returned probabilities outside [0, 1] (or of the wrong shape)",
            where=where,
            reason=SmokeTestRefusal.PROBABILITIES_OUT_OF_RANGE,
        )
    unknown = set(np.unique(predictions).tolist()) - set(classes)
    if unknown or predictions.shape != (len(frame),):
        raise ControlRefused(
            f"model predicted unknown labels {sorted(unknown, key=str)}"
            if unknown
            else f"model returned {predictions.shape} predictions for {len(frame)} rows",
            where=where,
            reason=SmokeTestRefusal.UNKNOWN_LABELS,
        )
    accuracy = float(np.mean(predictions == frame[label].to_numpy()))
    result = SmokeTestResult(
        model=models.model,
        stage=stage,
        version=pointer.version,
        model_digest=pointer.model_digest,
        sample_sha256=sha256_file(sample),
        rows=len(frame),
        accuracy=round(accuracy, 4),
        min_accuracy=min_accuracy,
        seconds=time.monotonic() - start,
        passed=accuracy >= min_accuracy,
        tested_at=utc_now(),
    )
    if not result.passed:
        raise ControlRefused(
            f"smoke test accuracy {accuracy:.3f} is below {min_accuracy:.3f} in {stage}",
            where=where,
            details=result.to_json(),
            reason=SmokeTestRefusal.ACCURACY_BELOW_FLOOR,
            result=result,
        )
    return result


def _load(loader: ModelLoader, model_dir: Path) -> LoadedModel:
    model = loader(model_dir)
    if not isinstance(model, LoadedModel):
        # Fail closed on a loader that returns something we cannot exercise.
        raise InputError(
            f"the model loader returned a {type(model).__name__}, which lacks "
            "label/feature_names/classes/predict/predict_proba",
            where=getattr(loader, "__qualname__", repr(loader)),
            fix="return an object satisfying secmlops.model.LoadedModel",
        )
    return model


def smoke_test_statement(result: SmokeTestResult) -> dict[str, Any]:
    """In-toto statement recording a smoke test of the model a stage serves."""
    return make_statement(
        [Subject("model", result.model_digest)],
        PREDICATE_SMOKE_TEST,
        dump_predicate(SmokeTestPredicate.model_validate(result.to_json())),
    )


# --- Prefect -------------------------------------------------------------------------------
