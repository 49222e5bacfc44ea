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
import fcntl
from abc import ABC, abstractmethod
from collections.abc import Iterator
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

    def read(self, key: str) -> bytes:
        """The bytes at ``key``; ``ControlRefused`` when missing (evidence that is not there)."""
        obj = self.get(key)
        if obj is None:
            raise ControlRefused(
                f"{self.describe(key)} does not exist",
                where=self.describe(key),
                reason=RegistryRefusal.OBJECT_MISSING,
            )
        return obj.data

    def exists(self, key: str) -> bool:
        return self.get(key) is not None

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
                data = path.read_bytes()
                self.put(f"{prefix.rstrip('/')}/{rel}", data)
                uploaded[rel] = sha256_bytes(data)
        return uploaded

    def download_tree(self, prefix: str, local_dir: Path) -> list[str]:
        """Download every object under ``prefix`` into ``local_dir``; return relative paths."""
        base = prefix.rstrip("/") + "/"
        rels = []
        for key in self.list_keys(base):
            rel = key[len(base) :]
            target = local_dir / rel
            if not target.resolve().is_relative_to(local_dir.resolve()):
                raise ControlRefused(
                    f"registry key {key} escapes the download folder",
                    where=key,
                    reason=RegistryRefusal.KEY_ESCAPES_FOLDER,
                )
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(self.read(key))
            rels.append(rel)
        return rels


def _is_internal(path: Path, root: Path) -> bool:
    """The registry's lock file, or a temp file of an atomic write still in flight."""
    return path == root / ".lock" or (path.name.startswith(".") and path.name.endswith(".tmp"))


class LocalRegistry(Registry):
    """A registry in a local directory. Pointer swaps hold an advisory lock; writes are atomic."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.uri = str(self.root)

    def _path(self, key: str) -> Path:
        return self.root / _check_key(key)

    def describe(self, key: str) -> str:
        return str(self._path(key))

    def get(self, key: str) -> StoredObject | None:
        path = self._path(key)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except IsADirectoryError:
            return None
        except OSError as exc:
            raise ToolError(f"cannot read {path}: {exc.strerror}", where=str(path)) from exc
        return StoredObject(data=data, etag=sha256_bytes(data))

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

    def list_keys(self, prefix: str) -> list[str]:
        base = self.root / prefix.rstrip("/") if prefix.strip("/") else self.root
        if not base.is_dir():
            return []
        # List what S3 would list: every file, dotfiles included (a hidden file added to a
        # model must be seen by the gate). Only our own lock and in-flight temp files are skipped.
        return sorted(
            p.relative_to(self.root).as_posix()
            for p in base.rglob("*")
            if p.is_file() and not _is_internal(p, self.root)
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
    ) -> None:
        """``session``: the boto3 Session whose credentials (and region) to use; ``None``:
        boto3's default chain."""
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.uri = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self.endpoint_url = endpoint_url
        self._client: Any = self._make_client(session)

    def _make_client(self, session: Any | None) -> Any:
        import boto3
        from botocore.config import Config

        config = Config(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=10)
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
        return ToolError(
            f"S3 {action} of {self.describe(key)} failed: {exc}",
            where=self.describe(key),
            fix="check the bucket exists, the endpoint URL and your AWS credentials",
        )

    def get(self, key: str) -> StoredObject | None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            resp = self._client.get_object(Bucket=self.bucket, Key=self._key(key))
            return StoredObject(data=resp["Body"].read(), etag=str(resp["ETag"]))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise self._fail("read", key, exc) from exc
        except BotoCoreError as exc:
            raise self._fail("read", key, exc) from exc

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
                raise WriteConflict(
                    f"{self.describe(key)} already exists or changed while this operation ran",
                    where=self.describe(key),
                    fix="registry objects are immutable; rerun to take the current state",
                    reason=RegistryRefusal.OBJECT_EXISTS
                    if replace_etag is None
                    else RegistryRefusal.OBJECT_CHANGED,
                ) from exc
            raise self._fail("write", key, exc) from exc
        except BotoCoreError as exc:
            raise self._fail("write", key, exc) from exc

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
            raise self._fail("list", prefix, exc) from exc
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
            raise self._fail("list versions", prefix, exc) from exc
        except BotoCoreError as exc:
            raise self._fail("list versions", prefix, exc) from exc
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
            raise self._fail("read Object Lock configuration of", "", exc) from exc
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
