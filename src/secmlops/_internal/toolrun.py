"""The one way this project runs external tools (trivy, dvc, git).

Argument lists only (never a shell), the binary resolved once, an allow-listed
environment (a scanner must not inherit AWS credentials), a timeout always, and the tail
of stderr kept in the ``ToolError`` so a person can see why a tool failed.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from secmlops.errors import ToolError

#: Variables every tool may see. Anything else must be asked for by name.
BASE_ENV_ALLOW: tuple[str, ...] = (
    "PATH",
    "HOME",
    "LANG",
    "LC_ALL",
    "TMPDIR",
    "TZ",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "REQUESTS_CA_BUNDLE",
)

STDERR_TAIL_CHARS = 2000


@functools.cache
def resolve_binary(name: str, env_var: str | None = None) -> Path:
    """Find ``name`` once: the site's pinned path if set, then the venv's bin dir, then ``PATH``.

    The pinned path comes from the settings (``SECMLOPS_TRIVY``, ``SECMLOPS_DVC``: see
    :data:`secmlops.settings.TOOL_VARIABLES`; ``env_var`` names another variable). Raises
    ``ToolError`` naming the binary and how to install it when it cannot be found.
    """
    from secmlops.settings import TOOL_VARIABLES, current_settings

    env_var = env_var or TOOL_VARIABLES.get(name)
    candidate = current_settings().tool(name) if env_var == TOOL_VARIABLES.get(name) else None
    if candidate is None and env_var and os.environ.get(env_var):
        candidate = Path(os.environ[env_var])
    if candidate is not None:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
        raise ToolError(
            f"{env_var} points at {candidate}, which is not an executable file",
            where=name,
            fix=f"unset {env_var} or point it at the {name} binary",
        )
    venv_bin = Path(sys.executable).parent / name
    if venv_bin.is_file() and os.access(venv_bin, os.X_OK):
        return venv_bin
    found = shutil.which(name)
    if found:
        return Path(found)
    raise ToolError(
        f"the '{name}' binary was not found",
        where=name,
        fix="run `make venv` (it installs every tool the pipeline needs into .venv)",
    )


def tool_env(allow: Iterable[str] = (), extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Build the environment for a tool: the base allow-list plus named variables and extras."""
    names = set(BASE_ENV_ALLOW) | set(allow)
    env = {k: v for k, v in os.environ.items() if k in names}
    # Tools we resolve from the venv expect its bin dir on PATH (dvc stages call `python`).
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([venv_bin, env.get("PATH", os.defpath)])
    if extra:
        env.update(extra)
    return env


def stderr_tail(text: str | bytes | None) -> str:
    """The last part of a tool's stderr, decoded, for error messages."""
    if text is None:
        return ""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return text[-STDERR_TAIL_CHARS:].strip()


def run_tool(
    argv: Sequence[str | os.PathLike[str]],
    *,
    timeout: float,
    env_allow: Iterable[str] = (),
    extra_env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    ok_codes: Iterable[int] = (0,),
    what: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a tool and return its completed process; raise ``ToolError`` on any failure.

    ``argv[0]`` should come from :func:`resolve_binary`. Exit codes outside ``ok_codes``,
    a timeout, or a binary that cannot start all raise ``ToolError`` with the stderr tail.
    """
    args = [os.fspath(a) for a in argv]
    label = what or Path(args[0]).name
    try:
        proc = subprocess.run(
            args,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=tool_env(env_allow, extra_env),
            cwd=cwd,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise ToolError(
            f"{label} did not finish within {timeout:g} s",
            where=" ".join(args[:3]),
            fix="check that the tool is not waiting on the network; raise the timeout in policy",
            details={"stderr_tail": stderr_tail(exc.stderr)},
        ) from exc
    except OSError as exc:
        raise ToolError(
            f"{label} could not be started: {exc.strerror or exc}",
            where=args[0],
            fix="run `make venv` to reinstall the tools",
        ) from exc
    if proc.returncode not in set(ok_codes):
        tail = stderr_tail(proc.stderr) or stderr_tail(proc.stdout)
        last_line = tail.splitlines()[-1] if tail else "no output"
        raise ToolError(
            f"{label} failed with exit code {proc.returncode}: {last_line}",
            where=" ".join(args[:3]),
            fix="read the tool output in the error details; rerun with -v for the traceback",
            details={"exit_code": proc.returncode, "stderr_tail": tail},
        )
    return proc
