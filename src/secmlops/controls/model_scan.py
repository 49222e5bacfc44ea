"""Scan model files for unsafe serialization before they are signed or deployed.

Loading a pickle runs code chosen by whoever wrote the file (``os.system`` via ``REDUCE`` is
the classic), and pickles hide in many containers: PyTorch ``.pt`` zips, joblib files,
``.npy`` object arrays. This scanner recognises formats by their *content* (magic bytes and
structure), walks pickle opcodes statically (it never unpickles), validates safetensors
headers, and refuses anything that is not on the policy's allow-list. A pickle is recognised
leniently, the way ``pickle.loads`` reads it rather than the stricter :func:`pickletools.dis`:
if a loader could reach an import or a call before the stream breaks, it is a pickle. File
names add refusals, never passes: a file or zip member named like a pickle (``*.pkl``,
``*.pickle``, ``*.joblib``) must hold a pickle the policy allows. Zip members get the same
rules as files. Symlinks, special files and anything escaping the model directory are refused.

Example::

    result = scan_model_files(Path("model"))          # raises ControlRefused if not clean
    statement = model_scan_statement(result)
"""

from __future__ import annotations

import io
import json
import logging
import mmap
import os
import pickletools
import stat
import struct
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from secmlops._internal.digests import manifest_digest, sha256_file
from secmlops.errors import ControlRefused, InputError
from secmlops.evidence.statements import PREDICATE_MODEL_SCAN, Subject, make_statement
from secmlops.formats.safetensors import MAX_SAFETENSORS_HEADER_BYTES, read_safetensors_header

log = logging.getLogger(__name__)

SCANNER_NAME = "secmlops-model-scan"
SCANNER_VERSION = "1.0.0"

#: Formats that carry data only; a policy may allow these and nothing else.
SAFE_FORMATS = frozenset({"safetensors", "json", "text", "npy", "zip"})
#: Every format the scanner can name.
Format = Literal["safetensors", "json", "text", "npy", "zip", "pickle", "hdf5", "gguf", "unknown"]

#: Module prefixes whose globals are refused in any pickle, whatever the policy says.
DANGEROUS_MODULES = frozenset(
    {
        "os",
        "posix",
        "nt",
        "posixpath",
        "ntpath",
        "subprocess",
        "sys",
        "socket",
        "shutil",
        "runpy",
        "importlib",
        "pty",
        "commands",
        "webbrowser",
        "ctypes",
        "multiprocessing",
        "code",
        "codeop",
        "pdb",
        "bdb",
        "pickle",
        "_pickle",
        "cPickle",
        "dill",
        "marshal",
        "shelve",
        "signal",
        "asyncio",
        "threading",
        "_thread",
        "tempfile",
        "pathlib",
        "glob",
        "http",
        "httplib",
        "urllib",
        "urllib2",
        "requests",
        "ftplib",
        "smtplib",
        "telnetlib",
        "xmlrpc",
        "paramiko",
        "platform",
        "pip",
        "setuptools",
        "distutils",
        "venv",
        "zipimport",
        "pkgutil",
        "types",
        "gc",
        "inspect",
        "operator",
        "functools",
    }
)
#: Builtins that can run code, reach the file system, or fetch arbitrary attributes.
DANGEROUS_BUILTINS = frozenset(
    {
        "eval",
        "exec",
        "execfile",
        "compile",
        "open",
        "file",
        "__import__",
        "getattr",
        "setattr",
        "delattr",
        "globals",
        "locals",
        "vars",
        "input",
        "breakpoint",
        "apply",
        "reload",
        "memoryview",
        "help",
        "exit",
        "quit",
    }
)
_BUILTIN_MODULES = frozenset({"builtins", "__builtin__", "__builtins__"})

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
    ".zip": "zip",
    **{suffix: "pickle" for suffix in PICKLE_SUFFIXES},
}
_MAX_ZIP_DEPTH = 3
_MAX_ZIP_MEMBERS = 10_000


