"""Prefect tasks over :mod:`secmlops.controls.image_scan`."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from secmlops.controls.image_scan import (
    MAX_TIMEOUT_SECONDS,
    ImageScanResult,
    ScanPolicy,
    TrivyDbInfo,
    scan_served_image,
)
from secmlops.demo.serving_image import DEFAULT_TAG, ServingImage, build_serving_image
from secmlops.demo.trivy_db import seed_demo_trivy_db
from secmlops.site import ImageSource

# --- Prefect tasks -------------------------------------------------------------------------


@task(
    name="seed-trivy-db",
    task_run_name="seed-demo-trivy-db",
    cache_policy=NO_CACHE,
    timeout_seconds=120,
)
def seed_trivy_db_task(cache_dir: Path) -> TrivyDbInfo:
    """Write the offline demo Trivy DB into ``cache_dir`` (idempotent)."""
    return seed_demo_trivy_db(cache_dir)


@task(
    name="build-serving-image",
    task_run_name="build-serving-image-{tag}",
    cache_policy=NO_CACHE,
    timeout_seconds=300,
)
def build_serving_image_task(
    out_path: Path, lock_file: Path, tag: str = DEFAULT_TAG
) -> ServingImage:
    """Build the demo serving image (docker-archive) from the lock file."""
    return build_serving_image(out_path, lock_file=lock_file, tag=tag)


@task(
    name="scan-image",
    task_run_name="scan-image",
    cache_policy=NO_CACHE,
    timeout_seconds=MAX_TIMEOUT_SECONDS + 120,
)
def scan_image_task(
    image: ImageSource,
    cache_dir: Path,
    policy: ScanPolicy,
    demo_image: ServingImage | None = None,
) -> ImageScanResult:
    """Scan the site's image entry with Trivy (no caching: every run looks again).

    Refuses (``IMAGE_NOT_SERVED``) unless the scanned image is the one the site serves
    (the entry's digest; for the demo entry, ``demo_image``'s own); Trivy reaches a registry
    only if the entry sets ``registry_access``. Judge the result with ``enforce_scan_policy``
    and the site's ``sources.trivy_db.sha256``.
    """
    return scan_served_image(image, cache_dir=cache_dir, policy=policy, demo_image=demo_image)
