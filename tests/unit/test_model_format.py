"""The safetensors + JSON model format: round trip, same predictions as scikit-learn,
malformed files refused."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ml.model import (
    SPEC_FILE,
    WEIGHTS_FILE,
    FeatureSpec,
    build_pipeline,
    load_model,
    prepare_features,
    read_safetensors_header,
    save_model,
)
from secmlops.errors import InputError

SPEC = FeatureSpec(
    numeric=(
        "tenure_months",
        "monthly_charges",
        "total_charges",
        "support_calls",
        "paperless_billing",
    ),
    categorical=("contract", "internet_service"),
    label="churned",
)


def churn_frame(n: int = 400, seed: int = 0) -> pd.DataFrame:
    """A small synthetic churn dataset with real signal (the schema of the product's CSV)."""
    rng = np.random.default_rng(seed)
    tenure = rng.integers(1, 73, n)
    contract = rng.choice(["month-to-month", "one-year", "two-year"], n, p=[0.55, 0.25, 0.2])
    internet = rng.choice(["dsl", "fiber", "none"], n, p=[0.35, 0.45, 0.2])
    monthly = np.round(rng.uniform(20, 110, n), 2)
    calls = rng.poisson(1.5, n)
    paperless = rng.choice([True, False], n)
    logit = (
        -0.06 * tenure
        + 0.03 * (monthly - 60)
        + 0.7 * calls
        + np.select([contract == "month-to-month", contract == "one-year"], [1.5, -0.5], -1.5)
        + np.where(internet == "fiber", 0.6, 0.0)
    )
    churned = (rng.uniform(size=n) < 1 / (1 + np.exp(-logit))).astype(int)
    return pd.DataFrame(
        {
            "customer_id": [f"C{i:05d}" for i in range(n)],
            "tenure_months": tenure,
            "monthly_charges": monthly,
            "total_charges": np.round(monthly * tenure, 2),
            "contract": contract,
            "internet_service": internet,
            "support_calls": calls,
            "paperless_billing": paperless,
            "churned": churned,
        }
    )


@pytest.fixture(scope="module")
def fitted() -> tuple[object, pd.DataFrame]:
    df = churn_frame()
    pipeline = build_pipeline(SPEC, C=1.0, max_iter=500, seed=0)
    pipeline.fit(prepare_features(df, SPEC), df["churned"].to_numpy())
    return pipeline, df


@pytest.fixture
def model_dir(tmp_path: Path, fitted: tuple[object, pd.DataFrame]) -> Path:
    pipeline, _ = fitted
    out = tmp_path / "model"
    save_model(pipeline, SPEC, out, metadata={"dataset_sha256": "0" * 64})
    return out


def test_round_trip_predicts_like_sklearn(
    model_dir: Path, fitted: tuple[object, pd.DataFrame]
) -> None:
    pipeline, df = fitted
    model = load_model(model_dir)
    x = prepare_features(df, SPEC)
    assert sorted(p.name for p in model_dir.iterdir()) == [SPEC_FILE, WEIGHTS_FILE]
    np.testing.assert_array_equal(model.predict(df), pipeline.predict(x))  # type: ignore[attr-defined]
    np.testing.assert_allclose(
        model.predict_proba(df),
        pipeline.predict_proba(x),  # type: ignore[attr-defined]
        rtol=0,
        atol=1e-12,
    )
    assert model.classes == (0, 1)
    assert model.document["metadata"]["dataset_sha256"] == "0" * 64
    assert "scikit-learn" in model.document["framework"]


def test_unknown_category_and_column_order_match_sklearn(
    model_dir: Path, fitted: tuple[object, pd.DataFrame]
) -> None:
    pipeline, df = fitted
    odd = df.sample(frac=1.0, random_state=1)[list(reversed(df.columns))].head(50).copy()
    odd.loc[odd.index[:10], "contract"] = "weekly"  # never seen in training
    model = load_model(model_dir)
    np.testing.assert_allclose(
        model.predict_proba(odd),
        pipeline.predict_proba(prepare_features(odd, SPEC)),  # type: ignore[attr-defined]
        atol=1e-12,
    )


def test_saving_is_deterministic(tmp_path: Path, fitted: tuple[object, pd.DataFrame]) -> None:
    pipeline, _ = fitted
    save_model(pipeline, SPEC, tmp_path / "a")
    save_model(pipeline, SPEC, tmp_path / "b")
    for name in (SPEC_FILE, WEIGHTS_FILE):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_no_pickle_anywhere(model_dir: Path) -> None:
    for path in model_dir.iterdir():
        assert not path.read_bytes().startswith(b"\x80")
    source = (Path(__file__).parents[2] / "ml" / "model.py").read_text()
    assert "import pickle" not in source and "joblib" not in source


def test_missing_column_is_input_error(
    model_dir: Path, fitted: tuple[object, pd.DataFrame]
) -> None:
    _, df = fitted
    with pytest.raises(InputError, match="support_calls"):
        load_model(model_dir).predict(df.drop(columns=["support_calls"]))


def _rewrite_header(path: Path, mutate: object) -> None:
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    mutate(header)  # type: ignore[operator]
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n :])


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda p: p.write_bytes(p.read_bytes()[:-8]), "outside|trailing|spans"),
        (lambda p: p.write_bytes(p.read_bytes()[:20]), "runs past the end"),
        (lambda p: p.write_bytes(b"\x01\x02"), "too short"),
        (lambda p: p.write_bytes(struct.pack("<Q", 4) + b"nope"), "not JSON"),
        (lambda p: p.write_bytes(p.read_bytes() + b"\x00" * 8), "trailing bytes"),
        (
            lambda p: _rewrite_header(
                p, lambda h: h["classifier.coef"].__setitem__("data_offsets", [0, 10**9])
            ),
            "outside",
        ),
        (
            lambda p: _rewrite_header(
                p, lambda h: h["classifier.coef"].__setitem__("dtype", "F32")
            ),
            "needs",
        ),
        (lambda p: _rewrite_header(p, lambda h: h.pop("scaler.mean")), "gap|holds tensors"),
    ],
)
def test_malformed_safetensors_refused(model_dir: Path, damage: object, message: str) -> None:
    damage(model_dir / WEIGHTS_FILE)  # type: ignore[operator]
    with pytest.raises(InputError, match=message) as err:
        load_model(model_dir)
    assert "model.safetensors" in (err.value.where or "")


