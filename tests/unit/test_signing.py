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


# --- issue 10: native signing, one hashing pass, certificates ------------------------------

import base64  # noqa: E402
import datetime  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec, ed25519  # noqa: E402
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID  # noqa: E402

from secmlops.controls import model_hashing  # noqa: E402
from secmlops.controls.signing import (  # noqa: E402
    CertificateSigner,
    KeySigner,
    sign_model_with,
)
from secmlops.controls.signing_native import check_statement_against_model  # noqa: E402
from secmlops.evidence.signers import FileSigner  # noqa: E402

#: Names whose order differs between plain string sorting and model-signing's (path parts).
TRICKY_NAMES = ["a.txt", "a/b", "a-b", "a b", "a/b.c/d", "B", "é.bin", "z/0", "a/b-c", ".hidden"]


def _tricky_model(root: Path, *, empty: bool = True) -> Path:
    for i, name in enumerate(TRICKY_NAMES):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(bytes([i]) * (3 + 5 * i))
    if empty:
        (root / "empty").write_bytes(b"")
    return root


def _payload(sig: Path) -> dict[str, object]:
    bundle = json.loads(sig.read_text())
    data: dict[str, object] = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
    return data


@pytest.mark.parametrize("shard_size", [None, 4])
def test_manifest_is_model_signings_and_digest_is_tree_digest(
    tmp_path: Path, shard_size: int | None
) -> None:
    """One pass gives model-signing's own manifest (same resources, same order) and the
    model digest every other control compares (tree_digest, unchanged definition)."""
    from model_signing import hashing

    model = _tricky_model(tmp_path / "model", empty=shard_size is None)
    digests = model_hashing.hash_model(model, shard_size=shard_size)
    config = hashing.Config().set_ignored_paths(paths=[], ignore_git_paths=False)
    if shard_size is not None:
        config.use_shard_serialization(shard_size=shard_size)
    reference = config.hash(model)
    assert digests.resources() == [
        (str(rd.identifier), rd.digest.digest_hex) for rd in reference.resource_descriptors()
    ]
    assert digests.model_digest == tree_digest(model) == _reference_tree_digest(model)
    assert digests.tree_digest == tree_digest(model)
    assert not model_hashing.changed_files(digests)


