"""ScanPolicy construction rules and enforce_scan_policy decisions on constructed results."""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from secmlops._internal.toolrun import tool_env
from secmlops.controls.image_scan import (
    OFFLINE_FLAGS,
    UPSTREAM_SOURCE_LABEL,
    AllowedVulnerability,
    Finding,
    ImageScanRefusal,
    ImageScanResult,
    ScanPolicy,
    ScanVerdict,
    TrivyDbInfo,
    enforce_scan_policy,
    enforce_scan_predicate,
    evaluate_scan_policy,
    image_scan_statement,
    pinned_trivy_sha256,
    scan_predicate_verdict,
    trivy_invocation,
)
from secmlops.demo.trivy_db import DEMO_SOURCE_LABEL
from secmlops.errors import ControlRefused, InputError
from secmlops.evidence.statements import PREDICATE_VULNS

TODAY = dt.date.today()
DIGEST = "ab" * 32
#: The site pins the test DB (sources.trivy_db.sha256): it counts (issue 12 finding 3).
PINNED = ("cd" * 32,)


def _db(source: str = UPSTREAM_SOURCE_LABEL, updated: str = "2026-01-01T00:00:00Z") -> TrivyDbInfo:
    return TrivyDbInfo(
        path=Path("/cache/db/trivy.db"),
        sha256="cd" * 32,
        schema_version=2,
        updated_at=updated,
        next_update=None,
        downloaded_at=updated,
        source=source,
        advisory_count=None,
    )


def _finding(vid: str, pkg: str, sev: Any, fixed: str = "9.9", **kw: Any) -> Finding:
    return Finding(
        id=vid,
        package=pkg,
        installed="1.0",
        fixed=fixed,
        status="fixed" if fixed else "affected",
        severity=sev,
        title=f"{vid} title",
        target="img (debian 12.7)",
        kind=kw.pop("kind", "os-pkgs"),
        **kw,
    )


def _result(*findings: Finding, db: TrivyDbInfo | None = None, **kw: Any) -> ImageScanResult:
    fields: dict[str, Any] = {
        "target": "img.tar",
        "artifact_name": "img.tar",
        "artifact_type": "container_image",
        "image_digest": DIGEST,
        "archive_sha256": "ef" * 32,
        "repo_tags": ("secmlops/serving:demo",),
        "os_family": "debian",
        "os_name": "12.7",
        "os_eosl": False,
        "packages_scanned": 10,
        "trivy_version": "0.76.0",
        "trivy_sha256": pinned_trivy_sha256(),
        "db": db or _db(),
        "scanners": ("vuln", "secret"),
        "findings": tuple(findings),
        "report_sha256": "01" * 32,
        "scan_started_at": "2026-11-25T00:00:00Z",
        "scan_finished_at": "2026-11-25T00:00:01Z",
        "raw_report": b"{}",
    }
    fields.update(kw)
    return ImageScanResult(**fields)


def _allow(vid: str, days: int = 30, **kw: Any) -> AllowedVulnerability:
    return AllowedVulnerability(
        id=vid,
        reason="not reachable: we never call it",
        expires=TODAY + dt.timedelta(days=days),
        **kw,
    )


# --- construction ----------------------------------------------------------------------------


def test_defaults_are_strict() -> None:
    policy = ScanPolicy()
    assert policy.fail_on == ("CRITICAL", "HIGH")
    assert policy.offline and not policy.ignore_unfixed and not policy.unsafe_report_only
    assert policy.timeout_seconds == 600 and "vuln" in policy.scanners


