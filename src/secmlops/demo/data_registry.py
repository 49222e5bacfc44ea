"""Demo only: the churn dataset and a two-version DVC data registry to pull it from.

Nothing here is a control: :mod:`secmlops.controls.data` pulls from any data registry; this
module builds one to pull from when no site registry is configured (``make demo``, tests).
The dataset (telecom customer churn) is generated deterministically from the version string
with a seeded numpy generator; nothing is downloaded. It is tracked as CSV
(``data/churn.csv``) or, with ``dataset_format="parquet"``, as Parquet
(``data/churn.parquet``); the registry's DVC remote is a local directory
(:func:`create_demo_data_registry`) or an S3 bucket/prefix at a given endpoint (MinIO, moto:
:func:`create_s3_data_registry`).

Example::

    registry = create_demo_data_registry(Path(".secmlops/data-registry"))
    pull = pull_dataset(registry.url, registry.path, "v1.1", Path("data"),
                        allowed_remotes=[str(registry.remote)])

The committed ``.dvc/config`` names the remote's final path (``<root>/remote``), so the
site rule for the demo entry is exactly that one remote. An S3 registry's committed config
names only ``s3://bucket/prefix``: the endpoint and credentials are the site's, never the
repo's (``sources.datasets.NAME.s3_endpoint_url``)::

    registry = create_s3_data_registry(Path("reg"), "s3://ml-data/churn",
                                       s3_endpoint_url="http://127.0.0.1:9000")
    sources = {"datasets": {"churn": registry.dataset_entry()}}
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from secmlops._internal.atomic import write_atomic
from secmlops.controls.data import BASE_TOOL_ENV, PULL_ENV_ALLOW, run_dvc, run_git
from secmlops.errors import InputError
from secmlops.site import check_url_has_no_secret, redact_url

#: Where the demo registry keeps its one dataset (CSV, or Parquet: ``DEMO_PARQUET_PATH``).
DEMO_DATASET_PATH = "data/churn.csv"
DEMO_PARQUET_PATH = "data/churn.parquet"
#: How a registry stores the dataset.
DatasetFormat = Literal["csv", "parquet"]
DATASET_PATHS: dict[str, str] = {"csv": DEMO_DATASET_PATH, "parquet": DEMO_PARQUET_PATH}
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


def churn_parquet_bytes(frame: pd.DataFrame) -> bytes:
    """The Parquet bytes of a dataset (pyarrow, no index, zstd; one row group per 1M rows).

    The same frame gives the same bytes with the same pyarrow version (its ``created_by``
    is in the footer), which is all a registry needs: DVC records the md5 of what it added.
    """
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(frame, preserve_index=False)
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd", row_group_size=1_000_000)
    return buffer.getvalue()


def write_dataset(frame: pd.DataFrame, path: Path, dataset_format: DatasetFormat = "csv") -> None:
    """Write ``frame`` to ``path`` atomically as canonical CSV or as Parquet."""
    if dataset_format == "parquet":
        write_atomic(path, churn_parquet_bytes(frame))
    elif dataset_format == "csv":
        write_atomic(path, churn_csv_bytes(frame))
    else:
        raise InputError(
            f"dataset format {dataset_format!r} is neither 'csv' nor 'parquet'",
            where="dataset_format",
        )


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


def _existing_registry(
    root: Path, versions: Sequence[str], dataset_path: str = DEMO_DATASET_PATH
) -> DataRegistry | None:
    """The registry at ``root`` if it is complete; ``None`` if there is nothing there."""
    if not _existing_tags(root, versions, dataset_path, local_remote=True):
        return None
    return DataRegistry(
        repo=root / "repo", remote=root / "remote", path=dataset_path, tags=tuple(versions)
    )


def _existing_tags(
    root: Path, versions: Sequence[str], dataset_path: str, *, local_remote: bool
) -> bool:
    """Whether ``root`` holds a complete registry of ``dataset_path`` (``False``: nothing
    there); ``InputError`` for something else or an incomplete one."""
    repo, remote = root / "repo", root / "remote"
    if not root.exists():
        return False
    if not (repo / ".dvc").is_dir() or (local_remote and not remote.is_dir()):
        raise InputError(
            f"{root} exists but is not a demo data registry (no repo/.dvc"
            f"{' or remote/' if local_remote else ''})",
            where=str(root),
            fix="delete it or choose another directory for the data registry",
        )
    if not (repo / f"{dataset_path}.dvc").is_file():
        raise InputError(
            f"the data registry at {root} does not track {dataset_path}",
            where=str(root),
            fix="delete it or choose another directory for this dataset format",
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
    return True


def _build_registry(
    build: Path,
    final_remote: str,
    versions: Sequence[str],
    rows: int,
    timeout: float,
    *,
    dataset_path: str = DEMO_DATASET_PATH,
    dataset_format: DatasetFormat = "csv",
    s3_endpoint_url: str | None = None,
) -> None:
    """Build the registry in ``build``: a local remote (``build/remote``, committed as
    ``final_remote``) or, for an ``s3://`` ``final_remote``, that bucket/prefix at
    ``s3_endpoint_url`` with the AWS credentials of this process's environment."""
    repo, remote = build / "repo", build / "remote"
    is_s3 = final_remote.startswith("s3://")
    repo.mkdir(parents=True)
    if not is_s3:
        remote.mkdir()
    # An empty config dir keeps a developer's ~/.config/dvc out of the registry.
    dvc_config_dir = build / "dvc-config"
    dvc_config_dir.mkdir()
    env = dict(BASE_TOOL_ENV)
    if is_s3:  # the data owner's credentials push; they never reach the repo
        env.update({k: v for k, v in os.environ.items() if k in PULL_ENV_ALLOW})
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
    # points at the build directory until the registry is renamed into place (local), or
    # holds the S3 endpoint the push uses (the endpoint is the site's, never committed).
    name = "storage" if is_s3 else "demo"
    run_dvc("remote", "add", "-d", name, final_remote, cwd=repo, timeout=timeout, env=env)
    if not is_s3:
        run_dvc(
            "remote", "modify", "--local", name, "url", str(remote),
            cwd=repo, timeout=timeout, env=env,
        )  # fmt: skip
    elif s3_endpoint_url:
        run_dvc(
            "remote", "modify", "--local", name, "endpointurl", s3_endpoint_url,
            cwd=repo, timeout=timeout, env=env,
        )  # fmt: skip
    run_git(
        "add", ".dvc/config", ".dvc/.gitignore", ".dvcignore", cwd=repo, timeout=timeout, env=env
    )
    commit("Initialise DVC data registry", 0)
    for index, version in enumerate(versions, start=1):
        frame = generate_churn_dataset(version, rows)
        write_dataset(frame, repo / dataset_path, dataset_format)
        run_dvc("add", "-q", dataset_path, cwd=repo, timeout=timeout, env=env)
        run_git(
            "add", f"{dataset_path}.dvc", "data/.gitignore",
            cwd=repo, timeout=timeout, env=env,
        )  # fmt: skip
        commit(f"Dataset churn {version}", index)
        run_git("tag", version, cwd=repo, timeout=timeout, env=env)
        run_dvc("push", "-q", cwd=repo, timeout=timeout, env=env)
    # A real registry is a git host plus a remote; without a local cache every pull must
    # come from the remote, so a tampered remote cannot hide behind cached good bytes.
    (repo / ".dvc" / "config.local").unlink(missing_ok=True)
    shutil.rmtree(repo / ".dvc" / "cache", ignore_errors=True)
    shutil.rmtree(repo / ".dvc" / "tmp", ignore_errors=True)
    shutil.rmtree(dvc_config_dir)


