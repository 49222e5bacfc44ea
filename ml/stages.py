"""The training and evaluation stages ``dvc.yaml`` runs (YOUR CODE HERE: a fork edits this).

    python -m ml.stages train --data data/dataset.csv --params params.yaml --out model
    python -m ml.stages evaluate --data data/dataset.csv --params params.yaml \\
        --model model --metrics metrics.json

``secmlops`` runs them with ``dvc repro`` in a fresh workspace
(:func:`secmlops.controls.training.train_with_dvc`) and then enforces the ``evaluate``
thresholds of params.yaml on ``metrics.json``. What the library expects of these stages:

* ``train`` writes the model directory (``model/``), plain files only (it is scanned and
  signed), without timestamps if the same inputs should give the same model digest;
* ``evaluate`` writes ``metrics.json``: a JSON object whose numbers the ``min_*``/``max_*``
  thresholds name (``min_accuracy`` checks ``accuracy``);
* every file of your code a stage imports is listed in that stage's ``deps`` in dvc.yaml:
  the workspace holds only those, and the provenance records their sha256 digests.

Exit codes follow the library's: 2 for bad input (the message names file and field).

Example::

    train_stage(Path("data/dataset.csv"), Path("params.yaml"), Path("model"))
    metrics = evaluate_stage(Path("data/dataset.csv"), Path("params.yaml"), Path("model"),
                             Path("metrics.json"))
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ml.model import (
    FeatureSpec,
    build_pipeline,
    feature_spec_from_params,
    load_model,
    prepare_features,
    save_model,
)
from secmlops._internal.digests import sha256_file
from secmlops.controls.training import DATASET_PATH, METRICS_FILE, MODEL_DIR, load_params
from secmlops.errors import InputError, SecMLOpsError

# --- params (your code here: the hyperparameters your model reads from params.yaml) ---------


def _number(section: Mapping[str, Any], key: str, where: str) -> float:
    value = section.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InputError(
            f"{where}.{key} must be a number, got {value!r}", where=f"params.yaml {where}"
        )
    return float(value)


@dataclass(frozen=True)
class TrainParams:
    """The ``train`` section of params.yaml, checked."""

    seed: int
    test_size: float
    C: float  # the scikit-learn name users know
    max_iter: int
    spec: FeatureSpec

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> TrainParams:
        train = params["train"]
        seed, max_iter = train.get("seed"), train.get("max_iter")
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise InputError("train.seed must be a non-negative integer", where="params.yaml train")
        if not isinstance(max_iter, int) or isinstance(max_iter, bool) or max_iter < 1:
            raise InputError("train.max_iter must be a positive integer", where="params.yaml train")
        test_size = _number(train, "test_size", "train")
        if not 0.0 < test_size < 1.0:
            raise InputError("train.test_size must be between 0 and 1", where="params.yaml train")
        c = _number(train, "C", "train")
        if c <= 0:
            raise InputError("train.C must be positive", where="params.yaml train")
        return cls(
            seed=seed,
            test_size=test_size,
            C=c,
            max_iter=max_iter,
            spec=feature_spec_from_params(train),
        )


# --- data and split ---------------------------------------------------------------------------


def _read_dataset(path: Path, spec: FeatureSpec) -> tuple[Any, Any]:
    import pandas as pd

    try:
        df = pd.read_csv(path)
    except FileNotFoundError as exc:
        raise InputError(f"dataset {path} does not exist", where=str(path)) from exc
    except (ValueError, pd.errors.ParserError) as exc:
        raise InputError(f"dataset {path} is not a readable CSV: {exc}", where=str(path)) from exc
    if spec.label not in df.columns:
        raise InputError(
            f"dataset has no label column {spec.label!r}",
            where=str(path),
            fix="set train.label in params.yaml to the label column",
        )
    if df[spec.label].isna().any():
        raise InputError(f"label column {spec.label!r} has missing values", where=str(path))
    if df[spec.label].nunique() < 2:
        raise InputError(f"label column {spec.label!r} has fewer than two classes", where=str(path))
    return df, df[spec.label]


def split_indices(labels: Any, *, test_size: float, seed: int) -> tuple[Any, Any]:
    """Stratified, seeded train/test split as sorted row positions (numpy, no scikit-learn).

    Train and evaluate run in separate processes; both call this with the same params and
    get the same split. Each class contributes ``round(test_size * n)`` rows (at least one
    to each side), so a tiny class cannot vanish from either side.
    """
    import numpy as np

    values = np.asarray(labels)
    rng = np.random.default_rng(seed)
    test: list[Any] = []
    for cls in sorted(set(values.tolist()), key=str):
        members = np.flatnonzero(values == cls)
        if len(members) < 2:
            raise InputError(
                f"class {cls!r} has {len(members)} row(s); need at least 2 to split",
                where="train.test_size",
                fix="add data for every class",
            )
        n_test = min(max(1, round(test_size * len(members))), len(members) - 1)
        test.extend(rng.permutation(members)[:n_test].tolist())
    test_idx = np.sort(np.asarray(test, dtype=np.int64))
    train_idx = np.setdiff1d(np.arange(len(values)), test_idx)
    return train_idx, test_idx


def write_held_out_sample(dataset: Path, params: Mapping[str, Any], out: Path) -> int:
    """Write the rows the model never trained on (the evaluate split) to ``out``; return count.

    The staging smoke test runs on these, so its accuracy is not measured on training rows.
    Your code here if your split differs: the sample must hold the label column.
    """
    tp = TrainParams.from_params(params)
    df, labels = _read_dataset(dataset, tp.spec)
    _, test_idx = split_indices(labels, test_size=tp.test_size, seed=tp.seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    df.iloc[test_idx].to_csv(out, index=False)
    return len(test_idx)


# --- metrics (the names the evaluate thresholds in params.yaml refer to) ----------------------


def roc_auc(is_positive: Any, scores: Any) -> float:
    """Binary ROC AUC (Mann-Whitney U with average ranks for ties)."""
    import numpy as np
    import pandas as pd

    positive = np.asarray(is_positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        raise InputError("ROC AUC needs both classes in the test split", where="evaluate")
    ranks = pd.Series(np.asarray(scores, dtype=np.float64)).rank(method="average").to_numpy()
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def classification_metrics(
    y_true: Any, predicted: Any, proba: Any, classes: Sequence[Any]
) -> dict[str, Any]:
    """accuracy, roc_auc (one-vs-rest macro for more than two classes), and for two classes
    precision/recall/f1 of the positive class ``classes[1]``."""
    import numpy as np

    y = np.asarray(y_true)
    pred = np.asarray(predicted)
    metrics: dict[str, Any] = {"accuracy": float((y == pred).mean()), "test_rows": len(y)}
    if len(classes) == 2:
        pos = classes[1]
        metrics["roc_auc"] = roc_auc(y == pos, proba[:, 1])
        tp = int(((pred == pos) & (y == pos)).sum())
        fp = int(((pred == pos) & (y != pos)).sum())
        fn = int(((pred != pos) & (y == pos)).sum())
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        metrics["precision"] = precision
        metrics["recall"] = recall
        metrics["f1"] = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    else:
        metrics["roc_auc"] = float(
            np.mean([roc_auc(y == c, proba[:, i]) for i, c in enumerate(classes)])
        )
    return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in metrics.items()}


# --- the stages (your code here: fit and score your model) ----------------------------------


def train_stage(data: Path, params_path: Path, out: Path) -> None:
    """The ``train`` stage: fit the pipeline on the training split, save it as safetensors."""
    params = load_params(params_path)
    tp = TrainParams.from_params(params)
    df, y = _read_dataset(data, tp.spec)
    train_idx, _ = split_indices(y, test_size=tp.test_size, seed=tp.seed)
    x_train, y_train = df.iloc[train_idx], y.iloc[train_idx]
    pipeline = build_pipeline(tp.spec, C=tp.C, max_iter=tp.max_iter, seed=tp.seed)
    pipeline.fit(prepare_features(x_train, tp.spec, where=str(data)), y_train.to_numpy())
    if out.exists():
        shutil.rmtree(out)
    # No timestamps: the same inputs must give byte-identical model files.
    save_model(
        pipeline,
        tp.spec,
        out,
        metadata={
            "dataset_sha256": sha256_file(data),
            "train_rows": len(x_train),
            "params": params["train"],
        },
    )


def evaluate_stage(
    data: Path, params_path: Path, model_dir: Path, metrics_path: Path
) -> dict[str, Any]:
    """The ``evaluate`` stage: score the saved model, loaded from its safetensors files (not
    the in-memory pipeline), on the held-out split. Needs no scikit-learn."""
    params = load_params(params_path)
    tp = TrainParams.from_params(params)
    df, y = _read_dataset(data, tp.spec)
    _, test_idx = split_indices(y, test_size=tp.test_size, seed=tp.seed)
    x_test, y_test = df.iloc[test_idx], y.iloc[test_idx]
    model = load_model(model_dir)
    metrics = classification_metrics(
        y_test.to_numpy(), model.predict(x_test), model.predict_proba(x_test), model.classes
    )
    metrics_path.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n", "utf-8")
    return metrics


# --- the command line dvc.yaml runs ---------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m ml.stages {train,evaluate}``: the commands dvc.yaml runs."""
    parser = argparse.ArgumentParser(
        prog="python -m ml.stages", description="The training and evaluation stages."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="fit the model on the training split")
    train.add_argument("--data", type=Path, default=Path(DATASET_PATH))
    train.add_argument("--params", type=Path, default=Path("params.yaml"))
    train.add_argument("--out", type=Path, default=Path(MODEL_DIR))
    evaluate = sub.add_parser("evaluate", help="score the saved model on the test split")
    evaluate.add_argument("--data", type=Path, default=Path(DATASET_PATH))
    evaluate.add_argument("--params", type=Path, default=Path("params.yaml"))
    evaluate.add_argument("--model", type=Path, default=Path(MODEL_DIR))
    evaluate.add_argument("--metrics", type=Path, default=Path(METRICS_FILE))
    args = parser.parse_args(argv)
    try:
        if args.command == "train":
            train_stage(args.data, args.params, args.out)
        else:
            metrics = evaluate_stage(args.data, args.params, args.model, args.metrics)
            print(json.dumps(metrics, sort_keys=True))
    except SecMLOpsError as exc:
        print(exc.diagnostics(), file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
