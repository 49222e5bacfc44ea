"""The project's own Prefect state for the embedded default (no Prefect server configured).

Without ``PREFECT_API_URL``, Prefect runs flows against an ephemeral API server that it
starts in a subprocess on a SQLite database under ``PREFECT_HOME``. Two things go wrong on a
fresh or busy 2-core machine if that is left to Prefect's defaults:

* the first start creates and migrates the database, which takes longer than Prefect's 20 s
  start-up limit ("Timed out while attempting to connect to ephemeral Prefect API server");
* every checkout, and every user's other Prefect projects, share ``~/.prefect/prefect.db``,
  and several processes migrating one fresh SQLite file at once trip over each other.

So each checkout gets its own ``PREFECT_HOME`` (``.secmlops/prefect``), the start-up limit is
raised, and the ephemeral server is started once per process under a file lock, so runs
started together queue for the migration instead of racing it. Where a server is configured
(``PREFECT_API_URL`` in the environment or in the active Prefect profile), none of this
applies and that server is used.

Example::

    configure_prefect_home(Path(".secmlops"))   # before Prefect is imported
    start_local_api()                            # before the first flow call
"""

from __future__ import annotations

import fcntl
import os
import tomllib
from pathlib import Path

from secmlops.errors import InputError, ToolError

STARTUP_TIMEOUT_SECONDS = 600
_TIMEOUT_VAR = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"


def configured_api_url() -> str | None:
    """The Prefect API URL the user configured, from the environment or the active profile."""
    if os.environ.get("PREFECT_API_URL"):
        return os.environ["PREFECT_API_URL"]
    home = Path(os.environ.get("PREFECT_HOME") or Path.home() / ".prefect").expanduser()
    path = Path(os.environ.get("PREFECT_PROFILES_PATH") or home / "profiles.toml").expanduser()
    try:
        profiles = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None
    name = os.environ.get("PREFECT_PROFILE") or profiles.get("active") or "ephemeral"
    profile = profiles.get("profiles", {}).get(name, {})
    url = profile.get("PREFECT_API_URL") if isinstance(profile, dict) else None
    return url if isinstance(url, str) and url else None


def configure_prefect_home(state_home: Path) -> None:
    """Point Prefect at this checkout's own state, unless a server or home is configured.

    Must run before ``prefect`` is imported: Prefect reads its settings from the environment.
    An explicit ``PREFECT_HOME`` or start-up timeout in the environment is kept.
    """
    if configured_api_url():
        return
    home = Path(os.environ.setdefault("PREFECT_HOME", str(state_home / "prefect"))).expanduser()
    os.environ.setdefault(_TIMEOUT_VAR, str(STARTUP_TIMEOUT_SECONDS))
    home.mkdir(parents=True, exist_ok=True)  # Prefect's SQLite cannot create a missing dir


def start_local_api() -> None:
    """Start Prefect's ephemeral API server for this process, one process at a time.

    Does nothing when a Prefect server is configured. Prefect reuses the started server for
    every flow in this process and stops it at exit. A server that does not come up is a
    ``ToolError`` saying what to do, not Prefect's bare timeout.
    """
    if configured_api_url():
        return
    from prefect.server.api.server import SubprocessASGIServer

    home = Path(os.environ.get("PREFECT_HOME") or Path.home() / ".prefect").expanduser()
    home.mkdir(parents=True, exist_ok=True)
    timeout = _startup_timeout()
    server = SubprocessASGIServer()
    with (home / ".secmlops-startup.lock").open("w") as lock:
        # Held while the server starts (and migrates a new database); released once it serves.
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            server.start(timeout=timeout)
        except Exception as exc:
            raise ToolError(
                f"Prefect's local API server did not start within {timeout} s",
                where=f"PREFECT_HOME={home}",
                fix=(
                    "run the command again (the first start creates and migrates Prefect's "
                    f"database); on a slow or busy machine raise {_TIMEOUT_VAR}, or start a "
                    "Prefect server (`.venv/bin/prefect server start`) and set PREFECT_API_URL "
                    "(docs/operations.md)"
                ),
                details={"prefect": str(exc)[-2000:]},
            ) from exc


def local_api_url() -> str | None:
    """The URL of the ephemeral API this process started, if it started one."""
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer._instances.get(None)
    return server.api_url if server is not None and server.running else None


def _startup_timeout() -> int:
    raw = os.environ.get(_TIMEOUT_VAR, "")
    try:
        return max(1, int(raw)) if raw else STARTUP_TIMEOUT_SECONDS
    except ValueError as exc:
        raise InputError(
            f"{_TIMEOUT_VAR}={raw!r} is not a number of seconds",
            where=_TIMEOUT_VAR,
            fix=f"set it to a whole number of seconds, e.g. {STARTUP_TIMEOUT_SECONDS}",
        ) from exc
