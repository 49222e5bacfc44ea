"""Image scanning control: the real Trivy, fully offline, decided by policy from its JSON.

``scan_image`` runs ``trivy image`` against a docker-archive tar, an OCI layout directory or
an image reference, with the air-gapped flags and the DB from ``cache_dir``, and returns
what it found. ``enforce_scan_policy`` decides: it returns a :class:`ScanVerdict` or raises
``ControlRefused`` naming every blocking finding. ``image_scan_statement`` turns both into
an in-toto ``vulns`` Statement for the flow to sign.

Example::

    policy = ScanPolicy(allowed=(AllowedVulnerability(
        id="CVE-2024-6387", reason="sshd not installed; client only", expires=date(2026, 1, 31)),))
    result = scan_image(Path("build/serving.tar"), cache_dir=Path(".cache/trivy"), policy=policy)
    verdict = enforce_scan_policy(result, policy)          # raises ControlRefused on a block
    statement = image_scan_statement(result, verdict)

Fail closed: a missing DB, a Trivy that fails, times out or prints anything but a valid
report raises ``ToolError`` (exit 3), never a pass. The decision never uses Trivy's exit code.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import tarfile
import tempfile
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from secmlops._internal.digests import sha256_bytes, sha256_file
from secmlops._internal.toolrun import resolve_binary, run_tool
from secmlops.demo.serving_image import build_serving_image
from secmlops.demo.trivy_db import (
    UPSTREAM_SOURCE_LABEL,
    TrivyDbInfo,
    read_trivy_db_info,
    seed_demo_trivy_db,
)
from secmlops.errors import ControlRefused, InputError, ToolError
from secmlops.evidence.statements import PREDICATE_VULNS, Subject, make_statement, utc_now

log = logging.getLogger(__name__)

Severity = Literal["UNKNOWN", "LOW", "MEDIUM", "HIGH", "CRITICAL"]
SEVERITIES: tuple[Severity, ...] = ("UNKNOWN", "LOW", "MEDIUM", "HIGH", "CRITICAL")
Scanner = Literal["vuln", "secret"]

#: Flags that keep Trivy 0.76 from touching the network (all five are needed).
OFFLINE_FLAGS: tuple[str, ...] = (
    "--skip-db-update",
    "--skip-java-db-update",
    "--skip-check-update",
    "--skip-version-check",
    "--disable-telemetry",
)
#: Env var that points the control at a specific trivy binary.
TRIVY_BINARY_ENV = "SECMLOPS_TRIVY"
#: Trivy's exit code is not the decision, but we still expect it to succeed.
_TIMEOUT_GRACE_SECONDS = 30
MAX_TIMEOUT_SECONDS = 1800
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


# --- policy --------------------------------------------------------------------------------


class AllowedVulnerability(BaseModel):
    """A justified, expiring exception: this finding does not block until ``expires``.

    Expired entries do not apply (the finding blocks again) and are listed in the verdict.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(
        min_length=3, description="vulnerability ID (CVE-..., GHSA-...) or secret rule ID"
    )
    reason: str = Field(description="why this is acceptable; recorded in the evidence")
    expires: dt.date = Field(description="last day this exception applies")
    package: str | None = Field(
        default=None, description="only for this package name (default: any package)"
    )

    @field_validator("reason")
    @classmethod
    def _reason_not_blank(cls, value: str) -> str:
        if len(value.strip()) < 3:
            raise ValueError("an allow entry needs a real reason (it goes into the evidence)")
        return value.strip()

    def active_on(self, day: dt.date) -> bool:
        """True while the exception applies (through its ``expires`` day)."""
        return day <= self.expires

    def matches(self, finding: Finding) -> bool:
        """Same ID, and same package if the entry names one."""
        return finding.id == self.id and (self.package is None or self.package == finding.package)


