"""Versioned data: a DVC data registry and a pull pinned to one git revision.

A *data registry* is a git repository whose ``.dvc`` files record the md5 of each dataset
version, and a DVC remote that holds the bytes. Git tags name the versions. Pulling a
dataset resolves the tag to a full commit sha, reads the md5 recorded in the ``.dvc`` file
at that commit, fetches the bytes through ``dvc get --rev <commit>``, and refuses them
unless their md5 equals the recorded one: a tampered DVC remote is caught here, because
DVC itself does not re-hash what it downloads.

Example::

    pull = pull_dataset("https://git.example.com/data-registry.git", "data/churn.csv",
                        "v1.1", Path("data"))
    statement = data_pull_statement(pull)  # the flow signs and stores it

The demo registry the embedded default pulls from is built by
:mod:`secmlops.demo.data_registry`, apart from this control.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import re
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from secmlops._internal.toolrun import resolve_binary, run_tool
from secmlops.errors import ControlRefused, InputError, RefusalReason, ToolError
from secmlops.evidence.predicates import DataPullPredicate, ToolRef, dump_predicate
from secmlops.evidence.statements import PREDICATE_DATA_PULL, Subject, make_statement, utc_now

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
BASE_TOOL_ENV = {
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


def run_git(*args: str | os.PathLike[str], cwd: Path, timeout: float, env: dict[str, str]) -> str:
    proc = run_tool(
        [resolve_binary("git"), *_GIT_IDENTITY, *_GIT_FIXED, *args],
        timeout=timeout,
        extra_env=env,
        cwd=cwd,
        what=f"git {args[0]}",
    )
    return proc.stdout


def run_dvc(*args: str | os.PathLike[str], cwd: Path, timeout: float, env: dict[str, str]) -> str:
    proc = run_tool(
        [resolve_binary("dvc"), *args], timeout=timeout, extra_env=env, cwd=cwd, what="dvc"
    )
    return proc.stdout


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
    """Fetch just ``rev`` into a scratch bare repo and return its full commit sha.

    ``rev`` must be a full commit sha or a tag: a branch moves, so "pinned data" on a branch
    would be whatever was pushed last. Anything else is fetched as ``refs/tags/<rev>`` and
    refused as bad input if there is no such tag.
    """
    run_git("init", "-q", "--bare", str(meta), cwd=meta.parent, timeout=60, env=env)
    ref = rev if _SHA_RE.match(rev) else f"refs/tags/{rev}"
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
                ref,
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
                f"revision {rev!r} is neither a tag nor a full commit sha in data registry "
                f"{source} (a branch is refused: it moves, so the data would not be pinned)",
                where=f"{source}@{rev}",
                fix="pin a tag (`git ls-remote --tags <repo>`) or a full 40-character commit sha",
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
    env = {**BASE_TOOL_ENV, "GIT_CONFIG_GLOBAL": os.devnull}
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
