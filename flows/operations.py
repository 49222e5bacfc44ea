"""Operator flows, triggered from the Prefect UI or the CLI: promote, roll back, verify a stage.

Thin Prefect flows over :mod:`secmlops.operations`: each goes through the same deploy gate as
the pipeline, and a promotion or rollback that does not verify leaves the pointer where it was.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger

from blocks import RegistryTarget
from secmlops.evidence.keys import KeyDirectory
from secmlops.operations import promote_version, rollback_version, verify_stage
from secmlops.policy import load_gate_policy
from secmlops.registry.models import ModelRegistry
from secmlops.settings import local_paths


def _open(model: str, registry: RegistryTarget | None) -> ModelRegistry:
    store = (registry or RegistryTarget()).open(local_paths().default_registry)
    return ModelRegistry(store, model)


@flow(name="promote", log_prints=True, timeout_seconds=1800)
def promote(
    model: str,
    version: str,
    stage: str = "production",
    registry: RegistryTarget | None = None,
) -> dict[str, Any]:
    """Promote a registered version to a stage through the deploy gate."""
    pointer = promote_version(
        _open(model, registry),
        version,
        stage,
        keys=KeyDirectory(local_paths().keys),
        policy=load_gate_policy(),
    )
    get_run_logger().info("%s %s -> %s", model, stage, pointer.version)
    return pointer.to_json()


@flow(name="rollback", log_prints=True, timeout_seconds=1800)
def rollback(
    model: str,
    stage: str = "production",
    to_version: str | None = None,
    registry: RegistryTarget | None = None,
) -> dict[str, Any]:
    """Roll a stage back to the version it served before, through the deploy gate."""
    pointer = rollback_version(
        _open(model, registry),
        stage,
        keys=KeyDirectory(local_paths().keys),
        to_version=to_version,
        policy=load_gate_policy(),
    )
    get_run_logger().info("%s %s rolled back -> %s", model, stage, pointer.version)
    return pointer.to_json()


@flow(name="verify", log_prints=True, timeout_seconds=1800)
def verify(
    model: str,
    stage: str = "production",
    registry: RegistryTarget | None = None,
) -> dict[str, Any]:
    """Re-run the deploy gate for what a stage serves now; refuse if anything stopped verifying."""
    pointer, report = verify_stage(
        _open(model, registry), stage, keys=KeyDirectory(local_paths().keys)
    )
    get_run_logger().info(
        "%s %s %s: %d checks passed", model, stage, pointer.version, len(report.checks)
    )
    return {"version": pointer.version, "checks": [c.to_json() for c in report.checks]}
