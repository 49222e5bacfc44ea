"""Prefect tasks over :mod:`secmlops.deploy`."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from secmlops.deploy import Promotion, promote_to_stage, record_approval
from secmlops.evidence.keys import KeyDirectory
from secmlops.gate import GatePolicy
from secmlops.registry.models import ModelRegistry


@task(name="deploy-gate-promote", cache_policy=NO_CACHE, retries=0, timeout_seconds=900)
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
    return promote_to_stage(models, version, stage, keys=keys, policy=policy, actor=actor)


@task(name="record-approval", cache_policy=NO_CACHE, retries=0, timeout_seconds=300)
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
