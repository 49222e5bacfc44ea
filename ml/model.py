"""The demo model (YOUR CODE HERE: a fork replaces this file with its own model).

A model format that cannot run code when it is loaded.

A trained scikit-learn pipeline (standardise numeric columns, one-hot encode categorical
columns, logistic regression) is stored as its learned numbers only:

    model/model.safetensors   float64 tensors: scaler mean/scale, coef, intercept
    model/model.json          feature spec, categories, classes, metadata, framework versions

Loading parses JSON and a safetensors buffer, nothing else: no pickle, no imports chosen by
the file, so a malicious model file can at worst be refused. Prediction is pure numpy and
gives the same answers as the scikit-learn pipeline that was saved.

Example::

    pipeline = build_pipeline(spec, C=1.0, max_iter=200, seed=0).fit(prepare_features(df, spec), y)
    save_model(pipeline, spec, Path("model"), metadata={"dataset_sha256": digest})
    model = load_model(Path("model"))
    labels = model.predict(df)

What the library needs from a fork's model code is small: a loader with the signature of
:func:`load_model` returning an object that satisfies :class:`secmlops.model.LoadedModel`
(``label``, ``feature_names``, ``classes``, ``predict``, ``predict_proba``). The Prefect
layer passes that loader to the smoke test. Keep the loader free of pickle: it runs on files
downloaded from the registry.
"""

from __future__ import annotations

import json
import platform
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from secmlops._internal.atomic import write_atomic
from secmlops.errors import InputError
from secmlops.formats.safetensors import read_safetensors_header

FORMAT_NAME = "secmlops-linear-v1"
WEIGHTS_FILE = "model.safetensors"
SPEC_FILE = "model.json"

MAX_SPEC_BYTES = 16 * 1024 * 1024

_TENSORS = ("scaler.mean", "scaler.scale", "classifier.coef", "classifier.intercept")


@dataclass(frozen=True)
class FeatureSpec:
    """Which columns the model reads: numeric, categorical, and the label it predicts."""

    numeric: tuple[str, ...]
    categorical: tuple[str, ...]
    label: str

    def __post_init__(self) -> None:
        names = [*self.numeric, *self.categorical]
        if not names:
            raise InputError(
                "the feature spec lists no features",
                where="train.numeric_features / train.categorical_features",
                fix="list at least one feature column in params.yaml",
            )
        if len(set(names)) != len(names):
            raise InputError(
                f"a feature column is listed twice: {names}",
                where="train features",
                fix="list each column once, either as numeric or as categorical",
            )
        if self.label in names:
            raise InputError(
                f"the label column {self.label!r} is also listed as a feature",
                where="train.label",
                fix="remove the label from the feature lists",
            )

    @property
    def columns(self) -> tuple[str, ...]:
        return (*self.numeric, *self.categorical)

    def to_json(self) -> dict[str, Any]:
        return {
            "numeric": list(self.numeric),
            "categorical": list(self.categorical),
            "label": self.label,
        }


def prepare_features(df: pd.DataFrame, spec: FeatureSpec, *, where: str = "input") -> pd.DataFrame:
    """The model's input frame: numeric columns as float64, categorical columns as str.

    Training and prediction both go through this, so the saved model sees exactly what the
    fitted pipeline saw. Missing columns or values are an ``InputError`` naming them.
    """
    missing = [c for c in spec.columns if c not in df.columns]
    if missing:
        raise InputError(
            f"input is missing feature column(s) {missing}",
            where=where,
            fix="pass a frame with every column listed in the model's feature spec",
        )
    out = pd.DataFrame(index=df.index)
    for col in spec.numeric:
        try:
            values = pd.to_numeric(df[col].astype("object"), errors="raise").astype("float64")
        except (TypeError, ValueError) as exc:
            raise InputError(
                f"numeric feature {col!r} holds non-numeric values: {exc}", where=where
            ) from exc
        if values.isna().any():
            raise InputError(f"numeric feature {col!r} has missing values", where=where)
        out[col] = values
    for col in spec.categorical:
        if df[col].isna().any():
            raise InputError(f"categorical feature {col!r} has missing values", where=where)
        out[col] = df[col].astype(str).astype(object)
    return out


