"""Deploy the flows to a real Prefect server with prefect.yaml, run them through a process
worker, as an operator would from the UI (the API calls the UI makes)."""

from __future__ import annotations

import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from secmlops.audit import verify_audit_log
from secmlops.evidence.keys import KeyDirectory
from secmlops.registry.models import ModelRegistry
from secmlops.registry.stores import LocalRegistry
from tests.e2e.conftest import TERMINAL, PrefectServer

SECMLOPS = Path(sys.executable).parent / "secmlops"

# `prefect_server` (tests/e2e/conftest.py): one server, worker and deployment for the session.


def test_server_serves_the_ui_and_our_blocks(prefect_server: PrefectServer) -> None:
    base = prefect_server.api.removesuffix("/api")
    with urllib.request.urlopen(base + "/", timeout=10) as resp:  # noqa: S310 - loopback
        assert "<html" in resp.read().decode().lower()
    deployed = {d["name"] for d in prefect_server.post("/deployments/filter")}
    assert {"secure-training", "promote", "rollback", "verify"} <= deployed
    block_types = {b["name"] for b in prefect_server.post("/block_types/filter")}
    assert "SecMLOps Git Credentials" in block_types


def start_deployment(server: PrefectServer, name: str, *params: str) -> str:
    args = ["deployment", "run", name]
    for p in params:
        args += ["--param", p]
    match = re.search(r"UUID: ([0-9a-f-]{36})", server.cli(*args))
    assert match
    return match.group(1)


def wait_for(server: PrefectServer, run_id: str, states: set[str], timeout: float = 300) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = server.get(f"/flow_runs/{run_id}")
        if run["state_type"] in states:
            return run
        assert run["state_type"] not in TERMINAL, run["state"]
        time.sleep(1)
    raise AssertionError(f"flow run {run_id} never reached {states}")


def approve_in_ui_form(server: PrefectServer, run_id: str, decision: str, reason: str) -> None:
    """What the UI's Resume form sends: the typed input, no signature (anonymous)."""
    server.post(
        f"/flow_runs/{run_id}/resume",
        {"run_input": {"decision": decision, "reason": reason, "signed_decision": ""}},
    )


def test_approval_in_the_form_and_signed_on_a_deployed_run(
    prefect_server: PrefectServer,
) -> None:
    """The done-when of the approval issue, through the API the UI uses: a deployed run
    pauses, staging is approved in the form (anonymous: enough for staging by policy),
    production needs `secmlops approve --key` (signed), and production moves."""
    env = {**prefect_server.env, "PREFECT_API_URL": prefect_server.api}
    keygen = subprocess.run(
        [str(SECMLOPS), "keygen", "--approver", "demo-approver"],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert keygen.returncode == 0, keygen.stderr
    run_id = start_deployment(prefect_server, "secure-training/secure-training")
    paused = wait_for(prefect_server, run_id, {"PAUSED"})
    assert paused["state"]["state_details"]["pause_key"] == "approval-staging-1"
    approve_in_ui_form(prefect_server, run_id, "approve", "smoke-tested by hand")

    paused = wait_for(prefect_server, run_id, {"PAUSED"}, timeout=300)
    while paused["state"]["state_details"]["pause_key"].startswith("approval-staging"):
        paused = wait_for(prefect_server, run_id, {"PAUSED"}, timeout=300)
    assert paused["state"]["state_details"]["pause_key"] == "approval-production-1"
    # Production does not take an anonymous decision: ignored, the run pauses again.
    approve_in_ui_form(prefect_server, run_id, "approve", "anonymous")
    deadline = time.monotonic() + 120
    while (
        prefect_server.get(f"/flow_runs/{run_id}")["state"]["state_details"].get("pause_key")
        != "approval-production-2"
    ):
        assert time.monotonic() < deadline, "the run did not pause again"
        time.sleep(1)
    key = prefect_server.home / "secmlops" / "keys" / "approvers" / "demo-approver.pem"
    signed = subprocess.run(
        [str(SECMLOPS), "approve", run_id, "--approve", "--reason", "ship it", "--key", str(key)],
        env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert signed.returncode == 0, signed.stdout + signed.stderr
    assert "demo-approver approved v1 for production (signed-decision)" in signed.stdout
    run = wait_for(prefect_server, run_id, TERMINAL)
    assert run["state_type"] == "COMPLETED", run["state"]
    state = prefect_server.home / "secmlops"
    models = ModelRegistry(LocalRegistry(state / "registry"), "churn-classifier")
    pointer, _ = models.read_pointer("production")
    assert pointer is not None and pointer.version == "v1"
    audit = verify_audit_log(models, KeyDirectory(state / "keys")).entries
    assert any(
        e.event == "decision-ignored" and e.fields.get("reason") == "anonymous_not_allowed"
        for e in audit
    ), [(e.event, e.fields) for e in audit]

    verified = prefect_server.run_deployment("verify/verify", "model=churn-classifier")
    assert verified["state_type"] == "COMPLETED", verified["state"]

    refused = prefect_server.run_deployment(
        "promote/promote", "model=churn-classifier", "version=v9", "stage=production"
    )
    assert refused["state_type"] == "FAILED"
    assert "no version v9" in refused["state"]["message"]
