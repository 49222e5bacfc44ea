"""Quarantine: a schema may tolerate a few failing rows, set aside and recorded, never dropped.

A schema opts in through pandera's own metadata (reviewed with the schema's code, covered by
its digest, and pinned by the site's ``schema_sha256``; no run parameter can turn it on)::

    class Transactions(pa.DataFrameModel):          # pandera.pandas or pandera.polars
        ...
        class Config:
            strict = True
            metadata = {"secmlops": {"quarantine": {"max_failing_percent": 1.0}}}

    # or: pa.DataFrameSchema({...}, metadata={"secmlops": {"quarantine": {...}}})

Only **row-level** check failures qualify (a value out of range, not in its set, null where
it may not be, a duplicate, a failing cross-column check): each names the rows it failed.
Schema-level problems (a missing or extra column, a wrong dtype, a check that crashed or
that judges the frame as a whole) always refuse. When the failing rows are at most
``max_failing_percent`` of the dataset, they are written to a quarantine file with the
reason per row, the rest to a clean file (same format as the input), the clean file is
validated again (it must pass with no tolerance), and both digests go into the evidence.
Above the limit the gate refuses as it would without a quarantine policy.

Example::

    policy = quarantine_policy_of(MySchema, "ml.schema:MySchema")   # None: not opted in
    rows = row_failures(failure_cases, schema_name="MySchema")     # None: schema-level
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from secmlops.errors import InputError

if TYPE_CHECKING:
    import pandas as pd
    import polars as pl

#: Where a schema's metadata declares the policy: ``metadata["secmlops"]["quarantine"]``.
METADATA_KEY = "secmlops"
#: Columns added to the quarantine file: the row's number in the input (0-based, data rows
#: only) and why it was set aside (``"<column>:<check>"``, ``"; "``-separated).
ROW_COLUMN = "_source_row"
REASON_COLUMN = "_quarantine_reason"
#: pandera checks that judge the schema, not a row: they always refuse.
SCHEMA_LEVEL_CHECKS = frozenset({"column_in_dataframe", "column_in_schema", "column_ordered"})
_SCHEMA_LEVEL_PREFIXES = ("dtype(", "coerce_dtype(")


class QuarantinePolicy(BaseModel):
    """How many failing rows a schema tolerates (set aside, recorded), in percent of rows."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_failing_percent: float = Field(
        gt=0,
        le=50,
        description="Largest share of rows (percent, > 0 and <= 50) whose row-level check "
        "failures are quarantined instead of refusing the dataset.",
    )

    def allows(self, failing_rows: int, rows: int) -> bool:
        """Do ``failing_rows`` of ``rows`` fit under the limit?"""
        return rows > 0 and failing_rows * 100 <= self.max_failing_percent * rows


@dataclass(frozen=True)
class QuarantineRecord:
    """What the quarantine set aside: the policy, the counts, and both files' digests."""

    max_failing_percent: float
    rows: int
    failing_rows: int
    quarantine_path: Path
    quarantine_sha256: str
    clean_path: Path
    clean_sha256: str
    clean_rows: int
    #: The row-level checks that failed, counted per check (``CheckFailure`` objects).
    failures: tuple[Any, ...] = ()

    @property
    def failing_percent(self) -> float:
        return 100.0 * self.failing_rows / self.rows if self.rows else 0.0

    def describe(self) -> str:
        return (
            f"{self.failing_rows} of {self.rows} rows ({self.failing_percent:.2f}% <= "
            f"{self.max_failing_percent:g}%) quarantined to {self.quarantine_path.name} "
            f"(sha256 {self.quarantine_sha256[:12]}…); {self.clean_rows} clean rows in "
            f"{self.clean_path.name} (sha256 {self.clean_sha256[:12]}…)"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "max_failing_percent": self.max_failing_percent,
            "rows": self.rows,
            "failing_rows": self.failing_rows,
            "quarantine_path": str(self.quarantine_path),
            "quarantine_sha256": self.quarantine_sha256,
            "clean_path": str(self.clean_path),
            "clean_sha256": self.clean_sha256,
            "clean_rows": self.clean_rows,
            "failures": [f.to_json() for f in self.failures],
        }


def quarantine_policy_of(obj: Any, spec: str) -> QuarantinePolicy | None:
    """The policy a schema declares in its metadata (``None``: it does not opt in).

    ``obj`` is a ``DataFrameModel`` subclass (its ``Config.metadata``) or a
    ``DataFrameSchema`` (its ``metadata``). A malformed declaration is an ``InputError``.
    """
    config = getattr(obj, "__config__", None) if isinstance(obj, type) else None
    metadata = getattr(config, "metadata", None) if config else getattr(obj, "metadata", None)
    if not metadata or not isinstance(metadata, dict):
        return None
    ours = metadata.get(METADATA_KEY)
    if ours is None:
        return None
    fix = (
        'declare metadata = {"secmlops": {"quarantine": {"max_failing_percent": 1.0}}} '
        "(a number > 0 and <= 50), or remove it"
    )
    if not isinstance(ours, dict) or set(ours) - {"quarantine"}:
        raise InputError(
            f"schema {spec}: metadata[{METADATA_KEY!r}] must be a mapping with only a "
            "'quarantine' entry",
            where=spec,
            fix=fix,
        )
    declared = ours.get("quarantine")
    if declared is None:
        return None
    try:
        return QuarantinePolicy.model_validate(declared)
    except ValidationError as exc:
        problem = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise InputError(
            f"schema {spec}: its quarantine policy is invalid ({problem})", where=spec, fix=fix
        ) from exc


