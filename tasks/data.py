"""Prefect tasks over :mod:`secmlops.controls.data`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

from prefect import Task, task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State, TaskRun

from secmlops.controls.data import DatasetPull, pull_dataset
from secmlops.demo.data_registry import DEMO_VERSIONS, DataRegistry, create_demo_data_registry
from secmlops.errors import InputError, ToolError


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
    aws_profile: str | None = None,
    git_credentials: str | None = None,
    timeout: float = 300,
) -> DatasetPull:
    """Prefect task: :func:`pull_dataset` (idempotent, so infrastructure failures retry).

    ``repo``, ``allowed_remotes``, ``s3_endpoint_url``, ``aws_profile`` and
    ``git_credentials`` (the name of a saved ``SecMLOps Git Credentials`` block, loaded here so
    the token never is a task input) come from the site's dataset entry
    (``sources.datasets``), never from a run parameter; ``rev`` is a tag or full commit sha.
    """
    git_auth = None
    if git_credentials:
        from blocks import GitCredentials

        try:
            block = cast(GitCredentials, GitCredentials.load(git_credentials))
        except ValueError as exc:
            raise InputError(
                f"no saved 'SecMLOps Git Credentials' block named {git_credentials!r}",
                where="sources.datasets.*.git_credentials",
                fix="save one (GitCredentials(token=...).save(NAME)) or fix the name",
            ) from exc
        git_auth = (block.username, block.token.get_secret_value())
    return pull_dataset(
        repo,
        path,
        rev,
        dest_dir,
        allowed_remotes=allowed_remotes,
        git_auth=git_auth,
        s3_endpoint_url=s3_endpoint_url,
        aws_profile=aws_profile,
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
