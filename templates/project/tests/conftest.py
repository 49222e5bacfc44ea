"""Test setup: every test session gets its own state (keys, model registry, Prefect
database), so tests never touch this checkout's .secmlops/, ~/.prefect, or a configured
Prefect server, and a run's registry is a temporary directory whatever the site configures."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

PROJECT = Path(__file__).resolve().parents[1]
SECMLOPS = Path(sys.executable).parent / "secmlops"

for _var in (
    "PREFECT_API_URL",
    "PREFECT_PROFILE",
    "PREFECT_PROFILES_PATH",
    "SECMLOPS_HOME",
    "SECMLOPS_KEYS",
    "SECMLOPS_POLICY",
    "SECMLOPS_PROJECT_DIR",
    "SECMLOPS_REGISTRY",
    "SECMLOPS_S3_ENDPOINT_URL",
):
    os.environ.pop(_var, None)
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="test-prefect-")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "600")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")


@dataclass(frozen=True)
class Site:
    """The project's site configuration, with a temporary state home and model registry."""

    home: Path
    registry: Path
    env: dict[str, str]

    def secmlops(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run the ``secmlops`` command in this project with this site's settings."""
        return subprocess.run(
            [str(SECMLOPS), *args],
            cwd=PROJECT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )


@pytest.fixture(scope="session")
def site(tmp_path_factory: pytest.TempPathFactory) -> Site:
    """This project's policy file, every registry entry pointed at a temporary directory."""
    assert SECMLOPS.exists(), "the secmlops command is missing: run `make venv`"
    home = tmp_path_factory.mktemp("secmlops-home")
    registry = home / "registry"
    policy = yaml.safe_load((PROJECT / "secmlops-policy.yaml").read_text())
    sources = policy.setdefault("sources", {})
    names = sources.get("registries") or {"default": {}}
    sources["registries"] = {name: {"uri": str(registry)} for name in names}
    (home / "secmlops-policy.yaml").write_text(yaml.safe_dump(policy, sort_keys=False))
    env = {
        **os.environ,
        "SECMLOPS_HOME": str(home),
        "SECMLOPS_REGISTRY": str(registry),
        "SECMLOPS_POLICY": str(home / "secmlops-policy.yaml"),
        "PREFECT_HOME": str(home / "prefect"),
    }
    return Site(home=home, registry=registry, env=env)
