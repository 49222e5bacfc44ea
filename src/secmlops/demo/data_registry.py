"""Demo only: the churn dataset and a local two-version DVC data registry to pull it from.

Nothing here is a control: :mod:`secmlops.controls.data` pulls from any data registry; this
module builds one to pull from when no site registry is configured (``make demo``, tests).
The dataset (telecom customer churn) is generated deterministically from the version string
with a seeded numpy generator; nothing is downloaded.

Example::

    registry = create_demo_data_registry(Path(".secmlops/data-registry"))
    pull = pull_dataset(registry.url, registry.path, "v1.1", Path("data"),
                        allowed_remotes=[str(registry.remote)])

The committed ``.dvc/config`` names the remote's final path (``<root>/remote``), so the
site rule for the demo entry is exactly that one remote.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from secmlops._internal.atomic import write_atomic
from secmlops.controls.data import BASE_TOOL_ENV, run_dvc, run_git
from secmlops.errors import InputError

#: Where the demo registry keeps its one dataset.
DEMO_DATASET_PATH = "data/churn.csv"
DEMO_VERSIONS: tuple[str, ...] = ("v1.0", "v1.1")

CONTRACT_TYPES: tuple[str, ...] = ("month-to-month", "one-year", "two-year")
INTERNET_SERVICES: tuple[str, ...] = ("dsl", "fiber-optic", "none")
CHURN_COLUMNS: tuple[str, ...] = (
    "customer_id",
    "tenure_months",
    "monthly_charges",
    "total_charges",
    "contract",
    "internet_service",
    "support_calls",
    "paperless_billing",
    "churned",
)

# A fixed float format and line ending make the CSV byte-identical across runs and machines.
_CSV_FLOAT_FORMAT = "%.2f"
_VERSION_RE = re.compile(r"^v(\d+)\.(\d+)$")
_DEMO_EPOCH = 1_704_067_200  # 2024-01-01T00:00:00Z: commit dates of the demo registry


# --- the demo dataset ------------------------------------------------------------------


def _parse_version(version: str) -> tuple[int, int]:
    match = _VERSION_RE.match(version)
    if not match:
        raise InputError(
            f"dataset version {version!r} is not of the form vMAJOR.MINOR",
            where="generate_churn_dataset",
            fix='use a version such as "v1.0" or "v1.1"',
        )
    return int(match.group(1)), int(match.group(2))


def _churn_cohort(rng: np.random.Generator, n: int, *, first_id: int, new: bool) -> pd.DataFrame:
    """One cohort of customers; ``new`` cohorts joined recently (short tenure)."""
    contract = rng.choice(len(CONTRACT_TYPES), size=n, p=[0.55, 0.25, 0.20])
    internet = rng.choice(len(INTERNET_SERVICES), size=n, p=[0.35, 0.45, 0.20])
    if new:
        tenure = rng.integers(0, 7, size=n)
    else:
        # Longer contracts go with longer tenure, as in real telecom books.
        scale = np.array([10.0, 24.0, 40.0])[contract]
        tenure = np.clip(np.round(rng.gamma(1.6, scale / 1.6)), 0, 72).astype(np.int64)
    base = np.array([55.0, 85.0, 20.0])[internet]
    spread = np.array([10.0, 12.0, 3.0])[internet]
    monthly = np.round(np.clip(rng.normal(base, spread), 18.0, 120.0), 2)
    billed = np.maximum(tenure, 1) * monthly * rng.uniform(0.92, 1.08, size=n)
    total = np.round(billed, 2)
    support_calls = np.clip(rng.poisson(0.8 + 1.2 * (internet == 1)), 0, 20).astype(np.int64)
    paperless = rng.random(n) < 0.6
    # The label has a real, learnable signal: short contracts, short tenure, fibre, many
    # support calls and high bills churn more.
    logit = (
        -1.4
        + 1.9 * (contract == 0)
        - 1.3 * (contract == 2)
        - 0.05 * tenure
        + 0.7 * (internet == 1)
        - 0.6 * (internet == 2)
        + 0.45 * support_calls
        + 0.3 * paperless
        + 0.015 * (monthly - 60.0)
    )
    churned = (rng.random(n) < 1.0 / (1.0 + np.exp(-logit))).astype(np.int64)
    return pd.DataFrame(
        {
            "customer_id": [f"C{i:06d}" for i in range(first_id, first_id + n)],
            "tenure_months": tenure.astype(np.int64),
            "monthly_charges": monthly,
            "total_charges": total,
            "contract": np.array(CONTRACT_TYPES, dtype=object)[contract],
            "internet_service": np.array(INTERNET_SERVICES, dtype=object)[internet],
            "support_calls": support_calls,
            "paperless_billing": paperless,
            "churned": churned,
        }
    )


def generate_churn_dataset(version: str, rows: int = 2000) -> pd.DataFrame:
    """Generate the demo telecom-churn dataset for ``version`` (``vMAJOR.MINOR``).

    Deterministic: the same version and ``rows`` give the same frame on every machine.
    ``vX.0`` has ``rows`` customers; each minor release adds a cohort of ``rows // 4``
    newer (short-tenure) customers, so ``v1.1`` is ``v1.0`` plus 25 % new customers.
    """
    major, minor = _parse_version(version)
    if rows < 1:
        raise InputError(f"rows must be at least 1, got {rows}", where="generate_churn_dataset")
    cohorts = [_churn_cohort(np.random.default_rng([major, 0]), rows, first_id=1, new=False)]
    next_id = rows + 1
    for release in range(1, minor + 1):
        n_new = max(1, rows // 4)
        rng = np.random.default_rng([major, release])
        cohorts.append(_churn_cohort(rng, n_new, first_id=next_id, new=True))
        next_id += n_new
    frame = pd.concat(cohorts, ignore_index=True)
    return frame.loc[:, list(CHURN_COLUMNS)]


def churn_csv_bytes(frame: pd.DataFrame) -> bytes:
    """The canonical CSV bytes of a dataset: no index, fixed float format, ``\\n`` endings."""
    text = str(frame.to_csv(index=False, float_format=_CSV_FLOAT_FORMAT, lineterminator="\n"))
    return text.encode("utf-8")


def write_dataset_csv(frame: pd.DataFrame, path: Path) -> None:
    """Write ``frame`` as canonical CSV to ``path`` atomically (temp file, then rename)."""
    write_atomic(path, churn_csv_bytes(frame))


# --- the demo data registry ------------------------------------------------------------


@dataclass(frozen=True)
class DataRegistry:
    """A DVC data registry: a git repo (``url``), its DVC remote, the dataset path, tags."""

    repo: Path
    remote: Path
    path: str
    tags: tuple[str, ...]

    @property
    def url(self) -> str:
        """What ``pull_dataset`` takes as ``repo``: here the local repo's path."""
        return str(self.repo)

    def to_json(self) -> dict[str, Any]:
        return {
            "repo": str(self.repo),
            "remote": str(self.remote),
            "path": self.path,
            "tags": list(self.tags),
        }


