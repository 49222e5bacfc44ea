"""Write a Trivy vulnerability DB (bbolt file, schema 2) from pure Python, for air-gapped runs.

Trivy reads ``<cache_dir>/db/trivy.db`` (a bbolt key/value file) and
``<cache_dir>/db/metadata.json``. This module writes both from a list of advisories, with no
Go toolchain and no download, so the offline demo and the tests scan against a real DB in
Trivy's own format. A site with a real, pre-seeded Trivy DB (``trivy image --download-db-only``
on a connected machine, cache dir copied over) does not need this module at all; the scan
control reads either kind through :func:`secmlops.controls.image_scan.db.read_trivy_db_info`
(re-exported here with ``TrivyDbInfo`` and ``UPSTREAM_SOURCE_LABEL``).

The demo DB is labelled (``metadata.json`` ``SecMLOpsSource`` = :data:`DEMO_SOURCE_LABEL`)
and deterministic: the shipped advisories always give the same trivy.db bytes, whose sha256
is pinned in the control (:data:`DEMO_TRIVY_DB_SHA256`). The label is for people; what the
scan and the gate trust is the digest, and the demo DB counts only with
``ScanPolicy.unsafe_allow_curated_db``. Any other DB this module writes is of unknown origin
to the control until a site pins its digest (``sources.trivy_db.sha256``).

Example::

    info = seed_demo_trivy_db(Path(".cache/trivy"))
    assert info.sha256 == DEMO_TRIVY_DB_SHA256

The bbolt writer covers what a small DB needs: meta pages 0/1 (FNV-1a checksum), an empty
freelist, one leaf page per bucket (spanning overflow pages when large), nested buckets and
inline buckets. It does not write branch pages, so one bucket holds at most 65,535 keys.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import struct
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from secmlops._internal.atomic import write_atomic
from secmlops._internal.digests import sha256_bytes
from secmlops.controls.image_scan.db import (
    BOLT_MAGIC,
    BOLT_META_FIELDS,
    BOLT_PAGE_HEADER,
    BOLT_VERSION,
    DEMO_TRIVY_DB_SHA256,
    PAGE_SIZE,
    SCHEMA_VERSION,
    UPSTREAM_SOURCE_LABEL,
    TrivyDbInfo,
    fnv1a_64,
    read_trivy_db_info,
)
from secmlops.errors import InputError, ToolError

#: The label our own DBs carry, so the evidence says which DB a scan used.
DEMO_SOURCE_LABEL = (
    "secmlops offline demo DB (a curated subset of real advisories, "
    "secmlops/demo/advisories/demo_advisories.json; NOT a complete vulnerability feed)"
)
DEMO_ADVISORIES = Path(__file__).parent / "advisories" / "demo_advisories.json"

Severity = Literal["UNKNOWN", "LOW", "MEDIUM", "HIGH", "CRITICAL"]
SEVERITY_INT: dict[str, int] = {"UNKNOWN": 0, "LOW": 1, "MEDIUM": 2, "HIGH": 3, "CRITICAL": 4}

#: Trivy's advisory status values (trivy-db pkg/types Status).
UnfixedStatus = Literal[
    "affected", "under_investigation", "will_not_fix", "fix_deferred", "end_of_life"
]
STATUS_INT: dict[str, int] = {
    "affected": 2,
    "under_investigation": 4,
    "will_not_fix": 5,
    "fix_deferred": 6,
    "end_of_life": 7,
}

#: Data sources Trivy knows for the buckets we write; the ID selects VendorSeverity.
DATA_SOURCES: dict[str, dict[str, str]] = {
    "pip::GitHub Security Advisory Pip": {
        "ID": "ghsa",
        "Name": "GitHub Security Advisory Pip",
        "URL": "https://github.com/advisories?query=type%3Areviewed+ecosystem%3Apip",
    },
}
_DEBIAN_SOURCE = {
    "ID": "debian",
    "Name": "Debian Security Tracker",
    "URL": "https://salsa.debian.org/security-tracker-team/security-tracker",
}

_PIP_NAME_SEPARATORS = re.compile(r"[-_.]+")


def normalize_pip_name(name: str) -> str:
    """PEP 503 normalised distribution name, as Trivy stores pip advisories."""
    return _PIP_NAME_SEPARATORS.sub("-", name).lower()


def _is_language_bucket(bucket: str) -> bool:
    return "::" in bucket


class Cvss(BaseModel):
    """A CVSS v3 vector and score from one source (``nvd``, ``ghsa``, ...)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    v3_vector: str = Field(pattern=r"^CVSS:3\.[01]/", description="CVSS v3 vector string")
    v3_score: float = Field(ge=0.0, le=10.0, description="CVSS v3 base score")


