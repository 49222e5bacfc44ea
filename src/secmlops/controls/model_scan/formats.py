"""Recognise a blob's format by its content and collect what is wrong with it.

Formats are detected by magic bytes and structure, never by name: safetensors headers are
validated (:mod:`secmlops.formats.safetensors`), pickles are walked statically
(:mod:`.pickle_analysis`), ``.npy`` headers are parsed byte by byte (:func:`npy_finding`: a
plain numeric array of exactly the declared size passes, object arrays are pickles), and
every zip member (PyTorch ``.pt``, joblib/npz archives) is classified like a file. An
``.npz`` is a zip: refused unless the policy allows zip, and then only if every member
passes like a file would (for ``np.savez`` output: each a plain numeric ``.npy``). File
names add refusals, never passes (:func:`rule_issues`): a name like a pickle (``*.pkl``,
``*.pickle``, ``*.joblib``) must hold a pickle the policy allows.

Example::

    finding = classify(data, len(data), ModelScanPolicy(), depth=0)
    issues = rule_issues("weights.bin", finding, len(data), ModelScanPolicy())
"""

from __future__ import annotations

import io
import json
import math
import mmap
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from secmlops.controls.model_scan.npy import (
    NPY_MAGIC,
    NPY_PREFIX_BYTES,
    NpyHeaderError,
    npy_dtype_has_object,
    numeric_itemsize,
    read_npy_header,
)
from secmlops.controls.model_scan.pickle_analysis import (
    disassembles_cleanly,
    is_dangerous_global,
    pickle_can_run_code,
    pickle_references,
)
from secmlops.controls.model_scan.policy import ModelScanPolicy
from secmlops.controls.model_scan.result import Issue, ModelScanRefusal
from secmlops.errors import InputError
from secmlops.formats.safetensors import MAX_SAFETENSORS_HEADER_BYTES, read_safetensors_header

#: Text files a model directory may carry (model cards, licences).
TEXT_SUFFIXES = frozenset({".md", ".txt", ".rst"})
TEXT_NAMES = frozenset({"README", "LICENSE", "LICENCE", "NOTICE", "CHANGELOG"})
#: Names a loader unpickles whatever the bytes look like (``torch.load`` reads ``data.pkl``).
PICKLE_SUFFIXES = frozenset({".pkl", ".pickle", ".joblib", ".dill"})
_EXPECTED_BY_SUFFIX: dict[str, str] = {
    ".safetensors": "safetensors",
    ".json": "json",
    ".md": "text",
    ".txt": "text",
    ".rst": "text",
    ".npy": "npy",
    ".npz": "zip",
    ".zip": "zip",
    **{suffix: "pickle" for suffix in PICKLE_SUFFIXES},
}
_MAX_ZIP_DEPTH = 3
_MAX_ZIP_MEMBERS = 10_000

_R = ModelScanRefusal


@dataclass
class BlobFinding:
    """What content analysis found in one blob (a file or a zip member)."""

    format: str
    issues: list[Issue] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    pickle_globals: list[str] = field(default_factory=list)

    def refuse(self, reason: ModelScanRefusal, message: str) -> None:
        """Record one reason to refuse this blob."""
        self.issues.append(Issue(reason, message))


def analyse_pickle(data: bytes, policy: ModelScanPolicy, finding: BlobFinding) -> None:
    """Add a pickle's globals and its issues under ``policy`` to ``finding``."""
    refs, problems, _ = pickle_references(data)
    finding.pickle_globals.extend(refs)
    for problem in problems:
        finding.refuse(_R.MALFORMED_PICKLE, problem)
    dangerous = sorted({r for r in refs if is_dangerous_global(r)})
    if dangerous:
        finding.refuse(_R.DANGEROUS_GLOBAL, f"pickle imports dangerous callables {dangerous}")
    if not policy.unsafe_allow_pickle_globals:
        finding.refuse(
            _R.PICKLE, "pickle files execute code on load; use safetensors (any pickle is refused)"
        )
        return
    unlisted = sorted({r for r in refs if r not in policy.unsafe_allow_pickle_globals})
    if unlisted:
        finding.refuse(
            _R.UNLISTED_PICKLE_GLOBAL,
            f"pickle imports globals not in unsafe_allow_pickle_globals: {unlisted}",
        )
    elif not dangerous and not problems:
        finding.warnings.append("pickle allowed by unsafe_allow_pickle_globals")


