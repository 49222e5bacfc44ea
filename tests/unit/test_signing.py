"""Model signing with OpenSSF model-signing and a local EC key, and what verification refuses."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from secmlops._internal.digests import sha256_file, tree_digest
from secmlops.controls.signing import SignatureRefusal, sign_model, verify_model_signature
from secmlops.errors import ControlRefused, InputError
from secmlops.evidence.statements import generate_keypair, key_id, load_public_key

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "model-signing"


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    generate_keypair(tmp_path / "keys" / "signer.pem", tmp_path / "keys" / "signer.pub")
    return tmp_path / "keys" / "signer.pem", tmp_path / "keys" / "signer.pub"


@pytest.fixture
def signed(tmp_path: Path, keys: tuple[Path, Path]) -> tuple[Path, Path, Path]:
    model = tmp_path / "model"
    (model / "sub").mkdir(parents=True)
    save_file({"w": np.arange(4, dtype=np.float64)}, str(model / "model.safetensors"))
    (model / "model.json").write_text(json.dumps({"classes": [0, 1]}))
    (model / "sub" / "README.md").write_text("card\n")
    sig = tmp_path / "out" / "model.sig"
    sign_model(model, private_key=keys[0], signature=sig)
    return model, sig, keys[1]


def test_sign_and_verify(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.json").write_text("{}")
    sig = tmp_path / "model.sig"
    result = sign_model(model, private_key=keys[0], signature=sig)
    assert result.signature == sig.resolve()
    assert result.signature_sha256 == sha256_file(sig)
    assert result.key_id == key_id(load_public_key(keys[1]))
    assert result.model_digest == tree_digest(model)
    bundle = json.loads(sig.read_text())
    assert bundle["dsseEnvelope"]["payloadType"] == "application/vnd.in-toto+json"
    assert not list(tmp_path.glob(".model.sig.*"))  # no temp file left behind
    verify_model_signature(model, signature=sig, public_key=keys[1])


def test_verify_after_move(signed: tuple[Path, Path, Path], tmp_path: Path) -> None:
    model, sig, pub = signed
    moved = tmp_path / "elsewhere" / "renamed"
    shutil.copytree(model, moved)
    assert verify_model_signature(moved, signature=sig, public_key=pub) is None  # raises if not


def test_modified_byte_refused(signed: tuple[Path, Path, Path]) -> None:
    model, sig, pub = signed
    path = model / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ControlRefused, match=r"does not verify: .*model\.safetensors") as info:
        verify_model_signature(model, signature=sig, public_key=pub)
    assert info.value.reason is SignatureRefusal.CONTENT_MISMATCH


def test_added_file_refused(signed: tuple[Path, Path, Path]) -> None:
    model, sig, pub = signed
    (model / "backdoor.pkl").write_bytes(b"\x80\x04N.")
    with pytest.raises(ControlRefused, match=r"does not verify: .*backdoor\.pkl") as info:
        verify_model_signature(model, signature=sig, public_key=pub)
    assert info.value.reason is SignatureRefusal.FILE_SET_MISMATCH


@pytest.mark.parametrize("name", [".gitignore", ".git/config", ".github/x"])
def test_added_git_paths_refused(signed: tuple[Path, Path, Path], name: str) -> None:
    """model-signing's verifier skips .git* paths by default; ours must not."""
    model, sig, pub = signed
    (model / name).parent.mkdir(parents=True, exist_ok=True)
    (model / name).write_text("x")
    with pytest.raises(ControlRefused, match="does not verify") as info:
        verify_model_signature(model, signature=sig, public_key=pub)
    assert info.value.reason is SignatureRefusal.FILE_SET_MISMATCH


def test_removed_file_refused(signed: tuple[Path, Path, Path]) -> None:
    model, sig, pub = signed
    (model / "sub" / "README.md").unlink()
    with pytest.raises(ControlRefused, match=r"does not verify: .*Missing.*README\.md") as info:
        verify_model_signature(model, signature=sig, public_key=pub)
    assert info.value.reason is SignatureRefusal.FILE_SET_MISMATCH


def test_symlink_refused(signed: tuple[Path, Path, Path], tmp_path: Path) -> None:
    model, sig, pub = signed
    target = model / "model.json"
    moved = tmp_path / "real.json"
    shutil.move(target, moved)
    target.symlink_to(moved)  # same bytes, but now a link out of the model
    with pytest.raises(ControlRefused, match="does not verify") as info:
        verify_model_signature(model, signature=sig, public_key=pub)
    assert info.value.reason is SignatureRefusal.SYMLINK_IN_MODEL


def test_wrong_key_refused(signed: tuple[Path, Path, Path], tmp_path: Path) -> None:
    model, sig, _ = signed
    generate_keypair(tmp_path / "other.pem", tmp_path / "other.pub")
    with pytest.raises(ControlRefused, match="does not verify") as info:
        verify_model_signature(model, signature=sig, public_key=tmp_path / "other.pub")
    assert info.value.reason is SignatureRefusal.WRONG_KEY


