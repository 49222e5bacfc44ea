"""The 8 model signatures made by OpenSSF model-signing v1.0.0-v1.1.0 (tests/fixtures/model-signing,
see its README): each verifies with the method and signer it was made with, offline, and each
is refused after a one-byte change, with a wrong identity / issuer, key or CA (issue 10)."""

from __future__ import annotations

import datetime as dt
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from secmlops.controls.signer_trust import (
    SignerRefusal,
    SignerTrust,
    SigstoreIdentity,
    verify_signed_model,
)
from secmlops.controls.signing import SignatureRefusal
from secmlops.errors import ControlRefused, InputError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "model-signing"
KEYS = FIXTURES / "keys"
IDENTITY = "stefanb@us.ibm.com"
ISSUER = "https://sigstore.verify.ibm.com/oauth2"

KEY_SIGNED = ["v1.0.1-elliptic-key", "v1.1.0-elliptic-key"]
CERT_SIGNED = ["v1.0.0-certificate", "v1.0.1-certificate", "v1.1.0-certificate"]
KEYLESS = ["v1.0.0-sigstore", "v1.0.1-sigstore", "v1.1.0-sigstore"]
ALL = KEY_SIGNED + CERT_SIGNED + KEYLESS


def _trust_for(name: str) -> SignerTrust:
    """The trust the README names for a fixture."""
    if name in KEY_SIGNED:
        return SignerTrust.from_files(public_keys=[KEYS / "signing-key-pub.pem"])
    if name in CERT_SIGNED:
        return SignerTrust.from_files(certificate_chain=[KEYS / "ca-cert.pem"])
    return SignerTrust(identities=(SigstoreIdentity(IDENTITY, ISSUER),))


def _method(name: str) -> str:
    return "key" if name in KEY_SIGNED else "certificate" if name in CERT_SIGNED else "sigstore"


def _copy(name: str, tmp: Path, *, keep_ignored: bool = False) -> tuple[Path, Path]:
    """The fixture's model files in ``tmp/model`` (without ``ignore-me``, which the signature
    excludes) and its signature beside them."""
    model = tmp / "model"
    model.mkdir()
    for path in (FIXTURES / name).iterdir():
        if path.name == "model.sig" or (path.name == "ignore-me" and not keep_ignored):
            continue
        shutil.copyfile(path, model / path.name)
    shutil.copyfile(FIXTURES / name / "model.sig", tmp / "model.sig")
    return model, tmp / "model.sig"


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    """Record (and refuse) every connection or name lookup this process attempts."""
    attempts: list[Any] = []

    def refuse_connect(self: socket.socket, address: Any) -> None:
        attempts.append(address)
        raise OSError("network access attempted during verification")

    def refuse_lookup(*args: Any, **kwargs: Any) -> Any:
        attempts.append(args[:2])
        raise OSError("name lookup attempted during verification")

    monkeypatch.setattr(socket.socket, "connect", refuse_connect)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse_connect)
    monkeypatch.setattr(socket, "getaddrinfo", refuse_lookup)
    yield attempts


@pytest.mark.parametrize("name", ALL)
def test_every_third_party_signature_verifies_offline(
    name: str, tmp_path: Path, no_network: list[Any]
) -> None:
    model, sig = _copy(name, tmp_path)
    signer = verify_signed_model(model, signature=sig, trust=_trust_for(name))
    assert signer.method == _method(name)
    assert len(signer.model_digest) == 64
    if name in KEYLESS:
        assert (signer.identity, signer.issuer) == (IDENTITY, ISSUER)
        assert signer.details["rekor_log_index"] > 0
    elif name in CERT_SIGNED:
        assert signer.issuer == "CN=root-ca"
    assert no_network == []


@pytest.mark.parametrize("name", ALL)
def test_a_one_byte_change_is_refused(name: str, tmp_path: Path) -> None:
    model, sig = _copy(name, tmp_path)
    data = bytearray((model / "signme-1").read_bytes())
    data[0] ^= 0x01
    (model / "signme-1").write_bytes(bytes(data))
    with pytest.raises(ControlRefused) as refused:
        verify_signed_model(model, signature=sig, trust=_trust_for(name))
    assert refused.value.reason == SignatureRefusal.CONTENT_MISMATCH
    assert "signme-1" in str(refused.value)


@pytest.mark.parametrize("name", ["v1.1.0-elliptic-key", "v1.1.0-certificate", "v1.1.0-sigstore"])
def test_a_file_the_signature_ignores_is_still_refused(name: str, tmp_path: Path) -> None:
    """model-signing's own ``ignore_paths`` (here ``ignore-me``) exempt nothing: the directory
    must hold exactly the signed files."""
    model, sig = _copy(name, tmp_path, keep_ignored=True)
    with pytest.raises(ControlRefused) as refused:
        verify_signed_model(model, signature=sig, trust=_trust_for(name))
    assert refused.value.reason == SignatureRefusal.FILE_SET_MISMATCH
    assert "ignore-me" in str(refused.value)


