"""Model-file scan: formats detected by content, pickles refused without being loaded."""

from __future__ import annotations

import collections
import io
import json
import os
import pickle
import pickletools
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError
from safetensors.numpy import save, save_file

from secmlops._internal.digests import tree_digest
from secmlops.controls.model_scan import (
    ModelScanPolicy,
    ModelScanRefusal,
    ModelScanResult,
    enforce_model_scan,
    evaluate_model_files,
    model_scan_statement,
    pickle_can_run_code,
    pickle_references,
    scan_model_files,
)
from secmlops.errors import ControlRefused, InputError
from secmlops.evidence.statements import PREDICATE_MODEL_SCAN


class _RunsShell:
    """The classic malicious pickle: loading it calls os.system."""

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, ("echo pwned > /tmp/should-never-exist",))


class _Evals:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (eval, ("1+1",))


@pytest.fixture
def clean_dir(tmp_path: Path) -> Path:
    model = tmp_path / "model"
    model.mkdir()
    save_file({"w": np.arange(6, dtype=np.float64).reshape(2, 3)}, str(model / "model.safetensors"))
    (model / "model.json").write_text(json.dumps({"format": "x", "classes": [0, 1]}))
    (model / "README.md").write_text("# churn model\nTrained by the pipeline.\n")
    return model


def _refused(model: Path, policy: ModelScanPolicy | None = None) -> ControlRefused:
    """The refusal, checked to carry the contract: a reason and the evaluated result."""
    with pytest.raises(ControlRefused) as err:
        scan_model_files(model, policy)
    result = err.value.result
    assert isinstance(result, ModelScanResult) and not result.passed
    assert isinstance(err.value.reason, ModelScanRefusal)
    assert err.value.reason is result.reason and err.value.reason in result.reasons
    assert err.value.details["reasons"] == [r.value for r in result.reasons]
    return err.value


def _refusal(model: Path, policy: ModelScanPolicy | None = None) -> dict[str, dict[str, object]]:
    """Each file's JSON (as in the evidence) plus its ``reasons`` (a set of ModelScanRefusal)."""
    err = _refused(model, policy)
    assert isinstance(err.result, ModelScanResult)
    reasons = {f.path: set(f.reasons) for f in err.result.files}
    return {f["path"]: {**f, "reasons": reasons[f["path"]]} for f in err.details["files"]}


def _reasons(entry: dict[str, object]) -> set[ModelScanRefusal]:
    reasons = entry["reasons"]
    assert isinstance(reasons, set)
    return reasons


def test_clean_safetensors_dir_passes(clean_dir: Path) -> None:
    result = scan_model_files(clean_dir)
    assert result.passed
    assert result.model_digest == tree_digest(clean_dir)
    formats = {f.path: f.format for f in result.files}
    assert formats == {
        "README.md": "text",
        "model.json": "json",
        "model.safetensors": "safetensors",
    }
    assert all(f.verdict == "pass" and f.sha256 for f in result.files)


def test_statement_subjects_and_predicate(clean_dir: Path) -> None:
    st = model_scan_statement(scan_model_files(clean_dir))
    assert st["predicateType"] == PREDICATE_MODEL_SCAN
    assert st["subject"][0] == {"name": "model", "digest": {"sha256": tree_digest(clean_dir)}}
    assert {s["name"] for s in st["subject"][1:]} == {
        "model/README.md",
        "model/model.json",
        "model/model.safetensors",
    }
    assert st["predicate"]["verdict"] == "pass"
    assert st["predicate"]["scanner"]["name"]
    assert st["predicate"]["policy"]["unsafe_allow_pickle_globals"] == []


