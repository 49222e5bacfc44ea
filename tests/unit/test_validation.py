"""The schema gate: loading schemas, passing good data, refusing each kind of bad data."""

from __future__ import annotations

import hashlib
import importlib.util
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pandera.pandas as pa
import pytest
from pandera import config as pandera_config
from pydantic import ValidationError

from ml.schema import ChurnDataset
from secmlops.controls.validation import (
    SchemaRef,
    ValidationPolicy,
    ValidationRefusal,
    ValidationResult,
    check_dataset,
    load_schema,
    schema_tests,
    validate_dataset,
    validation_statement,
)
from secmlops.demo.data_registry import generate_churn_dataset, write_dataset_csv
from secmlops.errors import ControlRefused, InputError
from secmlops.evidence.statements import PREDICATE_TEST_RESULT

REPO_ROOT = Path(__file__).resolve().parents[2]
MODULE_SPEC = "ml.schema:ChurnDataset"
FILE_SPEC = f"{REPO_ROOT / 'ml' / 'schema.py'}:ChurnDataset"


@pytest.fixture(scope="module")
def churn_schema() -> SchemaRef:
    return load_schema(MODULE_SPEC)


@pytest.fixture
def good_frame() -> pd.DataFrame:
    return generate_churn_dataset("v1.0", rows=300)


@pytest.fixture
def good_csv(tmp_path: Path, good_frame: pd.DataFrame) -> Path:
    path = tmp_path / "churn.csv"
    write_dataset_csv(good_frame, path)
    return path


@pytest.fixture
def restore_pandera_config() -> Iterator[None]:
    saved = pandera_config.get_config_global().validation_enabled
    yield
    pandera_config.set_config(validation_enabled=saved)


# --- load_schema --------------------------------------------------------------------------


def test_module_and_file_specs_load_the_same_schema(churn_schema: SchemaRef) -> None:
    from_file = load_schema(FILE_SPEC)
    assert churn_schema.name == from_file.name == "ChurnDataset"
    assert churn_schema.digest == from_file.digest
    assert len(churn_schema.digest) == 64
    assert churn_schema.source is not None and churn_schema.source.endswith("ml/schema.py")
    assert set(churn_schema.schema.columns) == set(ChurnDataset.to_schema().columns)


def test_dataframeschema_instance_and_digest_tracks_the_file(tmp_path: Path) -> None:
    path = tmp_path / "myschema.py"
    body = (
        "import pandera.pandas as pa\n"
        "schema = pa.DataFrameSchema({{'x': pa.Column(int, pa.Check.le({limit}))}},"
        " strict=True, name='xs')\n"
    )
    path.write_text(body.format(limit=5))
    first = load_schema(f"{path}:schema")
    assert first.name == "xs"
    assert isinstance(first.schema, pa.DataFrameSchema)
    path.write_text(body.format(limit=6))
    second = load_schema(f"{path}:schema")
    assert second.digest != first.digest
    assert second.schema.columns["x"].checks[0].statistics == {"max_value": 6}


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("make_spec", "message"),
    [
        (lambda d: "ml.schema", "no ':ClassName' part"),
        (lambda d: ":ChurnDataset", "no ':ClassName' part"),
        (lambda d: "ml.schema:", "no ':ClassName' part"),
        (lambda d: f"{d}/missing.py:Schema", "does not exist"),
        (lambda d: "no_such_package.schemas:Schema", "cannot be found"),
        (lambda d: "not a module!:Schema", "neither a .py file nor a module"),
        (
            lambda d: f"{_write(d, 'boom.py', 'raise RuntimeError(42)')}:S",
            "RuntimeError: 42",
        ),
        (lambda d: f"{_write(d, 'syntax.py', 'def (:')}:S", "SyntaxError"),
        (lambda d: "ml.schema:NoSuchModel", "no attribute 'NoSuchModel'"),
        (lambda d: "ml.schema:CONTRACT_TYPES", "is a list, not a pandera"),
        (lambda d: "ml.schema:pa", "is a module, not a pandera"),
    ],
)
def test_load_schema_errors_name_the_spec(
    tmp_path: Path, make_spec: Callable[[Path], str], message: str
) -> None:
    spec = make_spec(tmp_path)
    with pytest.raises(InputError, match=message) as info:
        load_schema(spec)
    assert info.value.where == spec


