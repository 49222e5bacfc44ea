"""Prefect tasks over :mod:`secmlops.controls.data`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prefect import Task, task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State, TaskRun

from secmlops.controls.data import DatasetPull, pull_dataset
from secmlops.demo.data_registry import DEMO_VERSIONS, DataRegistry, create_demo_data_registry
from secmlops.errors import ToolError


def _retry_tool_errors_only(_task: Task[..., Any], _run: TaskRun, state: State[Any]) -> bool:
    """Retry a pull only when infrastructure failed; a refusal or bad input stays final."""
    error = state.result(raise_on_failure=False)
    return isinstance(error, ToolError)


@task(
    name="pull-dataset",
    task_run_name="pull-dataset-{path}@{rev}",
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=5,
    retry_condition_fn=_retry_tool_errors_only,
    timeout_seconds=900,
)
def pull_dataset_task(
    repo: str,
    path: str,
    rev: str,
    dest_dir: Path,
    *,
    allowed_remotes: Sequence[str],
    s3_endpoint_url: str | None = None,
    timeout: float = 300,
) -> DatasetPull:
    """Prefect task: :func:`pull_dataset` (idempotent, so infrastructure failures retry).

    ``repo``, ``allowed_remotes`` and ``s3_endpoint_url`` come from the site's dataset entry
    (``sources.datasets``), never from a run parameter; ``rev`` is a tag or full commit sha.
    """
    return pull_dataset(
        repo,
        path,
        rev,
        dest_dir,
        allowed_remotes=allowed_remotes,
        s3_endpoint_url=s3_endpoint_url,
        timeout=timeout,
    )


@task(
    name="create-demo-data-registry",
    task_run_name="create-demo-data-registry",
    cache_policy=NO_CACHE,
    timeout_seconds=900,
)
def create_demo_data_registry_task(
    root: Path, versions: Sequence[str] = DEMO_VERSIONS
) -> DataRegistry:
    """Prefect task: :func:`create_demo_data_registry`."""
    return create_demo_data_registry(root, versions=versions)