def build_pipeline(spec: FeatureSpec, *, C: float, max_iter: int, seed: int) -> Any:  # noqa: N803
    """The one pipeline shape this format stores: scaler + one-hot + logistic regression."""
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    transformers: list[tuple[str, Any, list[str]]] = []
    if spec.numeric:
        transformers.append(("numeric", StandardScaler(), list(spec.numeric)))
    if spec.categorical:
        transformers.append(
            (
                "categorical",
                OneHotEncoder(handle_unknown="ignore", sparse_output=False),
                list(spec.categorical),
            )
        )
    return Pipeline(
        [
            ("features", ColumnTransformer(transformers, remainder="drop")),
            ("classifier", LogisticRegression(C=C, max_iter=max_iter, random_state=seed)),
        ]
    )


def _framework_versions() -> dict[str, str]:
    import safetensors
    import sklearn

    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scikit-learn": sklearn.__version__,
        "safetensors": safetensors.__version__,
    }


def save_model(
    pipeline: Any,
    spec: FeatureSpec,
    model_dir: Path,
    *,
    metadata: Mapping[str, Any] | None = None,
) -> list[Path]:
    """Write a fitted pipeline from :func:`build_pipeline` as safetensors + JSON.

    ``metadata`` (JSON-serialisable, no timestamps if you want reproducible digests) is
    stored in ``model.json``. Returns the files written. ``InputError`` if the pipeline is
    not fitted or not of the supported shape.
    """
    from safetensors.numpy import save as st_save

    try:
        features = pipeline.named_steps["features"]
        classifier = pipeline.named_steps["classifier"]
        named = features.named_transformers_
        coef = np.asarray(classifier.coef_, dtype=np.float64)
        intercept = np.asarray(classifier.intercept_, dtype=np.float64)
        classes = [c.item() if isinstance(c, np.generic) else c for c in classifier.classes_]
    except (AttributeError, KeyError) as exc:
        raise InputError(
            f"cannot save this pipeline: {exc}",
            where="save_model",
            fix="fit a pipeline made by ml.model.build_pipeline first",
        ) from exc
    if spec.numeric:
        scaler = named["numeric"]
        mean = np.asarray(scaler.mean_, dtype=np.float64)
        scale = np.asarray(scaler.scale_, dtype=np.float64)
    else:
        mean = np.zeros(0, dtype=np.float64)
        scale = np.ones(0, dtype=np.float64)
    categories: dict[str, list[str]] = {}
    if spec.categorical:
        encoder = named["categorical"]
        for col, cats in zip(spec.categorical, encoder.categories_, strict=True):
            categories[col] = [str(c) for c in cats]
    tensors = {
        "scaler.mean": mean,
        "scaler.scale": scale,
        "classifier.coef": coef,
        "classifier.intercept": intercept,
    }
    document = {
        "format": FORMAT_NAME,
        "weights": WEIGHTS_FILE,
        "features": spec.to_json(),
        "categories": categories,
        "classes": classes,
        "framework": _framework_versions(),
        "metadata": dict(metadata or {}),
    }
    model_dir.mkdir(parents=True, exist_ok=True)
    weights = st_save(tensors, metadata={"format": FORMAT_NAME})
    spec_bytes = (json.dumps(document, indent=2, sort_keys=True) + "\n").encode()
    write_atomic(model_dir / WEIGHTS_FILE, weights)
    write_atomic(model_dir / SPEC_FILE, spec_bytes)
    # Refuse to hand back something that does not load: the round trip is the contract.
    load_model(model_dir)
    return [model_dir / WEIGHTS_FILE, model_dir / SPEC_FILE]


