"""The polars gate's one-query proof pass (``validation_polars_proof``): it takes out of the
schema only the checks that pass, and the gate's result — failed tests, counts, examples,
failure cases, the rows a quarantine would hold — is the same as pandera's own run of the
whole schema, on every kind of failing data."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandera.polars as pap
import polars as pl
import pytest
from pandera.api.polars.types import PolarsData

import secmlops.controls.validation_polars as validation_polars
from secmlops.controls.validation_polars import (
    PolarsRun,
    read_polars_table,
    require_polars_enforcing,
    run_polars_schema,
)
from secmlops.controls.validation_polars_proof import Proven, without_proven_checks

ROWS = 60


def _positive_or_null(data: PolarsData) -> pl.LazyFrame:
    """A custom column check whose null results must FAIL (``ignore_na=False``)."""
    return data.lazyframe.select(pl.col(data.key) > 0)


def _bill_fits(data: PolarsData) -> pl.LazyFrame:
    """A frame-wide check with a two-column result (pandera folds it with ``&``)."""
    return data.lazyframe.select(pl.col("total") >= pl.col("monthly"), pl.col("monthly") >= 0)


def _at_least_ten_rows(data: PolarsData) -> bool:
    """A frame-wide check that answers with one bool."""
    return bool(data.lazyframe.select(pl.len()).collect().item() >= 10)


def _raises(data: PolarsData) -> pl.LazyFrame:
    raise RuntimeError("this check is broken")


def _fails_in_polars(data: PolarsData) -> pl.LazyFrame:
    """A plan polars refuses only when it runs (``"a"`` cast to an integer)."""
    return data.lazyframe.select(pl.col("kind").cast(pl.Int64) > 0)


def _no_x(value: str) -> bool:
    """An element-wise check that raises as the query runs (on the value ``"X"``)."""
    if value == "X":
        raise ValueError("no X here")
    return True


def schema(*extra_frame_checks: pap.Check) -> pap.DataFrameSchema:
    return pap.DataFrameSchema(
        {
            "id": pap.Column(pl.Int64, pap.Check.ge(0), unique=True),
            "n": pap.Column(
                pl.Int64,
                [pap.Check.in_range(0, 100), pap.Check(_positive_or_null, ignore_na=False)],
                nullable=True,
            ),
            "monthly": pap.Column(pl.Float64, pap.Check.le(500.0)),
            "total": pap.Column(pl.Float64, pap.Check.ge(0.0), nullable=True),
            "kind": pap.Column(pl.String, [pap.Check.isin(["a", "b"]), pap.Check.str_length(1)]),
            "code": pap.Column(
                pl.String, pap.Check(lambda v: v.startswith("C"), element_wise=True)
            ),
        },
        checks=[
            pap.Check(_bill_fits, name="bill_fits"),
            pap.Check(_at_least_ten_rows, name="ten_rows"),
            *extra_frame_checks,
        ],
        strict=True,
        name="Rows",
    )


def good() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "id": list(range(ROWS)),
            "n": [1 + i % 50 for i in range(ROWS)],
            "monthly": [10.0 + i for i in range(ROWS)],
            "total": [100.0 + i for i in range(ROWS)],
            "kind": ["a", "b"] * (ROWS // 2),
            "code": [f"C{i}" for i in range(ROWS)],
        }
    )


def _set(column: str, rows: list[int], value: Any) -> Callable[[pl.DataFrame], pl.DataFrame]:
    def change(frame: pl.DataFrame) -> pl.DataFrame:
        hit = pl.int_range(pl.len()).is_in(rows)
        return frame.with_columns(
            pl.when(hit).then(pl.lit(value)).otherwise(pl.col(column)).alias(column)
        )

    return change


BREAKS: dict[str, Callable[[pl.DataFrame], pl.DataFrame]] = {
    "none": lambda f: f,
    "range": _set("n", [3, 4], 500),
    "null in a nullable column, check with ignore_na=False": _set("n", [5], None),
    "null in a non-nullable column": _set("monthly", [2], None),
    "NaN in a non-nullable float column": _set("monthly", [7], float("nan")),
    "null in a nullable float column": _set("total", [8, 9], None),
    "duplicate": _set("id", [1, 2, 3], 0),
    "duplicate nulls": _set("id", [4, 6], None),
    "category": _set("kind", [11], "c"),
    "string length": _set("kind", [12], "aa"),
    "element-wise": _set("code", [13], "X13"),
    "two-column frame check": _set("total", [14], 1.0),
    "bool frame check": lambda f: f.head(5),
    "wrong dtype": lambda f: f.with_columns(pl.col("n").cast(pl.String)),
    "missing column": lambda f: f.drop("kind"),
    "extra column": lambda f: f.with_columns(pl.lit("x").alias("ssn")),
    "everything at once": lambda f: _set("n", [3], 500)(
        _set("id", [1], 0)(_set("monthly", [2], None)(_set("kind", [11], "c")(f)))
    ).with_columns(pl.lit("x").alias("ssn")),
}


def _table(frame: pl.DataFrame, path: Path) -> Any:
    frame.write_parquet(path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return read_polars_table(path, "parquet", digest, os.stat(path))


def _run(s: pap.DataFrameSchema, table: Any) -> PolarsRun:
    return run_polars_schema(s, "Rows", "test", table, max_cases=50, per_check=5, want_rows=True)


def _same(left: PolarsRun, right: PolarsRun) -> None:
    assert left.failures == right.failures
    assert left.cases == right.cases
    assert left.pandera_reasons == right.pandera_reasons
    if left.failing_rows is None or right.failing_rows is None:
        assert left.failing_rows is right.failing_rows is None
    else:
        assert left.failing_rows.equals(right.failing_rows)


@pytest.mark.parametrize("case", list(BREAKS))
def test_the_gate_reports_what_pandera_alone_reports(
    case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    table = _table(BREAKS[case](good()), tmp_path / "rows.parquet")
    s = schema()
    proven = _run(s, table)
    monkeypatch.setattr(
        validation_polars, "without_proven_checks", lambda schema, frame: Proven(schema)
    )
    alone = _run(s, table)
    _same(proven, alone)
    # A null result of a check with ignore_na=True (the default) passes.
    assert bool(proven.failures) == (case not in ("none", "null in a nullable float column"))


@pytest.mark.parametrize(
    "broken",
    [
        pap.Check(_raises, name="broken"),
        pap.Check(_fails_in_polars, name="fails_in_polars"),
        pap.Check(
            lambda data: data.lazyframe.select(
                pl.col("kind").map_elements(_no_x, return_dtype=pl.Boolean)
            ),
            name="raises_while_running",
        ),
    ],
    ids=["raises", "fails in polars", "raises while running"],
)
def test_a_check_that_cannot_run_is_left_to_pandera(
    broken: pap.Check, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A check that raises (or makes the query fail) is never taken out: pandera runs it and
    reports its error as that check's failure, as without the proof pass."""
    table = _table(_set("kind", [2], "X")(_set("n", [3], 500)(good())), tmp_path / "rows.parquet")
    s = schema(broken)
    reduced = without_proven_checks(s, table.frame).schema
    assert any(check.name == broken.name for check in reduced.checks)
    proven = _run(s, table)
    assert any(check == broken.name for _, check, _, _ in proven.failures)
    monkeypatch.setattr(
        validation_polars, "without_proven_checks", lambda schema, frame: Proven(schema)
    )
    _same(proven, _run(s, table))


