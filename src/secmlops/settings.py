"""Where the embedded default keeps its state, and how blocks resolve to concrete settings."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

_PROJECT_MARKERS = ("dvc.yaml", "secmlops-policy.yaml")


def _is_project(path: Path) -> bool:
    return all((path / name).is_file() for name in _PROJECT_MARKERS)


def project_root() -> Path:
    """The project checkout (holds dvc.yaml, params.yaml, the policy file, prefect.yaml).

    ``SECMLOPS_PROJECT_DIR`` if set; else the nearest directory from the current one upwards
    that holds ``dvc.yaml`` and ``secmlops-policy.yaml``; else the checkout this library is
    installed from in development (editable install); else the current directory.
    """
    env = os.environ.get("SECMLOPS_PROJECT_DIR")
    if env:
        return Path(env).resolve()
    cwd = Path.cwd().resolve()
    for candidate in (cwd, *cwd.parents):
        if _is_project(candidate):
            return candidate
    checkout = Path(__file__).resolve().parents[2]
    return checkout if _is_project(checkout) else cwd


def state_home() -> Path:
    """Local state of the embedded default: keys, demo data registry, Trivy cache, registry."""
    env = os.environ.get("SECMLOPS_HOME")
    return Path(env).resolve() if env else project_root() / ".secmlops"


@dataclass(frozen=True)
class LocalPaths:
    """Paths below the state home."""

    home: Path

    @property
    def demo_keys(self) -> bool:
        """True when keys live in the embedded default's folder (generated on first run).

        With ``SECMLOPS_KEYS`` set, keys are provisioned by the site and never generated.
        """
        return not os.environ.get("SECMLOPS_KEYS")

    @property
    def keys(self) -> Path:
        return (
            Path(os.environ["SECMLOPS_KEYS"])
            if os.environ.get("SECMLOPS_KEYS")
            else self.home / "keys"
        )

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
    def default_registry(self) -> str:
        return str(self.home / "registry")


def local_paths() -> LocalPaths:
    return LocalPaths(state_home())
