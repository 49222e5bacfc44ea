"""Enforce the model-file scan: refuse with a :class:`ModelScanRefusal`, or return the result.

Example::

    result = scan_model_files(Path("model"))          # raises ControlRefused if not clean
    # or, in two steps:
    result = enforce_model_scan(evaluate_model_files(Path("model"), policy))
"""

from __future__ import annotations

from pathlib import Path

from secmlops.controls.model_scan.policy import ModelScanPolicy
from secmlops.controls.model_scan.result import ModelScanRefusal, ModelScanResult
from secmlops.controls.model_scan.walk import evaluate_model_files
from secmlops.errors import ControlRefused


def enforce_model_scan(result: ModelScanResult) -> ModelScanResult:
    """Return ``result`` if every file passed; else raise ``ControlRefused``.

    The error carries ``reason`` (the :class:`ModelScanRefusal` that takes precedence; all of
    them are in ``result.reasons`` and ``details["reasons"]``), ``result``, and names each
    offending file and why; the per-file results are in ``details["files"]``.
    """
    if result.passed:
        return result
    details = {**result.to_json(), "reasons": [r.value for r in result.reasons]}
    if not result.files:
        raise ControlRefused(
            f"model directory {result.model_dir} holds no files",
            where=str(result.model_dir),
            fix="check the training stage wrote the model",
            details=details,
            reason=ModelScanRefusal.EMPTY_MODEL,
            result=result,
        )
    reasons = "; ".join(f"{f.path}: {', '.join(f.issues)}" for f in result.refused)
    raise ControlRefused(
        f"model scan refused {len(result.refused)} file(s): {reasons}",
        where=str(result.model_dir),
        fix="save the model as safetensors + JSON (ml.model); remove other files",
        details=details,
        reason=result.reason,
        result=result,
    )


def scan_model_files(model_dir: Path, policy: ModelScanPolicy | None = None) -> ModelScanResult:
    """Scan every file below ``model_dir``; return the result if clean, else raise.

    ``InputError`` if ``model_dir`` is not a directory (or is a symlink); ``ControlRefused``
    (with a :class:`ModelScanRefusal` reason) naming each offending file and why.
    """
    return enforce_model_scan(evaluate_model_files(model_dir, policy))