@pytest.mark.parametrize("name", KEY_SIGNED)
def test_a_wrong_key_is_refused(name: str, tmp_path: Path) -> None:
    model, sig = _copy(name, tmp_path)
    other = tmp_path / "other.pub"
    other.write_bytes(
        ec.generate_private_key(ec.SECP384R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(ControlRefused) as refused:
        verify_signed_model(model, signature=sig, trust=SignerTrust.from_files(public_keys=[other]))
    # v1.1.0 names its key (hint); v1.0.1 does not, so the signature check refuses it.
    assert refused.value.reason in (
        SignerRefusal.KEY_NOT_TRUSTED,
        SignatureRefusal.SIGNATURE_INVALID,
    )


def _other_ca(tmp: Path) -> Path:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "root-ca")])  # same name
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    path = tmp / "other-ca.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


@pytest.mark.parametrize("name", CERT_SIGNED)
def test_a_wrong_ca_is_refused(name: str, tmp_path: Path) -> None:
    """Another root CA, even one with the same name, does not vouch for the signer."""
    model, sig = _copy(name, tmp_path)
    trust = SignerTrust.from_files(certificate_chain=[_other_ca(tmp_path)])
    with pytest.raises(ControlRefused) as refused:
        verify_signed_model(model, signature=sig, trust=trust)
    assert refused.value.reason == SignerRefusal.CERTIFICATE_NOT_TRUSTED


def test_the_intermediate_alone_is_not_a_trust_anchor(tmp_path: Path) -> None:
    model, sig = _copy("v1.1.0-certificate", tmp_path)
    with pytest.raises(InputError, match="root CA"):
        SignerTrust.from_files(certificate_chain=[KEYS / "int-ca-cert.pem"])
    # Given with the root, it only helps build the path: the signature verifies.
    trust = SignerTrust.from_files(
        certificate_chain=[KEYS / "int-ca-cert.pem", KEYS / "ca-cert.pem"]
    )
    assert verify_signed_model(model, signature=sig, trust=trust).method == "certificate"


@pytest.mark.parametrize(
    "signed_at", [dt.datetime(2025, 5, 1, tzinfo=dt.UTC), dt.datetime(2035, 5, 1, tzinfo=dt.UTC)]
)
def test_a_certificate_is_checked_at_the_signing_time(
    signed_at: dt.datetime, tmp_path: Path
) -> None:
    """The fixture's certificates are valid 2025-05-02 to 2035-04-30."""
    model, sig = _copy("v1.1.0-certificate", tmp_path)
    trust = _trust_for("v1.1.0-certificate")
    with pytest.raises(ControlRefused) as refused:
        verify_signed_model(model, signature=sig, trust=trust, signed_at=signed_at)
    assert refused.value.reason == SignerRefusal.CERTIFICATE_NOT_VALID_AT_SIGNING_TIME
    inside = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    assert verify_signed_model(model, signature=sig, trust=trust, signed_at=inside).method


@pytest.mark.parametrize(
    ("identity", "issuer"),
    [("someone@example.com", ISSUER), (IDENTITY, "https://accounts.google.com")],
)
@pytest.mark.parametrize("name", KEYLESS)
def test_a_wrong_identity_or_issuer_is_refused(
    name: str, identity: str, issuer: str, tmp_path: Path
) -> None:
    model, sig = _copy(name, tmp_path)
    trust = SignerTrust(identities=(SigstoreIdentity(identity, issuer),))
    with pytest.raises(ControlRefused) as refused:
        verify_signed_model(model, signature=sig, trust=trust)
    assert refused.value.reason == SignerRefusal.IDENTITY_MISMATCH


def test_a_keyless_signature_from_another_sigstore_instance_is_refused(tmp_path: Path) -> None:
    """The staging instance's trust config (shipped in the sigstore package) does not vouch for
    a certificate of the public-good instance."""
    import json

    import sigstore

    store = Path(sigstore.__file__).parent / "_store" / "https%3A%2F%2Ftuf-repo-cdn.sigstage.dev"
    config = tmp_path / "staging.json"
    config.write_text(
        json.dumps(
            {
                "mediaType": "application/vnd.dev.sigstore.clienttrustconfig.v0.1+json",
                "trustedRoot": json.loads((store / "trusted_root.json").read_text()),
                "signingConfig": json.loads((store / "signing_config.v0.2.json").read_text()),
            }
        )
    )
    model, sig = _copy("v1.1.0-sigstore", tmp_path)
    trust = SignerTrust(identities=(SigstoreIdentity(IDENTITY, ISSUER),), trust_config=config)
    with pytest.raises(ControlRefused) as refused:
        verify_signed_model(model, signature=sig, trust=trust)
    assert refused.value.reason in (
        SignerRefusal.CERTIFICATE_NOT_TRUSTED,
        SignerRefusal.TRANSPARENCY_LOG,
    )


