"""Benchmark and driver: many secure-training runs submitted at once to one Prefect server.

Starts the product's own stack (``secmlops server start [--database postgres]``: a Prefect
server on 127.0.0.1, blocks, ``prefect.yaml`` deployed, a process worker) in a fresh state
home, submits ``--runs`` runs of the ``secure-training`` deployment at once (one API call
each, from as many threads), answers every approval pause with a decision signed by
``demo-approver`` (``secmlops.remote_approval.submit_decision``, what ``secmlops approve``
does), waits until every run ends, then checks each model version with ``secmlops evidence
--json``. Prints wall time, throughput and the slowest run for each database, measured one
after the other in the same invocation (the machine's load is printed beside them):

    .venv/bin/python tests/benchmarks/many_runs.py [--runs 10] [--database sqlite postgres]

``tests/e2e/test_many_runs.py`` drives the same functions (PostgreSQL, 10 runs) and asserts.
Started as root, PostgreSQL runs as the ``postgres`` user, so the state home is made under
``/tmp`` with mode 0711 (pytest's own temp dirs are 0700).
"""

from __future__ import annotations

import argparse
import contextvars
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROJECT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SECMLOPS = BIN / "secmlops"
APPROVER = "demo-approver"
DEPLOYMENT = "secure-training/secure-training"
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
#: Prefect settings that would point a child at another server or profile.
_FOREIGN = ("PREFECT_API_URL", "PREFECT_API_KEY", "PREFECT_PROFILE", "PREFECT_PROFILES_PATH")


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Stack:
    """A running ``secmlops server start`` stack in its own state home."""

    home: Path
    env: dict[str, str]
    api: str
    database: str
    #: API calls the server answered 503 (busy; SQLite's lock) and this driver retried.
    busy_answers: int = 0

    @property
    def state(self) -> Path:
        return Path(self.env["SECMLOPS_HOME"])

    @property
    def registry(self) -> Path:
        return self.state / "registry"

    def secmlops(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(SECMLOPS), *args],
            env=self.env,
            cwd=PROJECT,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def request(self, path: str, body: dict[str, Any] | None = None) -> Any:
        """Call the API; a 503 (the server is busy) is counted and retried, as the UI would
        have its user retry. Every other error is raised."""
        for attempt in range(30):
            req = urllib.request.Request(  # noqa: S310 - loopback
                f"{self.api}{path}",
                data=None if body is None else json.dumps(body).encode(),
                method="GET" if body is None else "POST",
                headers={"Content-Type": "application/json"},
            )
            try:
                with urllib.request.urlopen(req, timeout=60) as resp:  # noqa: S310 - loopback
                    raw = resp.read()
                    return json.loads(raw) if raw else None
            except urllib.error.HTTPError as exc:
                if exc.code != 503 or attempt == 29:
                    raise
                self.busy_answers += 1
                time.sleep(min(0.5 * (attempt + 1), 5.0))
        raise AssertionError("unreachable")

    def pids(self) -> dict[str, int]:
        """The pids ``secmlops server start`` recorded (server, worker, postgres)."""
        found = {}
        root = self.state / "server"
        for name, path in (
            ("server", root / "server.pid"),
            ("worker", root / "worker.pid"),
            ("postgres", root / "postgres" / "postgres.pid"),
        ):
            with suppress(OSError, ValueError):
                found[name] = int(path.read_text().strip())
        return found


def stack_home() -> Path:
    """A fresh directory the ``postgres`` user can reach when we are root (mode 0711)."""
    home = Path(tempfile.mkdtemp(prefix="secmlops-many-runs-"))
    home.chmod(0o711)
    return home


