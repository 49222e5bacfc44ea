"""Every ``SECMLOPS_*`` setting in one place, and where the embedded default keeps its state.

The environment is read here and nowhere else in the library: :func:`current_settings` builds
a frozen :class:`Settings` from it (cheap; call it where a value is needed, so a worker, a
test or a CLI option that changed the environment is seen). Flows run on workers, so the
environment is also how the CLI hands its options on.

- ``SECMLOPS_PROJECT_DIR``: the project checkout (dvc.yaml, the policy, flows/); default:
  the nearest such directory from the current one upwards.
- ``SECMLOPS_HOME``: state of the embedded default; default ``<project>/.secmlops``.
- ``SECMLOPS_KEYS``: a key directory provisioned by the site (never generated); default
  ``<home>/keys`` (demo keys, generated on first run).
- ``SECMLOPS_REGISTRY``: model registry, a directory, ``file://`` or ``s3://bucket/prefix``;
  default ``<home>/registry``.
- ``SECMLOPS_S3_ENDPOINT_URL``: S3 API endpoint (MinIO, moto, ...); default AWS.
- ``SECMLOPS_POLICY``: the gate policy file; default ``<project>/secmlops-policy.yaml``.
- ``SECMLOPS_TRIVY``, ``SECMLOPS_DVC``: path of the ``trivy`` / ``dvc`` binary; default the
  venv's, then ``PATH``.

Example::

    from secmlops.settings import current_settings

    settings = current_settings()
    print(settings.paths.keys, settings.registry or settings.paths.default_registry)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

_PROJECT_MARKERS = ("dvc.yaml", "secmlops-policy.yaml")
POLICY_FILE = "secmlops-policy.yaml"

#: Binaries whose location a site may pin, and the variable that pins each.
TOOL_VARIABLES: Mapping[str, str] = {"trivy": "SECMLOPS_TRIVY", "dvc": "SECMLOPS_DVC"}


def _is_project(path: Path) -> bool:
    return all((path / name).is_file() for name in _PROJECT_MARKERS)


def _find_project(env: Mapping[str, str]) -> Path:
    if env.get("SECMLOPS_PROJECT_DIR"):
        return Path(env["SECMLOPS_PROJECT_DIR"]).resolve()
    cwd = Path.cwd().resolve()
    for candidate in (cwd, *cwd.parents):
        if _is_project(candidate):
            return candidate
    checkout = Path(__file__).resolve().parents[2]  # editable install in a checkout
    return checkout if _is_project(checkout) else cwd


@dataclass(frozen=True)
class LocalPaths:
    """Paths below the state home (``.secmlops/``) of the embedded default."""

    home: Path
    site_keys: Path | None = None

    @property
    def demo_keys(self) -> bool:
        """True when keys live in the embedded default's folder (generated on first run).

        With ``SECMLOPS_KEYS`` set, keys are provisioned by the site and never generated.
        """
        return self.site_keys is None

    @property
    def keys(self) -> Path:
        return self.site_keys or self.home / "keys"

    @property
    def data_registry(self) -> Path:
        return self.home / "data-registry"

    @property
    def trivy_cache(self) -> Path:
        return self.home / "trivy-cache"

    @property
    def images(self) -> Path:
        return self.home / "images"

    @property
    def runs(self) -> Path:
        return self.home / "runs"

    @property
    def prefect_home(self) -> Path:
        return self.home / "prefect"

    @property
    def default_registry(self) -> str:
        return str(self.home / "registry")


@dataclass(frozen=True)
class Settings:
    """The library's settings, read from ``SECMLOPS_*`` variables by :func:`current_settings`."""

    project_dir: Path
    paths: LocalPaths
    registry: str | None
    s3_endpoint_url: str | None
    policy_file: Path
    tools: Mapping[str, Path]

    def registry_uri(self, given: str | None = None) -> str:
        """The registry to use: ``given``, else ``SECMLOPS_REGISTRY``, else the local one."""
        return given or self.registry or self.paths.default_registry

    def tool(self, name: str) -> Path | None:
        """The pinned path of binary ``name`` (``SECMLOPS_TRIVY``, ...), if the site set one."""
        return self.tools.get(name)


def current_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Read the settings from ``env`` (default: the process environment)."""
    env = os.environ if env is None else env
    project = _find_project(env)
    home = Path(env["SECMLOPS_HOME"]).resolve() if env.get("SECMLOPS_HOME") else None
    keys = Path(env["SECMLOPS_KEYS"]) if env.get("SECMLOPS_KEYS") else None
    return Settings(
        project_dir=project,
        paths=LocalPaths(home or project / ".secmlops", keys),
        registry=env.get("SECMLOPS_REGISTRY") or None,
        s3_endpoint_url=env.get("SECMLOPS_S3_ENDPOINT_URL") or None,
        policy_file=Path(env["SECMLOPS_POLICY"])
        if env.get("SECMLOPS_POLICY")
        else project / POLICY_FILE,
        tools={name: Path(env[var]) for name, var in TOOL_VARIABLES.items() if env.get(var)},
    )


def project_root() -> Path:
    """The project checkout (holds dvc.yaml, params.yaml, the policy file, prefect.yaml).

    ``SECMLOPS_PROJECT_DIR`` if set; else the nearest directory from the current one upwards
    that holds ``dvc.yaml`` and ``secmlops-policy.yaml``; else the checkout this library is
    installed from in development (editable install); else the current directory.
    """
    return current_settings().project_dir


def state_home() -> Path:
    """Local state of the embedded default: keys, demo data registry, Trivy cache, registry."""
    return current_settings().paths.home


def local_paths() -> LocalPaths:
    """The embedded default's paths under the current settings."""
    return current_settings().paths
