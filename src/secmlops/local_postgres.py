"""A throwaway PostgreSQL cluster on 127.0.0.1, for a Prefect server that takes many runs.

SQLite stays the embedded default. When one Prefect server takes many runs at once, it
belongs on PostgreSQL (``secmlops server start --database postgres``, ``make postgres-start``);
this module starts one from Debian's ``postgresql`` package (``initdb``, ``postgres``) in a
directory of its own, and stops it again. Nothing here reaches beyond this machine: the server
listens on 127.0.0.1 only, takes no Unix-socket connections, and ``pg_hba.conf`` admits
127.0.0.1/32 alone, with ``scram-sha-256`` passwords (default) or ``trust``.

Layout of ``root`` (``<state home>/server/postgres`` for ``secmlops server``)::

    root/cluster.json     port, database, user, auth (what ``status`` and ``stop`` read)
    root/postgres.pid     the postmaster this module started
    root/postgres.log     its log
    root/user.password    the database user's password (0600; password auth only)
    root/admin.password   the bootstrap superuser's password (0600; password auth only)
    root/data/            the cluster (owned by the user postgres runs as)

PostgreSQL refuses to run as root. Started as root, the cluster is created and run as an
unprivileged system user (``run_as``; default ``postgres``, which Debian's package creates),
so ``root`` and every directory above it must be searchable by that user.

The database user owns its database and is no superuser. Prefect's migrations create the
``pg_trgm`` extension, which PostgreSQL (13+) lets a database owner create.

Example::

    cluster = start_postgres(Path(".secmlops/server/postgres"))
    os.environ["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = cluster.connection_url()
    ...
    stop_postgres(cluster.root)
"""

from __future__ import annotations

import contextlib
import grp
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from secmlops.errors import InputError, ToolError

HOST = "127.0.0.1"
#: Where to look for a PostgreSQL installation when its binaries are not on PATH.
PG_BINDIR_VAR = "SECMLOPS_PG_BINDIR"
DEBIAN_PG_ROOT = Path("/usr/lib/postgresql")
DEFAULT_RUN_AS = "postgres"
DEFAULT_DATABASE = "prefect"
DEFAULT_USER = "prefect"
ADMIN_USER = "secmlops_admin"
#: Enough for a Prefect server (its pool: 5 + 10 overflow per process) and a few clients.
MAX_CONNECTIONS = 200
READY_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 30.0
TOOL_TIMEOUT_SECONDS = 120.0

Auth = Literal["password", "trust"]


@dataclass(frozen=True)
class PostgresCluster:
    """A cluster this module started (or found running) under ``root``."""

    root: Path
    port: int
    database: str
    user: str
    auth: Auth
    pid: int | None
    #: False until the database and its user exist (a start cut off after initdb).
    created: bool = True

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def log(self) -> Path:
        return self.root / "postgres.log"

    @property
    def running(self) -> bool:
        return self.pid is not None

    def password(self) -> str | None:
        """The database user's password (``None`` with trust auth)."""
        if self.auth == "trust":
            return None
        return _password_file(self.root, "user").read_text().strip()

    def connection_url(self, driver: str = "postgresql+asyncpg") -> str:
        """A SQLAlchemy URL for the database (the form Prefect's
        ``PREFECT_SERVER_DATABASE_CONNECTION_URL`` takes), password included: keep it out
        of logs and out of the environment of anything but the server."""
        password = self.password()
        cred = f"{self.user}:{password}" if password else self.user
        return f"{driver}://{cred}@{HOST}:{self.port}/{self.database}"

    def describe(self) -> str:
        """Where it is, without the password."""
        return f"postgresql://{self.user}@{HOST}:{self.port}/{self.database} (data {self.data_dir})"


# -- binaries and users ------------------------------------------------------------------------


