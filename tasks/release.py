"""Prefect tasks over :mod:`secmlops.release`."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from secmlops.evidence.statements import SigningKey
from secmlops.registry.models import ModelRegistry
from secmlops.release import Registration, ReleaseInputs, register_release


@task(
    name="register-release",
    task_run_name="register-release",
    cache_policy=NO_CACHE,
    retries=0,
    timeout_seconds=600,
)
def register_release_task(
    models: ModelRegistry,
    model_dir: Path,
    signature: Path,
    evidence: Mapping[str, dict[str, Any]],
    inputs: ReleaseInputs,
    *,
    attestor: SigningKey,
) -> Registration:
    """Prefect wrapper for :func:`register_release` (not retried: versions are claimed once)."""
    return register_release(models, model_dir, signature, evidence, inputs, attestor=attestor)
