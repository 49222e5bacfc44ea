"""Train and evaluate with ``dvc repro``, enforce the evaluation gate, describe the build.

The ML stages are the project's own code (``ml/stages.py`` in the demo), declared in its
``dvc.yaml`` + ``params.yaml``. This module knows nothing about the model: it copies
dvc.yaml, params.yaml, the dataset and the code each stage lists in its ``deps`` into a
fresh workspace (so a run never reuses a stale cache or someone else's outputs), runs the
real ``dvc`` binary there, and refuses a model whose ``metrics.json`` misses a
``min_*``/``max_*`` threshold of the ``evaluate`` section. :func:`provenance_statement`
describes the run as SLSA Provenance v1, binding the model digest to the dataset digest and
the sha256 of every code file the stages depend on (read from dvc.yaml, not a fixed list),
and recording the run: every flow-run parameter and the site entries they selected
(``externalParameters``, which the deploy gate compares with the site's expected values),
and the flow run itself (``internalParameters.run``: ids, deployment, work pool, who
started it, which worker).

The stages import only the code copied into the workspace (``PYTHONPATH`` is the
workspace), so the code whose digest the provenance records is the code that ran: a stage
importing project code its ``deps`` do not list fails instead of running unrecorded.

Example::

    result = train_with_dvc(Path("data.csv"), workspace=Path("run/ws"), project_dir=Path("."))
    statement = provenance_statement(result, dataset_sha256=..., dataset_uri=...,
                                     dataset_commit=..., builder_id=..., invocation_id=...,
                                     parameters=run_parameters, run=RunRecord(...),
                                     sources=RunSources(...))
"""

from __future__ import annotations

import json
import math
import posixpath
import re
import shutil
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from secmlops._internal.digests import sha256_bytes, sha256_file, tree_digest, tree_files
from secmlops._internal.toolrun import resolve_binary, run_tool
from secmlops.errors import ControlRefused, InputError, RefusalReason, ToolError
from secmlops.evidence.predicates import (
    DatasetSelection,
    ImageSelection,
    ProvenancePredicate,
    RegistrySelection,
    RunRecord,
    RunSources,
    dump_predicate,
)
from secmlops.evidence.statements import PREDICATE_SLSA_PROVENANCE, Subject, make_statement, utc_now
from secmlops.site import redact_url

#: v2: ``externalParameters`` also hold the run's ``parameters`` and the ``sources`` they
#: selected, ``internalParameters`` the ``run``.
BUILD_TYPE = "https://secmlops.dev/buildtypes/dvc-repro/v2"
#: Provenance written before run parameters were recorded (the gate refuses it).
BUILD_TYPE_V1 = "https://secmlops.dev/buildtypes/dvc-repro/v1"
DATASET_PATH = "data/dataset.csv"
MODEL_DIR = "model"
METRICS_FILE = "metrics.json"
#: Files the workspace always gets; recorded in the provenance on their own.
PROJECT_FILES = ("dvc.yaml", "params.yaml")
_COMMIT = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")
# Bytecode caches are build litter, not code: neither copied into the workspace nor hashed.
_NOT_CODE = shutil.ignore_patterns("__pycache__", "*.pyc")


class TrainingRefusal(RefusalReason):
    """Why the evaluation gate refused a trained model."""

    METRIC_MISSING = "metric_missing"
    METRIC_BELOW_THRESHOLD = "metric_below_threshold"
    METRIC_ABOVE_THRESHOLD = "metric_above_threshold"


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


def dataset_columns(params: Mapping[str, Any]) -> dict[str, tuple[str, ...]]:
    """The dataset columns params.yaml ``train`` names: ``{field: columns}``.

    By convention ``train.label`` names the label column and every ``train.*features`` key
    lists feature columns; other keys are the model's own. A fork that names its columns
    otherwise gets no early column check (its train stage still checks them).
    """
    train = params.get("train")
    if not isinstance(train, Mapping):
        return {}
    fields: dict[str, tuple[str, ...]] = {}
    for key, value in train.items():
        if key == "label":
            if not isinstance(value, str) or not value:
                raise InputError(
                    "train.label must name the label column", where="params.yaml train.label"
                )
            fields["train.label"] = (value,)
        elif isinstance(key, str) and key.endswith("features"):
            if (
                not isinstance(value, list | tuple)
                or not value
                or not all(isinstance(v, str) for v in value)
            ):
                raise InputError(
                    f"train.{key} must be a list of column names", where=f"params.yaml train.{key}"
                )
            fields[f"train.{key}"] = tuple(value)
    return fields


