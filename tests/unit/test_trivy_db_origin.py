"""Which Trivy DB counts (issue 12 finding 3): the demo DB is labelled, deterministic and
pinned in the code; any other DB only by a digest the site pins; never by a label."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from secmlops.controls.image_scan import (
    DEMO_TRIVY_DB_SHA256,
    UPSTREAM_SOURCE_LABEL,
    ImageScanRefusal,
    ScanPolicy,
    TrivyDbInfo,
    db_accepted,
    db_refusal,
    trivy_db_origin,
)
from secmlops.demo.trivy_db import (
    DEMO_ADVISORIES,
    DEMO_SOURCE_LABEL,
    build_trivy_db_tree,
    load_advisories,
    seed_demo_trivy_db,
    write_bolt_bytes,
)
from secmlops.errors import InputError

ROOT = Path(__file__).resolve().parents[2]
OTHER = "cd" * 32


def _db(sha256: str, source: str = UPSTREAM_SOURCE_LABEL) -> TrivyDbInfo:
    return TrivyDbInfo(
        path=Path("/srv/trivy-cache/db/trivy.db"),
        sha256=sha256,
        schema_version=2,
        updated_at="2026-01-01T00:00:00Z",
        next_update=None,
        downloaded_at=None,
        source=source,
        advisory_count=None,
    )


def test_regenerating_the_demo_db_gives_the_pinned_digest(tmp_path: Path) -> None:
    """If this fails after editing demo_advisories.json, set DEMO_TRIVY_DB_SHA256 (in
    secmlops/controls/image_scan/db.py) to the digest printed here."""
    first = seed_demo_trivy_db(tmp_path / "a")
    second = seed_demo_trivy_db(tmp_path / "b")
    assert first.sha256 == second.sha256 == DEMO_TRIVY_DB_SHA256, first.sha256
    assert first.path.read_bytes() == second.path.read_bytes()
    # Deterministic in a fresh interpreter with another hash seed, too.
    code = (
        "from secmlops.demo.trivy_db import *; import hashlib; "
        "print(hashlib.sha256(write_bolt_bytes(build_trivy_db_tree("
        "load_advisories(DEMO_ADVISORIES)))).hexdigest())"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        env={**os.environ, "PYTHONHASHSEED": "12345"},
        check=True,
    )
    assert proc.stdout.strip() == DEMO_TRIVY_DB_SHA256


def test_the_demo_db_carries_its_label(tmp_path: Path) -> None:
    info = seed_demo_trivy_db(tmp_path)
    meta = json.loads((tmp_path / "db" / "metadata.json").read_text())
    assert meta["SecMLOpsSource"] == DEMO_SOURCE_LABEL == info.source
    assert meta["SecMLOpsDbSha256"] == DEMO_TRIVY_DB_SHA256
    assert info.cache_dir == tmp_path.resolve()
    assert info.to_json()["cacheDir"] == str(tmp_path.resolve())


def test_edited_demo_advisories_without_a_new_pin_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    advisories = json.loads(DEMO_ADVISORIES.read_text())
    advisories["advisories"] = advisories["advisories"][1:]
    edited = tmp_path / "demo_advisories.json"
    edited.write_text(json.dumps(advisories))
    monkeypatch.setattr("secmlops.demo.trivy_db.DEMO_ADVISORIES", edited)
    with pytest.raises(InputError, match="not the pinned demo DB") as excinfo:
        seed_demo_trivy_db(tmp_path / "cache", advisories_file=edited)
    assert excinfo.value.fix and "DEMO_TRIVY_DB_SHA256" in excinfo.value.fix
    # The same file as an explicit, non-demo source is a curated DB of unknown origin.
    monkeypatch.undo()
    other = seed_demo_trivy_db(tmp_path / "other", advisories_file=edited)
    assert trivy_db_origin(other.sha256) == "unpinned"
    data = write_bolt_bytes(build_trivy_db_tree(load_advisories(edited)))
    assert data == other.path.read_bytes()


def test_origin_comes_from_the_digest_alone() -> None:
    assert trivy_db_origin(DEMO_TRIVY_DB_SHA256) == "secmlops-demo"
    assert trivy_db_origin(DEMO_TRIVY_DB_SHA256, (DEMO_TRIVY_DB_SHA256,)) == "secmlops-demo"
    assert trivy_db_origin(OTHER, (OTHER,)) == "site-pinned"
    assert trivy_db_origin(OTHER) == "unpinned"
    assert trivy_db_origin(OTHER, ("0" * 64,)) == "unpinned"


@pytest.mark.parametrize(
    ("sha256", "source", "pins", "curated_ok", "expected"),
    [
        # Finding 3: no label, not pinned -> refused, whatever the curated-DB allowance.
        (OTHER, UPSTREAM_SOURCE_LABEL, (), False, ImageScanRefusal.DB_NOT_PINNED),
        (OTHER, UPSTREAM_SOURCE_LABEL, (), True, ImageScanRefusal.DB_NOT_PINNED),
        # A demo label on another DB earns nothing.
        (OTHER, DEMO_SOURCE_LABEL, (), True, ImageScanRefusal.DB_NOT_PINNED),
        # The site pins it: it counts (a curated label still needs the allowance).
        (OTHER, UPSTREAM_SOURCE_LABEL, (OTHER,), False, None),
        (OTHER, DEMO_SOURCE_LABEL, (OTHER,), False, ImageScanRefusal.CURATED_DB_NOT_ALLOWED),
        (OTHER, DEMO_SOURCE_LABEL, (OTHER,), True, None),
        # The demo DB: only with the allowance, even pinned, even with its label stripped.
        (DEMO_TRIVY_DB_SHA256, DEMO_SOURCE_LABEL, (), False, "curated"),
        (DEMO_TRIVY_DB_SHA256, UPSTREAM_SOURCE_LABEL, (DEMO_TRIVY_DB_SHA256,), False, "curated"),
        (DEMO_TRIVY_DB_SHA256, DEMO_SOURCE_LABEL, (), True, None),
    ],
)
def test_db_rule(
    sha256: str,
    source: str,
    pins: tuple[str, ...],
    curated_ok: bool,
    expected: ImageScanRefusal | str | None,
) -> None:
    if expected == "curated":
        expected = ImageScanRefusal.CURATED_DB_NOT_ALLOWED
    policy = ScanPolicy(unsafe_allow_curated_db=curated_ok)
    refusal = db_refusal(_db(sha256, source), policy=policy, trusted_db_sha256=pins)
    assert (refusal[0] if refusal else None) is expected
    assert db_accepted(_db(sha256, source), policy=policy, trusted_db_sha256=pins) is (
        expected is None
    )


def test_unpinned_refusal_names_the_db_and_how_to_pin_it() -> None:
    refusal = db_refusal(_db(OTHER), policy=ScanPolicy(), trusted_db_sha256=())
    assert refusal is not None
    reason, message = refusal
    assert reason is ImageScanRefusal.DB_NOT_PINNED
    assert "/srv/trivy-cache/db/trivy.db" in message and OTHER in message
    assert "sources.trivy_db.sha256" in message
