from pathlib import Path

import pytest

from secmlops.errors import ControlRefused, InputError
from secmlops.registry.models import ModelRegistry
from secmlops.registry.stores import LocalRegistry, RegistryRefusal, WriteConflict, open_registry


def test_objects_are_create_only(tmp_path: Path) -> None:
    reg = LocalRegistry(tmp_path)
    reg.put("m/a.json", b"1")
    with pytest.raises(WriteConflict, match="immutable") as info:
        reg.put("m/a.json", b"2")
    assert info.value.reason is RegistryRefusal.OBJECT_EXISTS
    assert reg.read("m/a.json") == b"1"


def test_compare_and_swap(tmp_path: Path) -> None:
    reg = LocalRegistry(tmp_path)
    reg.put("p.json", b"one")
    first = reg.get("p.json")
    assert first is not None
    reg.put("p.json", b"two", replace_etag=first.etag)
    with pytest.raises(WriteConflict, match="changed") as info:
        reg.put("p.json", b"three", replace_etag=first.etag)
    assert info.value.reason is RegistryRefusal.OBJECT_CHANGED
    assert reg.read("p.json") == b"two"


def test_keys_cannot_escape_the_root(tmp_path: Path) -> None:
    reg = LocalRegistry(tmp_path / "root")
    for bad in ("../x", "/abs", "a/../../b", ""):
        with pytest.raises(InputError):
            reg.put(bad, b"x")


def test_missing_object_is_a_refusal(tmp_path: Path) -> None:
    with pytest.raises(ControlRefused, match="does not exist") as info:
        LocalRegistry(tmp_path).read("nope.json")
    assert info.value.reason is RegistryRefusal.OBJECT_MISSING


def test_versions_are_allocated_in_order(tmp_path: Path) -> None:
    models = ModelRegistry(LocalRegistry(tmp_path), "churn")
    assert models.allocate_version({}) == "v1"
    assert models.allocate_version({}) == "v2"
    assert models.versions() == ["v1", "v2"]
    with pytest.raises(InputError, match="no version v9"):
        models.require_version("v9")


def test_upload_download_tree(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.bin").write_bytes(b"a")
    (src / "sub" / "b.txt").write_text("b")
    reg = LocalRegistry(tmp_path / "reg")
    uploaded = reg.upload_tree(src, "m/versions/v1/model")
    assert set(uploaded) == {"a.bin", "sub/b.txt"}
    out = tmp_path / "out"
    out.mkdir()
    assert sorted(reg.download_tree("m/versions/v1/model", out)) == ["a.bin", "sub/b.txt"]
    assert (out / "sub" / "b.txt").read_text() == "b"


def test_open_registry_uris(tmp_path: Path) -> None:
    assert isinstance(open_registry(str(tmp_path)), LocalRegistry)
    assert isinstance(open_registry(f"file://{tmp_path}"), LocalRegistry)
    with pytest.raises(InputError, match="scheme"):
        open_registry("gs://bucket/x")
    with pytest.raises(InputError):
        open_registry("")


def test_invalid_model_names_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError):
        ModelRegistry(LocalRegistry(tmp_path), "../etc")


def test_hidden_files_are_listed_like_s3_would(tmp_path: Path) -> None:
    reg = LocalRegistry(tmp_path)
    reg.put("m/versions/v1/model/.gitattributes", b"* binary")
    reg.put("m/versions/v1/model/w.bin", b"w")
    assert reg.list_keys("m/versions/v1/model") == [
        "m/versions/v1/model/.gitattributes",
        "m/versions/v1/model/w.bin",
    ]
    assert ".lock" not in " ".join(reg.list_keys(""))