# --- the evaluation gate -------------------------------------------------------------------


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


@dataclass(frozen=True)
class MetricCheck:
    """One threshold of the evaluation gate against the metric it names."""

    threshold: str  # the params.yaml key, e.g. "min_accuracy"
    metric: str
    limit: float
    value: Any
    #: ``None`` when the metric is within its threshold.
    refusal: TrainingRefusal | None

    @property
    def passed(self) -> bool:
        return self.refusal is None

    def describe(self) -> str:
        if self.refusal is TrainingRefusal.METRIC_MISSING:
            return (
                f"{self.metric} is missing or not a number ({self.value!r}); "
                f"{self.threshold} = {self.limit:g}"
            )
        side = "below" if self.threshold.startswith("min_") else "above"
        state = side if self.refusal is not None else "within"
        return f"{self.metric} = {self.value:.4f} is {state} {self.threshold} = {self.limit:g}"

    def to_json(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "metric": self.metric,
            "limit": self.limit,
            "value": self.value,
            "passed": self.passed,
            "reason": self.refusal.value if self.refusal else None,
        }


def evaluate_gate(metrics: Mapping[str, Any], params: Mapping[str, Any]) -> list[MetricCheck]:
    """Check every ``evaluate`` threshold against ``metrics`` (sorted by threshold name)."""
    checks: list[MetricCheck] = []
    for key, (metric, limit) in sorted(thresholds(params).items()):
        value = metrics.get(metric)
        refusal: TrainingRefusal | None = None
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            refusal = TrainingRefusal.METRIC_MISSING
        elif key.startswith("min_") and value < limit:
            refusal = TrainingRefusal.METRIC_BELOW_THRESHOLD
        elif key.startswith("max_") and value > limit:
            refusal = TrainingRefusal.METRIC_ABOVE_THRESHOLD
        checks.append(MetricCheck(key, metric, limit, value, refusal))
    return checks


def check_gate(metrics: Mapping[str, Any], params: Mapping[str, Any]) -> list[MetricCheck]:
    """Enforce the gate: ``ControlRefused`` naming every metric outside its threshold.

    The error's ``reason`` is that of the first failing check (by threshold name), its
    ``result`` every check. Returns the checks when all pass.
    """
    checks = evaluate_gate(metrics, params)
    failures = [c for c in checks if not c.passed]
    if failures:
        raise ControlRefused(
            "evaluation gate refused the model: " + "; ".join(c.describe() for c in failures),
            where="evaluate",
            fix="improve the model or data; lower a threshold only with a reviewed params change",
            details={"metrics": dict(metrics), "thresholds": dict(params["evaluate"])},
            reason=failures[0].refusal,
            result=checks,
        )
    return checks


# --- what the stages depend on -------------------------------------------------------------


def _stage_path(entry: Any, where: str) -> str:
    """A dvc.yaml path entry (``"path"`` or ``{"path": {...}}``), normalised and checked."""
    if isinstance(entry, Mapping) and len(entry) == 1:
        entry = next(iter(entry))
    if not isinstance(entry, str) or not entry.strip():
        raise InputError(f"{where} holds {entry!r}, not a path", where=f"dvc.yaml {where}")
    path = PurePosixPath(entry.strip())
    if path.is_absolute() or ".." in path.parts or posixpath.normpath(path.as_posix()) == ".":
        raise InputError(
            f"{where} names {entry!r}, which is not inside the project",
            where=f"dvc.yaml {where}",
            fix="list paths relative to the project root, without '..'",
        )
    return posixpath.normpath(path.as_posix())


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder + "/")