def _check_versions(versions: Sequence[str], dataset_format: str) -> str:
    """The dataset path for ``dataset_format``, after checking ``versions``."""
    if not versions:
        raise InputError("at least one dataset version is required", where="versions")
    for version in versions:
        _parse_version(version)
    if len(set(versions)) != len(versions):
        raise InputError(f"duplicate dataset versions in {list(versions)}", where="versions")
    if dataset_format not in DATASET_PATHS:
        raise InputError(
            f"dataset format {dataset_format!r} is neither 'csv' nor 'parquet'",
            where="dataset_format",
        )
    return DATASET_PATHS[dataset_format]


def _build_in_place(root: Path, build_into: Callable[[Path], None]) -> bool:
    """Build with ``build_into(build_dir)`` beside ``root`` and rename it into place; ``False``
    when someone else renamed theirs first (the caller checks it is complete)."""
    root.parent.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(prefix=f".{root.name}.build-", dir=root.parent))
    build.chmod(0o755)  # mkdtemp makes it private; the registry is an ordinary directory
    try:
        build_into(build)
        try:
            os.rename(build, root)
        except OSError:
            if not root.exists():
                raise
            return False
    finally:
        shutil.rmtree(build, ignore_errors=True)
    return True


def create_demo_data_registry(
    root: Path,
    *,
    versions: Sequence[str] = DEMO_VERSIONS,
    rows: int = 2000,
    dataset_format: DatasetFormat = "csv",
) -> DataRegistry:
    """Create (once) a local DVC data registry at ``root`` holding the demo dataset.

    ``root/repo`` is a git repo with one commit and tag per version (``data/churn.csv``, or
    ``data/churn.parquet`` for ``dataset_format="parquet"``, tracked by DVC), ``root/remote``
    its default DVC local remote. Commits use a fixed identity and dates, so the same
    ``root`` always gets the same commit shas. Built in a temporary directory beside
    ``root`` and renamed into place, so a crash never leaves a half-built registry.
    Idempotent: an existing registry with every tag is returned as is.
    """
    dataset_path = _check_versions(versions, dataset_format)
    root = root.absolute()
    existing = _existing_registry(root, versions, dataset_path)
    if existing is not None:
        return existing

    def build_into(build: Path) -> None:
        _build_registry(
            build,
            str(root / "remote"),
            versions,
            rows,
            timeout=300,
            dataset_path=dataset_path,
            dataset_format=dataset_format,
        )

    if not _build_in_place(root, build_into):
        # Someone else finished first; theirs is as good as ours if it is complete.
        done = _existing_registry(root, versions, dataset_path)
        if done is None:
            raise InputError(f"the data registry at {root} vanished", where=str(root))
        return done
    return DataRegistry(
        repo=root / "repo", remote=root / "remote", path=dataset_path, tags=tuple(versions)
    )


