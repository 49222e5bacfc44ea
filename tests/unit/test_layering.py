"""The library stands on its own: it never imports the project's ML code (``ml``), and its
controls import without Prefect."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LIBRARY = ROOT / "src" / "secmlops"


def _imported_modules(path: Path) -> set[str]:
    modules: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text("utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules.add(node.module)
    return modules


def test_the_library_never_imports_the_users_ml_code() -> None:
    files = sorted(LIBRARY.rglob("*.py"))
    assert len(files) > 20  # the scan really looked at the library
    offenders = {
        str(path.relative_to(ROOT)): sorted(
            m for m in _imported_modules(path) if m == "ml" or m.startswith("ml.")
        )
        for path in files
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_training_and_smoke_test_import_without_ml_or_prefect() -> None:
    code = (
        "import secmlops.controls.training, secmlops.controls.smoke_test, secmlops.model, sys; "
        "assert 'ml' not in sys.modules and 'prefect' not in sys.modules, "
        "sorted(m for m in sys.modules if m == 'ml' or m.split('.')[0] == 'prefect')"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
