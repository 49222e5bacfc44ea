"""The generic training runner's checks that need no dvc: the metric gate and its reasons,
the code dependencies read from dvc.yaml, the dataset columns params.yaml names."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from secmlops.controls.training import (
    TrainingRefusal,
    _check_columns,
    _copy_code,
    check_gate,
    dataset_columns,
    evaluate_gate,
    stage_code_dependencies,
    thresholds,
)
from secmlops.errors import ControlRefused, InputError

PROJECT = Path(__file__).resolve().parents[2]
PARAMS: dict[str, Any] = {
    "train": {"label": "y", "numeric_features": ["a"], "categorical_features": ["b"], "C": 1.0},
    "evaluate": {"min_accuracy": 0.7, "max_log_loss": 0.5},
}


def test_gate_passes_and_returns_every_check() -> None:
    checks = check_gate({"accuracy": 0.8, "log_loss": 0.4}, PARAMS)
    assert [(c.threshold, c.passed) for c in checks] == [
        ("max_log_loss", True),
        ("min_accuracy", True),
    ]


@pytest.mark.parametrize(
    ("metrics", "reason", "text"),
    [
        ({"accuracy": 0.6, "log_loss": 0.4}, TrainingRefusal.METRIC_BELOW_THRESHOLD, "below"),
        ({"accuracy": 0.8, "log_loss": 0.9}, TrainingRefusal.METRIC_ABOVE_THRESHOLD, "above"),
        ({"log_loss": 0.4}, TrainingRefusal.METRIC_MISSING, "missing"),
        ({"accuracy": True, "log_loss": 0.4}, TrainingRefusal.METRIC_MISSING, "not a number"),
        ({"accuracy": float("nan"), "log_loss": 0.4}, TrainingRefusal.METRIC_MISSING, "missing"),
    ],
)
def test_gate_refusals_carry_a_reason(
    metrics: dict[str, Any], reason: TrainingRefusal, text: str
) -> None:
    with pytest.raises(ControlRefused, match=text) as err:
        check_gate(metrics, PARAMS)
    assert err.value.reason is reason
    assert err.value.exit_code == 1
    failing = [c for c in err.value.result if not c.passed]
    assert len(failing) == 1 and failing[0].refusal is reason


def test_gate_names_every_failure_and_the_first_reason() -> None:
    with pytest.raises(ControlRefused) as err:
        check_gate({"accuracy": 0.1, "log_loss": 0.9}, PARAMS)
    assert "accuracy = 0.1000 is below" in str(err.value)
    assert "log_loss = 0.9000 is above" in str(err.value)
    assert err.value.reason is TrainingRefusal.METRIC_ABOVE_THRESHOLD  # max_log_loss sorts first
    assert [c.refusal for c in evaluate_gate({}, PARAMS)] == [TrainingRefusal.METRIC_MISSING] * 2


def test_a_gate_without_thresholds_is_refused() -> None:
    with pytest.raises(InputError, match="sets no thresholds"):
        thresholds({"evaluate": {"note": 1}})
    with pytest.raises(InputError, match=r"evaluate\.min_accuracy must be a number"):
        thresholds({"evaluate": {"min_accuracy": "high"}})


def test_dataset_columns_follow_the_params_convention(tmp_path: Path) -> None:
    assert dataset_columns(PARAMS) == {
        "train.label": ("y",),
        "train.numeric_features": ("a",),
        "train.categorical_features": ("b",),
    }
    with pytest.raises(InputError, match=r"train\.numeric_features must be a list"):
        dataset_columns({"train": {"numeric_features": "a"}})
    csv = tmp_path / "d.csv"
    csv.write_text("a,y\n1,0\n")
    with pytest.raises(InputError, match=r"\['b'\] \(train.categorical_features\)") as err:
        _check_columns(csv, PARAMS)
    assert err.value.where == str(csv)


def test_code_dependencies_are_read_from_dvc_yaml() -> None:
    # Not the dataset (recorded on its own), not the model (an output of train).
    assert stage_code_dependencies(PROJECT) == ["ml/model.py", "ml/stages.py"]


def _project(tmp_path: Path, deps: list[Any], **stage: Any) -> Path:
    project = tmp_path / "p"
    shutil.copytree(PROJECT / "ml", project / "ml", ignore=shutil.ignore_patterns("__pycache__"))
    (project / "ml" / "__pycache__").mkdir()
    (project / "ml" / "__pycache__" / "x.pyc").write_bytes(b"\0")
    document = {
        "stages": {
            "train": {"cmd": "true", "deps": ["data/dataset.csv", *deps], "outs": ["out"]},
            "report": {"cmd": "true", "deps": ["out/x", "data"], **stage},
        }
    }
    (project / "dvc.yaml").write_text(yaml.safe_dump(document))
    return project


def test_folder_dependencies_are_hashed_file_by_file(tmp_path: Path) -> None:
    project = _project(tmp_path, ["ml", "ml/model.py", "params.yaml"])
    deps = stage_code_dependencies(project)
    assert deps == ["ml", "ml/model.py"]
    workspace = tmp_path / "ws"
    digests = _copy_code(project, deps, workspace)
    assert set(digests) == {"ml/__init__.py", "ml/model.py", "ml/schema.py", "ml/stages.py"}
    assert not (workspace / "ml" / "__pycache__").exists()


@pytest.mark.parametrize(
    ("deps", "stage", "message"),
    [
        (["../secrets.py"], {}, "not inside the project"),
        (["/etc/passwd"], {}, "not inside the project"),
        (["."], {}, "not inside the project"),
        (["ml/missing.py"], {}, "depends on ml/missing.py"),
        ([{"a": 1, "b": 2}], {}, "not a path"),
        ([], {"wdir": "sub"}, "foreach/matrix/wdir"),
        ([], {"foreach": [1, 2]}, "foreach/matrix/wdir"),
    ],
)
def test_bad_dependencies_are_refused(
    tmp_path: Path, deps: list[Any], stage: dict[str, Any], message: str
) -> None:
    with pytest.raises(InputError, match=message) as err:
        stage_code_dependencies(_project(tmp_path, deps, **stage))
    assert "dvc.yaml" in (err.value.where or "")


def test_a_symlinked_dependency_is_refused(tmp_path: Path) -> None:
    project = _project(tmp_path, ["ml/link.py"])
    (project / "ml" / "link.py").symlink_to(project / "ml" / "model.py")
    with pytest.raises(InputError, match="symlink"):
        stage_code_dependencies(project)
