"""Schema validation: a dataset must pass a pandera schema before anything trains on it.

The schema is user code named by a spec, ``"path/to/file.py:ClassName"`` or
``"package.module:ClassName"`` (a ``DataFrameModel`` subclass or a ``DataFrameSchema``) of
either pandera API: ``pandera.pandas`` schemas validate a pandas frame, ``pandera.polars``
schemas validate a polars frame (Parquet scanned lazily, CSV parsed once; see
:mod:`secmlops.controls.validation_polars`). CSV and Parquet work with both.
Validation is lazy (schema-level problems and every failing check are collected in one
pass), and a failure *raises* ``ControlRefused`` with a summary per column and check.
A schema may opt in to a quarantine policy (:mod:`secmlops.controls.quarantine`): up to N%
of rows failing row-level checks are set aside, recorded and digested, never dropped
silently. pandera's global kill switch (``PANDERA_VALIDATION_ENABLED=False``,
``pandera.config``) makes ``validate`` silently return the data unchecked; this gate notices
that, and a canary schema that must fail, and refuses rather than pass.

A pipeline run takes its schema from the *site* (the policy file's ``sources:``), never from
a run parameter, and loads it with :func:`load_site_schema`: the spec must be
``module:Class``, the module a regular file inside the project's user-code folder (or an
allow-listed installed module), and its sha256, when pinned, is checked **before** the file
is executed. :func:`load_schema` (any file or module) is for an operator's own shell
(``secmlops validate``). Both rules are the same for pandas and polars schemas.

Example::

    schema = load_site_schema("ml.schema:ChurnDataset", project_dir=Path("."),
                              user_code_dir="ml", sha256=None)
    result = validate_dataset(Path("data/churn.parquet"), schema,
                              quarantine_dir=Path("validated"))
    statement = validation_statement(result)  # the flow signs and stores it
"""

from __future__ import annotations

import codecs
import csv
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
import stat
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Literal

import pandas as pd
import pandera.pandas as pa
from pandera import config as pandera_config
from pandera.api.pandas.model import DataFrameModel
from pandera.errors import SchemaError, SchemaErrors
from pydantic import BaseModel, ConfigDict, Field

from secmlops._internal.digests import sha256_bytes, sha256_file
from secmlops.controls.quarantine import (
    QuarantinePolicy,
    QuarantineRecord,
    pandas_failure_cases,
    quarantine_policy_of,
    row_failures,
    write_pandas_split,
    write_polars_split,
)
from secmlops.errors import ControlRefused, InputError, RefusalReason, ToolError
from secmlops.evidence.predicates import (
    ResourceDescriptor,
    TestResultPredicate,
    ValidationSummary,
    dump_predicate,
)
from secmlops.evidence.statements import PREDICATE_TEST_RESULT, Subject, make_statement, utc_now

if TYPE_CHECKING:
    import pandera.polars as pap
    import polars as pl

    from secmlops.controls.validation_polars import PolarsTable

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

    SCHEMA_NOT_ALLOWED = "schema_not_allowed"
    """The schema is not a module of the user-code folder nor an allow-listed module (or a
    symlink leads out of the folder): it was not imported."""
    SCHEMA_DIGEST_MISMATCH = "schema_digest_mismatch"
    """The schema file's sha256 differs from the one the site pinned: it was not imported."""
    VALIDATION_DISABLED = "validation_disabled"
    """pandera's checks are switched off or cut short (env var or ``pandera.config``)."""
    VALIDATION_NOT_ENFORCING = "validation_not_enforcing"
    """pandera accepted a canary frame that violates its schema."""
    TOO_FEW_ROWS = "too_few_rows"
    """The dataset has fewer rows than ``ValidationPolicy.min_rows``."""
    DATASET_CHANGED = "dataset_changed"
    """The dataset's bytes are not the ones expected (the pulled digest), or the file changed
    while it was validated."""
    SCHEMA_CHECK_FAILED = "schema_check_failed"
    """At least one check of the schema failed (beyond what a quarantine policy tolerates)."""


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


Backend = Literal["pandas", "polars"]


