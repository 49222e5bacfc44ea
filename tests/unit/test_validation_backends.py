"""The schema gate on both pandera backends (issue 11): the same cases for a pandas schema and
a polars schema, on CSV and Parquet; one pass reports schema-level problems and every check;
unreadable files are bad input (exit 2); a switched-off pandera is refused."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pandera.polars as pap
import polars as pl
import pytest
from pandera.api.polars.types import PolarsData

from secmlops.cli import main
from secmlops.controls.validation import (
    SchemaRef,
    ValidationRefusal,
    ValidationResult,
    check_dataset,
    load_schema,
    load_site_schema,
    schema_tests,
    validate_dataset,
    validation_statement,
)
from secmlops.demo.data_registry import generate_churn_dataset
from secmlops.errors import ControlRefused, InputError

REPO_ROOT = Path(__file__).resolve().parents[2]
PANDAS_SPEC = "ml.schema:ChurnDataset"
POLARS_SPEC = "tests.unit.test_validation_backends:ChurnPolars"
BACKENDS = ["pandas", "polars"]
FORMATS = ["csv", "parquet"]


class ChurnPolars(pap.DataFrameModel):
    """``ml.schema.ChurnDataset`` in pandera's polars API: the same columns and checks."""

    customer_id: str = pap.Field(unique=True, str_matches=r"^C\d{6}$")
    tenure_months: int = pap.Field(ge=0, le=72)
    monthly_charges: float = pap.Field(ge=0.0, le=500.0)
    total_charges: float = pap.Field(ge=0.0)
    contract: str = pap.Field(isin=["month-to-month", "one-year", "two-year"])
    internet_service: str = pap.Field(isin=["dsl", "fiber-optic", "none"])
    support_calls: int = pap.Field(ge=0, le=100)
    paperless_billing: bool
    churned: int = pap.Field(isin=[0, 1])

    class Config:
        strict = True
        coerce = False
        name = "ChurnDataset"

    @pap.dataframe_check(name="total_charges_plausible")
    def total_charges_plausible(cls, data: PolarsData) -> pl.LazyFrame:  # noqa: N805
        """What a customer paid in total fits their monthly bill and tenure (±25 %)."""
        expected = pl.col("monthly_charges") * pl.max_horizontal(pl.col("tenure_months"), 1)
        total = pl.col("total_charges")
        return data.lazyframe.select((total >= 0.75 * expected) & (total <= 1.25 * expected))


@pytest.fixture(scope="module")
def schemas() -> dict[str, SchemaRef]:
    return {"pandas": load_schema(PANDAS_SPEC), "polars": load_schema(POLARS_SPEC)}


@pytest.fixture(scope="module")
def good_frame() -> pd.DataFrame:
    return generate_churn_dataset("v1.0", rows=200)


def write(frame: pd.DataFrame, path: Path) -> Path:
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path, index=False)
    return path


# --- good data, both backends, both formats -----------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_good_data_passes_on_both_backends(
    backend: str, fmt: str, tmp_path: Path, good_frame: pd.DataFrame, schemas: dict[str, SchemaRef]
) -> None:
    ref = schemas[backend]
    assert ref.backend == backend
    path = write(good_frame, tmp_path / f"churn.{fmt}")
    result = validate_dataset(path, ref)
    assert result.passed and result.backend == backend
    assert result.rows == 200
    assert result.columns == tuple(good_frame.columns)
    assert result.failed_tests == ()
    # The same declared checks on both backends (dtype names are the engine's own).
    assert len(result.passed_tests) == len(schema_tests(ref.schema)) + 1 == 42
    assert "customer_id:field_uniqueness" in result.passed_tests
    assert "ChurnDataset:total_charges_plausible" in result.passed_tests
    statement = validation_statement(result)
    assert statement["predicate"]["result"] == "PASSED"


def test_polars_schema_is_recognised_and_digested(schemas: dict[str, SchemaRef]) -> None:
    pandas_ref, polars_ref = schemas["pandas"], schemas["polars"]
    assert isinstance(polars_ref.schema, pap.DataFrameSchema)
    assert polars_ref.digest != pandas_ref.digest
    # A pandas schema's digest is what it was before the polars backend existed.
    assert "backend" not in pandas_ref.to_json() or pandas_ref.to_json()["backend"] == "pandas"


