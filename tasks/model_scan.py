"""Prefect tasks over :mod:`secmlops.controls.model_scan`."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from secmlops.controls.model_scan import ModelScanPolicy, ModelScanResult, scan_model_files


@task(
    name="scan-model",
    task_run_name="scan-model-files",
    cache_policy=NO_CACHE,
    retries=0,
    timeout_seconds=600,
)
def scan_model_task(model_dir: Path, policy: ModelScanPolicy | None = None) -> ModelScanResult:
    """Prefect wrapper for :func:`scan_model_files` (never cached: a scan is a verification)."""
    return scan_model_files(model_dir, policy)