@dataclass(frozen=True)
class LoadedModel:
    """A model loaded from safetensors + JSON; predicts with numpy only.

    Satisfies :class:`secmlops.model.LoadedModel`, the interface the smoke test calls.
    """

    spec: FeatureSpec
    mean: np.ndarray
    scale: np.ndarray
    categories: dict[str, tuple[str, ...]]
    coef: np.ndarray
    intercept: np.ndarray
    classes: tuple[Any, ...]
    document: dict[str, Any]

    @property
    def label(self) -> str:
        """The label column (``secmlops.model.LoadedModel``)."""
        return self.spec.label

    @property
    def feature_names(self) -> tuple[str, ...]:
        """The columns ``predict`` reads (``secmlops.model.LoadedModel``)."""
        return self.spec.columns

    def _design_matrix(self, df: pd.DataFrame) -> np.ndarray:
        frame = prepare_features(df, self.spec, where="model input")
        parts: list[np.ndarray] = []
        if self.spec.numeric:
            numeric = frame[list(self.spec.numeric)].to_numpy(dtype=np.float64)
            parts.append((numeric - self.mean) / self.scale)
        for col in self.spec.categorical:
            values = frame[col].to_numpy(dtype=object)
            cats = np.asarray(self.categories[col], dtype=object)
            # Unknown categories encode as all zeros, as OneHotEncoder(handle_unknown="ignore").
            parts.append((values[:, None] == cats[None, :]).astype(np.float64))
        return np.hstack(parts) if parts else np.zeros((len(frame), 0))

    def decision_function(self, df: pd.DataFrame) -> np.ndarray:
        """Raw linear scores, shape (n,) for two classes, (n, k) otherwise."""
        scores: np.ndarray = self._design_matrix(df) @ self.coef.T + self.intercept
        return scores[:, 0] if scores.shape[1] == 1 else scores

    def predict_proba(self, df: pd.DataFrame) -> np.ndarray:
        """Class probabilities, columns in the order of ``classes``."""
        scores = self.decision_function(df)
        if scores.ndim == 1:
            positive = 1.0 / (1.0 + np.exp(-scores))
            return np.column_stack([1.0 - positive, positive])
        shifted = scores - scores.max(axis=1, keepdims=True)
        exp = np.exp(shifted)
        result: np.ndarray = exp / exp.sum(axis=1, keepdims=True)
        return result

    def predict(self, df: pd.DataFrame) -> np.ndarray:
        """Predicted class labels."""
        scores = self.decision_function(df)
        index = (scores > 0).astype(int) if scores.ndim == 1 else scores.argmax(axis=1)
        labels: np.ndarray = np.asarray(self.classes)[index]
        return labels