def test_only_failing_checks_are_left_for_pandera(tmp_path: Path) -> None:
    s = schema()
    table = _table(good(), tmp_path / "good.parquet")
    reduced = without_proven_checks(s, table.frame).schema
    assert reduced is not s and s.columns["id"].unique  # the given schema is not changed
    assert reduced.checks == []
    for column in reduced.columns.values():
        assert column.checks == [] and not column.unique and column.nullable

    broken = _set("n", [3], 500)(_set("id", [1], 0)(_set("code", [4], "X")(good())))
    table = _table(broken, tmp_path / "bad.parquet")
    reduced = without_proven_checks(s, table.frame).schema
    left = {
        (name, check.name) for name, column in reduced.columns.items() for check in column.checks
    }
    assert left == {("n", "in_range"), ("code", "<lambda>")}
    assert reduced.columns["id"].unique and reduced.columns["monthly"].nullable
    assert reduced.checks == []


def test_a_schema_that_changes_the_data_first_is_not_proven(tmp_path: Path) -> None:
    """With ``coerce`` (or a default, or ``strict="filter"``) pandera checks other values than
    the ones read, so the proof pass leaves the schema alone."""
    table = _table(good(), tmp_path / "good.parquet")
    for changed in (
        pap.DataFrameSchema({"id": pap.Column(pl.Int64, pap.Check.ge(0))}, coerce=True),
        pap.DataFrameSchema({"id": pap.Column(pl.Int64, pap.Check.ge(0), default=1)}),
        pap.DataFrameSchema({"id": pap.Column(pl.Int64, pap.Check.ge(0))}, strict="filter"),
    ):
        assert without_proven_checks(changed, table.frame).schema is changed


