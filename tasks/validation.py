"""Prefect tasks over :mod:`secmlops.controls.validation`."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from secmlops.controls.validation import ValidationPolicy, ValidationResult, validate_dataset


@task(
    name="validate-dataset",
    task_run_name="validate-dataset",
    cache_policy=NO_CACHE,
    timeout_seconds=600,
)
def validate_dataset_task(
    data: Path, schema: str, policy: ValidationPolicy | None = None
) -> ValidationResult:
    """Prefect task: :func:`validate_dataset` (never cached: the gate reruns every time)."""
    return validate_dataset(data, schema, policy=policy)
