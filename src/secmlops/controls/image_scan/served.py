"""Scan the image a site entry names, and refuse unless it is the image the site serves.

A run parameter only *names* an image entry (``sources.images`` in the policy file); the
entry says where to read the image (``target``), whether Trivy may pull it from a registry
(``registry_access``) and which image the site serves (``digest``: the image ID, the sha256
of the image's config blob). :func:`scan_served_image` scans that target and refuses with
``IMAGE_NOT_SERVED`` when the scanned image is any other. The demo entry (empty ``target``)
scans the demo image the flow just built, against that image's own ID.

Example::

    name, entry = select(policy.sources.images, "serving", "image")
    result = scan_served_image(entry, cache_dir=cache, policy=policy.scan)
    verdict = enforce_scan_policy(
        result, policy.scan, trusted_db_sha256=policy.sources.trivy_db.sha256
    )
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from secmlops.controls.image_scan.findings import ImageScanResult
from secmlops.controls.image_scan.policy import ScanPolicy
from secmlops.controls.image_scan.reasons import ImageScanRefusal
from secmlops.controls.image_scan.runner import scan_image
from secmlops.controls.image_scan.verdict import scan_fixes
from secmlops.errors import ControlRefused, InputError
from secmlops.site import ImageSource


class BuiltImage(Protocol):
    """A locally built image archive (``secmlops.demo.serving_image.ServingImage`` is one)."""

    @property
    def path(self) -> Path: ...

    @property
    def image_digest(self) -> str: ...


def _image_hex(digest: str, where: str) -> str:
    value = digest.removeprefix("sha256:")
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise InputError(
            f"expected image digest {digest!r} is not sha256:<64 hex digits>",
            where=where,
            fix="pin the image ID (sha256 of its config blob) in sources.images.<name>.digest",
        )
    return value


def enforce_served_image(result: ImageScanResult, expected_digest: str) -> None:
    """Refuse (``IMAGE_NOT_SERVED``) unless the scan is of the image the site serves.

    ``expected_digest``: the site's ``sources.images.<name>.digest`` (``sha256:<hex>`` or
    bare hex), i.e. the image ID (the sha256 of the image's config blob, what
    ``docker inspect -f '{{.Id}}'`` prints and Trivy reports as ``Metadata.ImageID``), not a
    registry manifest digest. For the demo image: the built image's own ID.
    """
    expected = _image_hex(expected_digest, "served image digest")
    if result.image_digest == expected:
        return
    raise ControlRefused(
        f"the scanned image {result.subject_name} (sha256:{result.image_digest}) is not the "
        f"image the site serves (sha256:{expected})",
        where=f"scan-image {result.target}",
        fix=" ".join(scan_fixes([ImageScanRefusal.IMAGE_NOT_SERVED])),
        details={"scanned": result.image_digest, "expected": expected, "target": result.target},
        reason=ImageScanRefusal.IMAGE_NOT_SERVED,
    )


def served_image_target(
    image: ImageSource, demo_image: BuiltImage | None = None
) -> tuple[str | Path, str]:
    """``(target, expected image digest)`` for a site image entry.

    The demo entry needs ``demo_image`` (the image the flow built); any other entry's
    target and digest come from the site, never from the run.
    """
    if image.is_demo:
        if demo_image is None:
            raise InputError(
                "the demo image entry scans the demo image the flow builds, but none was given",
                where="scan_served_image",
                fix="build the demo image (build_serving_image) and pass it as demo_image",
            )
        return demo_image.path, demo_image.image_digest
    if image.digest is None:  # ImageSource refuses this at load time; never scan unpinned
        raise InputError(
            f"image entry {image.target!r} has no digest",
            where="sources.images",
            fix="pin the served image's ID (sha256:...) in the entry's digest",
        )
    return image.target, image.digest


def scan_served_image(
    image: ImageSource,
    *,
    cache_dir: Path,
    policy: ScanPolicy,
    demo_image: BuiltImage | None = None,
) -> ImageScanResult:
    """Scan the site entry's image; ``ControlRefused`` (``IMAGE_NOT_SERVED``) if not served.

    Trivy may reach the entry's registry only when the entry sets ``registry_access``;
    otherwise a target that is not a local archive or layout is an ``InputError`` before
    Trivy runs. The DB and the findings are judged afterwards by ``enforce_scan_policy``.
    """
    target, expected = served_image_target(image, demo_image)
    result = scan_image(
        target, cache_dir=cache_dir, policy=policy, registry_access=image.registry_access
    )
    enforce_served_image(result, expected)
    return result