class ScanPolicy(BaseModel):
    """What the image scan requires. Frozen; permissive settings carry ``unsafe`` in the name."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    fail_on: tuple[Severity, ...] = Field(
        default=("CRITICAL", "HIGH"), description="severities that block (must not be empty)"
    )
    ignore_unfixed: bool = Field(
        default=False, description="do not block on findings with no fixed version yet"
    )
    allowed: tuple[AllowedVulnerability, ...] = Field(
        default=(), description="justified, expiring exceptions"
    )
    max_allow_days: int = Field(
        default=366, ge=1, le=3660, description="an exception may not expire further out than this"
    )
    timeout_seconds: int = Field(
        default=600, gt=0, le=MAX_TIMEOUT_SECONDS, description="trivy's time budget"
    )
    offline: bool = Field(
        default=True, description="never let trivy touch the network (air-gapped flags)"
    )
    scanners: tuple[Scanner, ...] = Field(
        default=("vuln", "secret"), description="trivy scanners; 'vuln' is required"
    )
    fail_on_eosl: bool = Field(
        default=True, description="block an image whose OS release is end of life"
    )
    require_packages: bool = Field(
        default=True,
        description="block when trivy found no packages at all (unsupported image: it saw nothing)",
    )
    max_db_age_days: int | None = Field(
        default=None, ge=1, description="block when the DB's UpdatedAt is older than this"
    )
    unsafe_allow_curated_db: bool = Field(
        default=False,
        description=(
            "accept a DB written by secmlops.demo.trivy_db (e.g. the offline demo DB): a curated "
            "subset of advisories, so a pass means little. Demos and tests only."
        ),
    )
    unsafe_report_only: bool = Field(
        default=False, description="never block (fail_on may be empty): evidence says so"
    )

    @model_validator(mode="after")
    def _not_permissive(self) -> Self:
        if not self.fail_on and not self.unsafe_report_only:
            raise ValueError(
                "fail_on is empty, so nothing would ever block; list severities "
                "(default CRITICAL, HIGH) or set unsafe_report_only=True explicitly"
            )
        if len(set(self.fail_on)) != len(self.fail_on):
            raise ValueError("fail_on lists a severity twice")
        if "vuln" not in self.scanners:
            raise ValueError("scanners must include 'vuln': the control is a vulnerability scan")
        keys = [(a.id, a.package) for a in self.allowed]
        if len(set(keys)) != len(keys):
            raise ValueError("allowed lists the same vulnerability (and package) twice")
        horizon = dt.date.today() + dt.timedelta(days=self.max_allow_days)
        for entry in self.allowed:
            if entry.expires > horizon:
                raise ValueError(
                    f"allow entry {entry.id} expires {entry.expires}, beyond max_allow_days="
                    f"{self.max_allow_days}; exceptions must be revisited"
                )
        if self.unsafe_report_only:
            log.warning("ScanPolicy.unsafe_report_only is set: the image scan never blocks")
        if self.unsafe_allow_curated_db:
            log.warning("ScanPolicy.unsafe_allow_curated_db is set: a curated/demo DB counts")
        return self


# --- results -------------------------------------------------------------------------------


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
        return bool(self.fixed)

    def label(self) -> str:
        """Short human form: ``CVE-… pyyaml 5.3 -> 5.4 (CRITICAL)``."""
        if self.kind == "secret":
            return f"{self.id} secret in {self.target} ({self.severity})"
        fix = f" -> {self.fixed}" if self.fixed else " (no fix yet)"
        return f"{self.id} {self.package} {self.installed}{fix} ({self.severity})"

    def to_json(self) -> dict[str, Any]:
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

    @property
    def counts(self) -> dict[str, int]:
        """Findings per severity (every severity present, zeros included)."""
        c = Counter(f.severity for f in self.findings)
        return {s: c.get(s, 0) for s in SEVERITIES}

    @property
    def subject_name(self) -> str:
        return self.repo_tags[0] if self.repo_tags else self.artifact_name

    def to_json(self) -> dict[str, Any]:
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


@dataclass(frozen=True)
class AllowedFinding:
    """A finding that would block, let through by a policy exception."""

    finding: Finding
    reason: str
    expires: dt.date

    def to_json(self) -> dict[str, Any]:
        return {
            **self.finding.to_json(),
            "reason": self.reason,
            "expires": self.expires.isoformat(),
        }


@dataclass(frozen=True)
class ScanVerdict:
    """The policy's decision on one scan, with everything that led to it."""

    passed: bool
    image_digest: str
    blocking: tuple[Finding, ...]
    allowed: tuple[AllowedFinding, ...]
    ignored_unfixed: tuple[Finding, ...]
    below_threshold: tuple[Finding, ...]
    problems: tuple[str, ...]  # non-finding reasons to block: EOSL OS, nothing scanned, DB
    expired_allow_entries: tuple[str, ...]
    unused_allow_entries: tuple[str, ...]
    counts: Mapping[str, int]
    evaluated_on: dt.date
    policy: Mapping[str, Any]
    report_only: bool

    def summary(self) -> str:
        """One line for logs and the CLI: decision and counts."""
        counts = ", ".join(f"{s} {n}" for s, n in self.counts.items() if n)
        parts = [
            "passed" if self.passed else "REFUSED",
            f"{len(self.blocking)} blocking",
            f"{len(self.allowed)} allowed",
            f"{len(self.ignored_unfixed)} ignored-unfixed",
            f"{len(self.below_threshold)} below threshold",
        ]
        if self.problems:
            parts.append(f"{len(self.problems)} problem(s)")
        if self.report_only:
            parts.append("REPORT-ONLY policy")
        return ", ".join(parts) + f" (findings: {counts or 'none'})"

    def to_json(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "imageDigest": self.image_digest,
            "blocking": [f.to_json() for f in self.blocking],
            "allowed": [a.to_json() for a in self.allowed],
            "ignoredUnfixed": [f.to_json() for f in self.ignored_unfixed],
            "belowThreshold": len(self.below_threshold),
            "problems": list(self.problems),
            "expiredAllowEntries": list(self.expired_allow_entries),
            "unusedAllowEntries": list(self.unused_allow_entries),
            "counts": dict(self.counts),
            "evaluatedOn": self.evaluated_on.isoformat(),
            "policy": dict(self.policy),
            "reportOnly": self.report_only,
        }


