"""Prefect tasks over :mod:`secmlops.controls.image_signing`."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from secmlops.controls.image_signing import ImageSignatures, sign_image
from secmlops.evidence.signers import Signer


@task(
    name="sign-image",
    task_run_name="sign-image",
    cache_policy=NO_CACHE,
    retries=0,
    timeout_seconds=300,
)
def sign_image_task(
    source: Path,
    *,
    repository: str,
    signer: Signer,
    scan_statement: Mapping[str, Any],
    out_dir: Path,
) -> ImageSignatures:
    """Sign the scanned serving image (cosign signature + scan attestation, keyed by its
    registry manifest digest) into a new OCI layout at ``out_dir``; refused unless
    ``scan_statement`` is a passing scan of this very image. Not cached: every run signs
    what it scanned."""
    return sign_image(
        source,
        repository=repository,
        signer=signer,
        scan_statement=scan_statement,
        out_dir=out_dir,
    )
