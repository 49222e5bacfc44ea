"""Versioned data: a DVC data registry and a pull pinned to one git revision.

A *data registry* is a git repository whose ``.dvc`` files record the md5 of each dataset
version, and a DVC remote that holds the bytes. Git tags name the versions. Pulling a
dataset resolves the tag to a full commit sha, reads the md5 recorded in the ``.dvc`` file
at that commit, fetches the bytes through ``dvc get --rev <commit>``, and refuses them
unless their md5 equals the recorded one: a tampered DVC remote is caught here, because
DVC itself does not re-hash what it downloads.

Example::

    registry = create_demo_data_registry(Path(".secmlops/data-registry"))
    pull = pull_dataset(registry.url, registry.path, "v1.1", Path("data"))
    statement = data_pull_statement(pull)  # the flow signs and stores it

The demo dataset (telecom customer churn) is generated deterministically from the version
string with a seeded numpy generator; nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd
import yaml

from secmlops._internal.atomic import write_atomic
from secmlops._internal.toolrun import resolve_binary, run_tool
from secmlops.errors import ControlRefused, InputError, RefusalReason, ToolError
from secmlops.evidence.predicates import DataPullPredicate, ToolRef, dump_predicate
from secmlops.evidence.statements import PREDICATE_DATA_PULL, Subject, make_statement, utc_now

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
# Conservative ref names: no option injection ("-x"), no refspecs ("a:b"), no ranges ("a..b").
_REV_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/+-]{0,199}$")
_SHA_RE = re.compile(r"^[0-9a-f]{40}$")


class DataPullRefusal(RefusalReason):
    """Why a pinned DVC pull refused the data (``ControlRefused.reason``)."""

    DVC_FILE_UNREADABLE = "dvc_file_unreadable"
    """The ``.dvc`` file at the pinned commit does not list the dataset with an md5."""
    INVALID_RECORDED_MD5 = "invalid_recorded_md5"
    """The md5 recorded in git is not a 32-hex-digit md5."""
    CONTENT_MISMATCH = "content_mismatch"
    """The pulled bytes' md5 (or size) differ from git's record: a tampered remote or cache."""


# Git and DVC must behave the same on every machine: no system/global config, no prompts.
_GIT_IDENTITY = ("-c", "user.name=secmlops", "-c", "user.email=secmlops@localhost")
_GIT_FIXED = ("-c", "commit.gpgsign=false", "-c", "tag.gpgsign=false", "-c", "core.autocrlf=false")
_BASE_TOOL_ENV = {
    "DVC_NO_ANALYTICS": "1",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_TERMINAL_PROMPT": "0",
}
# What a pull may need to reach a private git host or a cloud DVC remote, and nothing else.
PULL_ENV_ALLOW: tuple[str, ...] = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "AWS_PROFILE",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_CA_BUNDLE",
    "SSH_AUTH_SOCK",
    "GIT_SSH_COMMAND",
    "DVC_SITE_CACHE_DIR",
)
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


def _git(*args: str | os.PathLike[str], cwd: Path, timeout: float, env: dict[str, str]) -> str:
    proc = run_tool(
        [resolve_binary("git"), *_GIT_IDENTITY, *_GIT_FIXED, *args],
        timeout=timeout,
        extra_env=env,
        cwd=cwd,
        what=f"git {args[0]}",
    )
    return proc.stdout


def _dvc(*args: str | os.PathLike[str], cwd: Path, timeout: float, env: dict[str, str]) -> str:
    proc = run_tool(
        [resolve_binary("dvc"), *args], timeout=timeout, extra_env=env, cwd=cwd, what="dvc"
    )
    return proc.stdout


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
    out = _git("tag", "--list", cwd=repo, timeout=60, env=dict(_BASE_TOOL_ENV))
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
    env = dict(_BASE_TOOL_ENV)
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
        _git("commit", "-q", "-m", message, cwd=repo, timeout=timeout, env=dated)

    _git("init", "-q", "--initial-branch=main", cwd=repo, timeout=timeout, env=env)
    _dvc("init", "-q", cwd=repo, timeout=timeout, env=env)
    # The committed config names the remote's final place; a git-ignored local override
    # points at the build directory until the registry is renamed into place.
    _dvc("remote", "add", "-d", "demo", str(final_remote), cwd=repo, timeout=timeout, env=env)
    _dvc(
        "remote", "modify", "--local", "demo", "url", str(remote),
        cwd=repo, timeout=timeout, env=env,
    )  # fmt: skip
    _git("add", ".dvc/config", ".dvc/.gitignore", ".dvcignore", cwd=repo, timeout=timeout, env=env)
    commit("Initialise DVC data registry", 0)
    for index, version in enumerate(versions, start=1):
        write_dataset_csv(generate_churn_dataset(version, rows), repo / DEMO_DATASET_PATH)
        _dvc("add", "-q", DEMO_DATASET_PATH, cwd=repo, timeout=timeout, env=env)
        _git(
            "add", f"{DEMO_DATASET_PATH}.dvc", "data/.gitignore",
            cwd=repo, timeout=timeout, env=env,
        )  # fmt: skip
        commit(f"Dataset churn {version}", index)
        _git("tag", version, cwd=repo, timeout=timeout, env=env)
        _dvc("push", "-q", cwd=repo, timeout=timeout, env=env)
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


@dataclass(frozen=True)
class DatasetPull:
    """A dataset fetched at a pinned revision and checked against the md5 DVC recorded."""

    repo: str
    path: str
    rev: str
    commit: str
    dvc_md5: str
    local_path: Path
    sha256: str
    size_bytes: int
    pulled_at: str

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["local_path"] = str(self.local_path)
        return data


def _is_local_repo(repo: str) -> bool:
    # URLs (https://, ssh://, file://, s3://) and scp-style "git@host:org/repo" are remote.
    return "://" not in repo and not re.match(r"^[\w.-]+@[\w.-]+:", repo)


def _check_pull_inputs(repo: str, path: str, rev: str) -> tuple[str, str]:
    if not repo or repo.startswith("-"):
        raise InputError(
            f"invalid data registry {repo!r}", where="repo", fix="give a git URL or path"
        )
    if not _REV_RE.match(rev) or ".." in rev or rev.endswith((".", "/", ".lock")):
        raise InputError(
            f"revision {rev!r} is not a plain git tag, branch or commit sha",
            where="rev",
            fix="pin the dataset to a tag such as v1.1 or to a full 40-character commit sha",
        )
    pure = PurePosixPath(path)
    if not path or pure.is_absolute() or ".." in pure.parts or path.startswith("-"):
        raise InputError(
            f"dataset path {path!r} must be a relative path inside the registry repo",
            where="path",
            fix="give the path as it appears in the registry, e.g. data/churn.csv",
        )
    if _is_local_repo(repo):
        local = Path(repo).expanduser()
        if not (local / ".git").exists() and not (local / "HEAD").is_file():
            raise InputError(
                f"data registry {repo} is not a git repository (or does not exist)",
                where=repo,
                fix="check the registry path, or give its git URL",
            )
        return str(local.absolute()), pure.as_posix()
    return repo, pure.as_posix()


class _Deadline:
    """One time budget shared by every tool call a pull makes."""

    def __init__(self, seconds: float) -> None:
        if seconds <= 0:
            raise InputError(f"timeout must be positive, got {seconds}", where="timeout")
        self.seconds = seconds
        self.end = time.monotonic() + seconds

    def left(self, step: str) -> float:
        remaining = self.end - time.monotonic()
        if remaining <= 1:
            raise ToolError(
                f"pulling the dataset did not finish within {self.seconds:g} s (at: {step})",
                where=step,
                fix="check the network path to the git host and DVC remote; raise the timeout",
            )
        return remaining


def _resolve_rev(
    source: str, rev: str, meta: Path, deadline: _Deadline, env: dict[str, str]
) -> str:
    """Fetch just ``rev`` into a scratch bare repo and return its full commit sha."""
    _git("init", "-q", "--bare", str(meta), cwd=meta.parent, timeout=60, env=env)
    try:
        run_tool(
            [
                resolve_binary("git"),
                "-C",
                meta,
                "fetch",
                "-q",
                "--depth=1",
                "--no-tags",
                source,
                rev,
            ],
            timeout=deadline.left("git fetch"),
            env_allow=PULL_ENV_ALLOW,
            extra_env=env,
            what="git fetch",
        )
    except ToolError as exc:
        tail = str(exc.details.get("stderr_tail", ""))
        if "couldn't find remote ref" in tail or "not our ref" in tail:
            raise InputError(
                f"revision {rev!r} does not exist in data registry {source}",
                where=f"{source}@{rev}",
                fix="list the registry's tags with `git ls-remote --tags <repo>`; "
                "short shas are not accepted, use the full 40-character sha",
            ) from exc
        if "does not appear to be a git repository" in tail or "not found" in tail:
            raise InputError(
                f"data registry {source} is not a reachable git repository",
                where=source,
                fix="check the registry URL and your access to it",
                details=exc.details,
            ) from exc
        raise
    out = run_tool(
        [resolve_binary("git"), "-C", meta, "rev-parse", "--verify", "FETCH_HEAD^{commit}"],
        timeout=deadline.left("git rev-parse"),
        extra_env=env,
        what="git rev-parse",
    ).stdout.strip()
    if not _SHA_RE.match(out):
        raise ToolError(f"git rev-parse returned {out!r}, not a commit sha", where="git rev-parse")
    return out


def _recorded_md5(
    meta: Path, commit: str, path: str, deadline: _Deadline, env: dict[str, str]
) -> tuple[str, int | None, bool]:
    """The md5 (and size) the ``.dvc`` file at ``commit`` records for ``path``.

    Returns ``(md5, size, legacy)``; ``legacy`` is a DVC 2 ``md5-dos2unix`` record.
    """
    git = resolve_binary("git")
    dvc_file = f"{path}.dvc"
    try:
        text = run_tool(
            [git, "-C", meta, "show", f"{commit}:{dvc_file}"],
            timeout=deadline.left("git show"),
            extra_env=env,
            what="git show",
        ).stdout
    except ToolError as exc:
        tracked = run_tool(
            [git, "-C", meta, "cat-file", "-e", f"{commit}:{path}"],
            timeout=deadline.left("git cat-file"),
            extra_env=env,
            ok_codes=(0, 1, 128),
            what="git cat-file",
        )
        reason = (
            "is committed to git directly, not tracked by DVC"
            if tracked.returncode == 0
            else "does not exist"
        )
        raise InputError(
            f"{path} {reason} at revision {commit[:12]}: no {dvc_file} to pin its content",
            where=f"{path}@{commit}",
            fix="track the dataset with `dvc add` in the registry and pin a revision that has it",
        ) from exc
    try:
        record = yaml.safe_load(text)
        outs = record["outs"]
        name = PurePosixPath(path).name
        matches = [o for o in outs if PurePosixPath(str(o["path"])).as_posix() == name]
        if len(matches) != 1:
            raise ValueError(f"expected one output named {name}, found {len(matches)}")
        out = matches[0]
        md5 = str(out["md5"])
    except (yaml.YAMLError, KeyError, TypeError, ValueError) as exc:
        raise ControlRefused(
            f"{dvc_file} at {commit[:12]} is not a DVC file this pull can verify: {exc}",
            where=f"{dvc_file}@{commit}",
            fix="check the registry commit; the .dvc file must list the dataset with its md5",
            reason=DataPullRefusal.DVC_FILE_UNREADABLE,
        ) from exc
    if md5.endswith(".dir"):
        raise InputError(
            f"{path} is a DVC-tracked directory; pull_dataset pulls single files",
            where=f"{path}@{commit}",
            fix="pin one file of the directory, or track the dataset as a single file",
        )
    if not re.fullmatch(r"[0-9a-f]{32}", md5):
        raise ControlRefused(
            f"{dvc_file} records an invalid md5 {md5!r}",
            where=f"{dvc_file}@{commit}",
            reason=DataPullRefusal.INVALID_RECORDED_MD5,
        )
    size = out.get("size")
    legacy = out.get("hash") != "md5"
    return md5, int(size) if isinstance(size, int) else None, legacy


def _file_digests(path: Path, *, legacy: bool) -> tuple[str, str, int]:
    """md5 (as DVC computes it), sha256 and size of a file, in one read."""
    data = path.read_bytes()
    # DVC 2 ("md5-dos2unix") hashed text files with CRLF turned into LF.
    is_text = b"\x00" not in data[:8192]
    md5_input = data.replace(b"\r\n", b"\n") if legacy and is_text else data
    md5 = hashlib.md5(md5_input, usedforsecurity=False).hexdigest()
    return md5, hashlib.sha256(data).hexdigest(), len(data)


def pull_dataset(
    repo: str, path: str, rev: str, dest_dir: Path, *, timeout: float = 300
) -> DatasetPull:
    """Pull ``path`` from the DVC data registry ``repo`` at revision ``rev`` into ``dest_dir``.

    ``rev`` (a tag, branch or full sha) is resolved to a commit first and the bytes are
    fetched at that exact commit, so a tag moved mid-pull cannot mix versions. The file
    appears in ``dest_dir`` only after its md5 equals the one recorded in the ``.dvc`` file
    at that commit; otherwise ``ControlRefused`` with a :class:`DataPullRefusal` reason
    (``CONTENT_MISMATCH``: a tampered DVC remote). Unknown
    revisions, paths and registries raise ``InputError``; git/DVC failures ``ToolError``.
    """
    deadline = _Deadline(timeout)
    source, path = _check_pull_inputs(repo, path, rev)
    dest_dir.mkdir(parents=True, exist_ok=True)
    target = dest_dir / PurePosixPath(path).name
    env = {**_BASE_TOOL_ENV, "GIT_CONFIG_GLOBAL": os.devnull}
    with tempfile.TemporaryDirectory(prefix="secmlops-pull-") as scratch:
        meta = Path(scratch) / "meta.git"
        commit = _resolve_rev(source, rev, meta, deadline, env)
        md5, size, legacy = _recorded_md5(meta, commit, path, deadline, env)
        staged = dest_dir / f".{target.name}.pull-{uuid.uuid4().hex}"
        try:
            run_tool(
                [resolve_binary("dvc"), "get", source, path, "--rev", commit, "-o", staged],
                timeout=deadline.left("dvc get"),
                env_allow=PULL_ENV_ALLOW,
                extra_env={**env, "DVC_GLOBAL_CONFIG_DIR": scratch},
                cwd=scratch,
                what="dvc get",
            )
            if not staged.is_file():
                raise ToolError(
                    f"dvc get reported success but wrote no file for {path}",
                    where=f"dvc get {source} {path}",
                )
            got_md5, sha256, got_size = _file_digests(staged, legacy=legacy)
            if got_md5 != md5 or (size is not None and got_size != size):
                found = {
                    "expected_md5": md5,
                    "actual_md5": got_md5,
                    "expected_size": size,
                    "actual_size": got_size,
                    "commit": commit,
                }
                raise ControlRefused(
                    f"{path} at {rev} ({commit[:12]}) does not match the md5 recorded in git: "
                    f"expected {md5}, got {got_md5} ({got_size} bytes) — the DVC remote or "
                    "cache holds different bytes than were committed",
                    where=f"{source}:{path}@{commit}",
                    fix="do not use this data; restore the remote object from a trusted copy "
                    "(`dvc push` from a clean checkout) and investigate who changed it",
                    details=dict(found),
                    reason=DataPullRefusal.CONTENT_MISMATCH,
                    result=found,
                )
            os.replace(staged, target)
        finally:
            staged.unlink(missing_ok=True)
    return DatasetPull(
        repo=repo,
        path=path,
        rev=rev,
        commit=commit,
        dvc_md5=md5,
        local_path=target,
        sha256=sha256,
        size_bytes=got_size,
        pulled_at=utc_now(),
    )


def _dvc_version() -> str:
    try:
        return importlib.metadata.version("dvc")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def data_pull_statement(pull: DatasetPull) -> dict[str, Any]:
    """The in-toto statement for a verified pull: subject = the dataset's sha256."""
    return make_statement(
        [Subject(pull.path, pull.sha256)],
        PREDICATE_DATA_PULL,
        dump_predicate(
            DataPullPredicate(
                repo=pull.repo,
                path=pull.path,
                rev=pull.rev,
                commit=pull.commit,
                dvc_md5=pull.dvc_md5,
                md5_verified=True,
                size_bytes=pull.size_bytes,
                pulled_at=pull.pulled_at,
                tool=ToolRef(name="dvc", version=_dvc_version()),
            )
        ),
    )


# --- Prefect tasks -----------------------------------------------------------------------