@contextmanager
def running_stack(home: Path, *, database: str, worker_limit: int | None = None) -> Iterator[Stack]:
    """Start the stack on ``database`` (``sqlite`` or ``postgres``) in ``home``; stop every
    process it started on the way out, failure or not (``secmlops server stop``, then the
    recorded pids by hand if anything survived)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in _FOREIGN}
    for var in ("SECMLOPS_REGISTRY", "SECMLOPS_KEYS", "SECMLOPS_POLICY", "SECMLOPS_TRUST_ROOT"):
        env.pop(var, None)
    env.update(
        {
            "SECMLOPS_HOME": str(home / "secmlops"),
            "SECMLOPS_PROJECT_DIR": str(PROJECT),
            "PYTHONPATH": str(PROJECT),
            "PREFECT_SERVER_PORT": str(port),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_API_ENABLE_HTTP2": "false",
            # The worker picks up a submitted run within seconds, not the default 10.
            "PREFECT_WORKER_QUERY_SECONDS": "2",
            "DVC_NO_ANALYTICS": "1",
        }
    )
    stack = Stack(home=home, env=env, api=f"http://127.0.0.1:{port}/api", database=database)
    try:
        keygen = stack.secmlops("keygen", "--approver", APPROVER)
        if keygen.returncode != 0:
            raise RuntimeError(f"secmlops keygen: {keygen.stderr[-2000:]}")
        args = ["server", "start", "--database", database]
        if worker_limit is not None:
            args += ["--worker-limit", str(worker_limit)]
        started = stack.secmlops(*args, timeout=900)
        if started.returncode != 0:
            logs = "".join(
                f"\n--- {log.name} (last lines) ---\n{_tail(log)}"
                for log in sorted((stack.state / "server").glob("*.log"))
            )
            raise RuntimeError(
                f"secmlops server start: {started.stdout}{started.stderr[-3000:]}{logs}"
            )
        stack.api = (stack.state / "server" / "api-url").read_text().strip()
        yield stack
    finally:
        pids = stack.pids()
        stack.secmlops("server", "stop", timeout=120)
        for name, pid in pids.items():  # belt and braces: nothing we started outlives us
            if alive(pid):
                print(f"{name} (pid {pid}) survived `secmlops server stop`: killing it")
                _kill_group(pid)


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"({exc})"


def alive(pid: int) -> bool:
    """Is ``pid`` running (not a zombie)?"""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _kill_group(pid: int) -> None:
    import signal

    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, signal.SIGKILL)
        else:
            os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


# -- runs --------------------------------------------------------------------------------------


@dataclass
class RunOutcome:
    """One flow run as the server reports it at the end."""

    id: str
    name: str
    state: str
    message: str
    seconds: float | None
    approvals: int


@dataclass
class ManyRuns:
    """What ``submit_and_wait`` saw."""

    runs: list[RunOutcome]
    wall_seconds: float
    approval_errors: list[str] = field(default_factory=list)

    @property
    def slowest(self) -> RunOutcome:
        return max(self.runs, key=lambda r: r.seconds or 0.0)

    @property
    def throughput_per_minute(self) -> float:
        return 60.0 * len(self.runs) / self.wall_seconds


def set_deployment_limit(stack: Stack, limit: int | None) -> int | None:
    """Set the training deployment's concurrency limit (``prefect.yaml`` ships 1) as an
    operator would in the UI; return the limit it had."""
    deployment = stack.request(f"/deployments/name/{DEPLOYMENT}")
    before = (deployment.get("global_concurrency_limit") or {}).get("limit")
    req = urllib.request.Request(  # noqa: S310 - loopback
        f"{stack.api}/deployments/{deployment['id']}",
        data=json.dumps({"concurrency_limit": limit}).encode(),
        method="PATCH",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=60):  # noqa: S310 - loopback
        pass
    return int(before) if before is not None else None


def _seconds(run: dict[str, Any]) -> float | None:
    """From the run's creation (submission) to its end, as the server recorded them."""
    if not run.get("end_time"):
        return None
    start = dt.datetime.fromisoformat(run["created"].replace("Z", "+00:00"))
    end = dt.datetime.fromisoformat(run["end_time"].replace("Z", "+00:00"))
    return (end - start).total_seconds()