def _existing_registry(root: Path, versions: Sequence[str]) -> DataRegistry | None:
    """The registry at ``root`` if it is complete; ``None`` if there is nothing there."""
    repo, remote = root / "repo", root / "remote"
    if not root.exists():
        return None
    if not (repo / ".dvc").is_dir() or not remote.is_dir():
        raise InputError(
            f"{root} exists but is not a demo data registry (no repo/.dvc or remote/)",
            where=str(root),
            fix="delete it or choose another directory for the data registry",
        )
    out = run_git("tag", "--list", cwd=repo, timeout=60, env=dict(BASE_TOOL_ENV))
    tags = tuple(t for t in out.split() if t)
    missing = [v for v in versions if v not in tags]
    if missing:
        raise InputError(
            f"the data registry at {root} has no tag(s) {', '.join(missing)}",
            where=str(root),
            fix="delete the registry directory so it is rebuilt with every version",
        )
    return DataRegistry(repo=repo, remote=remote, path=DEMO_DATASET_PATH, tags=tuple(versions))


def _build_registry(
    build: Path, final_remote: Path, versions: Sequence[str], rows: int, timeout: float
) -> None:
    repo, remote = build / "repo", build / "remote"
    repo.mkdir(parents=True)
    remote.mkdir()
    # An empty config dir keeps a developer's ~/.config/dvc out of the registry.
    dvc_config_dir = build / "dvc-config"
    dvc_config_dir.mkdir()
    env = dict(BASE_TOOL_ENV)
    env.update(
        {
            "GIT_CONFIG_GLOBAL": os.devnull,
            "DVC_GLOBAL_CONFIG_DIR": str(dvc_config_dir),
            "DVC_SYSTEM_CONFIG_DIR": str(dvc_config_dir),
        }
    )

    def commit(message: str, index: int) -> None:
        stamp = f"@{_DEMO_EPOCH + index * 86_400} +0000"
        dated = {**env, "GIT_AUTHOR_DATE": stamp, "GIT_COMMITTER_DATE": stamp}
        run_git("commit", "-q", "-m", message, cwd=repo, timeout=timeout, env=dated)

    run_git("init", "-q", "--initial-branch=main", cwd=repo, timeout=timeout, env=env)
    run_dvc("init", "-q", cwd=repo, timeout=timeout, env=env)
    # The committed config names the remote's final place; a git-ignored local override
    # points at the build directory until the registry is renamed into place.
    run_dvc("remote", "add", "-d", "demo", str(final_remote), cwd=repo, timeout=timeout, env=env)
    run_dvc(
        "remote", "modify", "--local", "demo", "url", str(remote),
        cwd=repo, timeout=timeout, env=env,
    )  # fmt: skip
    run_git(
        "add", ".dvc/config", ".dvc/.gitignore", ".dvcignore", cwd=repo, timeout=timeout, env=env
    )
    commit("Initialise DVC data registry", 0)
    for index, version in enumerate(versions, start=1):
        write_dataset_csv(generate_churn_dataset(version, rows), repo / DEMO_DATASET_PATH)
        run_dvc("add", "-q", DEMO_DATASET_PATH, cwd=repo, timeout=timeout, env=env)
        run_git(
            "add", f"{DEMO_DATASET_PATH}.dvc", "data/.gitignore",
            cwd=repo, timeout=timeout, env=env,
        )  # fmt: skip
        commit(f"Dataset churn {version}", index)
        run_git("tag", version, cwd=repo, timeout=timeout, env=env)
        run_dvc("push", "-q", cwd=repo, timeout=timeout, env=env)
    # A real registry is a git host plus a remote; without a local cache every pull must
    # come from the remote, so a tampered remote cannot hide behind cached good bytes.
    (repo / ".dvc" / "config.local").unlink()
    shutil.rmtree(repo / ".dvc" / "cache", ignore_errors=True)
    shutil.rmtree(repo / ".dvc" / "tmp", ignore_errors=True)
    shutil.rmtree(dvc_config_dir)


