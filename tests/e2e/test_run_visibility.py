"""What a run shows in the Prefect UI: artifacts, named task runs, warnings, refusals.

One pipeline run (module scope, in-process under a temporary Prefect server) feeds every
test; the operator flows then run against its registry.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from tests.e2e.conftest import run_approved

MODEL = "churn-classifier"


@dataclass
class VisibleWorld:
    home: Path
    registry: Path
    run_id: UUID
    contexts: list[Any]


def _artifacts(run_id: UUID) -> dict[str, Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]))
        )
    return {a.key: a for a in found if a.key}


def _task_run_names(run_id: UUID, expect: set[str], timeout: float = 90) -> set[str]:
    """The run's task run names, once ``expect`` is among them (or the timeout passed).

    Prefect records task runs through its events pipeline, asynchronously: on a busy
    machine they reach the API some time after the flow run ended."""
    import time

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    deadline = time.monotonic() + timeout
    while True:
        with get_client(sync_client=True) as client:
            runs = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id]))
            )
        names = {r.name for r in runs}
        if expect <= names or time.monotonic() > deadline:
            return names
        time.sleep(1)


def _logs(run_id: UUID) -> list[tuple[int, str]]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    with get_client(sync_client=True) as client:
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])))
    return [(log.level, log.message) for log in logs]


def _gate_rows(artifact: Any) -> list[dict[str, Any]]:
    data = artifact.data
    return list(json.loads(data) if isinstance(data, str) else data)


@pytest.fixture(scope="module")
def visible_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VisibleWorld]:
    from prefect.testing.utilities import prefect_test_harness

    import flows.artifacts
    import flows.training
    from flows.training import secure_training

    home = tmp_path_factory.mktemp("visible-home")
    registry = home / "registry"
    contexts: list[Any] = []

    def recorded(**fields: Any) -> flows.artifacts.ApprovalContext:
        context = flows.artifacts.ApprovalContext(**fields)
        contexts.append(context)
        return context

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SECMLOPS_HOME", str(home))
        mp.setenv("SECMLOPS_REGISTRY", str(registry))
        mp.delenv("SECMLOPS_S3_ENDPOINT_URL", raising=False)
        mp.setattr(flows.training, "ApprovalContext", recorded)
        with prefect_test_harness(server_startup_timeout=120):
            state = run_approved(
                secure_training, approver="demo-approver", keys=home / "keys", return_state=True
            )
            assert state.is_completed(), state.message
            run_id = state.state_details.flow_run_id
            assert run_id is not None
            yield VisibleWorld(home=home, registry=registry, run_id=run_id, contexts=contexts)


def test_pipeline_run_publishes_its_summary_with_evidence_links(
    visible_world: VisibleWorld,
) -> None:
    artifacts = _artifacts(visible_world.run_id)
    summary = artifacts["secmlops-run-summary"]
    assert summary.type == "markdown"
    text = str(summary.data)
    assert "| stage | result | time | detail | evidence |" in text
    for stage in ("pull-data", "register", "deploy-staging", "promote-production"):
        assert f"| {stage} | passed |" in text, stage
    registry_uri = visible_world.registry.resolve().as_uri()
    assert f"]({registry_uri}/{MODEL}/versions/v1/evidence/release.json)" in text
    assert "`v1`" in text


def test_pipeline_run_publishes_the_gate_checks_of_each_deploy(
    visible_world: VisibleWorld,
) -> None:
    table = _artifacts(visible_world.run_id)["secmlops-gate-checks"]
    assert table.type == "table"
    rows = _gate_rows(table)
    assert {r["stage"] for r in rows} == {"staging", "production"}
    assert rows and all(r["passed"] is True for r in rows)
    assert set(rows[0]) == {"stage", "check", "passed", "detail"}


def test_pipeline_task_runs_are_named_after_their_stage(visible_world: VisibleWorld) -> None:
    expected = {
        "deploy-gate-promote-staging",
        "deploy-gate-promote-production",
        "smoke-test-staging",
        "train-evaluate-model",
    }
    assert expected <= _task_run_names(visible_world.run_id, expected)


def test_policy_warnings_reach_the_run_log(visible_world: VisibleWorld) -> None:
    warnings = [m for level, m in _logs(visible_world.run_id) if level == 30]
    assert any("unsafe_allow_curated_db" in m for m in warnings), warnings


def test_approval_summary_compares_with_what_the_stage_serves(
    visible_world: VisibleWorld, tmp_path: Path
) -> None:
    from flows.artifacts import approval_summary_markdown, publish_approval_summary
    from secmlops.evidence.keys import KeyDirectory
    from secmlops.registry.models import ModelRegistry
    from secmlops.registry.stores import LocalRegistry

    (context,) = visible_world.contexts
    keys = KeyDirectory(visible_world.home / "keys")
    models = ModelRegistry(LocalRegistry(visible_world.registry), MODEL)
    text = approval_summary_markdown(models, "production", context, keys=keys)
    assert f"`{context.registration.model_digest}`" in text
    assert context.dataset.commit in text
    assert f"key id `{context.signature.key_id}`" in text
    assert "| production serves now | v1 |" in text
    assert "| accuracy |" in text and "min_accuracy 0.7" in text
    assert "production now (v1)" in text and "+0.0000" in text
    assert "release.json](file://" in text

    empty = ModelRegistry(LocalRegistry(tmp_path / "empty"), MODEL)
    assert "| staging serves now | none deployed |" in approval_summary_markdown(
        empty, "staging", context, keys=keys
    )

    from prefect import flow

    @flow(name="approval-summary-test")
    def publish() -> None:
        publish_approval_summary(models, "staging", context, keys=keys)

    publish()
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactCollectionFilter,
        ArtifactCollectionFilterKey,
    )

    key = ArtifactCollectionFilterKey(any_=["secmlops-approval-staging"])
    with get_client(sync_client=True) as client:
        (latest,) = client.read_latest_artifacts(artifact_filter=ArtifactCollectionFilter(key=key))
    assert "Approve churn-classifier v1 for **staging**?" in str(latest.data)


def test_operator_flows_run_named_gate_tasks_and_publish_checks(
    visible_world: VisibleWorld,
) -> None:
    from flows.operations import promote, verify

    verified = verify(model=MODEL, stage="production", return_state=True)
    assert verified.is_completed(), verified.message
    run_id = verified.state_details.flow_run_id
    assert run_id is not None
    assert "deploy-gate-verify-production" in _task_run_names(
        run_id, {"deploy-gate-verify-production"}
    )
    rows = _gate_rows(_artifacts(run_id)["secmlops-gate-checks"])
    assert rows and {r["stage"] for r in rows} == {"production"}

    promoted = promote(version="v1", stage="staging", return_state=True)
    assert promoted.is_completed(), promoted.message
    run_id = promoted.state_details.flow_run_id
    assert run_id is not None
    expected = {"require-version-v1", "deploy-gate-promote-staging"}
    assert expected <= _task_run_names(run_id, expected)
    assert "secmlops-gate-checks" in _artifacts(run_id)


def test_a_refusal_ends_the_run_with_its_diagnostics_and_no_logged_traceback(
    visible_world: VisibleWorld,
) -> None:
    from flows.operations import promote, rollback

    refused = promote(version="v9", model=MODEL, stage="production", return_state=True)
    assert refused.is_failed()
    assert refused.message is not None
    assert refused.message.startswith(f"bad input: model {MODEL} has no version v9\n")
    assert "what to do: known versions: v1" in refused.message
    run_id = refused.state_details.flow_run_id
    assert run_id is not None
    logs = _logs(run_id)
    assert not [m for level, m in logs if level >= 20 and "Traceback" in m], logs
    assert sum("Traceback" in m for _, m in logs) <= 1

    # A gate refusal inside a task: the task's record is the diagnostics, not a traceback.
    rolled = rollback(model=MODEL, stage="production", return_state=True)
    assert rolled.is_failed()
    assert rolled.message is not None
    assert rolled.message.startswith("refused: production has no earlier version")
    assert "reason: nothing_to_roll_back" in rolled.message
    run_id = rolled.state_details.flow_run_id
    assert run_id is not None
    assert "deploy-gate-rollback-production" in _task_run_names(
        run_id, {"deploy-gate-rollback-production"}
    )
    logs = _logs(run_id)
    assert not [m for level, m in logs if level >= 20 and "Traceback" in m], logs