@dataclass(frozen=True)
class SchemaRef:
    """A loaded schema: the pandera object, its name, where it came from, and its digest.

    ``digest`` is the sha256 over the schema's source file and its declared structure
    (including its quarantine policy), so the evidence changes when the schema's code or
    any constant it imports changes. ``schema`` is a ``pandera.pandas`` or a
    ``pandera.polars`` ``DataFrameSchema``; ``backend`` says which.
    """

    spec: str
    name: str
    schema: pa.DataFrameSchema | pap.DataFrameSchema
    digest: str
    source: str | None
    #: sha256 of the source file's bytes (what a site pins as ``schema_sha256``).
    source_sha256: str | None = None
    #: The quarantine policy the schema declares in its metadata (``None``: none).
    quarantine: QuarantinePolicy | None = None

    @property
    def backend(self) -> Backend:
        """``"polars"`` for a ``pandera.polars`` schema, else ``"pandas"``."""
        return "pandas" if isinstance(self.schema, pa.DataFrameSchema) else "polars"

    def to_json(self) -> dict[str, Any]:
        return {
            "spec": self.spec,
            "name": self.name,
            "digest": self.digest,
            "source": self.source,
            "source_sha256": self.source_sha256,
            "backend": self.backend,
            "quarantine": self.quarantine.model_dump() if self.quarantine else None,
        }


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
    #: sha256 of the schema module's file (what a site pins as ``schema_sha256``), if any.
    schema_source_sha256: str | None = None
    #: Which pandera API ran: ``pandas`` or ``polars``.
    backend: Backend = "pandas"
    #: Checks that failed only for rows the schema's quarantine policy set aside.
    warned_tests: tuple[str, ...] = ()
    #: The rows set aside and the clean file to train on (``None``: nothing quarantined).
    quarantine: QuarantineRecord | None = None
    #: The flow run that ran this validation (``None`` outside a flow run).
    run_id: str | None = None
    #: True when a later run reused this result from the cache (see :meth:`reused`).
    cached: bool = False

    @property
    def training_data(self) -> tuple[Path, str]:
        """The file to train on and its sha256: the clean file under quarantine, else the
        dataset itself."""
        if self.quarantine is not None:
            return self.quarantine.clean_path, self.quarantine.clean_sha256
        return self.data_path, self.data_sha256

    def reused(self, data_path: Path) -> ValidationResult:
        """This result as reused by a later run on the same bytes at ``data_path``."""
        return replace(self, data_path=data_path, cached=True)

    def summary(self) -> str:
        """One line per failed check, or a one-line pass."""
        head = f"{self.data_path.name} ({self.rows} rows) against {self.schema_name}"
        if self.passed:
            line = f"{head}: passed {self.checks_run} checks"
            if self.quarantine is not None:
                line += f"; {self.quarantine.describe()}"
            return line
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
            "backend": self.backend,
            "warned_tests": list(self.warned_tests),
            "quarantine": self.quarantine.to_json() if self.quarantine else None,
            "run_id": self.run_id,
            "cached": self.cached,
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
    if not _MODULE_RE.fullmatch(module_part):
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


def _polars_api() -> Any:
    """``pandera.polars`` if something imported it (a polars schema did), else ``None``:
    a pandas-only run never pays for importing polars."""
    return sys.modules.get("pandera.polars")


def _is_model(value: Any) -> bool:
    polars_api = _polars_api()
    bases: tuple[type, ...] = (DataFrameModel,)
    if polars_api is not None:
        bases += (polars_api.DataFrameModel,)
    return isinstance(value, type) and issubclass(value, bases) and value not in bases


def _is_schema(value: Any) -> bool:
    polars_api = _polars_api()
    return isinstance(value, pa.DataFrameSchema) or (
        polars_api is not None and isinstance(value, polars_api.DataFrameSchema)
    )


def _schema_candidates(module: ModuleType) -> list[str]:
    return sorted(
        attr for attr, value in vars(module).items() if _is_schema(value) or _is_model(value)
    )


def schema_tests(schema: pa.DataFrameSchema | pap.DataFrameSchema) -> list[str]:
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