def is_dangerous_global(ref: str) -> bool:
    """Whether a pickle global ``module.name`` can run code or touch the system."""
    module, _, name = ref.rpartition(".")
    root = module.split(".", 1)[0]
    if root in DANGEROUS_MODULES:
        return True
    if module in _BUILTIN_MODULES:
        return name in DANGEROUS_BUILTINS or name.startswith("_")
    # A reference we could not resolve statically is treated as hostile.
    return ref.startswith("<")


class ModelScanPolicy(BaseModel):
    """What a model directory may contain.

    By default only safetensors, JSON and small text files pass and any pickle is refused.
    ``unsafe_allow_pickle_globals`` lets pickles through whose every global import is on the
    list (e.g. ``collections.OrderedDict``); dangerous globals are refused regardless.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    allowed_formats: frozenset[str] = Field(
        default=frozenset({"safetensors", "json", "text"}),
        description="Formats (detected by content) that may appear in a model directory.",
    )
    max_file_bytes: int = Field(
        default=8 * 1024**3, gt=0, description="Larger files are refused, not skipped."
    )
    max_text_bytes: int = Field(
        default=1024**2, gt=0, description="Largest JSON or text file accepted."
    )
    unsafe_allow_pickle_globals: frozenset[str] = Field(
        default=frozenset(),
        description="Pickle globals (module.name) tolerated in pickles. Empty: no pickles.",
    )

    @field_validator("allowed_formats")
    @classmethod
    def _formats_are_safe(cls, value: frozenset[str]) -> frozenset[str]:
        if not value:
            raise ValueError("allowed_formats is empty: a model directory could hold nothing")
        unsafe = value - SAFE_FORMATS
        if unsafe:
            raise ValueError(
                f"allowed_formats may only name {sorted(SAFE_FORMATS)}; got {sorted(unsafe)} "
                "(pickles are allowed only through unsafe_allow_pickle_globals)"
            )
        return value

    @field_validator("unsafe_allow_pickle_globals")
    @classmethod
    def _globals_not_dangerous(cls, value: frozenset[str]) -> frozenset[str]:
        bad = sorted(g for g in value if "." not in g or is_dangerous_global(g))
        if bad:
            raise ValueError(f"these pickle globals can never be allowed: {bad}")
        if value:
            log.warning(
                "model scan policy allows pickles importing %s: loading them runs code",
                sorted(value),
            )
        return value

    def to_json(self) -> dict[str, Any]:
        return {
            "allowed_formats": sorted(self.allowed_formats),
            "max_file_bytes": self.max_file_bytes,
            "max_text_bytes": self.max_text_bytes,
            "unsafe_allow_pickle_globals": sorted(self.unsafe_allow_pickle_globals),
        }


@dataclass
class _Finding:
    """What content analysis found in one blob (a file or a zip member)."""

    format: str
    issues: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    pickle_globals: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class FileScan:
    """The scan of one file."""

    path: str
    sha256: str | None
    size: int
    format: str
    verdict: Literal["pass", "warn", "refused"]
    issues: tuple[str, ...]
    pickle_globals: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
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
        return bool(self.files) and all(f.verdict != "refused" for f in self.files)

    @property
    def refused(self) -> tuple[FileScan, ...]:
        return tuple(f for f in self.files if f.verdict == "refused")

    def to_json(self) -> dict[str, Any]:
        return {
            "model_dir": str(self.model_dir),
            "model_digest": self.model_digest,
            "passed": self.passed,
            "files": [f.to_json() for f in self.files],
            "policy": self.policy.to_json(),
        }


# --- pickle analysis -----------------------------------------------------------------------

_STRING_OPS = frozenset(
    {
        "SHORT_BINUNICODE",
        "BINUNICODE",
        "BINUNICODE8",
        "UNICODE",
        "STRING",
        "BINSTRING",
        "SHORT_BINSTRING",
    }
)
_MEMO_PUT = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})
_MEMO_GET = frozenset({"GET", "BINGET", "LONG_BINGET"})
_CALLS = frozenset({"REDUCE", "INST", "OBJ", "NEWOBJ", "NEWOBJ_EX", "BUILD"})


def pickle_references(data: bytes) -> tuple[list[str], list[str], int]:
    """Walk pickle opcodes (never executing them) and return (globals, problems, end offset).

    Globals are ``module.name`` strings from GLOBAL/INST and from STACK_GLOBAL, whose module
    and name are the last two strings pushed (followed through the memo). A STACK_GLOBAL whose
    arguments cannot be resolved, or the extension registry (EXT*), yields ``<unresolved>``.
    """
    globals_found: list[str] = []
    problems: list[str] = []
    recent: list[Any] = []  # values pushed, as far as a static walk can tell
    memo: dict[int, Any] = {}
    memo_next = 0
    end = 0
    calls = 0
    try:
        for opcode, arg, pos in pickletools.genops(io.BytesIO(data)):
            name = opcode.name
            end = pos if pos is not None else end
            if name in _STRING_OPS:
                recent.append(arg.decode("latin-1") if isinstance(arg, bytes) else str(arg))
            elif name in ("GLOBAL", "INST"):
                module, _, attr = str(arg).partition(" ")
                globals_found.append(f"{module}.{attr}")
                recent.append(None)
            elif name == "STACK_GLOBAL":
                if len(recent) >= 2 and isinstance(recent[-1], str) and isinstance(recent[-2], str):
                    globals_found.append(f"{recent[-2]}.{recent[-1]}")
                else:
                    globals_found.append("<unresolved STACK_GLOBAL>")
                recent.append(None)
            elif name in ("EXT1", "EXT2", "EXT4"):
                globals_found.append(f"<extension registry code {arg}>")
                recent.append(None)
            elif name in _MEMO_PUT:
                memo[arg if isinstance(arg, int) else -1] = recent[-1] if recent else None
            elif name == "MEMOIZE":
                memo[memo_next] = recent[-1] if recent else None
                memo_next += 1
            elif name in _MEMO_GET:
                recent.append(memo.get(arg) if isinstance(arg, int) else None)
            else:
                if name in _CALLS:
                    calls += 1
                recent.append(None)
            if name == "STOP":
                end = (pos or 0) + 1
    except (ValueError, EOFError, struct.error, UnicodeDecodeError) as exc:
        problems.append(f"pickle opcode stream is malformed ({exc}); refusing what cannot be read")
    if calls and not globals_found:
        problems.append(f"pickle makes {calls} call(s) without a visible import")
    return globals_found, problems, end


#: Opcodes that import or call: reaching one of these means loading the blob runs code.
_CODE_OPS = frozenset(
    {
        "GLOBAL",
        "STACK_GLOBAL",
        "INST",
        "OBJ",
        "REDUCE",
        "NEWOBJ",
        "NEWOBJ_EX",
        "BUILD",
        "EXT1",
        "EXT2",
        "EXT4",
    }
)
_OPCODES: dict[int, pickletools.OpcodeInfo] = {ord(op.code): op for op in pickletools.opcodes}
_COUNTED_ARGS: dict[int, tuple[int, bool]] = {  # length-prefixed args: (width, signed)
    pickletools.TAKEN_FROM_ARGUMENT1: (1, False),
    pickletools.TAKEN_FROM_ARGUMENT4: (4, True),
    pickletools.TAKEN_FROM_ARGUMENT4U: (4, False),
    pickletools.TAKEN_FROM_ARGUMENT8U: (8, False),
}
_MAX_CHECKED_LINE = 64 * 1024
_Buffer = bytes | mmap.mmap


def _parses_as_int(text: str) -> bool:
    # The C unpickler uses strtol(base 0) then int(base 0): accept anything either would.
    for base in (0, 10, 8):
        try:
            int(text, base)
        except ValueError:
            continue
        return True
    return False


def _importable_name(module: bytes, name: bytes) -> bool:
    """Whether ``find_class`` could resolve module/name (so loading imports something)."""
    try:
        mod, attr = module.decode("utf-8"), name.decode("utf-8")
    except UnicodeDecodeError:
        return False  # the unpickler decodes both as strict UTF-8 and would stop here
    return (
        all(part.isidentifier() for part in mod.split("."))
        and bool(attr)
        and not any(ch.isspace() for ch in attr)
    )


def _line_arg_ok(opname: str, lines: list[bytes | None]) -> bool:
    """Whether ``pickle.loads`` accepts a protocol-0 text argument. Only used to stop walking
    plain text (which would otherwise read as opcodes); errs towards accepting."""
    if any(line is None for line in lines):
        return True  # too long to check cheaply: assume the unpickler takes it
    first = (lines[0] or b"").decode("latin-1")
    try:
        if opname == "INT":
            return _parses_as_int(first)
        if opname == "LONG":
            return _parses_as_int(first.removesuffix("L"))
        if opname == "FLOAT":
            float(first)
        elif opname in ("GET", "PUT"):
            int(first, 10)
        elif opname == "STRING":
            return len(first) >= 2 and first[0] == first[-1] and first[0] in "'\""
        elif opname in ("GLOBAL", "INST"):
            return _importable_name(lines[0] or b"", lines[1] or b"")
    except ValueError:
        return False
    return True  # UNICODE, PERSID: any line


class _UnknownPickleArgumentError(Exception):
    """An opcode argument layout pickletools describes but this walker does not."""


def _skip_arg(data: _Buffer, pos: int, op: pickletools.OpcodeInfo) -> int | None:
    """The offset after ``op``'s argument at ``pos``, or None where the unpickler would stop."""
    arg, size = op.arg, len(data)
    if arg is None:
        return pos
    if arg.n >= 0:
        return pos + arg.n if pos + arg.n <= size else None
    if arg.n == pickletools.UP_TO_NEWLINE:
        lines: list[bytes | None] = []
        for _ in range(2 if arg.name == "stringnl_noescape_pair" else 1):
            newline = data.find(b"\n", pos)
            if newline < 0:
                return None
            lines.append(data[pos:newline] if newline - pos <= _MAX_CHECKED_LINE else None)
            pos = newline + 1
        return pos if _line_arg_ok(op.name, lines) else None
    if arg.n not in _COUNTED_ARGS:
        # An argument kind this code does not know (a newer Python): do not guess the length,
        # and do not let "cannot walk further" turn into "not a pickle" either.
        raise _UnknownPickleArgumentError(op.name)
    width, signed = _COUNTED_ARGS[arg.n]
    if pos + width > size:
        return None
    length = int.from_bytes(data[pos : pos + width], "little", signed=signed)
    end = pos + width + length
    return end if length >= 0 and end <= size else None


