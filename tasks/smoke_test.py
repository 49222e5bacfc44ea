"""Prefect tasks over :mod:`secmlops.controls.smoke_test`."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from secmlops.controls.smoke_test import SmokeTestResult, smoke_test_stage
from secmlops.evidence.keys import KeyDirectory
from secmlops.gate import GatePolicy
from secmlops.model import ModelLoader
from secmlops.registry.models import ModelRegistry


@task(
    name="smoke-test-stage",
    task_run_name="smoke-test-{stage}",
    cache_policy=NO_CACHE,
    retries=0,
    timeout_seconds=600,
)
def smoke_test_stage_task(
    models: ModelRegistry,
    stage: str,
    sample: Path,
    *,
    keys: KeyDirectory,
    loader: ModelLoader,
    min_accuracy: float,
    expect_version: str | None = None,
    policy: GatePolicy | None = None,
) -> SmokeTestResult:
    """Prefect wrapper for :func:`smoke_test_stage` (a verification: never cached).

    ``loader`` is the project's model loader (the demo's is ``ml.model.load_model``).
    """
    return smoke_test_stage(
        models,
        stage,
        sample,
        keys=keys,
        loader=loader,
        min_accuracy=min_accuracy,
        expect_version=expect_version,
        policy=policy,
    )
