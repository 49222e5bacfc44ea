"""A local Prefect server for this checkout, with its deployments and a worker (``make server``).

``secmlops server start`` starts ``prefect server start`` on 127.0.0.1 with its own
``PREFECT_HOME`` (``<state home>/server/prefect``), waits for ``/api/health``, registers the
block types (``prefect block register -m blocks``), creates the process work pool
``secmlops-process`` if it is missing, deploys ``prefect.yaml`` and starts a worker on that
pool in the background. Logs and pid files live in ``<state home>/server/``; ``stop`` ends
exactly the processes whose pid files ``start`` wrote. Running ``start`` twice starts nothing
new. This module never imports Prefect: it runs the venv's ``prefect`` binary.

Settings (the environment): ``PREFECT_SERVER_PORT`` (default 4200) and
``PREFECT_SERVER_API_AUTH_STRING`` (``user:password``; the server then asks for basic auth and
every client this module starts gets the same value as ``PREFECT_API_AUTH_STRING``).

The database: SQLite in ``PREFECT_HOME`` by default. ``start --database postgres`` starts a
local PostgreSQL cluster (:mod:`secmlops.local_postgres`, in ``<state home>/server/postgres``)
and puts the server on it, for many runs at once; ``stop`` stops it too. A site's own
PostgreSQL: set ``PREFECT_SERVER_DATABASE_CONNECTION_URL`` (or Prefect's older
``PREFECT_API_DATABASE_CONNECTION_URL``). The URL (a password in it) reaches the server
only, never the worker, the flow runs or the set-up commands.

:func:`enter_project_checkout` is the pull step ``prefect.yaml`` names: on the worker, at run
time, it enters the checkout the worker runs from, so no deploying machine's path is stored in
the deployment.

Example::

    secmlops server start     # UI at http://127.0.0.1:4200
    secmlops server start --database postgres
    secmlops server status
    secmlops server stop
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from secmlops._internal.toolrun import resolve_binary, run_tool, tool_env
from secmlops.errors import InputError, ToolError
from secmlops.local_postgres import postgres_status, start_postgres, stop_postgres
from secmlops.settings import project_root, state_home

#: The process work pool every deployment in ``prefect.yaml`` uses.
WORK_POOL = "secmlops-process"
HOST = "127.0.0.1"
DEFAULT_PORT = 4200
PORT_VAR = "PREFECT_SERVER_PORT"
SERVER_AUTH_VAR = "PREFECT_SERVER_API_AUTH_STRING"
CLIENT_AUTH_VAR = "PREFECT_API_AUTH_STRING"
#: A fresh SQLite database is created and migrated on the first start: slow on 2 cores.
HEALTH_TIMEOUT_SECONDS = 300.0
WORKER_TIMEOUT_SECONDS = 180.0
STOP_TIMEOUT_SECONDS = 30.0
SETUP_TIMEOUT_SECONDS = 600.0
#: Prefect variables a child must not inherit: they would point it at another server, profile
#: or Prefect Cloud account instead of this one.
_FOREIGN_PREFECT_VARS = frozenset(
    {
        "PREFECT_API_URL",
        "PREFECT_API_KEY",
        "PREFECT_PROFILE",
        "PREFECT_PROFILES_PATH",
        "PREFECT_HOME",
        CLIENT_AUTH_VAR,
        SERVER_AUTH_VAR,
    }
)
#: Where the server's database is (a password in the URL): for the server's eyes only.
DATABASE_URL_VARS = (
    "PREFECT_SERVER_DATABASE_CONNECTION_URL",
    "PREFECT_API_DATABASE_CONNECTION_URL",
)
_SERVER_ONLY_VARS = frozenset(
    {
        *DATABASE_URL_VARS,
        "PREFECT_SERVER_DATABASE_PASSWORD",
        "PREFECT_API_DATABASE_PASSWORD",
    }
)
Database = Literal["sqlite", "postgres"]

Say = Callable[[str], None]


@dataclass(frozen=True)
class ServerFiles:
    """Where the local server keeps its state, logs and pid files (``<state home>/server``)."""

    root: Path

    @property
    def prefect_home(self) -> Path:
        return self.root / "prefect"

    @property
    def server_log(self) -> Path:
        return self.root / "server.log"

    @property
    def worker_log(self) -> Path:
        return self.root / "worker.log"

    @property
    def setup_log(self) -> Path:
        """Output of the set-up commands (block register, work pool, deploy)."""
        return self.root / "setup.log"

    @property
    def server_pid(self) -> Path:
        return self.root / "server.pid"

    @property
    def worker_pid(self) -> Path:
        return self.root / "worker.pid"

    @property
    def api_url(self) -> Path:
        """The API URL the running server was started with (the port may differ per start)."""
        return self.root / "api-url"

    @property
    def postgres(self) -> Path:
        """The local PostgreSQL cluster of ``start --database postgres``."""
        return self.root / "postgres"

    @property
    def database(self) -> Path:
        """What database the running server was started on (``sqlite``, ``postgres``, ...)."""
        return self.root / "database"


def server_files() -> ServerFiles:
    """The local server's files, below the state home (``SECMLOPS_HOME``, else ``.secmlops``)."""
    return ServerFiles(state_home() / "server")


