"""The model-file scan's evidence: an in-toto Statement of our own predicate type.

Subjects are the model (its tree digest) and each file; the predicate records the scanner,
the policy, every file's verdict and the overall verdict.

Example::

    statement = model_scan_statement(scan_model_files(Path("model")))
"""

from __future__ import annotations

from typing import Any

from secmlops.controls.model_scan.result import ModelScanResult
from secmlops.evidence.predicates import ModelScanPredicate, dump_predicate
from secmlops.evidence.statements import PREDICATE_MODEL_SCAN, Subject, make_statement

SCANNER_NAME = "secmlops-model-scan"
SCANNER_VERSION = "1.1.0"


def model_scan_statement(result: ModelScanResult) -> dict[str, Any]:
    """The in-toto Statement for a scan: subject ``model`` (tree digest) plus each file."""
    subjects = [Subject("model", result.model_digest)]
    subjects += [Subject(f"model/{f.path}", f.sha256) for f in result.files if f.sha256]
    predicate = {
        "scanner": {"name": SCANNER_NAME, "version": SCANNER_VERSION},
        "policy": result.policy.to_json(),
        "files": [f.to_json() for f in result.files],
        "verdict": "pass" if result.passed else "refused",
    }
    return make_statement(
        subjects, PREDICATE_MODEL_SCAN, dump_predicate(ModelScanPredicate.model_validate(predicate))
    )
