"""Walk a model directory and scan every entry, refusing what is not a regular file inside it.

Symlinks (to files or directories) are listed and refused, never followed; so are devices,
fifos, sockets and anything resolving outside the directory. Files over ``max_file_bytes``
are refused, not skipped. Large safetensors files are checked by their header alone, and
``.npy`` files through a read-only map (never read into memory whole).

Example::

    result = evaluate_model_files(Path("model"))       # never raises for a policy violation
    print(result.passed, result.reasons)
"""

from __future__ import annotations

import mmap
import os
import stat
import struct
from collections.abc import Iterator
from pathlib import Path

from secmlops._internal.digests import manifest_digest, sha256_file
from secmlops.controls.model_scan.formats import (
    classify,
    looks_like_safetensors,
    npy_finding,
    rule_issues,
    safetensors_header_only,
)
from secmlops.controls.model_scan.npy import NPY_MAGIC
from secmlops.controls.model_scan.pickle_analysis import pickle_can_run_code
from secmlops.controls.model_scan.policy import ModelScanPolicy
from secmlops.controls.model_scan.result import (
    FileScan,
    Issue,
    ModelScanRefusal,
    ModelScanResult,
    Verdict,
)
from secmlops.errors import InputError


def _walk(root: Path) -> Iterator[tuple[str, Path, os.stat_result]]:
    """Every non-directory entry below ``root``, symlinks included but never followed."""
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        base = Path(dirpath)
        for name in sorted(dirnames + filenames):
            path = base / name
            st = path.lstat()
            if not stat.S_ISDIR(st.st_mode):  # a symlink to a directory lands here too
                yield path.relative_to(root).as_posix(), path, st


def _scan_file(
    rel: str, path: Path, st: os.stat_result, root: Path, policy: ModelScanPolicy
) -> FileScan:
    if stat.S_ISLNK(st.st_mode):
        target = os.readlink(path)
        return FileScan.refused_for(
            rel,
            st.st_size,
            "symlink",
            Issue(
                ModelScanRefusal.SYMLINK,
                f"symlink to {target}: model directories may hold regular files only",
            ),
        )
    if not stat.S_ISREG(st.st_mode):
        return FileScan.refused_for(
            rel,
            st.st_size,
            "special",
            Issue(ModelScanRefusal.SPECIAL_FILE, "not a regular file (device, fifo or socket)"),
        )
    if not path.resolve().is_relative_to(root):
        return FileScan.refused_for(
            rel,
            st.st_size,
            "unknown",
            Issue(ModelScanRefusal.OUTSIDE_MODEL_DIR, "resolves outside the model directory"),
        )
    digest = sha256_file(path)
    if st.st_size > policy.max_file_bytes:
        return FileScan.refused_for(
            rel,
            st.st_size,
            "unknown",
            Issue(
                ModelScanRefusal.LIMIT_EXCEEDED,
                f"{st.st_size} bytes exceeds max_file_bytes {policy.max_file_bytes}",
            ),
            sha256=digest,
        )
    with path.open("rb") as fh:
        head = fh.read(16)
    if looks_like_safetensors(head, st.st_size) and not _file_can_run_code(path):
        # Read the header only: safetensors weights can be gigabytes and hold no code.
        with path.open("rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header_bytes = fh.read(n)
        finding = safetensors_header_only(head[:8] + header_bytes, st.st_size, rel)
    elif head[:6] == NPY_MAGIC:
        # Through a read-only map: a numeric array is judged by its header and size alone.
        with path.open("rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as view:
            finding = npy_finding(view, st.st_size, policy)
    else:
        finding = classify(path.read_bytes(), st.st_size, policy, depth=0)
    issues = rule_issues(rel, finding, st.st_size, policy)
    if issues:
        verdict: Verdict = "refused"
    else:
        verdict = "warn" if finding.warnings else "pass"
    messages = [i.message for i in issues]
    return FileScan(
        rel,
        digest,
        st.st_size,
        finding.format,
        verdict,
        tuple(dict.fromkeys(messages + finding.warnings)),
        tuple(dict.fromkeys(finding.pickle_globals)),
        tuple(dict.fromkeys(i.reason for i in issues)),
    )


def _file_can_run_code(path: Path) -> bool:
    """:func:`pickle_can_run_code` over a file without reading it into memory (a walk over
    real safetensors stops within its first bytes; a pickle polyglot does not)."""
    with path.open("rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as view:
        return pickle_can_run_code(view)


def evaluate_model_files(model_dir: Path, policy: ModelScanPolicy | None = None) -> ModelScanResult:
    """Scan every file below ``model_dir`` and return the result, without raising for a
    policy violation (see ``result.passed`` and ``result.reasons``).

    ``InputError`` if ``model_dir`` is not a directory (or is a symlink).
    """
    policy = policy or ModelScanPolicy()
    if model_dir.is_symlink() or not model_dir.is_dir():
        raise InputError(
            f"model directory {model_dir} does not exist or is a symlink",
            where=str(model_dir),
            fix="point the scan at the real directory holding the model files",
        )
    root = model_dir.resolve()
    files = tuple(_scan_file(rel, path, st, root, policy) for rel, path, st in _walk(root))
    manifest = {f.path: f.sha256 for f in files if f.sha256 is not None}
    return ModelScanResult(
        model_dir=model_dir, model_digest=manifest_digest(manifest), files=files, policy=policy
    )
