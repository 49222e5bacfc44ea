"""Train and evaluate with ``dvc repro``, enforce the evaluation gate, describe the build.

The ML stages live in the project's ``dvc.yaml`` + ``params.yaml``; their commands are this
module's CLI::

    python -m secmlops.controls.training train --data data/dataset.csv \\
        --params params.yaml --out model
    python -m secmlops.controls.training evaluate --data data/dataset.csv --params params.yaml \\
        --model model --metrics metrics.json

:func:`train_with_dvc` runs the real ``dvc`` binary in a fresh workspace (so a run never
reuses a stale cache or someone else's outputs), then refuses a model whose metrics are
below the ``evaluate`` thresholds. :func:`provenance_statement` describes the run as SLSA
Provenance v1, binding the model digest to the dataset digest and the code that ran.

Example::

    result = train_with_dvc(Path("data.csv"), workspace=Path("run/ws"), project_dir=Path("."))
    statement = provenance_statement(result, dataset_sha256=..., dataset_uri=...,
                                     dataset_commit=..., builder_id=..., invocation_id=...)
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ml.model import (
    FeatureSpec,
    build_pipeline,
    feature_spec_from_params,
    load_model,
    prepare_features,
    save_model,
)
from secmlops._internal.digests import sha256_bytes, sha256_file, tree_digest, tree_files
from secmlops._internal.toolrun import resolve_binary, run_tool
from secmlops.errors import ControlRefused, InputError, SecMLOpsError, ToolError
from secmlops.evidence.statements import PREDICATE_SLSA_PROVENANCE, Subject, make_statement, utc_now

BUILD_TYPE = "https://secmlops.dev/buildtypes/dvc-repro/v1"
DATASET_PATH = "data/dataset.csv"
MODEL_DIR = "model"
METRICS_FILE = "metrics.json"
#: The code the stages run, recorded (by sha256) in the provenance.
CODE_FILES = ("src/secmlops/controls/training.py", "ml/model.py")
_COMMIT = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")


# --- params --------------------------------------------------------------------------------


def load_params(path: Path) -> dict[str, Any]:
    """Read params.yaml; it must have ``train`` and ``evaluate`` sections."""
    try:
        params = yaml.safe_load(path.read_text("utf-8"))
    except FileNotFoundError as exc:
        raise InputError(f"{path} does not exist", where=str(path)) from exc
    except yaml.YAMLError as exc:
        raise InputError(f"{path} is not valid YAML: {exc}", where=str(path)) from exc
    if not isinstance(params, dict):
        raise InputError(f"{path} must be a mapping", where=str(path))
    for section in ("train", "evaluate"):
        if not isinstance(params.get(section), dict):
            raise InputError(
                f"{path} has no '{section}' section",
                where=f"{path}:{section}",
                fix="see the project's params.yaml for the expected keys",
            )
    return params


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


def thresholds(params: Mapping[str, Any]) -> dict[str, tuple[str, float]]:
    """The evaluation gate: ``{param: (metric, threshold)}`` from ``evaluate.min_*/max_*``.

    An evaluate section with no thresholds is refused: a gate that checks nothing is not a gate.
    """
    evaluate = params["evaluate"]
    gate: dict[str, tuple[str, float]] = {}
    for key in evaluate:
        if key.startswith(("min_", "max_")):
            gate[key] = (key[4:], _number(evaluate, key, "evaluate"))
    if not gate:
        raise InputError(
            "params.yaml evaluate sets no thresholds",
            where="params.yaml evaluate",
            fix="set at least min_accuracy and min_roc_auc",
        )
    return gate


def check_gate(metrics: Mapping[str, Any], params: Mapping[str, Any]) -> None:
    """Raise ``ControlRefused`` naming every metric outside its threshold (or missing)."""
    failures: list[str] = []
    for key, (metric, limit) in sorted(thresholds(params).items()):
        value = metrics.get(metric)
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            failures.append(f"{metric} is missing or not a number ({value!r}); {key} = {limit:g}")
        elif key.startswith("min_") and value < limit:
            failures.append(f"{metric} = {value:.4f} is below {key} = {limit:g}")
        elif key.startswith("max_") and value > limit:
            failures.append(f"{metric} = {value:.4f} is above {key} = {limit:g}")
    if failures:
        raise ControlRefused(
            "evaluation gate refused the model: " + "; ".join(failures),
            where="evaluate",
            fix="improve the model or data; lower a threshold only with a reviewed params change",
            details={"metrics": dict(metrics), "thresholds": dict(params["evaluate"])},
        )


# --- the stage commands --------------------------------------------------------------------


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


def write_held_out_sample(dataset: Path, params: Mapping[str, Any], out: Path) -> int:
    """Write the rows the model never trained on (the evaluate split) to ``out``; return count.

    The staging smoke test runs on these, so its accuracy is not measured on training rows.
    """
    tp = TrainParams.from_params(params)
    df, labels = _read_dataset(dataset, tp.spec)
    _, test_idx = split_indices(labels, test_size=tp.test_size, seed=tp.seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    df.iloc[test_idx].to_csv(out, index=False)
    return len(test_idx)


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


# --- running the pipeline with dvc ---------------------------------------------------------


@dataclass(frozen=True)
class TrainingResult:
    """What one ``dvc repro`` produced, and what went into it."""

    model_dir: Path
    metrics: dict[str, Any]
    params: dict[str, Any]
    dvc_lock: dict[str, Any]
    started_at: str
    finished_at: str
    workspace: Path
    dataset_sha256: str
    code_digests: dict[str, str]
    duration_seconds: float

    @property
    def model_digest(self) -> str:
        return tree_digest(self.model_dir)

    def to_json(self) -> dict[str, Any]:
        return {
            "model_dir": str(self.model_dir),
            "model_digest": self.model_digest,
            "metrics": self.metrics,
            "params": self.params,
            "dvc_lock": self.dvc_lock,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "workspace": str(self.workspace),
            "dataset_sha256": self.dataset_sha256,
            "code_digests": self.code_digests,
            "duration_seconds": self.duration_seconds,
        }


def _code_root() -> Path:
    # The project checkout whose code the stages import: the code whose digest the
    # provenance records is the code that runs.
    from secmlops.settings import project_root

    return project_root()


def _prepare_workspace(workspace: Path) -> None:
    if workspace.exists() and (not workspace.is_dir() or any(workspace.iterdir())):
        raise InputError(
            f"training workspace {workspace} already exists and is not empty",
            where=str(workspace),
            fix="pass a fresh directory; every run trains in its own workspace",
        )
    workspace.mkdir(parents=True, exist_ok=True)


def _check_columns(dataset: Path, spec: FeatureSpec) -> None:
    """Name missing columns now, as bad input, rather than as a failed dvc stage later."""
    import pandas as pd

    try:
        columns = set(pd.read_csv(dataset, nrows=0).columns)
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise InputError(
            f"dataset {dataset} is not a readable CSV: {exc}", where=str(dataset)
        ) from exc
    missing = [c for c in (*spec.columns, spec.label) if c not in columns]
    if missing:
        raise InputError(
            f"dataset {dataset} lacks column(s) {missing} that params.yaml train uses",
            where=str(dataset),
            fix="fix the dataset, or the feature lists / label in params.yaml",
        )


def train_with_dvc(
    dataset: Path, *, workspace: Path, project_dir: Path, timeout: float = 600
) -> TrainingResult:
    """Run ``dvc repro`` (train + evaluate) in a fresh workspace and enforce the gate.

    Copies ``project_dir``'s dvc.yaml and params.yaml into ``workspace``, the dataset to
    data/dataset.csv, then runs the real dvc binary. ``ToolError`` if dvc or a stage fails,
    ``InputError`` for a missing/bad input, ``ControlRefused`` if a metric misses its
    threshold (the error names metric, value and threshold; the model stays in the workspace).
    """
    for name in ("dvc.yaml", "params.yaml"):
        if not (project_dir / name).is_file():
            raise InputError(
                f"{project_dir / name} does not exist",
                where=str(project_dir / name),
                fix="run from the project root (it holds dvc.yaml and params.yaml)",
            )
    if not dataset.is_file():
        raise InputError(f"dataset {dataset} does not exist", where=str(dataset))
    params = load_params(project_dir / "params.yaml")
    spec = TrainParams.from_params(params).spec
    thresholds(params)  # refuse an empty gate before spending minutes training
    _check_columns(dataset, spec)

    workspace = workspace.resolve()
    _prepare_workspace(workspace)
    shutil.copyfile(project_dir / "dvc.yaml", workspace / "dvc.yaml")
    shutil.copyfile(project_dir / "params.yaml", workspace / "params.yaml")
    (workspace / "data").mkdir()
    shutil.copyfile(dataset, workspace / DATASET_PATH)

    code_root = _code_root()
    code_digests = {rel: sha256_file(code_root / rel) for rel in CODE_FILES}
    dvc = resolve_binary("dvc", "SECMLOPS_DVC")
    env = {"DVC_NO_ANALYTICS": "1", "PYTHONPATH": str(code_root)}
    started_at, t0 = utc_now(), time.monotonic()
    run_tool(
        [dvc, "init", "--no-scm", "-q"],
        timeout=min(timeout, 120),
        extra_env=env,
        cwd=workspace,
        what="dvc init",
    )
    # Plain copies, never links into the cache: the model dir is scanned and signed, and the
    # scanner refuses symlinks.
    with (workspace / ".dvc" / "config").open("a", encoding="utf-8") as fh:
        fh.write("[cache]\n    type = copy\n")
    remaining = max(1.0, timeout - (time.monotonic() - t0))
    run_tool([dvc, "repro"], timeout=remaining, extra_env=env, cwd=workspace, what="dvc repro")
    finished_at, duration = utc_now(), time.monotonic() - t0

    lock_path, metrics_path = workspace / "dvc.lock", workspace / METRICS_FILE
    try:
        dvc_lock = yaml.safe_load(lock_path.read_text("utf-8"))
        metrics = json.loads(metrics_path.read_text("utf-8"))
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise ToolError(
            f"dvc repro finished but left no readable dvc.lock/metrics.json: {exc}",
            where=str(workspace),
            fix="check the stages in dvc.yaml write model/ and metrics.json",
        ) from exc
    if not isinstance(dvc_lock, dict) or not isinstance(metrics, dict):
        raise ToolError("dvc.lock or metrics.json has an unexpected shape", where=str(workspace))
    result = TrainingResult(
        model_dir=workspace / MODEL_DIR,
        metrics=metrics,
        params=params,
        dvc_lock=dvc_lock,
        started_at=started_at,
        finished_at=finished_at,
        workspace=workspace,
        dataset_sha256=sha256_file(workspace / DATASET_PATH),
        code_digests=code_digests,
        duration_seconds=round(duration, 3),
    )
    tree_files(result.model_dir)  # the model must be plain files (InputError on a symlink)
    try:
        check_gate(metrics, params)
    except ControlRefused as exc:
        exc.details["model_dir"] = str(result.model_dir)
        raise
    return result


def provenance_statement(
    result: TrainingResult,
    *,
    dataset_sha256: str,
    dataset_uri: str,
    dataset_commit: str,
    builder_id: str,
    invocation_id: str,
) -> dict[str, Any]:
    """SLSA Provenance v1 for the training run: the model made from this data by this code.

    ``dataset_sha256`` must be the digest of the dataset that was trained on (``InputError``
    otherwise), so provenance cannot bind the model to data it never saw.
    """
    if dataset_sha256 != result.dataset_sha256:
        raise InputError(
            f"dataset digest {dataset_sha256[:16]}… is not the one trained on "
            f"({result.dataset_sha256[:16]}…)",
            where="provenance",
            fix="pass the sha256 of the dataset file given to train_with_dvc",
        )
    files = tree_files(result.model_dir)
    subjects = [Subject("model", tree_digest(result.model_dir))]
    subjects += [Subject(f"{MODEL_DIR}/{rel}", sha) for rel, sha in files.items()]
    dvc_yaml = result.workspace / "dvc.yaml"
    stages = yaml.safe_load(dvc_yaml.read_text("utf-8")).get("stages", {})
    dataset_dep: dict[str, Any] = {
        "name": "dataset",
        "uri": dataset_uri,
        "digest": {"sha256": dataset_sha256},
        "annotations": {"commit": dataset_commit},
    }
    if _COMMIT.match(dataset_commit):
        dataset_dep["digest"]["gitCommit"] = dataset_commit
    dependencies = [dataset_dep]
    dependencies += [
        {"name": rel, "uri": f"file:{rel}", "digest": {"sha256": sha}}
        for rel, sha in sorted(result.code_digests.items())
    ]
    dependencies.append(
        {"name": "dvc.yaml", "uri": "file:dvc.yaml", "digest": {"sha256": sha256_file(dvc_yaml)}}
    )
    metrics_bytes = (result.workspace / METRICS_FILE).read_bytes()
    predicate = {
        "buildDefinition": {
            "buildType": BUILD_TYPE,
            "externalParameters": {"params": result.params, "stages": stages},
            "internalParameters": {
                "dvcLock": result.dvc_lock,
                "python": sys.version.split()[0],
            },
            "resolvedDependencies": dependencies,
        },
        "runDetails": {
            "builder": {"id": builder_id},
            "metadata": {
                "invocationId": invocation_id,
                "startedOn": result.started_at,
                "finishedOn": result.finished_at,
            },
            "byproducts": [
                {
                    "name": METRICS_FILE,
                    "digest": {"sha256": sha256_bytes(metrics_bytes)},
                    "annotations": result.metrics,
                }
            ],
        },
    }
    return make_statement(subjects, PREDICATE_SLSA_PROVENANCE, predicate)


# --- CLI for the dvc stages ----------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m secmlops.controls.training {train,evaluate}``: the commands dvc.yaml runs."""
    parser = argparse.ArgumentParser(
        prog="python -m secmlops.controls.training", description=__doc__.splitlines()[0]
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


# --- Prefect -------------------------------------------------------------------------------

if __name__ == "__main__":
    # The dvc stages run this module as a script; stop before importing Prefect (~3 s each).
    sys.exit(main())
