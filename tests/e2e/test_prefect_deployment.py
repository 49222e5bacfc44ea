"""Deploy the flows to a real Prefect server with prefect.yaml, run them through a process
worker, as an operator would from the UI (the API calls the UI makes)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port, wait_http

PROJECT = Path(__file__).resolve().parents[2]
PREFECT = Path(sys.executable).parent / "prefect"
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


class PrefectServer:
    def __init__(self, api: str, env: dict[str, str], home: Path) -> None:
        self.api = api
        self.env = env
        self.home = home

    def cli(self, *args: str, timeout: float = 120) -> str:
        proc = subprocess.run(
            [str(PREFECT), "--no-prompt", *args],
            env=self.env,
            cwd=PROJECT,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        assert proc.returncode == 0, (
            f"prefect {' '.join(args)}: {proc.stdout[-2000:]}{proc.stderr[-2000:]}"
        )
        return proc.stdout

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(f"{self.api}{path}", timeout=10) as resp:  # noqa: S310 - loopback
            return json.loads(resp.read())

    def post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        req = urllib.request.Request(  # noqa: S310 - loopback
            f"{self.api}{path}",
            data=json.dumps(body or {}).encode(),
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - loopback
            return json.loads(resp.read())

    def run_deployment(self, name: str, *params: str, timeout: float = 300) -> dict[str, Any]:
        args = ["deployment", "run", name]
        for p in params:
            args += ["--param", p]
        out = self.cli(*args)
        match = re.search(r"UUID: ([0-9a-f-]{36})", out)
        assert match, out
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run = self.get(f"/flow_runs/{match.group(1)}")
            if run["state_type"] in TERMINAL:
                return dict(run)
            time.sleep(1)
        raise AssertionError(f"flow run {match.group(1)} of {name} did not finish in {timeout}s")


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServer]:
    home = tmp_path_factory.mktemp("prefect-server")
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(home / "prefect"),
        "PREFECT_API_URL": api,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "SECMLOPS_PROJECT_DIR": str(PROJECT),
        "SECMLOPS_HOME": str(home / "secmlops"),
        # The Prefect layer (flows/, tasks/, blocks/) and ml/ run from the checkout.
        "PYTHONPATH": str(PROJECT),
    }
    env.pop("SECMLOPS_REGISTRY", None)
    (home / "prefect").mkdir()
    logs = (home / "server.log").open("wb")
    server = subprocess.Popen(
        [str(PREFECT), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=logs,
        stderr=subprocess.STDOUT,
    )
    worker = None
    try:
        wait_http(f"{api}/health", 120, server)
        srv = PrefectServer(api, env, home)
        srv.cli("block", "register", "-m", "blocks")
        srv.cli("work-pool", "create", "secmlops-process", "--type", "process")
        srv.cli("deploy", "--all")
        worker = subprocess.Popen(
            [str(PREFECT), "worker", "start", "--pool", "secmlops-process"],
            env=env,
            cwd=PROJECT,
            stdout=(home / "worker.log").open("wb"),
            stderr=subprocess.STDOUT,
        )
        yield srv
    finally:
        for proc in (worker, server):
            if proc is not None:
                proc.terminate()
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()


def test_server_serves_the_ui_and_our_blocks(prefect_server: PrefectServer) -> None:
    base = prefect_server.api.removesuffix("/api")
    with urllib.request.urlopen(base + "/", timeout=10) as resp:  # noqa: S310 - loopback
        assert "<html" in resp.read().decode().lower()
    deployed = {d["name"] for d in prefect_server.post("/deployments/filter")}
    assert {"secure-training", "promote", "rollback", "verify"} <= deployed
    block_types = {b["name"] for b in prefect_server.post("/block_types/filter")}
    assert {"SecMLOps Data Source", "SecMLOps Registry Target"} <= block_types


def test_deployed_pipeline_runs_on_a_worker_then_operator_flows(
    prefect_server: PrefectServer,
) -> None:
    run = prefect_server.run_deployment(
        "secure-training/secure-training", "approve_as=demo-approver"
    )
    assert run["state_type"] == "COMPLETED", run["state"]
    registry = prefect_server.home / "secmlops" / "registry" / "churn-classifier"
    assert json.loads((registry / "stages" / "production.json").read_text())["version"] == "v1"

    verified = prefect_server.run_deployment("verify/verify", "model=churn-classifier")
    assert verified["state_type"] == "COMPLETED", verified["state"]

    refused = prefect_server.run_deployment(
        "promote/promote", "model=churn-classifier", "version=v9", "stage=production"
    )
    assert refused["state_type"] == "FAILED"
    assert "no version v9" in refused["state"]["message"]
