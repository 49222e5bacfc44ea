"""Which Trivy vulnerability DB a scan used: read and check ``<cache_dir>/db`` before trusting it.

Trivy reads ``<cache_dir>/db/trivy.db`` (a bbolt key/value file, schema 2) and
``<cache_dir>/db/metadata.json``. The scan reads both through :func:`read_trivy_db_info`
whether the DB came from ``trivy image --download-db-only`` on a connected machine or from
the offline demo writer (:mod:`secmlops.demo.trivy_db`, which builds on the constants here).

Which DB *counts* is decided by its content digest alone, never by a label in
``metadata.json`` (anyone who can write the cache dir can write a label):
:func:`trivy_db_origin` says whether a digest is the offline demo DB (pinned here, in the
code: :data:`DEMO_TRIVY_DB_SHA256`) or one the site pins (``sources.trivy_db.sha256``), and
the scan verdict and the deploy gate both judge it with :func:`db_refusal`.

Example::

    info = read_trivy_db_info(Path(".cache/trivy"))      # ToolError if missing or malformed
    print(info.sha256, info.source, info.updated_at, info.cache_dir)
    print(trivy_db_origin(info.sha256, site.trivy_db.sha256))   # secmlops-demo | site-pinned | ...
"""

from __future__ import annotations

import json
import struct
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

from secmlops._internal.digests import sha256_file
from secmlops.controls.image_scan.reasons import ImageScanRefusal
from secmlops.errors import ToolError

if TYPE_CHECKING:
    from secmlops.controls.image_scan.policy import ScanPolicy

#: Trivy's DB schema; metadata.json "Version" must equal it (1 is refused as too old).
SCHEMA_VERSION = 2
#: What read_trivy_db_info reports for a DB without a secmlops label (as Trivy downloads
#: it). The label is never a reason to trust a DB: only a pinned digest is.
UPSTREAM_SOURCE_LABEL = "trivy-db as downloaded by trivy (no secmlops label in metadata.json)"

#: sha256 of the offline demo DB's trivy.db as ``secmlops.demo.trivy_db.seed_demo_trivy_db``
#: writes it (deterministic: the same advisories give the same bytes). The only DB the code
#: itself vouches for, and it counts only with ``ScanPolicy.unsafe_allow_curated_db``.
#: tests/unit/test_trivy_db_origin.py regenerates the DB and checks this value.
DEMO_TRIVY_DB_SHA256: Final = "c7f186d7e4e5ea48cc43d1c40dd20eb9d45abdc22e0340fe8ac7c6cb8a86e382"

#: Where a DB's trust comes from: the demo DB pinned in the code, a digest the site pins in
#: ``sources.trivy_db.sha256``, or nowhere (refused).
DbOrigin = Literal["secmlops-demo", "site-pinned", "unpinned"]
DB_ORIGIN_DEMO: Final = "secmlops-demo"
DB_ORIGIN_SITE: Final = "site-pinned"
DB_ORIGIN_UNPINNED: Final = "unpinned"


def trivy_db_origin(sha256: str, trusted_db_sha256: Collection[str] = ()) -> DbOrigin:
    """Where trust in the DB with this trivy.db ``sha256`` comes from (its digest only).

    The demo DB's digest is always the demo's, even if a site lists it: it stays curated.
    """
    if sha256 == DEMO_TRIVY_DB_SHA256:
        return "secmlops-demo"
    if sha256 in trusted_db_sha256:
        return "site-pinned"
    return "unpinned"


# The bbolt on-disk constants the meta-page check needs (the demo writer uses them too).
PAGE_SIZE = 4096
BOLT_MAGIC = 0xED0CDAED
BOLT_VERSION = 2
BOLT_PAGE_HEADER = struct.Struct("<QHHI")  # id, flags, count, overflow
BOLT_META_FIELDS = struct.Struct("<IIIIQQQQQ")  # magic..txid (56 bytes), then the checksum u64


def fnv1a_64(data: bytes) -> int:
    """FNV-1a 64-bit hash, bbolt's meta page checksum."""
    h = 0xCBF29CE484222325
    for byte in data:
        h ^= byte
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


@dataclass(frozen=True)
class TrivyDbInfo:
    """Which Trivy DB a scan used: where, its sha256, schema, dates, and what it is."""

    path: Path
    sha256: str
    schema_version: int
    updated_at: str | None
    next_update: str | None
    downloaded_at: str | None
    source: str
    advisory_count: int | None

    @property
    def cache_dir(self) -> Path:
        """The Trivy cache dir holding this DB (``<cache_dir>/db/trivy.db``)."""
        return self.path.parent.parent

    def to_json(self) -> dict[str, Any]:
        """The DB description as recorded in the scan result."""
        return {
            "path": str(self.path),
            "cacheDir": str(self.cache_dir),
            "sha256": self.sha256,
            "schemaVersion": self.schema_version,
            "updatedAt": self.updated_at,
            "nextUpdate": self.next_update,
            "downloadedAt": self.downloaded_at,
            "source": self.source,
            "advisoryCount": self.advisory_count,
        }