def pickle_can_run_code(data: _Buffer) -> bool:
    """Whether ``pickle.loads(data)`` could import or call something before it fails or stops.

    A static walk of the opcode stream (nothing is unpickled) that is as lenient as the C
    unpickler, not as strict as :func:`pickletools.dis`: a repeated memo slot, leftovers on
    the stack or an argument pickletools cannot decode do not end it. It ends where loading
    would fail too (unknown opcode, truncated argument, stack underflow, a missing MARK, a
    text argument the unpickler rejects), so ordinary text is not mistaken for a pickle.
    True as soon as an import or call (``_CODE_OPS``) is reached with its operands present.
    """
    levels = [0]  # items above each MARK; levels[0] is the bottom of the stack
    pos, size = 0, len(data)
    while pos < size:
        op = _OPCODES.get(data[pos])
        if op is None:
            return False
        try:
            end = _skip_arg(data, pos + 1, op)
        except _UnknownPickleArgumentError:
            return True
        if end is None:
            return False
        pos = end
        before = op.stack_before
        if pickletools.markobject in before:
            # Pops everything above the MARK (checked: OBJ needs its class there), the MARK,
            # and any operands below it.
            below = before.index(pickletools.markobject)
            above = [x for x in before[below + 1 :] if x is not pickletools.stackslice]
            if len(levels) == 1 or levels[-1] < len(above):
                return False
            levels.pop()
            if levels[-1] < below:
                return False
            levels[-1] -= below
        elif op.name == "POP" and levels[-1] == 0 and len(levels) > 1:
            levels.pop()  # POP with nothing above the MARK drops the MARK
        elif levels[-1] < len(before):
            return False  # stack underflow: the unpickler raises here
        else:
            levels[-1] -= len(before)
        if op.name in _CODE_OPS:
            return True
        if op.name == "STOP":
            return False
        if pickletools.markobject in op.stack_after:
            levels.append(0)
        else:
            levels[-1] += len(op.stack_after)
    return False