def test_missing_attribute_lists_the_schemas_that_exist() -> None:
    with pytest.raises(InputError, match="schemas in it: ChurnDataset"):
        load_schema("ml.schema:Churn")


# --- good data ----------------------------------------------------------------------------


def test_good_data_passes_with_evidence(good_csv: Path, churn_schema: SchemaRef) -> None:
    result = validate_dataset(good_csv, churn_schema)
    assert result.passed
    assert result.rows == 300
    assert result.columns == tuple(ChurnDataset.to_schema().columns)
    assert result.data_sha256 == hashlib.sha256(good_csv.read_bytes()).hexdigest()
    assert result.failed_tests == ()
    assert result.checks_run == len(result.passed_tests) > 30
    assert "customer_id:field_uniqueness" in result.passed_tests
    assert "ChurnDataset:total_charges_plausible" in result.passed_tests
    statement = validation_statement(result)
    assert statement["predicateType"] == PREDICATE_TEST_RESULT
    assert statement["subject"] == [{"name": "churn.csv", "digest": {"sha256": result.data_sha256}}]
    predicate = statement["predicate"]
    assert predicate["result"] == "PASSED"
    assert predicate["configuration"] == [
        {
            "name": "ChurnDataset",
            "uri": MODULE_SPEC,
            "digest": {"sha256": churn_schema.digest},
            # The schema file's own digest: what a site pins as schema_sha256.
            "annotations": {"sourceSha256": churn_schema.source_sha256},
        }
    ]
    assert predicate["failedTests"] == [] and predicate["warnedTests"] == []
    assert predicate["passedTests"] == list(result.passed_tests)


def test_schema_spec_string_is_accepted(good_csv: Path) -> None:
    assert validate_dataset(good_csv, FILE_SPEC).schema_name == "ChurnDataset"


# --- bad data -----------------------------------------------------------------------------


def _set(column: str, row: int, value: Any) -> Callable[[pd.DataFrame], pd.DataFrame]:
    def change(frame: pd.DataFrame) -> pd.DataFrame:
        frame[column] = frame[column].astype(object)
        frame.loc[row, column] = value
        return frame

    return change


def _duplicate_id(frame: pd.DataFrame) -> pd.DataFrame:
    frame.loc[7, "customer_id"] = frame.loc[3, "customer_id"]
    return frame


# case: (how to break good data, the column the message must name, the failed test)
BAD_DATA = {
    "wrong dtype": (
        _set("tenure_months", 5, "twelve"),
        "tenure_months",
        "tenure_months:dtype('int64')",
    ),
    "out of range": (
        _set("support_calls", 2, 250),
        "support_calls",
        "support_calls:less_than_or_equal_to(100)",
    ),
    "negative": (
        _set("tenure_months", 9, -3),
        "tenure_months",
        "tenure_months:greater_than_or_equal_to(0)",
    ),
    "unknown category": (
        _set("contract", 4, "weekly"),
        "contract",
        "contract:isin(['month-to-month', 'one-year', 'two-year'])",
    ),
    "bad label": (_set("churned", 1, 2), "churned", "churned:isin([0, 1])"),
    "duplicate id": (_duplicate_id, "customer_id", "customer_id:field_uniqueness"),
    "bad id format": (
        _set("customer_id", 0, "X-1"),
        "customer_id",
        "customer_id:str_matches('^C\\d{6}$')",
    ),
    "null value": (
        _set("monthly_charges", 3, None),
        "monthly_charges",
        "monthly_charges:not_nullable",
    ),
    "missing column": (
        lambda f: f.drop(columns=["churned"]),
        "churned",
        "churned:column_in_dataframe",
    ),
    "extra column": (
        lambda f: f.assign(ssn="123-45-6789"),
        "ssn",
        "ChurnDataset:column_in_schema",
    ),
    "implausible totals": (
        _set("total_charges", 6, 999_999.0),
        "ChurnDataset",
        "ChurnDataset:total_charges_plausible",
    ),
}


# pandera's own SchemaErrorReason, kept in the result, where it names the kind of failure.
PANDERA_REASON = {
    "missing column": "column_not_in_dataframe",
    "extra column": "column_not_in_schema",
}


