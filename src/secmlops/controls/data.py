"""Versioned data: a DVC data registry and a pull pinned to one git revision.

A *data registry* is a git repository whose ``.dvc`` files record the md5 of each dataset
version, and a DVC remote that holds the bytes. Git tags name the versions. Pulling a
dataset resolves the tag to a full commit sha, reads the md5 recorded in the ``.dvc`` file
at that commit, fetches the bytes through ``dvc get``, and refuses them unless their md5
equals the recorded one: a tampered DVC remote is caught here, because
DVC itself does not re-hash what it downloads.

The repo, rev rule and the DVC remotes a repo may use are the *site's* (the policy file's
``sources.datasets`` entry), not a run's: the pull reads the committed ``.dvc/config`` at the
resolved commit and refuses, before any DVC request, a remote that is not under one of the
site's ``allowed_remotes`` prefixes, an ``endpointurl`` other than the site's, or a remote
option that could redirect requests or credentials. DVC then runs on a scratch repo holding
only the checked ``.dvc`` file and a config written from the checked values, so it cannot
use anything that was not checked; AWS credentials reach it only for an allowed S3 remote.

Example::

    pull = pull_dataset("https://git.example.com/data-registry.git", "data/churn.csv",
                        "v1.1", Path("data"), allowed_remotes=["s3://ml-data/churn"],
                        s3_endpoint_url=None)
    statement = data_pull_statement(pull)  # the flow signs and stores it

The demo registry the embedded default pulls from is built by
:mod:`secmlops.demo.data_registry`, apart from this control.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import os
import re
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, NoReturn
from urllib.parse import urlsplit

import yaml

from secmlops._internal.toolrun import resolve_binary, run_tool
from secmlops.errors import ControlRefused, InputError, RefusalReason, ToolError
from secmlops.evidence.predicates import DataPullPredicate, ToolRef, dump_predicate
from secmlops.evidence.statements import PREDICATE_DATA_PULL, Subject, make_statement, utc_now
from secmlops.site import check_url_has_no_secret, is_data_rev, redact_url

_SHA_RE = re.compile(r"^[0-9a-f]{40}$")


class DataPullRefusal(RefusalReason):
    """Why a pinned DVC pull refused the data (``ControlRefused.reason``)."""

    REMOTE_NOT_ALLOWED = "remote_not_allowed"
    """The DVC remote the repo's committed config names is not under a site-allowed prefix
    (or cannot be determined): refused before any request to it."""
    REMOTE_OPTION_NOT_ALLOWED = "remote_option_not_allowed"
    """The repo's config sets a remote option the site decides (an ``endpointurl`` other than
    the site's, a credentials profile or file, TLS settings, ...)."""
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
    "AWS_EC2_METADATA_DISABLED",
    "AWS_MAX_ATTEMPTS",
    "AWS_RETRY_MODE",
    "SSH_AUTH_SOCK",
    "GIT_SSH_COMMAND",
    "DVC_SITE_CACHE_DIR",
)
#: AWS variables that carry a secret: scrubbed from any tool output kept in an error.
AWS_SECRET_VARIABLES: tuple[str, ...] = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
)
#: How long DVC waits on an S3 remote, set by the pull (the site's, whatever the repo's
#: config says), so an unreachable or silent endpoint fails in seconds, not minutes:
#: seconds to open a connection, seconds to wait for a read, and botocore's attempts per
#: request (``standard`` retry mode; ``AWS_MAX_ATTEMPTS`` / ``AWS_RETRY_MODE`` in the
#: worker's environment override these two).
S3_CONNECT_TIMEOUT = 10
S3_READ_TIMEOUT = 60
S3_MAX_ATTEMPTS = 3
#: What git may see: an SSH agent or command for ssh:// hosts; never cloud credentials.
GIT_ENV_ALLOW: tuple[str, ...] = ("SSH_AUTH_SOCK", "GIT_SSH_COMMAND")
#: What DVC may see for a remote that is not S3 (local, ssh, http): no AWS variables.
DVC_ENV_ALLOW_NOT_S3: tuple[str, ...] = ("SSH_AUTH_SOCK",)
#: Remote options a data repo's committed config may set (``endpointurl`` only if it equals
#: the site's). Anything else (``profile``, ``credentialpath``, ``configpath``,
#: ``ssl_verify``, ``use_ssl``, keys, passwords, ...) is the site's to decide.
REMOTE_OPTIONS_ALLOWED: frozenset[str] = frozenset(
    {
        "url",
        "endpointurl",
        "region",
        "version_aware",
        "worktree",
        "jobs",
        "verify",
        "read_timeout",
        "connect_timeout",
        "listobjects",
    }
)
_REMOTE_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
_URL_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_SCP_LIKE_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*@[A-Za-z0-9][A-Za-z0-9_.-]*:[^-]")


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


