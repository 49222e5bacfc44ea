"""The image scan's evidence: an in-toto ``vulns`` Statement, written and read back.

:func:`image_scan_statement` writes the Statement (vulns predicate v0.1 plus our verdict) for
the flow to sign; :func:`scan_result_from_predicate` rebuilds the scan result from a stored
predicate so the deploy gate can re-judge it against the *current* policy
(:func:`enforce_scan_predicate`, or :func:`scan_predicate_verdict` for one sentence).

The Statement records which Trivy DB the scan used: its trivy.db sha256, its cache dir and
its origin (``secmlops-demo`` or ``site-pinned``); re-judging checks the digest again against
the current policy and site pins, whatever origin was recorded. It also records the sha256
(and path) of the trivy binary that ran (``scanner.digest``) and the DB's ``downloadedAt``;
re-judging refuses a binary the current policy does not pin (``binary_refusal``), and
evidence that does not record it.

Example::

    statement = image_scan_statement(result, verdict)
    ...
    enforce_scan_predicate(statement["predicate"], policy,   # ControlRefused with a reason
                           trusted_db_sha256=site.trivy_db.sha256)
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from secmlops.controls.image_scan.db import UPSTREAM_SOURCE_LABEL, TrivyDbInfo
from secmlops.controls.image_scan.findings import Finding, ImageScanResult
from secmlops.controls.image_scan.policy import ScanPolicy
from secmlops.controls.image_scan.reasons import ImageScanRefusal
from secmlops.controls.image_scan.report import SHA256_HEX, parse_severity
from secmlops.controls.image_scan.verdict import ScanVerdict, evaluate_scan_policy, scan_fixes
from secmlops.errors import ControlRefused, InputError, ToolError
from secmlops.evidence.predicates import VulnsPredicate, dump_predicate
from secmlops.evidence.statements import PREDICATE_VULNS, Subject, make_statement


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
            # A stable producer identifier recorded in evidence (predates the package split).
            "producer_id": "secmlops/controls/image_scan.py",
        },
        "scanner": {
            "uri": f"pkg:github/aquasecurity/trivy@v{result.trivy_version}",
            "version": result.trivy_version,
            "digest": {"sha256": result.trivy_sha256} if result.trivy_sha256 else None,
            "path": result.trivy_path,
            "db": {
                "uri": _db_uri(result.db),
                "version": str(result.db.schema_version),
                "lastUpdate": result.db.updated_at,
                "digest": {"sha256": result.db.sha256},
                "source": result.db.source,
                "cacheDir": str(result.db.cache_dir),
                "origin": verdict.db_origin,
                "downloadedAt": result.db.downloaded_at,
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
        [Subject(result.subject_name, result.image_digest)],
        PREDICATE_VULNS,
        dump_predicate(VulnsPredicate.model_validate(predicate)),
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
                severity=parse_severity(entry["severity"][0]["score"]),
                title="",
                target=str(ann.get("target", "")),
                kind=str(ann.get("class", "")),
                severity_source=str(entry["severity"][0].get("method", "")),
            )
            for entry in scanner["result"]
            for ann in entry["annotations"]
        ]
        image_digest = str(image["imageId"]).removeprefix("sha256:")
        if not SHA256_HEX.fullmatch(image_digest):
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
                # Where the scan read it (older evidence did not record the cache dir).
                path=Path(str(db["cacheDir"])) / "db" / "trivy.db"
                if db.get("cacheDir")
                else Path(str(db.get("uri", ""))),
                sha256=str(db["digest"]["sha256"]),
                schema_version=int(db["version"]),
                updated_at=db.get("lastUpdate"),
                next_update=None,
                downloaded_at=db.get("downloadedAt"),
                source=str(db["source"]),
                advisory_count=None,
            ),
            scanners=tuple(str(params[params.index("--scanners") + 1]).split(",")),
            findings=tuple(findings),
            report_sha256=str(predicate["report"]["sha256"]),
            scan_started_at=str(predicate["metadata"]["scanStartedOn"]),
            scan_finished_at=str(predicate["metadata"]["scanFinishedOn"]),
            raw_report=b"",
            trivy_sha256=_recorded_trivy_sha256(scanner),
            trivy_path=str(scanner["path"]) if scanner.get("path") else None,
        )
    except (KeyError, IndexError, TypeError, ValueError, ToolError) as exc:
        raise InputError(
            f"not an image-scan predicate written by secmlops.controls.image_scan: {exc!r}",
            where="image-scan evidence",
        ) from exc


def _recorded_trivy_sha256(scanner: Mapping[str, Any]) -> str | None:
    """The recorded sha256 of the trivy binary; ``None`` if absent; ``ValueError`` if garbled."""
    digest = scanner.get("digest")
    if digest is None:
        return None
    sha = digest["sha256"] if isinstance(digest, Mapping) else None
    if not isinstance(sha, str) or not SHA256_HEX.fullmatch(sha):
        raise ValueError(f"scanner.digest {digest!r} is not a sha256 digest")
    return sha


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


def enforce_scan_predicate(
    predicate: Mapping[str, Any],
    policy: ScanPolicy,
    *,
    trusted_db_sha256: Collection[str] = (),
    today: dt.date | None = None,
) -> ScanVerdict:
    """Re-judge stored image-scan evidence against ``policy``; return the verdict if it passes.

    Raises ``ControlRefused`` with an :class:`ImageScanRefusal` otherwise: a malformed
    predicate never passes (``MALFORMED_EVIDENCE``), nor does a scan that ran fewer scanners
    than ``policy.scanners`` requires (``MISSING_SCANNERS``), nor one whose recorded DB digest
    the policy and ``trusted_db_sha256`` (the site's pins) do not accept (``DB_NOT_PINNED``,
    ``CURATED_DB_NOT_ALLOWED``), nor one the policy blocks now.
    """
    try:
        result = scan_result_from_predicate(predicate)
    except InputError as exc:
        raise _stored_refusal(exc.message, ImageScanRefusal.MALFORMED_EVIDENCE) from exc
    # A scan that never looked for secrets cannot vouch for an image the current policy
    # wants checked for secrets, however clean its findings are.
    recorded = _recorded_scanners(predicate)
    if recorded is None:
        raise _stored_refusal(
            "the image-scan evidence does not record which trivy scanners ran "
            "(invocation.parameters --scanners); rescan the image",
            ImageScanRefusal.MISSING_SCANNERS,
        )
    missing = [s for s in policy.scanners if s not in recorded]
    if missing:
        raise _stored_refusal(
            f"the image scan ran scanners {list(recorded)} but the policy requires "
            f"{list(policy.scanners)} (missing {missing}); rescan the image",
            ImageScanRefusal.MISSING_SCANNERS,
        )
    verdict = evaluate_scan_policy(result, policy, trusted_db_sha256=trusted_db_sha256, today=today)
    if verdict.passed:
        return verdict
    reasons = [f.label() for f in verdict.blocking] + list(verdict.problems)
    raise _stored_refusal("; ".join(reasons), verdict.reason, verdict)


def _stored_refusal(
    message: str, reason: ImageScanRefusal | None, verdict: ScanVerdict | None = None
) -> ControlRefused:
    return ControlRefused(
        message,
        where="image-scan evidence",
        fix=" ".join(scan_fixes([reason] if reason else [])) or None,
        reason=reason,
        result=verdict,
    )


def scan_predicate_verdict(
    predicate: Mapping[str, Any],
    policy: ScanPolicy,
    *,
    trusted_db_sha256: Collection[str] = (),
    today: dt.date | None = None,
) -> str | None:
    """Re-judge stored image-scan evidence against ``policy``: ``None`` if it passes,
    else one sentence saying why not (see :func:`enforce_scan_predicate` for the reason)."""
    try:
        enforce_scan_predicate(predicate, policy, trusted_db_sha256=trusted_db_sha256, today=today)
    except ControlRefused as exc:
        return exc.message
    return None
