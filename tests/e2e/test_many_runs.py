"""Many runs on one Prefect server backed by PostgreSQL (issue 11, "Many runs on one server").

The product's own stack (``secmlops server start --database postgres``: a throwaway
PostgreSQL cluster on 127.0.0.1, a Prefect server on it, the deployments, a process worker)
takes 10 ``secure-training`` runs submitted at once. Every approval pause is answered with a
decision signed by the approver (what ``secmlops approve`` does). Each run must end
COMPLETED with a version of its own whose evidence verifies and whose provenance names that
run, never another.

Slow (minutes: the deployment runs one build at a time, as ``prefect.yaml`` ships it), so
marked ``many_runs`` and left out of ``make test``: ``make test-many-runs`` runs it alone.
Every process the stack starts (postgres, server, worker) is stopped in teardown, on
failure too.
"""

from __future__ import annotations

import base64
import json
import os
import pwd
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from secmlops.audit import verify_audit_log
from secmlops.evidence.keys import KeyDirectory
from secmlops.registry.models import ModelRegistry
from secmlops.registry.stores import LocalRegistry
from tests.benchmarks.many_runs import (
    ManyRuns,
    RunOutcome,
    Stack,
    alive,
    evidence_of,
    running_stack,
    set_deployment_limit,
    stack_home,
    submit_and_wait,
)

pytestmark = [pytest.mark.many_runs, pytest.mark.timeout(2400)]

RUNS = 10
RACE_LOST = "pointer_race_lost"


@pytest.fixture(scope="module")
def postgres_stack() -> Iterator[Stack]:
    home = stack_home()
    pids: dict[str, int] = {}
    try:
        with running_stack(home, database="postgres") as stack:
            pids = stack.pids()
            yield stack
    finally:
        shutil.rmtree(home, ignore_errors=True)
    survivors = {name: pid for name, pid in pids.items() if alive(pid)}
    assert not survivors, f"still running after teardown: {survivors}"


def provenance_invocation(stack: Stack, model: str, version: str) -> tuple[str, str]:
    """The flow run id in a version's provenance: SLSA ``invocationId``, and the run record."""
    folder = stack.registry / model / "versions" / version / "evidence"
    (bundle,) = folder.glob("provenance*.json")
    envelope = json.loads(bundle.read_text())["dsseEnvelope"]
    statement = json.loads(base64.b64decode(envelope["payload"]))
    details = statement["predicate"]["runDetails"]
    return details["metadata"]["invocationId"], json.dumps(statement["predicate"])


def check_versions(stack: Stack, model: str, result: ManyRuns) -> dict[str, str]:
    """Each run made exactly one version, each version verifies and names its own run."""
    versions = ModelRegistry(LocalRegistry(stack.registry), model).versions()
    assert versions == [f"v{i}" for i in range(1, RUNS + 1)], versions
    run_of: dict[str, str] = {}
    for version in versions:
        report = evidence_of(stack, model, version)
        assert report["_exit"] == 0 and report.get("all_verified"), (
            version,
            report.get("_stderr"),
            [i["name"] for i in report.get("evidence", []) if not i["verified"]],
        )
        names = {item["name"].split("-2", 1)[0] for item in report["evidence"]}
        assert {"data-pull", "validation", "image-scan", "provenance", "model-scan"} <= names
        invocation, predicate = provenance_invocation(stack, model, version)
        assert f"flow run {invocation}" in json.dumps(report["evidence"]), version
        assert invocation in predicate
        run_of[version] = invocation
    submitted = {run.id for run in result.runs}
    assert set(run_of.values()) == submitted, (run_of, submitted)  # a bijection: 10 and 10
    return run_of


def race_losers(result: ManyRuns) -> list[RunOutcome]:
    """Runs refused because another run moved a stage pointer first (fail closed)."""
    return [r for r in result.runs if r.state == "FAILED" and RACE_LOST in r.message]


def check_all_completed(result: ManyRuns) -> None:
    """Every run COMPLETED (none lost a stage-pointer race, none crashed or failed), and
    every run was approved for staging and for production, once each."""
    assert not result.approval_errors, result.approval_errors
    assert not race_losers(result), [r.message.splitlines()[0] for r in race_losers(result)]
    other = [(r.name, r.state, r.message[:500]) for r in result.runs if r.state != "COMPLETED"]
    assert not other, other
    assert all(r.approvals == 2 for r in result.runs), [r.approvals for r in result.runs]