def test_empty_fail_on_refused_unless_unsafe(caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(ValidationError, match="fail_on is empty"):
        ScanPolicy(fail_on=())
    with caplog.at_level(logging.WARNING):
        policy = ScanPolicy(fail_on=(), unsafe_report_only=True)
    assert policy.unsafe_report_only
    assert "unsafe_report_only" in caplog.text


@pytest.mark.parametrize(
    "kwargs",
    [
        {"fail_on": ("HIGH", "HIGH")},
        {"fail_on": ("SEVERE",)},
        {"scanners": ("secret",)},
        {"timeout_seconds": 0},
        {"surprise": True},
        {"allowed": (_allow("CVE-2024-0001"), _allow("CVE-2024-0001"))},
        {"allowed": (_allow("CVE-2024-0001", days=400),)},
    ],
)
def test_bad_policies_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        ScanPolicy(**kwargs)


def test_policy_is_frozen() -> None:
    policy = ScanPolicy()
    with pytest.raises(ValidationError):
        policy.ignore_unfixed = True  # type: ignore[misc]


@pytest.mark.parametrize("reason", ["", "   ", "x"])
def test_allow_entry_needs_a_reason(reason: str) -> None:
    with pytest.raises(ValidationError, match="reason"):
        AllowedVulnerability(id="CVE-2024-6387", reason=reason, expires=TODAY)
    with pytest.raises(ValidationError):
        AllowedVulnerability(id="CVE-2024-6387", expires=TODAY)  # type: ignore[call-arg]


# --- decisions ----------------------------------------------------------------------------


def test_clean_result_passes_with_low_findings_visible() -> None:
    low = _finding("CVE-2010-4756", "libc6", "LOW", fixed="")
    verdict = enforce_scan_policy(_result(low), ScanPolicy(), trusted_db_sha256=PINNED)
    assert verdict.passed and not verdict.blocking
    assert verdict.below_threshold == (low,)
    assert verdict.counts["LOW"] == 1 and verdict.counts["CRITICAL"] == 0


def test_blocking_findings_refused_with_ids_and_verdict() -> None:
    crit = _finding("CVE-2020-14343", "pyyaml", "CRITICAL", fixed="5.4", kind="lang-pkgs")
    high = _finding("CVE-2023-5363", "libssl3", "HIGH", fixed="3.0.11-1~deb12u2")
    med = _finding("CVE-2023-32681", "requests", "MEDIUM", fixed="2.31.0")
    with pytest.raises(ControlRefused) as excinfo:
        enforce_scan_policy(_result(crit, high, med), ScanPolicy(), trusted_db_sha256=PINNED)
    err = excinfo.value
    assert err.exit_code == 1
    assert err.reason is ImageScanRefusal.BLOCKING_VULNERABILITY
    assert isinstance(err.result, ScanVerdict) and err.result.blocking == (crit, high)
    assert err.details["reasons"] == ["blocking_vulnerability"]
    assert "CVE-2020-14343 pyyaml 1.0 -> 5.4 (CRITICAL)" in err.message
    assert "CVE-2023-5363 libssl3" in err.message
    assert "CVE-2023-32681" not in err.message  # MEDIUM does not block by default
    assert err.fix and "fixed version" in err.fix and "ScanPolicy.allowed" in err.fix
    verdict = err.details["verdict"]
    assert verdict["passed"] is False
    assert {f["id"] for f in verdict["blocking"]} == {"CVE-2020-14343", "CVE-2023-5363"}
    # MEDIUM blocks once the policy says so.
    with pytest.raises(ControlRefused, match="CVE-2023-32681") as excinfo:
        enforce_scan_policy(_result(med), ScanPolicy(fail_on=("MEDIUM",)), trusted_db_sha256=PINNED)
    assert excinfo.value.reason is ImageScanRefusal.BLOCKING_VULNERABILITY


def test_active_allow_entry_applies_with_reason() -> None:
    high = _finding("CVE-2024-6387", "openssh-client", "HIGH")
    policy = ScanPolicy(allowed=(_allow("CVE-2024-6387"), _allow("CVE-2099-0001")))
    verdict = enforce_scan_policy(_result(high), policy, trusted_db_sha256=PINNED)
    assert verdict.passed
    assert [a.finding.id for a in verdict.allowed] == ["CVE-2024-6387"]
    assert verdict.allowed[0].reason == "not reachable: we never call it"
    assert verdict.unused_allow_entries == ("CVE-2099-0001",)
    # The reason lands in the evidence.
    statement = image_scan_statement(_result(high), verdict)
    assert statement["predicate"]["verdict"]["allowed"][0]["reason"]


def test_expired_allow_entry_does_not_apply_and_is_reported() -> None:
    high = _finding("CVE-2024-6387", "openssh-client", "HIGH")
    expired = AllowedVulnerability(
        id="CVE-2024-6387", reason="temporary, until the rebuild", expires=TODAY - dt.timedelta(1)
    )
    policy = ScanPolicy(allowed=(expired,))  # constructing with an expired entry is fine
    verdict = evaluate_scan_policy(_result(high), policy, trusted_db_sha256=PINNED)
    assert not verdict.passed and verdict.blocking == (high,)
    assert verdict.expired_allow_entries == ("CVE-2024-6387",)
    assert verdict.reasons == (ImageScanRefusal.EXPIRED_ALLOWANCE,)
    with pytest.raises(ControlRefused, match="expired allow entries") as excinfo:
        enforce_scan_policy(_result(high), policy, trusted_db_sha256=PINNED)
    assert excinfo.value.reason is ImageScanRefusal.EXPIRED_ALLOWANCE
    # It still applied the day it expired.
    assert enforce_scan_policy(
        _result(high), policy, today=expired.expires, trusted_db_sha256=PINNED
    ).passed


def test_package_scoped_allow_entry() -> None:
    libc = _finding("CVE-2023-4911", "libc6", "HIGH")
    libc_bin = _finding("CVE-2023-4911", "libc-bin", "HIGH")
    policy = ScanPolicy(allowed=(_allow("CVE-2023-4911", package="libc6"),))
    verdict = evaluate_scan_policy(_result(libc, libc_bin), policy, trusted_db_sha256=PINNED)
    assert verdict.blocking == (libc_bin,)


def test_ignore_unfixed() -> None:
    unfixed = _finding("CVE-2025-0001", "zlib1g", "CRITICAL", fixed="")
    fixed = _finding("CVE-2025-0002", "zlib1g", "CRITICAL")
    secret = _finding("aws-access-key-id", "", "CRITICAL", fixed="", kind="secret")
    assert not evaluate_scan_policy(_result(unfixed), ScanPolicy(), trusted_db_sha256=PINNED).passed
    verdict = evaluate_scan_policy(
        _result(unfixed, fixed, secret), ScanPolicy(ignore_unfixed=True), trusted_db_sha256=PINNED
    )
    assert verdict.ignored_unfixed == (unfixed,)
    # A secret has no "fix" to wait for: ignore_unfixed never hides it.
    assert verdict.blocking == (fixed, secret)
    assert verdict.reasons == (
        ImageScanRefusal.BLOCKING_VULNERABILITY,
        ImageScanRefusal.LEAKED_SECRET,
    )
    only_secret = evaluate_scan_policy(_result(secret), ScanPolicy(), trusted_db_sha256=PINNED)
    assert only_secret.reason is ImageScanRefusal.LEAKED_SECRET


def test_curated_db_needs_explicit_unsafe_opt_in() -> None:
    result = _result(db=_db(source=DEMO_SOURCE_LABEL))
    with pytest.raises(ControlRefused, match="not an upstream trivy-db") as excinfo:
        enforce_scan_policy(result, ScanPolicy(), trusted_db_sha256=PINNED)
    assert excinfo.value.reason is ImageScanRefusal.CURATED_DB_NOT_ALLOWED
    assert excinfo.value.fix and "unsafe_allow_curated_db" in excinfo.value.fix
    assert enforce_scan_policy(
        result, ScanPolicy(unsafe_allow_curated_db=True), trusted_db_sha256=PINNED
    ).passed


def test_eosl_nothing_scanned_and_stale_db_block() -> None:
    with pytest.raises(ControlRefused, match="end of life") as excinfo:
        enforce_scan_policy(_result(os_eosl=True), ScanPolicy(), trusted_db_sha256=PINNED)
    assert excinfo.value.reason is ImageScanRefusal.END_OF_LIFE_OS
    assert excinfo.value.fix and "supported OS release" in excinfo.value.fix
    assert enforce_scan_policy(
        _result(os_eosl=True), ScanPolicy(fail_on_eosl=False), trusted_db_sha256=PINNED
    ).passed
    with pytest.raises(ControlRefused, match="no packages") as excinfo:
        enforce_scan_policy(_result(packages_scanned=0), ScanPolicy(), trusted_db_sha256=PINNED)
    assert excinfo.value.reason is ImageScanRefusal.NO_PACKAGES_FOUND
    old = _result(db=_db(updated="2020-01-01T00:00:00Z"))
    with pytest.raises(ControlRefused, match="days old") as excinfo:
        enforce_scan_policy(old, ScanPolicy(max_db_age_days=30), trusted_db_sha256=PINNED)
    assert excinfo.value.reason is ImageScanRefusal.STALE_DB
    assert excinfo.value.fix and "Refresh the Trivy DB" in excinfo.value.fix
    assert enforce_scan_policy(old, ScanPolicy(), trusted_db_sha256=PINNED).passed
    unknown_age = _result(db=_db(updated=""))
    assert evaluate_scan_policy(
        unknown_age, ScanPolicy(max_db_age_days=30), trusted_db_sha256=PINNED
    ).reasons == (ImageScanRefusal.STALE_DB,)


def test_several_reasons_all_recorded_first_one_leads() -> None:
    crit = _finding("CVE-2020-14343", "pyyaml", "CRITICAL")
    result = _result(crit, os_eosl=True, db=_db(source=DEMO_SOURCE_LABEL))
    verdict = evaluate_scan_policy(result, ScanPolicy(), trusted_db_sha256=PINNED)
    assert verdict.reasons == (
        ImageScanRefusal.BLOCKING_VULNERABILITY,
        ImageScanRefusal.END_OF_LIFE_OS,
        ImageScanRefusal.CURATED_DB_NOT_ALLOWED,
    )
    with pytest.raises(ControlRefused) as excinfo:
        enforce_scan_policy(result, ScanPolicy(), trusted_db_sha256=PINNED)
    assert excinfo.value.reason is ImageScanRefusal.BLOCKING_VULNERABILITY
    assert excinfo.value.result == verdict


def test_clean_verdict_has_no_reason() -> None:
    verdict = evaluate_scan_policy(_result(), ScanPolicy(), trusted_db_sha256=PINNED)
    assert verdict.passed and verdict.reasons == () and verdict.reason is None


def test_report_only_never_blocks_but_records_it() -> None:
    crit = _finding("CVE-2020-14343", "pyyaml", "CRITICAL")
    verdict = enforce_scan_policy(
        _result(crit), ScanPolicy(unsafe_report_only=True), trusted_db_sha256=PINNED
    )
    assert verdict.passed and verdict.report_only and verdict.blocking == (crit,)
    # What would have blocked is still named.
    assert verdict.reasons == (ImageScanRefusal.BLOCKING_VULNERABILITY,)
    assert verdict.to_json()["reportOnly"] is True


def test_statement_shape() -> None:
    low = _finding("CVE-2010-4756", "libc6", "LOW", fixed="", severity_source="debian")
    result = _result(low, low)
    verdict = enforce_scan_policy(result, ScanPolicy(), trusted_db_sha256=PINNED)
    st = image_scan_statement(result, verdict)
    assert st["predicateType"] == PREDICATE_VULNS
    assert st["subject"] == [{"name": "secmlops/serving:demo", "digest": {"sha256": DIGEST}}]
    pred = st["predicate"]
    assert pred["scanner"]["version"] == "0.76.0"
    assert pred["scanner"]["db"]["lastUpdate"] == "2026-01-01T00:00:00Z"
    assert pred["scanner"]["db"]["digest"] == {"sha256": "cd" * 32}
    assert pred["scanner"]["result"][0]["id"] == "CVE-2010-4756"
    assert pred["scanner"]["result"][0]["severity"] == [{"method": "debian", "score": "LOW"}]
    assert len(pred["scanner"]["result"][0]["annotations"]) == 2
    assert set(pred["metadata"]) == {"scanStartedOn", "scanFinishedOn"}
    assert pred["verdict"]["passed"] is True and pred["report"]["sha256"] == "01" * 32
    other = evaluate_scan_policy(
        _result(image_digest="00" * 32), ScanPolicy(), trusted_db_sha256=PINNED
    )
    with pytest.raises(InputError):
        image_scan_statement(result, other)


def test_stored_evidence_is_rejudged_against_the_current_policy() -> None:
    med = _finding("CVE-2023-32681", "requests", "MEDIUM", fixed="2.31.0", kind="lang-pkgs")
    low = _finding("CVE-2010-4756", "libc6", "LOW", fixed="")
    result = _result(med, low)
    verdict = enforce_scan_policy(result, ScanPolicy(), trusted_db_sha256=PINNED)
    assert verdict.summary().startswith("passed, 0 blocking")
    predicate = image_scan_statement(result, verdict)["predicate"]
    assert scan_predicate_verdict(predicate, ScanPolicy(), trusted_db_sha256=PINNED) is None
    stricter = scan_predicate_verdict(
        predicate, ScanPolicy(fail_on=("HIGH", "MEDIUM")), trusted_db_sha256=PINNED
    )
    assert stricter and "CVE-2023-32681 requests 1.0 -> 2.31.0 (MEDIUM)" in stricter
    curated = image_scan_statement(
        _result(db=_db(source=DEMO_SOURCE_LABEL)),
        evaluate_scan_policy(result, ScanPolicy(), trusted_db_sha256=PINNED),
    )
    assert "not an upstream trivy-db" in (
        scan_predicate_verdict(curated["predicate"], ScanPolicy(), trusted_db_sha256=PINNED) or ""
    )
    assert scan_predicate_verdict(
        {"scanner": {}}, ScanPolicy(), trusted_db_sha256=PINNED
    )  # malformed never passes
    # The same judgement with a reason, for the gate.
    assert enforce_scan_predicate(predicate, ScanPolicy(), trusted_db_sha256=PINNED).passed
    for pred, policy, reason in (
        (
            predicate,
            ScanPolicy(fail_on=("HIGH", "MEDIUM")),
            ImageScanRefusal.BLOCKING_VULNERABILITY,
        ),
        (curated["predicate"], ScanPolicy(), ImageScanRefusal.CURATED_DB_NOT_ALLOWED),
        ({"scanner": {}}, ScanPolicy(), ImageScanRefusal.MALFORMED_EVIDENCE),
    ):
        with pytest.raises(ControlRefused) as excinfo:
            enforce_scan_predicate(pred, policy, trusted_db_sha256=PINNED)
        assert excinfo.value.reason is reason
        assert excinfo.value.message == scan_predicate_verdict(
            pred, policy, trusted_db_sha256=PINNED
        )


def test_stored_evidence_must_cover_every_scanner_the_policy_requires() -> None:
    vuln_only = _result(scanners=("vuln",))
    predicate = image_scan_statement(
        vuln_only,
        enforce_scan_policy(vuln_only, ScanPolicy(scanners=("vuln",)), trusted_db_sha256=PINNED),
    )["predicate"]
    # Clean findings, but the secret scanner never ran: the default policy wants it.
    assert (
        scan_predicate_verdict(predicate, ScanPolicy(scanners=("vuln",)), trusted_db_sha256=PINNED)
        is None
    )
    reason = scan_predicate_verdict(predicate, ScanPolicy(), trusted_db_sha256=PINNED)
    assert reason and "missing ['secret']" in reason
    with pytest.raises(ControlRefused) as excinfo:
        enforce_scan_predicate(predicate, ScanPolicy(), trusted_db_sha256=PINNED)
    assert excinfo.value.reason is ImageScanRefusal.MISSING_SCANNERS
    full = _result()
    full_pred = image_scan_statement(
        full, enforce_scan_policy(full, ScanPolicy(), trusted_db_sha256=PINNED)
    )["predicate"]
    assert scan_predicate_verdict(full_pred, ScanPolicy(), trusted_db_sha256=PINNED) is None
    # Scanners not recorded at all (or recorded ambiguously) never pass.
    for params in (
        ["image", "--format", "json"],
        ["image", "--scanners"],
        ["image", "--scanners", ""],
        ["image", "--scanners", "vuln,secret", "--scanners", "vuln"],
    ):
        stripped = {**full_pred, "invocation": {**full_pred["invocation"], "parameters": params}}
        assert scan_predicate_verdict(
            stripped, ScanPolicy(scanners=("vuln",)), trusted_db_sha256=PINNED
        )
        with pytest.raises(ControlRefused) as excinfo:
            enforce_scan_predicate(
                stripped, ScanPolicy(scanners=("vuln",)), trusted_db_sha256=PINNED
            )
        assert excinfo.value.reason in (
            ImageScanRefusal.MISSING_SCANNERS,
            ImageScanRefusal.MALFORMED_EVIDENCE,
        )


# --- the trivy command ----------------------------------------------------------------------


def test_invocation_is_offline_and_passes_no_aws_credentials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tarfile

    archive = tmp_path / "img.tar"
    with tarfile.open(archive, "w"):
        pass
    inv = trivy_invocation(archive, cache_dir=tmp_path / "cache", policy=ScanPolicy())
    argv = list(inv.argv)
    for flag in OFFLINE_FLAGS:
        assert flag in argv
    assert argv[argv.index("--input") + 1] == str(archive)
    assert argv[argv.index("--format") + 1] == "json" and "--quiet" in argv
    assert argv[argv.index("--cache-backend") + 1] == "memory"

    assert "--offline-scan" in argv and inv.isolated_home  # no ~/.docker credential helpers
    # An image reference only with the site's registry access, and then the registry only.
    with pytest.raises(InputError, match="registry access is off"):
        trivy_invocation("registry.local/app:1", cache_dir=tmp_path, policy=ScanPolicy())
    ref = trivy_invocation(
        "registry.local/app:1", cache_dir=tmp_path, policy=ScanPolicy(), registry_access=True
    )
    assert ref.argv[-3:] == ("--image-src", "remote", "registry.local/app:1")
    assert "--input" not in ref.argv and not ref.isolated_home
    online = trivy_invocation(archive, cache_dir=tmp_path, policy=ScanPolicy(offline=False))
    assert "--skip-db-update" not in online.argv

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "should-not-leak")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIA0000000000000000")
    monkeypatch.setenv("TRIVY_IGNOREFILE", "/tmp/hide-everything")
    env = tool_env(inv.env_allow, inv.extra_env)
    assert not {k for k in env if k.startswith(("AWS_", "TRIVY_"))}


def test_bad_targets_are_input_errors(tmp_path: Path) -> None:
    (tmp_path / "not-a-tar").write_text("hello")
    with pytest.raises(InputError, match="not a tar"):
        trivy_invocation(tmp_path / "not-a-tar", cache_dir=tmp_path, policy=ScanPolicy())
    with pytest.raises(InputError, match="OCI image layout"):
        trivy_invocation(tmp_path, cache_dir=tmp_path, policy=ScanPolicy())
    with pytest.raises(InputError, match="does not exist"):
        trivy_invocation(tmp_path / "missing.tar", cache_dir=tmp_path, policy=ScanPolicy())
    with pytest.raises(InputError):
        trivy_invocation("--help", cache_dir=tmp_path, policy=ScanPolicy())
