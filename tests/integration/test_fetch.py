"""Issue 9: ``secmlops fetch MODEL --stage STAGE DEST``, the consumer side.

A model server's init container fetches what a stage serves from an S3 registry (moto_server
over HTTP). The fetch runs the gate's own verification (signed, fresh, not rolled back
pointer; its VSA; the full deploy gate) on the copy it streamed into a temp dir next to DEST
and moves it into DEST only when all of it passed; a model byte edited in S3 and a replayed
old pointer are refused (exit 1) with DEST left absent, a non-empty DEST is bad input (2).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import secmlops
from secmlops._internal.digests import tree_digest
from secmlops.catalogue import GateRefusal
from secmlops.errors import ControlRefused
from secmlops.registry.stores import S3Registry
from tests.integration.deploy_world import MODEL, World, make_world


@pytest.fixture
def world(tmp_path: Path, s3_bucket: str, s3_endpoint: str) -> World:
    """v1 in production on S3, through the real gate."""
    w = make_world(tmp_path, S3Registry(s3_bucket, "models", endpoint_url=s3_endpoint))
    w.to_production(w.register())
    return w


def _model_key(w: World, version: str) -> str:
    keys = w.models.store.list_keys(w.models.model_prefix(version) + "/")
    assert keys
    return keys[0]


def test_untouched_model_is_fetched_with_its_digest(world: World, tmp_path: Path) -> None:
    dest = tmp_path / "serve" / "current"
    dest.parent.mkdir()
    out = world.cli("fetch", MODEL, "--stage", "production", str(dest))
    assert out.returncode == 0, out.stderr
    pointer, _ = world.models.read_pointer("production")
    assert pointer is not None
    assert f"{MODEL} production v1 sha256:{pointer.model_digest}" in out.stdout
    assert tree_digest(dest) == pointer.model_digest
    assert [p.name for p in dest.parent.iterdir()] == ["current"]  # no temp dir left behind


def test_fetch_from_python_into_an_empty_dir(world: World, tmp_path: Path) -> None:
    dest = tmp_path / "current"
    dest.mkdir()
    got = secmlops.fetch(
        world.models, "production", dest, keys=world.keys, policy=world.policy, seen=world.seen
    )
    assert got.version == "v1"
    assert tree_digest(dest) == got.model_digest
    assert {c.name for c in got.report.checks} >= {"release", "model-signature", "approval"}


def test_model_byte_edited_in_s3_is_refused_and_dest_untouched(
    world: World, tmp_path: Path
) -> None:
    """Issue 9: fetch refuses a model edited in S3 (the gate's model-signature check)."""
    key = _model_key(world, "v1")
    current = world.models.store.get(key)
    assert current is not None
    edited = bytearray(current.data)
    edited[-1] ^= 0x01
    world.models.store.put(key, bytes(edited), replace_etag=current.etag)
    dest = tmp_path / "current"
    out = world.cli("fetch", MODEL, "--stage", "production", str(dest), "--json")
    assert out.returncode == 1, out.stdout + out.stderr
    assert "model-signature" in out.stderr
    assert "\n" not in out.stderr.strip().splitlines()[0]
    assert not dest.exists()
    assert list(tmp_path.glob(".current.fetch-*")) == []
    with pytest.raises(ControlRefused) as err:
        secmlops.fetch(
            world.models, "production", dest, keys=world.keys, policy=world.policy, seen=world.seen
        )
    assert err.value.reason is GateRefusal.MODEL_SIGNATURE_INVALID
    assert not dest.exists()


def test_replayed_pointer_is_refused_and_dest_untouched(world: World, tmp_path: Path) -> None:
    """Issue 9 / issue 8 attack 1: an old (validly signed) pointer put back is refused."""
    key = world.models.stage_key("production")
    old = world.models.store.get(key)
    assert old is not None
    world.to_production(world.register())  # v2 now serves production
    assert world.cli("fetch", MODEL, str(tmp_path / "first")).returncode == 0
    current = world.models.store.get(key)
    assert current is not None
    world.models.store.put(key, old.data, replace_etag=current.etag)
    dest = tmp_path / "current"
    out = world.cli("fetch", MODEL, "--stage", "production", str(dest))
    assert out.returncode == 1, out.stdout + out.stderr
    assert "pointer" in out.stderr
    assert not dest.exists()


def test_non_empty_dest_is_bad_input(world: World, tmp_path: Path) -> None:
    dest = tmp_path / "current"
    dest.mkdir()
    (dest / "old-model.bin").write_bytes(b"x")
    out = world.cli("fetch", MODEL, "--stage", "production", str(dest))
    assert out.returncode == 2, out.stdout + out.stderr
    assert "not empty" in out.stderr
    assert [p.name for p in dest.iterdir()] == ["old-model.bin"]


def test_fetch_json_names_the_gate_checks(world: World, tmp_path: Path) -> None:
    out = world.cli("fetch", MODEL, str(tmp_path / "current"), "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["version"] == "v1"
    assert all(c["passed"] for c in data["checks"])
    assert {"release", "model-signature", "staged"} <= {c["name"] for c in data["checks"]}
