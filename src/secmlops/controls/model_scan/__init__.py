"""Scan model files for unsafe serialization before they are signed or deployed.

Loading a pickle runs code chosen by whoever wrote the file (``os.system`` via ``REDUCE`` is
the classic), and pickles hide in many containers: PyTorch ``.pt`` zips, joblib files,
``.npy`` object arrays. This scanner recognises formats by their *content* (magic bytes and
structure, :mod:`.formats`), walks pickle opcodes statically (it never unpickles,
:mod:`.pickle_analysis`), validates safetensors headers, and refuses anything that is not on
the policy's allow-list (:mod:`.policy`). A pickle is recognised leniently, the way
``pickle.loads`` reads it rather than the stricter :func:`pickletools.dis`: if a loader could
reach an import or a call before the stream breaks, it is a pickle. File names add refusals,
never passes: a file or zip member named like a pickle (``*.pkl``, ``*.pickle``,
``*.joblib``) must hold a pickle the policy allows. Zip members get the same rules as files.
Symlinks, special files and anything escaping the model directory are refused (:mod:`.walk`).

``evaluate_model_files`` returns a :class:`ModelScanResult` without raising for a policy
violation; ``enforce_model_scan`` (and ``scan_model_files``, which does both) raises
``ControlRefused`` whose ``reason`` is a :class:`ModelScanRefusal`.

Example::

    result = scan_model_files(Path("model"))          # raises ControlRefused if not clean
    statement = model_scan_statement(result)
"""

from __future__ import annotations

from secmlops.controls.model_scan.formats import PICKLE_SUFFIXES, TEXT_NAMES, TEXT_SUFFIXES
from secmlops.controls.model_scan.pickle_analysis import (
    DANGEROUS_BUILTINS,
    DANGEROUS_MODULES,
    is_dangerous_global,
    pickle_can_run_code,
    pickle_references,
)
from secmlops.controls.model_scan.policy import SAFE_FORMATS, Format, ModelScanPolicy
from secmlops.controls.model_scan.predicate import (
    SCANNER_NAME,
    SCANNER_VERSION,
    model_scan_statement,
)
from secmlops.controls.model_scan.result import (
    FileScan,
    ModelScanRefusal,
    ModelScanResult,
)
from secmlops.controls.model_scan.verdict import enforce_model_scan, scan_model_files
from secmlops.controls.model_scan.walk import evaluate_model_files

__all__ = [
    "DANGEROUS_BUILTINS",
    "DANGEROUS_MODULES",
    "PICKLE_SUFFIXES",
    "SAFE_FORMATS",
    "SCANNER_NAME",
    "SCANNER_VERSION",
    "TEXT_NAMES",
    "TEXT_SUFFIXES",
    "FileScan",
    "Format",
    "ModelScanPolicy",
    "ModelScanRefusal",
    "ModelScanResult",
    "enforce_model_scan",
    "evaluate_model_files",
    "is_dangerous_global",
    "model_scan_statement",
    "pickle_can_run_code",
    "pickle_references",
    "scan_model_files",
]
