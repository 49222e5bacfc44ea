"""Shared test setup: offline, quiet tools; real servers (moto_server S3 on 127.0.0.1)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
# Hermetic Prefect: this test session's own PREFECT_HOME (never the developer's ~/.prefect or a
# configured server), and a start-up limit a fresh database on a busy 2-core machine meets.
for _var in ("PREFECT_API_URL", "PREFECT_PROFILE", "PREFECT_PROFILES_PATH"):
    os.environ.pop(_var, None)
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="secmlops-test-prefect-")
os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "600"


PROJECT_POLICY = Path(__file__).resolve().parents[1] / "secmlops-policy.yaml"


def write_site_policy(path: Path, **sources: Any) -> Path:
    """Write the project's policy to ``path`` with ``sources:`` sections replaced or added.

    ``write_site_policy(p, registries={"default": {}, "mine": {"uri": "/tmp/r"}})``: a site
    whose policy lets runs select those entries. Other sections stay the project's.
    """
    import yaml

    policy = yaml.safe_load(PROJECT_POLICY.read_text())
    policy.setdefault("sources", {}).update(sources)
    path.write_text(yaml.safe_dump(policy, sort_keys=False))
    return path


def sign_site_policy(path: Path, keys: Path, *, days: int = 30) -> Path:
    """Sign the policy file ``path`` as the site's policy owner would: with the
    ``policy-owner.pem`` of key directory ``keys``, expiring in ``days`` (its ``expires:``
    is rewritten); writes ``<path>.sig``. Needed where a test sets ``SECMLOPS_KEYS`` (site
    keys: nothing is signed automatically); the embedded demo signs an unsigned policy itself.
    """
    import datetime as dt

    from secmlops.evidence.statements import load_private_key
    from secmlops.policy import sign_policy

    owner = load_private_key(keys / "policy-owner.pem")
    expires = dt.datetime.now(dt.UTC).date() + dt.timedelta(days=days)
    sign_policy(path, owner, expires=expires)
    return path


@pytest.fixture(autouse=True)
def _private_state_home(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A test that names no state home gets its own, so nothing it does lands in the
    checkout's ``.secmlops`` (e.g. ``trusted-pointers.json``, the pointers this machine
    verified, written by every reader of a stage pointer).

    Only when ``SECMLOPS_HOME`` is unset: session fixtures (``pipeline_world``) set it in
    ``os.environ`` themselves, and are set up before this function-scoped fixture runs.
    A test that sets it with ``monkeypatch.setenv`` overrides this one.
    """
    if not os.environ.get("SECMLOPS_HOME"):
        monkeypatch.setenv("SECMLOPS_HOME", str(tmp_path_factory.mktemp("secmlops-home")))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before answering {url}")
        try:
            with urllib.request.urlopen(url, timeout=2):  # noqa: S310 - loopback only
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout}s")


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A real S3 API over HTTP: moto_server on 127.0.0.1, started for this test session."""
    moto = Path(sys.executable).parent / "moto_server"
    assert moto.exists(), "moto_server is missing: run `make venv`"
    port = free_port()
    proc = subprocess.Popen(
        [str(moto), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        wait_http(endpoint, 30, proc)
        yield endpoint
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def s3_bucket(
    s3_endpoint: str, aws_env: None, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> str:
    """A fresh bucket on the moto_server, named for the test."""
    import boto3

    name = f"secmlops-{abs(hash(request.node.nodeid)) % 10**10}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    monkeypatch.setenv("SECMLOPS_S3_ENDPOINT_URL", s3_endpoint)
    return name


class RequestLog:
    """What a logging HTTP server on 127.0.0.1 received: (method, path, headers) per request."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.requests: list[tuple[str, str, dict[str, str]]] = []


@pytest.fixture
def request_logger() -> Iterator[RequestLog]:
    """An HTTP server on 127.0.0.1 that records every request and answers 500: a stand-in for
    an endpoint a run should never be able to make the worker call."""
    import http.server
    import threading

    log: RequestLog

    class Handler(http.server.BaseHTTPRequestHandler):
        def _record(self) -> None:
            log.requests.append((self.command, self.path, dict(self.headers.items())))
            self.send_response(500)
            self.end_headers()

        do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _record  # noqa: N815

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    log = RequestLog(f"http://127.0.0.1:{server.server_address[1]}")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield log
    finally:
        server.shutdown()
        server.server_close()