def postgres_bindir() -> Path:
    """The directory holding ``initdb`` and ``postgres``: ``SECMLOPS_PG_BINDIR``, else the
    newest ``/usr/lib/postgresql/<major>/bin`` (Debian), else ``PATH``. ``ToolError`` if none."""
    pinned = os.environ.get(PG_BINDIR_VAR, "").strip()
    if pinned:
        bindir = Path(pinned)
        if not (bindir / "initdb").is_file():
            raise ToolError(
                f"{PG_BINDIR_VAR}={pinned} holds no initdb",
                where=PG_BINDIR_VAR,
                fix="point it at PostgreSQL's bin directory (e.g. /usr/lib/postgresql/15/bin)",
            )
        return bindir
    candidates = []
    if DEBIAN_PG_ROOT.is_dir():
        for child in DEBIAN_PG_ROOT.iterdir():
            if child.name.isdigit() and (child / "bin" / "initdb").is_file():
                candidates.append((int(child.name), child / "bin"))
    if candidates:
        return max(candidates)[1]
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    raise ToolError(
        "PostgreSQL is not installed (no initdb in /usr/lib/postgresql/*/bin or on PATH)",
        where="initdb",
        fix="install it: apt-get install -y postgresql (or set SECMLOPS_PG_BINDIR)",
    )


@dataclass(frozen=True)
class _User:
    name: str
    uid: int
    gid: int


def _run_as_user(run_as: str | None) -> _User | None:
    """Who postgres runs as: ``None`` (this user) unless this process is root."""
    if os.geteuid() != 0:
        return None
    name = run_as or DEFAULT_RUN_AS
    try:
        entry = pwd.getpwnam(name)
    except KeyError as exc:
        raise InputError(
            f"PostgreSQL refuses to run as root, and there is no user {name!r} to run it as",
            where="run_as",
            fix="install Debian's postgresql package (it creates the user postgres), or "
            f"create a system user: useradd --system {name}",
        ) from exc
    if entry.pw_uid == 0:
        raise InputError(
            f"user {name!r} is root; PostgreSQL refuses to run as root",
            where="run_as",
            fix="name an unprivileged system user",
        )
    return _User(name, entry.pw_uid, entry.pw_gid)


def _check_searchable(path: Path, user: _User) -> None:
    """``InputError`` unless ``user`` can reach ``path`` (every directory above it)."""
    groups = {user.gid, *(g.gr_gid for g in _groups_of(user.name))}
    for parent in [path, *path.parents]:
        st = parent.stat()
        mode = st.st_mode
        if st.st_uid == user.uid:
            ok = bool(mode & stat.S_IXUSR)
        elif st.st_gid in groups:
            ok = bool(mode & stat.S_IXGRP)
        else:
            ok = bool(mode & stat.S_IXOTH)
        if not ok:
            raise InputError(
                f"PostgreSQL runs as {user.name} (this process is root) and cannot reach "
                f"{path}: {parent} is not searchable by {user.name}",
                where=str(parent),
                fix=f"chmod o+x {parent}, or keep the state home elsewhere (SECMLOPS_HOME)",
            )


def _groups_of(name: str) -> list[grp.struct_group]:
    return [g for g in grp.getgrall() if name in g.gr_mem]


