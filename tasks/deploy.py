"""Prefect tasks over :mod:`secmlops.deploy`: the deploy gate and the approval record.

Each task run is named after its stage (``deploy-gate-promote-staging``, ...), so a run's
timeline in the UI reads as the gates it went through.
"""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from secmlops.deploy import Promotion, promote_to_stage, record_approval, rollback_stage
from secmlops.evidence.keys import KeyDirectory
from secmlops.gate import GatePolicy
from secmlops.registry.models import ModelRegistry


def log_promotion(promotion: Promotion) -> None:
    """Say in the run log what the gate checked and where the stage pointer went."""
    report, pointer = promotion.report, promotion.pointer
    get_run_logger().info(
        "%d gate checks passed (%s); %s %s -> %s",
        len(report.checks),
        ", ".join(c.name for c in report.checks),
        pointer.model,
        pointer.stage,
        pointer.version,
    )


@task(
    name="deploy-gate-promote",
    task_run_name="deploy-gate-promote-{stage}",
    cache_policy=NO_CACHE,
    retries=0,
    timeout_seconds=900,
)
def promote_to_stage_task(
    models: ModelRegistry,
    version: str,
    stage: str,
    *,
    keys: KeyDirectory,
    policy: GatePolicy,
    actor: str,
) -> Promotion:
    """Prefect wrapper for :func:`promote_to_stage` (never cached, never retried: a gate)."""
    promotion = promote_to_stage(models, version, stage, keys=keys, policy=policy, actor=actor)
    log_promotion(promotion)
    return promotion


@task(
    name="deploy-gate-rollback",
    task_run_name="deploy-gate-rollback-{stage}",
    cache_policy=NO_CACHE,
    retries=0,
    timeout_seconds=900,
)
def rollback_stage_task(
    models: ModelRegistry,
    stage: str,
    *,
    keys: KeyDirectory,
    policy: GatePolicy,
    actor: str,
    to_version: str | None = None,
) -> Promotion:
    """Prefect wrapper for :func:`rollback_stage` (through the same gate; never retried)."""
    promotion = rollback_stage(
        models, stage, keys=keys, policy=policy, actor=actor, to_version=to_version
    )
    log_promotion(promotion)
    return promotion


@task(
    name="record-approval",
    task_run_name="record-approval-{stage}",
    cache_policy=NO_CACHE,
    retries=0,
    timeout_seconds=300,
)
def record_approval_task(
    models: ModelRegistry,
    version: str,
    stage: str,
    *,
    keys: KeyDirectory,
    policy: GatePolicy,
    approve_as: str | None,
) -> str:
    """Prefect wrapper for :func:`record_approval` (where the UI pause will plug in)."""
    return record_approval(models, version, stage, keys=keys, policy=policy, approve_as=approve_as)