class Advisory(BaseModel):
    """One advisory: a vulnerability affecting one package in one advisory bucket.

    OS buckets (``"debian 12"``) take the *source* package name and either a
    ``fixed_version`` or an unfixed ``status``. Language buckets
    (``"pip::GitHub Security Advisory Pip"``) take PEP 440 ``vulnerable_versions`` ranges
    and the ``patched_versions``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    bucket: str = Field(min_length=1, description='advisory bucket, e.g. "debian 12"')
    package: str = Field(min_length=1, description="source package (OS) or distribution name")
    vulnerability_id: str = Field(pattern=r"^(CVE-\d{4}-\d{4,}|GHSA(-[0-9a-z]{4}){3})$")
    fixed_version: str | None = None
    vendor_ids: tuple[str, ...] = Field(default=(), description="e.g. the GHSA or DSA ids")
    vulnerable_versions: tuple[str, ...] = ()
    patched_versions: tuple[str, ...] = ()
    status: UnfixedStatus | None = None
    severity: Severity
    vendor_severity: dict[str, Severity] = Field(default_factory=dict)
    title: str = ""
    description: str = ""
    cvss: dict[str, Cvss] = Field(default_factory=dict)
    cwe_ids: tuple[str, ...] = ()
    references: tuple[str, ...] = ()
    published_date: dt.datetime | None = None
    last_modified_date: dt.datetime | None = None

    @field_validator("published_date", "last_modified_date")
    @classmethod
    def _aware(cls, value: dt.datetime | None) -> dt.datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("dates must carry a timezone (use ...Z)")
        return value

    @model_validator(mode="after")
    def _one_kind_of_fix(self) -> Advisory:
        if _is_language_bucket(self.bucket):
            if not self.vulnerable_versions:
                raise ValueError(f"{self.bucket}: language advisories need vulnerable_versions")
            if self.fixed_version is not None or self.status is not None:
                raise ValueError(
                    f"{self.bucket}: use vulnerable_versions/patched_versions, "
                    "not fixed_version/status"
                )
        else:
            if (self.fixed_version is None) == (self.status is None):
                raise ValueError(
                    f"{self.bucket} {self.package} {self.vulnerability_id}: "
                    "set exactly one of fixed_version or status (unfixed)"
                )
            if self.vulnerable_versions or self.patched_versions:
                raise ValueError(f"{self.bucket}: OS advisories take fixed_version, not ranges")
        return self

    @property
    def bucket_package(self) -> str:
        """The package key as Trivy looks it up."""
        if self.bucket.startswith("pip::"):
            return normalize_pip_name(self.package)
        return self.package

    def advisory_value(self) -> dict[str, Any]:
        """The JSON value stored under bucket/package/vulnerability_id."""
        if _is_language_bucket(self.bucket):
            value: dict[str, Any] = {"VulnerableVersions": list(self.vulnerable_versions)}
            if self.patched_versions:
                value["PatchedVersions"] = list(self.patched_versions)
        elif self.fixed_version is not None:
            value = {"FixedVersion": self.fixed_version}
        else:
            assert self.status is not None  # noqa: S101 - guaranteed by _one_kind_of_fix
            value = {"Status": STATUS_INT[self.status]}
        if self.vendor_ids:
            value["VendorIDs"] = list(self.vendor_ids)
        return value

    def vulnerability_value(self) -> dict[str, Any]:
        """The JSON value stored under vulnerability/<id> (omitting empty fields, as Trivy)."""
        value: dict[str, Any] = {}
        if self.title:
            value["Title"] = self.title
        if self.description:
            value["Description"] = self.description
        value["Severity"] = self.severity
        if self.vendor_severity:
            value["VendorSeverity"] = {
                k: SEVERITY_INT[v] for k, v in sorted(self.vendor_severity.items())
            }
        if self.cvss:
            value["CVSS"] = {
                k: {"V3Vector": c.v3_vector, "V3Score": c.v3_score}
                for k, c in sorted(self.cvss.items())
            }
        if self.cwe_ids:
            value["CweIDs"] = list(self.cwe_ids)
        if self.references:
            value["References"] = list(self.references)
        if self.published_date:
            value["PublishedDate"] = _rfc3339(self.published_date)
        if self.last_modified_date:
            value["LastModifiedDate"] = _rfc3339(self.last_modified_date)
        return value


# --- bbolt ----------------------------------------------------------------------------------

_MAGIC = BOLT_MAGIC
_BOLT_VERSION = BOLT_VERSION
_BRANCH, _LEAF, _META, _FREELIST = 0x01, 0x02, 0x04, 0x10
_BUCKET_LEAF_FLAG = 0x01
_PAGE_HEADER = BOLT_PAGE_HEADER
_LEAF_ELEMENT = struct.Struct("<IIII")  # flags, pos, ksize, vsize
_BUCKET_HEADER = struct.Struct("<QQ")  # root pgid, sequence
_META_FIELDS = BOLT_META_FIELDS
_MAX_KEYS = 0xFFFF
_FREELIST_PGID = 2
_FIRST_DATA_PGID = 3

#: A bucket: keys map to a value (bytes) or a nested bucket.
BoltTree = Mapping[bytes, "bytes | BoltTree"]


def _leaf_page(pgid: int, items: list[tuple[bytes, bytes, int]]) -> bytes:
    """A leaf page (unpadded): header, element headers, then each key followed by its value."""
    if len(items) > _MAX_KEYS:
        raise InputError(
            f"a bucket with {len(items)} keys needs branch pages, which this writer omits",
            where="trivy_db bbolt writer",
            fix="split the advisories over fewer keys per bucket (<= 65,535)",
        )
    header_len = _PAGE_HEADER.size + _LEAF_ELEMENT.size * len(items)
    elements = bytearray()
    data = bytearray()
    for i, (key, value, flags) in enumerate(items):
        elem_offset = _PAGE_HEADER.size + _LEAF_ELEMENT.size * i
        pos = header_len + len(data) - elem_offset
        elements += _LEAF_ELEMENT.pack(flags, pos, len(key), len(value))
        data += key + value
    overflow = 0  # the caller fixes this when the page is placed on disk
    return _PAGE_HEADER.pack(pgid, _LEAF, len(items), overflow) + bytes(elements) + bytes(data)


class _BoltWriter:
    """Lays out buckets on pages; page ids 0-2 are the metas and the freelist."""

    def __init__(self) -> None:
        self.pages: list[bytes] = []  # data pages from page id 3, each padded, overflow included
        self.next_pgid = _FIRST_DATA_PGID

    def _place(self, leaf: bytes) -> int:
        pgid = self.next_pgid
        npages = max(1, -(-len(leaf) // PAGE_SIZE))
        _, flags, count, _ = _PAGE_HEADER.unpack_from(leaf)
        header = _PAGE_HEADER.pack(pgid, flags, count, npages - 1)
        body = header + leaf[_PAGE_HEADER.size :]
        self.pages.append(body.ljust(npages * PAGE_SIZE, b"\0"))
        self.next_pgid += npages
        return pgid

    def bucket_value(self, tree: BoltTree, *, root: bool = False) -> tuple[int, bytes]:
        """Write a bucket; return its root pgid (0 = inline) and its value in the parent."""
        items: list[tuple[bytes, bytes, int]] = []
        has_sub_buckets = False
        for key in sorted(tree):
            if not key:
                raise InputError("bbolt keys must not be empty", where="trivy_db bbolt writer")
            child = tree[key]
            if isinstance(child, bytes):
                items.append((key, child, 0))
            else:
                has_sub_buckets = True
                _, value = self.bucket_value(child)
                items.append((key, value, _BUCKET_LEAF_FLAG))
        leaf = _leaf_page(0, items)
        # bbolt inlines small buckets without sub-buckets into the parent's value.
        if not root and not has_sub_buckets and len(leaf) <= PAGE_SIZE // 4:
            return 0, _BUCKET_HEADER.pack(0, 0) + leaf
        pgid = self._place(leaf)
        return pgid, _BUCKET_HEADER.pack(pgid, 0)

    def file_bytes(self, tree: BoltTree) -> bytes:
        root_pgid, _ = self.bucket_value(tree, root=True)
        high_water = self.next_pgid
        metas = [self._meta_page(i, root_pgid, high_water) for i in (0, 1)]
        freelist = _PAGE_HEADER.pack(_FREELIST_PGID, _FREELIST, 0, 0).ljust(PAGE_SIZE, b"\0")
        return b"".join([*metas, freelist, *self.pages])

    @staticmethod
    def _meta_page(pgid: int, root_pgid: int, high_water: int) -> bytes:
        fields = _META_FIELDS.pack(
            _MAGIC, _BOLT_VERSION, PAGE_SIZE, 0, root_pgid, 0, _FREELIST_PGID, high_water, pgid
        )
        meta = fields + struct.pack("<Q", fnv1a_64(fields))
        return (_PAGE_HEADER.pack(pgid, _META, 0, 0) + meta).ljust(PAGE_SIZE, b"\0")


def write_bolt_bytes(tree: BoltTree) -> bytes:
    """Serialise a tree of buckets into the bytes of a bbolt file (deterministic)."""
    return _BoltWriter().file_bytes(tree)


# --- Trivy DB -------------------------------------------------------------------------------


def _rfc3339(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def _data_source(bucket: str) -> dict[str, str] | None:
    if bucket in DATA_SOURCES:
        return DATA_SOURCES[bucket]
    if bucket.startswith("debian "):
        return _DEBIAN_SOURCE
    return None


def build_trivy_db_tree(advisories: Iterable[Advisory]) -> dict[bytes, Any]:
    """The bucket tree Trivy expects: advisory buckets, ``vulnerability``, ``data-source``."""
    tree: dict[bytes, Any] = {}
    vulns: dict[str, dict[str, Any]] = {}
    sources: dict[bytes, bytes] = {}
    count = 0
    for adv in advisories:
        count += 1
        bucket = tree.setdefault(adv.bucket.encode(), {})
        pkg = bucket.setdefault(adv.bucket_package.encode(), {})
        key = adv.vulnerability_id.encode()
        if key in pkg:
            raise InputError(
                f"duplicate advisory {adv.bucket}/{adv.package}/{adv.vulnerability_id}",
                where="advisories",
                fix="list each (bucket, package, vulnerability) once",
            )
        pkg[key] = _json(adv.advisory_value())
        detail = adv.vulnerability_value()
        known = vulns.get(adv.vulnerability_id)
        if known is not None and known != detail:
            raise InputError(
                f"{adv.vulnerability_id} is described twice with different details",
                where="advisories",
                fix="give every advisory of one vulnerability the same title/severity/etc.",
            )
        vulns[adv.vulnerability_id] = detail
        source = _data_source(adv.bucket)
        if source is not None:
            sources[adv.bucket.encode()] = _json(source)
    if count == 0:
        raise InputError("no advisories given", where="trivy_db", fix="pass at least one advisory")
    for reserved in (b"vulnerability", b"data-source"):
        if reserved in tree:
            raise InputError(f"{reserved.decode()!r} is a reserved bucket name", where="advisories")
    # Trivy panics without the "vulnerability" bucket.
    tree[b"vulnerability"] = {k.encode(): _json(v) for k, v in vulns.items()}
    tree[b"data-source"] = sources
    return tree


def _as_utc(value: dt.datetime | None, default: dt.datetime) -> dt.datetime:
    if value is None:
        return default
    if value.tzinfo is None:
        raise InputError("timestamps must be timezone-aware", where="write_trivy_db")
    return value.astimezone(dt.UTC)


def write_trivy_db(
    cache_dir: Path,
    advisories: Iterable[Advisory],
    *,
    updated_at: dt.datetime | None = None,
    next_update: dt.datetime | None = None,
    source: str = DEMO_SOURCE_LABEL,
) -> TrivyDbInfo:
    """Write ``<cache_dir>/db/trivy.db`` and ``metadata.json`` (each via temp file + rename).

    ``next_update`` defaults to ``updated_at`` + 10 years: this DB is never refreshed from
    the network, and a future ``NextUpdate`` keeps Trivy from trying even without
    ``--skip-db-update``.
    """
    advisory_list = list(advisories)
    updated = _as_utc(updated_at, dt.datetime.now(dt.UTC).replace(microsecond=0))
    nxt = _as_utc(next_update, updated + dt.timedelta(days=3650))
    data = write_bolt_bytes(build_trivy_db_tree(advisory_list))
    db_dir = cache_dir / "db"
    write_atomic(db_dir / "trivy.db", data)
    metadata = {
        "Version": SCHEMA_VERSION,
        "NextUpdate": _rfc3339(nxt),
        "UpdatedAt": _rfc3339(updated),
        "DownloadedAt": _rfc3339(updated),
        # Extra keys: Trivy ignores them; our evidence records which DB was used.
        "SecMLOpsSource": source,
        "SecMLOpsAdvisoryCount": len(advisory_list),
        "SecMLOpsDbSha256": sha256_bytes(data),
    }
    write_atomic(db_dir / "metadata.json", json.dumps(metadata, indent=2).encode() + b"\n")
    return read_trivy_db_info(cache_dir)


def load_advisories(path: Path) -> list[Advisory]:
    """Load advisories from a JSON file (``{"advisories": [...]}``); ``InputError`` if invalid."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read advisories {path}: {exc}", where=str(path)) from exc
    entries = raw.get("advisories") if isinstance(raw, dict) else None
    if not isinstance(entries, list):
        raise InputError(f"{path} must hold an object with an 'advisories' list", where=str(path))
    try:
        return [Advisory.model_validate(e) for e in entries]
    except ValidationError as exc:
        raise InputError(f"invalid advisory in {path}: {exc}", where=str(path)) from exc