def submit_and_wait(
    stack: Stack, count: int, *, model_name: str, timeout: float = 1500
) -> ManyRuns:
    """Submit ``count`` runs of the training deployment at once, approve every approval
    pause with the approver's signed decision, and wait until every run has ended."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from secmlops.remote_approval import stage_of_pause, submit_decision

    deployment = stack.request(f"/deployments/name/{DEPLOYMENT}")
    key = stack.state / "keys" / "approvers" / f"{APPROVER}.pem"
    tag = os.urandom(3).hex()

    def create(i: int) -> str:
        name = f"many-{tag}-{i:02d}"
        run = stack.request(  # a retried submission returns the run its key made, never a 2nd
            f"/deployments/{deployment['id']}/create_flow_run",
            {"name": name, "idempotency_key": name, "parameters": {"model_name": model_name}},
        )
        return str(run["id"])

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=count) as pool:
        ids = list(pool.map(create, range(count)))
    with temporary_settings(updates={PREFECT_API_URL: stack.api}):
        context = contextvars.copy_context()  # the API URL, for the approving threads
    answered: set[tuple[str, str]] = set()
    approvals: dict[str, int] = dict.fromkeys(ids, 0)
    pending: list[tuple[str, Future[Any]]] = []
    errors: list[str] = []
    deadline = started + timeout
    runs: list[dict[str, Any]] = []
    with ThreadPoolExecutor(max_workers=4) as approvers:
        while True:
            runs = stack.request(
                "/flow_runs/filter", {"flow_runs": {"id": {"any_": ids}}, "limit": count}
            )
            for run in runs:
                pause = (run.get("state") or {}).get("state_details", {}).get("pause_key")
                if run["state_type"] != "PAUSED" or not stage_of_pause(pause):
                    continue
                if (run["id"], pause) in answered:
                    continue
                answered.add((run["id"], pause))
                approvals[run["id"]] += 1
                future = approvers.submit(
                    context.copy().run,
                    submit_decision,
                    run["id"],
                    private_key=key,
                    approver=APPROVER,
                    approve=True,
                    reason="approved by the many-runs driver",
                )
                pending.append((run["id"], future))
            if len(runs) == count and all(r["state_type"] in TERMINAL for r in runs):
                break
            if time.monotonic() > deadline:
                break
            time.sleep(1)
        for run_id, future in pending:
            exc = future.exception()
            if exc is not None:
                errors.append(f"{run_id}: {type(exc).__name__}: {exc}")
    wall = time.monotonic() - started
    names = {r["id"]: r for r in runs}
    outcomes = [
        RunOutcome(
            id=run_id,
            name=names[run_id]["name"] if run_id in names else "?",
            state=names[run_id]["state_type"] if run_id in names else "MISSING",
            message=((names.get(run_id) or {}).get("state") or {}).get("message") or "",
            seconds=_seconds(names[run_id]) if run_id in names else None,
            approvals=approvals[run_id],
        )
        for run_id in ids
    ]
    return ManyRuns(runs=outcomes, wall_seconds=wall, approval_errors=errors)


def evidence_of(stack: Stack, model_name: str, version: str) -> dict[str, Any]:
    """``secmlops evidence MODEL VERSION --json`` (the deploy gate and every bundle)."""
    proc = stack.secmlops("evidence", model_name, version, "--json", timeout=300)
    try:
        report = json.loads(proc.stdout[proc.stdout.index("{") :])
    except ValueError:
        report = {}
    report["_exit"] = proc.returncode
    report["_stderr"] = proc.stderr[-2000:]
    return dict(report)


def provenance_run_id(report: dict[str, Any]) -> str | None:
    """The flow run id the version's provenance names (its SLSA invocation id)."""
    for item in report.get("evidence", []):
        if item["name"].startswith("provenance"):
            facts = item.get("facts") or {}
            for key in ("flowRunId", "flow_run_id", "invocationId", "invocation_id"):
                if facts.get(key):
                    return str(facts[key])
    return None


# -- the benchmark -----------------------------------------------------------------------------


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def measure(database: str, count: int, deployment_limit: int | None) -> dict[str, Any]:
    home = stack_home()
    try:
        t0 = time.monotonic()
        with running_stack(home, database=database) as stack:
            start_up = time.monotonic() - t0
            if deployment_limit is not None:
                set_deployment_limit(stack, deployment_limit)
            load_before = _load()
            result = submit_and_wait(stack, count, model_name="churn-classifier")
            load_after = _load()
            versions = sorted(
                p.name for p in (stack.registry / "churn-classifier" / "versions").iterdir()
            )
        states: dict[str, int] = {}
        for run in result.runs:
            states[run.state] = states.get(run.state, 0) + 1
        return {
            "database": database,
            "runs": count,
            "deployment_limit": deployment_limit or "as deployed (1)",
            "start_up_s": round(start_up, 1),
            "wall_s": round(result.wall_seconds, 1),
            "throughput_per_min": round(result.throughput_per_minute, 2),
            "slowest_s": round(result.slowest.seconds or 0.0, 1),
            "median_s": round(sorted(r.seconds or 0.0 for r in result.runs)[count // 2], 1),
            "states": states,
            "versions": len(versions),
            "approval_errors": len(result.approval_errors),
            "api_503_retried": stack.busy_answers,
            "load": f"{load_before} -> {load_after}",
            "failures": [
                f"{r.name}: {r.state} {r.message.splitlines()[0] if r.message else ''}"
                for r in result.runs
                if r.state != "COMPLETED"
            ],
        }
    finally:
        shutil.rmtree(home, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--database", nargs="+", default=["sqlite", "postgres"])
    parser.add_argument(
        "--deployment-limit",
        type=int,
        nargs="+",
        default=[0],
        help="the training deployment's concurrency limit for each measurement; 0: as "
        "prefect.yaml deploys it (1)",
    )
    args = parser.parse_args()
    print(f"{args.runs} runs per measurement; load before: {_load()}; cores: {os.cpu_count()}")
    for limit in args.deployment_limit:
        for database in args.database:
            print(json.dumps(measure(database, args.runs, limit or None)), flush=True)


if __name__ == "__main__":
    main()
