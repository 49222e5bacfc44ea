"""The ``.npy`` header, parsed byte by byte: nothing in it is trusted or evaluated.

``np.load`` parses the same header, but only after a caller has decided to load the bytes;
the model scan judges the header first (:func:`read_npy_header`), then the dtype
(:func:`numeric_itemsize`, :func:`npy_dtype_has_object`) and the file size.

Example::

    header = read_npy_header(data[:NPY_PREFIX_BYTES])
    itemsize = numeric_itemsize(header.descr)      # None: not a plain numeric/bool dtype
"""

from __future__ import annotations

import ast
import re
import struct
from dataclasses import dataclass
from typing import Any

from secmlops.controls.model_scan.result import ModelScanRefusal

#: ``np.load(allow_pickle=False)`` refuses headers longer than this (numpy's own limit), and
#: :func:`ast.literal_eval` only ever sees this many characters.
MAX_NPY_HEADER_BYTES = 10_000
NPY_MAGIC = b"\x93NUMPY"
#: magic (6) + version (2) + header length (4 in v2/v3) + the header: enough to judge a .npy.
NPY_PREFIX_BYTES = 12 + MAX_NPY_HEADER_BYTES
#: Plain numeric and bool dtypes, as ``np.save`` writes them: one byte order, kind, size.
#: No objects (a pickle), strings, void/structured records, datetimes or platform-dependent
#: long doubles (``f16``/``c32`` differ between platforms).
_NPY_NUMERIC_DESCR = re.compile(r"[<>|](?:b1|i1|u1)|[<>](?:[iu][248]|f[248]|c8|c16)")
_NPY_KEYS = frozenset({"descr", "fortran_order", "shape"})


class NpyHeaderError(Exception):
    """A .npy header that is malformed (``reason`` says which refusal applies)."""

    def __init__(self, message: str, reason: ModelScanRefusal = ModelScanRefusal.MALFORMED_FILE):
        super().__init__(message)
        self.message = message
        self.reason = reason


@dataclass(frozen=True)
class NpyHeader:
    """A parsed .npy header: ``offset`` is where the array data starts."""

    version: tuple[int, int]
    descr: Any
    fortran_order: bool
    shape: tuple[int, ...]
    offset: int


def read_npy_header(prefix: bytes) -> NpyHeader:
    """Parse a .npy header from the first bytes of a file without trusting or loading it.

    Checks the magic, a version numpy writes (1.0, 2.0, 3.0), a header length within
    :data:`MAX_NPY_HEADER_BYTES` and within ``prefix``, and a header that is a Python dict
    literal (read with :func:`ast.literal_eval`, never evaluated) with exactly ``descr``,
    ``fortran_order`` (a bool) and ``shape`` (a tuple of non-negative ints). The dtype is
    judged apart (:func:`numeric_itemsize`, :func:`npy_dtype_has_object`). Raises
    :class:`NpyHeaderError`.
    """
    if prefix[:6] != NPY_MAGIC or len(prefix) < 10:
        raise NpyHeaderError(
            "malformed .npy file: too short for its magic, version and header length"
        )
    version = (prefix[6], prefix[7])
    if version == (1, 0):
        (header_len,) = struct.unpack("<H", prefix[8:10])
        start = 10
    elif version in ((2, 0), (3, 0)):
        if len(prefix) < 12:
            raise NpyHeaderError("malformed .npy file: too short for a version 2/3 header length")
        (header_len,) = struct.unpack("<I", prefix[8:12])
        start = 12
    else:
        major, minor = version
        raise NpyHeaderError(
            f"malformed .npy file: format version {major}.{minor} is not 1.0, 2.0 or 3.0"
        )
    if header_len > MAX_NPY_HEADER_BYTES:
        raise NpyHeaderError(
            f".npy header of {header_len} bytes exceeds {MAX_NPY_HEADER_BYTES} "
            "(np.load refuses it without allow_pickle)",
            ModelScanRefusal.LIMIT_EXCEEDED,
        )
    if start + header_len > len(prefix):
        raise NpyHeaderError(
            f"malformed .npy file: its {header_len}-byte header runs past the end of the file"
        )
    raw = bytes(prefix[start : start + header_len])
    try:
        text = raw.decode("utf-8" if version == (3, 0) else "latin-1")
        header = ast.literal_eval(text)
    except (UnicodeDecodeError, ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        raise NpyHeaderError(
            "malformed .npy file: its header is not a Python dict literal"
        ) from None
    if not isinstance(header, dict) or set(header) != _NPY_KEYS:
        raise NpyHeaderError(
            "malformed .npy file: its header must hold exactly descr, fortran_order, shape"
        )
    shape, fortran = header["shape"], header["fortran_order"]
    if not isinstance(fortran, bool):
        raise NpyHeaderError(f"malformed .npy file: fortran_order {fortran!r} is not a bool")
    if not isinstance(shape, tuple) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise NpyHeaderError(
            f"malformed .npy file: shape {shape!r} is not a tuple of non-negative ints"
        )
    return NpyHeader(version, header["descr"], fortran, shape, start + header_len)


def numeric_itemsize(descr: Any) -> int | None:
    """The item size of a plain numeric/bool ``descr`` (``"<f8"`` -> 8), else ``None``."""
    if isinstance(descr, str) and _NPY_NUMERIC_DESCR.fullmatch(descr):
        return int(descr[2:])
    return None


def npy_dtype_has_object(descr: Any) -> bool:
    """Whether a .npy ``descr`` (a literal) holds Python objects, i.e. its data is a pickle.

    Only called for a descr that is not plain numeric; numpy's own descr parser builds a
    dtype from the literal (no code runs), and one it cannot build is malformed.
    """
    import numpy as np

    try:
        return bool(np.lib.format.descr_to_dtype(descr).hasobject)
    except Exception:  # numpy raises many types for a bad descr; any of them is a refusal
        raise NpyHeaderError(f"malformed .npy file: dtype {descr!r} is not a valid dtype") from None
