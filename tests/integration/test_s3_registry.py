"""The registry over a real S3 API (moto_server on 127.0.0.1)."""

from pathlib import Path

import pytest

from secmlops.errors import ToolError
from secmlops.registry.models import ModelRegistry
from secmlops.registry.stores import S3Registry, WriteConflict, open_registry


def test_s3_create_only_and_compare_and_swap(s3_bucket: str, s3_endpoint: str) -> None:
    reg = open_registry(f"s3://{s3_bucket}/prefix", s3_endpoint_url=s3_endpoint)
    assert isinstance(reg, S3Registry)
    reg.put("m/a.json", b"1")
    with pytest.raises(WriteConflict):
        reg.put("m/a.json", b"2")
    first = reg.get("m/a.json")
    assert first is not None and first.data == b"1"
    reg.put("m/a.json", b"3", replace_etag=first.etag)
    with pytest.raises(WriteConflict):
        reg.put("m/a.json", b"4", replace_etag=first.etag)
    assert reg.read("m/a.json") == b"3"
    assert reg.list_keys("m") == ["m/a.json"]
    assert reg.get("m/none.json") is None


def test_s3_versions_and_trees(s3_bucket: str, s3_endpoint: str, tmp_path: Path) -> None:
    models = ModelRegistry(open_registry(f"s3://{s3_bucket}", s3_endpoint_url=s3_endpoint), "churn")
    assert models.allocate_version({}) == "v1"
    assert models.allocate_version({}) == "v2"
    src = tmp_path / "model"
    src.mkdir()
    (src / "w.bin").write_bytes(b"\x00" * 10)
    models.store.upload_tree(src, models.model_prefix("v2"))
    out = tmp_path / "out"
    out.mkdir()
    assert models.store.download_tree(models.model_prefix("v2"), out) == ["w.bin"]


def test_unreachable_s3_is_a_tool_error(aws_env: None) -> None:
    reg = open_registry("s3://bucket", s3_endpoint_url="http://127.0.0.1:9")
    with pytest.raises(ToolError, match="S3 GET"):
        reg.get("x.json")


def test_missing_bucket_is_a_tool_error(s3_endpoint: str, aws_env: None) -> None:
    reg = open_registry("s3://no-such-bucket-here", s3_endpoint_url=s3_endpoint)
    with pytest.raises(ToolError, match="bucket"):
        reg.put("x.json", b"1")
