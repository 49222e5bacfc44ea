"""`make server` end to end: `secmlops server start|status|stop` against a real Prefect server.

One server per module (start costs a database migration and a deploy): started with a free
port, a temporary state home and an auth string, then checked as an operator would, and
stopped by the last test.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from secmlops.errors import InputError
from secmlops.server import WORK_POOL, enter_project_checkout
from tests.conftest import free_port

PROJECT = Path(__file__).resolve().parents[2]
SECMLOPS = Path(sys.executable).parent / "secmlops"
DEPLOYMENTS = {"secure-training", "promote", "rollback", "verify"}


def _server_cli(
    env: dict[str, str], *args: str, timeout: float = 900
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SECMLOPS), "server", *args],
        env=env,
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@dataclass
class LocalServer:
    env: dict[str, str]
    state: Path
    api: str
    auth: str
    started: subprocess.CompletedProcess[str]

    def cli(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        return _server_cli(self.env, *args, timeout=timeout)

    def call(self, path: str, body: dict[str, Any] | None = None, auth: str | None = "") -> Any:
        """Call the API; ``auth=""`` uses the server's auth string, ``None`` sends none."""
        headers = {"Content-Type": "application/json"}
        credentials = self.auth if auth == "" else auth
        if credentials is not None:
            token = base64.b64encode(credentials.encode()).decode()
            headers["Authorization"] = f"Basic {token}"
        req = urllib.request.Request(  # noqa: S310 - loopback
            f"{self.api}{path}",
            data=None if body is None else json.dumps(body).encode(),
            method="GET" if body is None else "POST",
            headers=headers,
        )
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - loopback
            return json.loads(resp.read())

    def pids(self) -> dict[str, int]:
        return {
            name: int((self.state / "server" / f"{name}.pid").read_text())
            for name in ("server", "worker")
        }


def _running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (its parent may not have reaped it yet)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _group_members(pgid: int) -> list[int]:
    members = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(proc.name))
    return members


@pytest.fixture(scope="module")
def local_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    state = tmp_path_factory.mktemp("secmlops-server")
    port = free_port()
    auth = f"operator:{secrets.token_urlsafe(16)}"
    env = {
        **os.environ,
        "SECMLOPS_HOME": str(state),
        "PREFECT_SERVER_PORT": str(port),
        "PREFECT_SERVER_API_AUTH_STRING": auth,
    }
    for var in ("PREFECT_API_URL", "PREFECT_API_AUTH_STRING", "SECMLOPS_REGISTRY"):
        env.pop(var, None)
    try:
        started = _server_cli(env, "start")
        assert started.returncode == 0, started.stdout[-3000:] + started.stderr[-3000:]
        yield LocalServer(env, state, f"http://127.0.0.1:{port}/api", auth, started)
    finally:
        _server_cli(env, "stop", timeout=120)


def test_start_serves_the_ui_blocks_deployments_and_a_worker(local_server: LocalServer) -> None:
    out = local_server.started.stdout
    assert local_server.api.removesuffix("/api") in out
    assert f"PREFECT_API_URL={local_server.api}" in out
    assert "make server-stop" in out

    ui = local_server.api.removesuffix("/api") + "/"
    with urllib.request.urlopen(ui, timeout=10) as resp:  # noqa: S310 - loopback
        assert "<html" in resp.read().decode().lower()

    deployments = local_server.call("/deployments/filter", {})
    assert {d["name"] for d in deployments} == DEPLOYMENTS
    for deployment in deployments:
        # Resolved on the worker at run time: no path of the deploying machine is stored.
        assert deployment["pull_steps"] == [{"secmlops.server.enter_project_checkout": {}}]
        assert deployment["work_pool_name"] == WORK_POOL
    assert str(PROJECT) not in json.dumps(deployments)

    block_types = {b["name"] for b in local_server.call("/block_types/filter", {})}
    assert "SecMLOps Git Credentials" in block_types

    workers = local_server.call(f"/work_pools/{WORK_POOL}/workers/filter", {})
    assert any(w["status"] == "ONLINE" for w in workers), workers


def test_a_second_start_starts_nothing(local_server: LocalServer) -> None:
    before = local_server.pids()
    began = time.monotonic()
    again = local_server.cli("start", timeout=120)
    assert again.returncode == 0, again.stderr
    assert "already running" in again.stdout
    assert time.monotonic() - began < 60
    assert local_server.pids() == before
    assert all(_running(pid) for pid in before.values())


def test_the_api_needs_the_auth_string(local_server: LocalServer) -> None:
    for credentials in (None, "operator:wrong"):
        with pytest.raises(urllib.error.HTTPError) as refused:
            local_server.call("/deployments/filter", {}, auth=credentials)
        assert refused.value.code == 401
    assert local_server.call("/deployments/filter", {})  # with the right one
    assert local_server.call("/health", auth=None) is True  # probes stay open


def test_status_reports_the_running_server(local_server: LocalServer) -> None:
    status = local_server.cli("status", timeout=60)
    assert status.returncode == 0, status.stderr
    assert str(local_server.pids()["worker"]) in status.stdout


def test_stop_leaves_no_process_behind(local_server: LocalServer) -> None:
    pids = local_server.pids()
    stopped = local_server.cli("stop", timeout=120)
    assert stopped.returncode == 0, stopped.stderr
    for name, pid in pids.items():
        assert f"the {name} (pid {pid})" in stopped.stdout
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_running(p) for p in pids.values()):
        time.sleep(0.2)
    assert [p for p in pids.values() if _running(p)] == []
    # The server and the worker each ran in their own process group: nothing of it is left.
    assert {p: _group_members(p) for p in pids.values()} == {p: [] for p in pids.values()}
    assert not list((local_server.state / "server").glob("*.pid"))

    again = local_server.cli("stop", timeout=60)
    assert again.returncode == 0
    assert "nothing to stop" in again.stdout
    assert local_server.cli("status", timeout=60).returncode == 3


def test_a_bad_port_is_bad_usage(tmp_path: Path) -> None:
    env = {**os.environ, "SECMLOPS_HOME": str(tmp_path), "PREFECT_SERVER_PORT": "http"}
    proc = _server_cli(env, "start", timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "PREFECT_SERVER_PORT" in proc.stderr
    assert not (tmp_path / "server" / "server.pid").exists()


def test_the_pull_step_enters_the_workers_checkout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # a worker's flow-run workspace is a temporary directory
    monkeypatch.delenv("SECMLOPS_PROJECT_DIR", raising=False)
    assert enter_project_checkout() == {"directory": str(PROJECT)}
    assert Path.cwd() == PROJECT

    monkeypatch.setenv("SECMLOPS_PROJECT_DIR", str(tmp_path))
    with pytest.raises(InputError) as refused:
        enter_project_checkout()
    assert refused.value.where == "SECMLOPS_PROJECT_DIR"


def test_the_server_module_does_not_import_prefect() -> None:
    code = "import secmlops.server, sys; assert 'prefect' not in sys.modules"
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=PROJECT, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