@dataclass(frozen=True)
class ServerStatus:
    """What runs now: the server and worker pids (``None``: not running) and where."""

    files: ServerFiles
    api_url: str | None
    server_pid: int | None
    worker_pid: int | None
    auth: bool = False
    already_running: bool = False
    #: The database the server runs on: ``sqlite``, ``postgres`` (the local cluster, with
    #: where it is) or ``external`` (PREFECT_SERVER_DATABASE_CONNECTION_URL).
    database: str = "sqlite"

    @property
    def running(self) -> bool:
        return self.server_pid is not None and self.worker_pid is not None

    @property
    def ui_url(self) -> str | None:
        return self.api_url.removesuffix("/api") if self.api_url else None


def configured_port(env: Mapping[str, str] | None = None) -> int:
    """The port from ``PREFECT_SERVER_PORT`` (default 4200); ``InputError`` if it is not one."""
    raw = (os.environ if env is None else env).get(PORT_VAR, "").strip()
    if not raw:
        return DEFAULT_PORT
    try:
        port = int(raw)
    except ValueError:
        port = 0
    if not 1 <= port <= 65535:
        raise InputError(
            f"{PORT_VAR}={raw!r} is not a TCP port",
            where=PORT_VAR,
            fix=f"set it to a free port between 1 and 65535, or unset it for {DEFAULT_PORT}",
        )
    return port


def _auth_string() -> str | None:
    value = os.environ.get(SERVER_AUTH_VAR, "")
    if value and ":" not in value:
        raise InputError(
            f"{SERVER_AUTH_VAR} must have the form user:password",
            where=SERVER_AUTH_VAR,
            fix="set it to e.g. admin:<a long random password>, or unset it",
        )
    return value or None


