"""What the model-file scan found: per-file :class:`FileScan`, the whole
:class:`ModelScanResult`, and :class:`ModelScanRefusal`, the reasons it can refuse.

Every problem is named twice: as a sentence for people (``FileScan.issues``) and as a stable
:class:`ModelScanRefusal` member for code and tests (``FileScan.reasons``,
``ModelScanResult.reasons``, ``ControlRefused.reason``).

Example::

    result = evaluate_model_files(Path("model"))
    if not result.passed:
        print(result.reason, [(f.path, f.reasons) for f in result.refused])
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from secmlops.controls.model_scan.policy import ModelScanPolicy
from secmlops.errors import RefusalReason


class ModelScanRefusal(RefusalReason):
    """Why the model-file scan refuses a file. Listed by precedence: when several apply, the
    first one listed here is the ``reason`` of the refusal (all are in ``result.reasons``)."""

    #: A pickle imports a callable that runs code or touches the system (``os.system``, ...).
    DANGEROUS_GLOBAL = "dangerous_global"
    #: A pickle whose opcodes cannot be read to the end, or that calls without a visible import.
    MALFORMED_PICKLE = "malformed_pickle"
    #: A pickle (a file, a zip member or a ``.npy`` object array) and the policy allows none.
    PICKLE = "pickle"
    #: A pickle imports a global not in ``unsafe_allow_pickle_globals``.
    UNLISTED_PICKLE_GLOBAL = "unlisted_pickle_global"
    #: A format that can carry code by design (HDF5/Keras Lambda layers).
    UNSAFE_FORMAT = "unsafe_format"
    #: A symlink in the model directory (only regular files may be there).
    SYMLINK = "symlink"
    #: A device, fifo or socket in the model directory.
    SPECIAL_FILE = "special_file"
    #: A file that resolves outside the model directory.
    OUTSIDE_MODEL_DIR = "outside_model_dir"
    #: The file name promises another format than the content has (``*.pkl`` holding JSON...).
    NAME_MISMATCH = "name_mismatch"
    #: Binary content the scanner does not recognise.
    UNKNOWN_FORMAT = "unknown_format"
    #: A recognised format the policy's ``allowed_formats`` does not list.
    FORMAT_NOT_ALLOWED = "format_not_allowed"
    #: A safetensors, ``.npy`` or zip file whose structure is broken.
    MALFORMED_FILE = "malformed_file"
    #: Over a limit of the scan: file or text size, zip members or zip nesting.
    LIMIT_EXCEEDED = "limit_exceeded"
    #: The model directory holds no files at all.
    EMPTY_MODEL = "empty_model"


@dataclass(frozen=True)
class Issue:
    """One reason to refuse a file or zip member: the code and the sentence."""

    reason: ModelScanRefusal
    message: str


Verdict = Literal["pass", "warn", "refused"]


@dataclass(frozen=True)
class FileScan:
    """The scan of one file."""

    path: str
    sha256: str | None
    size: int
    format: str
    verdict: Verdict
    issues: tuple[str, ...]
    pickle_globals: tuple[str, ...] = ()
    #: Why the file is refused, in the order found (empty when it passes).
    reasons: tuple[ModelScanRefusal, ...] = ()

    @classmethod
    def refused_for(
        cls, path: str, size: int, fmt: str, issue: Issue, sha256: str | None = None
    ) -> FileScan:
        """A file refused before its content was looked at (symlink, size, ...)."""
        return cls(path, sha256, size, fmt, "refused", (issue.message,), (), (issue.reason,))

    def to_json(self) -> dict[str, Any]:
        """The file's scan as recorded in the evidence."""
        return {
            "path": self.path,
            "sha256": self.sha256,
            "size": self.size,
            "format": self.format,
            "verdict": self.verdict,
            "issues": list(self.issues),
            "pickle_globals": list(self.pickle_globals),
        }


@dataclass(frozen=True)
class ModelScanResult:
    """The scan of a model directory: its digest, every file, and the verdict."""

    model_dir: Path
    model_digest: str
    files: tuple[FileScan, ...]
    policy: ModelScanPolicy

    @property
    def passed(self) -> bool:
        """True when there are files and none is refused."""
        return bool(self.files) and all(f.verdict != "refused" for f in self.files)

    @property
    def refused(self) -> tuple[FileScan, ...]:
        """The files that are refused."""
        return tuple(f for f in self.files if f.verdict == "refused")

    @property
    def reasons(self) -> tuple[ModelScanRefusal, ...]:
        """Every reason to refuse, each once, by precedence; empty when the scan passes."""
        if not self.files:
            return (ModelScanRefusal.EMPTY_MODEL,)
        found = {r for f in self.refused for r in f.reasons}
        return tuple(r for r in ModelScanRefusal if r in found)

    @property
    def reason(self) -> ModelScanRefusal | None:
        """The reason that takes precedence; ``None`` when the scan passes."""
        return ModelScanRefusal.first_of(self.reasons)

    def to_json(self) -> dict[str, Any]:
        """The result as recorded in the evidence and in a refusal's details."""
        return {
            "model_dir": str(self.model_dir),
            "model_digest": self.model_digest,
            "passed": self.passed,
            "files": [f.to_json() for f in self.files],
            "policy": self.policy.to_json(),
        }
