"""Interop, verify side (issue 10): a fresh PKI made here (root CA -> intermediate -> leaf with
codeSigning), models signed by the OpenSSF ``model_signing`` CLI with a key and with the
certificate, verified by SecMLOps' library and CLI. Where model-signing is laxer (a leaf
without codeSigning, an expired leaf) SecMLOps refuses what model-signing accepts."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from secmlops.controls.signer_trust import SignerRefusal, SignerTrust, verify_signed_model
from secmlops.controls.signing import SignatureRefusal
from secmlops.errors import ControlRefused

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
NOW = dt.datetime.now(dt.UTC)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem(path: Path, cert: x509.Certificate) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _key_pem(path: Path, key: ec.EllipticCurvePrivateKey) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path


def _ca(
    cn: str, key: ec.EllipticCurvePrivateKey, issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey]
) -> x509.Certificate:
    return (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(issuer[0])
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=30))
        .not_valid_after(NOW + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer[1].public_key()),
            critical=False,
        )
        .sign(issuer[1], hashes.SHA256())
    )


def _leaf(
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey],
    *,
    code_signing: bool = True,
    valid: tuple[dt.datetime, dt.datetime] = (
        NOW - dt.timedelta(days=1),
        NOW + dt.timedelta(days=90),
    ),
) -> x509.Certificate:
    usages = [ExtendedKeyUsageOID.CODE_SIGNING if code_signing else ExtendedKeyUsageOID.SERVER_AUTH]
    return (
        x509.CertificateBuilder()
        .subject_name(_name("model-signer@example.com"))
        .issuer_name(issuer[0])
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid[0])
        .not_valid_after(valid[1])
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer[1].public_key()),
            critical=False,
        )
        .sign(issuer[1], hashes.SHA256())
    )


@dataclass(frozen=True)
class Pki:
    root: Path  # root CA certificate (PEM)
    intermediate: Path  # intermediate CA certificate (PEM)
    leaf_key: Path
    leaf_pub: Path
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey]  # the intermediate, to issue more


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    tmp = tmp_path_factory.mktemp("pki")
    root_key, int_key, leaf_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    root = _ca("Example Root CA", root_key, (_name("Example Root CA"), root_key))
    intermediate = _ca("Example Signing CA", int_key, (root.subject, root_key))
    leaf_pub = tmp / "leaf.pub"
    leaf_pub.write_bytes(
        leaf_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return Pki(
        root=_pem(tmp / "root.pem", root),
        intermediate=_pem(tmp / "intermediate.pem", intermediate),
        leaf_key=_key_pem(tmp / "leaf.pem", leaf_key),
        leaf_pub=leaf_pub,
        issuer=(intermediate.subject, int_key),
    )


def _model(tmp: Path) -> Path:
    model = tmp / "model"
    (model / "weights").mkdir(parents=True)
    (model / "config.json").write_text('{"layers": 2}')
    (model / "weights" / "w.npy").write_bytes(bytes(range(256)) * 64)
    return model


def _model_signing(*args: str) -> None:
    result = subprocess.run(
        [str(BIN / "model_signing"), *args], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]


def _sign_with_certificate(pki: Pki, tmp: Path, leaf: x509.Certificate) -> tuple[Path, Path]:
    model = _model(tmp)
    cert = _pem(tmp / "leaf-cert.pem", leaf)
    sig = tmp / "model.sig"
    _model_signing(
        "sign", "certificate", str(model), "--signature", str(sig),
        "--private_key", str(pki.leaf_key), "--signing_certificate", str(cert),
        "--certificate_chain", str(pki.intermediate),
    )  # fmt: skip
    return model, sig


def _secmlops(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "secmlops"), *args], capture_output=True, text=True, timeout=300
    )


def test_a_key_signature_by_model_signing_verifies(pki: Pki, tmp_path: Path) -> None:
    model, sig = _model(tmp_path), tmp_path / "model.sig"
    _model_signing(
        "sign", "key", str(model), "--signature", str(sig), "--private_key", str(pki.leaf_key)
    )
    signer = verify_signed_model(
        model, signature=sig, trust=SignerTrust.from_files(public_keys=[pki.leaf_pub])
    )
    assert signer.method == "key"
    cli = _secmlops(
        "verify", str(model), "--signature", str(sig), "--public-key", str(pki.leaf_pub)
    )
    assert cli.returncode == 0, cli.stderr
    (model / "config.json").write_text('{"layers": 3}')
    with pytest.raises(ControlRefused) as refused:
        verify_signed_model(
            model, signature=sig, trust=SignerTrust.from_files(public_keys=[pki.leaf_pub])
        )
    assert refused.value.reason == SignatureRefusal.CONTENT_MISMATCH


def test_a_certificate_signature_by_model_signing_verifies(pki: Pki, tmp_path: Path) -> None:
    leaf_key = serialization.load_pem_private_key(pki.leaf_key.read_bytes(), None)
    assert isinstance(leaf_key, ec.EllipticCurvePrivateKey)
    model, sig = _sign_with_certificate(pki, tmp_path, _leaf(leaf_key, pki.issuer))
    trust = SignerTrust.from_files(certificate_chain=[pki.root])
    signer = verify_signed_model(model, signature=sig, trust=trust)
    assert (signer.method, signer.identity, signer.issuer) == (
        "certificate",
        "CN=model-signer@example.com",
        "CN=Example Root CA",
    )
    assert signer.details["chain"][1] == "CN=Example Signing CA"
    cli = _secmlops(
        "verify",
        str(model),
        "--signature",
        str(sig),
        "--certificate-chain",
        str(pki.root),
        "--json",
    )
    assert cli.returncode == 0, cli.stderr
    assert json.loads(cli.stdout)["method"] == "certificate"
    # The CLI refuses it with a CA that did not issue it (exit 1, one message naming it).
    other_key = ec.generate_private_key(ec.SECP256R1())
    other = _pem(tmp_path / "other.pem", _ca("Other CA", other_key, (_name("Other CA"), other_key)))
    wrong = _secmlops(
        "verify", str(model), "--signature", str(sig), "--certificate-chain", str(other)
    )
    assert wrong.returncode == 1
    assert "does not chain to a trusted CA" in wrong.stderr
    assert "Traceback" not in wrong.stderr


def test_a_leaf_without_code_signing_is_refused(pki: Pki, tmp_path: Path) -> None:
    """model-signing accepts KeyUsage digitalSignature alone; SecMLOps also requires
    ExtendedKeyUsage codeSigning."""
    leaf_key = serialization.load_pem_private_key(pki.leaf_key.read_bytes(), None)
    assert isinstance(leaf_key, ec.EllipticCurvePrivateKey)
    model, sig = _sign_with_certificate(
        pki, tmp_path, _leaf(leaf_key, pki.issuer, code_signing=False)
    )
    with pytest.raises(ControlRefused) as refused:
        verify_signed_model(
            model, signature=sig, trust=SignerTrust.from_files(certificate_chain=[pki.root])
        )
    assert refused.value.reason == SignerRefusal.CERTIFICATE_USAGE


def test_an_expired_leaf_is_refused_unless_signed_while_valid(pki: Pki, tmp_path: Path) -> None:
    """model-signing checks the chain at the leaf's own notBefore, so it never sees expiry;
    SecMLOps checks at the signing time it is given (default now)."""
    leaf_key = serialization.load_pem_private_key(pki.leaf_key.read_bytes(), None)
    assert isinstance(leaf_key, ec.EllipticCurvePrivateKey)
    valid = (NOW - dt.timedelta(days=20), NOW - dt.timedelta(days=10))
    model, sig = _sign_with_certificate(pki, tmp_path, _leaf(leaf_key, pki.issuer, valid=valid))
    trust = SignerTrust.from_files(certificate_chain=[pki.root])
    with pytest.raises(ControlRefused) as refused:
        verify_signed_model(model, signature=sig, trust=trust)
    assert refused.value.reason == SignerRefusal.CERTIFICATE_NOT_VALID_AT_SIGNING_TIME
    # The gate knows when the release was signed (its signed created_at).
    signed_at = NOW - dt.timedelta(days=15)
    assert verify_signed_model(model, signature=sig, trust=trust, signed_at=signed_at).method
    cli = _secmlops(
        "verify", str(model), "--signature", str(sig), "--certificate-chain", str(pki.root),
        "--signed-at", signed_at.isoformat(),
    )  # fmt: skip
    assert cli.returncode == 0, cli.stderr


def test_the_cli_signs_with_a_certificate_and_verifies_it(pki: Pki, tmp_path: Path) -> None:
    leaf_key = serialization.load_pem_private_key(pki.leaf_key.read_bytes(), None)
    assert isinstance(leaf_key, ec.EllipticCurvePrivateKey)
    cert = _pem(tmp_path / "leaf-cert.pem", _leaf(leaf_key, pki.issuer))
    model, sig = _model(tmp_path), tmp_path / "out" / "model.sig"
    signed = _secmlops(
        "sign", str(model), "--method", "certificate", "--key", str(pki.leaf_key),
        "--certificate", str(cert), "--certificate-chain", str(pki.intermediate),
        "--signature", str(sig),
    )  # fmt: skip
    assert signed.returncode == 0, signed.stderr
    bundle = json.loads(sig.read_text())
    assert len(bundle["verificationMaterial"]["x509CertificateChain"]["certificates"]) == 2
    ok = _secmlops(
        "verify", str(model), "--signature", str(sig), "--certificate-chain", str(pki.root)
    )
    assert ok.returncode == 0, ok.stderr
    assert "signed by certificate CN=model-signer@example.com" in ok.stdout
    # A key-only trust does not accept a certificate signature (exit 1, the method named).
    wrong = _secmlops(
        "verify", str(model), "--signature", str(sig), "--public-key", str(pki.leaf_pub)
    )
    assert wrong.returncode == 1
    assert "X.509 certificate signature" in wrong.stderr


def test_the_cli_signs_with_an_encrypted_certificate_key_and_shards(
    pki: Pki, tmp_path: Path
) -> None:
    """``sign --method certificate`` is the native signer: a passphrase-protected key works
    (the interim model-signing path refused it) and ``--shard-size`` applies as for keys;
    the sharded certificate signature verifies with the CA, and a wrong CA is refused."""
    import os

    leaf_key = serialization.load_pem_private_key(pki.leaf_key.read_bytes(), None)
    assert isinstance(leaf_key, ec.EllipticCurvePrivateKey)
    cert = _pem(tmp_path / "leaf-cert.pem", _leaf(leaf_key, pki.issuer))
    encrypted = tmp_path / "leaf-encrypted.pem"
    encrypted.write_bytes(
        leaf_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"correct horse"),
        )
    )
    model, sig = _model(tmp_path), tmp_path / "out" / "model.sig"
    env = {**os.environ, "SECMLOPS_MODEL_SIGNER_KEY_PASSPHRASE": "correct horse"}
    signed = subprocess.run(
        [
            str(BIN / "secmlops"), "sign", str(model), "--method", "certificate",
            "--key", str(encrypted), "--certificate", str(cert),
            "--certificate-chain", str(pki.intermediate), "--signature", str(sig),
            "--shard-size", "1M", "--json",
        ],
        capture_output=True, text=True, timeout=300, env=env, check=False,
    )  # fmt: skip
    assert signed.returncode == 0, signed.stderr
    result = json.loads(signed.stdout)
    assert result["method"] == "certificate" and result["shard_size"] == 1 << 20
    assert result["certificate_subject"] == "CN=model-signer@example.com"
    ok = _secmlops(
        "verify", str(model), "--signature", str(sig), "--certificate-chain", str(pki.root),
        "--json",
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["model_digest"] == result["model_digest"]
    other_key = ec.generate_private_key(ec.SECP256R1())
    other = _pem(tmp_path / "other.pem", _ca("Other CA", other_key, (_name("Other CA"), other_key)))
    wrong = _secmlops(
        "verify", str(model), "--signature", str(sig), "--certificate-chain", str(other)
    )
    assert wrong.returncode == 1
    assert "does not chain to a trusted CA" in wrong.stderr