def _run(
    argv: list[str],
    *,
    user: _User | None,
    env: dict[str, str],
    what: str,
    cwd: Path,
    stdin: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a PostgreSQL tool to completion (as ``user`` when root); ``ToolError`` on failure."""
    try:
        proc = subprocess.run(
            argv,
            env=env,
            cwd=cwd,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=TOOL_TIMEOUT_SECONDS,
            check=False,
            user=user.uid if user else None,
            group=user.gid if user else None,
            extra_groups=[] if user else None,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ToolError(f"{what} did not run: {exc}", where=argv[0]) from exc
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip()[-1500:]
        raise ToolError(f"{what} failed (exit {proc.returncode}): {tail}", where=argv[0])
    return proc


def _tool_env(user: _User | None, password: str | None = None) -> dict[str, str]:
    """A minimal environment: no PG* variables of the caller (they could point elsewhere)."""
    env = {
        "PATH": os.environ.get("PATH", os.defpath),
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "HOME": pwd.getpwuid(user.uid).pw_dir if user else os.environ.get("HOME", "/"),
        "TZ": "UTC",
    }
    if password is not None:
        env["PGPASSWORD"] = password
    return env


# -- state files -------------------------------------------------------------------------------


def _state_file(root: Path) -> Path:
    return root / "cluster.json"


def _pid_file(root: Path) -> Path:
    return root / "postgres.pid"


def _password_file(root: Path, who: str) -> Path:
    return root / f"{who}.password"


def _write_secret(path: Path, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(value + "\n")


def _postmaster_alive(pid: int) -> bool:
    """True if ``pid`` runs and is a ``postgres`` process (a reused pid or a zombie is not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process (postgres runs as its own user when we are root)
    proc = Path("/proc") / str(pid)
    if not proc.is_dir():
        return True
    try:
        state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        cmdline = (proc / "cmdline").read_bytes()
    except (OSError, IndexError):
        return False
    return state != "Z" and b"postgres" in cmdline


def postgres_status(root: Path) -> PostgresCluster | None:
    """The cluster under ``root`` as recorded (``pid`` ``None`` if it is not running), or
    ``None`` if none was ever created there."""
    state = _state_file(root)
    if not state.is_file():
        return None
    try:
        data = json.loads(state.read_text())
        cluster = PostgresCluster(
            root=root,
            port=int(data["port"]),
            database=str(data["database"]),
            user=str(data["user"]),
            auth="trust" if data.get("auth") == "trust" else "password",
            pid=None,
            created=data.get("created") is True,
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(
            f"{state} is not a cluster record this module wrote",
            where=str(state),
            fix=f"stop any postgres using {root / 'data'} and remove {root}",
        ) from exc
    try:
        pid: int | None = int(_pid_file(root).read_text().strip())
    except (OSError, ValueError):
        pid = None
    if pid is not None and not _postmaster_alive(pid):
        pid = None
    return replace(cluster, pid=pid)


# -- start / stop ------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex((HOST, port)) == 0


def _check_name(value: str, what: str) -> str:
    if not value or not all(c.isalnum() or c == "_" for c in value) or value[0].isdigit():
        raise InputError(
            f"{what} {value!r} is not a plain PostgreSQL identifier",
            where=what,
            fix="use letters, digits and underscores, not starting with a digit",
        )
    return value.lower()


def start_postgres(
    root: Path,
    *,
    port: int | None = None,
    database: str = DEFAULT_DATABASE,
    user: str = DEFAULT_USER,
    auth: Auth = "password",
    run_as: str | None = None,
) -> PostgresCluster:
    """Start the cluster under ``root``, creating it (``initdb``, the user, the database) the
    first time; return it. Idempotent: a running cluster is returned as it is.

    ``port``: on 127.0.0.1; ``None`` reuses the recorded one, else a free one. ``auth``:
    ``password`` (scram-sha-256, random passwords kept 0600 in ``root``) or ``trust``
    (anyone on this machine may connect: tests only). ``run_as``: the system user postgres
    runs as when this process is root (default ``postgres``).

    ``InputError`` for a bad name or port, a taken port, or a directory the postgres user
    cannot reach; ``ToolError`` if PostgreSQL is missing or fails to start (its log named).
    """
    if auth not in ("password", "trust"):
        raise InputError(f"auth {auth!r} is neither password nor trust", where="auth")
    database, user = _check_name(database, "database"), _check_name(user, "user")
    if port is not None and not 1 <= port <= 65535:
        raise InputError(f"port {port} is not a TCP port", where="port")
    root = root.resolve()
    existing = postgres_status(root)
    if existing is not None and existing.running:
        return existing
    bindir = postgres_bindir()
    owner = _run_as_user(run_as)
    root.mkdir(parents=True, exist_ok=True)
    if owner is not None:
        root.chmod(0o711)  # the postgres user passes through to data/, reads nothing else
        _check_searchable(root, owner)

    if existing is None:
        _initdb(root, bindir, owner, auth=auth)
        _record(root, port=port or _free_port(), database=database, user=user, auth=auth)
    cluster = _recorded(root)
    if port is not None and port != cluster.port:
        _record(
            root,
            port=port,
            database=cluster.database,
            user=cluster.user,
            auth=cluster.auth,
            created=cluster.created,
        )
        cluster = _recorded(root)
    if _port_in_use(cluster.port):
        raise InputError(
            f"port {cluster.port} on {HOST} is already in use by another program",
            where=f"{HOST}:{cluster.port}",
            fix="stop that program, or pass another port",
        )
    pid = _launch_postmaster(cluster, bindir, owner)
    _wait_ready(cluster, bindir, pid)
    if not cluster.created:
        _create_database(cluster, bindir)
        _record(
            root,
            port=cluster.port,
            database=cluster.database,
            user=cluster.user,
            auth=cluster.auth,
            created=True,
        )
    return _recorded(root)


def _recorded(root: Path) -> PostgresCluster:
    cluster = postgres_status(root)
    if cluster is None:
        raise ToolError(f"{_state_file(root)} vanished while starting postgres", where=str(root))
    return cluster


def _record(
    root: Path, *, port: int, database: str, user: str, auth: str, created: bool = False
) -> None:
    data = {
        "host": HOST,
        "port": port,
        "database": database,
        "user": user,
        "auth": auth,
        "created": created,
    }
    tmp = _state_file(root).with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(_state_file(root))


def _initdb(root: Path, bindir: Path, owner: _User | None, *, auth: Auth) -> None:
    data = root / "data"
    if data.exists():
        raise InputError(
            f"{data} exists but {_state_file(root)} does not: not a cluster this module made",
            where=str(data),
            fix=f"remove {root} (it holds no database this module knows), then start again",
        )
    data.mkdir(mode=0o700)
    if owner is not None:
        os.chown(data, owner.uid, owner.gid)
    argv = [
        str(bindir / "initdb"),
        "-D",
        str(data),
        "-U",
        ADMIN_USER,
        "-E",
        "UTF8",
        "--locale=C.UTF-8",
        "--no-instructions",
    ]
    pwfile: Path | None = None
    if auth == "password":
        admin_password = secrets.token_hex(24)
        _write_secret(_password_file(root, "admin"), admin_password)
        _write_secret(_password_file(root, "user"), secrets.token_hex(24))
        # initdb reads the superuser's password from a file the postgres user can read.
        pwfile = root / ".initdb-pw"
        _write_secret(pwfile, admin_password)
        if owner is not None:
            os.chown(pwfile, owner.uid, owner.gid)
        argv += [f"--pwfile={pwfile}", "--auth=scram-sha-256"]
    else:
        argv += ["--auth=trust"]
    try:
        _run(argv, user=owner, env=_tool_env(owner), what="initdb", cwd=root)
    except ToolError:
        shutil.rmtree(data, ignore_errors=True)
        raise
    finally:
        if pwfile is not None:
            pwfile.unlink(missing_ok=True)
    method = "scram-sha-256" if auth == "password" else "trust"
    # Only TCP from 127.0.0.1; no Unix sockets (unix_socket_directories is empty).
    (data / "pg_hba.conf").write_text(
        "# Written by secmlops.local_postgres: TCP from 127.0.0.1 only.\n"
        f"host all all {HOST}/32 {method}\n"
    )
    with (data / "postgresql.conf").open("a") as conf:
        conf.write(
            "\n# secmlops.local_postgres\n"
            f"listen_addresses = '{HOST}'\n"
            "unix_socket_directories = ''\n"
            f"max_connections = {MAX_CONNECTIONS}\n"
            "password_encryption = 'scram-sha-256'\n"
            "logging_collector = off\n"
        )
    if owner is not None:
        for path in (data / "pg_hba.conf", data / "postgresql.conf"):
            os.chown(path, owner.uid, owner.gid)


def _launch_postmaster(cluster: PostgresCluster, bindir: Path, owner: _User | None) -> int:
    argv = [str(bindir / "postgres"), "-D", str(cluster.data_dir), "-p", str(cluster.port)]
    with cluster.log.open("ab") as out:
        out.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(argv)}\n".encode())
        out.flush()
        try:
            proc = subprocess.Popen(
                argv,
                env=_tool_env(owner),
                cwd=cluster.root,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                user=owner.uid if owner else None,
                group=owner.gid if owner else None,
                extra_groups=[] if owner else None,
            )
        except OSError as exc:
            raise ToolError(f"postgres did not start: {exc}", where=argv[0]) from exc
    _pid_file(cluster.root).write_text(f"{proc.pid}\n")
    return int(proc.pid)


def _wait_ready(cluster: PostgresCluster, bindir: Path, pid: int) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    argv = [str(bindir / "pg_isready"), "-q", "-h", HOST, "-p", str(cluster.port), "-t", "2"]
    while time.monotonic() < deadline:
        if not _postmaster_alive(pid):
            _pid_file(cluster.root).unlink(missing_ok=True)
            raise ToolError(
                "postgres exited before it accepted connections",
                where=str(cluster.log),
                fix="read its log (a taken port, a full disk, a stale data directory?)",
            )
        ready = subprocess.run(argv, env=_tool_env(None), capture_output=True, check=False)
        if ready.returncode == 0:
            return
        time.sleep(0.2)
    _stop_pid(pid)
    _pid_file(cluster.root).unlink(missing_ok=True)
    raise ToolError(
        f"postgres did not accept connections on {HOST}:{cluster.port} within "
        f"{READY_TIMEOUT_SECONDS:g} s (stopped it)",
        where=str(cluster.log),
        fix="read its log",
    )


def _create_database(cluster: PostgresCluster, bindir: Path) -> None:
    """Create the user and its database (each only if missing: a start cut off half-way)."""
    admin_password = (
        _password_file(cluster.root, "admin").read_text().strip()
        if cluster.auth == "password"
        else None
    )
    # psql quotes the values (:'name' is a literal; format() quotes with %I and %L), and
    # each statement runs (\gexec) only if what it creates is missing.
    script = (
        "SELECT format('CREATE ROLE %I LOGIN', :'user')"
        " || CASE WHEN :'password' = '' THEN '' ELSE format(' PASSWORD %L', :'password') END"
        " WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'user') \\gexec\n"
        "SELECT format('CREATE DATABASE %I OWNER %I', :'database', :'user')"
        " WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'database') \\gexec\n"
    )
    argv = [
        str(bindir / "psql"),
        "-X",
        "-q",
        "-v",
        "ON_ERROR_STOP=1",
        "-h",
        HOST,
        "-p",
        str(cluster.port),
        "-U",
        ADMIN_USER,
        "-d",
        "postgres",
        "-v",
        f"user={cluster.user}",
        "-v",
        f"database={cluster.database}",
        "-v",
        f"password={cluster.password() or ''}",
        "-f",
        "-",
    ]
    _run(
        argv,
        user=None,
        env=_tool_env(None, admin_password),
        what=f"creating database {cluster.database}",
        cwd=cluster.root,
        stdin=script,
    )


def _stop_pid(pid: int) -> bool:
    """Fast shutdown (SIGINT), then immediate (SIGQUIT), then SIGKILL; True once it is gone."""
    for sig, wait in (
        (signal.SIGINT, STOP_TIMEOUT_SECONDS),
        (signal.SIGQUIT, 10.0),
        (signal.SIGKILL, 5.0),
    ):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not _postmaster_alive(pid):
                return True
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)  # reap it if this process started it
            time.sleep(0.1)
    return not _postmaster_alive(pid)


def stop_postgres(root: Path) -> int | None:
    """Stop the postmaster recorded under ``root``; return its pid (``None``: none ran).

    Only the recorded pid is signalled (it ends its own backends). The data stays, so the
    next :func:`start_postgres` finds the database; remove ``root`` to start afresh.
    """
    root = root.resolve()
    cluster = postgres_status(root)
    if cluster is None or cluster.pid is None:
        _pid_file(root).unlink(missing_ok=True)
        return None
    if not _stop_pid(cluster.pid):
        raise ToolError(
            f"postgres (pid {cluster.pid}) did not stop",
            where=str(_pid_file(root)),
            fix=f"end it by hand: kill -KILL {cluster.pid}",
        )
    _pid_file(root).unlink(missing_ok=True)
    return cluster.pid
