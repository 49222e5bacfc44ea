"""Smoke test a deployed stage: serve what the stage pointer names, exactly as a consumer would.

Reads the stage pointer, checks its VSA is signed by the gate key and is about the
pointer's model digest, downloads the model, verifies its signature again, loads it with
the code-free format loader and predicts on a held-out sample: predictions must be valid
labels, probabilities finite and in [0, 1], and accuracy at least the policy's floor.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ml.model import load_model
from secmlops._internal.digests import sha256_file, tree_digest
from secmlops.controls.signing import verify_model_signature
from secmlops.errors import ControlRefused, InputError
from secmlops.evidence.keys import KeyDirectory
from secmlops.evidence.statements import (
    PREDICATE_SMOKE_TEST,
    Subject,
    make_statement,
    utc_now,
)
from secmlops.gate import verify_pointer_vsa
from secmlops.registry.models import ModelRegistry


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
    min_accuracy: float,
    max_rows: int = 2000,
    expect_version: str | None = None,
) -> SmokeTestResult:
    """Load and exercise the model a stage serves; ``ControlRefused`` if anything is off.

    The stage pointer itself is unsigned, so what counts is its VSA: signed by the gate key,
    written by this gate, PASSED, and about exactly this model, version, stage and digest.
    ``expect_version`` guards against a concurrent promotion moving the pointer meanwhile.
    """
    start = time.monotonic()
    pointer, _ = models.read_pointer(stage)
    where = f"smoke-test:{stage}"
    if pointer is None:
        raise ControlRefused(f"nothing is deployed to {stage}", where=where)
    if expect_version is not None and pointer.version != expect_version:
        raise ControlRefused(
            f"{stage} serves {pointer.version}, expected {expect_version} (moved meanwhile?)",
            where=where,
        )
    verify_pointer_vsa(models, stage, pointer, keys)
    try:
        frame = pd.read_csv(sample)
    except (OSError, ValueError) as exc:
        raise InputError(
            f"cannot read smoke-test sample {sample}: {exc}", where=str(sample)
        ) from exc
    frame = frame.head(max_rows)
    with tempfile.TemporaryDirectory(prefix="secmlops-smoke-") as tmp:
        model_dir, signature = models.download_model(pointer.version, Path(tmp))
        verify_model_signature(
            model_dir, signature=signature, public_key=keys.require(keys.public("model-signer"))
        )
        if tree_digest(model_dir) != pointer.model_digest:
            raise ControlRefused(f"{stage} serves files that do not match its pointer", where=where)
        model = load_model(model_dir)
        label = model.spec.label
        if label not in frame.columns or frame.empty:
            raise InputError(f"sample {sample} has no rows with label {label!r}", where=str(sample))
        proba = np.asarray(model.predict_proba(frame), dtype=float)
        predictions = model.predict(frame)
    if not np.all(np.isfinite(proba)) or proba.min() < 0 or proba.max() > 1:
        raise ControlRefused("model returned probabilities outside [0, 1]", where=where)
    unknown = set(np.unique(predictions).tolist()) - set(model.classes)
    if unknown:
        raise ControlRefused(f"model predicted unknown labels {sorted(unknown)}", where=where)
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
        )
    return result


def smoke_test_statement(result: SmokeTestResult) -> dict[str, Any]:
    """In-toto statement recording a smoke test of the model a stage serves."""
    return make_statement(
        [Subject("model", result.model_digest)], PREDICATE_SMOKE_TEST, result.to_json()
    )


# --- Prefect -------------------------------------------------------------------------------
