"""Schema validation: a dataset must pass a pandera schema before anything trains on it.

The schema is user code named by a spec, ``"path/to/file.py:ClassName"`` or
``"package.module:ClassName"`` (a ``DataFrameModel`` subclass or a ``DataFrameSchema``).
Validation is lazy (every failure is collected), and a failure *raises*
``ControlRefused`` with a summary per column and check. pandera's global kill switch
(``PANDERA_VALIDATION_ENABLED=False``, ``pandera.config``) makes ``validate`` silently
return the data unchecked; this gate notices that, and a canary schema that must fail, and
refuses rather than pass.

A pipeline run takes its schema from the *site* (the policy file's ``sources:``), never from
a run parameter, and loads it with :func:`load_site_schema`: the spec must be
``module:Class``, the module a regular file inside the project's user-code folder (or an
allow-listed installed module), and its sha256, when pinned, is checked **before** the file
is executed. :func:`load_schema` (any file or module) is for an operator's own shell
(``secmlops validate``).

Example::

    schema = load_site_schema("ml.schema:ChurnDataset", project_dir=Path("."),
                              user_code_dir="ml", sha256=None)
    result = validate_dataset(Path("data/churn.csv"), schema)
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
import stat
import sys
from collections.abc import Sequence
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
    #: sha256 of the source file's bytes (what a site pins as ``schema_sha256``).
    source_sha256: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "spec": self.spec,
            "name": self.name,
            "digest": self.digest,
            "source": self.source,
            "source_sha256": self.source_sha256,
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
    source_sha = hashlib.sha256(source).hexdigest() if source is not None else None
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
        source_sha256=source_sha,
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
        schema_source_sha256=ref.source_sha256,
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
                        # The schema file's own sha256: what a site pins (schema_sha256).
                        annotations={"sourceSha256": result.schema_source_sha256}
                        if result.schema_source_sha256
                        else None,
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