def test_os_system_reduce_refused_without_running_it(clean_dir: Path) -> None:
    (clean_dir / "model.pkl").write_bytes(pickle.dumps(_RunsShell()))
    files = _refusal(clean_dir)
    entry = files["model.pkl"]
    assert entry["format"] == "pickle" and entry["verdict"] == "refused"
    assert "posix.system" in entry["pickle_globals"] or "os.system" in entry["pickle_globals"]
    assert any("dangerous" in i for i in entry["issues"])  # type: ignore[union-attr]
    # A pickle is also a format the policy does not allow: every reason is recorded.
    assert _reasons(entry) == {
        ModelScanRefusal.DANGEROUS_GLOBAL,
        ModelScanRefusal.PICKLE,
        ModelScanRefusal.FORMAT_NOT_ALLOWED,
    }
    assert not Path("/tmp/should-never-exist").exists()
    assert files["model.safetensors"]["verdict"] == "pass"
    assert _reasons(files["model.safetensors"]) == set()
    assert _refused(clean_dir).reason is ModelScanRefusal.DANGEROUS_GLOBAL


@pytest.mark.parametrize("protocol", range(6))
def test_every_pickle_protocol_detected(tmp_path: Path, protocol: int) -> None:
    model = tmp_path / "m"
    model.mkdir()
    (model / "weights.bin").write_bytes(pickle.dumps(_Evals(), protocol=protocol))
    entry = _refusal(model)["weights.bin"]
    assert entry["format"] == "pickle"
    # Protocols 0-2 spell the module the Python 2 way.
    assert {"builtins.eval", "__builtin__.eval"} & set(entry["pickle_globals"])  # type: ignore[arg-type]
    assert ModelScanRefusal.DANGEROUS_GLOBAL in _reasons(entry)


def test_benign_pickle_refused_by_default(clean_dir: Path) -> None:
    (clean_dir / "extra.pkl").write_bytes(pickle.dumps({"weights": [1.0, 2.0]}))
    entry = _refusal(clean_dir)["extra.pkl"]
    assert entry["format"] == "pickle"
    assert any("any pickle is refused" in i for i in entry["issues"])  # type: ignore[union-attr]
    assert _reasons(entry) == {ModelScanRefusal.PICKLE, ModelScanRefusal.FORMAT_NOT_ALLOWED}
    assert _refused(clean_dir).reason is ModelScanRefusal.PICKLE


def test_pickle_renamed_to_json_detected_by_content(clean_dir: Path) -> None:
    (clean_dir / "model.json").write_bytes(pickle.dumps(_RunsShell(), protocol=0))
    entry = _refusal(clean_dir)["model.json"]
    assert entry["format"] == "pickle"
    assert any("file name says json" in i for i in entry["issues"])  # type: ignore[union-attr]
    assert {ModelScanRefusal.NAME_MISMATCH, ModelScanRefusal.DANGEROUS_GLOBAL} <= _reasons(entry)


def test_pickle_inside_zip_detected(tmp_path: Path) -> None:
    """A PyTorch-style .pt: a zip whose data.pkl is a pickle."""
    model = tmp_path / "m"
    model.mkdir()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("archive/data.pkl", pickle.dumps(_RunsShell(), protocol=2))
        zf.writestr("archive/version", "3\n")
    (model / "model.pt").write_bytes(buf.getvalue())
    entry = _refusal(model)["model.pt"]
    assert entry["format"] == "zip"
    assert any(str(i).startswith("archive/data.pkl:") for i in entry["issues"])  # type: ignore[union-attr]
    assert set(entry["pickle_globals"]) & {"posix.system", "os.system"}  # type: ignore[arg-type]
    assert ModelScanRefusal.DANGEROUS_GLOBAL in _reasons(entry)


def test_npy_object_array_pickle_detected(tmp_path: Path) -> None:
    model = tmp_path / "m"
    model.mkdir()
    np.save(model / "arr.npy", np.array([_Evals()], dtype=object), allow_pickle=True)
    entry = _refusal(model)["arr.npy"]
    assert entry["format"] == "npy"
    assert "builtins.eval" in entry["pickle_globals"]
    assert {ModelScanRefusal.PICKLE, ModelScanRefusal.DANGEROUS_GLOBAL} <= _reasons(entry)