def test_the_canary_catches_a_proof_pass_that_proves_a_failing_check(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import secmlops.controls.validation_polars_proof as proof

    assert require_polars_enforcing()
    monkeypatch.setattr(proof, "_failing_rows", lambda check, frame, key: 0)
    assert not require_polars_enforcing()


# Every builtin check of pandera's polars API, with a value that passes and one that fails.
BUILTINS: list[tuple[pap.Check, Any, Any]] = [
    (pap.Check.eq(5), 5, 6),
    (pap.Check.ne(5), 6, 5),
    (pap.Check.gt(5), 6, 5),
    (pap.Check.ge(5), 5, 4),
    (pap.Check.lt(5), 4, 5),
    (pap.Check.le(5), 5, 6),
    (pap.Check.in_range(1, 5), 5, 6),
    (pap.Check.in_range(1, 5, include_max=False), 4, 5),
    (pap.Check.isin([1, 2]), 2, 3),
    (pap.Check.notin([1, 2]), 3, 2),
    (pap.Check.str_matches(r"^C\d$"), "C1", "X1"),
    (pap.Check.str_contains("ok"), "is ok", "is not"),
    (pap.Check.str_startswith("C"), "C1", "X1"),
    (pap.Check.str_endswith("1"), "C1", "C2"),
    (pap.Check.str_length(2, 3), "C1", "C1234"),
    (pap.Check.unique_values_eq([5]), 5, 6),
]


@pytest.mark.parametrize(
    ("check", "good_value", "bad_value"), BUILTINS, ids=[str(c) for c, _, _ in BUILTINS]
)
def test_every_builtin_check_is_proven_or_kept_by_its_own_result(
    check: pap.Check, good_value: Any, bad_value: Any
) -> None:
    """Each builtin is proven from the one expression pandera's own function selects (a check
    that does more, like ``unique_values_eq``, runs as pandera builds it): it is taken out
    where it passes and kept, with pandera's verdict, where one row fails it."""
    import secmlops.controls.validation_polars_proof as proof

    dtype = pl.String if isinstance(good_value, str) else pl.Int64
    s = pap.DataFrameSchema({"v": pap.Column(dtype, check)}, strict=True)
    passing = pl.LazyFrame({"v": [good_value] * 5}, schema={"v": dtype})
    failing = pl.LazyFrame({"v": [good_value] * 4 + [bad_value]}, schema={"v": dtype})
    recorded = proof._builtin_expr(check, check.get_backend(passing)(check), passing, "v")
    assert (recorded is None) == (check.name == "unique_values_eq")
    assert without_proven_checks(s, passing).schema.columns["v"].checks == []
    kept = without_proven_checks(s, failing).schema
    assert [c.name for c in kept.columns["v"].checks] == [check.name]
    with pytest.raises(pap.errors.SchemaErrors):
        kept.validate(failing.collect(), lazy=True)