@dataclass(frozen=True)
class S3DataRegistry:
    """A DVC data registry whose remote is an S3 bucket/prefix: the git repo (``url``), the
    remote's URL, the endpoint the site reaches it at, the dataset path and tags."""

    repo: Path
    remote_url: str
    s3_endpoint_url: str | None
    path: str
    tags: tuple[str, ...]

    @property
    def url(self) -> str:
        """What ``pull_dataset`` takes as ``repo``: here the local repo's path."""
        return str(self.repo)

    def dataset_entry(
        self, *, rev: str | None = None, schema: str = "ml.schema:ChurnDataset"
    ) -> dict[str, Any]:
        """This registry as a ``sources.datasets`` entry of the policy file (plain data)."""
        entry: dict[str, Any] = {
            "repo": self.url,
            "path": self.path,
            "rev": rev or self.tags[-1],
            "schema": schema,
            "dvc_remotes": [self.remote_url],
        }
        if self.s3_endpoint_url:
            entry["s3_endpoint_url"] = self.s3_endpoint_url
        return entry

    def to_json(self) -> dict[str, Any]:
        return {
            "repo": str(self.repo),
            "remote_url": self.remote_url,
            "s3_endpoint_url": self.s3_endpoint_url,
            "path": self.path,
            "tags": list(self.tags),
        }


def create_s3_data_registry(
    root: Path,
    remote_url: str,
    *,
    s3_endpoint_url: str | None = None,
    versions: Sequence[str] = DEMO_VERSIONS,
    rows: int = 2000,
    dataset_format: DatasetFormat = "csv",
) -> S3DataRegistry:
    """Create (once) a DVC data registry at ``root/repo`` whose remote is ``remote_url``
    (``s3://bucket/prefix``; the bucket must exist), pushing every version there.

    The committed ``.dvc/config`` names only ``remote_url``: the endpoint (``s3_endpoint_url``
    for MinIO, Ceph or moto; ``None``: AWS) and the credentials (this process's AWS
    environment: ``AWS_PROFILE`` or ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``) are used
    to push and never committed, because they are the site's to decide. The repo keeps no DVC
    cache, so every pull reads the bucket. Otherwise as :func:`create_demo_data_registry`.
    """
    dataset_path = _check_versions(versions, dataset_format)
    fix = "give the remote as s3://bucket/prefix, without credentials"
    try:
        check_url_has_no_secret(remote_url, "remote_url")
        if s3_endpoint_url:
            check_url_has_no_secret(s3_endpoint_url, "s3_endpoint_url")
    except ValueError as exc:
        raise InputError(str(exc), where="remote_url", fix=fix) from None
    bucket, _, prefix = remote_url.removeprefix("s3://").partition("/")
    if not remote_url.startswith("s3://") or not bucket or not prefix.strip("/"):
        raise InputError(
            f"DVC remote {redact_url(remote_url)!r} is not s3://bucket/prefix",
            where="remote_url",
            fix=fix,
        )
    root = root.absolute()

    def registry() -> S3DataRegistry:
        return S3DataRegistry(
            repo=root / "repo",
            remote_url=remote_url.rstrip("/"),
            s3_endpoint_url=s3_endpoint_url,
            path=dataset_path,
            tags=tuple(versions),
        )

    if _existing_tags(root, versions, dataset_path, local_remote=False):
        return registry()

    def build_into(build: Path) -> None:
        _build_registry(
            build,
            remote_url.rstrip("/"),
            versions,
            rows,
            timeout=300,
            dataset_path=dataset_path,
            dataset_format=dataset_format,
            s3_endpoint_url=s3_endpoint_url,
        )

    if not _build_in_place(root, build_into) and not _existing_tags(
        root, versions, dataset_path, local_remote=False
    ):
        raise InputError(f"the data registry at {root} vanished", where=str(root))
    return registry()


# --- pulling a pinned dataset ----------------------------------------------------------