def test_symlink_refused(clean_dir: Path, tmp_path: Path) -> None:
    outside = tmp_path / "secret.safetensors"
    save_file({"w": np.zeros(2)}, str(outside))
    (clean_dir / "linked.safetensors").symlink_to(outside)
    (clean_dir / "linkdir").symlink_to(tmp_path, target_is_directory=True)
    files = _refusal(clean_dir)
    assert files["linked.safetensors"]["format"] == "symlink"
    assert files["linkdir"]["verdict"] == "refused"
    assert _reasons(files["linked.safetensors"]) == {ModelScanRefusal.SYMLINK}
    assert _reasons(files["linkdir"]) == {ModelScanRefusal.SYMLINK}
    assert _refused(clean_dir).reason is ModelScanRefusal.SYMLINK


def test_truncated_safetensors_refused(clean_dir: Path) -> None:
    path = clean_dir / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-5])
    entry = _refusal(clean_dir)["model.safetensors"]
    assert entry["format"] == "safetensors"
    assert any("malformed safetensors" in i for i in entry["issues"])  # type: ignore[union-attr]
    assert _reasons(entry) == {ModelScanRefusal.MALFORMED_FILE}


def test_header_length_past_end_refused(clean_dir: Path) -> None:
    path = clean_dir / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(struct.pack("<Q", 10_000) + data[8:])
    entry = _refusal(clean_dir)["model.safetensors"]
    assert any("runs past the end" in i for i in entry["issues"])  # type: ignore[union-attr]
    assert _reasons(entry) == {ModelScanRefusal.MALFORMED_FILE}


def test_unknown_binary_and_misnamed_text_refused(clean_dir: Path) -> None:
    (clean_dir / "blob.bin").write_bytes(bytes(range(256)))
    (clean_dir / "loader.py").write_text("import os\nos.system('x')\n")
    files = _refusal(clean_dir)
    assert files["blob.bin"]["format"] == "unknown"
    assert files["loader.py"]["format"] == "text"
    assert files["README.md"]["verdict"] == "pass"
    assert ModelScanRefusal.UNKNOWN_FORMAT in _reasons(files["blob.bin"])
    assert _reasons(files["loader.py"]) == {ModelScanRefusal.NAME_MISMATCH}


def test_refusal_message_names_file_and_reason(clean_dir: Path) -> None:
    (clean_dir / "evil.pkl").write_bytes(pickle.dumps(_RunsShell()))
    with pytest.raises(ControlRefused, match=r"evil\.pkl: .*dangerous") as err:
        scan_model_files(clean_dir)
    assert err.value.reason is ModelScanRefusal.DANGEROUS_GLOBAL
    assert "reason: dangerous_global" in err.value.diagnostics()


