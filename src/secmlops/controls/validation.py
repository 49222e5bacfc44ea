"""Schema validation: a dataset must pass a pandera schema before anything trains on it.

The schema is user code named by a spec, ``"path/to/file.py:ClassName"`` or
``"package.module:ClassName"`` (a ``DataFrameModel`` subclass or a ``DataFrameSchema``).
Validation is lazy (every failure is collected), and a failure *raises*
``ControlRefused`` with a summary per column and check. pandera's global kill switch
(``PANDERA_VALIDATION_ENABLED=False``, ``pandera.config``) makes ``validate`` silently
return the data unchecked; this gate notices that, and a canary schema that must fail, and
refuses rather than pass.

Example::

    result = validate_dataset(Path("data/churn.csv"), "ml.schema:ChurnDataset")
    statement = validation_statement(result)  # the flow signs and stores it
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import inspect
import io
import json
import logging
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pandas as pd
import pandera.pandas as pa
from pandera import config as pandera_config
from pandera.api.pandas.model import DataFrameModel
from pandera.errors import SchemaError, SchemaErrors
from pydantic import BaseModel, ConfigDict, Field

from secmlops._internal.digests import sha256_bytes
from secmlops.errors import ControlRefused, InputError, RefusalReason, ToolError
from secmlops.evidence.predicates import (
    ResourceDescriptor,
    SchemaFailure,
    TestResultPredicate,
    ToolRef,
    ValidationSummary,
    dump_predicate,
)
from secmlops.evidence.statements import PREDICATE_TEST_RESULT, Subject, make_statement, utc_now

logger = logging.getLogger(__name__)

_MODULE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_SPEC_HELP = 'give "path/to/schema.py:ClassName" or "package.module:ClassName"'
# Checks pandera reports against the whole frame; their failure_case is the column name.
_MISSING_COLUMN = "column_in_dataframe"
_FRAME_COLUMN_CHECKS = {"column_in_schema", "column_ordered"}


class ValidationRefusal(RefusalReason):
    """Why the schema gate refused a dataset (``ControlRefused.reason``).

    pandera's own ``SchemaErrorReason`` codes for a failing dataset are kept in
    ``ValidationResult.pandera_reasons``.
    """

    VALIDATION_DISABLED = "validation_disabled"
    """pandera's checks are switched off or cut short (env var or ``pandera.config``)."""
    VALIDATION_NOT_ENFORCING = "validation_not_enforcing"
    """pandera accepted a canary frame that violates its schema."""
    TOO_FEW_ROWS = "too_few_rows"
    """The dataset has fewer rows than ``ValidationPolicy.min_rows``."""
    SCHEMA_CHECK_FAILED = "schema_check_failed"
    """At least one check of the schema failed."""