def stage_code_dependencies(project_dir: Path) -> list[str]:
    """The project paths (files or folders) the dvc.yaml stages depend on, sorted.

    Every stage's ``deps`` except the dataset (recorded on its own), dvc.yaml/params.yaml,
    and what another stage produces (its ``outs``, ``metrics``, ``plots``). ``InputError``
    names the stage and path for a dvc.yaml that cannot be read, a path outside the project,
    or a dependency the project does not hold.
    """
    dvc_yaml = project_dir / "dvc.yaml"
    try:
        document = yaml.safe_load(dvc_yaml.read_text("utf-8"))
    except OSError as exc:
        raise InputError(f"cannot read {dvc_yaml}: {exc}", where=str(dvc_yaml)) from exc
    except yaml.YAMLError as exc:
        raise InputError(f"{dvc_yaml} is not valid YAML: {exc}", where=str(dvc_yaml)) from exc
    stages = document.get("stages") if isinstance(document, dict) else None
    if not isinstance(stages, dict) or not stages:
        raise InputError(f"{dvc_yaml} defines no stages", where=f"{dvc_yaml}:stages")
    produced: set[str] = set()
    declared: dict[str, str] = {}  # path -> the first stage that lists it
    for name, stage in stages.items():
        where = f"stages.{name}"
        if not isinstance(stage, dict):
            raise InputError(f"{where} is not a mapping", where=f"dvc.yaml {where}")
        if "foreach" in stage or "matrix" in stage or stage.get("wdir", ".") != ".":
            # Their deps are templated or relative to another folder: we could not tell
            # which files ran, and provenance must not guess.
            raise InputError(
                f"{where} uses foreach/matrix/wdir, which the provenance cannot follow",
                where=f"dvc.yaml {where}",
                fix="write each stage out in full, run from the project root",
            )
        for key in ("outs", "metrics", "plots"):
            for entry in stage.get(key) or []:
                produced.add(_stage_path(entry, f"{where}.{key}"))
        deps = stage.get("deps") or []
        if not isinstance(deps, list):
            raise InputError(f"{where}.deps must be a list", where=f"dvc.yaml {where}.deps")
        for entry in deps:
            declared.setdefault(_stage_path(entry, f"{where}.deps"), name)
    code: list[str] = []
    for path, stage_name in sorted(declared.items()):
        if (
            path in PROJECT_FILES
            or _inside(DATASET_PATH, path)
            or any(_inside(path, out) for out in produced)
        ):
            continue
        source = project_dir / path
        if source.is_symlink() or not (source.is_file() or source.is_dir()):
            raise InputError(
                f"stage {stage_name!r} depends on {path}, which {project_dir} does not hold "
                "(or is a symlink)",
                where=f"dvc.yaml stages.{stage_name}.deps",
                fix="fix the path in dvc.yaml, or add the file to the project",
            )
        code.append(path)
    return code


def _copy_code(project_dir: Path, deps: list[str], workspace: Path) -> dict[str, str]:
    """Copy the stages' code into the workspace; ``{path: sha256}`` of the copies, per file."""
    digests: dict[str, str] = {}
    for rel in deps:
        source, target = project_dir / rel, workspace / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            # symlinks=True keeps a link a link, so tree_files refuses it below.
            shutil.copytree(source, target, symlinks=True, ignore=_NOT_CODE, dirs_exist_ok=True)
            digests.update({f"{rel}/{sub}": sha for sub, sha in tree_files(target).items()})
        else:
            shutil.copyfile(source, target)
            digests[rel] = sha256_file(target)
    return digests


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


def _prepare_workspace(workspace: Path) -> None:
    if workspace.exists() and (not workspace.is_dir() or any(workspace.iterdir())):
        raise InputError(
            f"training workspace {workspace} already exists and is not empty",
            where=str(workspace),
            fix="pass a fresh directory; every run trains in its own workspace",
        )
    workspace.mkdir(parents=True, exist_ok=True)


def _check_columns(dataset: Path, params: Mapping[str, Any]) -> None:
    """Name missing columns now, as bad input, rather than as a failed dvc stage later."""
    import pandas as pd

    fields = dataset_columns(params)
    if is_parquet(dataset):
        import pyarrow.parquet as pq

        try:
            columns = set(pq.read_schema(dataset).names)
        except (OSError, ValueError) as exc:  # pyarrow.ArrowInvalid is a ValueError
            raise InputError(
                f"dataset {dataset} is not a readable Parquet file: {exc}", where=str(dataset)
            ) from exc
    else:
        try:
            columns = set(pd.read_csv(dataset, nrows=0).columns)
        except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as exc:
            raise InputError(
                f"dataset {dataset} is not a readable CSV: {exc}", where=str(dataset)
            ) from exc
    missing = {
        field: [c for c in names if c not in columns]
        for field, names in fields.items()
        if any(c not in columns for c in names)
    }
    if missing:
        named = "; ".join(f"{cols} ({field})" for field, cols in missing.items())
        raise InputError(
            f"dataset {dataset} lacks column(s) that params.yaml uses: {named}",
            where=str(dataset),
            fix="fix the dataset, or the feature lists / label in params.yaml",
        )