def _disassembles_cleanly(data: bytes) -> bool:
    """A data-only protocol 0/1 pickle (no magic): the whole stream disassembles to STOP."""
    if not data or data[:1] in (b"{", b"[", b'"') or len(data) > 64 * 1024**2:
        return False
    try:
        pickletools.dis(data, out=io.StringIO())
    except Exception:  # dis raises many types; any of them means "not a clean pickle"
        return False
    return True


def _analyse_pickle(data: bytes, policy: ModelScanPolicy, finding: _Finding) -> None:
    refs, problems, _ = pickle_references(data)
    finding.pickle_globals.extend(refs)
    finding.issues.extend(problems)
    dangerous = sorted({r for r in refs if is_dangerous_global(r)})
    if dangerous:
        finding.issues.append(f"pickle imports dangerous callables {dangerous}")
    if not policy.unsafe_allow_pickle_globals:
        finding.issues.append(
            "pickle files execute code on load; use safetensors (any pickle is refused)"
        )
        return
    unlisted = sorted({r for r in refs if r not in policy.unsafe_allow_pickle_globals})
    if unlisted:
        finding.issues.append(
            f"pickle imports globals not in unsafe_allow_pickle_globals: {unlisted}"
        )
    elif not dangerous and not problems:
        finding.warnings.append("pickle allowed by unsafe_allow_pickle_globals")