def looks_like_safetensors(head: bytes, size: int) -> bool:
    """Whether the first bytes start a safetensors file (header length, then ``{``)."""
    if len(head) < 9:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    # A plausible header length and a JSON object after it: from here on it is safetensors,
    # and a length past the end of the file is reported as a malformed safetensors file.
    return 0 < n <= MAX_SAFETENSORS_HEADER_BYTES and head[8:9] == b"{" and size >= 9


def npy_finding(buf: bytes | mmap.mmap, size: int, policy: ModelScanPolicy) -> BlobFinding:
    """Judge a .npy file (``buf`` is the whole file, bytes or a read-only mmap).

    Passes only a plain numeric/bool array that ``np.load(..., allow_pickle=False)`` loads:
    a valid header (:func:`.npy.read_npy_header`), a dtype :func:`.npy.numeric_itemsize`
    accepts, and exactly ``product(shape) * itemsize`` bytes of data after the header (no
    more, no less). An object array (plain or a record with an object field) is a pickle
    after the header: refused, and the pickle is analysed. Other dtypes (strings, void,
    structured records, datetimes) are refused.
    """
    finding = BlobFinding("npy")
    try:
        header = read_npy_header(bytes(buf[:NPY_PREFIX_BYTES]))
        descr = header.descr
        itemsize = numeric_itemsize(descr)
        if itemsize is None and npy_dtype_has_object(descr):
            # Object arrays are stored as a pickle after the header (np.load allow_pickle).
            finding.refuse(_R.PICKLE, f".npy object array (dtype {descr!r}): its data is a pickle")
            analyse_pickle(bytes(buf[header.offset :]), policy, finding)
            return finding
    except NpyHeaderError as exc:
        finding.refuse(exc.reason, exc.message)
        return finding
    if itemsize is None:
        finding.refuse(
            _R.FORMAT_NOT_ALLOWED,
            f".npy dtype {descr!r} is not a plain numeric or bool dtype "
            "(strings, void, structured records and datetimes are refused)",
        )
        return finding
    expected = header.offset + math.prod(header.shape) * itemsize
    if size != expected:
        finding.refuse(
            _R.MALFORMED_FILE,
            f"malformed .npy file: {size} bytes, but its header ({header.offset} bytes) and "
            f"data {descr} shape {list(header.shape)} need exactly {expected}",
        )
        return finding
    # The data is not walked for a pickle: np.load(allow_pickle=False) never unpickles it
    # (as with safetensors tensor bytes), and real weights trip the lenient walker (an EXT
    # opcode byte counts as an import): 1 in 77 random float32 arrays, measured.
    return finding


def classify(data: bytes, size: int, policy: ModelScanPolicy, depth: int) -> BlobFinding:
    """Detect the format of ``data`` by content and collect its issues."""
    if data[:2] == b"PK" and data[2:4] in (b"\x03\x04", b"\x05\x06"):
        return _analyse_zip(data, policy, depth)
    if data[:6] == NPY_MAGIC:
        return npy_finding(data, size, policy)
    # Before safetensors: a blob that loads as code is a pickle whatever else it parses as.
    if pickle_can_run_code(data):
        finding = BlobFinding("pickle")
        analyse_pickle(data, policy, finding)
        return finding
    if looks_like_safetensors(data[:16], size):
        finding = BlobFinding("safetensors")
        try:
            read_safetensors_header(data, where="model scan")
        except InputError as exc:
            finding.refuse(_R.MALFORMED_FILE, exc.message)
        return finding
    # After safetensors: a header length can begin with the PROTO byte (0x80, 0x02..).
    if (data[:1] == b"\x80" and len(data) >= 2) or disassembles_cleanly(data):
        finding = BlobFinding("pickle")
        analyse_pickle(data, policy, finding)
        return finding
    if data[:8] == b"\x89HDF\r\n\x1a\n":
        finding = BlobFinding("hdf5")
        finding.refuse(_R.UNSAFE_FORMAT, "HDF5/Keras files can hold Lambda layers that run code")
        return finding
    if data[:4] == b"GGUF":
        return BlobFinding("gguf")
    if b"\x00" not in data:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            return _unknown()
        try:
            json.loads(text)
        except ValueError:
            return BlobFinding("text")
        return BlobFinding("json")
    return _unknown()


