"""The `secmlops` wheel is the library alone: no flows, tasks, blocks or demo model in it."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[2]
UV = PROJECT / ".tools" / "uv" / "bin" / "uv"


def test_wheel_holds_only_the_library(tmp_path: Path) -> None:
    assert UV.exists(), "uv is missing: run `make venv`"
    subprocess.run(
        [str(UV), "build", "--wheel", "--out-dir", str(tmp_path), "-q", str(PROJECT)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("secmlops-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0] for name in names}
    assert top == {"secmlops", wheel.name.split("-py")[0] + ".dist-info"}
    assert "secmlops/py.typed" in names
    assert "secmlops/demo/advisories/demo_advisories.json" in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "secmlops = secmlops.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_import_secmlops_loads_no_prefect_dvc_or_pandas() -> None:
    code = (
        "import sys, secmlops, secmlops.cli\n"
        "heavy = [m for m in ('prefect', 'dvc', 'pandas', 'ml', 'flows', 'tasks', 'blocks')"
        " if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "assert secmlops.ControlRefused and callable(secmlops.scan_model_files)\n"
        "assert 'prefect' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120, cwd=PROJECT)