def test_site_rules_apply_to_polars_schemas(tmp_path: Path) -> None:
    """The site's allow-list and pinned digest are checked before a polars schema is imported."""
    user = tmp_path / "ml"
    user.mkdir()
    source = (
        "import pandera.polars as pa\n"
        "class Rows(pa.DataFrameModel):\n"
        "    x: int = pa.Field(ge=0)\n"
        "    class Config:\n"
        "        strict = True\n"
    )
    (user / "rows.py").write_text(source)
    ref = load_site_schema("ml.rows:Rows", project_dir=tmp_path, user_code_dir="ml")
    assert ref.backend == "polars"
    with pytest.raises(ControlRefused) as info:
        load_site_schema("ml.rows:Rows", project_dir=tmp_path, sha256="0" * 64)
    assert info.value.reason is ValidationRefusal.SCHEMA_DIGEST_MISMATCH
    with pytest.raises(ControlRefused) as info:
        load_site_schema(POLARS_SPEC, project_dir=REPO_ROOT)
    assert info.value.reason is ValidationRefusal.SCHEMA_NOT_ALLOWED


# --- every kind of bad data, both backends ------------------------------------------------


def _set(column: str, row: int, value: Any) -> Callable[[pd.DataFrame], pd.DataFrame]:
    def change(frame: pd.DataFrame) -> pd.DataFrame:
        frame[column] = frame[column].astype(object)
        frame.loc[row, column] = value
        return frame.infer_objects()

    return change


def _duplicate_id(frame: pd.DataFrame) -> pd.DataFrame:
    frame.loc[7, "customer_id"] = frame.loc[3, "customer_id"]
    return frame


def _as_text(column: str) -> Callable[[pd.DataFrame], pd.DataFrame]:
    def change(frame: pd.DataFrame) -> pd.DataFrame:
        frame[column] = frame[column].astype(str)
        frame.loc[5, column] = "twelve"
        return frame

    return change


# case: (how to break good data, the failed test ({dtype} per backend), the column named)
BAD_DATA: dict[str, tuple[Callable[[pd.DataFrame], pd.DataFrame], str, str]] = {
    "wrong dtype": (_as_text("tenure_months"), "tenure_months:dtype('{int}')", "tenure_months"),
    "above range": (
        _set("support_calls", 2, 250),
        "support_calls:less_than_or_equal_to(100)",
        "support_calls",
    ),
    "below range": (
        _set("tenure_months", 9, -3),
        "tenure_months:greater_than_or_equal_to(0)",
        "tenure_months",
    ),
    "unknown category": (
        _set("contract", 4, "weekly"),
        "contract:isin(['month-to-month', 'one-year', 'two-year'])",
        "contract",
    ),
    "bad label": (_set("churned", 1, 2), "churned:isin([0, 1])", "churned"),
    "duplicate id": (_duplicate_id, "customer_id:field_uniqueness", "customer_id"),
    "bad id format": (
        _set("customer_id", 0, "X-1"),
        "customer_id:str_matches('^C\\d{6}$')",
        "customer_id",
    ),
    "null value": (_set("monthly_charges", 3, None), "monthly_charges:not_nullable", "monthly"),
    "missing column": (
        lambda f: f.drop(columns=["churned"]),
        "churned:column_in_dataframe",
        "churned",
    ),
    "extra column": (
        lambda f: f.assign(ssn="123-45-6789"),
        "ChurnDataset:column_in_schema",
        "ssn",
    ),
    "cross-column": (
        _set("total_charges", 6, 999_999.0),
        "ChurnDataset:total_charges_plausible",
        "row 6",
    ),
}
DTYPE = {"pandas": {"int": "int64"}, "polars": {"int": "Int64"}}


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", list(BAD_DATA))
def test_each_kind_of_bad_data_is_refused_on_both_backends(
    case: str,
    backend: str,
    fmt: str,
    tmp_path: Path,
    good_frame: pd.DataFrame,
    schemas: dict[str, SchemaRef],
) -> None:
    change, test, named = BAD_DATA[case]
    test = test.replace("{int}", DTYPE[backend]["int"])
    path = write(change(good_frame.copy()), tmp_path / f"bad.{fmt}")
    with pytest.raises(ControlRefused) as info:
        validate_dataset(path, schemas[backend])
    error = info.value
    assert error.reason is ValidationRefusal.SCHEMA_CHECK_FAILED
    result = error.result
    assert isinstance(result, ValidationResult) and not result.passed
    assert test in result.failed_tests, result.failed_tests
    assert named in error.message
    assert result.pandera_reasons
    failure = next(f for f in result.failures if f.test_name == test)
    assert failure.count >= 1 and failure.examples
    assert set(result.failed_tests) <= set(schema_tests(schemas[backend].schema))
    assert 0 < len(error.details["failure_cases"]) <= 20


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_pass_reports_schema_level_problems_and_every_failing_check(
    backend: str, tmp_path: Path, good_frame: pd.DataFrame, schemas: dict[str, SchemaRef]
) -> None:
    """Missing and extra columns, a duplicate, a null, a range, a category and the cross-
    column check all fail at once; each is reported with its count and examples."""
    frame = good_frame.copy().drop(columns=["internet_service"]).assign(ssn="x")
    frame.loc[10:14, "tenure_months"] = 99  # 5 rows above range
    frame.loc[20, "contract"] = "weekly"
    frame.loc[21, "customer_id"] = frame.loc[22, "customer_id"]
    frame.loc[30, "monthly_charges"] = None
    frame.loc[40, "total_charges"] = 1_000_000.0
    path = write(frame, tmp_path / "many.parquet")
    result, cases = check_dataset(path, schemas[backend])
    assert not result.passed
    by_test = {f.test_name: f for f in result.failures}
    assert by_test["internet_service:column_in_dataframe"].count == 1
    assert by_test["ChurnDataset:column_in_schema"].examples == ("ssn",)
    assert by_test["tenure_months:less_than_or_equal_to(72)"].count == 5
    assert by_test["tenure_months:less_than_or_equal_to(72)"].examples == ("99", "99", "99")
    assert "contract:isin(['month-to-month', 'one-year', 'two-year'])" in by_test
    assert by_test["customer_id:field_uniqueness"].count == 2
    assert by_test["monthly_charges:not_nullable"].count == 1
    # Rows 10-14 (tenure 99) and 40 fail it; pandas also fails the null row (NaN compares
    # False), polars passes a null result (pandera's ignore_na).
    assert by_test["ChurnDataset:total_charges_plausible"].count in (6, 7)
    assert {"column_not_in_dataframe", "column_not_in_schema"} <= set(result.pandera_reasons)
    assert 0 < len(cases) <= 20  # capped raw cases


