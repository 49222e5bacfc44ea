"""Model-file scan of ``.npy`` (issue 10, last bullet): a plain numeric array that
``np.load(..., allow_pickle=False)`` loads passes; object arrays, non-numeric dtypes and any
header or size that does not add up are refused, judged from the header before anything
loads the bytes. ``.npz`` is a zip: refused by the default policy."""

from __future__ import annotations

import io
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

from secmlops.controls.model_scan import (
    FileScan,
    ModelScanPolicy,
    ModelScanRefusal,
    evaluate_model_files,
    model_scan_statement,
    scan_model_files,
)
from secmlops.controls.model_scan.npy import MAX_NPY_HEADER_BYTES

_R = ModelScanRefusal


class _RunsShell:
    """The classic malicious pickle: loading it calls os.system (never loaded here)."""

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, ("echo pwned > /tmp/should-never-exist-npy",))


def _saved(array: np.ndarray, version: tuple[int, int] | None = None) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, array, version=version, allow_pickle=True)
    return buf.getvalue()


def _npy(header: str, data: bytes, version: tuple[int, int] = (1, 0)) -> bytes:
    """A hand-made .npy: magic, version, header length, ``header`` (padded as numpy does)."""
    raw = header.encode("utf-8" if version == (3, 0) else "latin-1")
    length_fmt = "<H" if version == (1, 0) else "<I"
    prefix = 6 + 2 + struct.calcsize(length_fmt)
    raw += b" " * (-(prefix + len(raw) + 1) % 64) + b"\n"
    return b"\x93NUMPY" + bytes(version) + struct.pack(length_fmt, len(raw)) + raw + data


def _scan(
    tmp_path: Path, files: dict[str, bytes], policy: ModelScanPolicy | None = None
) -> dict[str, FileScan]:
    model = tmp_path / "model"
    model.mkdir(exist_ok=True)
    for name, data in files.items():
        (model / name).write_bytes(data)
    return {f.path: f for f in evaluate_model_files(model, policy).files}


def _refused(tmp_path: Path, data: bytes, name: str = "arr.npy") -> FileScan:
    scan = _scan(tmp_path, {name: data})[name]
    assert scan.verdict == "refused", scan
    assert scan.format == "npy"
    return scan


# --- plain numeric arrays pass ---------------------------------------------------------------

NUMERIC = [
    np.arange(12, dtype=np.float32).reshape(3, 4),
    np.asfortranarray(np.arange(12, dtype=np.float64).reshape(3, 4)),
    np.arange(-5, 5, dtype=np.int64),
    np.array([True, False, True]),
    np.arange(4, dtype=np.uint8),
    np.arange(4, dtype=np.int8),
    np.array([1 + 2j, 3 - 4j], dtype=np.complex64),
    np.array([1 + 2j], dtype=np.complex128),
    np.arange(3, dtype=np.float16),
    np.arange(3, dtype=">f8"),
    np.float64(3.5).reshape(()),
    np.zeros((0, 3), dtype=np.float32),
]


@pytest.mark.parametrize("array", NUMERIC, ids=lambda a: f"{a.dtype.str}{list(a.shape)}")
def test_real_np_save_numeric_array_passes(tmp_path: Path, array: np.ndarray) -> None:
    model = tmp_path / "model"
    model.mkdir()
    np.save(model / "weights.npy", array)
    result = scan_model_files(model)  # the default policy: raises if refused
    (scan,) = result.files
    assert (scan.format, scan.verdict, scan.issues) == ("npy", "pass", ())
    # What passed is what the safe loader reads back.
    np.testing.assert_array_equal(np.load(model / "weights.npy", allow_pickle=False), array)


@pytest.mark.parametrize("version", [(1, 0), (2, 0), (3, 0)])
def test_every_npy_format_version_passes(tmp_path: Path, version: tuple[int, int]) -> None:
    data = _saved(np.arange(6, dtype=np.float32), version)
    assert data[6:8] == bytes(version)
    assert _scan(tmp_path, {"arr.npy": data})["arr.npy"].verdict == "pass"


