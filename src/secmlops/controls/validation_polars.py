"""The polars backend of the schema gate: ``pandera.polars`` schemas over CSV and Parquet.

Parquet is **scanned** (``pl.scan_parquet``): pandera runs each check as a lazy query that
reads only the columns it needs, so the frame is never held whole. A CSV is parsed once
into memory (scanning it would re-parse the text for every check), with
dtypes inferred from the first 10,000 rows, or from every row when a later value does not
fit them, so a stray ``"twelve"`` in an integer column is the dtype failure it is. The
file is hashed (streaming) before it is read and must be unchanged (same inode, size, mtime
and ctime) after the last check, or the gate refuses.

Used by :mod:`secmlops.controls.validation`; import polars only through here.

Example::

    table = read_polars_table(path, "parquet", sha256=digest, st=os.stat(path))
    run = run_polars_schema(schema, "MySchema", spec, table, max_cases=20, per_check=3,
                            want_rows=False)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandera.polars as pap
import polars as pl
from pandera import config as pandera_config
from pandera.errors import SchemaError, SchemaErrors

from secmlops.controls.quarantine import row_failures
from secmlops.controls.validation_polars_proof import without_proven_checks
from secmlops.errors import InputError, ToolError

# Checks pandera reports against the whole frame; their failure_case is a column name.
_MISSING_COLUMN = "column_in_dataframe"
_FRAME_COLUMN_CHECKS = ("column_in_schema", "column_ordered")
_FIX_UNREADABLE = "check the file is the dataset you meant and is not truncated"
_CSV_SAMPLE_ROWS = 10_000


@dataclass(frozen=True)
class PolarsTable:
    """A dataset opened for the polars backend: the lazy frame and what was hashed."""

    path: Path
    frame: pl.LazyFrame
    sha256: str
    rows: int
    columns: tuple[str, ...]
    #: (device, inode, size, mtime_ns, ctime_ns) of the file when it was hashed.
    identity: tuple[int, ...]


def _identity(st: os.stat_result) -> tuple[int, ...]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def file_identity(path: Path) -> tuple[int, ...]:
    """What :class:`PolarsTable.identity` compares: the file as it is now."""
    return _identity(os.stat(path))


def _unreadable(path: Path, kind: str, exc: BaseException) -> InputError:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return InputError(
        f"dataset {path} cannot be parsed as {kind}: {text}", where=str(path), fix=_FIX_UNREADABLE
    )


def read_polars_table(path: Path, kind: str, sha256: str, st: os.stat_result) -> PolarsTable:
    """Open ``path`` (hashed as ``sha256`` when its stat was ``st``) for validation: a CSV
    (``kind == "csv"``) is parsed, a parquet file scanned, its footer read now so a damaged
    file fails here. The caller compares :func:`file_identity` with ``table.identity`` after
    the checks.

    Raises ``InputError`` naming the file for an empty, garbage or truncated file.
    """
    csv = kind == "csv"
    try:
        frame = _parse_csv(path).lazy() if csv else pl.scan_parquet(path)
        columns = tuple(frame.collect_schema().names())
        rows = int(frame.select(pl.len()).collect().item())
    except pl.exceptions.NoDataError as exc:
        raise InputError(
            f"dataset {path} is empty (no header, no rows)",
            where=str(path),
            fix="check the data pull; an empty file is never a valid dataset",
        ) from exc
    # (a corrupt file can make polars panic)
    except (pl.exceptions.PolarsError, pl.exceptions.PanicException, OSError, ValueError) as exc:
        raise _unreadable(path, kind, exc) from exc
    return PolarsTable(path, frame, sha256, rows, columns, _identity(st))


def _parse_csv(path: Path) -> pl.DataFrame:
    """Parse CSV with dtypes inferred from the first rows, or, when a later value does not
    fit them, from every row (so ``"twelve"`` deep in an integer column is a String column,
    the dtype failure it is, not a parse error). Full inference is ~10x slower: only the
    data that needs it pays for it."""
    try:
        return pl.read_csv(path, infer_schema_length=_CSV_SAMPLE_ROWS)
    except pl.exceptions.ComputeError:
        return pl.read_csv(path, infer_schema_length=None)


def require_polars_enforcing() -> bool:
    """Does the polars engine reject a canary frame that violates its schema?"""
    canary = pap.DataFrameSchema(
        {"canary": pap.Column(int, pap.Check.ge(0), unique=True)}, name="canary"
    )
    frame = pl.DataFrame({"canary": [-1, -1, None]})
    try:
        # The proof pass first, as in the gate: it must not take a failing check away.
        without_proven_checks(canary, frame.lazy()).schema.validate(frame, lazy=True)
    except SchemaErrors as exc:
        return {e.reason_code.value for e in exc.schema_errors if e.reason_code} >= {
            "dataframe_check",
            "series_contains_duplicates",
            "series_contains_nulls",
        }
    except SchemaError:
        return False
    return False


@dataclass(frozen=True)
class PolarsRun:
    """What one polars validation found (failures in the shape the pandas path uses)."""

    failures: tuple[tuple[str, str, int, tuple[str, ...]], ...]
    cases: list[dict[str, Any]]
    pandera_reasons: tuple[str, ...]
    #: Per failing row, the tests it failed (``row``, ``reason``); ``None`` when any failure
    #: is schema-level. Only computed when ``want_rows``.
    failing_rows: pl.DataFrame | None


def run_polars_schema(
    schema: pap.DataFrameSchema,
    schema_name: str,
    spec: str,
    table: PolarsTable,
    *,
    max_cases: int,
    per_check: int,
    want_rows: bool,
) -> PolarsRun:
    """Validate lazily (every failure collected in one pass) with validation forced on."""
    try:
        with pandera_config.config_context(
            validation_enabled=True,
            validation_depth=pandera_config.ValidationDepth.SCHEMA_AND_DATA,
        ):
            proven = without_proven_checks(schema, table.frame)
            proven.schema.validate(table.frame, lazy=True)
    except SchemaErrors as exc:
        fc = exc.failure_cases
        if not isinstance(fc, pl.DataFrame):
            raise ToolError(
                f"pandera returned failure cases of type {type(fc).__name__} for {table.path}",
                where=spec,
                fix="check the pandera version (polars failure cases are expected)",
            ) from exc
        fc = proven.renumber(fc)
        codes = tuple(sorted({_reason_code(e) for e in exc.schema_errors}))
        cases = [
            {k: (None if v is None else str(v)) for k, v in row.items()}
            for row in fc.head(max_cases).to_dicts()
        ]
        rows = row_failures(fc, schema_name=schema_name) if want_rows else None
        return PolarsRun(summarise(fc, schema_name, per_check), cases, codes, rows)
    except SchemaError as exc:
        check = str(exc.check or exc.reason_code)
        failure = (str(getattr(exc.schema, "name", schema_name)), check, 1, (str(exc)[:200],))
        return PolarsRun((failure,), [], (_reason_code(exc),), None)
    except (pl.exceptions.PolarsError, pl.exceptions.PanicException, OSError) as exc:
        # Raised outside any check (pandera wraps check errors as failures): reading the data.
        raise _unreadable(table.path, table.path.suffix.lstrip(".") or "data", exc) from exc
    except Exception as exc:
        raise ToolError(
            f"validating {table.path} with schema {schema_name} crashed: "
            f"{type(exc).__name__}: {exc}",
            where=spec,
            fix="a custom check in the schema raised; fix the check (it did not pass)",
        ) from exc
    return PolarsRun((), [], (), None)


def _reason_code(error: SchemaError) -> str:
    code = error.reason_code
    return str(code.value) if code is not None else "unknown"


def summarise(
    failure_cases: pl.DataFrame, schema_name: str, per_check: int
) -> tuple[tuple[str, str, int, tuple[str, ...]], ...]:
    """Group failure cases by (column, check): ``(column, check, count, examples)``.

    The same grouping as the pandas path: a missing column is keyed by its name; the
    frame's column checks and frame-wide checks by the schema's name, counted once per
    column or row (``"row N"``).
    """
    check = pl.col("check").cast(pl.String)
    value = pl.col("failure_case").cast(pl.String).fill_null("None")
    frame_wide = pl.col("schema_context") == "DataFrameSchema"
    keyed = failure_cases.select(
        pl.when(check == _MISSING_COLUMN)
        .then(value)
        .when(check.is_in(list(_FRAME_COLUMN_CHECKS)) | frame_wide)
        .then(pl.lit(schema_name))
        .otherwise(pl.col("column").cast(pl.String))
        .alias("key"),
        check.alias("check"),
        pl.when(frame_wide & ~check.is_in([_MISSING_COLUMN, *_FRAME_COLUMN_CHECKS]))
        .then(
            pl.when(pl.col("index").is_not_null())
            .then(pl.format("row {}", pl.col("index")))
            .otherwise(value)
        )
        .otherwise(value)
        .alias("value"),
    )
    # Cases keyed to the frame are counted once per distinct value (column or row).
    per_frame = keyed.filter(pl.col("key") == schema_name).unique(maintain_order=True)
    rest = keyed.filter(pl.col("key") != schema_name)
    grouped = (
        pl.concat([per_frame, rest])
        .group_by("key", "check", maintain_order=True)
        .agg(pl.len().alias("count"), pl.col("value").head(per_check).alias("examples"))
        .sort("key", "check")
    )
    return tuple(
        (row["key"], row["check"], int(row["count"]), tuple(row["examples"]))
        for row in grouped.iter_rows(named=True)
    )