# --- running trivy -------------------------------------------------------------------------


@dataclass(frozen=True)
class TrivyInvocation:
    """Exactly how ``scan_image`` runs Trivy (the argv and the env it may see)."""

    argv: tuple[str, ...]
    env_allow: tuple[str, ...] = ()
    extra_env: Mapping[str, str] = field(default_factory=dict)
    archive: Path | None = None


def _target_args(target: str | Path) -> tuple[list[str], Path | None]:
    """``--input`` for a tar or OCI layout dir, a plain image reference otherwise."""
    path = Path(target)
    if isinstance(target, Path) or path.exists():
        if path.is_file():
            if not tarfile.is_tarfile(path):
                raise InputError(
                    f"{path} is not a tar archive",
                    where=str(path),
                    fix="pass a docker-archive tar (`docker save`), an OCI layout dir or a ref",
                )
            return ["--input", str(path)], path
        if path.is_dir():
            if not (path / "oci-layout").is_file() or not (path / "index.json").is_file():
                raise InputError(
                    f"{path} is a directory but not an OCI image layout (no oci-layout/index.json)",
                    where=str(path),
                    fix="pass an OCI layout directory or a docker-archive tar",
                )
            return ["--input", str(path)], None
        raise InputError(f"image archive {path} does not exist", where=str(path))
    ref = str(target)
    if not ref or ref.startswith("-") or any(c.isspace() for c in ref):
        raise InputError(f"{ref!r} is not an image reference", where="scan_image target")
    return [ref], None


def trivy_invocation(target: str | Path, *, cache_dir: Path, policy: ScanPolicy) -> TrivyInvocation:
    """Build the Trivy command for ``target`` (used by ``scan_image``; shown in docs/tests)."""
    target_args, archive = _target_args(target)
    trivy = resolve_binary("trivy", TRIVY_BINARY_ENV)
    argv = [
        str(trivy),
        "image",
        "--format",
        "json",
        "--quiet",
        "--no-progress",
        "--cache-dir",
        str(cache_dir),
        # Fanal's layer cache would be written under cache_dir; the DB dir may be read-only.
        "--cache-backend",
        "memory",
        "--scanners",
        ",".join(policy.scanners),
        "--timeout",
        f"{policy.timeout_seconds}s",
        # We decide from the JSON: report every severity and every status.
        "--exit-code",
        "0",
    ]
    if policy.offline:
        argv += OFFLINE_FLAGS
    argv += target_args
    # No env_allow: Trivy gets only the base allow-list (no AWS_*, no TRIVY_* overrides).
    return TrivyInvocation(argv=tuple(argv), archive=archive)


