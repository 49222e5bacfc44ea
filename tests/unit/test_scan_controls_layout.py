"""The two scan controls after their split: they import without Prefect and without the demo
code, the demo builds on the control (not the other way round), and the old import paths
still work."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import secmlops.controls.image_scan as image_scan
import secmlops.controls.model_scan as model_scan
from secmlops.controls.image_scan import db
from secmlops.demo import serving_image, trivy_db

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = [ROOT / "src" / "secmlops" / "controls" / name for name in ("image_scan", "model_scan")]


def test_scan_controls_import_without_prefect_or_demo_code() -> None:
    code = (
        "import secmlops.controls.image_scan, secmlops.controls.model_scan, sys; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('prefect', 'ml') "
        "or m.startswith('secmlops.demo')); assert not bad, bad"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert proc.returncode == 0, proc.stderr


def test_no_scan_module_is_over_400_lines() -> None:
    sizes = {
        str(p.relative_to(ROOT)): len(p.read_text("utf-8").splitlines())
        for package in PACKAGES
        for p in package.glob("*.py")
    }
    assert len(sizes) >= 12
    assert {k: n for k, n in sizes.items() if n > 400} == {}


def test_the_demo_db_writer_shares_the_controls_reader() -> None:
    assert trivy_db.read_trivy_db_info is db.read_trivy_db_info
    assert trivy_db.TrivyDbInfo is db.TrivyDbInfo is image_scan.TrivyDbInfo
    assert trivy_db.UPSTREAM_SOURCE_LABEL == image_scan.UPSTREAM_SOURCE_LABEL


def test_old_import_paths_still_work() -> None:
    # Callers outside the control imported the demo helpers from it; they resolve lazily.
    assert image_scan.seed_demo_trivy_db is trivy_db.seed_demo_trivy_db
    assert image_scan.build_serving_image is serving_image.build_serving_image
    for name in image_scan.__all__:
        assert getattr(image_scan, name) is not None, name
    for name in model_scan.__all__:
        assert getattr(model_scan, name) is not None, name