class ValidationPolicy(BaseModel):
    """How the schema gate runs. The defaults are the safe ones."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    min_rows: int = Field(
        default=1,
        ge=1,
        description="Refuse datasets with fewer rows (an empty dataset never passes).",
    )
    max_failure_cases_reported: int = Field(
        default=20, ge=1, le=10_000, description="Failure cases kept in the error details."
    )
    max_examples_per_check: int = Field(
        default=3, ge=1, le=100, description="Example failing values shown per check in messages."
    )
    allow_non_strict_schema_unsafe: bool = Field(
        default=False,
        description="Accept schemas without strict=True, which let undeclared columns through.",
    )

    def model_post_init(self, _context: Any) -> None:
        if self.allow_non_strict_schema_unsafe:
            logger.warning(
                "ValidationPolicy.allow_non_strict_schema_unsafe is set: datasets may carry "
                "columns no schema describes"
            )


@dataclass(frozen=True)
class SchemaRef:
    """A loaded schema: the pandera object, its name, where it came from, and its digest.

    ``digest`` is the sha256 over the schema's source file and its declared structure, so
    the evidence changes when the schema's code or any constant it imports changes.
    """

    spec: str
    name: str
    schema: pa.DataFrameSchema
    digest: str
    source: str | None

    def to_json(self) -> dict[str, Any]:
        return {"spec": self.spec, "name": self.name, "digest": self.digest, "source": self.source}


@dataclass(frozen=True)
class CheckFailure:
    """One failed check: which column, which check, how many cases, a few examples."""

    column: str
    check: str
    count: int
    examples: tuple[str, ...]

    @property
    def test_name(self) -> str:
        return f"{self.column}:{self.check}"

    def describe(self) -> str:
        shown = ", ".join(self.examples)
        return f"{self.column}: {self.check} failed for {self.count} case(s) (e.g. {shown})"

    def to_json(self) -> dict[str, Any]:
        return {
            "column": self.column,
            "check": self.check,
            "count": self.count,
            "examples": list(self.examples),
        }


@dataclass(frozen=True)
class ValidationResult:
    """What the schema gate looked at and what it found."""

    data_path: Path
    data_sha256: str
    rows: int
    columns: tuple[str, ...]
    schema_name: str
    schema_spec: str
    schema_digest: str
    passed: bool
    checks_run: int
    passed_tests: tuple[str, ...]
    failed_tests: tuple[str, ...]
    failures: tuple[CheckFailure, ...] = ()
    #: pandera's ``SchemaErrorReason`` values behind the failures (e.g. ``column_not_in_schema``).
    pandera_reasons: tuple[str, ...] = ()
    validated_at: str = field(default_factory=utc_now)
    pandera_version: str = field(default_factory=lambda: importlib.metadata.version("pandera"))

    def summary(self) -> str:
        """One line per failed check, or a one-line pass."""
        head = f"{self.data_path.name} ({self.rows} rows) against {self.schema_name}"
        if self.passed:
            return f"{head}: passed {self.checks_run} checks"
        lines = [f"{head}: {len(self.failures)} of {self.checks_run} checks failed"]
        lines += [f"  - {f.describe()}" for f in self.failures]
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {
            "data_path": str(self.data_path),
            "data_sha256": self.data_sha256,
            "rows": self.rows,
            "columns": list(self.columns),
            "schema_name": self.schema_name,
            "schema_spec": self.schema_spec,
            "schema_digest": self.schema_digest,
            "passed": self.passed,
            "checks_run": self.checks_run,
            "passed_tests": list(self.passed_tests),
            "failed_tests": list(self.failed_tests),
            "failures": [f.to_json() for f in self.failures],
            "pandera_reasons": list(self.pandera_reasons),
            "validated_at": self.validated_at,
            "pandera_version": self.pandera_version,
        }


# --- loading a schema ---------------------------------------------------------------------


def _import_schema_file(spec: str, file_part: str) -> ModuleType:
    path = Path(file_part).expanduser()
    if not path.is_file():
        raise InputError(
            f"schema file {file_part} does not exist (spec {spec!r})",
            where=spec,
            fix=f"check the path; {_SPEC_HELP}",
        )
    resolved = path.resolve()
    module_name = f"_secmlops_schema_{sha256_bytes(str(resolved).encode())[:16]}"
    module_spec = importlib.util.spec_from_file_location(module_name, resolved)
    if module_spec is None or module_spec.loader is None:
        raise InputError(f"{file_part} cannot be imported as Python", where=spec, fix=_SPEC_HELP)
    module = importlib.util.module_from_spec(module_spec)
    # pandera resolves annotations through sys.modules, so the module must be registered.
    sys.modules[module_name] = module
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(module_name, None)
        raise InputError(
            f"importing schema file {file_part} failed: {type(exc).__name__}: {exc}",
            where=spec,
            fix="fix the error in the schema file (run it with python to see the traceback)",
        ) from exc
    return module


def _import_schema_module(spec: str, module_part: str) -> ModuleType:
    if not _MODULE_RE.match(module_part):
        raise InputError(
            f"{module_part!r} is neither a .py file nor a module name (spec {spec!r})",
            where=spec,
            fix=_SPEC_HELP,
        )
    try:
        return importlib.import_module(module_part)
    except ModuleNotFoundError as exc:
        raise InputError(
            f"schema module {module_part} cannot be found: {exc}",
            where=spec,
            fix="check the module name and that the project is installed in this environment",
        ) from exc
    except Exception as exc:
        raise InputError(
            f"importing schema module {module_part} failed: {type(exc).__name__}: {exc}",
            where=spec,
            fix="fix the error in the schema module",
        ) from exc


def _schema_candidates(module: ModuleType) -> list[str]:
    found = []
    for attr, value in vars(module).items():
        if isinstance(value, pa.DataFrameSchema) or (
            isinstance(value, type)
            and issubclass(value, DataFrameModel)
            and value is not DataFrameModel
        ):
            found.append(attr)
    return sorted(found)


def schema_tests(schema: pa.DataFrameSchema) -> list[str]:
    """Every check a schema runs, named ``"<column>:<check>"`` as failures are reported."""
    frame = schema.name or "DataFrameSchema"
    tests: list[str] = []
    for name, column in schema.columns.items():
        if column.required:
            tests.append(f"{name}:column_in_dataframe")
        if column.dtype is not None:
            tests.append(f"{name}:dtype('{column.dtype}')")
        if not column.nullable:
            tests.append(f"{name}:not_nullable")
        if column.unique:
            tests.append(f"{name}:field_uniqueness")
        tests += [f"{name}:{check.error or check.name}" for check in column.checks]
    if schema.strict:
        tests.append(f"{frame}:column_in_schema")
    if schema.ordered:
        tests.append(f"{frame}:column_ordered")
    if schema.unique:
        tests.append(f"{frame}:multiple_fields_uniqueness")
    tests += [f"{frame}:{check.error or check.name}" for check in schema.checks]
    return tests


def _structure(schema: pa.DataFrameSchema) -> dict[str, Any]:
    """A canonical description of what a schema declares (for its digest)."""

    def checks(items: list[Any]) -> list[dict[str, Any]]:
        return [{"name": c.name, "error": c.error, "stats": repr(c.statistics)} for c in items]

    return {
        "name": schema.name,
        "strict": schema.strict,
        "coerce": schema.coerce,
        "ordered": schema.ordered,
        "unique": schema.unique,
        "checks": checks(schema.checks),
        "columns": {
            name: {
                "dtype": str(col.dtype),
                "nullable": col.nullable,
                "unique": col.unique,
                "required": col.required,
                "coerce": col.coerce,
                "regex": col.regex,
                "checks": checks(col.checks),
            }
            for name, col in schema.columns.items()
        },
    }


def load_schema(spec: str) -> SchemaRef:
    """Load a pandera schema from ``"file.py:Name"`` or ``"package.module:Name"``.

    Raises ``InputError`` naming the spec for a missing colon, file or module, an import
    error, a missing attribute, or an object that is not a pandas ``DataFrameModel``
    subclass or ``DataFrameSchema``.
    """
    target, sep, attr = spec.strip().rpartition(":")
    if not sep or not target or not attr:
        raise InputError(
            f"schema spec {spec!r} has no ':ClassName' part", where=spec, fix=_SPEC_HELP
        )
    is_file = target.endswith(".py") or "/" in target or os.sep in target
    module = _import_schema_file(spec, target) if is_file else _import_schema_module(spec, target)
    if not hasattr(module, attr):
        candidates = _schema_candidates(module)
        hint = f"schemas in it: {', '.join(candidates)}" if candidates else "it defines no schema"
        raise InputError(f"{target} has no attribute {attr!r} ({hint})", where=spec, fix=_SPEC_HELP)
    obj = getattr(module, attr)
    if isinstance(obj, type) and issubclass(obj, DataFrameModel) and obj is not DataFrameModel:
        try:
            schema = obj.to_schema()
        except Exception as exc:
            raise InputError(
                f"{attr} in {target} is not a valid DataFrameModel: {exc}", where=spec
            ) from exc
    elif isinstance(obj, pa.DataFrameSchema):
        schema = obj
    else:
        raise InputError(
            f"{attr} in {target} is a {type(obj).__name__}, not a pandera (pandas) "
            "DataFrameModel subclass or DataFrameSchema",
            where=spec,
            fix="name a class deriving from pandera.pandas.DataFrameModel or a DataFrameSchema",
        )
    source_file = inspect.getsourcefile(module) if hasattr(module, "__file__") else None
    source_sha = hashlib.sha256(Path(source_file).read_bytes()).hexdigest() if source_file else None
    canonical = json.dumps(
        {"source_sha256": source_sha, "structure": _structure(schema)},
        sort_keys=True,
        separators=(",", ":"),
        default=str,
    ).encode()
    return SchemaRef(
        spec=spec,
        name=schema.name or attr,
        schema=schema,
        digest=sha256_bytes(canonical),
        source=source_file,
    )


# --- the kill switch ----------------------------------------------------------------------


def require_validation_enabled() -> None:
    """Refuse when pandera's checks are switched off or cut short anywhere in this process.

    pandera reads ``PANDERA_VALIDATION_ENABLED`` / ``PANDERA_VALIDATION_DEPTH`` at import
    and lets code change ``pandera.config``; any of these makes ``validate`` return data
    unchecked. A canary schema that must fail proves the engine really checks.
    """
    fix = (
        "unset PANDERA_VALIDATION_ENABLED and PANDERA_VALIDATION_DEPTH and remove any "
        "pandera.config.set_config(validation_enabled=False) from the code that runs the gate"
    )
    env_enabled = os.environ.get("PANDERA_VALIDATION_ENABLED")
    env_depth = os.environ.get("PANDERA_VALIDATION_DEPTH")
    reasons = []
    if env_enabled is not None and env_enabled not in {"True", "true", "1"}:
        reasons.append(f"PANDERA_VALIDATION_ENABLED={env_enabled}")
    if env_depth is not None and env_depth != "SCHEMA_AND_DATA":
        reasons.append(f"PANDERA_VALIDATION_DEPTH={env_depth}")
    for scope, conf in (
        ("global", pandera_config.get_config_global()),
        ("context", pandera_config.get_config_context()),
    ):
        if not conf.validation_enabled:
            reasons.append(f"pandera {scope} config validation_enabled=False")
        depth = conf.validation_depth
        if depth is not None and depth != pandera_config.ValidationDepth.SCHEMA_AND_DATA:
            reasons.append(f"pandera {scope} config validation_depth={depth.value}")
    if reasons:
        found = list(dict.fromkeys(reasons))
        raise ControlRefused(
            "pandera validation is switched off or limited in this process ("
            + "; ".join(found)
            + "), so a schema check would pass data unchecked",
            where="pandera config",
            fix=fix,
            details={"switched_off": found},
            reason=ValidationRefusal.VALIDATION_DISABLED,
            result=found,
        )
    canary = pa.DataFrameSchema({"canary": pa.Column(int, pa.Check.ge(0))}, name="canary")
    try:
        canary.validate(pd.DataFrame({"canary": [-1]}))
    except SchemaError:
        return
    raise ControlRefused(
        "pandera accepted a canary frame that violates its schema: validation is not enforcing",
        where="pandera",
        fix=fix,
        reason=ValidationRefusal.VALIDATION_NOT_ENFORCING,
    )


# --- reading and validating ---------------------------------------------------------------


def _read_table(path: Path) -> tuple[bytes, pd.DataFrame]:
    """The file's bytes and the frame parsed from exactly those bytes."""
    suffix = path.suffix.lower()
    if suffix not in {".csv", ".parquet", ".pq"}:
        raise InputError(
            f"{path} has an unsupported format {suffix or '(no suffix)'!r}",
            where=str(path),
            fix="give a .csv file (or .parquet with pyarrow installed)",
        )
    if suffix != ".csv" and importlib.util.find_spec("pyarrow") is None:
        raise InputError(
            f"{path} is parquet, but pyarrow is not installed to read it",
            where=str(path),
            fix="add pyarrow to the project's dependencies, or export the dataset as CSV",
        )
    try:
        raw = path.read_bytes()
    except FileNotFoundError as exc:
        raise InputError(f"dataset {path} does not exist", where=str(path)) from exc
    except OSError as exc:
        raise InputError(f"dataset {path} cannot be read: {exc}", where=str(path)) from exc
    try:
        if suffix == ".csv":
            frame = pd.read_csv(io.BytesIO(raw))
        else:
            frame = pd.read_parquet(io.BytesIO(raw))
    except pd.errors.EmptyDataError as exc:
        raise InputError(
            f"dataset {path} is empty (no header, no rows)",
            where=str(path),
            fix="check the data pull; an empty file is never a valid dataset",
        ) from exc
    except (ValueError, OSError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise InputError(
            f"dataset {path} cannot be parsed as {suffix[1:]}: {exc}",
            where=str(path),
            fix="check the file is the dataset you meant and is not truncated",
        ) from exc
    return raw, frame


def _summarise(
    failure_cases: pd.DataFrame, schema_name: str, per_check: int
) -> tuple[CheckFailure, ...]:
    """Group pandera failure cases by (column, check): count and a few examples."""
    groups: dict[tuple[str, str], list[str]] = {}
    seen_rows: dict[tuple[str, str], set[str]] = {}
    for case in failure_cases.itertuples(index=False):
        check = str(case.check)
        value = "None" if case.failure_case is None else str(case.failure_case)
        if check == _MISSING_COLUMN:
            key = (value, check)  # the failing "value" is the missing column's name
        elif check in _FRAME_COLUMN_CHECKS:
            key = (schema_name, check)  # one check for the frame; examples name the columns
        elif case.schema_context == "DataFrameSchema":
            # Frame-wide checks report one case per column per row; count rows.
            key = (schema_name, check)
            value = f"row {case.index}"
        else:
            key = (str(case.column), check)
        groups.setdefault(key, [])
        rows = seen_rows.setdefault(key, set())
        if value in rows and key[0] == schema_name:
            continue
        rows.add(value)
        groups[key].append(value)
    return tuple(
        CheckFailure(column=col, check=chk, count=len(vals), examples=tuple(vals[:per_check]))
        for (col, chk), vals in sorted(groups.items())
    )


def _run_schema(
    ref: SchemaRef, frame: pd.DataFrame, data: Path, policy: ValidationPolicy
) -> tuple[tuple[CheckFailure, ...], list[dict[str, Any]], tuple[str, ...]]:
    """Validate lazily: the failures grouped per check, the capped raw failure cases, and
    pandera's ``SchemaErrorReason`` values behind them."""
    try:
        # Pin the config for this call so nothing set elsewhere in the process weakens it.
        with pandera_config.config_context(
            validation_enabled=True,
            validation_depth=pandera_config.ValidationDepth.SCHEMA_AND_DATA,
        ):
            ref.schema.validate(frame, lazy=True)
    except SchemaErrors as exc:
        fc = exc.failure_cases
        head = fc.head(policy.max_failure_cases_reported).astype(object)
        cases: list[dict[str, Any]] = json.loads(
            head.to_json(orient="records", default_handler=str)
        )
        codes = tuple(sorted({_reason_code(e) for e in exc.schema_errors}))
        return _summarise(fc, ref.name, policy.max_examples_per_check), cases, codes
    except SchemaError as exc:
        failure = CheckFailure(
            column=str(getattr(exc.schema, "name", ref.name)),
            check=str(exc.check or exc.reason_code),
            count=1,
            examples=(str(exc)[:200],),
        )
        return (failure,), [], (_reason_code(exc),)
    except Exception as exc:
        raise ToolError(
            f"validating {data} with schema {ref.name} crashed: {type(exc).__name__}: {exc}",
            where=ref.spec,
            fix="a custom check in the schema raised; fix the check (it did not pass)",
        ) from exc
    return (), [], ()


def _reason_code(error: SchemaError) -> str:
    code = error.reason_code
    return str(code.value) if code is not None else "unknown"


def check_dataset(
    data: Path, schema: SchemaRef | str, *, policy: ValidationPolicy | None = None
) -> tuple[ValidationResult, list[dict[str, Any]]]:
    """Run the schema on ``data`` and report; does not raise for a failing dataset.

    Returns the result and the (capped) raw failure cases. Use :func:`validate_dataset`
    as the gate; this is for callers that want a FAILED result as evidence.
    """
    policy = policy or ValidationPolicy()
    ref = load_schema(schema) if isinstance(schema, str) else schema
    if not ref.schema.strict and not policy.allow_non_strict_schema_unsafe:
        raise InputError(
            f"schema {ref.name} is not strict, so it would pass columns it does not declare",
            where=ref.spec,
            fix="set strict = True in the schema's Config (or the DataFrameSchema)",
        )
    require_validation_enabled()
    raw, frame = _read_table(data)
    tests = schema_tests(ref.schema)
    min_rows_test = f"{ref.name}:min_rows({policy.min_rows})"
    failures: tuple[CheckFailure, ...] = ()
    cases: list[dict[str, Any]] = []
    pandera_reasons: tuple[str, ...] = ()
    if len(frame) < policy.min_rows:
        # Too few rows: nothing else is worth checking, and no other check ran.
        failures = (
            CheckFailure(
                column=ref.name,
                check=f"min_rows({policy.min_rows})",
                count=1,
                examples=(f"{len(frame)} rows",),
            ),
        )
        tests = [min_rows_test]
    else:
        tests.append(min_rows_test)
        failures, cases, pandera_reasons = _run_schema(ref, frame, data, policy)
    failed = sorted({f.test_name for f in failures})
    passed = [t for t in tests if t not in set(failed)]
    result = ValidationResult(
        data_path=data,
        data_sha256=sha256_bytes(raw),
        rows=len(frame),
        columns=tuple(str(c) for c in frame.columns),
        schema_name=ref.name,
        schema_spec=ref.spec,
        schema_digest=ref.digest,
        passed=not failures,
        checks_run=len(set(tests) | set(failed)),
        passed_tests=tuple(passed),
        failed_tests=tuple(failed),
        failures=failures,
        pandera_reasons=pandera_reasons,
    )
    return result, cases


def validate_dataset(
    data: Path, schema: SchemaRef | str, *, policy: ValidationPolicy | None = None
) -> ValidationResult:
    """The schema gate: return the result if ``data`` passes, else raise ``ControlRefused``.

    The error's message lists each failed (column, check) with a count and examples; its
    ``reason`` is a :class:`ValidationRefusal`, its ``result`` the :class:`ValidationResult`
    (also as ``details["result"]``, with the capped raw failure cases).
    """
    result, cases = check_dataset(data, schema, policy=policy)
    if not result.passed:
        min_rows = f"min_rows({(policy or ValidationPolicy()).min_rows})"
        too_few = any(f.check == min_rows for f in result.failures)
        raise ControlRefused(
            f"dataset failed schema validation: {result.summary()}",
            where=f"{data} vs {result.schema_spec}",
            fix="fix the data at its source (or the schema, through review) and pull again",
            details={"result": result.to_json(), "failure_cases": cases},
            reason=(
                ValidationRefusal.TOO_FEW_ROWS if too_few else ValidationRefusal.SCHEMA_CHECK_FAILED
            ),
            result=result,
        )
    return result


def validation_statement(result: ValidationResult) -> dict[str, Any]:
    """The in-toto test-result v0.1 statement for a validation; subject = the dataset."""
    return make_statement(
        [Subject(result.data_path.name, result.data_sha256)],
        PREDICATE_TEST_RESULT,
        dump_predicate(
            TestResultPredicate(
                result="PASSED" if result.passed else "FAILED",
                configuration=[
                    ResourceDescriptor(
                        name=result.schema_name,
                        uri=result.schema_spec,
                        digest={"sha256": result.schema_digest},
                    )
                ],
                passed_tests=list(result.passed_tests),
                failed_tests=list(result.failed_tests),
                warned_tests=[],
                summary=ValidationSummary(
                    rows=result.rows,
                    columns=list(result.columns),
                    checks_run=result.checks_run,
                    failures=[SchemaFailure.model_validate(f.to_json()) for f in result.failures],
                    validated_at=result.validated_at,
                    tool=ToolRef(name="pandera", version=result.pandera_version),
                ),
            ),
            exclude_none=True,
        ),
    )