def _reference_tree_digest(root: Path) -> str:
    """tree_digest's definition written out plainly (what release manifests, fetch, the gate
    and the scans have always compared): it must not change."""
    import hashlib

    files = {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in root.rglob("*")
        if p.is_file()
    }
    canonical = json.dumps(files, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(canonical).hexdigest()


def _manifest_digest_of(resources: list[dict[str, str]]) -> str:
    """The model digest's definition written out: sha256 over the canonical JSON of the
    signed manifest ``{resource name: sha256}``."""
    import hashlib

    manifest = {r["name"]: r["digest"] for r in resources}
    return hashlib.sha256(
        json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()


def test_the_model_digest_is_the_signed_manifests_digest(
    tmp_path: Path, keys: tuple[Path, Path]
) -> None:
    """One definition: for a files manifest it is tree_digest, for shards the digest of the
    shard manifest (the whole files are not hashed when signing with shards)."""
    model = _tricky_model(tmp_path / "model", empty=False)
    for shard_size in (None, 4):
        sig = tmp_path / f"model-{shard_size}.sig"
        signer = KeySigner.from_pem(keys[0])
        result = sign_model_with(model, signer=signer, signature=sig, shard_size=shard_size)
        predicate = _payload(sig)["predicate"]
        assert isinstance(predicate, dict)
        assert result.model_digest == _manifest_digest_of(predicate["resources"])
        assert result.shard_size == shard_size
        assert (result.model_digest == tree_digest(model)) is (shard_size is None)
        assert result.to_json().get("shard_size") == shard_size


def test_sharded_hashing_without_whole_files_hashes_shards_only(tmp_path: Path) -> None:
    """whole_files=False (sign/verify --shard-size): each byte once, no whole-file view."""
    model = _tricky_model(tmp_path / "model", empty=False)
    both = model_hashing.hash_model(model, shard_size=4)
    shards = model_hashing.hash_model(model, shard_size=4, whole_files=False)
    assert not shards.whole_files and not shards.files and shards.tree_digest is None
    assert shards.resources() == both.resources()
    assert shards.model_digest == shards.manifest_digest == both.manifest_digest
    assert both.model_digest == both.tree_digest == tree_digest(model)
    assert not model_hashing.changed_files(shards)


def test_a_racily_clean_file_changed_under_shards_only_hashing_is_caught(tmp_path: Path) -> None:
    """A just-written file is hashed again after the stat check, shard by shard when only
    shards were hashed: a write that left its stat unchanged (simulated by a different
    recorded shard digest) is caught."""
    import dataclasses

    model = tmp_path / "model"
    model.mkdir()
    (model / "w.bin").write_bytes(b"a" * 64)
    (model / "x.bin").write_bytes(b"x" * 8)
    digests = model_hashing.hash_model(model, shard_size=16, whole_files=False)
    assert not model_hashing.changed_files(digests)  # racy, hashed again, unchanged
    first, *rest = digests.shards["w.bin"]
    other = (first[0], first[1], "0" * 64)
    before = dataclasses.replace(digests, shards={**digests.shards, "w.bin": (other, *rest)})
    assert model_hashing.changed_files(before) == ["w.bin"]


def test_sharded_signature_lists_shards(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    model = _tricky_model(tmp_path / "model", empty=False)
    sig = tmp_path / "model.sig"
    sign_model_with(model, signer=KeySigner.from_pem(keys[0]), signature=sig, shard_size=4)
    statement = _payload(sig)
    predicate = statement["predicate"]
    assert isinstance(predicate, dict)
    assert predicate["serialization"] == {
        "method": "shards",
        "hash_type": "sha256",
        "shard_size": 4,
        "allow_symlinks": False,
    }
    assert predicate["resources"][0]["name"] == ".hidden:0:4"
    assert {r["algorithm"] for r in predicate["resources"]} == {"sha256-sharded-4"}
    verify_model_signature(model, signature=sig, public_key=keys[1])
    path = model / "a" / "b"
    path.write_bytes(path.read_bytes() + b"!")  # one more shard: the file changed
    with pytest.raises(ControlRefused, match="Hash mismatch for 'a/b'") as info:
        verify_model_signature(model, signature=sig, public_key=keys[1])
    assert info.value.reason is SignatureRefusal.CONTENT_MISMATCH


def test_sharded_signature_refuses_an_added_empty_file(
    tmp_path: Path, keys: tuple[Path, Path]
) -> None:
    """An empty file has no shard, so model-signing neither lists nor checks it; ours
    refuses it as unsigned."""
    model = _tricky_model(tmp_path / "model", empty=False)
    sig = tmp_path / "model.sig"
    sign_model_with(model, signer=KeySigner.from_pem(keys[0]), signature=sig, shard_size=4)
    (model / "__init__.py").write_bytes(b"")
    with pytest.raises(ControlRefused, match=r"unsigned: \['__init__.py'\]") as info:
        verify_model_signature(model, signature=sig, public_key=keys[1])
    assert info.value.reason is SignatureRefusal.FILE_SET_MISMATCH


@pytest.mark.parametrize("name", ["empty", "a:b"])
def test_sharded_signing_refuses_what_shards_cannot_name(
    tmp_path: Path, keys: tuple[Path, Path], name: str
) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "w.bin").write_bytes(b"weights")
    (model / name).write_bytes(b"" if name == "empty" else b"x")
    with pytest.raises(InputError, match="sharded manifest cannot list"):
        sign_model_with(
            model, signer=KeySigner.from_pem(keys[0]), signature=tmp_path / "m.sig", shard_size=4
        )
    assert not (tmp_path / "m.sig").exists()


def test_statement_is_checked_against_the_directory(
    signed: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    """What the certificate and Sigstore verifiers call after checking the signature."""
    model, sig, _ = signed
    envelope = json.loads(sig.read_text())["dsseEnvelope"]
    payload = base64.b64decode(envelope["payload"])
    kind = envelope["payloadType"]
    digests = check_statement_against_model(model.resolve(), kind, payload, sig)
    assert digests.model_digest == digests.manifest_digest == tree_digest(model)
    with pytest.raises(ControlRefused) as info:
        check_statement_against_model(model.resolve(), "text/plain", payload, sig)
    assert info.value.reason is SignatureRefusal.MALFORMED_SIGNATURE
    compat = json.loads(payload)
    compat["predicateType"] = "https://model_signing/Digests/v0.1"
    with pytest.raises(ControlRefused, match=r"not a model-signing v1\.0 manifest") as info:
        check_statement_against_model(model.resolve(), kind, json.dumps(compat).encode(), sig)
    assert info.value.reason is SignatureRefusal.MALFORMED_SIGNATURE
    os.mkfifo(model / "pipe")
    with pytest.raises(ControlRefused, match="not a regular file") as info:
        check_statement_against_model(model.resolve(), kind, payload, sig)
    assert info.value.reason is SignatureRefusal.FILE_SET_MISMATCH


# --- changed while signing: caught from file states, not by hashing again ------------------


def _model_with_weights(root: Path) -> Path:
    root.mkdir()
    (root / "weights.bin").write_bytes(os.urandom(3 << 20))
    (root / "config.json").write_text("{}")
    return root


def _during_hashing(monkeypatch: pytest.MonkeyPatch, change: object) -> None:
    real = model_hashing.hash_model

    def hash_then_change(*args: object, **kwargs: object) -> model_hashing.ModelDigests:
        digests = real(*args, **kwargs)  # type: ignore[arg-type]
        change()  # type: ignore[operator]
        return digests

    monkeypatch.setattr(model_hashing, "hash_model", hash_then_change)


def _same_size_same_mtime(path: Path) -> None:
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[0] ^= 1
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # a careful writer hides the mtime


def _replaced(path: Path) -> None:
    st = path.stat()
    tmp = path.with_name(path.name + ".new")
    tmp.write_bytes(path.read_bytes())  # the same bytes, a new inode
    os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(tmp, path)


CHANGES = {
    "appended": lambda m: (m / "weights.bin").open("ab").write(b"x"),
    "same-size-same-mtime": lambda m: _same_size_same_mtime(m / "weights.bin"),
    "replaced-by-rename": lambda m: _replaced(m / "config.json"),
    "added": lambda m: (m / "late.bin").write_bytes(b"late"),
    "removed": lambda m: (m / "config.json").unlink(),
}


@pytest.mark.parametrize("change", CHANGES)
def test_a_model_changed_while_signing_is_refused(
    tmp_path: Path, keys: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, change: str
) -> None:
    model = _model_with_weights(tmp_path / "model")
    # Only the state comparison: no racy re-hash, and the change lands in a later clock tick
    # than the files' creation (ctime is all that tells a same-size, same-mtime rewrite).
    monkeypatch.setattr(model_hashing, "RACY_WINDOW_NS", 0)
    time.sleep(0.05)  # coarse clock ticks are 1-10 ms
    _during_hashing(monkeypatch, lambda: CHANGES[change](model))
    sig = tmp_path / "model.sig"
    with pytest.raises(ControlRefused, match="changed while it was being signed") as info:
        sign_model(model, private_key=keys[0], signature=sig)
    assert info.value.reason is SignatureRefusal.MODEL_CHANGED_WHILE_SIGNING
    assert not sig.exists()


def test_racily_clean_files_are_hashed_again(tmp_path: Path) -> None:
    """A write in the same clock tick as the first stat can leave the state unchanged; a
    file that recent is hashed again, so its change is caught anyway."""
    model = _model_with_weights(tmp_path / "model")
    digests = model_hashing.hash_model(model)  # just written: inside the racy window
    stale = dict(digests.files, **{"config.json": "0" * 64})  # as if it changed mid-hash
    racy = model_hashing.ModelDigests(digests.tree, stale)
    assert model_hashing.changed_files(racy) == ["config.json"]


def test_unchanged_old_files_are_not_hashed_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _model_with_weights(tmp_path / "model")
    monkeypatch.setattr(model_hashing, "RACY_WINDOW_NS", -(10**18))  # nothing is recent
    digests = model_hashing.hash_model(model)
    calls: list[object] = []
    real = model_hashing._run
    monkeypatch.setattr(model_hashing, "_run", lambda *a: calls.append(a) or real(*a))
    assert model_hashing.changed_files(digests) == []
    assert calls == []


def test_hashing_reuses_one_pool(tmp_path: Path) -> None:
    """No thread start-up per file or per call: the same pool serves every model."""
    model = tmp_path / "model"
    model.mkdir()
    for i in range(300):
        (model / f"f{i:03}.bin").write_bytes(os.urandom(64 << 10))
    first = model_hashing.hashing_pool()
    digests = model_hashing.hash_model(model)
    assert model_hashing.hashing_pool() is first
    assert digests.model_digest == tree_digest(model)


# --- signers -------------------------------------------------------------------------------


def _write_pem(path: Path, key: object) -> Path:
    path.write_bytes(
        key.private_bytes(  # type: ignore[attr-defined]
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path


def test_ed25519_and_other_curves_are_refused_naming_what_works(tmp_path: Path) -> None:
    """model-signing 1.1.1 signs with EC P-256/P-384/P-521 keys only."""
    ed = _write_pem(tmp_path / "ed.pem", ed25519.Ed25519PrivateKey.generate())
    with pytest.raises(InputError, match="P-256, P-384 or P-521") as info:
        KeySigner.from_pem(ed)
    assert "Ed25519" in (info.value.fix or "")
    k1 = _write_pem(tmp_path / "k1.pem", ec.generate_private_key(ec.SECP256K1()))
    with pytest.raises(InputError, match="secp256k1 key"):
        KeySigner.from_pem(k1)


@pytest.mark.parametrize("curve", [ec.SECP384R1(), ec.SECP521R1()])
def test_larger_curves_sign_with_their_hash(tmp_path: Path, curve: ec.EllipticCurve) -> None:
    key = ec.generate_private_key(curve)
    pem = _write_pem(tmp_path / "k.pem", key)
    (tmp_path / "k.pub").write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    model = _model_with_weights(tmp_path / "model")
    sig = sign_model(model, private_key=pem, signature=tmp_path / "m.sig")
    assert sig.method == "key" and sig.to_json()["method"] == "key"
    verify_model_signature(model, signature=sig.signature, public_key=tmp_path / "k.pub")


def test_sign_model_does_not_import_model_signing(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    model = _model_with_weights(tmp_path / "model")
    script = (
        "import sys\n"
        "sys.modules['model_signing'] = None\n"
        "from pathlib import Path\n"
        "from secmlops.controls.signing import sign_model, verify_model_signature\n"
        "s = sign_model(Path(sys.argv[1]), private_key=Path(sys.argv[2]),"
        " signature=Path(sys.argv[3]))\n"
        "verify_model_signature(Path(sys.argv[1]), signature=s.signature,"
        " public_key=Path(sys.argv[4]))\n"
        "print(s.model_digest)\n"
    )
    argv = [sys.executable, "-c", script, str(model), str(keys[0]), str(tmp_path / "m.sig")]
    proc = subprocess.run(
        [*argv, str(keys[1])], capture_output=True, text=True, check=False, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == tree_digest(model)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _leaf(
    tmp_path: Path,
    *,
    key_usage: bool = True,
    code_signing: bool = True,
    days: tuple[int, int] = (-1, 30),
) -> tuple[Path, Path, Path, ec.EllipticCurvePrivateKey]:
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("Test CA"))
        .issuer_name(_name("Test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=2))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name("model-signer"))
        .issuer_name(_name("Test CA"))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now + datetime.timedelta(days=days[0]))
        .not_valid_after(now + datetime.timedelta(days=days[1]))
    )
    if key_usage:
        builder = builder.add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False),
            critical=True,
        )
    if code_signing:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False
        )
    leaf = builder.sign(ca_key, hashes.SHA256())
    (tmp_path / "leaf.pem").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    return _write_pem(tmp_path / "leaf.key", key), tmp_path / "leaf.pem", tmp_path / "ca.pem", key


def test_certificate_signature_carries_the_chain_and_names_the_leaf(tmp_path: Path) -> None:
    key, leaf, ca, private = _leaf(tmp_path)
    model = _model_with_weights(tmp_path / "model")
    signer = CertificateSigner.from_files(key, certificate=leaf, chain=[ca])
    result = sign_model_with(model, signer=signer, signature=tmp_path / "m.sig")
    cert = x509.load_pem_x509_certificate(leaf.read_bytes())
    assert result.method == "certificate"
    assert result.certificate_subject == "CN=model-signer"
    assert result.certificate_sha256 == cert.fingerprint(hashes.SHA256()).hex()
    assert result.key_id == key_id(private.public_key())
    assert result.model_digest == tree_digest(model)
    material = json.loads(result.signature.read_text())["verificationMaterial"]
    der = [
        base64.b64decode(c["rawBytes"]) for c in material["x509CertificateChain"]["certificates"]
    ]
    assert der == [
        x509.load_pem_x509_certificate(p.read_bytes()).public_bytes(serialization.Encoding.DER)
        for p in (leaf, ca)
    ]
    assert material["tlogEntries"] == []


def test_certificate_signer_takes_any_signer(tmp_path: Path) -> None:
    key, leaf, ca, _ = _leaf(tmp_path)
    signer = CertificateSigner.from_files(FileSigner.load(key), certificate=leaf, chain=[ca])
    assert signer.public_key == FileSigner.load(key).public_key


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"key_usage": False, "code_signing": False}, "neither digitalSignature"),
        ({"days": (-30, -1)}, "not valid now"),
        ({"days": (2, 30)}, "not valid now"),
    ],
)
def test_certificates_that_cannot_sign_are_refused(
    tmp_path: Path, kwargs: dict[str, object], message: str
) -> None:
    key, leaf, ca, _ = _leaf(tmp_path, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(InputError, match=message):
        CertificateSigner.from_files(key, certificate=leaf, chain=[ca])


def test_certificate_for_another_key_or_not_a_certificate_is_refused(
    tmp_path: Path, keys: tuple[Path, Path]
) -> None:
    _, leaf, ca, _ = _leaf(tmp_path)
    with pytest.raises(InputError, match="is not for key"):
        CertificateSigner.from_files(keys[0], certificate=leaf, chain=[ca])
    with pytest.raises(InputError, match=r"not a PEM X\.509 certificate"):
        CertificateSigner.from_files(keys[0], certificate=keys[1], chain=[])
    with pytest.raises(InputError, match="holds 2 certificates"):
        both = tmp_path / "both.pem"
        both.write_bytes(leaf.read_bytes() + ca.read_bytes())
        CertificateSigner.from_files(keys[0], certificate=both)
