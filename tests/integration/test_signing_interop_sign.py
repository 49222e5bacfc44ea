"""Interop, sign side (issue 10): models signed by SecMLOps' native signer verify with the
OpenSSF ``model_signing`` tool itself.

A fresh PKI is made here with ``cryptography`` (root CA -> intermediate -> leaf with KeyUsage
digitalSignature and ExtendedKeyUsage codeSigning). Signatures made with a key file (P-256,
P-384), an AWS KMS key (moto_server on 127.0.0.1) and the leaf certificate are verified with
``model_signing verify key|certificate``; a one-byte change makes that CLI refuse them.

Sharded manifests: the ``model_signing`` 1.1.1 CLI hashes with the ``files`` serialization
whatever the signature says (it always passes its own ``hashing.Config()``), so it cannot
verify any sharded signature, its own included. Ours are verified with model-signing's
library instead (``verifying.Config()`` guesses the shard serialization from the
signature), in a child process like the CLI.
"""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from secmlops._internal.digests import tree_digest
from secmlops.controls.signing import CertificateSigner, KeySigner, sign_model_with
from secmlops.evidence.signers import KmsSigner

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
NOW = dt.datetime.now(dt.UTC)
SHARD = 1000  # small, so a 16 KiB file has many shards


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _cert_pem(path: Path, cert: x509.Certificate) -> Path:
    return _write(path, cert.public_bytes(serialization.Encoding.PEM))


def _key_pem(path: Path, key: ec.EllipticCurvePrivateKey) -> Path:
    return _write(
        path,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )


def _pub_pem(path: Path, key: ec.EllipticCurvePublicKey) -> Path:
    return _write(
        path,
        key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    )


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
        .sign(issuer[1], hashes.SHA256())
    )


@dataclass(frozen=True)
class Pki:
    root: Path  # what verifiers trust
    intermediate: Path  # what the signer ships in the bundle
    leaf: Path
    leaf_key: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    tmp = tmp_path_factory.mktemp("pki")
    root_key, int_key, leaf_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    root = _ca("Interop Root CA", root_key, (_name("Interop Root CA"), root_key))
    intermediate = _ca("Interop Signing CA", int_key, (root.subject, root_key))
    leaf = (
        x509.CertificateBuilder()
        .subject_name(_name("ml-team@example.com"))
        .issuer_name(intermediate.subject)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(hours=1))
        .not_valid_after(NOW + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False)
        .sign(int_key, hashes.SHA256())
    )
    return Pki(
        root=_cert_pem(tmp / "root.pem", root),
        intermediate=_cert_pem(tmp / "intermediate.pem", intermediate),
        leaf=_cert_pem(tmp / "leaf.pem", leaf),
        leaf_key=_key_pem(tmp / "leaf.key", leaf_key),
    )


def _model(tmp: Path) -> Path:
    model = tmp / "model"
    (model / "weights").mkdir(parents=True)
    (model / "config.json").write_text('{"layers": 2}')
    (model / "weights" / "w.safetensors").write_bytes(bytes(range(256)) * 64)
    (model / "weights" / "b.bin").write_bytes(b"bias")
    return model


def _model_signing(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "model_signing"), *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _verify_key_cli(model: Path, sig: Path, public_key: Path) -> subprocess.CompletedProcess[str]:
    return _model_signing(
        "verify", "key", str(model), "--signature", str(sig), "--public_key", str(public_key)
    )


def _flip_a_byte(model: Path) -> None:
    path = model / "weights" / "w.safetensors"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("curve", [ec.SECP256R1(), ec.SECP384R1()], ids=["p256", "p384"])
def test_a_key_signature_by_us_verifies_with_the_model_signing_cli(
    tmp_path: Path, curve: ec.EllipticCurve
) -> None:
    key = ec.generate_private_key(curve)
    private, public = (
        _key_pem(tmp_path / "k.pem", key),
        _pub_pem(tmp_path / "k.pub", key.public_key()),
    )
    model, sig = _model(tmp_path), tmp_path / "model.sig"
    signed = sign_model_with(model, signer=KeySigner.from_pem(private), signature=sig)
    assert signed.model_digest == tree_digest(model)
    verified = _verify_key_cli(model, sig, public)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "Verification succeeded" in verified.stdout
    _flip_a_byte(model)
    refused = _verify_key_cli(model, sig, public)
    assert refused.returncode != 0
    assert "w.safetensors" in refused.stdout + refused.stderr