def test_npy_format_recorded_in_scan_evidence(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    np.save(model / "weights.npy", np.ones((2, 2)))
    (model / "README.md").write_text("# model\n")
    statement = model_scan_statement(scan_model_files(model))
    predicate = statement["predicate"]
    assert predicate["verdict"] == "pass"
    assert "npy" in predicate["policy"]["allowed_formats"]
    files = {f["path"]: f for f in predicate["files"]}
    assert (files["weights.npy"]["format"], files["weights.npy"]["verdict"]) == ("npy", "pass")
    assert {s["name"] for s in statement["subject"]} >= {"model", "model/weights.npy"}


def test_random_numeric_data_is_not_mistaken_for_a_pickle(tmp_path: Path) -> None:
    """The data area is checked for a smuggled pickle; real weights must not trip it."""
    rng = np.random.default_rng(10)
    files = {}
    for i in range(60):
        dtype = ("<f4", "<f8", "<i8", "|u1", "<f2")[i % 5]
        raw = rng.integers(0, 256, size=int(rng.integers(1, 4096)) * 8, dtype=np.uint8)
        files[f"a{i}.npy"] = _saved(raw.view(dtype))
    scans = _scan(tmp_path, files)
    assert {name: s.issues for name, s in scans.items() if s.verdict != "pass"} == {}


def test_scan_never_loads_the_array(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The header is judged by our own parser; numpy's loaders are never called."""
    files = {"ok.npy": _saved(np.arange(3.0)), "obj.npy": _saved(np.array([1, "x"], object))}

    def boom(*_a: object, **_k: object) -> None:
        raise AssertionError("the scan must not load .npy files")

    for name in ("load", "fromfile", "frombuffer"):
        monkeypatch.setattr(np, name, boom)
    for name in ("read_array", "read_array_header_1_0", "read_array_header_2_0"):
        monkeypatch.setattr(np.lib.format, name, boom)
    scans = _scan(tmp_path, files)
    assert scans["ok.npy"].verdict == "pass"
    assert scans["obj.npy"].verdict == "refused"


# --- object arrays and pickle payloads stay refused ---------------------------------------


def test_object_array_refused(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    np.save(model / "arr.npy", np.array([1, "two", None], dtype=object), allow_pickle=True)
    (scan,) = evaluate_model_files(model).files
    assert scan.format == "npy" and scan.verdict == "refused"
    assert _R.PICKLE in scan.reasons
    assert any("object array" in i for i in scan.issues)
    with pytest.raises(ValueError, match="allow_pickle"):
        np.load(model / "arr.npy", allow_pickle=False)


def test_object_array_with_malicious_pickle_payload_refused(tmp_path: Path) -> None:
    """An .npy whose data is a pickle calling os.system: refused, the import named."""
    scan = _refused(
        tmp_path,
        _npy(
            "{'descr': '|O', 'fortran_order': False, 'shape': (1,), }",
            pickle.dumps(_RunsShell(), protocol=3),
        ),
    )
    assert {_R.PICKLE, _R.DANGEROUS_GLOBAL} <= set(scan.reasons)
    assert set(scan.pickle_globals) & {"posix.system", "os.system"}


def test_object_array_refused_even_when_pickle_globals_are_allowed(tmp_path: Path) -> None:
    policy = ModelScanPolicy(unsafe_allow_pickle_globals=frozenset({"collections.OrderedDict"}))
    data = _saved(np.array([1, 2], dtype=object))
    scan = _scan(tmp_path, {"arr.npy": data}, policy)["arr.npy"]
    assert scan.verdict == "refused" and _R.PICKLE in scan.reasons


def test_numeric_header_over_exactly_sized_pickle_bytes_is_data(tmp_path: Path) -> None:
    """Decision: a '<f8' header over bytes that happen to spell a pickle, padded to exactly the
    declared size, is numeric data: np.load(allow_pickle=False) returns floats and never
    unpickles it (like safetensors tensor bytes). The data is not walked for pickles, since
    real weights trip the walker (1 in 77 random float32 arrays); the wrong-size and
    object-dtype variants below are refused."""
    payload = pickle.dumps(_RunsShell(), protocol=2)
    payload += b"\0" * (-len(payload) % 8)
    header = f"{{'descr': '<f8', 'fortran_order': False, 'shape': ({len(payload) // 8},), }}"
    data = _npy(header, payload)
    scan = _scan(tmp_path, {"arr.npy": data})["arr.npy"]
    assert (scan.format, scan.verdict, scan.pickle_globals) == ("npy", "pass", ())
    loaded = np.load(io.BytesIO(data), allow_pickle=False)
    assert loaded.dtype == np.float64 and loaded.tobytes() == payload


def test_numeric_header_with_pickle_payload_of_the_wrong_size_refused(tmp_path: Path) -> None:
    payload = pickle.dumps(_RunsShell())
    scan = _refused(
        tmp_path, _npy("{'descr': '<f8', 'fortran_order': False, 'shape': (1,), }", payload)
    )
    assert scan.reasons == (_R.MALFORMED_FILE,)


def test_structured_dtype_with_object_field_refused(tmp_path: Path) -> None:
    array = np.zeros(2, dtype=[("w", "<f8"), ("meta", "O")])
    scan = _refused(tmp_path, _saved(array))
    assert _R.PICKLE in scan.reasons
    assert any("object array" in i for i in scan.issues)


def test_nested_structured_dtype_with_object_field_refused(tmp_path: Path) -> None:
    array = np.zeros(1, dtype=[("outer", [("x", "<i4"), ("o", "O")])])
    assert _R.PICKLE in _refused(tmp_path, _saved(array)).reasons


@pytest.mark.parametrize(
    "array",
    [
        np.zeros(2, dtype=[("x", "<f8"), ("y", "<i4")]),  # numeric, but a record
        np.zeros(2, dtype="V8"),
        np.array(["ab", "c"]),
        np.array([b"ab"]),
        np.array(["2024-01-01"], dtype="datetime64[D]"),
        np.zeros(2, dtype=np.longdouble),
    ],
    ids=lambda a: a.dtype.str,
)
def test_non_numeric_dtypes_refused(tmp_path: Path, array: np.ndarray) -> None:
    scan = _refused(tmp_path, _saved(array))
    assert scan.reasons == (_R.FORMAT_NOT_ALLOWED,)
    assert any("not a plain numeric or bool dtype" in i for i in scan.issues)


# --- sizes and headers that do not add up ------------------------------------------------------


def test_truncated_npy_refused(tmp_path: Path) -> None:
    data = _saved(np.arange(10, dtype=np.float64))
    scan = _refused(tmp_path, data[:-1])
    assert scan.reasons == (_R.MALFORMED_FILE,)
    assert any("need exactly" in i for i in scan.issues)


def test_truncated_inside_the_header_refused(tmp_path: Path) -> None:
    data = _saved(np.arange(10, dtype=np.float64))
    assert _refused(tmp_path, data[:40]).reasons == (_R.MALFORMED_FILE,)
    assert _refused(tmp_path, data[:9], "short.npy").reasons == (_R.MALFORMED_FILE,)


def test_extra_bytes_after_the_array_refused(tmp_path: Path) -> None:
    data = _saved(np.arange(10, dtype=np.float64)) + b"\0"
    # numpy's own loader ignores the tail; the scan does not.
    assert np.load(io.BytesIO(data), allow_pickle=False).shape == (10,)
    assert _refused(tmp_path, data).reasons == (_R.MALFORMED_FILE,)


@pytest.mark.parametrize("shape", ["(9,)", "(11,)", "(2, 5, 1, 2)", "(10**12,)", "()"])
def test_lying_shape_refused(tmp_path: Path, shape: str) -> None:
    data = np.arange(10, dtype=np.float64).tobytes()
    header = f"{{'descr': '<f8', 'fortran_order': False, 'shape': {shape}, }}"
    assert _refused(tmp_path, _npy(header, data)).reasons == (_R.MALFORMED_FILE,)


def test_huge_header_refused(tmp_path: Path) -> None:
    header = "{'descr': '<f8', 'fortran_order': False, 'shape': (1,), }" + " " * 20_000
    data = _npy(header, np.zeros(1).tobytes(), version=(2, 0))
    scan = _refused(tmp_path, data)
    assert scan.reasons == (_R.LIMIT_EXCEEDED,)
    assert any(str(MAX_NPY_HEADER_BYTES) in i for i in scan.issues)
    # The same limit numpy's safe loader applies.
    with pytest.raises(ValueError, match=r"[Hh]eader"):
        np.load(io.BytesIO(data), allow_pickle=False)


def test_header_length_past_the_end_refused(tmp_path: Path) -> None:
    data = b"\x93NUMPY\x02\x00" + struct.pack("<I", 5000) + b"{'descr': '<f8'"
    assert _refused(tmp_path, data).reasons == (_R.MALFORMED_FILE,)


@pytest.mark.parametrize(
    "header",
    [
        "__import__('os').system('echo should-never-run')",  # code, not a literal
        "{'descr': '<f8', 'fortran_order': False, 'shape': (1,), 'extra': 1}",
        "{'descr': '<f8', 'fortran_order': False}",
        "{'descr': '<f8', 'fortran_order': 'no', 'shape': (1,)}",
        "{'descr': '<f8', 'fortran_order': False, 'shape': [1]}",
        "{'descr': '<f8', 'fortran_order': False, 'shape': (-1,)}",
        "{'descr': '<f8', 'fortran_order': False, 'shape': (True,)}",
        "{'descr': '<f8', 'fortran_order': False, 'shape': (1.0,)}",
        "['descr', 'fortran_order', 'shape']",
        "{'descr': 'not-a-dtype', 'fortran_order': False, 'shape': (1,)}",
        "{'descr': {'a': 1}, 'fortran_order': False, 'shape': (1,)}",
        "(" * 500 + ")" * 500,
        "{'descr': '<f8', 'fortran_order': False, 'shape': (" + "9" * 5000 + ",)}",
    ],
)
def test_malformed_headers_refused(tmp_path: Path, header: str) -> None:
    scan = _refused(tmp_path, _npy(header, np.zeros(1).tobytes()))
    assert scan.reasons == (_R.MALFORMED_FILE,)
    assert all(i.startswith("malformed .npy file") for i in scan.issues)
    assert not Path("/tmp/should-never-run").exists()


def test_header_not_latin1_or_utf8_refused(tmp_path: Path) -> None:
    raw = b"{'descr': '<f8', 'fortran_order': False, 'shape': (1,), '\xff': 1}\n"
    data = b"\x93NUMPY\x03\x00" + struct.pack("<I", len(raw)) + raw + bytes(8)
    assert _refused(tmp_path, data).reasons == (_R.MALFORMED_FILE,)


@pytest.mark.parametrize("version", [b"\x04\x00", b"\x01\x01", b"\x00\x00"])
def test_unknown_format_version_refused(tmp_path: Path, version: bytes) -> None:
    data = bytearray(_saved(np.zeros(1)))
    data[6:8] = version
    scan = _refused(tmp_path, bytes(data))
    assert scan.reasons == (_R.MALFORMED_FILE,)
    assert any("format version" in i for i in scan.issues)


# --- .npz: a zip, refused by the default policy -------------------------------------------------


def _npz(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, allow_pickle=True, **arrays)
    return buf.getvalue()


def test_npz_refused_by_default(tmp_path: Path) -> None:
    """Decision: .npz is a zip (members can hide pickles, sizes can lie); the default policy
    allows no zip, so even an all-numeric .npz is refused. Save arrays as .npy files."""
    scan = _scan(tmp_path, {"weights.npz": _npz(w=np.ones(3))})["weights.npz"]
    assert (scan.format, scan.verdict) == ("zip", "refused")
    assert scan.reasons == (_R.FORMAT_NOT_ALLOWED,)


def test_npz_judged_member_by_member_when_zip_is_allowed(tmp_path: Path) -> None:
    policy = ModelScanPolicy(allowed_formats=frozenset({"safetensors", "json", "npy", "zip"}))
    files = {
        "ok.npz": _npz(w=np.ones(3), b=np.arange(2)),
        "obj.npz": _npz(w=np.ones(3), o=np.array([_RunsShell()], dtype=object)),
        "pickle.npz": pickle.dumps({"w": [1.0]}),
    }
    scans = _scan(tmp_path, files, policy)
    assert scans["ok.npz"].verdict == "pass"
    assert scans["obj.npz"].verdict == "refused"
    assert {_R.PICKLE, _R.DANGEROUS_GLOBAL} <= set(scans["obj.npz"].reasons)
    assert any(i.startswith("o.npy: ") for i in scans["obj.npz"].issues)
    # A pickle named .npz: np.load(allow_pickle=True) would unpickle it.
    assert _R.NAME_MISMATCH in scans["pickle.npz"].reasons


def test_npz_member_with_lying_shape_refused(tmp_path: Path) -> None:
    import zipfile

    policy = ModelScanPolicy(allowed_formats=frozenset({"npy", "zip"}))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("w.npy", _saved(np.arange(4.0))[:-8])
    scan = _scan(tmp_path, {"w.npz": buf.getvalue()}, policy)["w.npz"]
    assert scan.reasons == (_R.MALFORMED_FILE,)
    assert any(i.startswith("w.npy: malformed .npy file") for i in scan.issues)


def test_npy_named_otherwise_keeps_name_rules(tmp_path: Path) -> None:
    scans = _scan(tmp_path, {"weights.pkl": _saved(np.ones(2)), "w.json": _saved(np.ones(2))})
    assert _R.NAME_MISMATCH in scans["weights.pkl"].reasons
    assert _R.NAME_MISMATCH in scans["w.json"].reasons