def _unknown() -> BlobFinding:
    finding = BlobFinding("unknown")
    finding.refuse(_R.UNKNOWN_FORMAT, "unrecognised binary content")
    return finding


def _analyse_zip(data: bytes, policy: ModelScanPolicy, depth: int) -> BlobFinding:
    """Classify every member of a zip (PyTorch .pt, joblib/npz archives hide pickles here)."""
    finding = BlobFinding("zip")
    if depth >= _MAX_ZIP_DEPTH:
        finding.refuse(_R.LIMIT_EXCEEDED, "zip nested too deeply to scan")
        return finding
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            members = archive.infolist()
            if len(members) > _MAX_ZIP_MEMBERS:
                finding.refuse(
                    _R.LIMIT_EXCEEDED, f"zip has {len(members)} members; too many to scan"
                )
                return finding
            for info in members:
                if info.is_dir():
                    continue
                if info.file_size > policy.max_file_bytes:
                    finding.refuse(
                        _R.LIMIT_EXCEEDED, f"zip member {info.filename} is too large to scan"
                    )
                    continue
                member = archive.read(info)
                inner = classify(member, len(member), policy, depth + 1)
                if inner.format == "pickle" or inner.pickle_globals:
                    finding.pickle_globals.extend(inner.pickle_globals)
                # A member gets the same name and policy rules as a file: torch.load
                # unpickles archive/data.pkl whatever its bytes look like.
                issues = rule_issues(info.filename, inner, len(member), policy)
                finding.issues.extend(
                    Issue(i.reason, f"{info.filename}: {i.message}") for i in issues
                )
                finding.warnings.extend(f"{info.filename}: {msg}" for msg in inner.warnings)
    except (
        zipfile.BadZipFile,
        zipfile.LargeZipFile,
        NotImplementedError,
        RuntimeError,
        OSError,
    ) as exc:
        finding.refuse(_R.MALFORMED_FILE, f"zip archive cannot be read: {exc}")
    return finding


def rule_issues(name: str, finding: BlobFinding, size: int, policy: ModelScanPolicy) -> list[Issue]:
    """Content issues plus the name and policy rules, applied alike to files and zip members."""
    issues = list(finding.issues)
    if finding.format in ("json", "text") and size > policy.max_text_bytes:
        issues.append(
            Issue(
                _R.LIMIT_EXCEEDED,
                f"{finding.format} file of {size} bytes exceeds max_text_bytes",
            )
        )
    if finding.format == "text" and not _is_text_name(name):
        issues.append(
            Issue(
                _R.NAME_MISMATCH,
                "text content in a file not named like a model card (README, *.md, *.txt)",
            )
        )
    suffix = PurePosixPath(name).suffix.lower()
    expected = _EXPECTED_BY_SUFFIX.get(suffix)
    if suffix in PICKLE_SUFFIXES and finding.format != "pickle":
        issues.append(
            Issue(
                _R.NAME_MISMATCH,
                f"file name says pickle ({suffix}): a loader unpickles it whatever the content "
                f"looks like (here {finding.format}), so it is refused",
            )
        )
    elif expected and expected != finding.format:
        issues.append(
            Issue(
                _R.NAME_MISMATCH,
                f"file name says {expected} but the content is {finding.format}",
            )
        )
    pickle_ok = finding.format == "pickle" and finding.warnings and not issues
    if finding.format not in policy.allowed_formats and not pickle_ok:
        issues.append(
            Issue(_R.FORMAT_NOT_ALLOWED, f"format {finding.format} is not allowed by policy")
        )
    return issues


def safetensors_header_only(head_and_header: bytes, size: int, rel: str) -> BlobFinding:
    """Validate a safetensors header against the real file size without reading the weights."""
    finding = BlobFinding("safetensors")
    try:
        read_safetensors_header(head_and_header, where=rel, file_size=size)
    except InputError as exc:
        finding.refuse(_R.MALFORMED_FILE, exc.message)
    return finding


def _is_text_name(rel: str) -> bool:
    path = PurePosixPath(rel)
    return path.suffix.lower() in TEXT_SUFFIXES or path.stem.upper() in TEXT_NAMES