#: Fixed timestamp for the demo DB: the same advisories give the same metadata.
_DEMO_UPDATED_AT = dt.datetime(2025, 7, 1, tzinfo=dt.UTC)


def seed_demo_trivy_db(cache_dir: Path, *, advisories_file: Path = DEMO_ADVISORIES) -> TrivyDbInfo:
    """Make ``cache_dir`` hold the offline demo DB (idempotent: rewrites only if it differs).

    With the shipped advisories the DB's sha256 is :data:`DEMO_TRIVY_DB_SHA256`; if they were
    edited without updating that pin, this refuses (``InputError``) rather than seed a DB the
    scan would refuse as of unknown origin. Another ``advisories_file`` gives a curated DB that
    counts only once a site pins its digest.
    """
    advisories = load_advisories(advisories_file)
    expected = sha256_bytes(write_bolt_bytes(build_trivy_db_tree(advisories)))
    if advisories_file.resolve() == DEMO_ADVISORIES.resolve() and expected != DEMO_TRIVY_DB_SHA256:
        raise InputError(
            f"the demo advisories give a Trivy DB with sha256 {expected}, not the pinned "
            f"demo DB {DEMO_TRIVY_DB_SHA256}",
            where=str(DEMO_ADVISORIES),
            fix="if the advisories were changed on purpose, set DEMO_TRIVY_DB_SHA256 in "
            "secmlops/controls/image_scan/db.py to the new digest (run "
            "tests/unit/test_trivy_db_origin.py); otherwise restore the file",
        )
    try:
        info = read_trivy_db_info(cache_dir)
    except ToolError:
        info = None
    if info is not None and info.sha256 == expected and info.source == DEMO_SOURCE_LABEL:
        return info
    return write_trivy_db(
        cache_dir,
        advisories,
        updated_at=_DEMO_UPDATED_AT,
        next_update=_DEMO_UPDATED_AT + dt.timedelta(days=3650),
        source=DEMO_SOURCE_LABEL,
    )


# The Prefect task wrapper is tasks/image_scan.py (seed_trivy_db_task), next to the scan it feeds.

__all__ = [
    "DEMO_ADVISORIES",
    "DEMO_SOURCE_LABEL",
    "DEMO_TRIVY_DB_SHA256",
    "PAGE_SIZE",
    "SCHEMA_VERSION",
    "UPSTREAM_SOURCE_LABEL",
    "Advisory",
    "Cvss",
    "TrivyDbInfo",
    "build_trivy_db_tree",
    "fnv1a_64",
    "load_advisories",
    "normalize_pip_name",
    "read_trivy_db_info",
    "seed_demo_trivy_db",
    "write_bolt_bytes",
    "write_trivy_db",
]
