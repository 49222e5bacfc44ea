"""Load the gate policy (policy as code) from ``secmlops-policy.yaml``.

The file is read where the flow runs (the worker's checkout), never taken from flow-run
parameters: whoever can start a run in the UI must not be able to weaken a gate.
"""

from __future__ import annotations

from pathlib import Path

import pydantic
import yaml

from secmlops.errors import InputError
from secmlops.gate import GatePolicy
from secmlops.settings import POLICY_FILE, current_settings


def policy_path() -> Path:
    """``$SECMLOPS_POLICY``, else ``secmlops-policy.yaml`` in the project root."""
    return current_settings().policy_file


def load_gate_policy(path: Path | None = None) -> GatePolicy:
    """Parse and validate a policy file; ``InputError`` naming the file and field if bad."""
    path = path or policy_path()
    if not path.is_file():
        raise InputError(
            f"policy file {path} does not exist",
            where=str(path),
            fix=f"create {POLICY_FILE} in the project root (see the template's copy) "
            "or point SECMLOPS_POLICY at one",
        )
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise InputError(f"{path} is not valid YAML: {exc}", where=str(path)) from exc
    try:
        return GatePolicy.model_validate(raw)
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise InputError(
            f"{path}: {field}: {first['msg']}",
            where=f"{path}:{field}",
            fix="fix that field (unknown keys are refused; see docs/security-model.md)",
        ) from exc