@pytest.mark.parametrize(
    ("name", "trust"),
    [
        ("v1.1.0-certificate", SignerTrust.from_files(public_keys=[KEYS / "signing-key-pub.pem"])),
        ("v1.1.0-sigstore", SignerTrust.from_files(certificate_chain=[KEYS / "ca-cert.pem"])),
        ("v1.1.0-elliptic-key", SignerTrust(identities=(SigstoreIdentity(IDENTITY, ISSUER),))),
    ],
)
def test_a_method_the_trust_does_not_name_is_refused(
    name: str, trust: SignerTrust, tmp_path: Path
) -> None:
    model, sig = _copy(name, tmp_path)
    with pytest.raises(ControlRefused) as refused:
        verify_signed_model(model, signature=sig, trust=trust)
    assert refused.value.reason == SignerRefusal.METHOD_NOT_TRUSTED


def test_require_rekor_accepts_a_rekor_witnessed_keyless_signature(tmp_path: Path) -> None:
    model, sig = _copy("v1.0.0-sigstore", tmp_path)
    trust = SignerTrust(identities=(SigstoreIdentity(IDENTITY, ISSUER),), require_rekor=True)
    assert verify_signed_model(model, signature=sig, trust=trust).details["rekor_integrated_time"]


def test_a_keyless_signature_without_its_rekor_entry_is_refused(tmp_path: Path) -> None:
    import json

    model, sig = _copy("v1.1.0-sigstore", tmp_path)
    bundle = json.loads(sig.read_text())
    bundle["verificationMaterial"]["tlogEntries"][0].pop("inclusionProof")
    sig.write_text(json.dumps(bundle))
    with pytest.raises(ControlRefused) as refused:
        verify_signed_model(model, signature=sig, trust=_trust_for("v1.1.0-sigstore"))
    assert refused.value.reason == SignerRefusal.TRANSPARENCY_LOG


def test_an_empty_trust_is_bad_input() -> None:
    with pytest.raises(InputError, match="empty"):
        SignerTrust()


@pytest.mark.parametrize("content", [b"", b"not json", b"[]", b'{"mediaType": "x"}', b"\xff\xfe"])
def test_a_malformed_signature_is_bad_input(content: bytes, tmp_path: Path) -> None:
    model, sig = _copy("v1.1.0-elliptic-key", tmp_path)
    sig.write_bytes(content)
    with pytest.raises(InputError, match="malformed"):
        verify_signed_model(model, signature=sig, trust=_trust_for("v1.1.0-elliptic-key"))


def test_missing_paths_are_bad_input(tmp_path: Path) -> None:
    model, sig = _copy("v1.1.0-elliptic-key", tmp_path)
    trust = _trust_for("v1.1.0-elliptic-key")
    with pytest.raises(InputError, match="does not exist"):
        verify_signed_model(tmp_path / "nope", signature=sig, trust=trust)
    with pytest.raises(InputError, match="does not exist"):
        verify_signed_model(model, signature=tmp_path / "nope.sig", trust=trust)


@pytest.fixture
def recording_proxy() -> Iterator[tuple[str, list[str]]]:
    """An HTTP proxy on 127.0.0.1 that records every request, CONNECT (HTTPS) included, and
    answers 502: where a process that tried to reach the network would go."""
    import http.server
    import threading

    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def _record(self) -> None:
            seen.append(f"{self.command} {self.path}")
            self.send_response(502)
            self.end_headers()

        do_CONNECT = do_GET = do_POST = do_PUT = do_HEAD = _record  # noqa: N815

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


def test_the_cli_verifies_keyless_without_reaching_for_the_network(
    tmp_path: Path, recording_proxy: tuple[str, list[str]]
) -> None:
    """Every HTTP(S) request the CLI could make goes through the proxy: it sees none."""
    import os
    import subprocess
    import sys

    proxy, seen = recording_proxy
    model, sig = _copy("v1.1.0-sigstore", tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env.update(HTTPS_PROXY=proxy, HTTP_PROXY=proxy, ALL_PROXY=proxy, HOME=str(tmp_path))
    env.update(https_proxy=proxy, http_proxy=proxy, all_proxy=proxy, NO_PROXY="", no_proxy="")
    result = subprocess.run(
        [str(Path(sys.executable).parent / "secmlops"), "verify", str(model),
         "--signature", str(sig), "--identity", IDENTITY, "--issuer", ISSUER],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "signed by sigstore stefanb@us.ibm.com" in result.stdout
    assert seen == []
    # The proxy records what a networked run would send (the check can fail).
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": proxy}))
    with pytest.raises(OSError):
        opener.open("http://tuf-repo-cdn.sigstore.dev/", timeout=10)
    assert seen == ["GET http://tuf-repo-cdn.sigstore.dev/"]
