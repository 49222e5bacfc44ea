"""End-to-end fixtures: the real pipeline run twice into a temp registry with its own state,
and one real Prefect server (UI, API, process worker, deployments) for the whole session."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.conftest import free_port, wait_http, write_site_policy

if TYPE_CHECKING:
    from prefect.blocks.core import Block

PROJECT = Path(__file__).resolve().parents[2]
SECMLOPS = Path(sys.executable).parent / "secmlops"
PREFECT = Path(sys.executable).parent / "prefect"
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
#: The registries the session server's site policy names (beside ``default``): a run picks
#: one by name, and the site decides where it is (``<server home>/<name>``).
SITE_REGISTRIES = ("site-registry", "approved-registry", "rejected-registry")


@dataclass
class PipelineWorld:
    home: Path
    registry: Path
    env: dict[str, str]
    runs: list[dict[str, Any]]

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(SECMLOPS), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )


def run_approved(flow: Any, *, approver: str, keys: Path, **params: Any) -> Any:
    """Run ``flow`` in-process while ``approver`` answers its approval pauses with signed
    decisions (what ``secmlops run --approve-as`` does)."""
    import uuid

    from secmlops.evidence.keys import KeyDirectory
    from secmlops.remote_approval import ApprovalAgent

    directory = KeyDirectory(keys)
    directory.ensure(approvers=(approver,))
    run_name = f"test-{uuid.uuid4().hex[:12]}"
    agent = ApprovalAgent(
        run_name,
        approver=approver,
        private_key=directory.approver_private(approver),
        reason="approved by the test",
    )
    with agent:
        return flow.with_options(flow_run_name=run_name)(**params)


@pytest.fixture(scope="session")
def pipeline_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PipelineWorld]:
    """Run the secure pipeline twice: once in-process under Prefect, once via the CLI."""
    from prefect.testing.utilities import prefect_test_harness

    home = tmp_path_factory.mktemp("secmlops-home")
    registry = home / "registry"
    env = {
        **os.environ,
        "SECMLOPS_HOME": str(home),
        "SECMLOPS_REGISTRY": str(registry),
        "PREFECT_HOME": str(home / "prefect"),
        "DVC_NO_ANALYTICS": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    env.pop("SECMLOPS_S3_ENDPOINT_URL", None)
    saved = {k: os.environ.get(k) for k in ("SECMLOPS_HOME", "SECMLOPS_REGISTRY")}
    os.environ["SECMLOPS_HOME"] = str(home)
    os.environ["SECMLOPS_REGISTRY"] = str(registry)
    runs: list[dict[str, Any]] = []
    try:
        from flows.training import secure_training

        with prefect_test_harness(server_startup_timeout=120):
            runs.append(run_approved(secure_training, approver="demo-approver", keys=home / "keys"))
        world = PipelineWorld(home=home, registry=registry, env=env, runs=runs)
        second = world.cli("run", "--approve-as", "demo-approver", "--json")
        assert second.returncode == 0, second.stderr[-3000:]
        import json

        runs.append(json.loads(second.stdout[second.stdout.index("{") :]))
        yield world
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture
def world_copy(pipeline_world: PipelineWorld, tmp_path: Path) -> PipelineWorld:
    """A private copy of the registry for tests that tamper with it."""
    registry = tmp_path / "registry"
    shutil.copytree(pipeline_world.registry, registry)
    env = {**pipeline_world.env, "SECMLOPS_REGISTRY": str(registry)}
    return PipelineWorld(
        home=pipeline_world.home, registry=registry, env=env, runs=pipeline_world.runs
    )


def _send(req: urllib.request.Request, attempts: int = 6) -> bytes:
    """The response body; 503/429 (a SQLite-backed server busy under the suite's load, which
    Prefect's own client retries too: the request was not applied) are retried with backoff,
    every other error is raised."""
    for attempt in range(attempts):
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310 - loopback
                return bytes(resp.read())
        except urllib.error.HTTPError as exc:
            if exc.code not in (429, 503) or attempt == attempts - 1:
                raise
            time.sleep(0.5 * 2**attempt)
    raise AssertionError("unreachable")


class PrefectServer:
    """A running Prefect server (UI and API), its worker's environment and its state dir."""

    def __init__(self, api: str, env: dict[str, str], home: Path) -> None:
        self.api = api
        self.env = env
        self.home = home

    @property
    def ui(self) -> str:
        """The UI's base URL (the API lives under ``/api``)."""
        return self.api.removesuffix("/api")

    def registry_dir(self, name: str) -> Path:
        """Where the site's registry entry ``name`` (one of :data:`SITE_REGISTRIES`) is."""
        return self.home / name

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
        req = urllib.request.Request(f"{self.api}{path}")  # noqa: S310 - loopback
        body_bytes = _send(req)
        return json.loads(body_bytes)

    def post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        req = urllib.request.Request(  # noqa: S310 - loopback
            f"{self.api}{path}",
            data=json.dumps(body or {}).encode(),
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        body_bytes = _send(req)
        return json.loads(body_bytes) if body_bytes else None

    def deployment(self, name: str) -> dict[str, Any]:
        """The deployment ``flow-name/deployment-name``."""
        return dict(self.get(f"/deployments/name/{name}"))

    def block_document(self, block_type_slug: str, name: str) -> dict[str, Any]:
        """The saved block ``name`` of a block type."""
        return dict(self.get(f"/block_types/slug/{block_type_slug}/block_documents/name/{name}"))

    def wait_for_run(
        self,
        run_id: str,
        reached: Callable[[dict[str, Any]], bool],
        what: str,
        timeout: float = 900,
    ) -> dict[str, Any]:
        """Poll the API until ``reached(flow_run)``; fail if the run ends before or times out."""
        deadline = time.monotonic() + timeout
        run: dict[str, Any] = {}
        while time.monotonic() < deadline:
            run = dict(self.get(f"/flow_runs/{run_id}"))
            if reached(run):
                return run
            if run["state_type"] in TERMINAL:
                raise AssertionError(f"flow run {run_id} ended before {what}: {run['state']}")
            time.sleep(1)
        raise AssertionError(f"flow run {run_id} not {what} within {timeout}s: {run.get('state')}")

    def save_block(self, block: Block, name: str) -> dict[str, Any]:
        """Save ``block`` as ``name`` (the Python API a user would use); its block document."""
        from prefect.settings import PREFECT_API_URL, temporary_settings

        def save() -> None:
            with temporary_settings(updates={PREFECT_API_URL: self.api}):
                block.save(name, overwrite=True)

        # A thread of its own: under Playwright's sync API this thread has an event loop,
        # and Prefect would hand back a coroutine instead of saving.
        with ThreadPoolExecutor(max_workers=1) as pool:
            pool.submit(save).result(timeout=120)
        return self.block_document(block.get_block_type_slug(), name)

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


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServer]:
    """One real Prefect server for the session: our block types registered, a site policy
    naming :data:`SITE_REGISTRIES`, prefect.yaml deployed, a process worker polling its pool."""
    home = tmp_path_factory.mktemp("prefect-server")
    policy = write_site_policy(
        home / "site-policy.yaml",
        registries={"default": {}, **{name: {"uri": str(home / name)} for name in SITE_REGISTRIES}},
    )
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(home / "prefect"),
        "PREFECT_API_URL": api,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_API_ENABLE_HTTP2": "false",
        # A busy machine: SQLite waits longer for its lock instead of answering 503, and a
        # 503 that still happens is logged with its cause.
        "PREFECT_SERVER_DATABASE_TIMEOUT": "60",
        "PREFECT_API_LOG_RETRYABLE_ERRORS": "true",
        # The worker picks up a run the UI created within seconds, not the default 10.
        "PREFECT_WORKER_QUERY_SECONDS": "2",
        "SECMLOPS_PROJECT_DIR": str(PROJECT),
        "SECMLOPS_HOME": str(home / "secmlops"),
        # The site's policy: deploying reads its sources (the run form's choices), and the
        # worker resolves every run's names against it.
        "SECMLOPS_POLICY": str(policy),
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
        # A site whose policy names an approver holds that approver's public key.
        keys = home / "secmlops" / "keys"
        keygen = subprocess.run(
            [str(SECMLOPS), "keygen", "--approver", "demo-approver", "--keys", str(keys)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert keygen.returncode == 0, keygen.stderr[-2000:]
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
        logs.close()
