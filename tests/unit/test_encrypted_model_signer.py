"""The model-signer key may be passphrase-encrypted like every role key (issue 8: key custody)."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from secmlops.controls.signing import sign_model, verify_model_signature
from secmlops.errors import InputError
from secmlops.evidence.signers import write_private_key


def _model(root: Path) -> Path:
    model = root / "model"
    model.mkdir()
    (model / "model.json").write_text('{"kind": "demo"}\n')
    (model / "weights.bin").write_bytes(b"\x00\x01" * 512)
    return model


def _encrypted_key(root: Path, passphrase: bytes) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    private = root / "model-signer.pem"
    write_private_key(private, key, passphrase)
    public = root / "model-signer.pub"
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private, public


def test_an_encrypted_model_signer_key_signs_with_its_passphrase(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _model(tmp_path)
    private, public = _encrypted_key(tmp_path, b"correct horse")
    assert b"ENCRYPTED" in private.read_bytes()
    monkeypatch.setenv("SECMLOPS_MODEL_SIGNER_KEY_PASSPHRASE", "correct horse")
    signed = sign_model(model, private_key=private, signature=tmp_path / "model.sig")
    verify_model_signature(model, signature=signed.signature, public_key=public)


def test_an_encrypted_model_signer_key_without_its_passphrase_is_bad_input(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _model(tmp_path)
    private, _ = _encrypted_key(tmp_path, b"correct horse")
    for var in ("SECMLOPS_MODEL_SIGNER_KEY_PASSPHRASE", "SECMLOPS_KEY_PASSPHRASE"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(InputError, match="encrypted"):
        sign_model(model, private_key=private, signature=tmp_path / "model.sig")
    monkeypatch.setenv("SECMLOPS_MODEL_SIGNER_KEY_PASSPHRASE", "wrong")
    with pytest.raises(InputError, match="passphrase"):
        sign_model(model, private_key=private, signature=tmp_path / "model.sig")
    assert not (tmp_path / "model.sig").exists()
