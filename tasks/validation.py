"""Prefect tasks over :mod:`secmlops.controls.validation`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from secmlops.controls.validation import (
    SchemaRef,
    ValidationPolicy,
    ValidationResult,
    load_site_schema,
    validate_dataset,
)
from secmlops.errors import InputError


@task(
    name="load-site-schema",
    task_run_name="load-site-schema-{spec}",
    cache_policy=NO_CACHE,
    persist_result=False,
    timeout_seconds=120,
)
def load_site_schema_task(
    spec: str,
    *,
    project_dir: Path,
    user_code_dir: str = "ml",
    allowed_modules: Sequence[str] = (),
    sha256: str | None = None,
) -> SchemaRef:
    """Prefect task: :func:`load_site_schema` (where the schema comes from, and its digest, are
    checked before it is imported; never cached)."""
    return load_site_schema(
        spec,
        project_dir=project_dir,
        user_code_dir=user_code_dir,
        allowed_modules=allowed_modules,
        sha256=sha256,
    )


@task(
    name="validate-dataset",
    task_run_name="validate-dataset",
    cache_policy=NO_CACHE,
    timeout_seconds=600,
)
def validate_dataset_task(
    data: Path, schema: SchemaRef, policy: ValidationPolicy | None = None
) -> ValidationResult:
    """Prefect task: :func:`validate_dataset` (never cached: the gate reruns every time).

    ``schema`` is the :class:`SchemaRef` from :func:`load_site_schema_task`, never a spec
    string: a string would be imported by :func:`~secmlops.controls.validation.load_schema`
    (any file or module) without the site's checks (issue 12 finding 1).
    """
    if not isinstance(schema, SchemaRef):
        raise InputError(
            f"validate-dataset needs a schema loaded by load_site_schema, got {schema!r}",
            where="validate_dataset_task",
            fix="load the site's schema with load_site_schema_task and pass its result",
        )
    return validate_dataset(data, schema, policy=policy)