def test_unsafe_allow_list_lets_listed_globals_through(
    clean_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (clean_dir / "state.pkl").write_bytes(pickle.dumps(collections.OrderedDict(a=1)))
    policy = ModelScanPolicy(unsafe_allow_pickle_globals=frozenset({"collections.OrderedDict"}))
    assert "loading them runs code" in caplog.text
    result = scan_model_files(clean_dir, policy)
    entry = {f.path: f for f in result.files}["state.pkl"]
    assert entry.verdict == "warn"
    # Another pickle with a global outside the list is still refused.
    (clean_dir / "other.pkl").write_bytes(pickle.dumps(collections.Counter(a=1)))
    other = _refusal(clean_dir, policy)["other.pkl"]
    assert other["verdict"] == "refused"
    assert ModelScanRefusal.UNLISTED_PICKLE_GLOBAL in _reasons(other)
    assert ModelScanRefusal.PICKLE not in _reasons(other)


def test_policy_rejects_permissive_settings() -> None:
    with pytest.raises(ValidationError, match="never be allowed"):
        ModelScanPolicy(unsafe_allow_pickle_globals=frozenset({"os.system"}))
    with pytest.raises(ValidationError, match="never be allowed"):
        ModelScanPolicy(unsafe_allow_pickle_globals=frozenset({"builtins.eval"}))
    with pytest.raises(ValidationError, match="allowed_formats"):
        ModelScanPolicy(allowed_formats=frozenset({"pickle"}))
    with pytest.raises(ValidationError, match="empty"):
        ModelScanPolicy(allowed_formats=frozenset())
    with pytest.raises(ValidationError):
        ModelScanPolicy(allow_everything=True)  # type: ignore[call-arg]


def test_size_limit_refuses_instead_of_skipping(clean_dir: Path) -> None:
    files = _refusal(clean_dir, ModelScanPolicy(max_file_bytes=64))
    assert any("max_file_bytes" in i for i in files["model.safetensors"]["issues"])  # type: ignore[union-attr]
    assert _reasons(files["model.safetensors"]) == {ModelScanRefusal.LIMIT_EXCEEDED}


def test_empty_or_missing_dir(tmp_path: Path) -> None:
    with pytest.raises(InputError):
        scan_model_files(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ControlRefused, match="no files") as err:
        scan_model_files(tmp_path / "empty")
    assert err.value.reason is ModelScanRefusal.EMPTY_MODEL
    empty = evaluate_model_files(tmp_path / "empty")
    assert not empty.passed and empty.reasons == (ModelScanRefusal.EMPTY_MODEL,)


def test_stack_global_through_memo_resolved() -> None:
    refs, problems, _ = pickle_references(pickle.dumps(_RunsShell(), protocol=4))
    assert not problems
    assert refs in (["posix.system"], ["os.system"], ["nt.system"])


# --- lenient pickle detection (review finding: dis-strict detection failed open) -------------

#: Loads fine with pickle.loads (it runs os.system) but pickletools.dis rejects it: an extra
#: item is left on the stack, so the old detector called it text.
_DIS_REJECTS = b"S'junk'\ncos\nsystem\n(S'echo should-never-run'\ntR."
_ZIP_OK = ModelScanPolicy(allowed_formats=frozenset({"safetensors", "json", "text", "zip"}))


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _issues(entry: dict[str, object]) -> list[str]:
    issues = entry["issues"]
    assert isinstance(issues, list)
    return [str(i) for i in issues]


def test_dis_rejected_pickle_in_torch_zip_refused_even_with_zip_allowed(tmp_path: Path) -> None:
    """The reviewer's bypass: a .pt zip whose data.pkl dis cannot read but loads can."""
    with pytest.raises(ValueError):
        pickletools.dis(_DIS_REJECTS, out=io.StringIO())
    model = tmp_path / "m"
    model.mkdir()
    (model / "model.pt").write_bytes(
        _zip({"archive/data.pkl": _DIS_REJECTS, "archive/version": b"3\n"})
    )
    entry = _refusal(model, _ZIP_OK)["model.pt"]
    assert entry["format"] == "zip" and entry["verdict"] == "refused"
    assert "os.system" in entry["pickle_globals"]  # type: ignore[operator]
    assert any(i.startswith("archive/data.pkl: pickle imports dangerous") for i in _issues(entry))
    assert ModelScanRefusal.DANGEROUS_GLOBAL in _reasons(entry)


def test_dis_rejected_pickle_renamed_to_txt_refused(tmp_path: Path) -> None:
    model = tmp_path / "m"
    model.mkdir()
    (model / "notes.txt").write_bytes(_DIS_REJECTS)
    entry = _refusal(model)["notes.txt"]
    assert entry["format"] == "pickle"
    assert "os.system" in entry["pickle_globals"]  # type: ignore[operator]
    assert {ModelScanRefusal.DANGEROUS_GLOBAL, ModelScanRefusal.NAME_MISMATCH} <= _reasons(entry)


def test_pickle_in_nested_zip_refused(tmp_path: Path) -> None:
    model = tmp_path / "m"
    model.mkdir()
    inner = _zip({"archive/data.pkl": _DIS_REJECTS})
    (model / "bundle.zip").write_bytes(_zip({"inner/model.pt": inner, "README.md": b"# m\n"}))
    entry = _refusal(model, _ZIP_OK)["bundle.zip"]
    assert "os.system" in entry["pickle_globals"]  # type: ignore[operator]
    assert any(
        i.startswith("inner/model.pt: archive/data.pkl: pickle imports dangerous")
        for i in _issues(entry)
    )
    assert ModelScanRefusal.DANGEROUS_GLOBAL in _reasons(entry)


@pytest.mark.parametrize(
    "payload",
    [
        # pickletools.dis: "memo key 0 already defined"; pickle.loads does not care.
        b"S'a'\np0\np0\ncos\nsystem\n(S'echo x'\ntR.",
        # pickletools.genops cannot decode these arguments; the C unpickler
        # (torch.load passes encoding="utf-8") reads them and goes on to os.system.
        "S'\u00e9'\ncos\nsystem\n(S'echo x'\ntR.".encode(),
        b"I0x10\ncos\nsystem\n(S'echo x'\ntR.",
    ],
)
def test_pickles_stricter_tools_reject_are_still_pickles(tmp_path: Path, payload: bytes) -> None:
    model = tmp_path / "m"
    model.mkdir()
    (model / "model.pt").write_bytes(_zip({"weights/blob": payload}))
    (model / "card.txt").write_bytes(payload)
    files = _refusal(model, _ZIP_OK)
    assert files["card.txt"]["format"] == "pickle"
    assert ModelScanRefusal.PICKLE in _reasons(files["card.txt"])
    assert any(i.startswith("weights/blob: pickle") for i in _issues(files["model.pt"]))


def test_pickle_named_files_and_members_refused_whatever_the_content(tmp_path: Path) -> None:
    model = tmp_path / "m"
    model.mkdir()
    (model / "model.pt").write_bytes(
        _zip({"archive/data.pkl": b'{"a": 1}', "archive/notes.txt": b"plain notes\n"})
    )
    (model / "scaler.joblib").write_bytes(b'{"mean": 0.5}')
    files = _refusal(model, _ZIP_OK)
    assert any(
        i.startswith("archive/data.pkl: file name says pickle") for i in _issues(files["model.pt"])
    )
    assert not any(i.startswith("archive/notes.txt") for i in _issues(files["model.pt"]))
    assert files["scaler.joblib"]["format"] == "json"
    assert any("file name says pickle" in i for i in _issues(files["scaler.joblib"]))
    assert ModelScanRefusal.NAME_MISMATCH in _reasons(files["scaler.joblib"])
    assert ModelScanRefusal.NAME_MISMATCH in _reasons(files["model.pt"])


def test_zip_members_get_the_file_rules(tmp_path: Path) -> None:
    model = tmp_path / "m"
    model.mkdir()
    (model / "model.zip").write_bytes(_zip({"loader.py": b"import os\n", "w.json": b"not json"}))
    entry = _refusal(model, _ZIP_OK)["model.zip"]
    assert _reasons(entry) == {ModelScanRefusal.NAME_MISMATCH}
    issues = _issues(entry)
    assert any(i.startswith("loader.py: text content in a file not named") for i in issues)
    assert any(i.startswith("w.json: file name says json") for i in issues)


def test_legitimate_json_text_and_safetensors_not_mistaken_for_pickles(tmp_path: Path) -> None:
    model = tmp_path / "m"
    model.mkdir()
    # Header lengths 0x280.. start with the bytes 0x80 0x02: the PROTO opcode of a pickle.
    tensors = b""
    for pad in range(300, 1400):
        tensors = save({"w": np.zeros(3)}, metadata={"k": "x" * pad})
        if tensors[:2] == b"\x80\x02":
            break
    assert tensors[:2] == b"\x80\x02"
    text = b"Readme: build notes\n(optional) Run it\n"  # R, b, ( are opcodes too
    (model / "model.zip").write_bytes(
        _zip({"w.safetensors": tensors, "config.json": b'{"a": 1}', "README.md": text})
    )
    (model / "w.safetensors").write_bytes(tensors)
    (model / "config.json").write_bytes(b'{"a": 1}')
    (model / "list.json").write_bytes(b"[1, 2]")
    (model / "notes.txt").write_bytes(text)
    result = scan_model_files(model, _ZIP_OK)
    assert {f.path: f.format for f in result.files} == {
        "config.json": "json",
        "list.json": "json",
        "model.zip": "zip",
        "notes.txt": "text",
        "w.safetensors": "safetensors",
    }
    assert all(f.verdict == "pass" for f in result.files)


def test_safetensors_looking_pickle_polyglot_is_a_pickle(tmp_path: Path) -> None:
    # BINFLOAT swallows the 8-byte "header length" and the "{", then GLOBAL os.system.
    blob = b"G" + b"\x00" * 7 + b"{" + b"cos\nsystem\n(S'echo x'\ntR."
    assert pickle_can_run_code(blob)
    model = tmp_path / "m"
    model.mkdir()
    (model / "model.safetensors").write_bytes(blob)
    entry = _refusal(model)["model.safetensors"]
    assert entry["format"] == "pickle"
    assert "os.system" in entry["pickle_globals"]  # type: ignore[operator]
    assert ModelScanRefusal.DANGEROUS_GLOBAL in _reasons(entry)


# --- the result contract: evaluate returns, enforce raises with a reason --------------------


def test_evaluate_returns_a_refusable_result_without_raising(clean_dir: Path) -> None:
    (clean_dir / "model.pkl").write_bytes(pickle.dumps(_RunsShell()))
    result = evaluate_model_files(clean_dir)
    assert not result.passed
    assert [f.path for f in result.refused] == ["model.pkl"]
    assert result.reasons == (
        ModelScanRefusal.DANGEROUS_GLOBAL,
        ModelScanRefusal.PICKLE,
        ModelScanRefusal.FORMAT_NOT_ALLOWED,
    )
    with pytest.raises(ControlRefused) as err:
        enforce_model_scan(result)
    assert err.value.reason is ModelScanRefusal.DANGEROUS_GLOBAL and err.value.result is result
    # Prefect pickles exceptions between processes: the reason survives.
    again = pickle.loads(pickle.dumps(err.value))  # noqa: S301 - our own exception
    assert again.reason is ModelScanRefusal.DANGEROUS_GLOBAL


def test_clean_result_has_no_reason(clean_dir: Path) -> None:
    result = evaluate_model_files(clean_dir)
    assert result.passed and result.reasons == () and result.reason is None
    assert enforce_model_scan(result) is result


def test_more_refusal_reasons(tmp_path: Path) -> None:
    model = tmp_path / "m"
    model.mkdir()
    (model / "model.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(32))
    np.save(model / "arr.npy", np.array(["a"]))  # a numeric .npy passes (issue 10)
    (model / "broken.bin").write_bytes(b"\x80\x04\x95\xff")
    (model / "notes.json").write_text(json.dumps({"x": "y" * 64}))
    files = _refusal(model, ModelScanPolicy(max_text_bytes=32))
    assert ModelScanRefusal.UNSAFE_FORMAT in _reasons(files["model.h5"])
    assert _reasons(files["arr.npy"]) == {ModelScanRefusal.FORMAT_NOT_ALLOWED}
    assert ModelScanRefusal.MALFORMED_PICKLE in _reasons(files["broken.bin"])
    assert _reasons(files["notes.json"]) == {ModelScanRefusal.LIMIT_EXCEEDED}


def test_reason_values_are_stable() -> None:
    # Values are recorded by callers and documentation; renaming one is a breaking change.
    assert ModelScanRefusal.DANGEROUS_GLOBAL.value == "dangerous_global"
    assert ModelScanRefusal.SYMLINK.value == "symlink"
    assert ModelScanRefusal.PICKLE.value == "pickle"
    assert ModelScanRefusal.UNKNOWN_FORMAT.value == "unknown_format"
    assert next(iter(ModelScanRefusal)) is ModelScanRefusal.DANGEROUS_GLOBAL
