"""The DVC data registry and the pinned, md5-verified pull, with real git and dvc binaries."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from secmlops._internal.toolrun import resolve_binary
from secmlops.controls.data import DataPullRefusal, data_pull_statement, pull_dataset
from secmlops.controls.validation import validate_dataset
from secmlops.demo.data_registry import (
    DEMO_DATASET_PATH,
    DataRegistry,
    churn_csv_bytes,
    create_demo_data_registry,
    generate_churn_dataset,
)
from secmlops.errors import ControlRefused, InputError, ToolError
from secmlops.evidence.statements import PREDICATE_DATA_PULL

pytestmark = pytest.mark.integration

SCHEMA = "ml.schema:ChurnDataset"


def git(repo: Path, *args: str) -> str:
    out = subprocess.run(
        [str(resolve_binary("git")), "-C", str(repo), *args],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return out.stdout.strip()


def allowed(registry: DataRegistry) -> dict[str, Any]:
    """The site rule the flow passes for the demo entry: the registry's own remote only."""
    return {"allowed_remotes": [str(registry.remote)]}


def remote_object(registry: DataRegistry, md5: str) -> Path:
    """Where a DVC 3 local remote keeps the object with this md5."""
    return registry.remote / "files" / "md5" / md5[:2] / md5[2:]


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> DataRegistry:
    started = time.monotonic()
    reg = create_demo_data_registry(tmp_path_factory.mktemp("shared") / "registry")
    print(f"\ncreate_demo_data_registry: {time.monotonic() - started:.2f} s")
    return reg


def test_registry_layout_and_tags(registry: DataRegistry) -> None:
    assert registry.tags == ("v1.0", "v1.1")
    assert registry.path == DEMO_DATASET_PATH
    assert set(git(registry.repo, "tag", "--list").split()) == {"v1.0", "v1.1"}
    assert git(registry.repo, "status", "--porcelain") == ""
    # Only the remote holds data: no local cache could stand in for it during a pull.
    assert not (registry.repo / ".dvc" / "cache").exists()
    assert not (registry.repo / ".dvc" / "config.local").exists()
    assert str(registry.remote) in git(registry.repo, "show", "HEAD:.dvc/config")
    siblings = [p.name for p in registry.repo.parent.parent.iterdir()]
    assert siblings == ["registry"]  # the build directory was renamed, not left behind


def test_second_create_is_idempotent(registry: DataRegistry) -> None:
    head = git(registry.repo, "rev-parse", "HEAD")
    started = time.monotonic()
    again = create_demo_data_registry(registry.repo.parent)
    assert time.monotonic() - started < 2
    assert again == registry
    assert git(registry.repo, "rev-parse", "HEAD") == head


def test_registry_is_reproducible(tmp_path: Path) -> None:
    root = tmp_path / "registry"
    first = create_demo_data_registry(root, versions=("v1.0",))
    sha = git(first.repo, "rev-parse", "v1.0")
    shutil.rmtree(root)
    second = create_demo_data_registry(root, versions=("v1.0",))
    assert git(second.repo, "rev-parse", "v1.0") == sha
    assert git(second.repo, "log", "-1", "--format=%an <%ae> %aI") == (
        "secmlops <secmlops@localhost> 2024-01-02T00:00:00+00:00"
    )


def test_existing_directory_without_the_tags_is_not_overwritten(
    registry: DataRegistry,
) -> None:
    with pytest.raises(InputError, match="no tag"):
        create_demo_data_registry(registry.repo.parent, versions=("v1.0", "v1.2"))
    assert git(registry.repo, "tag", "--list").split() == ["v1.0", "v1.1"]


def test_pull_each_version_by_tag(registry: DataRegistry, tmp_path: Path) -> None:
    pulls = {}
    for version in registry.tags:
        started = time.monotonic()
        pull = pull_dataset(
            registry.url, registry.path, version, tmp_path / version, **allowed(registry)
        )
        print(f"\npull_dataset {version}: {time.monotonic() - started:.2f} s")
        pulls[version] = pull
        data = pull.local_path.read_bytes()
        assert pull.local_path == tmp_path / version / "churn.csv"
        assert data == churn_csv_bytes(generate_churn_dataset(version))
        assert pull.sha256 == hashlib.sha256(data).hexdigest()
        assert pull.dvc_md5 == hashlib.md5(data, usedforsecurity=False).hexdigest()
        assert pull.size_bytes == len(data)
        assert pull.rev == version
        assert pull.commit == git(registry.repo, "rev-parse", f"{version}^{{commit}}")
        assert sorted(p.name for p in pull.local_path.parent.iterdir()) == ["churn.csv"]
    assert pulls["v1.0"].sha256 != pulls["v1.1"].sha256
    assert pulls["v1.0"].commit != pulls["v1.1"].commit
    # The pulled data is what the schema gate then accepts.
    assert validate_dataset(pulls["v1.1"].local_path, SCHEMA).rows == 2500