def test_shape_must_match_feature_spec(model_dir: Path) -> None:
    spec_path = model_dir / SPEC_FILE
    doc = json.loads(spec_path.read_text())
    doc["features"]["numeric"].append("extra_column")
    spec_path.write_text(json.dumps(doc))
    with pytest.raises(InputError, match="shape"):
        load_model(model_dir)


@pytest.mark.parametrize(
    "edit",
    [
        lambda d: d.__setitem__("format", "pickle"),
        lambda d: d.__setitem__("classes", [1]),
        lambda d: d["categories"].pop("contract"),
        lambda d: d["features"].__setitem__("label", None),
    ],
)
def test_malformed_model_json_refused(model_dir: Path, edit: object) -> None:
    spec_path = model_dir / SPEC_FILE
    doc = json.loads(spec_path.read_text())
    edit(doc)  # type: ignore[operator]
    spec_path.write_text(json.dumps(doc))
    with pytest.raises(InputError):
        load_model(model_dir)


def test_missing_files_are_input_errors(tmp_path: Path, model_dir: Path) -> None:
    with pytest.raises(InputError, match="missing"):
        load_model(tmp_path / "nowhere")
    (model_dir / SPEC_FILE).write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        load_model(model_dir)


def test_header_reader_with_partial_data(model_dir: Path) -> None:
    data = (model_dir / WEIGHTS_FILE).read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = read_safetensors_header(data[: 8 + n], where="x", file_size=len(data))
    assert set(header) >= {"classifier.coef", "scaler.mean"}
    with pytest.raises(InputError):
        read_safetensors_header(data[: 8 + n], where="x", file_size=len(data) - 1)


def test_feature_spec_rejects_overlaps() -> None:
    with pytest.raises(InputError, match="twice"):
        FeatureSpec(numeric=("a",), categorical=("a",), label="y")
    with pytest.raises(InputError, match="label"):
        FeatureSpec(numeric=("a", "y"), categorical=(), label="y")
    with pytest.raises(InputError, match="no features"):
        FeatureSpec(numeric=(), categorical=(), label="y")
