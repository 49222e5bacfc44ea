"""Image scanning control: the real Trivy, fully offline, decided by policy from its JSON.

``scan_image`` (:mod:`.runner`) runs ``trivy image`` against a docker-archive tar or an OCI
layout directory (an image reference only with the site's ``registry_access``), with the
air-gapped flags and the DB from ``cache_dir`` (:mod:`.db`), and returns what it found
(:mod:`.findings`); ``scan_served_image`` (:mod:`.served`) does so for a site image entry and
refuses an image other than the one the site serves (``enforce_served_image``).
``evaluate_scan_policy`` (:mod:`.verdict`) judges it against a :class:`ScanPolicy`
(:mod:`.policy`) and the site's pinned DB digests and returns a :class:`ScanVerdict`;
``enforce_scan_policy`` raises ``ControlRefused`` whose ``reason`` is an
:class:`ImageScanRefusal`. ``db_refusal``/``db_accepted`` is the one rule for which Trivy DB
counts, and ``binary_refusal`` (:mod:`.binary`) the one for which Trivy binary counts (the
wheel's, by its RECORD sha256, or one ``allowed_trivy_sha256`` names); both are used by the
scan and by the deploy gate.
``image_scan_statement`` (:mod:`.predicate`) turns both into an in-toto ``vulns`` Statement
for the flow to sign, and ``enforce_scan_predicate`` re-judges a stored one.

Example::

    policy = ScanPolicy(allowed=(AllowedVulnerability(
        id="CVE-2024-6387", reason="sshd not installed; client only", expires=date(2026, 1, 31)),))
    result = scan_image(Path("build/serving.tar"), cache_dir=Path(".cache/trivy"), policy=policy)
    enforce_served_image(result, "sha256:9a0b...")         # the image ID the site serves
    verdict = enforce_scan_policy(                          # raises ControlRefused on a block
        result, policy, trusted_db_sha256=("5e2d...",))     # sources.trivy_db.sha256
    statement = image_scan_statement(result, verdict)

Fail closed: a missing DB, a Trivy that fails, times out or prints anything but a valid
report raises ``ToolError`` (exit 3), never a pass. The decision never uses Trivy's exit code.
The demo DB and demo image live in :mod:`secmlops.demo`, not here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from secmlops.controls.image_scan.binary import (
    TRIVY_DISTRIBUTION,
    binary_refusal,
    pinned_trivy_sha256,
    trivy_binary_sha256,
)
from secmlops.controls.image_scan.db import (
    DEMO_TRIVY_DB_SHA256,
    UPSTREAM_SOURCE_LABEL,
    DbOrigin,
    TrivyDbInfo,
    db_accepted,
    db_refusal,
    read_trivy_db_info,
    trivy_db_origin,
)
from secmlops.controls.image_scan.findings import Finding, ImageScanResult
from secmlops.controls.image_scan.policy import (
    MAX_TIMEOUT_SECONDS,
    SEVERITIES,
    AllowedVulnerability,
    Scanner,
    ScanPolicy,
    Severity,
)
from secmlops.controls.image_scan.predicate import (
    enforce_scan_predicate,
    image_scan_statement,
    scan_predicate_verdict,
    scan_result_from_predicate,
)
from secmlops.controls.image_scan.reasons import ImageScanRefusal
from secmlops.controls.image_scan.runner import (
    OFFLINE_FLAGS,
    TRIVY_BINARY_ENV,
    TrivyInvocation,
    scan_image,
    trivy_invocation,
)
from secmlops.controls.image_scan.served import (
    BuiltImage,
    enforce_served_image,
    scan_served_image,
    served_image_target,
)
from secmlops.controls.image_scan.verdict import (
    AllowedFinding,
    ScanVerdict,
    enforce_scan_policy,
    evaluate_scan_policy,
)

if TYPE_CHECKING:
    from secmlops.demo.serving_image import build_serving_image
    from secmlops.demo.trivy_db import seed_demo_trivy_db

#: Demo helpers this module used to export; import them from :mod:`secmlops.demo` instead.
#: Resolved lazily so the control never imports the demo code itself.
_DEMO_EXPORTS = {
    "build_serving_image": "secmlops.demo.serving_image",
    "seed_demo_trivy_db": "secmlops.demo.trivy_db",
}


def __getattr__(name: str) -> Any:
    """Backward-compatible access to the demo helpers (``seed_demo_trivy_db``, ...)."""
    if name in _DEMO_EXPORTS:
        import importlib

        return getattr(importlib.import_module(_DEMO_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DEMO_TRIVY_DB_SHA256",
    "MAX_TIMEOUT_SECONDS",
    "OFFLINE_FLAGS",
    "SEVERITIES",
    "TRIVY_BINARY_ENV",
    "TRIVY_DISTRIBUTION",
    "UPSTREAM_SOURCE_LABEL",
    "AllowedFinding",
    "AllowedVulnerability",
    "BuiltImage",
    "DbOrigin",
    "Finding",
    "ImageScanRefusal",
    "ImageScanResult",
    "ScanPolicy",
    "ScanVerdict",
    "Scanner",
    "Severity",
    "TrivyDbInfo",
    "TrivyInvocation",
    "binary_refusal",
    "build_serving_image",
    "db_accepted",
    "db_refusal",
    "enforce_scan_policy",
    "enforce_scan_predicate",
    "enforce_served_image",
    "evaluate_scan_policy",
    "image_scan_statement",
    "pinned_trivy_sha256",
    "read_trivy_db_info",
    "scan_image",
    "scan_predicate_verdict",
    "scan_result_from_predicate",
    "scan_served_image",
    "seed_demo_trivy_db",
    "served_image_target",
    "trivy_binary_sha256",
    "trivy_db_origin",
    "trivy_invocation",
]