def _repo_kind(repo: str) -> str:
    """``"local"``, ``"https"``, ``"ssh"`` or ``"scp"``; ``InputError`` for anything else.

    A URL carrying userinfo (a token) is refused with the token redacted from the message;
    ``file://``, ``http://``, ``git://``, ``ext::`` and relative paths are refused.
    """
    fix = (
        "give the registry as https://host/path, ssh://[user@]host/path, user@host:path or an "
        "absolute local path (credentials go in a git credentials block, never in the URL)"
    )
    try:
        check_url_has_no_secret(repo, "repo")
    except ValueError as exc:
        raise InputError(str(exc), where="repo", fix=fix) from None
    scheme = _URL_SCHEME_RE.match(repo)
    if scheme:
        kind = scheme.group(1).lower()
        host = urlsplit(repo).hostname
        if kind in ("https", "ssh") and host and not host.startswith("-"):
            return kind
    elif _SCP_LIKE_RE.match(repo):
        return "scp"
    elif repo.startswith("/") and "::" not in repo:
        return "local"
    raise InputError(
        f"data registry {redact_url(repo)!r} is not an https://, ssh://, user@host:path URL or "
        "an absolute local path",
        where="repo",
        fix=fix,
    )


def _check_pull_inputs(repo: str, path: str, rev: str) -> tuple[str, str]:
    if not repo or repo.startswith("-"):
        raise InputError(
            f"invalid data registry {redact_url(repo)!r}",
            where="repo",
            fix="give a git URL or path",
        )
    kind = _repo_kind(repo)
    if not is_data_rev(rev):
        raise InputError(
            f"revision {rev!r} is not a plain git tag or full commit sha",
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
    if kind == "local":
        local = Path(repo)
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
    ref = rev if _SHA_RE.fullmatch(rev) else f"refs/tags/{rev}"
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
            env_allow=GIT_ENV_ALLOW,
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
    if not _SHA_RE.fullmatch(out):
        raise ToolError(f"git rev-parse returned {out!r}, not a commit sha", where="git rev-parse")
    return out


def _committed_blob(
    meta: Path, commit: str, path: str, deadline: _Deadline, env: dict[str, str]
) -> str | None:
    """The text of the regular file ``path`` at ``commit``, ``None`` if there is no entry.

    A symlink or submodule at ``path`` is refused: git would hand DVC the link, not the
    text this pull checked.
    """
    git = resolve_binary("git")
    listing = run_tool(
        [git, "-C", meta, "ls-tree", "-z", commit, "--", path],
        timeout=deadline.left("git ls-tree"),
        extra_env=env,
        what="git ls-tree",
    ).stdout
    entries = [e for e in listing.split("\0") if e]
    if not entries:
        return None
    head, _, name = entries[0].partition("\t")
    mode, kind, blob = ([*head.split(" "), "", "", ""])[:3]
    if name != path or kind != "blob" or mode not in ("100644", "100755"):
        raise ControlRefused(
            f"{path} at {commit[:12]} is a {kind or 'entry'} with mode {mode}, not a regular "
            "file: a link could make DVC read something other than what was checked",
            where=f"{path}@{commit}",
            fix="commit the file itself, not a symlink or submodule",
            reason=DataPullRefusal.DVC_FILE_UNREADABLE
            if path.endswith(".dvc")
            else DataPullRefusal.REMOTE_NOT_ALLOWED,
        )
    try:
        return run_tool(
            [git, "-C", meta, "cat-file", "blob", blob],
            timeout=deadline.left("git cat-file"),
            extra_env=env,
            what="git cat-file",
        ).stdout
    except UnicodeDecodeError as exc:
        raise ControlRefused(
            f"{path} at {commit[:12]} is not text: {exc}",
            where=f"{path}@{commit}",
            fix="check the registry commit",
            reason=DataPullRefusal.DVC_FILE_UNREADABLE
            if path.endswith(".dvc")
            else DataPullRefusal.REMOTE_NOT_ALLOWED,
        ) from exc


@dataclass(frozen=True)
class _DvcRecord:
    """What a ``.dvc`` file at the pinned commit records for the dataset."""

    text: str
    md5: str
    size: int | None
    legacy: bool
    remote: str | None


def _recorded_md5(
    meta: Path, commit: str, path: str, deadline: _Deadline, env: dict[str, str]
) -> _DvcRecord:
    """The md5 (and size, and remote) the ``.dvc`` file at ``commit`` records for ``path``.

    ``legacy`` is a DVC 2 ``md5-dos2unix`` record. A DVC *import* (``deps``: data from
    another repo or URL) or a ``wdir`` is refused: its data would not come from this
    registry's remote.
    """
    git = resolve_binary("git")
    dvc_file = f"{path}.dvc"
    raw = _committed_blob(meta, commit, dvc_file, deadline, env)
    if raw is None:
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
        )
    try:
        record = yaml.safe_load(raw)
        if not isinstance(record, dict):
            raise ValueError("not a mapping")
        outs = record["outs"]
        name = PurePosixPath(path).name
        matches = [o for o in outs if PurePosixPath(str(o["path"])).as_posix() == name]
        if len(matches) != 1:
            raise ValueError(f"expected one output named {name}, found {len(matches)}")
        out = matches[0]
        md5 = str(out["md5"])
        remote = out.get("remote")
        if remote is not None and not isinstance(remote, str):
            raise ValueError("the output's remote is not a name")
    except (yaml.YAMLError, KeyError, TypeError, ValueError) as exc:
        raise ControlRefused(
            f"{dvc_file} at {commit[:12]} is not a DVC file this pull can verify: {exc}",
            where=f"{dvc_file}@{commit}",
            fix="check the registry commit; the .dvc file must list the dataset with its md5",
            reason=DataPullRefusal.DVC_FILE_UNREADABLE,
        ) from exc
    if record.get("deps") or record.get("wdir") not in (None, "", "."):
        raise ControlRefused(
            f"{dvc_file} at {commit[:12]} is a DVC import (deps) or sets wdir: its data would "
            "come from elsewhere than this registry's allowed remote",
            where=f"{dvc_file}@{commit}",
            fix="`dvc add` the data in the registry and push it to its allowed remote",
            reason=DataPullRefusal.REMOTE_NOT_ALLOWED,
        )
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
    return _DvcRecord(
        text=raw,
        md5=md5,
        size=int(size) if isinstance(size, int) else None,
        legacy=legacy,
        remote=remote,
    )


