"""Caching the schema gate (issue 11): the same dataset digest, schema digest and policy reuse
the validation result, and the evidence says so; a changed dataset, schema or policy is
validated again. The key is tested in-process; the reuse through real Prefect flow runs
(ephemeral API server, the session's own PREFECT_HOME)."""

from __future__ import annotations

import hashlib
import importlib.metadata
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from prefect import flow
from prefect.runtime import flow_run

from secmlops.controls.validation import (
    ValidationPolicy,
    ValidationRefusal,
    ValidationResult,
    load_schema,
    validation_cache_key,
    validation_statement,
)
from secmlops.demo.data_registry import generate_churn_dataset
from secmlops.errors import ControlRefused
from tasks.validation import validate_dataset_reusing

SCHEMA = """\
import pandera.polars as pa

class Rows(pa.DataFrameModel):
    tenure_months: int = pa.Field(ge=0, le={limit})
    churned: int = pa.Field(isin=[0, 1])

    class Config:
        strict = True
        name = "Rows"
        {metadata}
"""
QUARANTINE = 'metadata = {"secmlops": {"quarantine": {"max_failing_percent": 5}}}'


def write_schema(path: Path, *, limit: int = 72, quarantine: bool = False) -> str:
    path.write_text(SCHEMA.format(limit=limit, metadata=QUARANTINE if quarantine else ""))
    return f"{path}:Rows"


def write_data(path: Path, *, bad_rows: int = 0, seed_row: int = 0) -> str:
    frame = generate_churn_dataset("v1.0", rows=100)[["tenure_months", "churned"]].copy()
    frame.loc[seed_row, "churned"] = 1 - frame.loc[seed_row, "churned"]
    if bad_rows:
        frame.loc[: bad_rows - 1, "tenure_months"] = 500
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(path, index=False)
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- the key ------------------------------------------------------------------------------


def test_the_key_changes_with_every_input(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = write_schema(tmp_path / "s.py")
    schema = load_schema(spec)
    base = validation_cache_key("a" * 64, schema)
    assert base == validation_cache_key("a" * 64, load_schema(spec))  # deterministic
    assert base == validation_cache_key("a" * 64, schema, ValidationPolicy())
    assert base != validation_cache_key("b" * 64, schema)  # dataset
    changed = load_schema(write_schema(tmp_path / "s.py", limit=73))
    assert changed.digest != schema.digest
    assert base != validation_cache_key("a" * 64, changed)  # schema
    quarantined = load_schema(write_schema(tmp_path / "s.py", quarantine=True))
    assert base != validation_cache_key("a" * 64, quarantined)  # quarantine policy
    assert base != validation_cache_key("a" * 64, schema, ValidationPolicy(min_rows=2))  # policy
    real = importlib.metadata.version
    monkeypatch.setattr(
        importlib.metadata,
        "version",
        lambda name: "99.0" if name == "pandera" else real(name),
    )
    assert base != validation_cache_key("a" * 64, schema)  # the engine's version


# --- reuse through Prefect ----------------------------------------------------------------


@flow(name="validate-cached-test", validate_parameters=False)
def validate_flow(
    data: Path, spec: str, data_sha256: str, out: Path, min_rows: int = 1
) -> dict[str, Any]:
    result = validate_dataset_reusing(
        data,
        load_schema(spec),
        ValidationPolicy(min_rows=min_rows),
        data_sha256=data_sha256,
        quarantine_dir=out,
    )
    return {"result": result, "run": str(flow_run.id)}


def run(data: Path, spec: str, digest: str, out: Path, **kw: Any) -> tuple[ValidationResult, str]:
    returned = validate_flow(data, spec, digest, out, **kw)
    return returned["result"], returned["run"]


@pytest.mark.integration
def test_same_digests_reuse_the_result_and_any_change_revalidates(tmp_path: Path) -> None:
    spec = write_schema(tmp_path / "schema.py")
    first_dir, second_dir = tmp_path / "run1", tmp_path / "run2"
    digest = write_data(first_dir / "rows.parquet")
    assert write_data(second_dir / "rows.parquet") == digest  # same bytes, another path

    first, run1 = run(first_dir / "rows.parquet", spec, digest, tmp_path / "q1")
    assert not first.cached and first.run_id == run1

    # Same dataset digest, schema and policy: reused, and the evidence says from which run.
    again, run2 = run(second_dir / "rows.parquet", spec, digest, tmp_path / "q2")
    assert run2 != run1
    assert again.cached and again.run_id == run1
    assert again.data_path == second_dir / "rows.parquet"
    assert again.validated_at == first.validated_at
    summary = validation_statement(again)["predicate"]["summary"]
    assert summary["cached"] is True and summary["validatedInRun"] == run1
    assert summary["backend"] == again.backend
    assert again.to_json()["cached"] is True and again.to_json()["run_id"] == run1

    # A changed dataset is validated again.
    other = write_data(tmp_path / "run3" / "rows.parquet", seed_row=1)
    changed_data, _ = run(tmp_path / "run3" / "rows.parquet", spec, other, tmp_path / "q3")
    assert not changed_data.cached and changed_data.data_sha256 == other

    # A changed schema is validated again.
    loosened = write_schema(tmp_path / "schema2.py", limit=80)
    changed_schema, _ = run(second_dir / "rows.parquet", loosened, digest, tmp_path / "q4")
    assert not changed_schema.cached

    # A changed policy is validated again.
    changed_policy, _ = run(second_dir / "rows.parquet", spec, digest, tmp_path / "q5", min_rows=2)
    assert not changed_policy.cached


@pytest.mark.integration
def test_refusals_are_never_cached_and_the_digest_is_checked(tmp_path: Path) -> None:
    spec = write_schema(tmp_path / "schema.py")
    data = tmp_path / "bad.parquet"
    digest = write_data(data, bad_rows=10)
    for _ in range(2):  # a refusal is not stored: the second run validates and refuses again
        with pytest.raises(ControlRefused) as info:
            run(data, spec, digest, tmp_path / "q")
        assert info.value.reason is ValidationRefusal.SCHEMA_CHECK_FAILED
    # The bytes must be the ones the key names (the data pull's digest).
    good = tmp_path / "good.parquet"
    write_data(good)
    with pytest.raises(ControlRefused) as info:
        run(good, spec, "0" * 64, tmp_path / "q")
    assert info.value.reason is ValidationRefusal.DATASET_CHANGED


@pytest.mark.integration
def test_a_reused_quarantine_needs_its_files_intact(tmp_path: Path) -> None:
    spec = write_schema(tmp_path / "schema.py", quarantine=True)
    data = tmp_path / "rows.parquet"
    digest = write_data(data, bad_rows=3)  # 3 % <= 5 %
    out = tmp_path / "validated"
    first, run1 = run(data, spec, digest, out)
    assert first.quarantine is not None and not first.cached
    reused, _ = run(data, spec, digest, tmp_path / "elsewhere")
    assert reused.cached and reused.run_id == run1
    assert reused.quarantine == first.quarantine  # the files of the run that validated
    # The clean file was changed: the cached result is not taken; validated again.
    clean = first.quarantine.clean_path
    pd.read_parquet(clean).head(5).to_parquet(clean)
    fresh, run3 = run(data, spec, digest, tmp_path / "again")
    assert not fresh.cached and fresh.run_id == run3
    assert fresh.quarantine is not None
    assert fresh.quarantine.clean_path.parent == tmp_path / "again"
    # And the refreshed entry is the one reused next.
    shutil.rmtree(out)
    next_run, _ = run(data, spec, digest, tmp_path / "later")
    assert next_run.cached and next_run.run_id == run3
