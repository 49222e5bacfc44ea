"""End-to-end fixtures: the real pipeline run twice into a temp registry with its own state."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

PROJECT = Path(__file__).resolve().parents[2]
SECMLOPS = Path(sys.executable).parent / "secmlops"


@dataclass
class PipelineWorld:
    home: Path
    registry: Path
    env: dict[str, str]
    runs: list[dict[str, Any]]

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(SECMLOPS), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )


@pytest.fixture(scope="session")
def pipeline_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PipelineWorld]:
    """Run the secure pipeline twice: once in-process under Prefect, once via the CLI."""
    from prefect.testing.utilities import prefect_test_harness

    home = tmp_path_factory.mktemp("secmlops-home")
    registry = home / "registry"
    env = {
        **os.environ,
        "SECMLOPS_HOME": str(home),
        "SECMLOPS_REGISTRY": str(registry),
        "PREFECT_HOME": str(home / "prefect"),
        "DVC_NO_ANALYTICS": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    env.pop("SECMLOPS_S3_ENDPOINT_URL", None)
    saved = {k: os.environ.get(k) for k in ("SECMLOPS_HOME", "SECMLOPS_REGISTRY")}
    os.environ["SECMLOPS_HOME"] = str(home)
    os.environ["SECMLOPS_REGISTRY"] = str(registry)
    runs: list[dict[str, Any]] = []
    try:
        from flows.training import secure_training

        with prefect_test_harness(server_startup_timeout=120):
            runs.append(secure_training(approve_as="demo-approver"))
        world = PipelineWorld(home=home, registry=registry, env=env, runs=runs)
        second = world.cli("run", "--approve-as", "demo-approver", "--json")
        assert second.returncode == 0, second.stderr[-3000:]
        import json

        runs.append(json.loads(second.stdout[second.stdout.index("{") :]))
        yield world
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture
def world_copy(pipeline_world: PipelineWorld, tmp_path: Path) -> PipelineWorld:
    """A private copy of the registry for tests that tamper with it."""
    registry = tmp_path / "registry"
    shutil.copytree(pipeline_world.registry, registry)
    env = {**pipeline_world.env, "SECMLOPS_REGISTRY": str(registry)}
    return PipelineWorld(
        home=pipeline_world.home, registry=registry, env=env, runs=pipeline_world.runs
    )