def _docker_archive_config_digest(archive: Path) -> str:
    """sha256 of the config blob a docker-archive's manifest.json names (the image ID)."""
    try:
        with tarfile.open(archive) as tar:
            manifest_member = tar.extractfile("manifest.json")
            if manifest_member is None:
                raise KeyError("manifest.json")
            manifest = json.loads(manifest_member.read())
            if not isinstance(manifest, list) or len(manifest) != 1:
                raise InputError(
                    f"{archive} holds {len(manifest) if isinstance(manifest, list) else 0} "
                    "images; scan one image per archive",
                    where=str(archive),
                )
            config = tar.extractfile(str(manifest[0]["Config"]))
            if config is None:
                raise KeyError(manifest[0]["Config"])
            return sha256_bytes(config.read())
    except (KeyError, TypeError, ValueError, tarfile.TarError) as exc:
        raise InputError(
            f"{archive} is not a docker-archive (manifest.json/config unreadable: {exc})",
            where=str(archive),
            fix="create it with `docker save` or secmlops.demo.serving_image.build_serving_image",
        ) from exc


def _oci_layout_config_digest(layout: Path) -> str:
    """sha256 of the config blob of the single image in an OCI layout (the image ID)."""
    try:
        index = json.loads((layout / "index.json").read_text(encoding="utf-8"))
        manifests = index["manifests"]
        if len(manifests) != 1:
            raise InputError(
                f"{layout} holds {len(manifests)} images; scan one image per layout",
                where=str(layout),
            )
        manifest_hex = str(manifests[0]["digest"]).removeprefix("sha256:")
        manifest = json.loads((layout / "blobs" / "sha256" / manifest_hex).read_bytes())
        config_hex = str(manifest["config"]["digest"]).removeprefix("sha256:")
        return sha256_file(layout / "blobs" / "sha256" / config_hex)
    except (OSError, KeyError, TypeError, ValueError, IndexError) as exc:
        raise InputError(
            f"{layout} is not a readable OCI image layout ({exc})", where=str(layout)
        ) from exc


def _version(raw: Mapping[str, Any]) -> str | None:
    trivy = raw.get("Trivy")
    if isinstance(trivy, Mapping) and isinstance(trivy.get("Version"), str):
        return str(trivy["Version"])
    return None


