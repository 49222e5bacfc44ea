"""The throwaway PostgreSQL cluster (secmlops.local_postgres) and `server start --database`.

Real PostgreSQL from Debian's package (initdb + postgres, ~2 s per cluster); skipped where it
is not installed (`.ci/run` installs it). Every cluster a test starts is stopped in its
teardown, on failure too.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from secmlops.errors import InputError, ToolError
from secmlops.local_postgres import (
    PostgresCluster,
    postgres_bindir,
    postgres_status,
    start_postgres,
    stop_postgres,
)
from secmlops.server import _prefect_names, _worker_env, server_files

try:
    postgres_bindir()
    HAVE_POSTGRES = True
except ToolError:
    HAVE_POSTGRES = False

pytestmark = pytest.mark.skipif(not HAVE_POSTGRES, reason="PostgreSQL is not installed")
SECMLOPS = Path(sys.executable).parent / "secmlops"


@pytest.fixture
def pg_root() -> Iterator[Path]:
    """A directory the ``postgres`` user can reach when we are root (pytest's are 0700)."""
    home = Path(tempfile.mkdtemp(prefix="secmlops-pg-test-"))
    home.chmod(0o711)
    try:
        yield home / "postgres"
    finally:
        if (home / "postgres").exists():
            stop_postgres(home / "postgres")
        shutil.rmtree(home, ignore_errors=True)


def connect(url: str) -> str:
    import asyncpg

    async def who() -> str:
        conn = await asyncpg.connect(url, timeout=10)
        try:
            return str(await conn.fetchval("SELECT current_user || '/' || current_database()"))
        finally:
            await conn.close()

    return asyncio.run(who())


def test_a_cluster_starts_once_takes_its_password_only_and_stops(pg_root: Path) -> None:
    cluster = start_postgres(pg_root)
    assert cluster.running and cluster.created
    assert start_postgres(pg_root).pid == cluster.pid  # idempotent: nothing new started
    assert connect(cluster.connection_url("postgresql")) == "prefect/prefect"
    with pytest.raises(Exception, match="password authentication failed"):
        connect(f"postgresql://prefect:wrong@127.0.0.1:{cluster.port}/prefect")
    for who in ("user", "admin"):
        assert (pg_root / f"{who}.password").stat().st_mode & 0o777 == 0o600
    # The database user is no superuser (it owns its database; pg_trgm is trusted).
    import asyncpg

    async def superuser() -> bool:
        conn = await asyncpg.connect(cluster.connection_url("postgresql"))
        try:
            await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
            return bool(
                await conn.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = 'prefect'")
            )
        finally:
            await conn.close()

    assert asyncio.run(superuser()) is False
    assert stop_postgres(pg_root) == cluster.pid
    assert postgres_status(pg_root) == PostgresCluster(
        root=cluster.root,
        port=cluster.port,
        database="prefect",
        user="prefect",
        auth="password",
        pid=None,
    )
    assert stop_postgres(pg_root) is None
    again = start_postgres(pg_root)  # the data stays: the same database, a new postmaster
    assert again.pid != cluster.pid
    assert connect(again.connection_url("postgresql")) == "prefect/prefect"


def test_it_listens_on_loopback_tcp_only(pg_root: Path) -> None:
    cluster = start_postgres(pg_root, auth="trust")
    listening = subprocess.run(["ss", "-ltnpx"], capture_output=True, text=True, check=False).stdout
    lines = [line for line in listening.splitlines() if f"pid={cluster.pid}," in line]
    assert lines, listening
    assert all(f"127.0.0.1:{cluster.port}" in line for line in lines), lines
    hba = (cluster.data_dir / "pg_hba.conf").read_text()
    assert [line for line in hba.splitlines() if line and not line.startswith("#")] == [
        "host all all 127.0.0.1/32 trust"
    ]


def test_a_taken_port_is_bad_input(pg_root: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(InputError, match=f"port {port} on 127.0.0.1 is already in use"):
            start_postgres(pg_root, port=port)


def test_bad_names_are_bad_input(pg_root: Path) -> None:
    with pytest.raises(InputError, match="not a plain PostgreSQL identifier"):
        start_postgres(pg_root, database="prefect; DROP DATABASE x")
    assert not pg_root.exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="only root hands postgres to another user")
def test_as_root_a_directory_postgres_cannot_reach_is_bad_input(tmp_path: Path) -> None:
    """pytest's temp dirs are 0700: the postgres user cannot pass through them."""
    with pytest.raises(InputError, match="not searchable by postgres"):
        start_postgres(tmp_path / "postgres")


def test_the_database_url_reaches_the_server_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker runs user code: it never gets the server's database URL (a password)."""
    url = "postgresql+asyncpg://prefect:s3cret@127.0.0.1:5432/prefect"
    monkeypatch.setenv("PREFECT_SERVER_DATABASE_CONNECTION_URL", url)
    monkeypatch.setenv("PREFECT_API_DATABASE_PASSWORD", "s3cret")
    env = _worker_env(server_files(), "http://127.0.0.1:4200/api", None, Path.cwd())
    assert "s3cret" not in "".join(env.values())
    assert "PREFECT_SERVER_DATABASE_CONNECTION_URL" not in _prefect_names()


def test_two_database_choices_are_bad_usage(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "SECMLOPS_HOME": str(tmp_path),
        "PREFECT_SERVER_PORT": "1",  # never reached: refused before anything starts
        "PREFECT_SERVER_DATABASE_CONNECTION_URL": "postgresql+asyncpg://x@127.0.0.1/x",
    }
    proc = subprocess.run(
        [str(SECMLOPS), "server", "start", "--database", "postgres"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert "--database postgres and PREFECT_SERVER_DATABASE_CONNECTION_URL both" in proc.stderr
    bad = subprocess.run(
        [str(SECMLOPS), "server", "start", "--database", "mysql"],
        env={**env, "PREFECT_SERVER_DATABASE_CONNECTION_URL": ""},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert bad.returncode == 2 and "neither sqlite nor postgres" in bad.stderr, bad.stderr
