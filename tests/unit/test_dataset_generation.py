"""The demo churn dataset: deterministic, byte-identical CSV, versions differ, real signal."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from prefect.states import Failed
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from ml.schema import ChurnDataset
from secmlops.controls.data import DataPullRefusal
from secmlops.demo.data_registry import (
    CHURN_COLUMNS,
    CONTRACT_TYPES,
    INTERNET_SERVICES,
    churn_csv_bytes,
    generate_churn_dataset,
    write_dataset_csv,
)
from secmlops.errors import ControlRefused, InputError, ToolError
from tasks.data import _retry_tool_errors_only

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_same_version_gives_identical_frame_and_bytes() -> None:
    a, b = generate_churn_dataset("v1.0"), generate_churn_dataset("v1.0")
    pd.testing.assert_frame_equal(a, b)
    assert churn_csv_bytes(a) == churn_csv_bytes(b)


def test_csv_is_byte_identical_in_a_fresh_process(tmp_path: Path) -> None:
    # Another interpreter (its own hash seed, fresh numpy state) must write the same bytes.
    out = tmp_path / "churn.csv"
    code = (
        "import sys; from pathlib import Path; from secmlops.demo.data_registry import *; "
        "write_dataset_csv(generate_churn_dataset('v1.1'), Path(sys.argv[1]))"
    )
    subprocess.run(
        [sys.executable, "-c", code, str(out)],
        check=True,
        cwd=REPO_ROOT,
        env={"PYTHONHASHSEED": "12345", "PATH": "/usr/bin:/bin"},
        timeout=120,
    )
    assert out.read_bytes() == churn_csv_bytes(generate_churn_dataset("v1.1"))


def test_csv_format_is_fixed(tmp_path: Path) -> None:
    path = tmp_path / "d" / "churn.csv"
    write_dataset_csv(generate_churn_dataset("v1.0", rows=50), path)
    raw = path.read_bytes()
    assert b"\r" not in raw
    header, first, *_ = raw.decode().splitlines()
    assert header.split(",") == list(CHURN_COLUMNS)  # no index column
    fields = dict(zip(CHURN_COLUMNS, first.split(","), strict=True))
    for money in ("monthly_charges", "total_charges"):
        assert len(fields[money].split(".")[1]) == 2
    assert list(path.parent.iterdir()) == [path]  # no temp file left behind


def test_versions_differ_and_v1_1_adds_newer_customers() -> None:
    v10, v11 = generate_churn_dataset("v1.0"), generate_churn_dataset("v1.1")
    assert (len(v10), len(v11)) == (2000, 2500)
    assert churn_csv_bytes(v10) != churn_csv_bytes(v11)
    pd.testing.assert_frame_equal(v11.iloc[:2000].reset_index(drop=True), v10)
    newer = v11.iloc[2000:]
    assert newer["tenure_months"].max() <= 6 < v10["tenure_months"].median()
    assert v11["customer_id"].is_unique


def test_columns_values_and_schema() -> None:
    frame = generate_churn_dataset("v1.1", rows=400)
    assert tuple(frame.columns) == CHURN_COLUMNS
    assert set(frame["contract"]) == set(CONTRACT_TYPES)
    assert set(frame["internet_service"]) == set(INTERNET_SERVICES)
    assert set(frame["churned"]) == {0, 1}
    assert frame["customer_id"].str.fullmatch(r"C\d{6}").all()
    assert frame.notna().all().all()
    # What the generator writes, read back as the pipeline reads it, passes the demo schema.
    ChurnDataset.validate(pd.read_csv(io.BytesIO(churn_csv_bytes(frame))), lazy=True)


def test_label_has_a_learnable_signal() -> None:
    frame = generate_churn_dataset("v1.0")
    x = pd.get_dummies(frame.drop(columns=["customer_id", "churned"]), dtype=float)
    y = frame["churned"]
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.3, random_state=0, stratify=y)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(x_tr, y_tr)
    accuracy = model.score(x_te, y_te)
    majority = max(y_te.mean(), 1 - y_te.mean())
    assert 0.72 <= accuracy <= 0.9
    assert accuracy > majority + 0.15
    assert 0.3 < y.mean() < 0.6  # neither class is rare


@pytest.mark.parametrize("version", ["1.0", "v1", "v1.0.0", "latest", ""])
def test_bad_version_is_refused(version: str) -> None:
    with pytest.raises(InputError, match=r"vMAJOR\.MINOR"):
        generate_churn_dataset(version)


def test_rows_must_be_positive() -> None:
    with pytest.raises(InputError, match="rows"):
        generate_churn_dataset("v1.0", rows=0)


def test_major_versions_use_different_customers() -> None:
    a, b = generate_churn_dataset("v1.0", rows=200), generate_churn_dataset("v2.0", rows=200)
    assert not np.array_equal(a["monthly_charges"].to_numpy(), b["monthly_charges"].to_numpy())


def test_pull_task_retries_only_infrastructure_failures() -> None:
    assert _retry_tool_errors_only(None, None, Failed(data=ToolError("dvc remote down")))  # type: ignore[arg-type]
    mismatch = ControlRefused("md5 mismatch", reason=DataPullRefusal.CONTENT_MISMATCH)
    assert not _retry_tool_errors_only(None, None, Failed(data=mismatch))  # type: ignore[arg-type]
    assert not _retry_tool_errors_only(None, None, Failed(data=InputError("no such tag")))  # type: ignore[arg-type]