def _remote_key(url: str) -> tuple[str, str, str] | None:
    """``(scheme, host, path)`` of a remote URL or absolute local path, for prefix matching;
    ``None`` when it cannot be compared safely (relative, ``~``, ``.``/``..`` segments, a
    query or fragment)."""
    if _URL_SCHEME_RE.match(url):
        parts = urlsplit(url)
        if parts.query or parts.fragment or "\\" in url:
            return None
        path = parts.path
        netloc = parts.netloc.lower()
        scheme = parts.scheme.lower()
    elif url.startswith("/"):
        path, netloc, scheme = url, "", ""
    else:
        return None
    if any(seg in (".", "..") for seg in path.split("/")):
        return None
    return scheme, netloc, path.rstrip("/")


def remote_allowed(url: str, allowed_remotes: Sequence[str]) -> bool:
    """Whether the DVC remote ``url`` is one of ``allowed_remotes`` or below one of them.

    Prefixes match whole path segments (``s3://data/churn`` allows ``s3://data/churn/v2``,
    not ``s3://data/churn-other``); scheme and host must be equal; a URL with ``..``, a
    relative path or ``~`` never matches.
    """
    key = _remote_key(url)
    if key is None:
        return False
    scheme, netloc, path = key
    for allowed in allowed_remotes:
        prefix = _remote_key(allowed)
        if prefix is None or prefix[:2] != (scheme, netloc):
            continue
        if path == prefix[2] or path.startswith(prefix[2] + "/"):
            return True
    return False