# --- which rows failed, and why -----------------------------------------------------------


def row_failures(failure_cases: pl.DataFrame, *, schema_name: str) -> pl.DataFrame | None:
    """Per failing row, the tests it failed: columns ``row`` (u32) and ``reason``.

    ``failure_cases`` has pandera's columns ``check``, ``column``, ``schema_context`` and
    ``index`` (the row number). ``None`` when any failure is schema-level or names no row
    (a scalar frame check, a crashed check): such a dataset is never quarantined.
    """
    import polars as pl

    check = pl.col("check").cast(pl.String)
    schema_level = (
        check.is_in(list(SCHEMA_LEVEL_CHECKS))
        | check.str.starts_with(_SCHEMA_LEVEL_PREFIXES[0])
        | check.str.starts_with(_SCHEMA_LEVEL_PREFIXES[1])
        | pl.col("index").is_null()
    )
    if failure_cases.is_empty() or failure_cases.select(schema_level.any()).item():
        return None
    owner = (
        pl.when(pl.col("schema_context") == "DataFrameSchema")
        .then(pl.lit(schema_name))
        .otherwise(pl.col("column").cast(pl.String))
    )
    return (
        failure_cases.select(
            pl.col("index").cast(pl.UInt32).alias("row"),
            pl.concat_str([owner, pl.lit(":"), check]).alias("test"),
        )
        .unique()
        .group_by("row")
        .agg(pl.col("test").sort().str.join("; ").alias("reason"))
        .sort("row")
    )


def pandas_failure_cases(failure_cases: pd.DataFrame) -> pl.DataFrame:
    """pandera's pandas ``failure_cases`` as the polars frame :func:`row_failures` reads."""
    import polars as pl

    index = failure_cases["index"]
    rows = [None if v is None or v != v else int(v) for v in index.tolist()]  # NaN -> None
    return pl.DataFrame(
        {
            "check": [str(c) for c in failure_cases["check"].tolist()],
            "column": [None if c is None else str(c) for c in failure_cases["column"].tolist()],
            "schema_context": [str(c) for c in failure_cases["schema_context"].tolist()],
            "index": rows,
        },
        schema={
            "check": pl.String,
            "column": pl.String,
            "schema_context": pl.String,
            "index": pl.Int64,
        },
    )


# --- writing the two files ----------------------------------------------------------------


def output_paths(data: Path, out_dir: Path) -> tuple[Path, Path]:
    """``(clean, quarantine)`` file paths for ``data`` in ``out_dir`` (same suffix)."""
    return (
        out_dir / f"{data.stem}.clean{data.suffix}",
        out_dir / f"{data.stem}.quarantine{data.suffix}",
    )


def write_polars_split(
    source: pl.LazyFrame, failing: pl.DataFrame, data: Path, out_dir: Path
) -> tuple[Path, Path]:
    """Write the clean and quarantined rows of ``source`` (polars); their final paths."""
    import polars as pl

    clean, quarantined = output_paths(data, out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    indexed = source.with_row_index(ROW_COLUMN)
    bad = failing.lazy().select(
        pl.col("row").alias(ROW_COLUMN), pl.col("reason").alias(REASON_COLUMN)
    )
    clean_rows = indexed.join(bad, on=ROW_COLUMN, how="anti").drop(ROW_COLUMN)
    held = indexed.join(bad, on=ROW_COLUMN, how="inner").sort(ROW_COLUMN)
    for frame, final in ((clean_rows, clean), (held, quarantined)):
        tmp = final.with_name(f".{final.name}.tmp")
        if data.suffix.lower() == ".csv":
            frame.sink_csv(tmp)
        else:
            frame.sink_parquet(tmp)
        os.replace(tmp, final)
    return clean, quarantined


def write_pandas_split(
    frame: pd.DataFrame, failing: pl.DataFrame, data: Path, out_dir: Path
) -> tuple[Path, Path]:
    """Write the clean and quarantined rows of a pandas ``frame``; their final paths."""
    clean, quarantined = output_paths(data, out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = failing["row"].to_list()
    reasons = failing["reason"].to_list()
    positions = frame.index.isin(rows)
    held = frame.loc[positions].copy()
    held.insert(0, ROW_COLUMN, held.index)
    held[REASON_COLUMN] = held.index.map(dict(zip(rows, reasons, strict=True)))
    for part, final in ((frame.loc[~positions], clean), (held, quarantined)):
        tmp = final.with_name(f".{final.name}.tmp")
        if data.suffix.lower() == ".csv":
            part.to_csv(tmp, index=False)
        else:
            part.to_parquet(tmp, index=False)
        os.replace(tmp, final)
    return clean, quarantined