# --- format detection ----------------------------------------------------------------------


def _looks_like_safetensors(head: bytes, size: int) -> bool:
    if len(head) < 9:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    # A plausible header length and a JSON object after it: from here on it is safetensors,
    # and a length past the end of the file is reported as a malformed safetensors file.
    return 0 < n <= MAX_SAFETENSORS_HEADER_BYTES and head[8:9] == b"{" and size >= 9


def _read_npy_header(data: bytes) -> tuple[dict[str, Any], int]:
    """Parse a .npy header (literal dict via numpy's safe parser); returns (header, offset)."""
    import numpy as np

    stream = io.BytesIO(data)
    version = np.lib.format.read_magic(stream)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(stream)
    else:
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(stream)
    return {"shape": shape, "fortran_order": fortran, "dtype": dtype}, stream.tell()


def _classify(data: bytes, size: int, policy: ModelScanPolicy, depth: int) -> _Finding:
    """Detect the format of ``data`` by content and collect its issues."""
    if data[:2] == b"PK" and data[2:4] in (b"\x03\x04", b"\x05\x06"):
        return _analyse_zip(data, policy, depth)
    if data[:6] == b"\x93NUMPY":
        finding = _Finding("npy")
        try:
            header, offset = _read_npy_header(data)
        except (ValueError, SyntaxError) as exc:
            finding.issues.append(f"malformed .npy header: {exc}")
            return finding
        if header["dtype"].hasobject:
            # Object arrays are stored as a pickle after the header (np.load allow_pickle).
            finding.issues.append(".npy object array: its payload is a pickle")
            _analyse_pickle(data[offset:], policy, finding)
        return finding
    # Before safetensors: a blob that loads as code is a pickle whatever else it parses as.
    if pickle_can_run_code(data):
        finding = _Finding("pickle")
        _analyse_pickle(data, policy, finding)
        return finding
    if _looks_like_safetensors(data[:16], size):
        finding = _Finding("safetensors")
        try:
            read_safetensors_header(data, where="model scan")
        except InputError as exc:
            finding.issues.append(exc.message)
        return finding
    # After safetensors: a header length can begin with the PROTO byte (0x80, 0x02..).
    if (data[:1] == b"\x80" and len(data) >= 2) or _disassembles_cleanly(data):
        finding = _Finding("pickle")
        _analyse_pickle(data, policy, finding)
        return finding
    if data[:8] == b"\x89HDF\r\n\x1a\n":
        return _Finding("hdf5", issues=["HDF5/Keras files can hold Lambda layers that run code"])
    if data[:4] == b"GGUF":
        return _Finding("gguf")
    if b"\x00" not in data:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            return _Finding("unknown", issues=["unrecognised binary content"])
        try:
            json.loads(text)
        except ValueError:
            return _Finding("text")
        return _Finding("json")
    return _Finding("unknown", issues=["unrecognised binary content"])