def _same_endpoint(a: str, b: str) -> bool:
    return a.rstrip("/").lower() == b.rstrip("/").lower()


@dataclass(frozen=True)
class _RemotePlan:
    """The one DVC remote a pull may use, as checked, and the config DVC gets for it."""

    name: str
    url: str
    is_s3: bool
    options: dict[str, str] = field(default_factory=dict)


def _remote_plan(
    config_text: str | None,
    record: _DvcRecord,
    *,
    commit: str,
    allowed_remotes: Sequence[str],
    s3_endpoint_url: str | None,
    scratch: Path,
    aws_profile: str | None = None,
) -> _RemotePlan:
    """Check the remote the committed ``.dvc/config`` makes DVC use for the dataset.

    Parsed with DVC's own reader (so ``%(...)s`` interpolation and quoting mean what they
    mean to DVC); the remote is the output's ``remote:`` or else ``core.remote``. For an S3
    remote the plan adds the site's settings: its endpoint, its AWS profile, and the
    pull's connect/read timeouts (:data:`S3_CONNECT_TIMEOUT`, :data:`S3_READ_TIMEOUT`).
    """
    where = f".dvc/config@{commit}"
    allowed_text = ", ".join(redact_url(a) for a in allowed_remotes) or "none"
    fixes = {
        DataPullRefusal.REMOTE_NOT_ALLOWED: "push the data to a remote the site allows, or "
        "add the remote's URL to the dataset entry's dvc_remotes in the policy file "
        "(sources.datasets.NAME.dvc_remotes)",
        DataPullRefusal.REMOTE_OPTION_NOT_ALLOWED: "remove the option from the registry's "
        ".dvc/config: the site sets the S3 endpoint (sources.datasets.NAME.s3_endpoint_url) "
        "and the worker its credentials",
    }

    def refuse(
        message: str, reason: DataPullRefusal = DataPullRefusal.REMOTE_NOT_ALLOWED
    ) -> NoReturn:
        raise ControlRefused(
            f"{message} (commit {commit[:12]}); no request was made to it",
            where=where,
            fix=fixes[reason],
            details={"allowed_remotes": [redact_url(a) for a in allowed_remotes]},
            reason=reason,
        )

    if config_text is None:
        refuse("the data registry has no committed .dvc/config naming its DVC remote")
    from dvc.config import Config, ConfigError

    committed = scratch / "committed-config"
    committed.write_text(config_text or "", encoding="utf-8")
    try:
        conf: dict[str, Any] = Config.load_file(str(committed))
    except (ConfigError, ValueError, TypeError) as exc:
        refuse(f"the registry's .dvc/config cannot be read: {exc}")
    core = conf.get("core") or {}
    if not isinstance(core, Mapping):
        refuse("the registry's .dvc/config has a malformed [core] section")
    if "site_cache_dir" in core:
        refuse(
            "the registry's .dvc/config sets core.site_cache_dir (where DVC writes on the worker)",
            DataPullRefusal.REMOTE_OPTION_NOT_ALLOWED,
        )
    name = record.remote or core.get("remote")
    if not isinstance(name, str) or not name:
        refuse("the registry's .dvc/config names no default DVC remote (core.remote)")
    if not _REMOTE_NAME_RE.fullmatch(name):
        refuse(f"the DVC remote name {name!r} is not a plain name")
    section = (conf.get("remote") or {}).get(name)
    if not isinstance(section, Mapping) or not isinstance(section.get("url"), str):
        refuse(f"the DVC remote {name!r} is not defined with a url in .dvc/config")
    url = str(section["url"])
    if not remote_allowed(url, allowed_remotes):
        refuse(
            f"the DVC remote {name!r} ({redact_url(url)}) is not under a remote the site "
            f"allows for this dataset ({allowed_text})"
        )
    extra = sorted(set(section) - REMOTE_OPTIONS_ALLOWED)
    if extra:
        refuse(
            f"the DVC remote {name!r} sets {', '.join(extra)} in the registry's .dvc/config: "
            "credentials, endpoints and TLS settings are the site's to decide",
            DataPullRefusal.REMOTE_OPTION_NOT_ALLOWED,
        )
    is_s3 = urlsplit(url).scheme.lower() == "s3"
    options = {k: str(v) for k, v in section.items() if k not in ("url", "endpointurl")}
    repo_endpoint = section.get("endpointurl")
    if repo_endpoint is not None and (
        not is_s3 or not s3_endpoint_url or not _same_endpoint(str(repo_endpoint), s3_endpoint_url)
    ):
        refuse(
            f"the DVC remote {name!r} sets endpointurl {redact_url(str(repo_endpoint))} in "
            "the registry's .dvc/config; the S3 endpoint (where credentials go) is the "
            f"site's ({redact_url(s3_endpoint_url) if s3_endpoint_url else 'AWS'})",
            DataPullRefusal.REMOTE_OPTION_NOT_ALLOWED,
        )
    if is_s3 and s3_endpoint_url:
        options["endpointurl"] = s3_endpoint_url
    if is_s3:
        options["connect_timeout"] = str(S3_CONNECT_TIMEOUT)
        options["read_timeout"] = str(S3_READ_TIMEOUT)
        if aws_profile:
            options["profile"] = aws_profile
    return _RemotePlan(name=name, url=url, is_s3=is_s3, options=options)