def is_parquet(dataset: Path) -> bool:
    """A Parquet dataset (by its ``.parquet`` or ``.pq`` name, as validation reads it);
    anything else is read as CSV."""
    return dataset.suffix.lower() in (".parquet", ".pq")


def _stage_dataset(dataset: Path, dest: Path) -> None:
    """The dataset as the stages read it (``data/dataset.csv``): a CSV is copied byte for byte;
    a Parquet dataset is written out as CSV (deterministic: pandas' writer, no index), so the
    user's stages need not read Parquet. Provenance names the dataset as pulled/validated."""
    if not is_parquet(dataset):
        shutil.copyfile(dataset, dest)
        return
    import pandas as pd

    try:
        frame = pd.read_parquet(dataset)
    except (OSError, ValueError) as exc:
        raise InputError(
            f"dataset {dataset} is not a readable Parquet file: {exc}", where=str(dataset)
        ) from exc
    frame.to_csv(dest, index=False, lineterminator="\n")


def train_with_dvc(
    dataset: Path, *, workspace: Path, project_dir: Path, timeout: float = 600
) -> TrainingResult:
    """Run ``dvc repro`` (train + evaluate) in a fresh workspace and enforce the gate.

    Copies ``project_dir``'s dvc.yaml, params.yaml and the code its stages list in ``deps``
    into ``workspace``, the dataset to data/dataset.csv (a Parquet one written as CSV), then
    runs the real dvc binary with only that code importable. ``ToolError`` if dvc or a stage
    fails, ``InputError`` for a missing/bad input, ``ControlRefused`` (reason
    :class:`TrainingRefusal`) if a metric misses its threshold (the error names metric,
    value and threshold; the model stays in the workspace).
    """
    for name in PROJECT_FILES:
        if not (project_dir / name).is_file():
            raise InputError(
                f"{project_dir / name} does not exist",
                where=str(project_dir / name),
                fix="run from the project root (it holds dvc.yaml and params.yaml)",
            )
    if not dataset.is_file():
        raise InputError(f"dataset {dataset} does not exist", where=str(dataset))
    params = load_params(project_dir / "params.yaml")
    thresholds(params)  # refuse an empty gate before spending minutes training
    _check_columns(dataset, params)
    code_deps = stage_code_dependencies(project_dir)

    workspace = workspace.resolve()
    _prepare_workspace(workspace)
    for name in PROJECT_FILES:
        shutil.copyfile(project_dir / name, workspace / name)
    (workspace / "data").mkdir()
    _stage_dataset(dataset, workspace / DATASET_PATH)
    code_digests = _copy_code(project_dir, code_deps, workspace)

    dvc = resolve_binary("dvc", "SECMLOPS_DVC")
    # The stages import the copies just hashed, nothing else from the project; no bytecode
    # caches appear next to them (dvc would hash those too).
    env = {
        "DVC_NO_ANALYTICS": "1",
        "PYTHONPATH": str(workspace),
        "PYTHONDONTWRITEBYTECODE": "1",
    }
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
        dataset_sha256=sha256_file(dataset),  # the file given, before a Parquet one is staged
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


