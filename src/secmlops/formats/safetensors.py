"""The safetensors format: a header checked byte by byte, weights never loaded.

Used by the model-file scan (any safetensors file in a model) and by model adapters that
store weights as safetensors.
"""

from __future__ import annotations

import json
import math
import struct
from typing import Any

from secmlops.errors import InputError

#: A safetensors header larger than this is not a model we made (the real ones are ~1 KiB).
MAX_SAFETENSORS_HEADER_BYTES = 16 * 1024 * 1024
_DTYPE_SIZES: dict[str, int] = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E5M2": 1,
    "F8_E4M3": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
}


def read_safetensors_header(
    data: bytes, *, where: str, file_size: int | None = None
) -> dict[str, Any]:
    """Parse and validate a safetensors buffer's header without trusting anything in it.

    ``data`` is the whole file, or (with ``file_size``) at least its first 8 + header bytes,
    so a scanner need not read gigabytes of weights. Checks: 8-byte little-endian header
    length within the file, a JSON object header, each tensor's dtype, shape and
    ``data_offsets`` consistent, inside the data area, not overlapping, and covering it
    exactly. Returns the header (with ``__metadata__``). ``InputError`` names the problem.
    """
    size = len(data) if file_size is None else file_size

    def bad(reason: str) -> InputError:
        return InputError(
            f"malformed safetensors file: {reason}",
            where=where,
            fix="re-export the model; do not edit safetensors files by hand",
        )

    if size < 8 or len(data) < 8:
        raise bad(f"{size} bytes is too short for the 8-byte header length")
    (header_len,) = struct.unpack("<Q", data[:8])
    if header_len == 0 or header_len > MAX_SAFETENSORS_HEADER_BYTES:
        raise bad(f"header length {header_len} is out of range")
    if 8 + header_len > size or 8 + header_len > len(data):
        raise bad(f"header length {header_len} runs past the end of the {size}-byte file")
    try:
        header = json.loads(data[8 : 8 + header_len].decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise bad(f"header is not JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise bad("header is not a JSON object")
    meta = header.get("__metadata__", {})
    if not isinstance(meta, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in meta.items()
    ):
        raise bad("__metadata__ must map strings to strings")
    data_len = size - 8 - header_len
    spans: list[tuple[int, int, str]] = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            raise bad(f"tensor {name!r} entry must have exactly dtype, shape, data_offsets")
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if dtype not in _DTYPE_SIZES:
            raise bad(f"tensor {name!r} has unknown dtype {dtype!r}")
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
        ):
            raise bad(f"tensor {name!r} has an invalid shape {shape!r}")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
        ):
            raise bad(f"tensor {name!r} has invalid data_offsets {offsets!r}")
        begin, end = offsets
        if not 0 <= begin <= end <= data_len:
            raise bad(
                f"tensor {name!r} offsets {offsets} fall outside the {data_len}-byte data area"
            )
        expected = _DTYPE_SIZES[dtype] * math.prod(shape)
        if end - begin != expected:
            raise bad(
                f"tensor {name!r} spans {end - begin} bytes but {dtype}{shape} needs {expected}"
            )
        spans.append((begin, end, name))
    position = 0
    for begin, end, name in sorted(spans):
        if begin != position:
            raise bad(f"tensor {name!r} starts at {begin}, expected {position} (gap or overlap)")
        position = end
    if position != data_len:
        raise bad(f"{data_len - position} trailing bytes after the last tensor")
    return dict(header)
