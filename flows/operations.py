"""Operator flows, triggered from the Prefect UI or the CLI: promote, roll back, verify a stage.

Each goes through the same deploy gate as the pipeline: a promotion or rollback that
does not verify leaves the stage pointer where it was.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger

from blocks import RegistryTarget
from flows.policy import load_gate_policy
from flows.settings import local_paths
from tasks.approval import check_stage
from tasks.deploy import promote_to_stage, record_approval, rollback_stage
from tasks.errors import ControlRefused
from tasks.gate import GatePolicy, GateReport, verify_pointer_vsa, verify_release
from tasks.keys import KeyDirectory
from tasks.model_registry import ModelRegistry, StagePointer


def promote_version(
    models: ModelRegistry,
    version: str,
    stage: str,
    *,
    keys: KeyDirectory,
    approve_as: str | None = None,
    policy: GatePolicy | None = None,
) -> StagePointer:
    """Promote through the gate (recording ``approve_as``'s approval first, if given)."""
    policy = policy or load_gate_policy()
    if approve_as:
        models.require_version(version)
        record_approval(models, version, stage, keys=keys, policy=policy, approve_as=approve_as)
    actor = approve_as or "operator"
    return promote_to_stage(models, version, stage, keys=keys, policy=policy, actor=actor).pointer


def rollback_version(
    models: ModelRegistry,
    stage: str,
    *,
    keys: KeyDirectory,
    to_version: str | None = None,
    policy: GatePolicy | None = None,
) -> StagePointer:
    """Roll ``stage`` back through the gate."""
    policy = policy or load_gate_policy()
    return rollback_stage(
        models, stage, keys=keys, policy=policy, actor="operator", to_version=to_version
    ).pointer


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


def verify_stage(
    models: ModelRegistry, stage: str, *, keys: KeyDirectory, policy: GatePolicy | None = None
) -> tuple[StagePointer, GateReport]:
    """Re-verify what ``stage`` serves now: its pointer's VSA, then the full deploy gate."""
    pointer, _ = models.read_pointer(check_stage(stage))
    if pointer is None:
        raise ControlRefused(f"nothing is deployed to {stage}", where=f"{models.model}:{stage}")
    verify_pointer_vsa(models, stage, pointer, keys)
    report = verify_release(
        models, pointer.version, stage, keys=keys, policy=policy or load_gate_policy()
    )
    return pointer, report


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
