"""The quarantine policy (issue 11): a schema may tolerate up to N% failing rows, which are set
aside with their reasons and digested, never dropped silently; above N%, or with any
schema-level problem, the gate refuses as before. Both backends, both formats."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd
import polars as pl
import pytest

from ml.schema import ChurnDataset
from secmlops.controls.quarantine import REASON_COLUMN, ROW_COLUMN, QuarantinePolicy
from secmlops.controls.validation import (
    SchemaRef,
    ValidationRefusal,
    load_schema,
    validate_dataset,
    validation_statement,
)
from secmlops.demo.data_registry import generate_churn_dataset
from secmlops.errors import ControlRefused, InputError
from tests.unit.test_validation_backends import ChurnPolars, write

QUARANTINE = {"secmlops": {"quarantine": {"max_failing_percent": 2.5}}}
BACKENDS = ["pandas", "polars"]
FORMATS = ["csv", "parquet"]
MODULE = "tests.unit.test_validation_quarantine"


class ChurnQuarantined(ChurnDataset):
    """The demo schema, tolerating up to 2.5 % failing rows."""

    class Config:
        name = "ChurnDataset"
        metadata = QUARANTINE


class ChurnPolarsQuarantined(ChurnPolars):
    """The polars twin, tolerating up to 2.5 % failing rows."""

    class Config:
        name = "ChurnDataset"
        metadata = QUARANTINE


SPECS = {"pandas": f"{MODULE}:ChurnQuarantined", "polars": f"{MODULE}:ChurnPolarsQuarantined"}
STRICT = {"pandas": "ml.schema:ChurnDataset", "polars": f"{ChurnPolars.__module__}:ChurnPolars"}


@pytest.fixture(scope="module")
def schemas() -> dict[str, SchemaRef]:
    return {backend: load_schema(spec) for backend, spec in SPECS.items()}


@pytest.fixture
def frame() -> pd.DataFrame:
    return generate_churn_dataset("v1.0", rows=200)  # 2.5 % = 5 rows


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read(path: Path) -> pl.DataFrame:
    return pl.read_csv(path) if path.suffix == ".csv" else pl.read_parquet(path)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_few_failing_rows_are_quarantined_with_reasons_and_digests(
    backend: str, fmt: str, tmp_path: Path, frame: pd.DataFrame, schemas: dict[str, SchemaRef]
) -> None:
    frame.loc[3, "tenure_months"] = 99  # range (and the cross-column check)
    frame.loc[5, "contract"] = "weekly"  # category
    frame.loc[8, "monthly_charges"] = None  # null
    frame.loc[12, "customer_id"] = frame.loc[13, "customer_id"]  # duplicate: both rows
    data = write(frame, tmp_path / f"churn.{fmt}")
    out = tmp_path / "validated"
    result = validate_dataset(data, schemas[backend], quarantine_dir=out)

    assert result.passed and result.failed_tests == () and result.failures == ()
    q = result.quarantine
    assert q is not None
    assert (q.rows, q.failing_rows, q.clean_rows) == (200, 5, 195)
    assert q.max_failing_percent == 2.5
    assert q.clean_path == out / f"churn.clean.{fmt}"
    assert q.quarantine_path == out / f"churn.quarantine.{fmt}"
    assert q.clean_sha256 == sha256(q.clean_path)
    assert q.quarantine_sha256 == sha256(q.quarantine_path)
    assert result.data_sha256 == sha256(data)  # the evidence is about the pulled file
    assert result.training_data == (q.clean_path, q.clean_sha256)

    # Every failing row is in the quarantine file with its reason; none is dropped.
    held = read(q.quarantine_path)
    reasons = dict(zip(held[ROW_COLUMN].to_list(), held[REASON_COLUMN].to_list(), strict=True))
    assert sorted(reasons) == [3, 5, 8, 12, 13]
    assert "tenure_months:less_than_or_equal_to(72)" in reasons[3]
    assert "ChurnDataset:total_charges_plausible" in reasons[3]  # two reasons, one row
    assert reasons[5] == "contract:isin(['month-to-month', 'one-year', 'two-year'])"
    assert "monthly_charges:not_nullable" in reasons[8]
    assert reasons[12] == reasons[13] == "customer_id:field_uniqueness"
    clean = read(q.clean_path)
    assert clean.height + held.height == 200
    assert set(clean["customer_id"].to_list()).isdisjoint(held["customer_id"].to_list())
    # The clean file passes the same schema with no tolerance.
    assert validate_dataset(q.clean_path, load_schema(STRICT[backend])).passed

    # Evidence: the tolerated checks are warned, the files are subjects, nothing "failed".
    assert "contract:isin(['month-to-month', 'one-year', 'two-year'])" in result.warned_tests
    assert not set(result.warned_tests) & set(result.passed_tests)
    statement = validation_statement(result)
    predicate = statement["predicate"]
    assert predicate["result"] == "PASSED"
    assert predicate["failedTests"] == [] and predicate["summary"]["failures"] == []
    assert predicate["warnedTests"] == list(result.warned_tests)
    subjects = {s["name"]: s["digest"]["sha256"] for s in statement["subject"]}
    assert subjects == {
        f"churn.{fmt}": result.data_sha256,
        f"clean/churn.clean.{fmt}": q.clean_sha256,
        f"quarantine/churn.quarantine.{fmt}": q.quarantine_sha256,
    }
    recorded = result.to_json()["quarantine"]
    assert recorded["failing_rows"] == 5 and recorded["quarantine_sha256"] == q.quarantine_sha256
    counted = {f["check"]: f["count"] for f in recorded["failures"]}
    assert counted["field_uniqueness"] == 2


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_too_many_failing_rows_are_refused_and_nothing_is_written(
    backend: str, fmt: str, tmp_path: Path, frame: pd.DataFrame, schemas: dict[str, SchemaRef]
) -> None:
    frame.loc[0:5, "support_calls"] = 250  # 6 rows = 3 % > 2.5 %
    data = write(frame, tmp_path / f"churn.{fmt}")
    out = tmp_path / "validated"
    with pytest.raises(ControlRefused, match=r"quarantines at most 2.5% of rows") as info:
        validate_dataset(data, schemas[backend], quarantine_dir=out)
    assert info.value.reason is ValidationRefusal.SCHEMA_CHECK_FAILED
    assert info.value.result.quarantine is None
    assert "support_calls:less_than_or_equal_to(100)" in info.value.result.failed_tests
    assert not out.exists()


@pytest.mark.parametrize("backend", BACKENDS)
def test_exactly_the_limit_is_quarantined(
    backend: str, tmp_path: Path, frame: pd.DataFrame, schemas: dict[str, SchemaRef]
) -> None:
    frame.loc[0:4, "support_calls"] = 250  # 5 rows = 2.5 %
    data = write(frame, tmp_path / "churn.parquet")
    result = validate_dataset(data, schemas[backend], quarantine_dir=tmp_path / "q")
    assert result.quarantine is not None and result.quarantine.failing_rows == 5


@pytest.mark.parametrize(
    "schema_problem",
    ["extra column", "missing column", "wrong dtype"],
)
@pytest.mark.parametrize("backend", BACKENDS)
def test_schema_level_problems_are_never_quarantined(
    backend: str,
    schema_problem: str,
    tmp_path: Path,
    frame: pd.DataFrame,
    schemas: dict[str, SchemaRef],
) -> None:
    frame.loc[0, "support_calls"] = 250  # one row-level failure beside it
    if schema_problem == "extra column":
        frame = frame.assign(ssn="123-45-6789")
    elif schema_problem == "missing column":
        frame = frame.drop(columns=["churned"])
    else:
        frame["tenure_months"] = frame["tenure_months"].astype(str)
    data = write(frame, tmp_path / "churn.parquet")
    with pytest.raises(ControlRefused) as info:
        validate_dataset(data, schemas[backend], quarantine_dir=tmp_path / "q")
    assert info.value.reason is ValidationRefusal.SCHEMA_CHECK_FAILED
    assert not (tmp_path / "q").exists()


def test_quarantine_policy_is_part_of_the_schema_digest(schemas: dict[str, SchemaRef]) -> None:
    plain = load_schema("ml.schema:ChurnDataset")
    assert schemas["pandas"].quarantine == QuarantinePolicy(max_failing_percent=2.5)
    assert plain.quarantine is None
    assert schemas["pandas"].digest != plain.digest
    assert schemas["pandas"].to_json()["quarantine"] == {"max_failing_percent": 2.5}


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ({"secmlops": {"quarantine": {"max_failing_percent": 80}}}, "less than or equal to 50"),
        ({"secmlops": {"quarantine": {"max_failing_percent": 0}}}, "greater than 0"),
        ({"secmlops": {"quarantine": {"max_failing_pct": 1}}}, "max_failing_pct"),
        ({"secmlops": {"skip_checks": True}}, "only a 'quarantine' entry"),
    ],
)
def test_malformed_quarantine_declarations_are_bad_input(
    tmp_path: Path, metadata: dict[str, object], message: str
) -> None:
    path = tmp_path / "loose.py"
    path.write_text(
        "import pandera.polars as pa\n"
        "class Rows(pa.DataFrameModel):\n"
        "    x: int = pa.Field(ge=0)\n"
        "    class Config:\n"
        "        strict = True\n"
        f"        metadata = {metadata!r}\n"
    )
    with pytest.raises(InputError, match=message):
        load_schema(f"{path}:Rows")


def test_dataframeschema_metadata_declares_quarantine_too(tmp_path: Path) -> None:
    path = tmp_path / "rows.py"
    path.write_text(
        "import pandera.pandas as pa\n"
        "rows = pa.DataFrameSchema({'x': pa.Column(int, pa.Check.ge(0))}, strict=True,\n"
        f"    name='rows', metadata={QUARANTINE!r})\n"
    )
    data = tmp_path / "rows.csv"
    data.write_text("x\n" + "\n".join(["-1"] + [str(i) for i in range(99)]) + "\n")
    result = validate_dataset(data, f"{path}:rows", quarantine_dir=tmp_path / "out")
    assert result.quarantine is not None
    assert (result.quarantine.failing_rows, result.quarantine.clean_rows) == (1, 99)
    held = pl.read_csv(result.quarantine.quarantine_path)
    assert held.row(0, named=True) == {
        ROW_COLUMN: 0,
        "x": -1,
        REASON_COLUMN: "x:greater_than_or_equal_to(0)",
    }