def _analyse_zip(data: bytes, policy: ModelScanPolicy, depth: int) -> _Finding:
    """Classify every member of a zip (PyTorch .pt, joblib/npz archives hide pickles here)."""
    finding = _Finding("zip")
    if depth >= _MAX_ZIP_DEPTH:
        finding.issues.append("zip nested too deeply to scan")
        return finding
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            members = archive.infolist()
            if len(members) > _MAX_ZIP_MEMBERS:
                finding.issues.append(f"zip has {len(members)} members; too many to scan")
                return finding
            for info in members:
                if info.is_dir():
                    continue
                if info.file_size > policy.max_file_bytes:
                    finding.issues.append(f"zip member {info.filename} is too large to scan")
                    continue
                member = archive.read(info)
                inner = _classify(member, len(member), policy, depth + 1)
                if inner.format == "pickle" or inner.pickle_globals:
                    finding.pickle_globals.extend(inner.pickle_globals)
                # A member gets the same name and policy rules as a file: torch.load
                # unpickles archive/data.pkl whatever its bytes look like.
                issues = _rule_issues(info.filename, inner, len(member), policy)
                finding.issues.extend(f"{info.filename}: {msg}" for msg in issues)
                finding.warnings.extend(f"{info.filename}: {msg}" for msg in inner.warnings)
    except (
        zipfile.BadZipFile,
        zipfile.LargeZipFile,
        NotImplementedError,
        RuntimeError,
        OSError,
    ) as exc:
        finding.issues.append(f"zip archive cannot be read: {exc}")
    return finding