def _str_list(value: Any, field: str, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InputError(f"{field} must be a list of strings", where=where)
    return tuple(value)


def load_model(model_dir: Path) -> LoadedModel:
    """Load and validate a model directory written by :func:`save_model`.

    Never unpickles. ``InputError`` names the file and the problem when the directory is
    missing, a file is malformed, or the tensor shapes do not match the feature spec.
    """
    from safetensors import SafetensorError
    from safetensors.numpy import load as st_load

    spec_path, weights_path = model_dir / SPEC_FILE, model_dir / WEIGHTS_FILE
    for path in (spec_path, weights_path):
        if not path.is_file() or path.is_symlink():
            raise InputError(
                f"model file {path.name} is missing (or not a regular file)",
                where=str(path),
                fix="point at a directory written by ml.model.save_model",
            )
    if spec_path.stat().st_size > MAX_SPEC_BYTES:
        raise InputError(f"{SPEC_FILE} is implausibly large", where=str(spec_path))
    try:
        document = json.loads(spec_path.read_text("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"{SPEC_FILE} is not valid JSON: {exc}", where=str(spec_path)) from exc
    where = str(spec_path)
    if not isinstance(document, dict) or document.get("format") != FORMAT_NAME:
        raise InputError(f"{SPEC_FILE} is not a {FORMAT_NAME} model description", where=where)
    features = document.get("features")
    if not isinstance(features, dict) or not isinstance(features.get("label"), str):
        raise InputError("features must be an object with a string label", where=where)
    spec = FeatureSpec(
        numeric=_str_list(features.get("numeric"), "features.numeric", where),
        categorical=_str_list(features.get("categorical"), "features.categorical", where),
        label=features["label"],
    )
    raw_categories = document.get("categories")
    if not isinstance(raw_categories, dict) or set(raw_categories) != set(spec.categorical):
        raise InputError("categories must list exactly the categorical features", where=where)
    categories = {
        col: _str_list(raw_categories[col], f"categories.{col}", where) for col in spec.categorical
    }
    classes = document.get("classes")
    if (
        not isinstance(classes, list)
        or len(classes) < 2
        or not all(isinstance(c, int | str) for c in classes)  # bool is an int too
        or len(set(classes)) != len(classes)
    ):
        raise InputError("classes must list at least two distinct int/str/bool labels", where=where)

    data = weights_path.read_bytes()
    header = read_safetensors_header(data, where=str(weights_path))
    names = set(header) - {"__metadata__"}
    if names != set(_TENSORS):
        raise InputError(
            f"{WEIGHTS_FILE} holds tensors {sorted(names)}, expected {sorted(_TENSORS)}",
            where=str(weights_path),
        )
    if any(header[n]["dtype"] != "F64" for n in _TENSORS):
        raise InputError(f"{WEIGHTS_FILE} tensors must be F64", where=str(weights_path))
    try:
        tensors = st_load(data)
    except (SafetensorError, ValueError) as exc:
        raise InputError(f"{WEIGHTS_FILE} does not load: {exc}", where=str(weights_path)) from exc

    n_out = len(spec.numeric) + sum(len(c) for c in categories.values())
    n_rows = 1 if len(classes) == 2 else len(classes)
    expected_shapes: dict[str, tuple[int, ...]] = {
        "scaler.mean": (len(spec.numeric),),
        "scaler.scale": (len(spec.numeric),),
        "classifier.coef": (n_rows, n_out),
        "classifier.intercept": (n_rows,),
    }
    for name, shape in expected_shapes.items():
        if tensors[name].shape != shape:
            raise InputError(
                f"tensor {name} has shape {tensors[name].shape}, the feature spec needs {shape}",
                where=str(weights_path),
            )
        if not np.isfinite(tensors[name]).all():
            raise InputError(f"tensor {name} holds NaN or infinite values", where=str(weights_path))
    if (tensors["scaler.scale"] <= 0).any():
        raise InputError("scaler.scale must be positive", where=str(weights_path))
    return LoadedModel(
        spec=spec,
        mean=tensors["scaler.mean"],
        scale=tensors["scaler.scale"],
        categories=categories,
        coef=tensors["classifier.coef"],
        intercept=tensors["classifier.intercept"],
        classes=tuple(classes),
        document=document,
    )


def feature_spec_from_params(params: Mapping[str, Any]) -> FeatureSpec:
    """Build the feature spec from the ``train`` section of params.yaml."""

    def names(key: str) -> tuple[str, ...]:
        value = params.get(key, [])
        if (
            not isinstance(value, Sequence)
            or isinstance(value, str)
            or not all(isinstance(v, str) for v in value)
        ):
            raise InputError(
                f"train.{key} must be a list of column names", where=f"params.yaml train.{key}"
            )
        return tuple(value)

    label = params.get("label")
    if not isinstance(label, str) or not label:
        raise InputError("train.label must name the label column", where="params.yaml train.label")
    return FeatureSpec(
        numeric=names("numeric_features"), categorical=names("categorical_features"), label=label
    )
