"""SecMLOps: security controls for ML pipelines, each leaving signed, verifiable evidence.

The library behind the ``secmlops`` command and the Prefect flows of SecMLOps Pipelines. It
imports neither Prefect nor DVC nor pandas until a control that needs them runs, so a verify
step in CI, an init container or an admission hook pays only for what it checks.

The public API is what this module lists in ``__all__``; everything else (``_internal``, the
modules behind these names) may change between releases. Names load on first use.

Example::

    from pathlib import Path
    import secmlops

    secmlops.scan_model_files(Path("model"))                       # ControlRefused if unsafe
    secmlops.verify_model_signature(
        Path("model"), signature=Path("model.sig"), public_key=Path("signer.pub")
    )
    models = secmlops.ModelRegistry(secmlops.open_registry("s3://bucket/models"), "churn")
    pointer, report = secmlops.verify_stage(
        models, "production", keys=secmlops.KeyDirectory(Path("keys"))
    )

Errors: every failure is a :class:`SecMLOpsError`; :class:`ControlRefused` (a control said
no, with a ``reason``), :class:`InputError` (bad input) and :class:`ToolError` (a tool or
service broke; never a pass) map to the CLI's exit codes 1, 2 and 3.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from secmlops.errors import (
    ControlRefused,
    InputError,
    RefusalReason,
    SecMLOpsError,
    ToolError,
)

__version__ = "0.1.0"

# name -> module that defines it; loaded on first attribute access (PEP 562).
_LAZY: dict[str, str] = {
    # settings
    "Settings": "secmlops.settings",
    "current_settings": "secmlops.settings",
    # controls
    "pull_dataset": "secmlops.controls.data",
    "validate_dataset": "secmlops.controls.validation",
    "ScanPolicy": "secmlops.controls.image_scan",
    "scan_image": "secmlops.controls.image_scan",
    "evaluate_scan_policy": "secmlops.controls.image_scan",
    "enforce_scan_policy": "secmlops.controls.image_scan",
    "ModelScanPolicy": "secmlops.controls.model_scan",
    "scan_model_files": "secmlops.controls.model_scan",
    "sign_model": "secmlops.controls.signing",
    "verify_model_signature": "secmlops.controls.signing",
    "train_with_dvc": "secmlops.controls.training",
    # evidence and keys
    "KeyDirectory": "secmlops.evidence.keys",
    "verify_bundle": "secmlops.evidence.statements",
    # registry, gate, operations, report
    "open_registry": "secmlops.registry.stores",
    "ModelRegistry": "secmlops.registry.models",
    "GatePolicy": "secmlops.gate",
    "verify_release": "secmlops.gate",
    "load_gate_policy": "secmlops.policy",
    "promote_version": "secmlops.operations",
    "rollback_version": "secmlops.operations",
    "verify_stage": "secmlops.operations",
    "evidence_report": "secmlops.report",
    "fetch": "secmlops.consume",
}

__all__ = [
    "ControlRefused",
    "GatePolicy",
    "InputError",
    "KeyDirectory",
    "ModelRegistry",
    "ModelScanPolicy",
    "RefusalReason",
    "ScanPolicy",
    "SecMLOpsError",
    "Settings",
    "ToolError",
    "__version__",
    "current_settings",
    "enforce_scan_policy",
    "evaluate_scan_policy",
    "evidence_report",
    "fetch",
    "load_gate_policy",
    "open_registry",
    "promote_version",
    "pull_dataset",
    "rollback_version",
    "scan_image",
    "scan_model_files",
    "sign_model",
    "train_with_dvc",
    "validate_dataset",
    "verify_bundle",
    "verify_model_signature",
    "verify_release",
    "verify_stage",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'secmlops' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:  # the names the lazy loader serves, for type checkers and IDEs
    from secmlops.consume import fetch
    from secmlops.controls.data import pull_dataset
    from secmlops.controls.image_scan import (
        ScanPolicy,
        enforce_scan_policy,
        evaluate_scan_policy,
        scan_image,
    )
    from secmlops.controls.model_scan import ModelScanPolicy, scan_model_files
    from secmlops.controls.signing import sign_model, verify_model_signature
    from secmlops.controls.training import train_with_dvc
    from secmlops.controls.validation import validate_dataset
    from secmlops.evidence.keys import KeyDirectory
    from secmlops.evidence.statements import verify_bundle
    from secmlops.gate import GatePolicy, verify_release
    from secmlops.operations import promote_version, rollback_version, verify_stage
    from secmlops.policy import load_gate_policy
    from secmlops.registry.models import ModelRegistry
    from secmlops.registry.stores import open_registry
    from secmlops.report import evidence_report
    from secmlops.settings import Settings, current_settings
