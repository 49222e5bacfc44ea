"""Prefect tasks over :mod:`secmlops.controls.signing`."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from secmlops.controls.signing import ModelSignature, sign_model, verify_model_signature


@task(
    name="sign-model",
    task_run_name="sign-model",
    cache_policy=NO_CACHE,
    retries=0,
    timeout_seconds=600,
)
def sign_model_task(model_dir: Path, private_key: Path, signature: Path) -> ModelSignature:
    """Prefect wrapper for :func:`sign_model`."""
    return sign_model(model_dir, private_key=private_key, signature=signature)


@task(
    name="verify-model-signature",
    task_run_name="verify-model-signature",
    cache_policy=NO_CACHE,
    retries=0,
    timeout_seconds=600,
)
def verify_model_signature_task(model_dir: Path, signature: Path, public_key: Path) -> None:
    """Prefect wrapper for :func:`verify_model_signature` (never cached)."""
    verify_model_signature(model_dir, signature=signature, public_key=public_key)
