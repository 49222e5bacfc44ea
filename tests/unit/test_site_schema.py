"""The schema a run validates against comes from the site, and is checked before import.

Issue 12 finding 1 (critical): a run parameter named the schema, and the worker imported it
before anything checked it, so a ``.py`` file pulled with a dataset, or any installed
module, ran as code in the flow process. Each test below that names an attacker's module
proves with a marker file that nothing was imported.
"""

from __future__ import annotations

import hashlib
import shutil
import sys
from pathlib import Path

import pytest

from secmlops.controls.validation import (
    SchemaRef,
    ValidationRefusal,
    load_schema,
    load_site_schema,
    validate_dataset,
)
from secmlops.demo.data_registry import generate_churn_dataset, write_dataset_csv
from secmlops.errors import ControlRefused, InputError

REPO_ROOT = Path(__file__).resolve().parents[2]
SCHEMA_FILE = REPO_ROOT / "ml" / "schema.py"
SPEC = "ml.schema:ChurnDataset"


def payload(marker: Path, name: str = "Evil") -> str:
    """A module that proves it ran (writes ``marker``) and defines a permissive schema."""
    return (
        "from pathlib import Path\n"
        "import pandera.pandas as pa\n"
        f"Path({str(marker)!r}).write_text('imported')\n"
        f"{name} = pa.DataFrameSchema({{}}, strict=False, name='evil')\n"
    )


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "marker"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project whose user-code folder ``ml/`` holds the demo schema."""
    root = tmp_path / "project"
    (root / "ml").mkdir(parents=True)
    (root / "ml" / "__init__.py").write_text("")
    shutil.copy(SCHEMA_FILE, root / "ml" / "schema.py")
    return root


def refused(reason: ValidationRefusal, spec: str, **kwargs: object) -> ControlRefused:
    with pytest.raises(ControlRefused) as info:
        load_site_schema(spec, **kwargs)  # type: ignore[arg-type]
    assert info.value.reason is reason
    assert "nothing was imported" in info.value.message
    return info.value


# --- the good path ------------------------------------------------------------------------


def test_project_schema_loads_with_and_without_its_digest(tmp_path: Path) -> None:
    digest = hashlib.sha256(SCHEMA_FILE.read_bytes()).hexdigest()
    plain = load_site_schema(SPEC, project_dir=REPO_ROOT, user_code_dir="ml")
    pinned = load_site_schema(SPEC, project_dir=REPO_ROOT, user_code_dir="ml", sha256=digest)
    for ref in (plain, pinned):
        assert isinstance(ref, SchemaRef)
        assert ref.spec == SPEC and ref.name == "ChurnDataset"
        assert ref.source == str(SCHEMA_FILE)
        assert ref.source_sha256 == digest
    # The evidence digest is the one `secmlops validate` (load_schema) records for the same
    # file, so required_schema_digests pins it either way.
    assert plain.digest == pinned.digest == load_schema(SPEC).digest
    data = tmp_path / "churn.csv"
    write_dataset_csv(generate_churn_dataset("v1.0", rows=200), data)
    result = validate_dataset(data, pinned)
    assert result.passed and result.schema_spec == SPEC and result.schema_digest == plain.digest


def test_a_package_module_and_the_marker_really_mark(
    project: Path, marker: Path, tmp_path: Path
) -> None:
    """The marker works: a schema the site allows is imported (so its absence means a
    refused one was not)."""
    package = project / "ml" / "schemas"
    package.mkdir()
    (package / "__init__.py").write_text(payload(marker, "Churn"))
    digest = hashlib.sha256((package / "__init__.py").read_bytes()).hexdigest()
    ref = load_site_schema(
        "ml.schemas:Churn", project_dir=project, user_code_dir="ml", sha256=digest
    )
    assert marker.read_text() == "imported"
    assert ref.source == str(package / "__init__.py") and ref.name == "evil"


def test_allow_listed_installed_module(
    tmp_path: Path, marker: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = tmp_path / "site-packages"
    site.mkdir()
    (site / "corp_schemas.py").write_text(payload(marker, "Churn"))
    monkeypatch.syspath_prepend(str(site))
    ref = load_site_schema(
        "corp_schemas:Churn",
        project_dir=tmp_path,
        user_code_dir="ml",
        allowed_modules=("corp_schemas",),
    )
    assert marker.exists() and ref.source == str(site / "corp_schemas.py")
    # Imported by file location under a private name, not as sys.modules["corp_schemas"].
    assert "corp_schemas" not in sys.modules


# --- refused before import ----------------------------------------------------------------


def test_schema_file_in_pulled_data_is_refused(project: Path, marker: Path) -> None:
    """Issue 12 finding 1: a .py file pulled with the dataset, named as the schema."""
    pulled = project / ".secmlops" / "runs" / "run-1" / "data"
    pulled.mkdir(parents=True)
    evil = pulled / "churn.py"
    evil.write_text(payload(marker))
    for spec in (f"{evil}:Evil", ".secmlops/runs/run-1/data/churn.py:Evil", "churn.py:Evil"):
        refused(ValidationRefusal.SCHEMA_NOT_ALLOWED, spec, project_dir=project)
    assert not marker.exists()


def test_module_on_sys_path_outside_user_code_is_refused(
    project: Path, marker: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 12 finding 1: a module spec resolved through sys.path (a pulled directory on it)."""
    pulled = project / ".secmlops" / "runs" / "run-1" / "data"
    pulled.mkdir(parents=True)
    (pulled / "churn_schema.py").write_text(payload(marker))
    monkeypatch.syspath_prepend(str(pulled))
    error = refused(
        ValidationRefusal.SCHEMA_NOT_ALLOWED,
        "churn_schema:Evil",
        project_dir=project,
        allowed_modules=("churn_schema_other", "churn"),  # exact names only
    )
    assert "allow-listed" in error.message
    assert not marker.exists() and "churn_schema" not in sys.modules


