"""Static pickle analysis: walk the opcodes (never unpickle) to see what loading would run.

A pickle is recognised leniently, the way ``pickle.loads`` reads it rather than the stricter
:func:`pickletools.dis`: if a loader could reach an import or a call before the stream
breaks, it is a pickle (:func:`pickle_can_run_code`). :func:`pickle_references` lists the
globals it imports; :func:`is_dangerous_global` says which of them no policy may allow.

Example::

    refs, problems, end = pickle_references(data)
    if pickle_can_run_code(data) and any(is_dangerous_global(r) for r in refs):
        ...  # refuse
"""

from __future__ import annotations

import io
import mmap
import pickletools
import struct
from typing import Any

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


def disassembles_cleanly(data: bytes) -> bool:
    """A data-only protocol 0/1 pickle (no magic): the whole stream disassembles to STOP."""
    if not data or data[:1] in (b"{", b"[", b'"') or len(data) > 64 * 1024**2:
        return False
    try:
        pickletools.dis(data, out=io.StringIO())
    except Exception:  # dis raises many types; any of them means "not a clean pickle"
        return False
    return True
