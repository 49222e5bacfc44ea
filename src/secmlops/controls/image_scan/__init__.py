"""Image scanning control: the real Trivy, fully offline, decided by policy from its JSON.

``scan_image`` (:mod:`.runner`) runs ``trivy image`` against a docker-archive tar, an OCI
layout directory or an image reference, with the air-gapped flags and the DB from
``cache_dir`` (:mod:`.db`), and returns what it found (:mod:`.findings`).
``evaluate_scan_policy`` (:mod:`.verdict`) judges it against a :class:`ScanPolicy`
(:mod:`.policy`) and returns a :class:`ScanVerdict`; ``enforce_scan_policy`` raises
``ControlRefused`` whose ``reason`` is an :class:`ImageScanRefusal`.
``image_scan_statement`` (:mod:`.predicate`) turns both into an in-toto ``vulns`` Statement
for the flow to sign, and ``enforce_scan_predicate`` re-judges a stored one.

Example::

    policy = ScanPolicy(allowed=(AllowedVulnerability(
        id="CVE-2024-6387", reason="sshd not installed; client only", expires=date(2026, 1, 31)),))
    result = scan_image(Path("build/serving.tar"), cache_dir=Path(".cache/trivy"), policy=policy)
    verdict = enforce_scan_policy(result, policy)          # raises ControlRefused on a block
    statement = image_scan_statement(result, verdict)

Fail closed: a missing DB, a Trivy that fails, times out or prints anything but a valid
report raises ``ToolError`` (exit 3), never a pass. The decision never uses Trivy's exit code.
The demo DB and demo image live in :mod:`secmlops.demo`, not here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from secmlops.controls.image_scan.db import UPSTREAM_SOURCE_LABEL, TrivyDbInfo, read_trivy_db_info
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
from secmlops.controls.image_scan.runner import (
    OFFLINE_FLAGS,
    TRIVY_BINARY_ENV,
    TrivyInvocation,
    scan_image,
    trivy_invocation,
)
from secmlops.controls.image_scan.verdict import (
    AllowedFinding,
    ImageScanRefusal,
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
    "MAX_TIMEOUT_SECONDS",
    "OFFLINE_FLAGS",
    "SEVERITIES",
    "TRIVY_BINARY_ENV",
    "UPSTREAM_SOURCE_LABEL",
    "AllowedFinding",
    "AllowedVulnerability",
    "Finding",
    "ImageScanRefusal",
    "ImageScanResult",
    "ScanPolicy",
    "ScanVerdict",
    "Scanner",
    "Severity",
    "TrivyDbInfo",
    "TrivyInvocation",
    "build_serving_image",
    "enforce_scan_policy",
    "enforce_scan_predicate",
    "evaluate_scan_policy",
    "image_scan_statement",
    "read_trivy_db_info",
    "scan_image",
    "scan_predicate_verdict",
    "scan_result_from_predicate",
    "seed_demo_trivy_db",
    "trivy_invocation",
]