def test_a_certificate_signature_by_us_verifies_with_the_model_signing_cli(
    pki: Pki, tmp_path: Path
) -> None:
    model, sig = _model(tmp_path), tmp_path / "model.sig"
    signer = CertificateSigner.from_files(
        pki.leaf_key, certificate=pki.leaf, chain=[pki.intermediate]
    )
    signed = sign_model_with(model, signer=signer, signature=sig)
    assert signed.method == "certificate"
    assert signed.certificate_subject == "CN=ml-team@example.com"
    args = ["verify", "certificate", str(model), "--signature", str(sig)]
    verified = _model_signing(*args, "--certificate_chain", str(pki.root))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "Verification succeeded" in verified.stdout
    # Another CA: model-signing cannot build a chain to it.
    other_key = ec.generate_private_key(ec.SECP256R1())
    other = _cert_pem(
        tmp_path / "other.pem", _ca("Other CA", other_key, (_name("Other CA"), other_key))
    )
    assert _model_signing(*args, "--certificate_chain", str(other)).returncode != 0
    _flip_a_byte(model)
    assert _model_signing(*args, "--certificate_chain", str(pki.root)).returncode != 0


@pytest.fixture
def kms_key(s3_endpoint: str, aws_env: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("SECMLOPS_KMS_ENDPOINT_URL", s3_endpoint)
    kms = boto3.client("kms", endpoint_url=s3_endpoint)
    created = kms.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")
    yield created["KeyMetadata"]["KeyId"]


def test_a_kms_key_signature_by_us_verifies_with_the_model_signing_cli(
    kms_key: str, s3_endpoint: str, tmp_path: Path
) -> None:
    """The private key never leaves KMS (moto_server over HTTP); model-signing verifies with
    the public key KMS hands out."""
    signer = KmsSigner(kms_key, endpoint_url=s3_endpoint)
    public = _pub_pem(tmp_path / "kms.pub", signer.public_key)
    model, sig = _model(tmp_path), tmp_path / "model.sig"
    sign_model_with(model, signer=KeySigner(signer), signature=sig)
    verified = _verify_key_cli(model, sig, public)
    assert verified.returncode == 0, verified.stdout + verified.stderr


_VERIFY_WITH_LIBRARY = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from model_signing import verifying

    kind, model, sig, trust = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
    config = verifying.Config()  # no hashing config: guessed from the signature (shards)
    if kind == "key":
        config.use_elliptic_key_verifier(public_key=Path(trust))
    else:
        config.use_certificate_verifier(certificate_chain=[Path(trust)])
    try:
        config.verify(model, sig)
    except ValueError as exc:
        print("REFUSED", exc)
    else:
        print("VERIFIED")
    """
)


def _verify_with_library(kind: str, model: Path, sig: Path, trust: Path) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", _VERIFY_WITH_LIBRARY, kind, str(model), str(sig), str(trust)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.strip()


def test_sharded_signatures_by_us_verify_with_model_signing(pki: Pki, tmp_path: Path) -> None:
    """Key and certificate, shards of 1000 bytes; one byte changed is refused."""
    key = ec.generate_private_key(ec.SECP256R1())
    private, public = (
        _key_pem(tmp_path / "k.pem", key),
        _pub_pem(tmp_path / "k.pub", key.public_key()),
    )
    model = _model(tmp_path)
    by_key, by_cert = tmp_path / "key.sig", tmp_path / "cert.sig"
    signed = sign_model_with(
        model, signer=KeySigner.from_pem(private), signature=by_key, shard_size=SHARD
    )
    # The model digest of a sharded signature is its shard manifest's, not tree_digest.
    assert signed.shard_size == SHARD and signed.model_digest != tree_digest(model)
    certificate = CertificateSigner.from_files(
        pki.leaf_key, certificate=pki.leaf, chain=[pki.intermediate]
    )
    sign_model_with(model, signer=certificate, signature=by_cert, shard_size=SHARD)
    assert _verify_with_library("key", model, by_key, public) == "VERIFIED"
    assert _verify_with_library("certificate", model, by_cert, pki.root) == "VERIFIED"
    # What the CLI makes of the same sharded signature: it hashes files, so it never matches.
    cli = _verify_key_cli(model, by_key, public)
    assert cli.returncode != 0 and "Missing files" in cli.stdout + cli.stderr
    _flip_a_byte(model)
    refused = _verify_with_library("key", model, by_key, public)
    assert refused.startswith("REFUSED") and "Hash mismatch" in refused
