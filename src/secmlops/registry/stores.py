"""Object storage for models and evidence: a local directory or S3 (boto3), same layout.

    <root>/<model>/versions/<version>/model/...        model files
    <root>/<model>/versions/<version>/model.sig        model-signing bundle
    <root>/<model>/versions/<version>/evidence/*.json  signed attestations
    <root>/<model>/versions/<version>/release.json     what this version was built from
    <root>/<model>/stages/{staging,production}.json    stage pointers
    <root>/<model>/audit/...                           append-only event log

Writes are create-only unless the caller passes the version tag (``etag``) it read,
so versions and evidence are immutable and a stage pointer only moves if nobody moved
it in between (compare-and-swap). The registry is *storage*, not a trust root: every
byte read from it is verified against keys held elsewhere before it counts.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import random
import stat
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlparse

from secmlops._internal.atomic import write_atomic
from secmlops._internal.digests import sha256_bytes
from secmlops.errors import ControlRefused, InputError, RefusalReason, ToolError
from secmlops.site import RegistrySource, redact_url


class RegistryRefusal(RefusalReason):
    """Why the model registry refused an operation (``ControlRefused.reason``)."""

    OBJECT_EXISTS = "object_exists"
    """A create-only key is already taken: registry objects are immutable."""
    OBJECT_CHANGED = "object_changed"
    """A compare-and-swap lost: the object changed since it was read."""
    OBJECT_MISSING = "object_missing"
    """Evidence or a model file that should be there is not."""
    KEY_ESCAPES_FOLDER = "key_escapes_folder"
    """A registry key would download outside its target folder."""
    NOT_JSON = "not_json"
    """Registry bytes that must be a JSON object are not."""
    MALFORMED_POINTER = "malformed_pointer"
    """A stage pointer lacks a field it must have."""
    VERSION_ALLOCATION_CONFLICT = "version_allocation_conflict"
    """Every attempt to claim the next model version collided with another writer."""
    NO_MODEL_FILES = "no_model_files"
    """A registered version holds no model files."""
    OBJECT_TOO_LARGE = "object_too_large"
    """A stored object is larger than the configured limit (refused before it is read)."""
    NOT_REGULAR_FILE = "not_regular_file"
    """A symlink, device, FIFO or socket where the registry holds regular files only."""
    EMPTY_DIRECTORY = "empty_directory"
    """An empty directory in a model folder: not part of what was signed (S3 cannot hold it)."""
    JSON_TOO_DEEP = "json_too_deep"
    """Stored JSON nested deeper than the configured limit."""
    MALFORMED_OBJECT = "malformed_object"
    """A stored JSON object does not have the shape its reader requires."""


#: Default size limit of a JSON object read from the registry (pointers, evidence, audit).
DEFAULT_MAX_OBJECT_BYTES = 16 * 1024 * 1024
#: Default size limit of one model file (streamed, never held in memory).
DEFAULT_MAX_MODEL_FILE_BYTES = 64 * 1024**3
#: Default nesting limit of stored JSON.
DEFAULT_MAX_JSON_DEPTH = 64
_CHUNK = 1 << 20


@dataclass(frozen=True)
class ObjectLimits:
    """How much the registry's readers accept (the store is untrusted).

    ``max_object_bytes``: any object read whole (JSON, signatures); ``max_model_file_bytes``:
    one model file (streamed to disk); ``max_json_depth``: nesting of stored JSON.
    Settings: ``SECMLOPS_MAX_OBJECT_BYTES``, ``SECMLOPS_MAX_MODEL_FILE_BYTES``,
    ``SECMLOPS_MAX_JSON_DEPTH`` (positive integers).
    """

    max_object_bytes: int = DEFAULT_MAX_OBJECT_BYTES
    max_model_file_bytes: int = DEFAULT_MAX_MODEL_FILE_BYTES
    max_json_depth: int = DEFAULT_MAX_JSON_DEPTH

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ObjectLimits:
        """The limits set in ``env``; ``InputError`` naming the variable if one is invalid."""
        values: dict[str, int] = {}
        for name, var in (
            ("max_object_bytes", "SECMLOPS_MAX_OBJECT_BYTES"),
            ("max_model_file_bytes", "SECMLOPS_MAX_MODEL_FILE_BYTES"),
            ("max_json_depth", "SECMLOPS_MAX_JSON_DEPTH"),
        ):
            raw = env.get(var, "").strip()
            if not raw:
                continue
            if not raw.isdigit() or int(raw) < 1:
                raise InputError(
                    f"{var}={raw!r} is not a positive integer",
                    where=var,
                    fix=f"set {var} to a number of bytes (or levels), or unset it",
                )
            values[name] = int(raw)
        return cls(**values)


def current_limits() -> ObjectLimits:
    """The object limits of this process (its ``SECMLOPS_MAX_*`` environment)."""
    return ObjectLimits.from_env(os.environ)


def _too_large(where: str, size: int, limit: int) -> ControlRefused:
    return ControlRefused(
        f"{where} is {size} bytes, above the {limit}-byte limit; refused before reading it",
        where=where,
        fix="remove the object from the registry, or raise SECMLOPS_MAX_OBJECT_BYTES / "
        "SECMLOPS_MAX_MODEL_FILE_BYTES if it is legitimate",
        reason=RegistryRefusal.OBJECT_TOO_LARGE,
    )


class WriteConflict(ControlRefused):
    """A create-only key already exists, or a pointer moved since it was read.

    Its ``reason`` is :attr:`RegistryRefusal.OBJECT_EXISTS` or ``OBJECT_CHANGED``.
    """


@dataclass(frozen=True)
class StoredObject:
    """Bytes read from the registry and the tag to pass back for a compare-and-swap write."""

    data: bytes
    etag: str


def _check_key(key: str) -> str:
    parts = PurePosixPath(key).parts
    if not key or key.startswith("/") or any(p in ("..", ".", "") for p in parts):
        raise InputError(f"invalid registry key {key!r}", where=key)
    return key


class Registry(ABC):
    """A flat key space of immutable objects plus compare-and-swap pointers."""

    uri: str

    @abstractmethod
    def get(self, key: str) -> StoredObject | None:
        """The object at ``key``, or ``None`` if there is none."""

    @abstractmethod
    def put(self, key: str, data: bytes, *, replace_etag: str | None = None) -> None:
        """Write ``key``. Create-only unless ``replace_etag`` names the version being replaced."""

    @abstractmethod
    def list_keys(self, prefix: str) -> list[str]:
        """Keys under ``prefix`` (a folder, with or without the trailing slash), sorted."""

    def size(self, key: str) -> int | None:
        """The size in bytes of the object at ``key`` (``None`` if there is none), known
        without reading it. The default reads it: stores override this (stat, HEAD)."""
        obj = self.get(key)
        return None if obj is None else len(obj.data)

    def get_limited(self, key: str, max_bytes: int | None = None) -> StoredObject | None:
        """:meth:`get`, refusing (``OBJECT_TOO_LARGE``) an object above ``max_bytes``
        (default: :func:`current_limits`' ``max_object_bytes``) before it is read."""
        limit = current_limits().max_object_bytes if max_bytes is None else max_bytes
        size = self.size(key)
        if size is None:
            return None
        if size > limit:
            raise _too_large(self.describe(key), size, limit)
        obj = self.get(key)
        if obj is not None and len(obj.data) > limit:  # it grew in between
            raise _too_large(self.describe(key), len(obj.data), limit)
        return obj

    def read(self, key: str, *, max_bytes: int | None = None) -> bytes:
        """The bytes at ``key``; ``ControlRefused`` when missing (evidence that is not there)
        or above ``max_bytes`` (default: the configured ``max_object_bytes``)."""
        obj = self.get_limited(key, max_bytes)
        if obj is None:
            raise ControlRefused(
                f"{self.describe(key)} does not exist",
                where=self.describe(key),
                reason=RegistryRefusal.OBJECT_MISSING,
            )
        return obj.data

    def empty_dirs(self, prefix: str) -> list[str]:
        """Empty directories below ``prefix`` (relative to the registry root); only a local
        registry can hold them (S3 has no directories)."""
        return []

    def download_file(self, key: str, target: Path, *, max_bytes: int | None = None) -> str:
        """Write the object at ``key`` to ``target`` (which must not exist) and return the
        sha256 of the bytes written; refuses an object above ``max_bytes`` (default: the
        configured ``max_model_file_bytes``) before reading it. Stores override this to
        stream (memory flat in the object's size)."""
        limit = current_limits().max_model_file_bytes if max_bytes is None else max_bytes
        data = self.read(key, max_bytes=limit)
        with target.open("xb") as fh:
            fh.write(data)
        return sha256_bytes(data)

    def put_file(self, key: str, path: Path) -> str:
        """Upload a local regular file create-only; return its sha256. Stores override
        this to stream."""
        data = path.read_bytes()
        self.put(key, data)
        return sha256_bytes(data)

    def exists(self, key: str) -> bool:
        """Whether an object is at ``key`` (from its size: never reads it)."""
        return self.size(key) is not None

    def rewritten_keys(self, prefix: str) -> list[str]:
        """Keys under ``prefix`` that were deleted or overwritten at some time, where the
        store keeps old versions (S3 versioning / Object Lock); always empty elsewhere.

        For write-once folders (the audit log, the signed stage history) any such key is
        tampering: its earlier versions are still there to compare.
        """
        return []

    def retention(self) -> str | None:
        """The store's write-once protection in words (S3 Object Lock: mode and default
        retention), or ``None`` when objects can be deleted or replaced by whoever can write."""
        return None

    def describe(self, key: str) -> str:
        """A location a person can paste: path or s3:// URI."""
        return f"{self.uri.rstrip('/')}/{key}"

    def upload_tree(self, local_dir: Path, prefix: str) -> dict[str, str]:
        """Upload every file below ``local_dir`` create-only; return ``{relpath: sha256}``."""
        uploaded: dict[str, str] = {}
        for path in sorted(local_dir.rglob("*")):
            if path.is_symlink():
                raise InputError(f"{path} is a symlink; refusing to upload", where=str(path))
            if path.is_file():
                rel = path.relative_to(local_dir).as_posix()
                uploaded[rel] = self.put_file(f"{prefix.rstrip('/')}/{rel}", path)
        return uploaded

    def download_tree(
        self, prefix: str, local_dir: Path, *, max_bytes: int | None = None
    ) -> list[str]:
        """Download every object under ``prefix`` into ``local_dir``; return relative paths.

        Streams each object (see :meth:`download_file`); refuses (``ControlRefused``) a key
        that would land outside ``local_dir``, an object above ``max_bytes`` (default: the
        configured ``max_model_file_bytes``), and, in a local registry, symlinks, special
        files and empty directories under ``prefix``. :meth:`download_tree_hashed` also
        returns each file's sha256.
        """
        return list(self.download_tree_hashed(prefix, local_dir, max_bytes=max_bytes))

    def download_tree_hashed(
        self, prefix: str, local_dir: Path, *, max_bytes: int | None = None
    ) -> dict[str, str]:
        """:meth:`download_tree`, returning ``{relative path: sha256 of the bytes written}``
        (hashed while streaming: no second read)."""
        base = prefix.rstrip("/") + "/"
        empty = self.empty_dirs(base)
        if empty:
            raise ControlRefused(
                f"{self.describe(empty[0])} is an empty directory in {self.describe(prefix)}; "
                "a model folder holds signed files only",
                where=self.describe(empty[0]),
                fix="remove the directory (it is not part of what was signed)",
                reason=RegistryRefusal.EMPTY_DIRECTORY,
            )
        root = local_dir.resolve()
        files: dict[str, str] = {}
        for key in self.list_keys(base):
            rel = key[len(base) :]
            target = local_dir / rel
            if (
                not target.resolve().is_relative_to(root)
                or rel in ("", ".")
                or ".." in rel.split("/")
            ):
                raise ControlRefused(
                    f"registry key {key} escapes the download folder",
                    where=key,
                    reason=RegistryRefusal.KEY_ESCAPES_FOLDER,
                )
            target.parent.mkdir(parents=True, exist_ok=True)
            files[rel] = self.download_file(key, target, max_bytes=max_bytes)
        return files


def _is_internal(path: Path, root: Path) -> bool:
    """The registry's lock file, or a temp file of an atomic write still in flight."""
    return path == root / ".lock" or (path.name.startswith(".") and path.name.endswith(".tmp"))


class LocalRegistry(Registry):
    """A registry in a local directory. Pointer swaps hold an advisory lock; writes are atomic.

    The directory is untrusted storage: symlinks (files or directories) and special files
    below the root are refused, never followed; objects are opened with ``O_NOFOLLOW`` and
    their size is checked (``fstat``) before they are read.
    """

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.uri = str(self.root)

    def _path(self, key: str) -> Path:
        return self.root / _check_key(key)

    def describe(self, key: str) -> str:
        return str(self._path(key))

    def _not_regular(self, path: Path, what: str) -> ControlRefused:
        return ControlRefused(
            f"registry object {path} is {what}; the registry holds regular files only "
            "and never follows links",
            where=str(path),
            fix="replace it with the regular file it should be (or remove it)",
            reason=RegistryRefusal.NOT_REGULAR_FILE,
        )

    def _kind(self, path: Path, st: os.stat_result) -> str:
        if stat.S_ISLNK(st.st_mode):
            return f"a symlink (to {os.readlink(path)!r})"
        if stat.S_ISFIFO(st.st_mode):
            return "a FIFO"
        if stat.S_ISSOCK(st.st_mode):
            return "a socket"
        if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
            return "a device"
        return "not a regular file"

    def _lstat(self, key: str) -> os.stat_result | None:
        """``lstat`` of ``key``, walking down from the root without following any link:
        ``None`` if it (or a parent folder) does not exist; ``ControlRefused`` if a component
        is a symlink or a parent is not a directory."""
        current = self.root
        parts = PurePosixPath(_check_key(key)).parts
        st: os.stat_result | None = None
        for i, part in enumerate(parts):
            current = current / part
            try:
                st = os.lstat(current)
            except (FileNotFoundError, NotADirectoryError):
                return None
            except OSError as exc:
                raise ToolError(
                    f"cannot read {current}: {exc.strerror}", where=str(current)
                ) from exc
            if stat.S_ISLNK(st.st_mode):
                raise self._not_regular(current, self._kind(current, st))
            if i < len(parts) - 1 and not stat.S_ISDIR(st.st_mode):
                raise self._not_regular(current, "a file where a folder is expected")
        return st

    def _open(self, key: str) -> tuple[int, os.stat_result] | None:
        """An fd of the regular file at ``key`` (opened ``O_NOFOLLOW``) and its ``fstat``;
        ``None`` if there is none (or it is a folder); ``ControlRefused`` if it is a link or a
        special file."""
        st = self._lstat(key)
        if st is None or stat.S_ISDIR(st.st_mode):
            return None
        path = self._path(key)
        if not stat.S_ISREG(st.st_mode):
            raise self._not_regular(path, self._kind(path, st))
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(path, flags)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise self._not_regular(path, "a symlink") from exc
            raise ToolError(f"cannot read {path}: {exc.strerror}", where=str(path)) from exc
        opened = os.fstat(fd)
        if not stat.S_ISREG(opened.st_mode):  # swapped between lstat and open
            os.close(fd)
            raise self._not_regular(path, "not a regular file")
        return fd, opened

    def size(self, key: str) -> int | None:
        st = self._lstat(key)
        if st is None or stat.S_ISDIR(st.st_mode):
            return None
        if not stat.S_ISREG(st.st_mode):
            path = self._path(key)
            raise self._not_regular(path, self._kind(path, st))
        return st.st_size

    def get(self, key: str) -> StoredObject | None:
        return self.get_limited(key)

    def get_limited(self, key: str, max_bytes: int | None = None) -> StoredObject | None:
        limit = current_limits().max_object_bytes if max_bytes is None else max_bytes
        opened = self._open(key)
        if opened is None:
            return None
        fd, st = opened
        path = self._path(key)
        try:
            if st.st_size > limit:
                raise _too_large(str(path), st.st_size, limit)
            chunks = []
            total = 0
            while chunk := os.read(fd, min(_CHUNK, limit + 1 - total)):
                chunks.append(chunk)
                total += len(chunk)
                if total > limit:
                    raise _too_large(str(path), total, limit)
        except OSError as exc:
            raise ToolError(f"cannot read {path}: {exc.strerror}", where=str(path)) from exc
        finally:
            os.close(fd)
        data = b"".join(chunks)
        return StoredObject(data=data, etag=sha256_bytes(data))

    def download_file(self, key: str, target: Path, *, max_bytes: int | None = None) -> str:
        limit = current_limits().max_model_file_bytes if max_bytes is None else max_bytes
        path = self._path(key)
        opened = self._open(key)
        if opened is None:
            raise ControlRefused(
                f"{path} does not exist", where=str(path), reason=RegistryRefusal.OBJECT_MISSING
            )
        fd, st = opened
        digest = hashlib.sha256()
        try:
            if st.st_size > limit:
                raise _too_large(str(path), st.st_size, limit)
            total = 0
            with target.open("xb") as out:
                while chunk := os.read(fd, _CHUNK):
                    total += len(chunk)
                    if total > limit:
                        raise _too_large(str(path), total, limit)
                    digest.update(chunk)
                    out.write(chunk)
        except OSError as exc:
            raise ToolError(
                f"cannot copy {path} to {target}: {exc.strerror}", where=str(path)
            ) from exc
        finally:
            os.close(fd)
        return digest.hexdigest()

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / ".lock").open("a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def put(self, key: str, data: bytes, *, replace_etag: str | None = None) -> None:
        path = self._path(key)
        try:
            self._lstat(key)  # refuses a symlinked folder on the way before mkdir follows it
            path.parent.mkdir(parents=True, exist_ok=True)
            with self._lock():
                current = self.get(key)
                if replace_etag is None and current is not None:
                    raise WriteConflict(
                        f"{path} already exists and registry objects are immutable",
                        where=str(path),
                        fix="register a new version instead of overwriting this one",
                        reason=RegistryRefusal.OBJECT_EXISTS,
                    )
                if replace_etag is not None and (current is None or current.etag != replace_etag):
                    raise WriteConflict(
                        f"{path} changed while this operation ran",
                        where=str(path),
                        fix="another promotion ran at the same time; rerun this one",
                        reason=RegistryRefusal.OBJECT_CHANGED,
                    )
                write_atomic(path, data)
        except OSError as exc:
            raise ToolError(f"cannot write {path}: {exc.strerror}", where=str(path)) from exc

    def put_file(self, key: str, path: Path) -> str:
        """Copy a local regular file create-only, streaming (memory flat in its size)."""
        target = self._path(key)
        digest = hashlib.sha256()
        tmp: Path | None = None
        try:
            self._lstat(key)
            target.parent.mkdir(parents=True, exist_ok=True)
            with self._lock():
                if self._lstat(key) is not None:
                    raise WriteConflict(
                        f"{target} already exists and registry objects are immutable",
                        where=str(target),
                        fix="register a new version instead of overwriting this one",
                        reason=RegistryRefusal.OBJECT_EXISTS,
                    )
                tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
                src = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
                try:
                    with open(tmp, "xb") as out:
                        while chunk := os.read(src, _CHUNK):
                            digest.update(chunk)
                            out.write(chunk)
                        out.flush()
                        os.fsync(out.fileno())
                finally:
                    os.close(src)
                os.chmod(tmp, 0o644)
                os.replace(tmp, target)
                tmp = None
        except OSError as exc:
            raise ToolError(f"cannot write {target}: {exc.strerror}", where=str(target)) from exc
        finally:
            if tmp is not None:
                tmp.unlink(missing_ok=True)
        return digest.hexdigest()

    def _walk(self, prefix: str) -> Iterator[tuple[Path, bool]]:
        """(path, is_empty_dir) of every regular file and every empty folder below
        ``prefix``, without following links; ``ControlRefused`` for a link or special file."""
        key = prefix.strip("/")
        if key:
            st = self._lstat(key)
            if st is None or not stat.S_ISDIR(st.st_mode):
                return
        stack = [self.root / key if key else self.root]
        while stack:
            folder = stack.pop()
            try:
                entries = list(os.scandir(folder))
            except OSError as exc:
                raise ToolError(f"cannot list {folder}: {exc.strerror}", where=str(folder)) from exc
            if not entries and folder != self.root:
                yield Path(folder), True
            for entry in entries:
                path = Path(entry.path)
                if entry.is_symlink():
                    raise self._not_regular(
                        path, self._kind(path, entry.stat(follow_symlinks=False))
                    )
                if entry.is_dir(follow_symlinks=False):
                    stack.append(path)
                elif entry.is_file(follow_symlinks=False):
                    if not _is_internal(path, self.root):
                        yield path, False
                else:
                    raise self._not_regular(
                        path, self._kind(path, entry.stat(follow_symlinks=False))
                    )

    def list_keys(self, prefix: str) -> list[str]:
        # List what S3 would list: every file, dotfiles included (a hidden file added to a
        # model must be seen by the gate). Only our own lock and in-flight temp files are
        # skipped; a symlink or special file anywhere below ``prefix`` is refused.
        return sorted(
            p.relative_to(self.root).as_posix() for p, empty in self._walk(prefix) if not empty
        )

    def empty_dirs(self, prefix: str) -> list[str]:
        return sorted(
            p.relative_to(self.root).as_posix() for p, empty in self._walk(prefix) if empty
        )


#: Tries per S3 call (first try included), and the connect/read timeout of each try.
S3_MAX_ATTEMPTS_ENV = "SECMLOPS_S3_MAX_ATTEMPTS"
S3_TIMEOUT_ENV = "SECMLOPS_S3_TIMEOUT"


def _env_number(name: str, default: Any, kind: Any) -> Any:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        value = 0
    if value <= 0:
        raise InputError(f"{name}={raw!r} is not a positive number", where=name)
    return value


def _is_body_error(exc: Exception) -> bool:
    """A connection error or timeout while reading a response body (worth another try)."""
    from botocore.exceptions import (
        ConnectionClosedError,
        EndpointConnectionError,
        IncompleteReadError,
        ReadTimeoutError,
        ResponseStreamingError,
    )

    return isinstance(
        exc,
        ReadTimeoutError
        | ResponseStreamingError
        | IncompleteReadError
        | ConnectionClosedError
        | EndpointConnectionError,
    )


class S3Registry(Registry):
    """A registry in an S3 bucket (or any S3 API). Uses conditional writes (If-None-Match /
    If-Match) so versions stay immutable and pointer moves are compare-and-swap."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        session: Any | None = None,
        max_attempts: int | None = None,
        timeout: float | None = None,
    ) -> None:
        """``session``: the boto3 Session whose credentials (and region) to use; ``None``:
        boto3's default chain. ``max_attempts`` (default ``SECMLOPS_S3_MAX_ATTEMPTS``, else
        4) bounds the tries of every call; ``timeout`` (default ``SECMLOPS_S3_TIMEOUT``, else
        60 s) is the connect and read timeout of each try."""
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.uri = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self.endpoint_url = endpoint_url
        self.max_attempts = max_attempts or _env_number(S3_MAX_ATTEMPTS_ENV, 4, int)
        self.timeout = timeout or _env_number(S3_TIMEOUT_ENV, 60.0, float)
        self._client: Any = self._make_client(session)

    def _make_client(self, session: Any | None) -> Any:
        import boto3
        from botocore.config import Config

        # Bounded retries with exponential backoff and jitter (botocore "standard" mode:
        # connection errors, timeouts, 500/502/503/504, SlowDown and other throttling), and a
        # timeout on every try, so a stalled endpoint fails the call instead of hanging it.
        config = Config(
            retries={"total_max_attempts": self.max_attempts, "mode": "standard"},
            connect_timeout=min(self.timeout, 10.0),
            read_timeout=self.timeout,
        )
        # A session of its own: boto3's module-level default session caches the credentials
        # it found first, so a registry opened later would sign with stale ones.
        session = session or boto3.session.Session()
        return session.client("s3", endpoint_url=self.endpoint_url, config=config)

    def use_session(self, session: Any) -> None:
        """Use explicit credentials (a boto3 Session) instead of the default chain."""
        self._client = self._make_client(session)

    def _key(self, key: str) -> str:
        _check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _fail(self, action: str, key: str, exc: Exception) -> ToolError:
        """``ToolError`` (exit 3) naming the operation, the key and how often it was tried."""
        attempts = self.max_attempts
        response = getattr(exc, "response", None)
        if isinstance(response, dict):  # a ClientError: botocore says how often it retried
            retried = response.get("ResponseMetadata", {}).get("RetryAttempts")
            attempts = retried + 1 if isinstance(retried, int) else 1
        tries = f"after {attempts} attempts" if attempts > 1 else "(not retried)"
        return ToolError(
            f"S3 {action} {key or '/'} failed {tries}: {exc}",
            where=self.describe(key),
            fix="check the bucket exists, the endpoint URL, the network and your AWS "
            "credentials, then rerun (nothing was half-written: see docs/pointers-and-audit.md)",
        )

    def get(self, key: str) -> StoredObject | None:
        from botocore.exceptions import BotoCoreError, ClientError

        # botocore retries the request, not the body read that follows it: a connection that
        # drops or stalls mid-body is retried here, within the same bound.
        for attempt in range(1, self.max_attempts + 1):
            try:
                resp = self._client.get_object(Bucket=self.bucket, Key=self._key(key))
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                    return None
                raise self._fail("GET", key, exc) from exc
            except BotoCoreError as exc:  # botocore already spent every attempt on it
                raise self._fail("GET", key, exc) from exc
            try:
                return StoredObject(data=resp["Body"].read(), etag=str(resp["ETag"]))
            except BotoCoreError as exc:
                if attempt == self.max_attempts or not _is_body_error(exc):
                    raise self._fail("GET", key, exc) from exc
                time.sleep(min(0.2 * 2**attempt, 5.0) * random.random())  # noqa: S311
        raise AssertionError("unreachable")  # pragma: no cover

    def size(self, key: str) -> int | None:
        """The object's size from a HEAD request (nothing read); ``None`` if there is none."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            head = self._client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
                return None
            raise self._fail("HEAD", key, exc) from exc
        except BotoCoreError as exc:
            raise self._fail("HEAD", key, exc) from exc
        return int(head["ContentLength"])

    def download_file(self, key: str, target: Path, *, max_bytes: int | None = None) -> str:
        """Stream the object into ``target`` (which must not exist) in 1 MiB chunks, hashing
        as it goes (memory flat in the object's size); its size is checked first."""
        from botocore.exceptions import BotoCoreError, ClientError

        limit = current_limits().max_model_file_bytes if max_bytes is None else max_bytes
        try:
            resp = self._client.get_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise ControlRefused(
                    f"{self.describe(key)} does not exist",
                    where=self.describe(key),
                    reason=RegistryRefusal.OBJECT_MISSING,
                ) from exc
            raise self._fail("GET", key, exc) from exc
        except BotoCoreError as exc:
            raise self._fail("GET", key, exc) from exc
        size = int(resp.get("ContentLength") or 0)
        if size > limit:
            resp["Body"].close()
            raise _too_large(self.describe(key), size, limit)
        digest = hashlib.sha256()
        written = 0
        try:
            with target.open("xb") as fh:
                for chunk in resp["Body"].iter_chunks(chunk_size=1 << 20):
                    written += len(chunk)
                    if written > limit:
                        raise _too_large(self.describe(key), written, limit)
                    digest.update(chunk)
                    fh.write(chunk)
        except BotoCoreError as exc:
            target.unlink(missing_ok=True)
            raise self._fail("GET", key, exc) from exc
        except BaseException:
            target.unlink(missing_ok=True)
            raise
        return digest.hexdigest()

    def _landed(self, key: str, data: bytes) -> bool:
        """After a retried conditional PUT was refused: did an earlier try of it land?

        A try whose response was lost (connection dropped, timeout after the write) may have
        written the object; the retry then fails its own precondition. The object holding
        exactly our bytes means it did (for a create-only key, identical bytes are the same
        immutable object whoever wrote them)."""
        current = self.get(key)
        return current is not None and current.data == data

    def put(self, key: str, data: bytes, *, replace_etag: str | None = None) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": self._key(key), "Body": data}
        if replace_etag is None:
            kwargs["IfNoneMatch"] = "*"
        else:
            kwargs["IfMatch"] = replace_etag
        try:
            self._client.put_object(**kwargs)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            if code in ("PreconditionFailed", "ConditionalRequestConflict", "412", "NoSuchKey"):
                retried = exc.response.get("ResponseMetadata", {}).get("RetryAttempts") or 0
                if retried and self._landed(key, data):
                    return  # an earlier try landed; its answer was lost on the way back
                raise WriteConflict(
                    f"{self.describe(key)} already exists or changed while this operation ran",
                    where=self.describe(key),
                    fix="registry objects are immutable; rerun to take the current state",
                    reason=RegistryRefusal.OBJECT_EXISTS
                    if replace_etag is None
                    else RegistryRefusal.OBJECT_CHANGED,
                ) from exc
            raise self._fail("PUT", key, exc) from exc
        except BotoCoreError as exc:
            raise self._fail("PUT", key, exc) from exc

    def list_keys(self, prefix: str) -> list[str]:
        from botocore.exceptions import BotoCoreError, ClientError

        full = (
            self._key(prefix.rstrip("/")) + "/"
            if prefix.strip("/")
            else (f"{self.prefix}/" if self.prefix else "")
        )
        strip = len(self.prefix) + 1 if self.prefix else 0
        keys: list[str] = []
        try:
            paginator = self._client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=full):
                keys.extend(obj["Key"][strip:] for obj in page.get("Contents", []))
        except (ClientError, BotoCoreError) as exc:
            raise self._fail("LIST", prefix, exc) from exc
        return sorted(keys)

    def rewritten_keys(self, prefix: str) -> list[str]:
        """Keys under ``prefix`` with a delete marker or more than one version.

        Object Lock (compliance mode) keeps every version, but anyone who can write may
        still hide an object behind a delete marker or put a new version over it; readers
        of write-once folders report such keys instead of trusting the latest version.
        """
        from botocore.exceptions import BotoCoreError, ClientError

        full = self._key(prefix.rstrip("/")) + "/"
        strip = len(self.prefix) + 1 if self.prefix else 0
        versions: dict[str, int] = {}
        marked: set[str] = set()
        try:
            paginator = self._client.get_paginator("list_object_versions")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=full):
                for v in page.get("Versions", []):
                    versions[v["Key"]] = versions.get(v["Key"], 0) + 1
                marked.update(m["Key"] for m in page.get("DeleteMarkers", []))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NotImplemented", "AccessDenied"):
                return []  # an S3 API without versions (or no right to list them)
            raise self._fail("LIST versions of", prefix, exc) from exc
        except BotoCoreError as exc:
            raise self._fail("LIST versions of", prefix, exc) from exc
        rewritten = marked | {k for k, n in versions.items() if n > 1}
        return sorted(k[strip:] for k in rewritten)

    def retention(self) -> str | None:
        """``"COMPLIANCE, 30 days default retention"`` for an Object Lock bucket, else None."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            conf = self._client.get_object_lock_configuration(Bucket=self.bucket)
        except ClientError:
            return None  # no Object Lock configuration (or no right to read it)
        except BotoCoreError as exc:
            raise self._fail("GET Object Lock configuration of", "", exc) from exc
        lock = conf.get("ObjectLockConfiguration", {})
        if lock.get("ObjectLockEnabled") != "Enabled":
            return None
        rule = lock.get("Rule", {}).get("DefaultRetention", {})
        if not rule:
            return "Object Lock enabled, no default retention"
        period = f"{rule['Days']} days" if rule.get("Days") else f"{rule.get('Years')} years"
        return f"Object Lock {rule.get('Mode')}, {period} default retention"


def open_registry(
    uri: str, *, s3_endpoint_url: str | None = None, session: Any | None = None
) -> Registry:
    """Open a registry from a directory path, a ``file://`` URI or ``s3://bucket/prefix``.

    ``session`` (S3 only): the boto3 Session whose credentials to use; ``None``: the default
    chain. A run never names the URI or the endpoint: see :func:`open_site_registry`.
    """
    if not uri:
        raise InputError("no registry given", fix="pass --registry or set SECMLOPS_REGISTRY")
    parsed = urlparse(uri)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise InputError(f"registry URI {uri!r} names no bucket", where="--registry")
        return S3Registry(parsed.netloc, parsed.path, endpoint_url=s3_endpoint_url, session=session)
    if parsed.scheme == "file":
        return LocalRegistry(Path(parsed.path))
    if parsed.scheme in ("", None) or len(parsed.scheme) == 1:  # plain path (or C:\ on Windows)
        return LocalRegistry(Path(uri).expanduser())
    raise InputError(
        f"unsupported registry URI scheme {parsed.scheme!r} in {uri!r}",
        where="--registry",
        fix="use a directory path, file:///path or s3://bucket/prefix",
    )


def open_site_registry(
    entry: RegistrySource, *, default_uri: str, env_endpoint: str | None
) -> Registry:
    """Open the registry a site entry (``sources.registries``) names, with its credentials.

    The URI is the entry's, else ``default_uri`` (the worker's: ``SECMLOPS_REGISTRY``, else
    the local one); for S3 the endpoint is the entry's, else ``env_endpoint`` (the worker's
    ``SECMLOPS_S3_ENDPOINT_URL``), else AWS. Both come from site configuration, never from a
    run, so the worker's credentials only go where the site sends them. For S3 the
    credentials are those of the entry's ``aws_profile`` (of the worker's AWS config; then
    the ambient ``AWS_*`` variables are *not* used), else boto3's default chain, in the
    entry's ``region``.

    ``InputError`` if the profile does not exist, or the entry sets S3 options but opens a
    local directory.

    Example::

        name, entry = select(policy.sources.registries, "prod", "registry")
        store = open_site_registry(entry, default_uri=settings.registry_uri(),
                                   env_endpoint=settings.s3_endpoint_url)
    """
    uri = entry.uri or default_uri
    is_s3 = urlparse(uri).scheme == "s3"
    if not is_s3:
        if entry.s3_endpoint_url or entry.aws_profile or entry.region:
            raise InputError(
                f"registry {redact_url(uri)} is a local directory, but its site entry sets S3 "
                "options (s3_endpoint_url, aws_profile, region)",
                where="policy sources.registries",
                fix="remove the S3 options from the entry, or give it an s3:// uri",
            )
        return open_registry(uri)
    session = None
    if entry.aws_profile or entry.region:
        import boto3
        from botocore.exceptions import BotoCoreError

        try:
            session = boto3.session.Session(
                profile_name=entry.aws_profile, region_name=entry.region
            )
        except BotoCoreError as exc:  # ProfileNotFound and friends
            raise InputError(
                f"registry {redact_url(uri)}: AWS profile {entry.aws_profile!r} cannot be "
                f"used ({exc})",
                where="policy sources.registries aws_profile",
                fix="add the profile to the worker's AWS config (~/.aws/config, "
                "AWS_CONFIG_FILE), or name one that exists",
            ) from exc
    return open_registry(
        uri, s3_endpoint_url=entry.s3_endpoint_url or env_endpoint, session=session
    )
