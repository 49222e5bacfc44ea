"""Prefect tasks over :mod:`secmlops.controls.validation`.

``validate-dataset`` is cached on :func:`~secmlops.controls.validation.validation_cache_key`
(the dataset's sha256 from the data pull, the schema's digest, the validation policy and the
versions of secmlops, pandera and the engine): a run over the same bytes, schema and policy
reuses the earlier result, and :func:`validate_dataset_reusing` marks it ``cached`` with the
run that validated it, so the evidence says so. A refusal is never cached (the task fails).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext
from prefect.runtime import flow_run

from secmlops._internal.digests import sha256_file
from secmlops.controls.quarantine import QuarantineRecord
from secmlops.controls.validation import (
    SchemaRef,
    ValidationPolicy,
    ValidationResult,
    load_site_schema,
    validate_dataset,
    validation_cache_key,
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


def _cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str | None:
    """:func:`validation_cache_key` of the call; ``None`` (no caching) without a digest."""
    schema, digest = parameters.get("schema"), parameters.get("data_sha256")
    if not isinstance(schema, SchemaRef) or not isinstance(digest, str) or not digest:
        return None
    policy = parameters.get("policy")
    return "validate-dataset-" + validation_cache_key(
        digest, schema, policy if isinstance(policy, ValidationPolicy) else None
    )


@task(
    name="validate-dataset",
    task_run_name="validate-dataset",
    cache_key_fn=_cache_key,
    persist_result=True,
    timeout_seconds=1800,
)
def validate_dataset_task(
    data: Path,
    schema: SchemaRef,
    policy: ValidationPolicy | None = None,
    *,
    data_sha256: str,
    quarantine_dir: Path | None = None,
) -> ValidationResult:
    """Prefect task: :func:`validate_dataset` of the pulled bytes (``data_sha256``, checked).

    ``schema`` is the :class:`SchemaRef` from :func:`load_site_schema_task`, never a spec
    string: a string would be imported by :func:`~secmlops.controls.validation.load_schema`
    (any file or module) without the site's checks (issue 12 finding 1). The result records
    the flow run that validated it; cached under the digests (see the module docstring).
    """
    if not isinstance(schema, SchemaRef):
        raise InputError(
            f"validate-dataset needs a schema loaded by load_site_schema, got {schema!r}",
            where="validate_dataset_task",
            fix="load the site's schema with load_site_schema_task and pass its result",
        )
    result = validate_dataset(
        data, schema, policy=policy, quarantine_dir=quarantine_dir, expected_sha256=data_sha256
    )
    run_id = flow_run.id
    return result if run_id is None else replace(result, run_id=str(run_id))


def _outputs_intact(record: QuarantineRecord) -> bool:
    """Are a reused result's clean and quarantine files still there, byte for byte?"""
    try:
        return (
            sha256_file(record.clean_path) == record.clean_sha256
            and sha256_file(record.quarantine_path) == record.quarantine_sha256
        )
    except (OSError, InputError):
        return False


def validate_dataset_reusing(
    data: Path,
    schema: SchemaRef,
    policy: ValidationPolicy | None = None,
    *,
    data_sha256: str,
    quarantine_dir: Path | None = None,
) -> ValidationResult:
    """Validate through the cache (call it inside a flow run).

    A result from an earlier run is returned :meth:`~ValidationResult.reused` (``cached``,
    its ``run_id`` the run that validated). It is taken only if it is about these digests
    and, under quarantine, its clean and quarantine files are still intact; otherwise the
    dataset is validated again and the cache entry replaced.
    """
    result: ValidationResult = validate_dataset_task(
        data, schema, policy, data_sha256=data_sha256, quarantine_dir=quarantine_dir
    )
    current = flow_run.id
    if result.run_id is None or current is None or result.run_id == str(current):
        return result
    if (
        result.data_sha256 == data_sha256
        and result.schema_digest == schema.digest
        and (result.quarantine is None or _outputs_intact(result.quarantine))
    ):
        return result.reused(data)
    fresh: ValidationResult = validate_dataset_task.with_options(refresh_cache=True)(
        data, schema, policy, data_sha256=data_sha256, quarantine_dir=quarantine_dir
    )
    return fresh
