"""What one Trivy run found: :class:`Finding` (one vulnerability or secret) and
:class:`ImageScanResult` (the image, the tool and DB used, and every finding).

Example::

    result = scan_image(Path("build/serving.tar"), cache_dir=cache, policy=ScanPolicy())
    print(result.image_digest, result.counts, [f.label() for f in result.findings])
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from secmlops.controls.image_scan.db import TrivyDbInfo
from secmlops.controls.image_scan.policy import SEVERITIES, Severity


@dataclass(frozen=True)
class Finding:
    """One vulnerability (or secret) Trivy reported."""

    id: str
    package: str
    installed: str
    fixed: str
    status: str
    severity: Severity
    title: str
    target: str
    kind: str  # Trivy's result class: os-pkgs, lang-pkgs, secret
    pkg_type: str = ""
    severity_source: str = ""
    primary_url: str = ""

    @property
    def has_fix(self) -> bool:
        """True when a fixed version exists to upgrade to."""
        return bool(self.fixed)

    def label(self) -> str:
        """Short human form: ``CVE-… pyyaml 5.3 -> 5.4 (CRITICAL)``."""
        if self.kind == "secret":
            return f"{self.id} secret in {self.target} ({self.severity})"
        fix = f" -> {self.fixed}" if self.fixed else " (no fix yet)"
        return f"{self.id} {self.package} {self.installed}{fix} ({self.severity})"

    def to_json(self) -> dict[str, Any]:
        """The finding as recorded in the scan result and the verdict."""
        return {
            "id": self.id,
            "package": self.package,
            "installed": self.installed,
            "fixed": self.fixed,
            "status": self.status,
            "severity": self.severity,
            "severitySource": self.severity_source,
            "title": self.title,
            "target": self.target,
            "class": self.kind,
            "type": self.pkg_type,
            "primaryUrl": self.primary_url,
        }


@dataclass(frozen=True)
class ImageScanResult:
    """What one Trivy run saw: the image, the tool and DB used, and every finding."""

    target: str
    artifact_name: str
    artifact_type: str
    image_digest: str  # sha256 hex of the image config (image ID)
    archive_sha256: str | None  # sha256 of the docker-archive tar, when scanning one
    repo_tags: tuple[str, ...]
    os_family: str
    os_name: str
    os_eosl: bool
    packages_scanned: int
    trivy_version: str
    db: TrivyDbInfo
    scanners: tuple[str, ...]
    findings: tuple[Finding, ...]
    report_sha256: str
    scan_started_at: str
    scan_finished_at: str
    raw_report: bytes = field(repr=False, compare=False)
    #: sha256 of the trivy binary that ran (symlinks resolved); ``None``: not recorded.
    trivy_sha256: str | None = None
    #: The path of that binary (symlinks resolved), as the scan found it.
    trivy_path: str | None = None

    @property
    def counts(self) -> dict[str, int]:
        """Findings per severity (every severity present, zeros included)."""
        c = Counter(f.severity for f in self.findings)
        return {s: c.get(s, 0) for s in SEVERITIES}

    @property
    def subject_name(self) -> str:
        """The name the evidence gives the image: its first tag, else Trivy's artifact name."""
        return self.repo_tags[0] if self.repo_tags else self.artifact_name

    def to_json(self) -> dict[str, Any]:
        """The whole scan result (without the raw report) for logs, the CLI and refusals."""
        return {
            "target": self.target,
            "artifactName": self.artifact_name,
            "artifactType": self.artifact_type,
            "imageDigest": self.image_digest,
            "archiveSha256": self.archive_sha256,
            "repoTags": list(self.repo_tags),
            "os": {"family": self.os_family, "name": self.os_name, "eosl": self.os_eosl},
            "packagesScanned": self.packages_scanned,
            "trivyVersion": self.trivy_version,
            "trivySha256": self.trivy_sha256,
            "trivyPath": self.trivy_path,
            "db": self.db.to_json(),
            "scanners": list(self.scanners),
            "findings": [f.to_json() for f in self.findings],
            "counts": self.counts,
            "reportSha256": self.report_sha256,
            "scanStartedOn": self.scan_started_at,
            "scanFinishedOn": self.scan_finished_at,
        }

    def write_report(self, path: Path) -> Path:
        """Save Trivy's raw JSON report (its sha256 is ``report_sha256``)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.raw_report)
        return path