def _write_scratch_repo(work: Path, plan: _RemotePlan, path: str, record: _DvcRecord) -> None:
    """A DVC repo holding only the checked ``.dvc`` file and a config with only the checked
    remote, so ``dvc get`` cannot use anything this pull did not check."""
    from configobj import ConfigObj
    from dvc.config import Config

    dvc_dir = work / ".dvc"
    dvc_dir.mkdir(parents=True)
    wanted = {
        "core": {"remote": plan.name},
        "remote": {plan.name: {"url": plan.url, **plan.options}},
    }
    conf = ConfigObj(interpolation=False)
    conf["core"] = {"remote": plan.name}
    conf[f'remote "{plan.name}"'] = {"url": plan.url, **plan.options}
    with (dvc_dir / "config").open("wb") as handle:
        conf.write(handle)
    # DVC reads it back with interpolation: refuse a value it would not see as written.
    written = Config.load_file(str(dvc_dir / "config"))
    if {k: written.get(k) for k in wanted} != wanted:
        raise ControlRefused(
            f"the DVC remote {plan.name!r} ({redact_url(plan.url)}) cannot be handed to DVC "
            "unchanged (a value DVC would interpolate)",
            where=".dvc/config",
            fix="use a remote URL without '%(' or '$' sequences",
            reason=DataPullRefusal.REMOTE_NOT_ALLOWED,
        )
    dvc_file = work / f"{path}.dvc"
    dvc_file.parent.mkdir(parents=True, exist_ok=True)
    dvc_file.write_text(record.text, encoding="utf-8")


def _file_digests(path: Path, *, legacy: bool) -> tuple[str, str, int]:
    """md5 (as DVC computes it), sha256 and size of a file, in one read."""
    data = path.read_bytes()
    # DVC 2 ("md5-dos2unix") hashed text files with CRLF turned into LF.
    is_text = b"\x00" not in data[:8192]
    md5_input = data.replace(b"\r\n", b"\n") if legacy and is_text else data
    md5 = hashlib.md5(md5_input, usedforsecurity=False).hexdigest()
    return md5, hashlib.sha256(data).hexdigest(), len(data)