def check_registry(stack: Stack, model: str, result: ManyRuns) -> None:
    """Versions (check_versions), an intact audit chain with no lost race in it (no
    ``race-lost`` outcome, no VSA ``superseded``), and both stage pointers verify."""
    check_versions(stack, model, result)
    audit = stack.secmlops("audit", "verify", model)
    assert audit.returncode == 0, audit.stdout[-2000:] + audit.stderr[-2000:]
    models = ModelRegistry(LocalRegistry(stack.registry), model)
    entries = verify_audit_log(models, KeyDirectory(stack.state / "keys")).entries
    superseded = [e for e in entries if e.event == "superseded"]
    race_lost = [e for e in entries if e.fields.get("result") == "race-lost"]
    assert len(superseded) == len(race_lost) == 0, (len(superseded), len(race_lost))
    for stage in ("staging", "production"):
        verified = stack.secmlops("verify-stage", model, "--stage", stage)
        assert verified.returncode == 0, verified.stdout + verified.stderr[-2000:]


def test_ten_runs_at_once_on_postgres_each_complete_with_their_own_evidence(
    postgres_stack: Stack,
) -> None:
    """Issue 11: 10 runs of one model at once on one server (PostgreSQL), a process worker,
    the deployment as ``prefect.yaml`` ships it; all COMPLETED, 10 versions, each verifying,
    none with another run's evidence.

    Issue 11 finding 1: the deployment's concurrency slot is given up at each approval pause
    and not taken again on resume, so two resumed runs moved the same stage pointer at once
    and the loser was refused (``pointer_race_lost``; 1 run in 10). The flow now takes the
    model's stage lock around each pointer move: no run may lose a race."""
    stack = postgres_stack
    status = stack.secmlops("server", "status")
    assert status.returncode == 0 and "database:    postgres postgresql://prefect@127.0.0.1:" in (
        status.stdout
    ), status.stdout + status.stderr
    assert not (stack.state / "server" / "prefect" / "prefect.db").exists()

    result = submit_and_wait(stack, RUNS, model_name="churn-classifier")
    print(
        f"\n{RUNS} runs on PostgreSQL: wall {result.wall_seconds:.1f} s, "
        f"{result.throughput_per_minute:.2f} runs/min, slowest {result.slowest.seconds:.1f} s, "
        f"{stack.busy_answers} API answers 503 (retried), {len(race_losers(result))} lost a "
        "stage-pointer race"
    )
    check_all_completed(result)
    check_registry(stack, "churn-classifier", result)


def test_without_the_deployment_limit_runs_queue_for_stage_pointers_and_all_complete(
    postgres_stack: Stack,
) -> None:
    """Issue 11 finding 1 at full concurrency: with the deployment's limit lifted (10 builds
    at once), runs of one model reach its staging/production pointers together (3 of 10
    lost the race before the stage lock). Now they queue for the model's stage lock: every
    run COMPLETED, every version is its own and verifies, the audit chain is intact with no
    lost race, and both stage pointers verify."""
    stack = postgres_stack
    model = "churn-concurrent"
    before = set_deployment_limit(stack, RUNS)
    try:
        result = submit_and_wait(stack, RUNS, model_name=model)
    finally:
        set_deployment_limit(stack, before)
    print(
        f"\n{RUNS} runs, no deployment limit: wall {result.wall_seconds:.1f} s, "
        f"slowest {result.slowest.seconds:.1f} s, {len(race_losers(result))} lost a "
        "stage-pointer race"
    )
    check_all_completed(result)
    check_registry(stack, model, result)


def test_stack_processes_are_ours_and_recorded(postgres_stack: Stack) -> None:
    """The stack recorded what it started (teardown stops exactly these, and checks they
    are gone): the server, the worker, and a postmaster on this stack's own data directory,
    running as the unprivileged ``postgres`` user when the tests run as root."""
    pids = postgres_stack.pids()
    assert set(pids) == {"server", "worker", "postgres"}, pids
    proc = Path(f"/proc/{pids['postgres']}")
    assert str(postgres_stack.state).encode() in (proc / "cmdline").read_bytes()
    if os.geteuid() == 0:
        assert proc.stat().st_uid == pwd.getpwnam("postgres").pw_uid