def _trivy_version(trivy: str, timeout: float) -> str:
    proc = run_tool(
        [trivy, "--version", "--format", "json"], timeout=timeout, what="trivy --version"
    )
    try:
        version = json.loads(proc.stdout)["Version"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ToolError("`trivy --version --format json` returned garbage", where=trivy) from exc
    return str(version)


def _garbage(message: str, details: Mapping[str, Any] | None = None) -> ToolError:
    return ToolError(
        f"trivy returned an unusable report: {message}",
        where="trivy image",
        fix="check the trivy binary and DB; a report we cannot read never counts as a pass",
        details=dict(details or {}),
    )


def _severity(value: Any) -> Severity:
    if value not in SEVERITIES:
        raise _garbage(f"unknown severity {value!r}")
    sev: Severity = value
    return sev


def _parse_findings(results: Sequence[Any]) -> tuple[list[Finding], int]:
    findings: list[Finding] = []
    packages = 0
    for result in results:
        if not isinstance(result, Mapping) or not isinstance(result.get("Target"), str):
            raise _garbage("a Results entry has no Target")
        target, kind = str(result["Target"]), str(result.get("Class", ""))
        pkg_type = str(result.get("Type", ""))
        packages += len(result.get("Packages") or [])
        for v in result.get("Vulnerabilities") or []:
            if not isinstance(v, Mapping) or not v.get("VulnerabilityID") or not v.get("PkgName"):
                raise _garbage(f"a vulnerability in {target} lacks VulnerabilityID/PkgName")
            findings.append(
                Finding(
                    id=str(v["VulnerabilityID"]),
                    package=str(v["PkgName"]),
                    installed=str(v.get("InstalledVersion", "")),
                    fixed=str(v.get("FixedVersion", "")),
                    status=str(v.get("Status", "")),
                    severity=_severity(v.get("Severity")),
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
                raise _garbage(f"a secret in {target} lacks RuleID")
            findings.append(
                Finding(
                    id=str(s["RuleID"]),
                    package="",
                    installed="",
                    fixed="",
                    status="",
                    severity=_severity(s.get("Severity")),
                    title=f"{s.get('Title', '')} (line {s.get('StartLine', '?')})",
                    target=target,
                    kind=kind or "secret",
                    pkg_type=str(s.get("Category", "")),
                )
            )
    return findings, packages


def _image_id(raw: Mapping[str, Any]) -> str:
    metadata = raw.get("Metadata")
    image_id = metadata.get("ImageID") if isinstance(metadata, Mapping) else None
    if not isinstance(image_id, str) or not image_id.startswith("sha256:"):
        raise _garbage("Metadata.ImageID is missing; cannot bind the scan to an image digest")
    digest = image_id.removeprefix("sha256:")
    if not _SHA256_HEX.match(digest):
        raise _garbage(f"Metadata.ImageID {image_id!r} is not a sha256 digest")
    return digest


def scan_image(target: str | Path, *, cache_dir: Path, policy: ScanPolicy) -> ImageScanResult:
    """Scan an image with the real Trivy and the DB in ``cache_dir``; return what it found.

    ``target``: a docker-archive tar or OCI layout directory (``Path``/existing path) or an
    image reference. Raises ``ToolError`` for a missing DB, a failing or timed-out Trivy,
    or a report that is not valid; ``InputError`` for a target that is not an image.
    """
    db_before = read_trivy_db_info(cache_dir) if policy.offline else None
    invocation = trivy_invocation(target, cache_dir=cache_dir, policy=policy)
    archive_digest = archive_config = None
    if invocation.archive is not None:
        archive_digest = sha256_file(invocation.archive)
        archive_config = _docker_archive_config_digest(invocation.archive)
    elif isinstance(target, Path) or Path(target).is_dir():
        archive_config = _oci_layout_config_digest(Path(target))

    started = utc_now()
    # An empty working dir: Trivy reads .trivyignore and trivy.yaml from its cwd, and a
    # stray one there could silently drop findings.
    with tempfile.TemporaryDirectory(prefix="secmlops-trivy-") as workdir:
        proc = run_tool(
            invocation.argv,
            timeout=policy.timeout_seconds + _TIMEOUT_GRACE_SECONDS,
            env_allow=invocation.env_allow,
            extra_env=invocation.extra_env,
            cwd=workdir,
            what="trivy image",
        )
    finished = utc_now()

    report = proc.stdout.encode()
    try:
        raw = json.loads(report)
    except ValueError as exc:
        raise _garbage(f"not JSON ({exc})", {"stdout_head": proc.stdout[:500]}) from exc
    if not isinstance(raw, dict) or raw.get("SchemaVersion") != 2:
        raise _garbage("not a Trivy JSON report with SchemaVersion 2")
    if not isinstance(raw.get("ArtifactName"), str):
        raise _garbage("ArtifactName is missing")
    results = raw.get("Results") or []
    if not isinstance(results, list):
        raise _garbage("Results is not a list")
    findings, packages = _parse_findings(results)
    image_digest = _image_id(raw)
    if archive_config is not None and archive_config != image_digest:
        raise ToolError(
            f"trivy scanned image {image_digest[:12]} but the archive's config is "
            f"{archive_config[:12]}",
            where=str(invocation.archive),
            fix="the archive changed during the scan or is malformed; rebuild and rescan",
        )
    db = read_trivy_db_info(cache_dir)
    if db_before is not None and db_before.sha256 != db.sha256:
        raise ToolError("the Trivy DB changed during the scan", where=str(db.path))

    metadata = raw.get("Metadata") or {}
    os_info = metadata.get("OS") or {}
    return ImageScanResult(
        target=str(target),
        artifact_name=str(raw["ArtifactName"]),
        artifact_type=str(raw.get("ArtifactType", "")),
        image_digest=image_digest,
        archive_sha256=archive_digest,
        repo_tags=tuple(str(t) for t in metadata.get("RepoTags") or []),
        os_family=str(os_info.get("Family", "")),
        os_name=str(os_info.get("Name", "")),
        os_eosl=bool(os_info.get("EOSL", False)),
        packages_scanned=packages,
        trivy_version=_version(raw) or _trivy_version(invocation.argv[0], 60),
        db=db,
        scanners=policy.scanners,
        findings=tuple(findings),
        report_sha256=sha256_bytes(report),
        scan_started_at=started,
        scan_finished_at=finished,
        raw_report=report,
    )


# --- policy enforcement --------------------------------------------------------------------


def _db_age_days(db: TrivyDbInfo, today: dt.date) -> int | None:
    if not db.updated_at:
        return None
    try:
        updated = dt.datetime.fromisoformat(db.updated_at.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (today - updated.date()).days


def evaluate_scan_policy(
    result: ImageScanResult, policy: ScanPolicy, *, today: dt.date | None = None
) -> ScanVerdict:
    """Apply the policy to a scan and return the verdict, without raising."""
    day = today or dt.date.today()
    blocking: list[Finding] = []
    allowed: list[AllowedFinding] = []
    ignored: list[Finding] = []
    below: list[Finding] = []
    used: set[tuple[str, str | None]] = set()
    for finding in result.findings:
        if finding.severity not in policy.fail_on:
            below.append(finding)
            continue
        if policy.ignore_unfixed and finding.kind != "secret" and not finding.has_fix:
            ignored.append(finding)
            continue
        entry = next((a for a in policy.allowed if a.matches(finding) and a.active_on(day)), None)
        if entry is not None:
            used.add((entry.id, entry.package))
            allowed.append(AllowedFinding(finding, entry.reason, entry.expires))
        else:
            blocking.append(finding)

    problems: list[str] = []
    if result.os_eosl and policy.fail_on_eosl:
        problems.append(
            f"the image's OS ({result.os_family} {result.os_name}) is end of life: "
            "no more security fixes"
        )
    if policy.require_packages and result.packages_scanned == 0:
        problems.append("trivy found no packages in the image: it cannot vouch for it")
    if result.db.source != UPSTREAM_SOURCE_LABEL and not policy.unsafe_allow_curated_db:
        problems.append(
            f"the Trivy DB is not an upstream trivy-db but {result.db.source!r}; "
            "a curated DB holds a subset of advisories"
        )
    age = _db_age_days(result.db, day)
    if policy.max_db_age_days is not None and (age is None or age > policy.max_db_age_days):
        problems.append(
            f"the Trivy DB is {age if age is not None else 'of unknown age'} days old "
            f"(max_db_age_days={policy.max_db_age_days})"
        )

    expired = tuple(a.id for a in policy.allowed if not a.active_on(day))
    unused = tuple(
        a.id for a in policy.allowed if a.active_on(day) and (a.id, a.package) not in used
    )
    passed = policy.unsafe_report_only or (not blocking and not problems)
    return ScanVerdict(
        passed=passed,
        image_digest=result.image_digest,
        blocking=tuple(blocking),
        allowed=tuple(allowed),
        ignored_unfixed=tuple(ignored),
        below_threshold=tuple(below),
        problems=tuple(problems),
        expired_allow_entries=expired,
        unused_allow_entries=unused,
        counts=result.counts,
        evaluated_on=day,
        policy=policy.model_dump(mode="json"),
        report_only=policy.unsafe_report_only,
    )


def enforce_scan_policy(
    result: ImageScanResult, policy: ScanPolicy, *, today: dt.date | None = None
) -> ScanVerdict:
    """Return the verdict if the image meets the policy; raise ``ControlRefused`` if not.

    The error message names each blocking finding (ID, package, installed -> fixed) and any
    other reason; ``details["verdict"]`` holds the whole verdict for the evidence.
    """
    verdict = evaluate_scan_policy(result, policy, today=today)
    if verdict.report_only and (verdict.blocking or verdict.problems):
        log.warning(
            "image scan would have blocked %s (%d findings, %d problems) but the policy is "
            "unsafe_report_only",
            result.subject_name,
            len(verdict.blocking),
            len(verdict.problems),
        )
    if verdict.passed:
        return verdict
    lines = [f"image {result.subject_name} (sha256:{result.image_digest[:12]}) is refused:"]
    if verdict.blocking:
        lines.append(
            f"{len(verdict.blocking)} finding(s) at {'/'.join(policy.fail_on)}: "
            + "; ".join(f.label() for f in verdict.blocking)
        )
    lines += verdict.problems
    if verdict.expired_allow_entries:
        lines.append(
            "expired allow entries (no longer applied): " + ", ".join(verdict.expired_allow_entries)
        )
    raise ControlRefused(
        "\n  ".join(lines),
        where=f"scan-image {result.subject_name}",
        fix=" ".join(_fixes(verdict)),
        details={"verdict": verdict.to_json(), "scan": result.to_json()},
    )


def _fixes(verdict: ScanVerdict) -> list[str]:
    fixes = []
    if verdict.blocking:
        fixes.append(
            "Upgrade each package to its fixed version (or remove the leaked secret) and "
            "rebuild the image, or add a justified, expiring entry to ScanPolicy.allowed "
            "(id, reason, expires)."
        )
    text = " ".join(verdict.problems)
    if "end of life" in text:
        fixes.append("Rebase the image on a supported OS release.")
    if "no packages" in text:
        fixes.append("Scan an image whose OS/packages Trivy supports.")
    if "not an upstream trivy-db" in text:
        fixes.append(
            "Use a real trivy-db (docs/scanning.md: `trivy image --download-db-only` on a "
            "connected machine, copy the cache dir), or for demos only set "
            "ScanPolicy.unsafe_allow_curated_db=True."
        )
    if "days old" in text:
        fixes.append("Refresh the Trivy DB (copy a newer cache dir into the air gap).")
    return fixes


# --- evidence ------------------------------------------------------------------------------


def _db_uri(db: TrivyDbInfo) -> str:
    if db.source == UPSTREAM_SOURCE_LABEL:
        return "ghcr.io/aquasecurity/trivy-db:2"
    return "urn:secmlops:trivy-db:curated"


def image_scan_statement(result: ImageScanResult, verdict: ScanVerdict) -> dict[str, Any]:
    """An in-toto Statement (vulns predicate v0.1 + our verdict) about the scanned image."""
    if verdict.image_digest != result.image_digest:
        raise InputError(
            "the verdict is for a different image than the scan result",
            where="image_scan_statement",
        )
    by_id: dict[str, list[Finding]] = {}
    for f in result.findings:
        by_id.setdefault(f.id, []).append(f)
    scan_results = [
        {
            "id": vid,
            "severity": [{"method": fs[0].severity_source or "trivy", "score": fs[0].severity}],
            "annotations": [
                {
                    "package": f.package,
                    "installed": f.installed,
                    "fixed": f.fixed,
                    "status": f.status,
                    "target": f.target,
                    "class": f.kind,
                }
                for f in fs
            ],
        }
        for vid, fs in sorted(by_id.items())
    ]
    predicate = {
        "invocation": {
            "parameters": ["image", "--scanners", ",".join(result.scanners), "--format", "json"],
            "uri": "",
            "event_id": "",
            "producer_id": "secmlops/controls/image_scan.py",
        },
        "scanner": {
            "uri": f"pkg:github/aquasecurity/trivy@v{result.trivy_version}",
            "version": result.trivy_version,
            "db": {
                "uri": _db_uri(result.db),
                "version": str(result.db.schema_version),
                "lastUpdate": result.db.updated_at,
                "digest": {"sha256": result.db.sha256},
                "source": result.db.source,
            },
            "result": scan_results,
        },
        "metadata": {
            "scanStartedOn": result.scan_started_at,
            "scanFinishedOn": result.scan_finished_at,
        },
        "image": {
            "name": result.subject_name,
            "imageId": f"sha256:{result.image_digest}",
            "archiveSha256": result.archive_sha256,
            "repoTags": list(result.repo_tags),
            "os": {"family": result.os_family, "name": result.os_name, "eosl": result.os_eosl},
            "packagesScanned": result.packages_scanned,
        },
        "report": {"format": "trivy-json", "sha256": result.report_sha256},
        "verdict": verdict.to_json(),
    }
    return make_statement(
        [Subject(result.subject_name, result.image_digest)], PREDICATE_VULNS, predicate
    )


def scan_result_from_predicate(predicate: Mapping[str, Any]) -> ImageScanResult:
    """Rebuild the scan result a signed ``image_scan_statement`` predicate describes.

    Used to re-judge stored evidence against the *current* policy (the deploy gate), rather
    than trusting the verdict stored with it. ``InputError`` if the predicate is malformed.
    """
    try:
        scanner = predicate["scanner"]
        db = scanner["db"]
        image = predicate["image"]
        params = list(predicate["invocation"]["parameters"])
        findings = [
            Finding(
                id=str(entry["id"]),
                package=str(ann.get("package", "")),
                installed=str(ann.get("installed", "")),
                fixed=str(ann.get("fixed", "")),
                status=str(ann.get("status", "")),
                severity=_severity(entry["severity"][0]["score"]),
                title="",
                target=str(ann.get("target", "")),
                kind=str(ann.get("class", "")),
                severity_source=str(entry["severity"][0].get("method", "")),
            )
            for entry in scanner["result"]
            for ann in entry["annotations"]
        ]
        image_digest = str(image["imageId"]).removeprefix("sha256:")
        if not _SHA256_HEX.match(image_digest):
            raise ValueError(f"imageId {image['imageId']!r} is not a sha256 digest")
        return ImageScanResult(
            target=str(image["name"]),
            artifact_name=str(image["name"]),
            artifact_type="container_image",
            image_digest=image_digest,
            archive_sha256=image.get("archiveSha256"),
            repo_tags=tuple(image.get("repoTags") or ()),
            os_family=str(image["os"]["family"]),
            os_name=str(image["os"]["name"]),
            os_eosl=bool(image["os"]["eosl"]),
            packages_scanned=int(image["packagesScanned"]),
            trivy_version=str(scanner["version"]),
            db=TrivyDbInfo(
                path=Path(str(db.get("uri", ""))),
                sha256=str(db["digest"]["sha256"]),
                schema_version=int(db["version"]),
                updated_at=db.get("lastUpdate"),
                next_update=None,
                downloaded_at=None,
                source=str(db["source"]),
                advisory_count=None,
            ),
            scanners=tuple(str(params[params.index("--scanners") + 1]).split(",")),
            findings=tuple(findings),
            report_sha256=str(predicate["report"]["sha256"]),
            scan_started_at=str(predicate["metadata"]["scanStartedOn"]),
            scan_finished_at=str(predicate["metadata"]["scanFinishedOn"]),
            raw_report=b"",
        )
    except (KeyError, IndexError, TypeError, ValueError, ToolError) as exc:
        raise InputError(
            f"not an image-scan predicate written by secmlops.controls.image_scan: {exc!r}",
            where="image-scan evidence",
        ) from exc


def _recorded_scanners(predicate: Mapping[str, Any]) -> tuple[str, ...] | None:
    """The ``--scanners`` a stored scan predicate says Trivy ran with; None if not recorded."""
    invocation = predicate.get("invocation")
    params = invocation.get("parameters") if isinstance(invocation, Mapping) else None
    if not isinstance(params, list) or params.count("--scanners") != 1:
        return None
    at = params.index("--scanners") + 1
    if at >= len(params) or not isinstance(params[at], str):
        return None
    scanners = tuple(s.strip() for s in params[at].split(","))
    return scanners if all(scanners) else None


def scan_predicate_verdict(
    predicate: Mapping[str, Any], policy: ScanPolicy, *, today: dt.date | None = None
) -> str | None:
    """Re-judge stored image-scan evidence against ``policy``: ``None`` if it passes,
    else one sentence saying why not (a malformed predicate never passes, nor does a scan
    that ran fewer scanners than ``policy.scanners`` requires)."""
    try:
        result = scan_result_from_predicate(predicate)
    except InputError as exc:
        return exc.message
    # A scan that never looked for secrets cannot vouch for an image the current policy
    # wants checked for secrets, however clean its findings are.
    recorded = _recorded_scanners(predicate)
    if recorded is None:
        return (
            "the image-scan evidence does not record which trivy scanners ran "
            "(invocation.parameters --scanners); rescan the image"
        )
    missing = [s for s in policy.scanners if s not in recorded]
    if missing:
        return (
            f"the image scan ran scanners {list(recorded)} but the policy requires "
            f"{list(policy.scanners)} (missing {missing}); rescan the image"
        )
    verdict = evaluate_scan_policy(result, policy, today=today)
    if verdict.passed:
        return None
    reasons = [f.label() for f in verdict.blocking] + list(verdict.problems)
    return "; ".join(reasons)


__all__ = [
    "AllowedFinding",
    "AllowedVulnerability",
    "Finding",
    "ImageScanResult",
    "ScanPolicy",
    "ScanVerdict",
    "Severity",
    "TrivyInvocation",
    "build_serving_image",
    "enforce_scan_policy",
    "evaluate_scan_policy",
    "image_scan_statement",
    "scan_image",
    "scan_predicate_verdict",
    "scan_result_from_predicate",
    "seed_demo_trivy_db",
    "trivy_invocation",
]