@pytest.mark.parametrize("module", ["this", "antigravity"])
def test_arbitrary_installed_module_is_refused(project: Path, module: str) -> None:
    """Issue 12 finding 1: a module spec imported any installed module (these two act when
    imported: print the Zen, open a web browser)."""
    before = module in sys.modules
    refused(ValidationRefusal.SCHEMA_NOT_ALLOWED, f"{module}:Schema", project_dir=project)
    assert (module in sys.modules) == before


def test_user_code_dir_is_a_top_level_name_only(project: Path, marker: Path) -> None:
    """A module named like the folder but elsewhere (``mlx``), or the library itself."""
    refused(ValidationRefusal.SCHEMA_NOT_ALLOWED, "mlx.schema:X", project_dir=project)
    refused(ValidationRefusal.SCHEMA_NOT_ALLOWED, "secmlops.site:Sources", project_dir=project)
    refused(
        ValidationRefusal.SCHEMA_NOT_ALLOWED, "ml.schema:ChurnDataset", project_dir=project,
        user_code_dir="user_code",
    )  # fmt: skip


def test_symlink_inside_user_code_pointing_outside_is_refused(
    project: Path, marker: Path, tmp_path: Path
) -> None:
    """A link in ml/ to a file outside it (a pulled dataset, say) is not user code."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "evil.py").write_text(payload(marker))
    (project / "ml" / "linked.py").symlink_to(outside / "evil.py")
    (project / "ml" / "linkdir").symlink_to(outside, target_is_directory=True)
    for spec in ("ml.linked:Evil", "ml.linkdir.evil:Evil", "ml.linkdir:Evil"):
        error = refused(ValidationRefusal.SCHEMA_NOT_ALLOWED, spec, project_dir=project)
        assert "symlink" in error.message
    # The user-code folder itself a link elsewhere.
    other = tmp_path / "other"
    other.mkdir()
    (other / "ml").symlink_to(outside, target_is_directory=True)
    refused(ValidationRefusal.SCHEMA_NOT_ALLOWED, "ml.evil:Evil", project_dir=other)
    assert not marker.exists()


def test_pinned_digest_mismatch_is_refused_before_import(project: Path, marker: Path) -> None:
    """The site pinned the reviewed schema; a changed file is not executed at all."""
    schema = project / "ml" / "schema.py"
    reviewed = hashlib.sha256(schema.read_bytes()).hexdigest()
    schema.write_text(schema.read_text() + "\n" + payload(marker))
    error = refused(
        ValidationRefusal.SCHEMA_DIGEST_MISMATCH, SPEC, project_dir=project, sha256=reviewed
    )
    assert error.result["expected_sha256"] == reviewed
    assert error.result["actual_sha256"] == hashlib.sha256(schema.read_bytes()).hexdigest()
    assert not marker.exists()


# --- bad input ----------------------------------------------------------------------------


def test_missing_module_or_attribute_is_bad_input(project: Path) -> None:
    with pytest.raises(InputError, match="cannot be found"):
        load_site_schema("ml.nope:X", project_dir=project)
    with pytest.raises(InputError, match="cannot be found"):
        load_site_schema("ml.schema.sub:X", project_dir=project)
    with pytest.raises(InputError, match="has no attribute 'Churn'"):
        load_site_schema("ml.schema:Churn", project_dir=project)
    with pytest.raises(InputError, match="64 lower-case hex"):
        load_site_schema(SPEC, project_dir=project, sha256="ABC")
