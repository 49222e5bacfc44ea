"""Prove, in a few queries, which checks of a ``pandera.polars`` schema pass on a dataset.

pandera's polars backend runs every check as a query of its own, one after another: each
reads its columns from the scan again, materialises a per-row result, and only then asks
whether all of it passed (``is_duplicated`` for a ``unique`` column alone is a third of a
10M-row validation). Here each check's failing rows are **counted**, all at once:

- pandera's **builtin** checks (``ge``, ``isin``, ``str_matches``, ...) are pandera's own
  functions, called on a stand-in for the frame that records the one ``select`` each makes;
  their expressions and every non-nullable column's null count (NaNs included for float
  columns, as pandera counts them) become **one** ``select`` on the streaming engine: the
  file is read once, in pieces, on both cores, as hand-written polars would;
- a ``unique`` column's distinct values (the equality of ``is_duplicated``: nulls equal
  nulls) are counted on the in-memory engine, where ``n_unique`` is several times faster;
- any other check (a custom column or frame-wide check, a builtin the stand-in could not
  record) runs as **pandera's check backend builds it** (``apply``: the same function, the
  same folding of a multi-column result), as its own query;

the three side by side, each check's result counted with pandera's null rule
(``ignore_na``: a null result passes; otherwise it fails).

A check proven to pass (zero failing rows) is taken out of the schema that pandera then
validates; one that fails, or that cannot be evaluated here (it raised, it is a group-by
check, its query failed), stays in, so pandera judges it and names its failure cases as it
always did. The tests named and the result are the same either way; only passing checks are
skipped. Nothing is proven for a schema that changes the data before checking it
(``coerce``, a column ``default``, ``strict="filter"``, ``add_missing_columns``,
``drop_invalid_rows``): pandera would check other values than the ones read here.

Used by :mod:`secmlops.controls.validation_polars`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pandera.polars as pap
import polars as pl
from pandera.api.polars.types import PolarsData
from pandera.constants import CHECK_OUTPUT_KEY

_FAILING = "failing"
_BUILTIN_CHECKS = "pandera.backends.polars.builtin_checks"


@dataclass(frozen=True)
class Proven:
    """A schema with the checks proven to pass taken out, and how to number the rest."""

    schema: pap.DataFrameSchema
    #: Per column (``None``: the frame), the original numbers of the checks left, where
    #: taking some out moved them.
    moved: Mapping[str | None, tuple[int, ...]] = field(default_factory=dict)

    def renumber(self, failure_cases: pl.DataFrame) -> pl.DataFrame:
        """pandera's failure cases with ``check_number`` as in the schema given: pandera
        numbers the checks of the schema it ran, which lacks the ones taken out."""
        number = pl.col("check_number")
        renumbered: Any = None
        for column, originals in self.moved.items():
            if column is None:
                where = pl.col("schema_context") == "DataFrameSchema"
            else:
                where = (pl.col("schema_context") == "Column") & (pl.col("column") == column)
            for now, original in enumerate(originals):
                if now == original:
                    continue
                hit = where & (number == now)
                then = pl.lit(original, dtype=pl.Int32)
                renumbered = (
                    pl.when(hit).then(then)
                    if renumbered is None
                    else renumbered.when(hit).then(then)
                )
        if renumbered is None or "check_number" not in failure_cases.columns:
            return failure_cases
        return failure_cases.with_columns(
            renumbered.otherwise(number)
            .cast(failure_cases.schema["check_number"])
            .alias("check_number")
        )


@dataclass(frozen=True)
class _Claim:
    """One thing the query counts: ``what`` of ``column`` (``None``: the whole frame)."""

    column: str | None
    what: str  # "unique", "not_null" or "check"
    index: int = -1


def _changes_data(schema: pap.DataFrameSchema) -> bool:
    """Does pandera alter the frame (coerce, fill, filter, add) before checking it?"""
    if schema.coerce or schema.strict == "filter" or schema.add_missing_columns:
        return True
    if getattr(schema, "drop_invalid_rows", False):
        return True
    return any(
        column.coerce
        or getattr(column, "default", None) is not None
        or getattr(column, "drop_invalid_rows", False)
        for column in schema.columns.values()
    )


class _OneSelect:
    """Stands in for the frame a builtin check is given: records its one ``select``.

    It has no other attribute: a check that uses the frame otherwise raises here and is
    evaluated as pandera runs it instead."""

    def __init__(self, frame: pl.LazyFrame) -> None:
        self._frame = frame
        self.exprs: tuple[Any, ...] = ()
        self.named: dict[str, Any] = {}
        self.result: pl.LazyFrame | None = None

    def select(self, *exprs: Any, **named: Any) -> pl.LazyFrame:
        if self.result is not None:
            raise _NotOneSelectError
        self.exprs, self.named = exprs, named
        self.result = self._frame.select(*exprs, **named)
        return self.result


class _NotOneSelectError(Exception):
    """The check did more with the frame than one ``select``."""


def _as_failing(ok: pl.Expr, check: Any) -> pl.Expr:
    """Rows failing a check whose boolean result is ``ok``, by pandera's null rule: a null
    result passes with ``ignore_na`` (``sum`` skips it) and fails without it."""
    failing = (~ok).sum().cast(pl.Int64)
    return failing if check.ignore_na else failing + ok.null_count().cast(pl.Int64)


def _builtin_expr(check: Any, backend: Any, frame: pl.LazyFrame, key: str) -> pl.Expr | None:
    """The one expression a pandera builtin check selects on ``frame``, or ``None``."""
    dispatcher = getattr(check._check_fn, "_function_registry", None)
    fn = dispatcher.get(PolarsData) if isinstance(dispatcher, dict) else None
    if fn is None or getattr(fn, "__module__", None) != _BUILTIN_CHECKS or check.element_wise:
        return None
    stand_in = _OneSelect(frame)
    try:
        out = backend.check_fn(PolarsData(stand_in, key))  # type: ignore[arg-type]
        (expr,) = stand_in.exprs
        if stand_in.result is None or out is not stand_in.result or stand_in.named:
            return None
        if not isinstance(expr, pl.Expr) or out.collect_schema().dtypes() != [pl.Boolean]:
            return None  # not one expression making one boolean column
    except Exception:  # the stand-in was used otherwise, or the check raised: not recorded
        return None
    return expr


def _failing_rows(check: Any, frame: pl.LazyFrame, key: str) -> pl.Expr | pl.LazyFrame | int | None:
    """How ``check`` on ``frame`` (column ``key``, ``"*"`` for the frame) fails, as pandera
    computes it: an expression counting failing rows (a builtin), a one-row query (any other
    check), a number (the check returned a bool), or ``None`` when it cannot be said here
    (pandera will run the check itself)."""
    if getattr(check, "groupby", None) is not None:
        return None
    # As pandera's Check.__call__: a builtin check re-reads its dispatcher.
    name = getattr(check._check_fn, "__name__", None)
    if name is not None and check.is_builtin_check(name):
        check._check_fn = check.get_builtin_check_fn(name)
    try:
        backend = check.get_backend(frame)(check)
        expr = _builtin_expr(check, backend, frame, key)
        if expr is not None:
            return _as_failing(expr, check)
        out = backend.apply(PolarsData(frame, key))
    except Exception:  # pandera runs it again and reports the error as the check's failure
        return None
    if isinstance(out, bool):
        return 0 if out else 1
    if not isinstance(out, pl.LazyFrame) or out.collect_schema()[CHECK_OUTPUT_KEY] != pl.Boolean:
        return None
    return out.select(_as_failing(pl.col(CHECK_OUTPUT_KEY), check).alias(_FAILING))


def without_proven_checks(schema: pap.DataFrameSchema, frame: pl.LazyFrame) -> Proven:
    """``schema`` minus the checks proven to pass on ``frame`` (see the module).

    ``Proven.schema`` is ``schema`` itself when nothing is proven or nothing can be; the
    schema given is never changed. A query that fails (a read error, a check polars refuses
    to run) proves nothing: pandera meets the same error and reports it.
    """
    if _changes_data(schema):
        return Proven(schema)
    pap.DataFrameSchema.register_default_backends(pl.LazyFrame)
    present = frame.collect_schema()
    columns = [
        (name, column)
        for name, column in schema.columns.items()
        if not column.regex and name in present
    ]
    streamed: list[tuple[_Claim, pl.Expr]] = []  # one select, streaming engine
    distinct: list[tuple[_Claim, pl.Expr]] = []  # one select, in-memory engine
    queried: list[tuple[_Claim, pl.LazyFrame]] = []  # a query per check
    found: dict[_Claim, int] = {}  # known without a query (a check that returned a bool)

    def add(claim: _Claim, failing: pl.Expr | pl.LazyFrame | int | None) -> None:
        if isinstance(failing, int):
            found[claim] = failing
        elif isinstance(failing, pl.Expr):
            streamed.append((claim, failing))
        elif failing is not None:
            queried.append((claim, failing))

    for name, column in columns:
        if column.unique:
            distinct.append(
                (_Claim(name, "unique"), (pl.len() - pl.col(name).n_unique()).cast(pl.Int64))
            )
        if not column.nullable:
            missing = pl.col(name).null_count()
            if present[name] in (pl.Float32, pl.Float64):
                missing = missing + pl.col(name).is_nan().sum()
            streamed.append((_Claim(name, "not_null"), missing.cast(pl.Int64)))
        for index, check in enumerate(column.checks):
            add(_Claim(name, "check", index), _failing_rows(check, frame, name))
    for index, check in enumerate(schema.checks):
        add(_Claim(None, "check", index), _failing_rows(check, frame, "*"))

    def one_select(exprs: list[tuple[_Claim, pl.Expr]], engine: Any) -> Callable[[], list[int]]:
        def run() -> list[int]:
            aliased = [expr.alias(f"{_FAILING}_{i}") for i, (_, expr) in enumerate(exprs)]
            return list(frame.select(*aliased).collect(engine=engine).row(0))

        return run

    def per_check() -> list[int]:
        done = pl.collect_all([query for _, query in queried], engine="streaming")
        return [int(result[_FAILING].sum()) for result in done]

    jobs = [
        (claims, job)
        for claims, job in (
            (streamed, one_select(streamed, "streaming")),
            (distinct, one_select(distinct, "in-memory")),
            (queried, per_check),
        )
        if claims
    ]
    with ThreadPoolExecutor(max_workers=max(len(jobs), 1)) as pool:
        running = [(claims, pool.submit(job)) for claims, job in jobs]
        try:
            for claims, future in running:
                found.update(zip((claim for claim, _ in claims), future.result(), strict=True))
        except Exception:  # a read error, a check that fails as it runs: proves nothing
            return Proven(schema)  # pandera runs each check and reports what it meets
    return _drop_passing(schema, {claim for claim, failing in found.items() if failing == 0})


def _drop_passing(schema: pap.DataFrameSchema, passing: set[_Claim]) -> Proven:
    if not passing:
        return Proven(schema)
    updates: dict[str, dict[str, Any]] = {}
    moved: dict[str | None, tuple[int, ...]] = {}
    for name, column in schema.columns.items():
        update: dict[str, Any] = {}
        if _Claim(name, "unique") in passing:
            update["unique"] = False
        if _Claim(name, "not_null") in passing:
            update["nullable"] = True
        kept = [i for i in range(len(column.checks)) if _Claim(name, "check", i) not in passing]
        if len(kept) != len(column.checks):
            update["checks"] = [column.checks[i] for i in kept]
            moved[name] = tuple(kept)
        if update:
            updates[name] = update
    reduced: pap.DataFrameSchema = (
        schema.update_columns(updates) if updates else copy.deepcopy(schema)
    )
    kept = [i for i in range(len(schema.checks)) if _Claim(None, "check", i) not in passing]
    reduced.checks = [schema.checks[i] for i in kept]
    moved[None] = tuple(kept)
    return Proven(reduced, moved)