# -- processes ---------------------------------------------------------------------------------


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def process_alive(pid: int) -> bool:
    """True if ``pid`` runs and is a ``prefect`` process (a reused pid or a zombie is not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False  # someone else's process: a reused pid, not ours
    proc = Path("/proc") / str(pid)
    if not proc.is_dir():  # no procfs (macOS): trust the signal check
        return True
    try:
        state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ")
    except (OSError, IndexError):
        return False
    return state != "Z" and b"prefect" in cmdline


def _running_pid(path: Path) -> int | None:
    pid = _read_pid(path)
    return pid if pid is not None and process_alive(pid) else None


def _launch(argv: list[str], *, env: dict[str, str], cwd: Path, log: Path) -> int:
    """Start a long-running ``prefect`` process in its own session; return its pid.

    ``toolrun.run_tool`` runs a tool to completion; a server and a worker keep running after
    this command exits, so they are started here, in a new session (process group) that
    ``stop`` can end as a whole, flow-run subprocesses included.
    """
    with log.open("ab") as out:
        out.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(argv)}\n".encode())
        out.flush()
        proc = subprocess.Popen(
            argv,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return proc.pid


def _terminate(pid: int) -> None:
    """End the process group ``_launch`` started (pid == pgid), TERM first, then KILL."""

    def signal_group(sig: signal.Signals) -> None:
        try:
            if os.getpgid(pid) == pid:
                os.killpg(pid, sig)
            else:
                os.kill(pid, sig)
        except ProcessLookupError:
            pass

    signal_group(signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if not process_alive(pid):
            return
        time.sleep(0.2)
    signal_group(signal.SIGKILL)
    deadline = time.monotonic() + 5
    while process_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)


# -- the API -----------------------------------------------------------------------------------


def _api_request(
    api_url: str, path: str, *, auth: str | None, body: dict[str, Any] | None = None
) -> tuple[int, Any]:
    """Call the local API; return the status code and the decoded JSON (``None`` if none)."""
    if not api_url.startswith(f"http://{HOST}:"):  # loopback only: we started it
        raise InputError(f"{api_url} is not this machine's local server", where=api_url)
    headers = {"Content-Type": "application/json"}
    if auth:
        headers["Authorization"] = "Basic " + base64.b64encode(auth.encode()).decode()
    request = urllib.request.Request(  # noqa: S310 - loopback URL checked above
        api_url + path,
        data=None if body is None else json.dumps(body).encode(),
        method="GET" if body is None else "POST",
        headers=headers,
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:  # noqa: S310 - loopback
            raw = resp.read()
            return resp.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as exc:
        return exc.code, None


def _port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex((HOST, port)) == 0


def _wait_healthy(api_url: str, pid: int, files: ServerFiles) -> None:
    deadline = time.monotonic() + HEALTH_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if not process_alive(pid):
            files.server_pid.unlink(missing_ok=True)
            files.api_url.unlink(missing_ok=True)
            raise ToolError(
                "the Prefect server exited before it answered",
                where=str(files.server_log),
                fix="read the server log; if the port is taken, set PREFECT_SERVER_PORT",
            )
        try:
            status, _ = _api_request(api_url, "/health", auth=None)
            if status == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    _terminate(pid)
    files.server_pid.unlink(missing_ok=True)
    files.api_url.unlink(missing_ok=True)
    raise ToolError(
        f"the Prefect server did not answer {api_url}/health within "
        f"{HEALTH_TIMEOUT_SECONDS:g} s (stopped it)",
        where=str(files.server_log),
        fix="read the server log, then run `make server` again",
    )


def _wait_worker_online(api_url: str, auth: str | None, pid: int, files: ServerFiles) -> None:
    deadline = time.monotonic() + WORKER_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if not process_alive(pid):
            raise ToolError(
                f"the worker for pool {WORK_POOL} exited",
                where=str(files.worker_log),
                fix="read the worker log, then run `make server` again",
            )
        try:
            status, workers = _api_request(
                api_url, f"/work_pools/{WORK_POOL}/workers/filter", auth=auth, body={}
            )
            if status == 200 and any(w.get("status") == "ONLINE" for w in workers or []):
                return
        except OSError:
            pass
        time.sleep(1)
    raise ToolError(
        f"no worker came online for pool {WORK_POOL} within {WORKER_TIMEOUT_SECONDS:g} s",
        where=str(files.worker_log),
        fix="read the worker log; `make server-stop` then `make server` starts afresh",
    )


# -- environments ------------------------------------------------------------------------------


def _prefect_names() -> list[str]:
    """The Prefect settings a client (set-up command, worker) takes: not the foreign ones, and
    not the server's database URL."""
    return [
        k
        for k in os.environ
        if k.startswith("PREFECT_") and k not in _FOREIGN_PREFECT_VARS | _SERVER_ONLY_VARS
    ]


def _external_database_var() -> str | None:
    """The database URL variable the operator set (a site's own PostgreSQL), if any."""
    return next((k for k in DATABASE_URL_VARS if os.environ.get(k, "").strip()), None)


