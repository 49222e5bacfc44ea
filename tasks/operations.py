"""Prefect tasks over :mod:`secmlops.operations` for the operator flows (verify a stage).

Promotions and rollbacks run as :mod:`tasks.deploy`'s gate tasks, which return the gate's
report for the UI; verifying a stage is its own task here.
"""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from secmlops.evidence.keys import KeyDirectory
from secmlops.gate import GatePolicy, GateReport
from secmlops.operations import verify_stage
from secmlops.registry.models import ModelRegistry, StagePointer


@task(
    name="require-version",
    task_run_name="require-version-{version}",
    cache_policy=NO_CACHE,
    retries=0,
    timeout_seconds=120,
)
def require_version_task(models: ModelRegistry, version: str) -> None:
    """``InputError`` naming the known versions when ``version`` is not registered."""
    models.require_version(version)


@task(
    name="deploy-gate-verify",
    task_run_name="deploy-gate-verify-{stage}",
    cache_policy=NO_CACHE,
    retries=0,
    timeout_seconds=900,
)
def verify_stage_task(
    models: ModelRegistry, stage: str, *, keys: KeyDirectory, policy: GatePolicy
) -> tuple[StagePointer, GateReport]:
    """Prefect wrapper for :func:`verify_stage` (a verification: never cached or retried)."""
    pointer, report = verify_stage(models, stage, keys=keys, policy=policy)
    get_run_logger().info(
        "%d gate checks passed (%s); %s %s serves %s",
        len(report.checks),
        ", ".join(c.name for c in report.checks),
        models.model,
        stage,
        pointer.version,
    )
    return pointer, report
