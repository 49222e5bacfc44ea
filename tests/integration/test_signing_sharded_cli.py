"""Issue 10 follow-up: ``secmlops sign --shard-size`` (the sharded fast path) and ``verify``.

A ``files`` manifest hashes a one-file model on one core (a file's sha256 is one chain);
a ``shards`` manifest lets every core hash it. Signing and verifying with shards hash each
byte once and report the signed manifest's digest (sha256 over the canonical JSON of
``{"path:start:end": sha256}``), not ``tree_digest``, which would need every byte hashed a
second time. Bad sizes are exit 2; a changed byte is exit 1.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from secmlops._internal.digests import tree_digest
from secmlops.evidence.statements import generate_keypair

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
MIB = 1 << 20


def _secmlops(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "secmlops"), *args], capture_output=True, text=True, timeout=300, check=False
    )


@pytest.fixture(scope="module")
def signed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path, dict[str, object]]:
    """A model of a 3.5 MiB file and a small one, signed with 1M shards by the CLI."""
    root = tmp_path_factory.mktemp("sharded")
    generate_keypair(root / "k.pem", root / "k.pub")
    model = root / "model"
    (model / "sub").mkdir(parents=True)
    (model / "weights.bin").write_bytes(os.urandom(3 * MIB + MIB // 2))
    (model / "sub" / "config.json").write_text('{"layers": 2}')
    sig = root / "model.sig"
    out = _secmlops(
        "sign", str(model), "--key", str(root / "k.pem"), "--signature", str(sig),
        "--shard-size", "1M", "--json",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    return model, sig, root / "k.pub", json.loads(out.stdout)


def _resources(sig: Path) -> list[dict[str, str]]:
    payload = json.loads(base64.b64decode(json.loads(sig.read_text())["dsseEnvelope"]["payload"]))
    assert payload["predicate"]["serialization"]["shard_size"] == MIB
    resources: list[dict[str, str]] = payload["predicate"]["resources"]
    return resources


def test_sign_with_shards_reports_the_signed_manifests_digest(
    signed: tuple[Path, Path, Path, dict[str, object]],
) -> None:
    model, sig, _, result = signed
    resources = _resources(sig)
    assert [r["name"] for r in resources] == [
        "sub/config.json:0:13",
        "weights.bin:0:1048576",
        "weights.bin:1048576:2097152",
        "weights.bin:2097152:3145728",
        "weights.bin:3145728:3670016",
    ]
    manifest = {r["name"]: r["digest"] for r in resources}
    canonical = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    assert result["model_digest"] == hashlib.sha256(canonical).hexdigest()
    assert result["model_digest"] != tree_digest(model)
    assert result["shard_size"] == MIB and result["method"] == "key"


def test_verify_a_sharded_signature_reports_the_same_digest(
    signed: tuple[Path, Path, Path, dict[str, object]],
) -> None:
    model, sig, pub, result = signed
    out = _secmlops(
        "verify", str(model), "--signature", str(sig), "--public-key", str(pub), "--json"
    )
    assert out.returncode == 0, out.stderr
    verified = json.loads(out.stdout)
    assert verified["model_digest"] == result["model_digest"]
    assert verified["shard_size"] == MIB
    assert verified["tree_digest"] is None  # whole files were not hashed: each byte once


def test_verify_refuses_a_changed_byte_in_one_shard(
    signed: tuple[Path, Path, Path, dict[str, object]], tmp_path: Path
) -> None:
    model, sig, pub, _ = signed
    copy = tmp_path / "model"
    (copy / "sub").mkdir(parents=True)
    data = bytearray((model / "weights.bin").read_bytes())
    data[2 * MIB + 5] ^= 1
    (copy / "weights.bin").write_bytes(bytes(data))
    (copy / "sub" / "config.json").write_bytes((model / "sub" / "config.json").read_bytes())
    out = _secmlops("verify", str(copy), "--signature", str(sig), "--public-key", str(pub))
    assert out.returncode == 1
    assert "Hash mismatch for 'weights.bin'" in out.stderr


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("0", "at least 1M"),
        ("512K", "at least 1M"),
        ("1000", "at least 1M"),
        ("-1", "not a size"),
        ("1.5G", "not a size"),
        ("big", "not a size"),
        ("", "not a size"),
        ("1X", "not a size"),
    ],
)
def test_a_bad_shard_size_is_bad_input(
    signed: tuple[Path, Path, Path, dict[str, object]], tmp_path: Path, value: str, why: str
) -> None:
    model, _, pub, _ = signed
    key = pub.with_suffix(".pem")
    out = _secmlops(
        "sign", str(model), "--key", str(key), "--signature", str(tmp_path / "s.sig"),
        "--shard-size", value,
    )  # fmt: skip
    assert out.returncode == 2, out.stderr
    assert why in out.stderr or (value == "" and "empty" in out.stderr), out.stderr
    assert not (tmp_path / "s.sig").exists()


@pytest.mark.parametrize(("value", "size"), [("1048576", MIB), ("1M", MIB), ("2MiB", 2 * MIB)])
def test_shard_size_units(value: str, size: int) -> None:
    from secmlops.cli import _shard_size_option

    assert _shard_size_option(value) == size
    assert _shard_size_option("1G") == 1 << 30