def read_trivy_db_info(cache_dir: Path) -> TrivyDbInfo:
    """Describe the Trivy DB in ``cache_dir``; ``ToolError`` if it is missing or malformed.

    Fails closed: a scan without a usable DB would report "no vulnerabilities" and pass.
    """
    cache_dir = cache_dir.resolve()  # recorded in the evidence: say where, absolutely
    db_dir = cache_dir / "db"
    db_path, meta_path = db_dir / "trivy.db", db_dir / "metadata.json"
    fix = (
        "seed the DB (`seed_demo_trivy_db`, or copy a cache dir made by "
        "`trivy image --download-db-only` on a connected machine)"
    )
    for path in (db_path, meta_path):
        if not path.is_file():
            raise ToolError(f"Trivy DB file {path} is missing", where=str(cache_dir), fix=fix)
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ToolError(
            f"{meta_path} is not valid JSON: {exc}", where=str(meta_path), fix=fix
        ) from exc
    if not isinstance(meta, dict) or meta.get("Version") != SCHEMA_VERSION:
        version = meta.get("Version") if isinstance(meta, dict) else None
        raise ToolError(
            f"{meta_path} has schema version {version!r}; Trivy 0.76 needs {SCHEMA_VERSION}",
            where=str(meta_path),
            fix=fix,
        )
    head = db_path.read_bytes()[: 2 * PAGE_SIZE]
    if not _has_valid_meta_page(head):
        raise ToolError(
            f"{db_path} is not a bbolt database (no valid meta page)",
            where=str(db_path),
            fix=fix,
        )
    digest = sha256_file(db_path)
    source = str(meta.get("SecMLOpsSource") or UPSTREAM_SOURCE_LABEL)
    recorded = meta.get("SecMLOpsDbSha256")
    if recorded is not None and recorded != digest:
        raise ToolError(
            f"{db_path} does not match the sha256 recorded in metadata.json (modified?)",
            where=str(db_path),
            fix=fix,
            details={"recorded": recorded, "actual": digest},
        )
    count = meta.get("SecMLOpsAdvisoryCount")
    return TrivyDbInfo(
        path=db_path,
        sha256=digest,
        schema_version=SCHEMA_VERSION,
        updated_at=_opt_str(meta.get("UpdatedAt")),
        next_update=_opt_str(meta.get("NextUpdate")),
        downloaded_at=_opt_str(meta.get("DownloadedAt")),
        source=source,
        advisory_count=count if isinstance(count, int) else None,
    )


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _has_valid_meta_page(head: bytes) -> bool:
    """True if page 0 or page 1 is a bbolt meta page with a correct checksum."""
    for offset in (0, PAGE_SIZE):
        start = offset + BOLT_PAGE_HEADER.size
        block = head[start : start + BOLT_META_FIELDS.size + 8]
        if len(block) < BOLT_META_FIELDS.size + 8:
            continue
        fields = block[: BOLT_META_FIELDS.size]
        magic, version = struct.unpack_from("<II", fields)
        (checksum,) = struct.unpack_from("<Q", block, BOLT_META_FIELDS.size)
        if magic == BOLT_MAGIC and version == BOLT_VERSION and checksum == fnv1a_64(fields):
            return True
    return False


# --- which DB counts ----------------------------------------------------------------------


def db_refusal(
    db: TrivyDbInfo, *, policy: ScanPolicy, trusted_db_sha256: Collection[str]
) -> tuple[ImageScanRefusal, str] | None:
    """Why the Trivy DB ``db`` does not count under ``policy`` and the site's pins, or ``None``.

    The one rule, used by the scan (``evaluate_scan_policy``) and the deploy gate (which
    re-judges the recorded DB digest): only the digest decides, never a label.

    - the demo DB (:data:`~secmlops.controls.image_scan.db.DEMO_TRIVY_DB_SHA256`) counts only
      with ``unsafe_allow_curated_db``;
    - any other DB counts only when ``trusted_db_sha256`` (the site's
      ``sources.trivy_db.sha256``) lists its sha256, and if it carries a secmlops curated-DB
      label, also only with ``unsafe_allow_curated_db``.
    """
    origin = trivy_db_origin(db.sha256, trusted_db_sha256)
    if origin == "unpinned":
        return (
            ImageScanRefusal.DB_NOT_PINNED,
            f"the Trivy DB {db.path} (sha256 {db.sha256}) is of unknown origin: neither the "
            "demo DB nor pinned by the site; if you trust it, add its sha256 to "
            "sources.trivy_db.sha256 in the policy file",
        )
    curated = origin == "secmlops-demo" or db.source != UPSTREAM_SOURCE_LABEL
    if curated and not policy.unsafe_allow_curated_db:
        what = "the secmlops offline demo DB" if origin == "secmlops-demo" else repr(db.source)
        return (
            ImageScanRefusal.CURATED_DB_NOT_ALLOWED,
            f"the Trivy DB is not an upstream trivy-db but {what}; "
            "a curated DB holds a subset of advisories",
        )
    return None


def db_accepted(db: TrivyDbInfo, *, policy: ScanPolicy, trusted_db_sha256: Collection[str]) -> bool:
    """True if the DB counts under ``policy`` and the site's pins (see :func:`db_refusal`)."""
    return db_refusal(db, policy=policy, trusted_db_sha256=trusted_db_sha256) is None
