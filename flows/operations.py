"""Operator flows, triggered from the Prefect UI or the CLI: promote, roll back, verify a stage.

Thin Prefect flows over the deploy gate (:mod:`secmlops.deploy`, :mod:`secmlops.operations`):
each goes through the same gate as the pipeline, and a promotion or rollback that does not
verify leaves the pointer where it was. Every gate step is a named task run
(``deploy-gate-promote-production``, ...) and every run publishes the gate's checks as the
``secmlops-gate-checks`` table artifact, a refused gate's included.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, Literal

from prefect import flow, get_run_logger

from flows.approval import await_approval, requested_by
from flows.artifacts import publish_gate_checks
from flows.choices import DEFAULT_REGISTRY_NAME, RegistryName
from flows.stage_lock import stage_lock
from flows.visibility import visible_run
from secmlops.catalogue import GateRefusal
from secmlops.errors import ControlRefused
from secmlops.evidence.keys import KeyDirectory
from secmlops.gate import GateReport
from secmlops.policy import load_gate_policy
from secmlops.registry.models import ModelRegistry
from secmlops.registry.stores import open_site_registry
from secmlops.settings import current_settings, local_paths
from secmlops.site import select
from tasks.deploy import promote_to_stage_task, rollback_stage_task
from tasks.operations import require_version_task, verify_stage_task

ACTOR = "operator"


def _open(model: str, registry: str | None) -> ModelRegistry:
    """The site's registry entry ``registry`` names (``InputError`` for any other name)."""
    _, entry = select(load_gate_policy().sources.registries, registry, "registry")
    store = open_site_registry(
        entry,
        default_uri=current_settings().registry_uri(),
        env_endpoint=current_settings().s3_endpoint_url,
    )
    return ModelRegistry(store, model)


@contextlib.contextmanager
def _gate_checks_published() -> Iterator[list[GateReport]]:
    """Collect the gate reports of the block (a refusal's too) and publish them at its end."""
    reports: list[GateReport] = []
    try:
        yield reports
    except ControlRefused as exc:
        if isinstance(exc.result, GateReport):
            reports.append(exc.result)
        raise
    finally:
        try:
            publish_gate_checks(reports)
        except Exception as exc:  # the gate's outcome matters more than its artifact
            get_run_logger().warning("could not publish the gate checks: %s", exc)


@flow(name="promote", log_prints=True, timeout_seconds=1800)
@visible_run
def promote(
    version: str,
    model: str = "churn-classifier",
    stage: Literal["staging", "production"] = "production",
    registry: RegistryName = DEFAULT_REGISTRY_NAME,
    wait_for_approval: bool = True,
) -> dict[str, Any]:
    """Promote a registered version to a stage through the deploy gate.

    Args:
        version: The registered model version to promote, e.g. v3 (see the registry or
            the secure-training run that registered it).
        model: The registered model's name.
        stage: The stage to promote to; production needs the version to have passed
            staging first.
        registry: The model registry: an entry of the site's sources.registries (its
            location, endpoint and credentials are the site's); default: its first entry.
        wait_for_approval: When the gate refuses only for want of approvals, pause for
            them (the Resume form, or `secmlops approve`) and run the gate again. The gate
            still decides; this only lets the run wait instead of failing.
    """
    models = _open(model, registry)
    require_version_task(models, version)
    keys = KeyDirectory(local_paths().keys)
    policy = load_gate_policy()
    with _gate_checks_published() as reports:
        try:
            # One stage-pointer move of this model at a time (issue 11), never while paused.
            with stage_lock(model):
                promotion = promote_to_stage_task(
                    models, version, stage, keys=keys, policy=policy, actor=ACTOR
                )
        except ControlRefused as exc:
            if not (wait_for_approval and _wants_only_approvals(exc)):
                raise
            get_run_logger().info("the gate needs approvals for %s first: waiting", stage)
            await_approval(
                models, version, stage, keys=keys, policy=policy, requested_by=requested_by()
            )
            with stage_lock(model):
                promotion = promote_to_stage_task(
                    models, version, stage, keys=keys, policy=policy, actor=ACTOR
                )
        reports.append(promotion.report)
    return promotion.pointer.to_json()


_APPROVAL_REASONS = frozenset({GateRefusal.APPROVAL_MISSING, GateRefusal.NOT_ENOUGH_APPROVALS})


def _wants_only_approvals(exc: ControlRefused) -> bool:
    """True when every failed gate check is a missing or insufficient approval."""
    report = exc.result
    if not isinstance(report, GateReport):
        return False
    failed = [c for c in report.checks if not c.passed]
    return bool(failed) and all(c.reason in _APPROVAL_REASONS for c in failed)


@flow(name="rollback", log_prints=True, timeout_seconds=1800)
@visible_run
def rollback(
    model: str = "churn-classifier",
    stage: Literal["staging", "production"] = "production",
    to_version: str | None = None,
    registry: RegistryName = DEFAULT_REGISTRY_NAME,
) -> dict[str, Any]:
    """Roll a stage back to the version it served before, through the deploy gate.

    Args:
        model: The registered model's name.
        stage: The stage to roll back.
        to_version: The version to roll back to, e.g. v2 (it must have served this stage
            before); empty: the version served before the current one.
        registry: The model registry: an entry of the site's sources.registries (its
            location, endpoint and credentials are the site's); default: its first entry.
    """
    models = _open(model, registry)
    with _gate_checks_published() as reports, stage_lock(model):
        promotion = rollback_stage_task(
            models,
            stage,
            keys=KeyDirectory(local_paths().keys),
            policy=load_gate_policy(),
            actor=ACTOR,
            to_version=to_version,
        )
        reports.append(promotion.report)
    return promotion.pointer.to_json()


@flow(name="verify", log_prints=True, timeout_seconds=1800)
@visible_run
def verify(
    model: str = "churn-classifier",
    stage: Literal["staging", "production"] = "production",
    registry: RegistryName = DEFAULT_REGISTRY_NAME,
) -> dict[str, Any]:
    """Re-run the deploy gate for what a stage serves now; refuse if anything stopped verifying.

    Args:
        model: The registered model's name.
        stage: The stage whose served version is verified again.
        registry: The model registry: an entry of the site's sources.registries (its
            location, endpoint and credentials are the site's); default: its first entry.
    """
    models = _open(model, registry)
    with _gate_checks_published() as reports:
        pointer, report = verify_stage_task(
            models, stage, keys=KeyDirectory(local_paths().keys), policy=load_gate_policy()
        )
        reports.append(report)
    return {"version": pointer.version, "checks": [c.to_json() for c in report.checks]}