def test_pull_by_full_commit_sha(registry: DataRegistry, tmp_path: Path) -> None:
    sha = git(registry.repo, "rev-parse", "v1.0")
    pull = pull_dataset(registry.url, registry.path, sha, tmp_path, **allowed(registry))
    assert pull.commit == sha
    assert pull.local_path.read_bytes() == churn_csv_bytes(generate_churn_dataset("v1.0"))


def test_data_pull_statement(registry: DataRegistry, tmp_path: Path) -> None:
    pull = pull_dataset(registry.url, registry.path, "v1.1", tmp_path, **allowed(registry))
    statement = data_pull_statement(pull)
    assert statement["predicateType"] == PREDICATE_DATA_PULL
    assert statement["subject"] == [{"name": "data/churn.csv", "digest": {"sha256": pull.sha256}}]
    predicate = statement["predicate"]
    assert predicate["commit"] == pull.commit and predicate["rev"] == "v1.1"
    assert predicate["dvcMd5"] == pull.dvc_md5 and predicate["md5Verified"] is True
    assert predicate["sizeBytes"] == pull.size_bytes
    assert predicate["pulledAt"].endswith("Z")


@pytest.mark.parametrize(
    ("repo", "path", "rev", "error", "message"),
    [
        (None, DEMO_DATASET_PATH, "v9.9", InputError, "revision 'v9.9' is neither a tag nor"),
        (None, DEMO_DATASET_PATH, "deadbee", InputError, "nor a full commit sha"),
        (None, DEMO_DATASET_PATH, "main", InputError, "a branch is refused"),
        (None, DEMO_DATASET_PATH, "--upload-pack=x", InputError, "not a plain git tag"),
        (None, "data/other.csv", "v1.0", InputError, "data/other.csv does not exist"),
        (None, ".dvcignore", "v1.0", InputError, "not tracked by DVC"),
        (None, "../outside.csv", "v1.0", InputError, "relative path inside"),
        ("/nonexistent/registry", DEMO_DATASET_PATH, "v1.0", InputError, "not a git repo"),
        ("file:///nonexistent/registry", DEMO_DATASET_PATH, "v1.0", InputError, "not an https"),
        ("relative/registry", DEMO_DATASET_PATH, "v1.0", InputError, "not an https"),
    ],
)
def test_pull_errors_are_clean(
    registry: DataRegistry,
    tmp_path: Path,
    repo: str | None,
    path: str,
    rev: str,
    error: type[Exception],
    message: str,
) -> None:
    with pytest.raises(error, match=message):
        pull_dataset(
            repo or registry.url, path, rev, tmp_path / "dest", timeout=60, **allowed(registry)
        )
    assert not (tmp_path / "dest").exists() or not any((tmp_path / "dest").iterdir())


def test_tampered_remote_is_refused(tmp_path: Path) -> None:
    registry = create_demo_data_registry(tmp_path / "registry")
    good = pull_dataset(
        registry.url, registry.path, "v1.0", tmp_path / "before", **allowed(registry)
    )
    obj = remote_object(registry, good.dvc_md5)
    assert obj.read_bytes() == good.local_path.read_bytes()
    # Change one customer's label on the remote: same size, different bytes.
    tampered = obj.read_bytes().replace(b",0\n", b",1\n", 1)
    obj.chmod(0o644)
    obj.write_bytes(tampered)

    dest = tmp_path / "after"  # fresh: nothing cached from the good pull can mask the tamper
    with pytest.raises(ControlRefused, match="does not match the md5 recorded in git") as info:
        pull_dataset(registry.url, registry.path, "v1.0", dest, **allowed(registry))
    assert info.value.reason is DataPullRefusal.CONTENT_MISMATCH
    details = info.value.details
    assert details["expected_md5"] == good.dvc_md5
    assert info.value.result == details
    assert details["actual_md5"] == hashlib.md5(tampered, usedforsecurity=False).hexdigest()
    assert details["commit"] == good.commit
    assert not dest.exists() or list(dest.iterdir()) == []  # nothing left to train on

    # The other version is untouched and still pulls.
    again = pull_dataset(registry.url, registry.path, "v1.1", tmp_path / "v11", **allowed(registry))
    assert again.rev == "v1.1"


def test_missing_remote_object_is_a_tool_failure(tmp_path: Path) -> None:
    registry = create_demo_data_registry(tmp_path / "registry", versions=("v1.0",))
    md5 = git(registry.repo, "show", "v1.0:data/churn.csv.dvc").split("md5: ")[1].split()[0]
    remote_object(registry, md5).unlink()
    with pytest.raises(ToolError, match=r"has no object for data/churn\.csv at v1\.0"):
        pull_dataset(
            registry.url, registry.path, "v1.0", tmp_path / "dest", timeout=60, **allowed(registry)
        )