def test_tampered_signature_refused(signed: tuple[Path, Path, Path]) -> None:
    model, sig, pub = signed
    bundle = json.loads(sig.read_text())
    bundle["dsseEnvelope"]["payload"] = bundle["dsseEnvelope"]["payload"][:-8] + "AAAAAAA="
    sig.write_text(json.dumps(bundle))
    with pytest.raises(ControlRefused, match="does not verify") as info:
        verify_model_signature(model, signature=sig, public_key=pub)
    assert info.value.reason is SignatureRefusal.SIGNATURE_INVALID
    sig.write_text("not json at all")
    with pytest.raises(ControlRefused, match="does not verify") as info:
        verify_model_signature(model, signature=sig, public_key=pub)
    assert info.value.reason is SignatureRefusal.MALFORMED_SIGNATURE


def test_missing_inputs_are_input_errors(signed: tuple[Path, Path, Path], tmp_path: Path) -> None:
    model, sig, pub = signed
    with pytest.raises(InputError, match="model signature"):
        verify_model_signature(model, signature=tmp_path / "nope.sig", public_key=pub)
    with pytest.raises(InputError, match="public key"):
        verify_model_signature(model, signature=sig, public_key=tmp_path / "nope.pub")
    with pytest.raises(InputError, match="model directory"):
        verify_model_signature(tmp_path / "no-model", signature=sig, public_key=pub)
    not_a_key = tmp_path / "garbage.pub"
    not_a_key.write_text("hello")
    with pytest.raises(InputError):
        verify_model_signature(model, signature=sig, public_key=not_a_key)


def test_signature_inside_model_dir_refused(
    signed: tuple[Path, Path, Path], keys: tuple[Path, Path]
) -> None:
    model, _, _ = signed
    with pytest.raises(InputError, match="inside the model directory"):
        sign_model(model, private_key=keys[0], signature=model / "model.sig")
    assert not (model / "model.sig").exists()


def test_sign_refuses_missing_key_and_symlinks(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "a.json").write_text("{}")
    with pytest.raises(InputError, match="does not exist"):
        sign_model(model, private_key=tmp_path / "missing.pem", signature=tmp_path / "m.sig")
    (model / "link.json").symlink_to(model / "a.json")
    with pytest.raises(InputError, match="symlink"):
        sign_model(model, private_key=keys[0], signature=tmp_path / "m.sig")
    assert not (tmp_path / "m.sig").exists()


@pytest.mark.parametrize("version", ["v1.0.1-elliptic-key", "v1.1.0-elliptic-key"])
def test_upstream_elliptic_key_fixture_verifies(tmp_path: Path, version: str) -> None:
    """Signatures made by upstream model-signing releases verify with their public key."""
    source = FIXTURES / version
    public_key = FIXTURES / "keys" / "signing-key-pub.pem"
    model = tmp_path / version
    model.mkdir()
    # 'ignore-me' was excluded when signing and model.sig is the signature (README.md).
    for name in ("signme-1", "signme-2"):
        shutil.copyfile(source / name, model / name)
    verify_model_signature(model, signature=source / "model.sig", public_key=public_key)

    (model / "signme-2").write_bytes((model / "signme-2").read_bytes() + b"!")
    with pytest.raises(ControlRefused, match="does not verify") as info:
        verify_model_signature(model, signature=source / "model.sig", public_key=public_key)
    assert info.value.reason is SignatureRefusal.CONTENT_MISMATCH


def test_upstream_fixture_with_other_key_refused(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    source = FIXTURES / "v1.1.0-elliptic-key"
    model = tmp_path / "m"
    model.mkdir()
    for name in ("signme-1", "signme-2"):
        shutil.copyfile(source / name, model / name)
    with pytest.raises(ControlRefused, match="does not verify") as info:
        verify_model_signature(model, signature=source / "model.sig", public_key=keys[1])
    assert info.value.reason is SignatureRefusal.WRONG_KEY


def test_upstream_fixture_extra_ignored_file_refused(tmp_path: Path) -> None:
    """The upstream signature lists 'ignore-me' as ignored; our verification still refuses
    a file the signature does not cover."""
    source = FIXTURES / "v1.1.0-elliptic-key"
    model = tmp_path / "m"
    shutil.copytree(source, model, ignore=shutil.ignore_patterns("model.sig"))
    with pytest.raises(ControlRefused, match="unsigned: \\['ignore-me'\\]") as info:
        verify_model_signature(
            model,
            signature=source / "model.sig",
            public_key=FIXTURES / "keys" / "signing-key-pub.pem",
        )
    assert info.value.reason is SignatureRefusal.FILE_SET_MISMATCH
