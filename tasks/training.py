"""Prefect tasks over :mod:`secmlops.controls.training`."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from secmlops.controls.training import TrainingResult, train_with_dvc


@task(
    name="train-model",
    task_run_name="train-evaluate-model",
    cache_policy=NO_CACHE,
    retries=0,
    timeout_seconds=900,
)
def train_model_task(
    dataset: Path, workspace: Path, project_dir: Path, timeout: float = 600
) -> TrainingResult:
    """Prefect wrapper for :func:`train_with_dvc` (no retries: a refused gate is final)."""
    return train_with_dvc(dataset, workspace=workspace, project_dir=project_dir, timeout=timeout)