def create_demo_data_registry(
    root: Path, *, versions: Sequence[str] = DEMO_VERSIONS, rows: int = 2000
) -> DataRegistry:
    """Create (once) a local DVC data registry at ``root`` holding the demo dataset.

    ``root/repo`` is a git repo with one commit and tag per version (``data/churn.csv``
    tracked by DVC), ``root/remote`` its default DVC local remote. Commits use a fixed
    identity and dates, so the same ``root`` always gets the same commit shas. Built in a
    temporary directory beside ``root`` and renamed into place, so a crash never leaves a
    half-built registry. Idempotent: an existing registry with every tag is returned as is.
    """
    if not versions:
        raise InputError("at least one dataset version is required", where="versions")
    for version in versions:
        _parse_version(version)
    if len(set(versions)) != len(versions):
        raise InputError(f"duplicate dataset versions in {list(versions)}", where="versions")
    root = root.absolute()
    existing = _existing_registry(root, versions)
    if existing is not None:
        return existing
    root.parent.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(prefix=f".{root.name}.build-", dir=root.parent))
    build.chmod(0o755)  # mkdtemp makes it private; the registry is an ordinary directory
    try:
        _build_registry(build, root / "remote", versions, rows, timeout=300)
        try:
            os.rename(build, root)
        except OSError:
            # Someone else finished first; theirs is as good as ours if it is complete.
            done = _existing_registry(root, versions)
            if done is None:
                raise
            return done
    finally:
        shutil.rmtree(build, ignore_errors=True)
    return DataRegistry(
        repo=root / "repo", remote=root / "remote", path=DEMO_DATASET_PATH, tags=tuple(versions)
    )


# --- pulling a pinned dataset ----------------------------------------------------------