def _structure(
    schema: pa.DataFrameSchema | pap.DataFrameSchema, quarantine: QuarantinePolicy | None
) -> dict[str, Any]:
    """A canonical description of what a schema declares (for its digest).

    The backend and the quarantine policy are added only when they differ from the
    defaults (pandas, none), so the digests of existing pandas schemas stay as they were.
    """

    def checks(items: list[Any]) -> list[dict[str, Any]]:
        return [{"name": c.name, "error": c.error, "stats": repr(c.statistics)} for c in items]

    extra: dict[str, Any] = {}
    if not isinstance(schema, pa.DataFrameSchema):
        extra["backend"] = "polars"
    if quarantine is not None:
        extra["quarantine"] = quarantine.model_dump()
    return {
        **extra,
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
    error, a missing attribute, or an object that is not a pandera (pandas or polars)
    ``DataFrameModel`` subclass or ``DataFrameSchema``.
    """
    target, sep, attr = spec.strip().rpartition(":")
    if not sep or not target or not attr:
        raise InputError(
            f"schema spec {spec!r} has no ':ClassName' part", where=spec, fix=_SPEC_HELP
        )
    is_file = target.endswith(".py") or "/" in target or os.sep in target
    module = _import_schema_file(spec, target) if is_file else _import_schema_module(spec, target)
    source_file = inspect.getsourcefile(module) if hasattr(module, "__file__") else None
    source = Path(source_file).read_bytes() if source_file else None
    return _schema_ref(spec, module, target, attr, source_file, source)


def _schema_ref(
    spec: str,
    module: ModuleType,
    target: str,
    attr: str,
    source_file: str | None,
    source: bytes | None,
) -> SchemaRef:
    """The :class:`SchemaRef` for ``attr`` of an imported ``module`` whose file held ``source``."""
    if not hasattr(module, attr):
        candidates = _schema_candidates(module)
        hint = f"schemas in it: {', '.join(candidates)}" if candidates else "it defines no schema"
        raise InputError(f"{target} has no attribute {attr!r} ({hint})", where=spec, fix=_SPEC_HELP)
    obj = getattr(module, attr)
    schema: pa.DataFrameSchema | pap.DataFrameSchema
    if _is_model(obj):
        try:
            schema = obj.to_schema()
        except Exception as exc:
            raise InputError(
                f"{attr} in {target} is not a valid DataFrameModel: {exc}", where=spec
            ) from exc
    elif _is_schema(obj):
        schema = obj
    else:
        raise InputError(
            f"{attr} in {target} is a {type(obj).__name__}, not a pandera (pandas or polars) "
            "DataFrameModel subclass or DataFrameSchema",
            where=spec,
            fix="name a class deriving from pandera.pandas.DataFrameModel or "
            "pandera.polars.DataFrameModel, or a DataFrameSchema of either",
        )
    quarantine = quarantine_policy_of(obj, spec)
    source_sha = hashlib.sha256(source).hexdigest() if source is not None else None
    canonical = json.dumps(
        {"source_sha256": source_sha, "structure": _structure(schema, quarantine)},
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
        source_sha256=source_sha,
        quarantine=quarantine,
    )


# --- a schema the site names --------------------------------------------------------------

_SITE_SPEC_RE = re.compile(
    r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*"
)
_SHA256_HEX_RE = re.compile(r"[0-9a-f]{64}")


def _not_allowed(spec: str, why: str, fix: str) -> ControlRefused:
    return ControlRefused(
        f"schema {spec!r} is not allowed: {why}; nothing was imported",
        where=spec,
        fix=fix,
        reason=ValidationRefusal.SCHEMA_NOT_ALLOWED,
    )


def _lstat(path: Path) -> os.stat_result | None:
    try:
        return path.lstat()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise InputError(f"cannot inspect {path}: {exc}", where=str(path)) from exc


def _user_code_file(
    spec: str, project_dir: Path, user_code_dir: str, parts: Sequence[str]
) -> tuple[Path, bool]:
    """The file that module ``parts`` (``parts[0] == user_code_dir``) is, and whether it is a
    package's ``__init__.py``. Every step below ``project_dir`` must be a real directory or a
    regular file: a symlink (which could lead anywhere) is refused."""
    fix = (
        f"keep the schema as a regular file inside {user_code_dir}/ (no symlinks), "
        "reviewed with the project's code"
    )
    current = project_dir / user_code_dir
    chain = [current]
    for part in parts[1:]:
        current = current / part
        chain.append(current)
    # Every directory up to the module's parent must be real (not a link).
    for directory in chain[:-1]:
        st = _lstat(directory)
        if st is None or not stat.S_ISDIR(st.st_mode):
            if st is not None and stat.S_ISLNK(st.st_mode):
                raise _not_allowed(spec, f"{directory} is a symlink", fix)
            raise InputError(
                f"schema module {'.'.join(parts)} cannot be found: {directory} is not a directory",
                where=spec,
                fix=f"check the module name; schemas live in {project_dir / user_code_dir}",
            )
    last = chain[-1]
    candidates = [(last / "__init__.py", True), (last.with_name(f"{last.name}.py"), False)]
    st_last = _lstat(last)
    if st_last is not None and stat.S_ISLNK(st_last.st_mode):
        raise _not_allowed(spec, f"{last} is a symlink", fix)
    if st_last is None or not stat.S_ISDIR(st_last.st_mode):
        candidates = candidates[1:]  # not a package: only <name>.py can be the module
    for path, is_package in candidates:
        st = _lstat(path)
        if st is None:
            continue
        if stat.S_ISLNK(st.st_mode):
            raise _not_allowed(spec, f"{path} is a symlink", fix)
        if not stat.S_ISREG(st.st_mode):
            raise _not_allowed(spec, f"{path} is not a regular file", fix)
        root = os.path.realpath(project_dir / user_code_dir)
        if os.path.commonpath([root, os.path.realpath(path)]) != root:
            raise _not_allowed(spec, f"{path} lies outside {root}", fix)
        return path, is_package
    raise InputError(
        f"schema module {'.'.join(parts)} cannot be found: no {candidates[-1][0]}",
        where=spec,
        fix=f"check the module name; schemas live in {project_dir / user_code_dir}",
    )


def _allowed_module_file(spec: str, module_name: str) -> tuple[Path, bool]:
    """The source file of an allow-listed installed module, found without importing it."""
    try:
        found = importlib.util.find_spec(module_name)
    except (ImportError, ValueError) as exc:
        raise InputError(
            f"allow-listed schema module {module_name} cannot be found: {exc}",
            where=spec,
            fix="install the package that provides it, or fix sources.allowed_schema_modules",
        ) from exc
    if found is None or not found.has_location or not found.origin:
        raise InputError(
            f"allow-listed schema module {module_name} is not installed as a Python file",
            where=spec,
            fix="install the package that provides it, or fix sources.allowed_schema_modules",
        )
    origin = Path(os.path.realpath(found.origin))  # the site named it: its links are its own
    if origin.suffix != ".py" or not origin.is_file():
        raise _not_allowed(
            spec,
            f"{module_name} is {origin}, not a Python source file whose digest can be checked",
            "allow-list a module installed as .py source",
        )
    return origin, found.submodule_search_locations is not None


def _read_source(spec: str, path: Path) -> bytes:
    """The file's bytes, read without following a symlink swapped in since it was checked."""
    fix = "keep the schema a regular file (no symlink) and do not change it during a run"
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as exc:
        raise _not_allowed(spec, f"{path} cannot be opened as a regular file ({exc})", fix) from exc
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise _not_allowed(spec, f"{path} is not a regular file", fix)
        return handle.read()


def _exec_source(spec: str, path: Path, source: bytes, *, is_package: bool) -> ModuleType:
    """Run exactly the checked bytes as a module (no ``sys.path`` lookup, no ``.pyc``)."""
    module_name = f"_secmlops_schema_{sha256_bytes(str(path).encode() + source)[:16]}"
    locations = [str(path.parent)] if is_package else None
    module_spec = importlib.util.spec_from_file_location(
        module_name, path, submodule_search_locations=locations
    )
    if module_spec is None:
        raise InputError(f"{path} cannot be imported as Python", where=spec, fix=_SPEC_HELP)
    module = importlib.util.module_from_spec(module_spec)
    # pandera resolves annotations through sys.modules, so the module must be registered.
    sys.modules[module_name] = module
    try:
        code = compile(source, str(path), "exec", dont_inherit=True)
        exec(code, module.__dict__)  # noqa: S102 - the site's reviewed, digest-checked schema
    except Exception as exc:
        sys.modules.pop(module_name, None)
        raise InputError(
            f"importing schema module {path} failed: {type(exc).__name__}: {exc}",
            where=spec,
            fix="fix the error in the schema module (run it with python to see the traceback)",
        ) from exc
    return module


def load_site_schema(
    spec: str,
    *,
    project_dir: Path,
    user_code_dir: str = "ml",
    allowed_modules: Sequence[str] = (),
    sha256: str | None = None,
) -> SchemaRef:
    """Load the schema the site names, checking where it comes from **before** importing it.

    ``spec`` is ``module:Class``, never a file path. The module must be a regular file inside
    ``project_dir/user_code_dir`` (``ml.schema`` -> ``ml/schema.py`` or ``ml/schema/__init__.py``;
    no symlinks on the way) or an exact name in ``allowed_modules`` (an installed module). When
    ``sha256`` is given, the file's sha256 must equal it. Only then are exactly the checked bytes
    executed, by file location (no ``sys.path`` lookup an attacker could shadow, no ``.pyc``).

    Raises ``ControlRefused`` (:class:`ValidationRefusal` ``SCHEMA_NOT_ALLOWED`` or
    ``SCHEMA_DIGEST_MISMATCH``) without importing anything, and ``InputError`` for a module
    that does not exist or a schema object that is not one.
    """
    allowed_fix = (
        f"name a module of the project's {user_code_dir}/ folder (e.g. {user_code_dir}.schema:"
        "MySchema) in the policy's sources.datasets entry, or list an installed module under "
        "sources.allowed_schema_modules"
    )
    if not isinstance(spec, str) or not _SITE_SPEC_RE.fullmatch(spec):
        raise _not_allowed(
            spec, "it must be 'module:Class' (a file path is never imported)", allowed_fix
        )
    if sha256 is not None and not _SHA256_HEX_RE.fullmatch(sha256):
        raise InputError(
            f"schema_sha256 {sha256!r} is not 64 lower-case hex digits",
            where="sources.datasets.*.schema_sha256",
            fix="give the sha256 of the schema file (`sha256sum ml/schema.py`)",
        )
    module_name, attr = spec.split(":")
    parts = module_name.split(".")
    if parts[0] == user_code_dir:
        path, is_package = _user_code_file(spec, Path(project_dir).absolute(), user_code_dir, parts)
    elif module_name in set(allowed_modules):
        path, is_package = _allowed_module_file(spec, module_name)
    else:
        raise _not_allowed(
            spec,
            f"{module_name} is neither in the user-code folder {user_code_dir}/ nor an "
            "allow-listed module",
            allowed_fix,
        )
    source = _read_source(spec, path)
    actual = hashlib.sha256(source).hexdigest()
    if sha256 is not None and actual != sha256:
        found = {"expected_sha256": sha256, "actual_sha256": actual, "file": str(path)}
        raise ControlRefused(
            f"schema file {path} has sha256 {actual}, but the site pinned {sha256}; "
            "nothing was imported",
            where=spec,
            fix="review the change to the schema file; if it is intended, pin its new digest "
            "in the policy's schema_sha256",
            details=dict(found),
            reason=ValidationRefusal.SCHEMA_DIGEST_MISMATCH,
            result=found,
        )
    module = _exec_source(spec, path, source, is_package=is_package)
    return _schema_ref(spec, module, module_name, attr, str(path), source)


# --- the kill switch ----------------------------------------------------------------------


def require_validation_enabled(backend: Backend = "pandas") -> None:
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
        enforcing = True
    else:
        enforcing = False
    if enforcing and backend == "polars":
        from secmlops.controls.validation_polars import require_polars_enforcing

        enforcing = require_polars_enforcing()
    if enforcing:
        return
    raise ControlRefused(
        f"pandera ({backend}) accepted a canary frame that violates its schema: validation is "
        "not enforcing",
        where="pandera",
        fix=fix,
        reason=ValidationRefusal.VALIDATION_NOT_ENFORCING,
    )


# --- reading ------------------------------------------------------------------------------

_FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
_UNREADABLE_FIX = "check the file is the dataset you meant and is not truncated"
_CHUNK = 16 << 20


@dataclass(frozen=True)
class _Opened:
    """A dataset file as hashed: its format, digest and stat, and for the pandas engine its
    bytes (parsed from memory). The polars engine reads the file itself, and the gate checks
    afterwards that it is the file that was hashed (same identity)."""

    path: Path
    kind: str
    sha256: str
    stat: os.stat_result
    raw: bytes | None


class _CsvText:
    """What :func:`_check_csv_text` needs of a CSV file, gathered chunk by chunk while it is
    hashed: NUL bytes, UTF-8 validity, the header line and the text after the last line
    break."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")()
        self.has_nul = False
        self.not_utf8: str | None = None
        self.header = b""
        self._header_done = False
        self.tail = b""  # after the last b"\n" seen so far
        self.has_newline = False

    def feed(self, chunk: bytes, *, final: bool = False) -> None:
        self.has_nul = self.has_nul or b"\x00" in chunk
        if self.not_utf8 is None:
            try:
                self._decoder.decode(chunk, final=final)
            except UnicodeDecodeError as exc:
                self.not_utf8 = exc.reason
        if not self._header_done:
            end = chunk.find(b"\n")
            self.header += chunk if end < 0 else chunk[:end]
            self._header_done = end >= 0
        last = chunk.rfind(b"\n")
        if last >= 0:
            self.has_newline, self.tail = True, chunk[last + 1 :]
        else:
            self.tail += chunk


def _open_dataset(path: Path, *, keep_bytes: bool) -> _Opened:
    kind = _FORMATS.get(path.suffix.lower())
    if kind is None:
        raise InputError(
            f"{path} has an unsupported format {path.suffix or '(no suffix)'!r}",
            where=str(path),
            fix="give a .csv or .parquet file",
        )
    text = _CsvText() if kind == "csv" else None
    try:
        with path.open("rb") as handle:
            st = os.fstat(handle.fileno())
            raw: bytes | None = None
            if keep_bytes:
                raw = handle.read()
                digest = sha256_bytes(raw)
                chunks: Sequence[bytes] = [raw]
            else:
                hasher = hashlib.sha256()
                chunks = iter(lambda: handle.read(_CHUNK), b"")  # type: ignore[assignment]
            for chunk in chunks:
                if not keep_bytes:
                    hasher.update(chunk)
                if text is not None:
                    text.feed(chunk)
            if not keep_bytes:
                digest = hasher.hexdigest()
    except FileNotFoundError as exc:
        raise InputError(f"dataset {path} does not exist", where=str(path)) from exc
    except OSError as exc:
        raise InputError(f"dataset {path} cannot be read: {exc}", where=str(path)) from exc
    if st.st_size == 0:
        raise InputError(
            f"dataset {path} is empty (no header, no rows)",
            where=str(path),
            fix="check the data pull; an empty file is never a valid dataset",
        )
    if text is not None:
        text.feed(b"", final=True)
        _check_csv_text(path, text)
    return _Opened(path, kind, digest, st, raw)


def _check_csv_text(path: Path, text: _CsvText) -> None:
    """Refuse what no CSV parser should be trusted to guess at: binary bytes, text that is
    not UTF-8, and a file that ends inside a line with fewer fields than the header (a
    truncated file: parsers fill the missing fields with nulls)."""
    if text.has_nul:
        raise InputError(
            f"dataset {path} cannot be parsed as csv: it holds NUL bytes (binary, not text)",
            where=str(path),
            fix=_UNREADABLE_FIX,
        )
    if text.not_utf8 is not None:
        raise InputError(
            f"dataset {path} cannot be parsed as csv: it is not UTF-8 text ({text.not_utf8})",
            where=str(path),
            fix="export the dataset as UTF-8 CSV",
        )
    if not text.tail or not text.has_newline:
        return  # ends at a line break (a cut there is not visible here: the pull's digest
        # is what catches it), or a header alone
    header, final = (
        next(csv.reader([line.decode()])) for line in (text.header.rstrip(b"\r"), text.tail)
    )
    if len(final) < len(header):
        raise InputError(
            f"dataset {path} is truncated: its last line has {len(final)} of the header's "
            f"{len(header)} fields",
            where=str(path),
            fix=_UNREADABLE_FIX,
        )


def _read_pandas(opened: _Opened) -> pd.DataFrame:
    """The pandas frame parsed from exactly the hashed bytes."""
    path, raw = opened.path, opened.raw or b""  # kept for pandas (keep_bytes=True)
    try:
        if opened.kind == "csv":
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
            f"dataset {path} cannot be parsed as {opened.kind}: {exc}",
            where=str(path),
            fix=_UNREADABLE_FIX,
        ) from exc
    if opened.kind == "csv" and not frame.index.equals(pd.RangeIndex(len(frame))):
        # pandas turns the extra leading fields of over-long lines into an index.
        raise InputError(
            f"dataset {path} cannot be parsed as csv: some lines have more fields than the header",
            where=str(path),
            fix=_UNREADABLE_FIX,
        )
    return frame.reset_index(drop=True) if opened.kind == "parquet" else frame


# --- validating ---------------------------------------------------------------------------


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


@dataclass(frozen=True)
class _SchemaRun:
    """What one pass of a schema over a dataset found, for either backend."""

    failures: tuple[CheckFailure, ...] = ()
    cases: list[dict[str, Any]] = field(default_factory=list)
    pandera_reasons: tuple[str, ...] = ()
    #: Per failing row, the tests it failed (``row``, ``reason``); ``None`` unless the
    #: schema has a quarantine policy and every failure is row-level.
    failing_rows: pl.DataFrame | None = None


def _run_pandas(
    ref: SchemaRef, frame: pd.DataFrame, data: Path, policy: ValidationPolicy
) -> _SchemaRun:
    """Validate lazily: the failures grouped per check, the capped raw failure cases,
    pandera's ``SchemaErrorReason`` values behind them, and (under a quarantine policy) the
    failing rows."""
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
        rows = (
            row_failures(pandas_failure_cases(fc), schema_name=ref.name)
            if ref.quarantine is not None
            else None
        )
        return _SchemaRun(
            _summarise(fc, ref.name, policy.max_examples_per_check), cases, codes, rows
        )
    except SchemaError as exc:
        failure = CheckFailure(
            column=str(getattr(exc.schema, "name", ref.name)),
            check=str(exc.check or exc.reason_code),
            count=1,
            examples=(str(exc)[:200],),
        )
        return _SchemaRun((failure,), [], (_reason_code(exc),))
    except Exception as exc:
        raise ToolError(
            f"validating {data} with schema {ref.name} crashed: {type(exc).__name__}: {exc}",
            where=ref.spec,
            fix="a custom check in the schema raised; fix the check (it did not pass)",
        ) from exc
    return _SchemaRun()


def _run_polars(ref: SchemaRef, table: PolarsTable, policy: ValidationPolicy) -> _SchemaRun:
    from secmlops.controls.validation_polars import run_polars_schema

    found = run_polars_schema(
        ref.schema,  # type: ignore[arg-type]
        ref.name,
        ref.spec,
        table,
        max_cases=policy.max_failure_cases_reported,
        per_check=policy.max_examples_per_check,
        want_rows=ref.quarantine is not None,
    )
    failures = tuple(
        CheckFailure(column=col, check=chk, count=n, examples=ex)
        for col, chk, n, ex in found.failures
    )
    return _SchemaRun(failures, found.cases, found.pandera_reasons, found.failing_rows)


def _run_polars_unchanged(
    ref: SchemaRef, table: PolarsTable, policy: ValidationPolicy
) -> _SchemaRun:
    """:func:`_run_polars`; a read error on a file that changed since it was hashed is the
    change (``DATASET_CHANGED``), not bad input."""
    try:
        return _run_polars(ref, table, policy)
    except (InputError, ToolError):
        _require_unchanged(table)
        raise


def _require_unchanged(table: PolarsTable) -> None:
    """The polars engine reads the file itself (a scan once per query, the quarantine split
    once more): it must still be the file that was hashed (``DATASET_CHANGED`` if not)."""
    from secmlops.controls.validation_polars import file_identity

    if file_identity(table.path) != table.identity:
        raise _changed(
            table.path, table.sha256, "(changed)", "changed while it was validated"
        ) from None


def _reason_code(error: SchemaError) -> str:
    code = error.reason_code
    return str(code.value) if code is not None else "unknown"


def _changed(path: Path, expected: str, actual: str, why: str) -> ControlRefused:
    found = {"file": str(path), "expected_sha256": expected, "actual_sha256": actual}
    return ControlRefused(
        f"dataset {path} {why}; it was not validated",
        where=str(path),
        fix="pull the dataset again; nothing may change it between the pull and the gate",
        details=dict(found),
        reason=ValidationRefusal.DATASET_CHANGED,
        result=found,
    )


def _require_strict(ref: SchemaRef, policy: ValidationPolicy) -> None:
    if not ref.schema.strict and not policy.allow_non_strict_schema_unsafe:
        raise InputError(
            f"schema {ref.name} is not strict, so it would pass columns it does not declare",
            where=ref.spec,
            fix="set strict = True in the schema's Config (or the DataFrameSchema)",
        )


def check_dataset(
    data: Path,
    schema: SchemaRef | str,
    *,
    policy: ValidationPolicy | None = None,
    quarantine_dir: Path | None = None,
    expected_sha256: str | None = None,
) -> tuple[ValidationResult, list[dict[str, Any]]]:
    """Run the schema on ``data`` and report; does not raise for a failing dataset.

    Returns the result and the (capped) raw failure cases. Use :func:`validate_dataset`
    as the gate; this is for callers that want a FAILED result as evidence.

    ``expected_sha256``: the digest the bytes must have (the data pull's); another digest is
    refused (``DATASET_CHANGED``) before any check runs. ``quarantine_dir``: where the clean
    and quarantined rows go when the schema's quarantine policy applies (default: beside
    ``data``).
    """
    policy = policy or ValidationPolicy()
    ref = load_schema(schema) if isinstance(schema, str) else schema
    _require_strict(ref, policy)
    require_validation_enabled(ref.backend)
    opened = _open_dataset(data, keep_bytes=ref.backend == "pandas")
    if expected_sha256 is not None and opened.sha256 != expected_sha256:
        raise _changed(data, expected_sha256, opened.sha256, "is not the pulled file")
    frame: pd.DataFrame | None = None
    table: PolarsTable | None = None
    if ref.backend == "pandas":
        frame = _read_pandas(opened)
        rows, columns = len(frame), tuple(str(c) for c in frame.columns)
    else:
        from secmlops.controls.validation_polars import read_polars_table

        table = read_polars_table(data, opened.kind, opened.sha256, opened.stat)
        rows, columns = table.rows, table.columns
    digest = opened.sha256
    del opened  # the bytes (CSV, pandas parquet) live on in the parsed frame only
    tests = schema_tests(ref.schema)
    min_rows_test = f"{ref.name}:min_rows({policy.min_rows})"
    if rows < policy.min_rows:
        # Too few rows: nothing else is worth checking, and no other check ran.
        run = _SchemaRun(
            failures=(
                CheckFailure(
                    column=ref.name,
                    check=f"min_rows({policy.min_rows})",
                    count=1,
                    examples=(f"{rows} rows",),
                ),
            )
        )
        tests = [min_rows_test]
    else:
        tests.append(min_rows_test)
        if table is not None:
            run = _run_polars_unchanged(ref, table, policy)
        elif frame is not None:
            run = _run_pandas(ref, frame, data, policy)
    quarantine: QuarantineRecord | None = None
    warned: list[str] = []
    failures = run.failures
    if (
        failures
        and ref.quarantine is not None
        and run.failing_rows is not None
        and ref.quarantine.allows(run.failing_rows.height, rows)
    ):
        quarantine = _quarantine(
            ref,
            ref.quarantine,
            policy,
            data,
            table.frame if table is not None else frame,
            run.failing_rows,
            run.failures,
            rows,
            quarantine_dir or data.parent,
        )
        warned = sorted({f.test_name for f in failures})
        failures = ()
    if table is not None:
        _require_unchanged(table)
    failed = sorted({f.test_name for f in failures})
    passed = [t for t in tests if t not in set(failed) | set(warned)]
    result = ValidationResult(
        data_path=data,
        data_sha256=digest,
        rows=rows,
        columns=columns,
        schema_name=ref.name,
        schema_spec=ref.spec,
        schema_digest=ref.digest,
        schema_source_sha256=ref.source_sha256,
        passed=not failures,
        checks_run=len(set(tests) | set(failed) | set(warned)),
        passed_tests=tuple(passed),
        failed_tests=tuple(failed),
        failures=failures,
        pandera_reasons=run.pandera_reasons if failures else (),
        backend=ref.backend,
        warned_tests=tuple(warned),
        quarantine=quarantine,
    )
    return result, run.cases


def _quarantine(
    ref: SchemaRef,
    declared: QuarantinePolicy,
    policy: ValidationPolicy,
    data: Path,
    source: pd.DataFrame | pl.LazyFrame | None,
    failing_rows: pl.DataFrame,
    failures: tuple[CheckFailure, ...],
    rows: int,
    out_dir: Path,
) -> QuarantineRecord:
    """Write the failing rows (with their reasons) and the clean rows, then validate the
    clean file again with no tolerance: it must pass, or the dataset is refused."""
    if isinstance(source, pd.DataFrame):
        clean, held = write_pandas_split(source, failing_rows, data, out_dir)
    elif source is not None:
        clean, held = write_polars_split(source, failing_rows, data, out_dir)
    else:
        raise ToolError(f"validating {data}: no frame to quarantine rows from", where=ref.spec)
    strict = replace(ref, quarantine=None)
    recheck, _ = check_dataset(clean, strict, policy=policy)
    if not recheck.passed:
        raise ControlRefused(
            f"the clean rows of {data.name} (failing rows quarantined) still fail "
            f"{ref.name}: {recheck.summary()}",
            where=f"{clean} vs {ref.spec}",
            fix="a check of the schema depends on the rows as a whole; fix the data at its source",
            details={"result": recheck.to_json()},
            reason=ValidationRefusal.SCHEMA_CHECK_FAILED,
            result=recheck,
        )
    return QuarantineRecord(
        max_failing_percent=declared.max_failing_percent,
        rows=rows,
        failing_rows=failing_rows.height,
        quarantine_path=held,
        quarantine_sha256=sha256_file(held),
        clean_path=clean,
        clean_sha256=recheck.data_sha256,
        clean_rows=recheck.rows,
        failures=failures,
    )


def validate_dataset(
    data: Path,
    schema: SchemaRef | str,
    *,
    policy: ValidationPolicy | None = None,
    quarantine_dir: Path | None = None,
    expected_sha256: str | None = None,
) -> ValidationResult:
    """The schema gate: return the result if ``data`` passes, else raise ``ControlRefused``.

    The error's message lists each failed (column, check) with a count and examples; its
    ``reason`` is a :class:`ValidationRefusal`, its ``result`` the :class:`ValidationResult`
    (also as ``details["result"]``, with the capped raw failure cases). Under the schema's
    quarantine policy a dataset with few enough failing rows passes, and
    ``result.quarantine`` names the clean file to train on (``result.training_data``).
    """
    result, cases = check_dataset(
        data, schema, policy=policy, quarantine_dir=quarantine_dir, expected_sha256=expected_sha256
    )
    if not result.passed:
        min_rows = f"min_rows({(policy or ValidationPolicy()).min_rows})"
        too_few = any(f.check == min_rows for f in result.failures)
        ref = schema if isinstance(schema, SchemaRef) else None
        note = ""
        if ref is not None and ref.quarantine is not None and not too_few:
            note = (
                f" (the schema quarantines at most {ref.quarantine.max_failing_percent:g}% "
                "of rows, and only for row-level checks)"
            )
        raise ControlRefused(
            f"dataset failed schema validation: {result.summary()}{note}",
            where=f"{data} vs {result.schema_spec}",
            fix="fix the data at its source (or the schema, through review) and pull again",
            details={"result": result.to_json(), "failure_cases": cases},
            reason=(
                ValidationRefusal.TOO_FEW_ROWS if too_few else ValidationRefusal.SCHEMA_CHECK_FAILED
            ),
            result=result,
        )
    return result


def validation_cache_key(
    data_sha256: str, schema: SchemaRef, policy: ValidationPolicy | None = None
) -> str:
    """The key a validation result may be reused under: the dataset's bytes, the schema (its
    file, declared structure and quarantine policy: ``schema.digest``), the gate's policy,
    and the versions of everything that judges (secmlops, pandera, and pandas or polars).

    A change to any of them is a different key, so a reused result is never one about
    other data, another schema or a looser policy.
    """
    engine = schema.backend
    material = {
        "data_sha256": data_sha256,
        "schema_digest": schema.digest,
        "policy": (policy or ValidationPolicy()).model_dump(mode="json"),
        "versions": {
            name: importlib.metadata.version(name) for name in ("secmlops", "pandera", engine)
        },
    }
    return sha256_bytes(json.dumps(material, sort_keys=True, separators=(",", ":")).encode())


def validation_statement(result: ValidationResult) -> dict[str, Any]:
    """The in-toto test-result v0.1 statement for a validation; subject = the dataset.

    Under quarantine the clean file and the quarantine file are subjects too
    (``clean/<name>``, ``quarantine/<name>``), the checks that failed only for quarantined
    rows are ``warnedTests``, and the summary records the counts. A result reused from the
    cache says so (``cached``, and the run that validated it).
    """
    subjects = [Subject(result.data_path.name, result.data_sha256)]
    extension: dict[str, Any] = {}
    q = result.quarantine
    if q is not None:
        subjects += [
            Subject(f"clean/{q.clean_path.name}", q.clean_sha256),
            Subject(f"quarantine/{q.quarantine_path.name}", q.quarantine_sha256),
        ]
        extension["quarantine"] = {
            "maxFailingPercent": q.max_failing_percent,
            "rows": q.rows,
            "failingRows": q.failing_rows,
            "cleanRows": q.clean_rows,
            "clean": {"name": q.clean_path.name, "digest": {"sha256": q.clean_sha256}},
            "quarantine": {
                "name": q.quarantine_path.name,
                "digest": {"sha256": q.quarantine_sha256},
            },
            "failures": [f.to_json() for f in q.failures],
        }
    extension["backend"] = result.backend
    extension["cached"] = result.cached
    if result.run_id is not None:
        extension["validatedInRun"] = result.run_id
    return make_statement(
        subjects,
        PREDICATE_TEST_RESULT,
        dump_predicate(
            TestResultPredicate(
                result="PASSED" if result.passed else "FAILED",
                configuration=[
                    ResourceDescriptor(
                        name=result.schema_name,
                        uri=result.schema_spec,
                        digest={"sha256": result.schema_digest},
                        # The schema file's own sha256: what a site pins (schema_sha256).
                        annotations={"sourceSha256": result.schema_source_sha256}
                        if result.schema_source_sha256
                        else None,
                    )
                ],
                passed_tests=list(result.passed_tests),
                failed_tests=list(result.failed_tests),
                warned_tests=list(result.warned_tests),
                summary=ValidationSummary.model_validate(
                    {
                        "rows": result.rows,
                        "columns": list(result.columns),
                        "checksRun": result.checks_run,
                        "failures": [f.to_json() for f in result.failures],
                        "validatedAt": result.validated_at,
                        "tool": {"name": "pandera", "version": result.pandera_version},
                        **extension,
                    }
                ),
            ),
            exclude_none=True,
        ),
    )