def _server_database(
    files: ServerFiles, database: Database | None, say: Say
) -> tuple[str, dict[str, str]]:
    """Which database the server is started on, and the variables that point it there."""
    external = _external_database_var()
    if external is not None:
        if database is not None:
            raise InputError(
                f"--database {database} and {external} both choose the server's database",
                where=external,
                fix=f"unset {external}, or drop --database to use the database it names",
            )
        return "external", {external: os.environ[external]}
    if database == "postgres":
        cluster = start_postgres(files.postgres)
        say(f"PostgreSQL runs at {cluster.describe()} (log: {cluster.log})")
        return f"postgres {cluster.describe()}", {
            "PREFECT_SERVER_DATABASE_CONNECTION_URL": cluster.connection_url()
        }
    return "sqlite", {}


def _client_extra(files: ServerFiles, api_url: str, auth: str | None) -> dict[str, str]:
    extra = {
        "PREFECT_HOME": str(files.prefect_home),
        "PREFECT_API_URL": api_url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    if auth:
        extra[CLIENT_AUTH_VAR] = auth
    return extra


def _project_extra(project: Path) -> dict[str, str]:
    """The Prefect layer (flows/, tasks/, blocks/) and ml/ run from the checkout."""
    pythonpath = [str(project), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {
        "PYTHONPATH": os.pathsep.join(dict.fromkeys(pythonpath)),
        "SECMLOPS_PROJECT_DIR": str(project),
    }


def _worker_env(
    files: ServerFiles, api_url: str, auth: str | None, project: Path
) -> dict[str, str]:
    # The worker runs the pipeline, which needs what the operator configured for it (AWS
    # credentials for an S3 registry, SECMLOPS_KEYS, ...): it inherits the environment, less
    # the Prefect variables that would send it to another server and the server's database
    # URL. Each tool a flow runs is still given only its own allow-list by toolrun.
    allow = [k for k in os.environ if k not in _FOREIGN_PREFECT_VARS | _SERVER_ONLY_VARS]
    return tool_env(allow, {**_client_extra(files, api_url, auth), **_project_extra(project)})


# -- start / stop / status ---------------------------------------------------------------------


def server_status() -> ServerStatus:
    """What the pid files say runs now (stale pid files count as not running)."""
    files = server_files()
    server_pid = _running_pid(files.server_pid)
    api_url = None
    if server_pid is not None and files.api_url.is_file():
        api_url = files.api_url.read_text().strip() or None
    database = "sqlite"
    if server_pid is not None and files.database.is_file():
        database = files.database.read_text().strip() or "sqlite"
    return ServerStatus(
        files=files,
        api_url=api_url,
        server_pid=server_pid,
        worker_pid=_running_pid(files.worker_pid),
        auth=_auth_string() is not None,
        database=database,
    )


def start_local_server(
    port: int | None = None,
    say: Say = lambda _: None,
    *,
    database: Database | None = None,
    worker_limit: int | None = None,
) -> ServerStatus:
    """Start (or complete) the local server, its blocks, deployments and worker.

    Idempotent: with the server and its worker running, nothing is started. With the server
    running but no worker (an earlier start failed half-way), the set-up steps run again
    against it (each is idempotent) and a worker is started. Raises ``ToolError`` naming the
    log when a step fails, ``InputError`` for a bad port or auth string, or a taken port.

    ``database``: ``None`` or ``sqlite`` for SQLite in ``PREFECT_HOME`` (or the database
    ``PREFECT_SERVER_DATABASE_CONNECTION_URL`` names, with ``None``), ``postgres`` for a local
    PostgreSQL cluster started here (``InputError`` if the running server is on another
    database). ``worker_limit``: how many flow runs the worker runs at once (default: no limit).
    """
    files = server_files()
    auth = _auth_string()
    status = server_status()
    if database is not None and status.server_pid is not None:
        running_on = status.database.split(" ", 1)[0]
        if running_on != database:
            raise InputError(
                f"the local server already runs on {running_on}, not {database}",
                where=str(files.database),
                fix="stop it first (`make server-stop`), then start it on the other database",
            )
    if status.running:
        return replace(status, already_running=True)

    prefect = str(resolve_binary("prefect"))
    project = project_root()
    if not (project / "prefect.yaml").is_file():
        raise InputError(
            f"{project} holds no prefect.yaml to deploy",
            where=str(project),
            fix="run from the project checkout, or set SECMLOPS_PROJECT_DIR to it",
        )
    files.prefect_home.mkdir(parents=True, exist_ok=True)

    # A worker whose server is gone polls a dead API: replace it with one for the new server.
    stale_worker = _running_pid(files.worker_pid)
    if stale_worker is not None:
        _terminate(stale_worker)
    files.worker_pid.unlink(missing_ok=True)

    server_pid = status.server_pid
    database_kind = status.database
    if server_pid is None or status.api_url is None:
        port = configured_port() if port is None else port
        api_url = f"http://{HOST}:{port}/api"
        if _port_in_use(port):
            raise InputError(
                f"port {port} on {HOST} is already in use by another program",
                where=f"{PORT_VAR}={port}",
                fix=f"stop that program, or choose another port: {PORT_VAR}=4201 make server",
            )
        database_kind, database_env = _server_database(files, database, say)
        say(
            f"starting the Prefect server on {HOST}:{port}, database {database_kind} "
            f"(log: {files.server_log})"
        )
        server_env = tool_env(
            _prefect_names(),
            {
                "PREFECT_HOME": str(files.prefect_home),
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                **({SERVER_AUTH_VAR: auth} if auth else {}),
                **database_env,
            },
        )
        server_pid = _launch(
            [prefect, "server", "start", "--host", HOST, "--port", str(port)],
            env=server_env,
            cwd=files.root,
            log=files.server_log,
        )
        files.server_pid.write_text(f"{server_pid}\n")
        files.api_url.write_text(f"{api_url}\n")
        files.database.write_text(f"{database_kind}\n")
        _wait_healthy(api_url, server_pid, files)
    else:
        api_url = status.api_url
        say(f"the Prefect server already runs (pid {server_pid}); completing its set-up")

    client_env = [*_prefect_names(), *(k for k in os.environ if k.startswith("SECMLOPS_"))]
    extra = {**_client_extra(files, api_url, auth), **_project_extra(project)}

    def setup(what: str, *args: str) -> None:
        say(what)
        try:
            proc = run_tool(
                [prefect, "--no-prompt", *args],
                timeout=SETUP_TIMEOUT_SECONDS,
                env_allow=client_env,
                extra_env=extra,
                cwd=project,
                what=f"prefect {' '.join(args[:2])}",
            )
        except ToolError as exc:
            _append(files.setup_log, f"prefect {' '.join(args)}", exc.details.get("stderr_tail"))
            raise ToolError(
                exc.message,
                where=str(files.setup_log),
                fix="read the log, fix the cause, then run `make server` again "
                "(the server keeps running; `make server-stop` stops it)",
                details=exc.details,
            ) from exc
        _append(files.setup_log, f"prefect {' '.join(args)}", proc.stdout + proc.stderr)

    setup("registering the block types (blocks/)", "block", "register", "-m", "blocks")
    code, _ = _api_request(api_url, f"/work_pools/{WORK_POOL}", auth=auth)
    if code == 404:
        setup(
            f"creating the work pool {WORK_POOL}",
            "work-pool",
            "create",
            WORK_POOL,
            "--type",
            "process",
        )
    setup("deploying prefect.yaml", "deploy", "--all")

    say(f"starting a worker on pool {WORK_POOL} (log: {files.worker_log})")
    limit = [] if worker_limit is None else ["--limit", str(worker_limit)]
    worker_pid = _launch(
        [prefect, "worker", "start", "--pool", WORK_POOL, *limit],
        env=_worker_env(files, api_url, auth, project),
        cwd=project,
        log=files.worker_log,
    )
    files.worker_pid.write_text(f"{worker_pid}\n")
    _wait_worker_online(api_url, auth, worker_pid, files)
    return ServerStatus(
        files=files,
        api_url=api_url,
        server_pid=server_pid,
        worker_pid=worker_pid,
        auth=auth is not None,
        database=database_kind,
    )


def _append(log: Path, title: str, text: object) -> None:
    with log.open("a", encoding="utf-8") as out:
        out.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {title}\n{text or ''}\n")


def stop_local_server(say: Say = lambda _: None) -> list[tuple[str, int]]:
    """Stop the worker, then the server, then the local PostgreSQL cluster (if ``start
    --database postgres`` started one), as ``start`` recorded; return what it stopped.

    Only the processes named by the pid files (and their process groups) are signalled.
    """
    files = server_files()
    stopped: list[tuple[str, int]] = []
    for name, pid_file in (("worker", files.worker_pid), ("server", files.server_pid)):
        pid = _running_pid(pid_file)
        if pid is not None:
            say(f"stopping the {name} (pid {pid})")
            _terminate(pid)
            if process_alive(pid):
                raise ToolError(
                    f"the {name} (pid {pid}) did not stop",
                    where=str(pid_file),
                    fix=f"end it by hand: kill -KILL {pid}",
                )
            stopped.append((name, pid))
        pid_file.unlink(missing_ok=True)
    files.api_url.unlink(missing_ok=True)
    files.database.unlink(missing_ok=True)
    cluster = postgres_status(files.postgres)
    if cluster is not None and cluster.pid is not None:
        say(f"stopping PostgreSQL (pid {cluster.pid})")
        pid = stop_postgres(files.postgres)
        if pid is not None:
            stopped.append(("postgres", pid))
    return stopped


# -- the pull step -----------------------------------------------------------------------------


def enter_project_checkout() -> dict[str, str]:
    """Pull step: enter the project checkout this worker runs from; return ``{"directory"}``.

    Runs on the worker at run time (``prefect.yaml`` names it), so the directory comes from
    the worker's environment (``SECMLOPS_PROJECT_DIR``, else the checkout the ``secmlops``
    library is installed from), never from the machine that deployed.
    """
    root = project_root()
    if not (root / "prefect.yaml").is_file() or not (root / "flows").is_dir():
        raise InputError(
            f"{root} is not the project checkout (no prefect.yaml and flows/)",
            where="SECMLOPS_PROJECT_DIR",
            fix="start the worker with SECMLOPS_PROJECT_DIR and PYTHONPATH set to the checkout "
            "(docs/operations.md, 'Remote workers')",
        )
    os.chdir(root)
    return {"directory": str(root)}


# -- the CLI -----------------------------------------------------------------------------------


def next_steps(status: ServerStatus) -> str:
    """What to do with a running server: the UI, a run, the CLI, and how to stop."""
    auth_export = f' {CLIENT_AUTH_VAR}="${SERVER_AUTH_VAR}"' if status.auth else ""
    return "\n".join(
        [
            f"Prefect UI:  {status.ui_url}"
            + (
                "  (basic auth: the user:password in PREFECT_SERVER_API_AUTH_STRING)"
                if status.auth
                else ""
            ),
            f"worker:      pid {status.worker_pid} on pool {WORK_POOL} "
            f"(log {status.files.worker_log})",
            f"database:    {status.database}",
            "",
            "Next steps:",
            "  Run from the UI: Deployments -> secure-training -> Run (Custom run to pick",
            "    a dataset, image and registry the policy's sources: name); the worker runs",
            "    it from this checkout.",
            "  Point the CLI at this server (then `make demo` runs show up in the UI too):",
            f"    export PREFECT_API_URL={status.api_url}{auth_export}",
            "    .venv/bin/prefect deployment run secure-training/secure-training",
            "  More: docs/operations.md, 'Prefect server and workers'.",
            "  Stop it: make server-stop",
        ]
    )


server_app = typer.Typer(
    name="server",
    help="A local Prefect server with this project's blocks, deployments and a worker.",
    no_args_is_help=True,
)


@server_app.command("start")
def start_cmd(
    port: Annotated[
        int | None,
        typer.Option("--port", help=f"Port on {HOST} [env {PORT_VAR}, default {DEFAULT_PORT}]."),
    ] = None,
    database: Annotated[
        str | None,
        typer.Option(
            "--database",
            help="sqlite (default) or postgres: a local PostgreSQL cluster, started here and "
            "stopped by `server stop`, for many runs at once. A site's own database: set "
            "PREFECT_SERVER_DATABASE_CONNECTION_URL instead.",
        ),
    ] = None,
    worker_limit: Annotated[
        int | None,
        typer.Option("--worker-limit", help="Flow runs the worker runs at once (default: any)."),
    ] = None,
) -> None:
    """Start the server, register blocks, deploy prefect.yaml, start a worker (idempotent)."""
    if port is not None and not 1 <= port <= 65535:
        raise InputError(f"--port {port} is not a TCP port", where="--port")
    if database not in (None, "sqlite", "postgres"):
        raise InputError(
            f"--database {database} is neither sqlite nor postgres", where="--database"
        )
    if worker_limit is not None and worker_limit < 1:
        raise InputError(f"--worker-limit {worker_limit} is below 1", where="--worker-limit")
    status = start_local_server(
        port,
        say=lambda line: typer.echo(line, err=True),
        database="postgres" if database == "postgres" else "sqlite" if database else None,
        worker_limit=worker_limit,
    )
    if status.already_running:
        typer.echo(
            f"already running: server pid {status.server_pid}, worker pid {status.worker_pid} "
            f"(pid files in {status.files.root}); nothing started"
        )
    typer.echo(next_steps(status))


@server_app.command("stop")
def stop_cmd() -> None:
    """Stop the worker and server that `secmlops server start` started (its pid files)."""
    files = server_files()
    stopped = stop_local_server(say=lambda line: typer.echo(line, err=True))
    if stopped:
        what = " and ".join(f"the {name} (pid {pid})" for name, pid in stopped)
        typer.echo(f"stopped {what}, as recorded in {files.root}")
    else:
        typer.echo(f"nothing to stop: no running server or worker recorded in {files.root}")


@server_app.command("status")
def status_cmd() -> None:
    """Say whether the local server and its worker run (exit 3 if either does not)."""
    status = server_status()
    if status.running:
        typer.echo(next_steps(status))
        return
    parts = [
        f"server: {'pid ' + str(status.server_pid) if status.server_pid else 'not running'}",
        f"worker: {'pid ' + str(status.worker_pid) if status.worker_pid else 'not running'}",
    ]
    raise ToolError(
        "the local Prefect server is not fully running (" + "; ".join(parts) + ")",
        where=str(status.files.root),
        fix="run `make server`",
    )


postgres_app = typer.Typer(
    name="postgres",
    help="The local PostgreSQL cluster `server start --database postgres` uses.",
    no_args_is_help=True,
)
server_app.add_typer(postgres_app)


@postgres_app.command("start")
def postgres_start_cmd() -> None:
    """Start the local PostgreSQL cluster (created on first use) on 127.0.0.1 (idempotent)."""
    files = server_files()
    cluster = start_postgres(files.postgres)
    typer.echo(f"PostgreSQL runs (pid {cluster.pid}) at {cluster.describe()}")
    typer.echo(f"  log: {cluster.log}; password file: {files.postgres / 'user.password'}")
    typer.echo("  start the server on it: secmlops server start --database postgres")


@postgres_app.command("stop")
def postgres_stop_cmd() -> None:
    """Stop the local PostgreSQL cluster (refused while the local server runs on it)."""
    files = server_files()
    status = server_status()
    if status.server_pid is not None and status.database.startswith("postgres"):
        raise InputError(
            f"the local Prefect server (pid {status.server_pid}) runs on this PostgreSQL",
            where=str(files.postgres),
            fix="stop the server with it: `make server-stop` (secmlops server stop)",
        )
    pid = stop_postgres(files.postgres)
    if pid is None:
        typer.echo(f"nothing to stop: no running PostgreSQL recorded in {files.postgres}")
    else:
        typer.echo(f"stopped PostgreSQL (pid {pid}); its data stays in {files.postgres}")


@postgres_app.command("status")
def postgres_status_cmd() -> None:
    """Say whether the local PostgreSQL cluster runs (exit 3 if it does not)."""
    files = server_files()
    cluster = postgres_status(files.postgres)
    if cluster is None or cluster.pid is None:
        raise ToolError(
            "the local PostgreSQL cluster is not running",
            where=str(files.postgres),
            fix="run `make postgres-start` (secmlops server postgres start)",
        )
    typer.echo(f"PostgreSQL runs (pid {cluster.pid}) at {cluster.describe()}")