# --- the kill switch, polars --------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_disabled_pandera_is_refused_on_both_backends(
    backend: str,
    tmp_path: Path,
    good_frame: pd.DataFrame,
    schemas: dict[str, SchemaRef],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = write(good_frame, tmp_path / "churn.parquet")
    monkeypatch.setenv("PANDERA_VALIDATION_ENABLED", "False")
    with pytest.raises(ControlRefused, match="PANDERA_VALIDATION_ENABLED=False") as info:
        validate_dataset(path, schemas[backend])
    assert info.value.reason is ValidationRefusal.VALIDATION_DISABLED


def test_polars_engine_that_does_not_enforce_is_refused(
    tmp_path: Path,
    good_frame: pd.DataFrame,
    schemas: dict[str, SchemaRef],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A switch we do not know by name, in the polars API only: its canary catches it.
    monkeypatch.setattr(pap.DataFrameSchema, "validate", lambda self, df, **_: df)
    path = write(good_frame, tmp_path / "churn.parquet")
    with pytest.raises(ControlRefused, match=r"polars.*canary") as info:
        validate_dataset(path, schemas["polars"])
    assert info.value.reason is ValidationRefusal.VALIDATION_NOT_ENFORCING


# --- empty, garbage, truncated: bad input, exit 2 -----------------------------------------


def _parquet_bytes(frame: pd.DataFrame, tmp_path: Path) -> bytes:
    return Path(write(frame, tmp_path / "source.parquet")).read_bytes()


def _csv_bytes(frame: pd.DataFrame) -> bytes:
    return str(frame.to_csv(index=False)).encode()


UNREADABLE: dict[str, tuple[str, Callable[[pd.DataFrame, Path], bytes], str]] = {
    "empty parquet": ("parquet", lambda f, d: b"", "is empty"),
    "garbage parquet": ("parquet", lambda f, d: os.urandom(4096), "cannot be parsed as parquet"),
    "magic-only parquet": ("parquet", lambda f, d: b"PAR1garbagePAR1", "cannot be parsed"),
    "truncated parquet": (
        "parquet",
        lambda f, d: _parquet_bytes(f, d)[: len(_parquet_bytes(f, d)) // 2],
        "cannot be parsed as parquet",
    ),
    "empty csv": ("csv", lambda f, d: b"", "is empty"),
    "garbage csv": ("csv", lambda f, d: b"\x00\x01\xfe" + os.urandom(4096), "cannot be parsed"),
    "latin-1 csv": ("csv", lambda f, d: b"customer_id\n\xff\xfe\xfa\n", "not UTF-8"),
    "truncated csv": (
        "csv",
        lambda f, d: _csv_bytes(f)[: len(_csv_bytes(f)) - 30],
        "is truncated",
    ),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", list(UNREADABLE))
def test_unreadable_files_are_bad_input_on_both_backends(
    case: str,
    backend: str,
    tmp_path: Path,
    good_frame: pd.DataFrame,
    schemas: dict[str, SchemaRef],
) -> None:
    fmt, make, message = UNREADABLE[case]
    path = tmp_path / f"data.{fmt}"
    path.write_bytes(make(good_frame, tmp_path))
    with pytest.raises(InputError, match=message) as info:
        validate_dataset(path, schemas[backend])
    assert info.value.where == str(path)
    assert info.value.exit_code == 2


@pytest.mark.parametrize(
    ("spec", "content", "code", "says"),
    [
        (POLARS_SPEC, b"PAR1garbage", 2, "cannot be parsed as parquet"),
        (PANDAS_SPEC, b"", 2, "is empty"),
        (POLARS_SPEC, None, 0, "PASSED"),
        (PANDAS_SPEC, None, 0, "PASSED"),
    ],
)
def test_cli_validate_exit_codes(
    spec: str,
    content: bytes | None,
    code: int,
    says: str,
    tmp_path: Path,
    good_frame: pd.DataFrame,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(REPO_ROOT)
    path = tmp_path / "data.parquet"
    if content is None:
        write(good_frame, path)
    else:
        path.write_bytes(content)
    assert main(["validate", str(path), "--schema", spec]) == code
    captured = capsys.readouterr()
    assert says in captured.out + captured.err


def test_csv_lines_longer_than_the_header_are_bad_input(
    tmp_path: Path, schemas: dict[str, SchemaRef]
) -> None:
    path = tmp_path / "ragged.csv"
    path.write_text("a,b\n1,2,3\n4,5\n")
    for backend in BACKENDS:
        with pytest.raises(InputError, match=r"more fields|cannot be parsed"):
            validate_dataset(path, schemas[backend])


def test_a_late_value_of_another_type_is_a_dtype_failure_not_a_parse_error(
    tmp_path: Path, schemas: dict[str, SchemaRef]
) -> None:
    """polars infers CSV dtypes from the first rows; a value past them that does not fit is
    still reported as the column's dtype failure (the file is re-read with full inference)."""
    frame = generate_churn_dataset("v1.0", rows=12_000)
    frame["tenure_months"] = frame["tenure_months"].astype(object)
    frame.loc[11_500, "tenure_months"] = "twelve"
    path = write(frame, tmp_path / "late.csv")
    for backend, dtype in (("pandas", "int64"), ("polars", "Int64")):
        with pytest.raises(ControlRefused) as info:
            validate_dataset(path, schemas[backend])
        assert f"tenure_months:dtype('{dtype}')" in info.value.result.failed_tests


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_file_changed_while_polars_reads_it_is_refused(
    fmt: str,
    tmp_path: Path,
    good_frame: pd.DataFrame,
    schemas: dict[str, SchemaRef],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """polars reads the file itself after it was hashed: a swap in between is caught."""
    import secmlops.controls.validation as validation

    path = write(good_frame, tmp_path / f"churn.{fmt}")
    original = validation._run_polars

    def swap_then_run(*args: Any, **kwargs: Any) -> Any:
        write(good_frame.head(150), path)  # another file at the same path
        return original(*args, **kwargs)

    monkeypatch.setattr(validation, "_run_polars", swap_then_run)
    with pytest.raises(ControlRefused, match="changed while it was validated") as info:
        validate_dataset(path, schemas["polars"])
    assert info.value.reason is ValidationRefusal.DATASET_CHANGED


@pytest.mark.parametrize("backend", BACKENDS)
def test_bytes_other_than_the_pulled_ones_are_refused(
    backend: str, tmp_path: Path, good_frame: pd.DataFrame, schemas: dict[str, SchemaRef]
) -> None:
    path = write(good_frame, tmp_path / "churn.parquet")
    with pytest.raises(ControlRefused, match="is not the pulled file") as info:
        validate_dataset(path, schemas[backend], expected_sha256="0" * 64)
    assert info.value.reason is ValidationRefusal.DATASET_CHANGED