def redact_parameters(parameters: Mapping[str, Any]) -> dict[str, Any]:
    """``parameters`` with userinfo stripped from every URL in every string (nested too)."""

    def redact(value: Any) -> Any:
        if isinstance(value, str):
            return redact_url(value)
        if isinstance(value, Mapping):
            return {str(k): redact(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [redact(v) for v in value]
        return value

    return {str(name): redact(value) for name, value in parameters.items()}


def _redacted_sources(sources: RunSources) -> RunSources:
    return sources.model_copy(
        update={
            "dataset": sources.dataset.model_copy(
                update={"repo": redact_url(sources.dataset.repo)}
            ),
            "image": sources.image.model_copy(update={"target": redact_url(sources.image.target)}),
            "registry": sources.registry.model_copy(
                update={"uri": redact_url(sources.registry.uri)}
            ),
        }
    )


def provenance_statement(
    result: TrainingResult,
    *,
    dataset_sha256: str,
    dataset_uri: str,
    dataset_commit: str,
    builder_id: str,
    invocation_id: str,
    parameters: Mapping[str, Any],
    run: RunRecord,
    sources: RunSources,
    trained_on: tuple[str, str] | None = None,
) -> dict[str, Any]:
    """SLSA Provenance v1 for the training run: the model made from this data by this code,
    by this run.

    ``parameters`` are every flow-run parameter as the run received them and ``sources`` the
    site entries they selected, resolved (``externalParameters.parameters``/``.sources``);
    ``run`` is the flow run (``internalParameters.run``). Secrets in URLs are redacted.
    ``invocation_id`` should be the flow-run id (``runDetails.metadata.invocationId``).

    ``dataset_sha256`` must be the digest of the dataset that was trained on, and
    ``sources.dataset.commit`` the commit it was pulled at (``InputError`` otherwise), so
    provenance cannot bind the model to data it never saw. When a quarantine policy set rows
    aside, ``trained_on`` is ``(name, sha256)`` of the clean file training got: it must be
    the one trained on, and is recorded as a second dependency (``training-data``) beside the
    pulled dataset.
    """
    trained_sha = trained_on[1] if trained_on else dataset_sha256
    if trained_sha != result.dataset_sha256:
        raise InputError(
            f"dataset digest {trained_sha[:16]}… is not the one trained on "
            f"({result.dataset_sha256[:16]}…)",
            where="provenance",
            fix="pass the sha256 of the dataset file given to train_with_dvc",
        )
    if sources.dataset.commit != dataset_commit:
        raise InputError(
            f"sources.dataset.commit {sources.dataset.commit[:12]}… is not the commit the "
            f"dataset was pulled at ({dataset_commit[:12]}…)",
            where="provenance",
            fix="record the selected dataset entry as pulled (DataPull.commit)",
        )
    files = tree_files(result.model_dir)
    subjects = [Subject("model", tree_digest(result.model_dir))]
    subjects += [Subject(f"{MODEL_DIR}/{rel}", sha) for rel, sha in files.items()]
    dvc_yaml = result.workspace / "dvc.yaml"
    stages = yaml.safe_load(dvc_yaml.read_text("utf-8")).get("stages", {})
    dataset_dep: dict[str, Any] = {
        "name": "dataset",
        "uri": redact_url(dataset_uri),
        "digest": {"sha256": dataset_sha256},
        "annotations": {"commit": dataset_commit},
    }
    if _COMMIT.fullmatch(dataset_commit):
        dataset_dep["digest"]["gitCommit"] = dataset_commit
    dependencies = [dataset_dep]
    if trained_on is not None:
        dependencies.append(
            {
                "name": "training-data",
                "uri": f"file:{trained_on[0]}",
                "digest": {"sha256": trained_on[1]},
                "annotations": {"quarantined": True},
            }
        )
    dependencies += [
        {"name": rel, "uri": f"file:{rel}", "digest": {"sha256": sha}}
        for rel, sha in sorted(result.code_digests.items())
    ]
    dependencies += [
        {
            "name": name,
            "uri": f"file:{name}",
            "digest": {"sha256": sha256_file(result.workspace / name)},
        }
        for name in PROJECT_FILES
    ]
    metrics_bytes = (result.workspace / METRICS_FILE).read_bytes()
    predicate = {
        "buildDefinition": {
            "buildType": BUILD_TYPE,
            "externalParameters": {
                "params": result.params,
                "stages": stages,
                "parameters": redact_parameters(parameters),
                "sources": dump_predicate(_redacted_sources(sources)),
            },
            "internalParameters": {
                "dvcLock": result.dvc_lock,
                "python": sys.version.split()[0],
                # None stays null: "the server does not know who started it" is a record too.
                "run": dump_predicate(run),
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
    return make_statement(
        subjects,
        PREDICATE_SLSA_PROVENANCE,
        dump_predicate(ProvenancePredicate.model_validate(predicate), exclude_none=True),
    )


__all__ = [
    "BUILD_TYPE",
    "BUILD_TYPE_V1",
    "DATASET_PATH",
    "METRICS_FILE",
    "MODEL_DIR",
    "PROJECT_FILES",
    "DatasetSelection",
    "ImageSelection",
    "MetricCheck",
    "RegistrySelection",
    "RunRecord",
    "RunSources",
    "TrainingRefusal",
    "TrainingResult",
    "check_gate",
    "dataset_columns",
    "evaluate_gate",
    "load_params",
    "provenance_statement",
    "redact_parameters",
    "stage_code_dependencies",
    "thresholds",
    "train_with_dvc",
]
