"""The bbolt writer and Trivy DB files, read back with an independent reader written here."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from secmlops._internal.digests import sha256_file
from secmlops.demo.trivy_db import (
    DEMO_ADVISORIES,
    DEMO_SOURCE_LABEL,
    UPSTREAM_SOURCE_LABEL,
    Advisory,
    build_trivy_db_tree,
    load_advisories,
    read_trivy_db_info,
    seed_demo_trivy_db,
    write_bolt_bytes,
    write_trivy_db,
)
from secmlops.errors import InputError, ToolError

# --- an independent bbolt reader (follows the on-disk format, not the writer's code) -------

PAGE = 4096


def _fnv1a(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) % (1 << 64)
    return h


def _read_leaf(file: bytes, page: bytes, offset: int) -> dict[bytes, Any]:
    """Read the leaf page at ``page[offset:]``; nested pages are looked up in ``file``."""
    _pgid, flags, count, _overflow = struct.unpack_from("<QHHI", page, offset)
    assert flags == 0x02, f"expected a leaf page, got flags {flags:#x}"
    out: dict[bytes, Any] = {}
    keys = []
    for i in range(count):
        elem = offset + 16 + 16 * i
        eflags, pos, ksize, vsize = struct.unpack_from("<IIII", page, elem)
        key = page[elem + pos : elem + pos + ksize]
        value = page[elem + pos + ksize : elem + pos + ksize + vsize]
        keys.append(key)
        if eflags & 1:
            root, _seq = struct.unpack_from("<QQ", value)
            out[key] = _read_leaf(file, value, 16) if root == 0 else _read_page(file, root)
        else:
            out[key] = bytes(value)
    assert keys == sorted(keys), "bbolt requires byte-sorted keys"
    return out


def _read_page(file: bytes, pgid: int) -> dict[bytes, Any]:
    page_id, _flags, _count, overflow = struct.unpack_from("<QHHI", file, pgid * PAGE)
    assert page_id == pgid
    return _read_leaf(file, file[pgid * PAGE : (pgid + 1 + overflow) * PAGE], 0)


def read_bolt(data: bytes) -> tuple[dict[bytes, Any], dict[str, int]]:
    """Validate both meta pages and return (root bucket tree, meta fields)."""
    assert len(data) % PAGE == 0
    metas = []
    for i in (0, 1):
        pid, flags, _c, _o = struct.unpack_from("<QHHI", data, i * PAGE)
        assert (pid, flags) == (i, 0x04)
        fields = data[i * PAGE + 16 : i * PAGE + 16 + 56]
        magic, version, psize, _f, root, _seq, freelist, hwm, txid = struct.unpack(
            "<IIIIQQQQQ", fields
        )
        (checksum,) = struct.unpack_from("<Q", data, i * PAGE + 16 + 56)
        assert magic == 0xED0CDAED and version == 2 and psize == PAGE
        assert checksum == _fnv1a(fields)
        metas.append({"root": root, "freelist": freelist, "hwm": hwm, "txid": txid})
    meta = max(metas, key=lambda m: m["txid"])
    assert meta["hwm"] * PAGE == len(data), "high-water mark must cover the file"
    _fid, fflags, fcount, _ = struct.unpack_from("<QHHI", data, meta["freelist"] * PAGE)
    assert (fflags, fcount) == (0x10, 0)
    return _read_page(data, meta["root"]), meta


# --- tests ---------------------------------------------------------------------------------


def test_bolt_round_trip_nested_inline_and_overflow() -> None:
    big_bucket = {f"key-{i:05d}".encode(): os.urandom(40) for i in range(300)}  # > 1 page
    tree: dict[bytes, Any] = {
        b"plain": {b"a": b"1", b"b": b"2"},  # small, no sub-buckets: inline
        b"nested": {b"inner": {b"x": b"y"}, b"value": b"v"},
        b"big": big_bucket,  # a leaf spanning overflow pages
        b"huge-value": {b"k": b"z" * 10_000},
        b"empty": {},
    }
    data = write_bolt_bytes(tree)
    back, _meta = read_bolt(data)
    assert back == tree
    # The big bucket needs overflow pages (the reader follows the header's overflow count).
    assert len(data) > 5 * PAGE


def test_bolt_bytes_are_deterministic() -> None:
    tree = {b"b": {b"2": b"x"}, b"a": {b"1": b"y"}}
    assert write_bolt_bytes(tree) == write_bolt_bytes(dict(reversed(tree.items())))


def test_bolt_rejects_empty_keys_and_too_many_keys() -> None:
    with pytest.raises(InputError):
        write_bolt_bytes({b"": {b"a": b"b"}})
    with pytest.raises(InputError, match="branch pages"):
        write_bolt_bytes({b"x": {str(i).encode(): b"" for i in range(70_000)}})


def _adv(**kw: Any) -> Advisory:
    base: dict[str, Any] = {
        "bucket": "pip::GitHub Security Advisory Pip",
        "package": "PyYAML",
        "vulnerability_id": "CVE-2020-14343",
        "vulnerable_versions": ["<5.4"],
        "patched_versions": ["5.4"],
        "severity": "CRITICAL",
        "vendor_severity": {"ghsa": "CRITICAL"},
        "title": "Improper Input Validation in PyYAML",
    }
    base.update(kw)
    return Advisory.model_validate(base)


def test_trivy_db_layout_matches_schema_2(tmp_path: Path) -> None:
    advisories = [
        _adv(),
        Advisory(
            bucket="debian 12",
            package="glibc",
            vulnerability_id="CVE-2010-4756",
            status="affected",
            severity="LOW",
            vendor_severity={"debian": "LOW"},
        ),
        Advisory(
            bucket="debian 12",
            package="openssl",
            vulnerability_id="CVE-2023-5363",
            fixed_version="3.0.11-1~deb12u2",
            severity="HIGH",
        ),
    ]
    info = write_trivy_db(tmp_path, advisories, source="unit test DB")
    tree, _ = read_bolt((tmp_path / "db" / "trivy.db").read_bytes())
    assert set(tree) == {
        b"pip::GitHub Security Advisory Pip",
        b"debian 12",
        b"vulnerability",
        b"data-source",
    }
    # pip names are PEP 503-normalised, values are compact JSON as Trivy stores them.
    pip = tree[b"pip::GitHub Security Advisory Pip"]
    assert json.loads(pip[b"pyyaml"][b"CVE-2020-14343"]) == {
        "VulnerableVersions": ["<5.4"],
        "PatchedVersions": ["5.4"],
    }
    debian = tree[b"debian 12"]
    assert json.loads(debian[b"glibc"][b"CVE-2010-4756"]) == {"Status": 2}
    assert json.loads(debian[b"openssl"][b"CVE-2023-5363"]) == {"FixedVersion": "3.0.11-1~deb12u2"}
    vuln = json.loads(tree[b"vulnerability"][b"CVE-2020-14343"])
    assert vuln["Severity"] == "CRITICAL" and vuln["VendorSeverity"] == {"ghsa": 4}
    assert json.loads(tree[b"data-source"][b"debian 12"])["ID"] == "debian"
    assert json.loads(tree[b"data-source"][b"pip::GitHub Security Advisory Pip"])["ID"] == "ghsa"

    meta = json.loads((tmp_path / "db" / "metadata.json").read_text())
    assert meta["Version"] == 2 and meta["DownloadedAt"] and meta["NextUpdate"] > meta["UpdatedAt"]
    assert info.sha256 == sha256_file(tmp_path / "db" / "trivy.db")
    assert info.source == "unit test DB" and info.advisory_count == 3
    assert info.to_json()["schemaVersion"] == 2
    assert not list((tmp_path / "db").glob("*.tmp")), "temp files must be renamed away"


def test_advisory_validation() -> None:
    with pytest.raises(ValidationError, match="exactly one"):
        Advisory(
            bucket="debian 12",
            package="glibc",
            vulnerability_id="CVE-2023-4911",
            fixed_version="2.36-9+deb12u3",
            status="affected",
            severity="HIGH",
        )
    with pytest.raises(ValidationError, match="vulnerable_versions"):
        _adv(vulnerable_versions=[])
    with pytest.raises(ValidationError):
        _adv(vulnerability_id="not-an-id")
    with pytest.raises(ValidationError):
        _adv(severity="SEVERE")
    with pytest.raises(ValidationError):
        _adv(unknown_field=1)


def test_conflicting_duplicate_details_refused() -> None:
    with pytest.raises(InputError, match="different details"):
        build_trivy_db_tree([_adv(), _adv(package="pyyaml-fork", severity="LOW")])
    with pytest.raises(InputError, match="duplicate"):
        build_trivy_db_tree([_adv(), _adv()])
    with pytest.raises(InputError, match="no advisories"):
        build_trivy_db_tree([])


def test_demo_advisories_are_plausible() -> None:
    advisories = load_advisories(DEMO_ADVISORIES)
    assert 20 <= len(advisories) <= 40
    ids = {(a.package, a.vulnerability_id) for a in advisories}
    for expected in [
        ("requests", "CVE-2023-32681"),
        ("pyyaml", "CVE-2020-14343"),
        ("glibc", "CVE-2023-4911"),
        ("openssh", "CVE-2024-6387"),
        ("glibc", "CVE-2010-4756"),
    ]:
        assert expected in ids
    # At least one unfixed LOW (shown below the threshold in the demo report).
    assert any(a.status and a.severity == "LOW" for a in advisories)


def test_seed_demo_db_is_idempotent(tmp_path: Path) -> None:
    first = seed_demo_trivy_db(tmp_path)
    mtime = first.path.stat().st_mtime_ns
    second = seed_demo_trivy_db(tmp_path)
    assert second == first
    assert first.path.stat().st_mtime_ns == mtime, "an up-to-date DB is not rewritten"
    assert first.source == DEMO_SOURCE_LABEL
    assert "demo" in first.source and "NOT a complete" in first.source


def test_read_info_fails_closed(tmp_path: Path) -> None:
    with pytest.raises(ToolError, match="missing"):
        read_trivy_db_info(tmp_path)
    info = seed_demo_trivy_db(tmp_path)
    meta_path = tmp_path / "db" / "metadata.json"
    meta = json.loads(meta_path.read_text())

    # Tampered DB: the recorded sha256 no longer matches.
    data = bytearray(info.path.read_bytes())
    data[-100] ^= 0xFF
    info.path.write_bytes(bytes(data))
    with pytest.raises(ToolError, match="does not match"):
        read_trivy_db_info(tmp_path)

    # Not a bbolt file at all.
    info.path.write_bytes(b"garbage" * 2000)
    with pytest.raises(ToolError, match="not a bbolt"):
        read_trivy_db_info(tmp_path)

    # Old schema.
    seed_demo_trivy_db(tmp_path)
    meta_path.write_text(json.dumps({**meta, "Version": 1}))
    with pytest.raises(ToolError, match="schema version 1"):
        read_trivy_db_info(tmp_path)
    meta_path.write_text("{not json")
    with pytest.raises(ToolError, match="not valid JSON"):
        read_trivy_db_info(tmp_path)

    # A DB trivy downloaded itself has no secmlops label: reported as upstream.
    upstream = {k: v for k, v in meta.items() if not k.startswith("SecMLOps")}
    meta_path.write_text(json.dumps(upstream))
    assert read_trivy_db_info(tmp_path).source == UPSTREAM_SOURCE_LABEL