@pytest.mark.parametrize("case", list(BAD_DATA), ids=list(BAD_DATA))
def test_bad_data_is_refused_naming_the_column(
    case: str, tmp_path: Path, good_frame: pd.DataFrame, churn_schema: SchemaRef
) -> None:
    change, column, test = BAD_DATA[case]
    path = tmp_path / "bad.csv"
    path.write_text(change(good_frame.copy()).to_csv(index=False))
    with pytest.raises(ControlRefused) as info:
        validate_dataset(path, churn_schema)
    error = info.value
    assert error.reason is ValidationRefusal.SCHEMA_CHECK_FAILED
    assert isinstance(error.result, ValidationResult)
    assert error.result.pandera_reasons
    if case in PANDERA_REASON:
        assert PANDERA_REASON[case] in error.result.pandera_reasons
    assert column in error.message
    assert test.split(":", 1)[1] in error.message
    result = error.details["result"]
    assert result["pandera_reasons"] == list(error.result.pandera_reasons)
    assert result["passed"] is False
    failed = result["failed_tests"]
    assert test in failed, failed
    # Every failure maps onto a check the schema declares, so passed+failed is the full set.
    declared = set(schema_tests(churn_schema.schema)) | {"ChurnDataset:min_rows(1)"}
    assert set(failed) <= declared
    assert not set(failed) & set(result["passed_tests"])
    assert 0 < len(error.details["failure_cases"]) <= 20


def test_failure_cases_are_capped_and_summarised(tmp_path: Path, good_frame: pd.DataFrame) -> None:
    good_frame["tenure_months"] = 500  # every row out of range
    path = tmp_path / "bad.csv"
    write_dataset_csv(good_frame, path)
    policy = ValidationPolicy(max_failure_cases_reported=5, max_examples_per_check=2)
    result, cases = check_dataset(path, MODULE_SPEC, policy=policy)
    assert not result.passed
    assert len(cases) == 5
    by_check = {f.test_name: f for f in result.failures}
    range_failure = by_check["tenure_months:less_than_or_equal_to(72)"]
    assert range_failure.count == 300
    assert range_failure.examples == ("500", "500")
    statement = validation_statement(result)
    assert statement["predicate"]["result"] == "FAILED"
    assert "tenure_months:less_than_or_equal_to(72)" in statement["predicate"]["failedTests"]


# --- the kill switch ----------------------------------------------------------------------


def test_kill_switch_really_silences_pandera(good_frame: pd.DataFrame) -> None:
    # Why the gate checks: with the switch off, pandera returns bad data unchecked.
    bad = good_frame.assign(churned=7)
    with pandera_config.config_context(validation_enabled=False):
        returned = ChurnDataset.validate(bad)  # no SchemaError: the data passes unchecked
    assert (returned["churned"] == 7).all()