_AWS_PROFILE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+=,@-]{0,127}")
# What DVC's stderr says for each failure of a DVC remote (lower-cased substrings). Kept
# small and specific: anything else is reported with DVC's own error line.
_DVC_MISSING = ("no storage files available", "nosuchkey", "missing cache files")
_DVC_DENIED = (
    "unable to locate credentials",
    "nocredentialserror",
    "partial credentials",
    "invalidaccesskeyid",
    "signaturedoesnotmatch",
    "expiredtoken",
    "invalidtoken",
    "accessdenied",
    "access denied",
    "forbidden",
    "(403)",
)
_DVC_UNREACHABLE = (
    "could not connect to the endpoint url",
    "connect timeout on endpoint url",
    "read timeout on endpoint url",
    "endpointconnectionerror",
    "connection refused",
    "name or service not known",
    "temporary failure in name resolution",
)


def _scrub_secrets(text: str) -> str:
    """``text`` with the values of the worker's AWS secret variables replaced by ``***``."""
    for name in AWS_SECRET_VARIABLES:
        value = os.environ.get(name, "")
        if len(value) >= 4:
            text = text.replace(value, "***")
    return text


def _dvc_error_line(tail: str) -> str:
    """DVC's own error line (``ERROR: ...``), without its banner; else the last line."""
    lines = [line.strip() for line in tail.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR:")]
    line = errors[-1] if errors else (lines[-1] if lines else "no output")
    line = re.sub(r"^ERROR:\s*(unexpected error\s*-\s*)?", "", line)
    return line[:300]


def _remote_failure(
    exc: ToolError,
    *,
    plan: _RemotePlan,
    path: str,
    rev: str,
    commit: str,
    md5: str,
    s3_endpoint_url: str | None,
) -> ToolError:
    """One sentence for a ``dvc get`` that failed: a missing object, refused credentials, an
    unreachable endpoint, a timeout, or DVC's own error line. All are the site's storage or
    network, not the data (the bytes are checked only once they arrive): ``ToolError``."""
    tail = _scrub_secrets(str(exc.details.get("stderr_tail", "")))
    low = tail.lower()
    remote = f"the DVC remote {plan.name!r} ({redact_url(plan.url)})"
    endpoint = redact_url(s3_endpoint_url) if s3_endpoint_url else "AWS S3"
    where = f"dvc remote {plan.name} {redact_url(plan.url)}" + (
        f" at {endpoint}" if plan.is_s3 else ""
    )
    details = {"stderr_tail": tail, "remote": redact_url(plan.url), "commit": commit}
    line = _dvc_error_line(tail)
    if "exit_code" not in exc.details and "did not finish" in exc.message:
        return ToolError(
            f"{exc.message} pulling {path} at {rev} from {remote}",
            where=where,
            fix="check that the remote's endpoint answers from the worker; raise the pull's "
            "timeout for a large dataset",
            details=details,
        )
    if any(marker in low for marker in _DVC_MISSING):
        return ToolError(
            f"{remote} has no object for {path} at {rev} ({commit[:12]}, md5 {md5}), so "
            "nothing was pulled",
            where=where,
            fix="restore the object: `dvc push` the dataset from a checkout of the registry "
            "that has it, or copy it back from a backup of the bucket",
            details=details,
        )
    if plan.is_s3 and any(marker in low for marker in _DVC_DENIED):
        return ToolError(
            f"{remote} at {endpoint} refused the worker's credentials ({line}); check the "
            "site's credentials for it",
            where=where,
            fix="check the AWS credentials the worker gives this remote (the dataset entry's "
            "aws_profile, else AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY in the "
            "worker's environment) and that they may read the bucket",
            details=details,
        )
    if any(marker in low for marker in _DVC_UNREACHABLE):
        return ToolError(
            f"{remote} could not be reached at {endpoint if plan.is_s3 else 'its URL'} ({line})",
            where=where,
            fix="check the site's endpoint for this dataset (sources.datasets.NAME."
            "s3_endpoint_url) and the network path from the worker to it",
            details=details,
        )
    return ToolError(
        f"dvc get failed for {path} at {rev} from {remote}: {line}",
        where=where,
        fix="read the DVC output in the error details (rerun with -v)",
        details=details,
    )


def _git_auth_env(repo: str, git_auth: tuple[str, str] | None) -> dict[str, str]:
    """git's environment config sending ``git_auth`` to ``repo``'s host only (HTTPS)."""
    if git_auth is None:
        return {}
    parts = urlsplit(repo)
    if parts.scheme != "https" or not parts.hostname:
        raise InputError(
            f"git credentials are for HTTPS repos; {redact_url(repo)!r} is not one",
            where="git_credentials",
            fix="use an https:// repo URL with the credentials block, or SSH keys for ssh://",
        )
    user, token = git_auth
    basic = base64.b64encode(f"{user}:{token}".encode()).decode()
    netloc = parts.hostname + (f":{parts.port}" if parts.port else "")
    return {
        "GIT_CONFIG_COUNT": "1",
        "GIT_CONFIG_KEY_0": f"http.https://{netloc}/.extraHeader",
        "GIT_CONFIG_VALUE_0": f"Authorization: Basic {basic}",
    }


def pull_dataset(
    repo: str,
    path: str,
    rev: str,
    dest_dir: Path,
    *,
    allowed_remotes: Sequence[str],
    s3_endpoint_url: str | None = None,
    aws_profile: str | None = None,
    git_auth: tuple[str, str] | None = None,
    timeout: float = 300,
) -> DatasetPull:
    """Pull ``path`` from the DVC data registry ``repo`` at revision ``rev`` into ``dest_dir``.

    ``repo`` is an ``https://`` or ``ssh://`` URL, ``user@host:path`` or an absolute local path,
    never with credentials in it. ``rev`` (a tag or a full commit sha; a branch is refused)
    is resolved to a commit first and the bytes are fetched at that exact commit, so a tag
    moved mid-pull cannot mix versions.

    Before any DVC request, the remote the committed ``.dvc/config`` (or the ``.dvc`` file's
    ``remote:``) makes DVC use must be under one of ``allowed_remotes`` (the site's URL
    prefixes or absolute paths), and may not set an ``endpointurl`` other than
    ``s3_endpoint_url`` or any option that is the site's to decide; otherwise
    ``ControlRefused`` (``REMOTE_NOT_ALLOWED`` / ``REMOTE_OPTION_NOT_ALLOWED``). The site's
    ``s3_endpoint_url`` is what DVC uses for an S3 remote, and AWS credentials from the
    environment reach DVC only then; with ``aws_profile`` (a profile of the worker's AWS
    config) DVC uses that profile's credentials instead, and the ambient
    ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_SESSION_TOKEN``/``AWS_PROFILE``
    are not passed. DVC waits on an S3 endpoint at most :data:`S3_CONNECT_TIMEOUT` s to
    connect and :data:`S3_READ_TIMEOUT` s per read, with :data:`S3_MAX_ATTEMPTS` attempts.

    The file appears in ``dest_dir`` only after its md5 equals the one recorded in the
    ``.dvc`` file at that commit; otherwise ``ControlRefused`` (``CONTENT_MISMATCH``: a
    tampered DVC remote). Unknown revisions, paths and registries raise ``InputError``;
    git/DVC failures ``ToolError``, with one sentence naming the remote for a missing
    object, refused credentials (never echoing them) or an unreachable endpoint: those are
    the site's storage, not the data, and nothing is pulled.

    ``git_auth`` (user name, token) is sent to git as an HTTP ``Authorization`` header for
    ``repo``'s own scheme and host only (through git's environment config, never argv or a
    URL); ``repo`` must then be ``https://``.
    """
    deadline = _Deadline(timeout)
    source, path = _check_pull_inputs(repo, path, rev)
    if isinstance(allowed_remotes, str):
        raise InputError(
            "allowed_remotes must be a list of remote URLs or paths, not one string",
            where="allowed_remotes",
        )
    if s3_endpoint_url:
        try:
            check_url_has_no_secret(s3_endpoint_url, "s3_endpoint_url")
        except ValueError as exc:
            raise InputError(str(exc), where="s3_endpoint_url") from None
        if urlsplit(s3_endpoint_url).scheme not in ("http", "https"):
            raise InputError(
                f"s3_endpoint_url {redact_url(s3_endpoint_url)!r} is not an http(s) URL",
                where="s3_endpoint_url",
                fix="give the S3 API endpoint as https://host[:port]",
            )
    if aws_profile is not None and not _AWS_PROFILE_RE.fullmatch(aws_profile):
        raise InputError(
            f"aws_profile {aws_profile!r} is not an AWS profile name",
            where="aws_profile",
            fix="name a profile of the worker's AWS config (letters, digits, '_', '-', '.')",
        )
    dest_dir.mkdir(parents=True, exist_ok=True)
    target = dest_dir / PurePosixPath(path).name
    env = {**BASE_TOOL_ENV, "GIT_CONFIG_GLOBAL": os.devnull, **_git_auth_env(source, git_auth)}
    with tempfile.TemporaryDirectory(prefix="secmlops-pull-") as scratch_name:
        scratch = Path(scratch_name)
        meta = scratch / "meta.git"
        commit = _resolve_rev(source, rev, meta, deadline, env)
        record = _recorded_md5(meta, commit, path, deadline, env)
        md5, size, legacy = record.md5, record.size, record.legacy
        config_text = _committed_blob(meta, commit, ".dvc/config", deadline, env)
        plan = _remote_plan(
            config_text,
            record,
            commit=commit,
            allowed_remotes=allowed_remotes,
            s3_endpoint_url=s3_endpoint_url,
            scratch=scratch,
            aws_profile=aws_profile,
        )
        work = scratch / "repo"
        _write_scratch_repo(work, plan, path, record)
        empty = scratch / "dvc-config"  # no system or user DVC config joins the checked one
        empty.mkdir()
        dvc_env = {
            **{k: v for k, v in env.items() if not k.startswith("GIT_CONFIG_")},
            "GIT_CONFIG_GLOBAL": os.devnull,
            "DVC_GLOBAL_CONFIG_DIR": str(empty),
            "DVC_SYSTEM_CONFIG_DIR": str(empty),
            "DVC_SITE_CACHE_DIR": str(scratch / "site-cache"),
        }
        dvc_allow: tuple[str, ...] = DVC_ENV_ALLOW_NOT_S3
        if plan.is_s3:
            dvc_allow = PULL_ENV_ALLOW
            if aws_profile:  # the profile's credentials, not the ambient ones
                ambient = (*AWS_SECRET_VARIABLES, "AWS_PROFILE")
                dvc_allow = tuple(v for v in PULL_ENV_ALLOW if v not in ambient)
            for name, value in (
                ("AWS_RETRY_MODE", "standard"),
                ("AWS_MAX_ATTEMPTS", str(S3_MAX_ATTEMPTS)),
            ):
                if not os.environ.get(name):
                    dvc_env[name] = value
        staged = dest_dir / f".{target.name}.pull-{uuid.uuid4().hex}"
        budget = deadline.left("dvc get")
        try:
            try:
                run_tool(
                    [resolve_binary("dvc"), "get", work, path, "-o", staged],
                    timeout=budget,
                    env_allow=dvc_allow,
                    extra_env=dvc_env,
                    cwd=scratch,
                    what="dvc get",
                )
            except ToolError as exc:
                raise _remote_failure(
                    exc,
                    plan=plan,
                    path=path,
                    rev=rev,
                    commit=commit,
                    md5=md5,
                    s3_endpoint_url=s3_endpoint_url,
                ) from None
            if not staged.is_file():
                raise ToolError(
                    f"dvc get reported success but wrote no file for {path}",
                    where=f"dvc get {redact_url(source)} {path}",
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
                    f"expected {md5}, got {got_md5} ({got_size} bytes) — the DVC remote "
                    f"{plan.name!r} ({redact_url(plan.url)}) or a cache on the way holds "
                    "different bytes than were committed",
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