# --- the directory walk --------------------------------------------------------------------


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
        return FileScan(
            rel,
            None,
            st.st_size,
            "symlink",
            "refused",
            (f"symlink to {target}: model directories may hold regular files only",),
        )
    if not stat.S_ISREG(st.st_mode):
        return FileScan(
            rel,
            None,
            st.st_size,
            "special",
            "refused",
            ("not a regular file (device, fifo or socket)",),
        )
    if not path.resolve().is_relative_to(root):
        return FileScan(
            rel, None, st.st_size, "unknown", "refused", ("resolves outside the model directory",)
        )
    digest = sha256_file(path)
    if st.st_size > policy.max_file_bytes:
        return FileScan(
            rel,
            digest,
            st.st_size,
            "unknown",
            "refused",
            (f"{st.st_size} bytes exceeds max_file_bytes {policy.max_file_bytes}",),
        )
    with path.open("rb") as fh:
        head = fh.read(16)
    if _looks_like_safetensors(head, st.st_size) and not _file_can_run_code(path):
        # Read the header only: safetensors weights can be gigabytes and hold no code.
        with path.open("rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header_bytes = fh.read(n)
        finding = _safetensors_header_only(head[:8] + header_bytes, st.st_size, rel)
    else:
        finding = _classify(path.read_bytes(), st.st_size, policy, depth=0)
    issues = _rule_issues(rel, finding, st.st_size, policy)
    if issues:
        verdict: Literal["pass", "warn", "refused"] = "refused"
    else:
        verdict = "warn" if finding.warnings else "pass"
    return FileScan(
        rel,
        digest,
        st.st_size,
        finding.format,
        verdict,
        tuple(dict.fromkeys(issues + finding.warnings)),
        tuple(dict.fromkeys(finding.pickle_globals)),
    )


def _file_can_run_code(path: Path) -> bool:
    """:func:`pickle_can_run_code` over a file without reading it into memory (a walk over
    real safetensors stops within its first bytes; a pickle polyglot does not)."""
    with path.open("rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as view:
        return pickle_can_run_code(view)


def _rule_issues(name: str, finding: _Finding, size: int, policy: ModelScanPolicy) -> list[str]:
    """Content issues plus the name and policy rules, applied alike to files and zip members."""
    issues = list(finding.issues)
    if finding.format in ("json", "text") and size > policy.max_text_bytes:
        issues.append(f"{finding.format} file of {size} bytes exceeds max_text_bytes")
    if finding.format == "text" and not _is_text_name(name):
        issues.append("text content in a file not named like a model card (README, *.md, *.txt)")
    suffix = PurePosixPath(name).suffix.lower()
    expected = _EXPECTED_BY_SUFFIX.get(suffix)
    if suffix in PICKLE_SUFFIXES and finding.format != "pickle":
        issues.append(
            f"file name says pickle ({suffix}): a loader unpickles it whatever the content "
            f"looks like (here {finding.format}), so it is refused"
        )
    elif expected and expected != finding.format:
        issues.append(f"file name says {expected} but the content is {finding.format}")
    pickle_ok = finding.format == "pickle" and finding.warnings and not issues
    if finding.format not in policy.allowed_formats and not pickle_ok:
        issues.append(f"format {finding.format} is not allowed by policy")
    return issues


def _safetensors_header_only(head_and_header: bytes, size: int, rel: str) -> _Finding:
    """Validate a safetensors header against the real file size without reading the weights."""
    finding = _Finding("safetensors")
    try:
        read_safetensors_header(head_and_header, where=rel, file_size=size)
    except InputError as exc:
        finding.issues.append(exc.message)
    return finding


def _is_text_name(rel: str) -> bool:
    path = PurePosixPath(rel)
    return path.suffix.lower() in TEXT_SUFFIXES or path.stem.upper() in TEXT_NAMES


def scan_model_files(model_dir: Path, policy: ModelScanPolicy | None = None) -> ModelScanResult:
    """Scan every file below ``model_dir``; return the result if clean, else raise.

    ``InputError`` if ``model_dir`` is not a directory (or is a symlink); ``ControlRefused``
    naming each offending file and why, with the per-file results in ``details["files"]``.
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
    result = ModelScanResult(
        model_dir=model_dir, model_digest=manifest_digest(manifest), files=files, policy=policy
    )
    if not files:
        raise ControlRefused(
            f"model directory {model_dir} holds no files",
            where=str(model_dir),
            fix="check the training stage wrote the model",
            details=result.to_json(),
        )
    if not result.passed:
        reasons = "; ".join(f"{f.path}: {', '.join(f.issues)}" for f in result.refused)
        raise ControlRefused(
            f"model scan refused {len(result.refused)} file(s): {reasons}",
            where=str(model_dir),
            fix="save the model as safetensors + JSON (ml.model); remove other files",
            details=result.to_json(),
        )
    return result


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
    return make_statement(subjects, PREDICATE_MODEL_SCAN, predicate)


# --- Prefect -------------------------------------------------------------------------------