def test_env_kill_switch_is_refused(
    good_csv: Path, churn_schema: SchemaRef, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PANDERA_VALIDATION_ENABLED", "False")
    with pytest.raises(ControlRefused, match="PANDERA_VALIDATION_ENABLED=False") as info:
        validate_dataset(good_csv, churn_schema)
    assert info.value.reason is ValidationRefusal.VALIDATION_DISABLED
    assert "PANDERA_VALIDATION_ENABLED=False" in info.value.result


def test_env_depth_limit_is_refused(
    good_csv: Path, churn_schema: SchemaRef, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PANDERA_VALIDATION_DEPTH", "SCHEMA_ONLY")
    with pytest.raises(ControlRefused, match="PANDERA_VALIDATION_DEPTH=SCHEMA_ONLY") as info:
        validate_dataset(good_csv, churn_schema)
    assert info.value.reason is ValidationRefusal.VALIDATION_DISABLED


@pytest.mark.usefixtures("restore_pandera_config")
def test_global_config_kill_switch_is_refused(good_csv: Path, churn_schema: SchemaRef) -> None:
    pandera_config.set_config(validation_enabled=False)
    with pytest.raises(ControlRefused, match="global config validation_enabled=False") as info:
        validate_dataset(good_csv, churn_schema)
    assert info.value.reason is ValidationRefusal.VALIDATION_DISABLED


def test_context_kill_switch_is_refused(good_csv: Path, churn_schema: SchemaRef) -> None:
    with (
        pandera_config.config_context(validation_enabled=False),
        pytest.raises(ControlRefused, match="context config validation_enabled=False") as info,
    ):
        validate_dataset(good_csv, churn_schema)
    assert info.value.reason is ValidationRefusal.VALIDATION_DISABLED


def test_engine_that_does_not_enforce_is_refused(
    good_csv: Path, churn_schema: SchemaRef, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A switch we do not know by name: the canary schema catches it.
    monkeypatch.setattr(pa.DataFrameSchema, "validate", lambda self, df, **_: df)
    with pytest.raises(ControlRefused, match="canary") as info:
        validate_dataset(good_csv, churn_schema)
    assert info.value.reason is ValidationRefusal.VALIDATION_NOT_ENFORCING


# --- unreadable and empty inputs ----------------------------------------------------------


def test_header_only_dataset_is_refused(tmp_path: Path, churn_schema: SchemaRef) -> None:
    path = tmp_path / "empty.csv"
    path.write_text(",".join(churn_schema.schema.columns) + "\n")
    with pytest.raises(ControlRefused, match=r"min_rows\(1\)") as info:
        validate_dataset(path, churn_schema)
    assert info.value.reason is ValidationRefusal.TOO_FEW_ROWS
    assert info.value.details["result"]["rows"] == 0
    assert info.value.details["result"]["passed_tests"] == []


def test_min_rows_policy(good_csv: Path, churn_schema: SchemaRef) -> None:
    with pytest.raises(ControlRefused, match=r"min_rows\(1000\).*300 rows") as info:
        validate_dataset(good_csv, churn_schema, policy=ValidationPolicy(min_rows=1000))
    assert info.value.reason is ValidationRefusal.TOO_FEW_ROWS


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("zero.csv", b"", "is empty"),
        ("latin.csv", b"customer_id\n\xff\xfe\xfa\n", "cannot be parsed"),
        ("data.json", b"{}", "unsupported format"),
        ("noext", b"a,b\n1,2\n", "unsupported format"),
    ],
)
def test_unreadable_files_are_bad_input(
    tmp_path: Path, churn_schema: SchemaRef, name: str, content: bytes, message: str
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(InputError, match=message) as info:
        validate_dataset(path, churn_schema)
    assert info.value.where == str(path)


def test_missing_file_is_bad_input(tmp_path: Path, churn_schema: SchemaRef) -> None:
    with pytest.raises(InputError, match="does not exist"):
        validate_dataset(tmp_path / "nope.csv", churn_schema)


def test_parquet_needs_pyarrow(tmp_path: Path, churn_schema: SchemaRef) -> None:
    path = tmp_path / "churn.parquet"
    if importlib.util.find_spec("pyarrow") is None:
        path.write_bytes(b"PAR1")
        with pytest.raises(InputError, match="pyarrow is not installed"):
            validate_dataset(path, churn_schema)
    else:
        generate_churn_dataset("v1.0", rows=50).to_parquet(path)
        assert validate_dataset(path, churn_schema).passed


# --- policy and schema strictness ---------------------------------------------------------


def test_policy_is_frozen_strict_and_refuses_permissive_values() -> None:
    policy = ValidationPolicy()
    with pytest.raises(ValidationError):
        policy.min_rows = 0  # type: ignore[misc]
    with pytest.raises(ValidationError):
        ValidationPolicy(min_rows=0)
    with pytest.raises(ValidationError):
        ValidationPolicy(skip_checks=True)  # type: ignore[call-arg]


def test_non_strict_schema_is_refused_unless_unsafe(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    schema_file = _write(
        tmp_path,
        "loose.py",
        "import pandera.pandas as pa\nloose = pa.DataFrameSchema({'a': pa.Column(int)})\n",
    )
    data = tmp_path / "d.csv"
    data.write_text("a,secret\n1,x\n")
    spec = f"{schema_file}:loose"
    with pytest.raises(InputError, match="not strict"):
        validate_dataset(data, spec)
    result = validate_dataset(
        data, spec, policy=ValidationPolicy(allow_non_strict_schema_unsafe=True)
    )
    assert result.passed
    assert "allow_non_strict_schema_unsafe" in caplog.text
