"""Read Trivy's JSON report (SchemaVersion 2) into findings; anything unexpected is a ToolError.

A report we cannot read never counts as a pass: a missing ``Target``, an unknown severity,
a vulnerability without an ID or an image without a sha256 ``ImageID`` all raise
``ToolError`` (exit 3).

Example::

    findings, packages = parse_findings(raw["Results"])
    digest = report_image_digest(raw)
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from secmlops.controls.image_scan.findings import Finding
from secmlops.controls.image_scan.policy import SEVERITIES, Severity
from secmlops.errors import ToolError

SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


def report_trivy_version(raw: Mapping[str, Any]) -> str | None:
    """The Trivy version a report names, if it names one."""
    trivy = raw.get("Trivy")
    if isinstance(trivy, Mapping) and isinstance(trivy.get("Version"), str):
        return str(trivy["Version"])
    return None


def unusable_report(message: str, details: Mapping[str, Any] | None = None) -> ToolError:
    """The error for a report we cannot read (never a pass)."""
    return ToolError(
        f"trivy returned an unusable report: {message}",
        where="trivy image",
        fix="check the trivy binary and DB; a report we cannot read never counts as a pass",
        details=dict(details or {}),
    )


def parse_severity(value: Any) -> Severity:
    """A severity Trivy may report; ``ToolError`` for anything else."""
    if value not in SEVERITIES:
        raise unusable_report(f"unknown severity {value!r}")
    sev: Severity = value
    return sev


def parse_findings(results: Sequence[Any]) -> tuple[list[Finding], int]:
    """Every vulnerability and secret in ``Results``, and how many packages Trivy saw."""
    findings: list[Finding] = []
    packages = 0
    for result in results:
        if not isinstance(result, Mapping) or not isinstance(result.get("Target"), str):
            raise unusable_report("a Results entry has no Target")
        target, kind = str(result["Target"]), str(result.get("Class", ""))
        pkg_type = str(result.get("Type", ""))
        packages += len(result.get("Packages") or [])
        for v in result.get("Vulnerabilities") or []:
            if not isinstance(v, Mapping) or not v.get("VulnerabilityID") or not v.get("PkgName"):
                raise unusable_report(f"a vulnerability in {target} lacks VulnerabilityID/PkgName")
            findings.append(
                Finding(
                    id=str(v["VulnerabilityID"]),
                    package=str(v["PkgName"]),
                    installed=str(v.get("InstalledVersion", "")),
                    fixed=str(v.get("FixedVersion", "")),
                    status=str(v.get("Status", "")),
                    severity=parse_severity(v.get("Severity")),
                    title=str(v.get("Title", "")),
                    target=target,
                    kind=kind,
                    pkg_type=pkg_type,
                    severity_source=str(v.get("SeveritySource", "")),
                    primary_url=str(v.get("PrimaryURL", "")),
                )
            )
        for s in result.get("Secrets") or []:
            if not isinstance(s, Mapping) or not s.get("RuleID"):
                raise unusable_report(f"a secret in {target} lacks RuleID")
            findings.append(
                Finding(
                    id=str(s["RuleID"]),
                    package="",
                    installed="",
                    fixed="",
                    status="",
                    severity=parse_severity(s.get("Severity")),
                    title=f"{s.get('Title', '')} (line {s.get('StartLine', '?')})",
                    target=target,
                    kind=kind or "secret",
                    pkg_type=str(s.get("Category", "")),
                )
            )
    return findings, packages


def report_image_digest(raw: Mapping[str, Any]) -> str:
    """The sha256 hex of the image config (``Metadata.ImageID``) the report is about."""
    metadata = raw.get("Metadata")
    image_id = metadata.get("ImageID") if isinstance(metadata, Mapping) else None
    if not isinstance(image_id, str) or not image_id.startswith("sha256:"):
        raise unusable_report(
            "Metadata.ImageID is missing; cannot bind the scan to an image digest"
        )
    digest = image_id.removeprefix("sha256:")
    if not SHA256_HEX.fullmatch(digest):
        raise unusable_report(f"Metadata.ImageID {image_id!r} is not a sha256 digest")
    return digest
