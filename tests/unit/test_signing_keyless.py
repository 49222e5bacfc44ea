"""Sigstore keyless signing and verification, every part that works offline (issue 10).

Real keyless signing needs Fulcio and Rekor over the network. Here: the identity-token
detection and its refusals, the pinned production trust config, and a keyless bundle
assembled from a *recorded* Fulcio certificate and Rekor response made by a Sigstore instance
of this test's own (a Fulcio CA, a CT log and a Rekor log key generated here, published in
a client trust config) — which then verifies offline, with no network access attempted, and is
refused with another identity, another trust config, or a tampered log entry.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import rfc8785
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier

from secmlops.controls.signer_trust import (
    SignerRefusal,
    SignerTrust,
    SigstoreIdentity,
    verify_signed_model,
)
from secmlops.controls.signing_sigstore import (
    CLIENT_TRUST_CONFIG_MEDIA_TYPE,
    TOKEN_ENV,
    assemble_keyless_bundle,
    detect_identity_token,
    production_trust_config,
    require_identity_token,
    sign_model_keyless,
)
from secmlops.errors import ControlRefused, InputError

IDENTITY = "ci@example.com"
ISSUER = "https://oidc.example.com"
IN_TOTO = "application/vnd.in-toto+json"
#: Environment variables through which sigstore detects an ambient CI credential.
CI_VARS = (
    TOKEN_ENV,
    "GITHUB_ACTIONS",
    "ACTIONS_ID_TOKEN_REQUEST_URL",
    "ACTIONS_ID_TOKEN_REQUEST_TOKEN",
    "GITLAB_CI",
    "SIGSTORE_ID_TOKEN",
    "BUILDKITE",
    "CIRCLECI",
    "GOOGLE_SERVICE_ACCOUNT_NAME",
)


@pytest.fixture
def no_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in CI_VARS:
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    """Record (and refuse) every connection or name lookup this process attempts."""
    attempts: list[Any] = []

    def refuse(*args: Any, **kwargs: Any) -> Any:
        attempts.append(args[1:3])
        raise OSError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: refuse(None, *a))
    yield attempts


# --- the identity token ----------------------------------------------------------------------


def _jwt(claims: dict[str, Any]) -> str:
    def part(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}.c2ln"


def test_no_token_is_bad_input_that_says_how_to_provide_one(no_ci: None, tmp_path: Path) -> None:
    assert detect_identity_token() is None
    with pytest.raises(InputError) as error:
        require_identity_token()
    assert TOKEN_ENV in (error.value.fix or "")
    assert "id-token: write" in (error.value.fix or "")
    model = tmp_path / "model"
    model.mkdir()
    (model / "w.bin").write_bytes(b"w")
    with pytest.raises(InputError, match="OIDC identity token"):
        sign_model_keyless(model, signature=tmp_path / "model.sig")
    assert not (tmp_path / "model.sig").exists()


def test_the_cli_refuses_keyless_signing_without_a_token(no_ci: None, tmp_path: Path) -> None:
    from secmlops.cli import main

    model = tmp_path / "model"
    model.mkdir()
    (model / "w.bin").write_bytes(b"w")
    assert main(["sign", str(model), "--method", "sigstore"]) == 2
    assert not (tmp_path / "model.sig").exists()


def test_a_token_is_taken_from_the_argument_then_the_environment(
    no_ci: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(TOKEN_ENV, "from-env")
    assert detect_identity_token() == "from-env"
    assert detect_identity_token("explicit") == "explicit"


def test_an_ambient_gitlab_token_is_detected(no_ci: None, monkeypatch: pytest.MonkeyPatch) -> None:
    now = int(dt.datetime.now(dt.UTC).timestamp())
    token = _jwt({"iss": ISSUER, "sub": IDENTITY, "aud": "sigstore", "iat": now, "exp": now + 60})
    monkeypatch.setenv("GITLAB_CI", "true")
    monkeypatch.setenv("SIGSTORE_ID_TOKEN", token)
    assert detect_identity_token() == token


def test_an_expired_or_malformed_token_is_bad_input(no_ci: None) -> None:
    now = int(dt.datetime.now(dt.UTC).timestamp())
    expired = _jwt(
        {"iss": ISSUER, "sub": IDENTITY, "aud": "sigstore", "iat": now - 7200, "exp": now - 3600}
    )
    for token in ("not-a-jwt", expired):
        with pytest.raises(InputError, match="not usable"):
            require_identity_token(token)


# --- the pinned trust config ----------------------------------------------------------------


def test_the_production_trust_config_is_the_root_the_sigstore_package_ships() -> None:
    import sigstore

    config = production_trust_config()
    assert config["mediaType"] == CLIENT_TRUST_CONFIG_MEDIA_TYPE
    shipped = Path(sigstore.__file__).parent / "_store"
    root = shipped / "https%3A%2F%2Ftuf-repo-cdn.sigstore.dev" / "trusted_root.json"
    assert config["trustedRoot"] == json.loads(root.read_text())
    assert config["signingConfig"]["mediaType"].startswith("application/vnd.dev.sigstore")


# --- a Sigstore instance of our own, and a bundle from its recorded responses ----------------


def _spki(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _log_id(key: ec.EllipticCurvePublicKey) -> bytes:
    return hashlib.sha256(_spki(key)).digest()


@dataclass
class FakeSigstore:
    """A Fulcio CA, a CT log and a Rekor log: keys generated here, published in a trust config."""

    fulcio_key: ec.EllipticCurvePrivateKey
    fulcio: x509.Certificate
    ct_key: ec.EllipticCurvePrivateKey
    rekor_key: ec.EllipticCurvePrivateKey

    @classmethod
    def create(cls) -> FakeSigstore:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "example.test"),
                x509.NameAttribute(NameOID.COMMON_NAME, "fake-fulcio"),
            ]
        )
        now = dt.datetime.now(dt.UTC)
        ca = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .sign(key, hashes.SHA256())
        )
        return cls(
            key,
            ca,
            ec.generate_private_key(ec.SECP256R1()),
            ec.generate_private_key(ec.SECP256R1()),
        )

    def trust_config(self) -> dict[str, Any]:
        start = {"start": (dt.datetime.now(dt.UTC) - dt.timedelta(days=1)).isoformat()}

        def log(key: ec.EllipticCurvePrivateKey, url: str) -> dict[str, Any]:
            return {
                "baseUrl": url,
                "hashAlgorithm": "SHA2_256",
                "publicKey": {
                    "rawBytes": base64.b64encode(_spki(key.public_key())).decode(),
                    "keyDetails": "PKIX_ECDSA_P256_SHA_256",
                    "validFor": start,
                },
                "logId": {"keyId": base64.b64encode(_log_id(key.public_key())).decode()},
            }

        der = self.fulcio.public_bytes(serialization.Encoding.DER)
        production = production_trust_config()
        return {
            "mediaType": CLIENT_TRUST_CONFIG_MEDIA_TYPE,
            "trustedRoot": {
                "mediaType": "application/vnd.dev.sigstore.trustedroot+json;version=0.1",
                "tlogs": [log(self.rekor_key, "https://rekor.example.test")],
                "certificateAuthorities": [
                    {
                        "subject": {"organization": "example.test", "commonName": "fake-fulcio"},
                        "uri": "https://fulcio.example.test",
                        "certChain": {
                            "certificates": [{"rawBytes": base64.b64encode(der).decode()}]
                        },
                        "validFor": start,
                    }
                ],
                "ctlogs": [log(self.ct_key, "https://ctfe.example.test")],
                "timestampAuthorities": [],
            },
            "signingConfig": production["signingConfig"],
        }

    def issue(self, key: ec.EllipticCurvePrivateKey, identity: str) -> x509.Certificate:
        """What Fulcio returns: a 10-minute certificate for ``identity`` with an embedded SCT."""
        now = dt.datetime.now(dt.UTC)
        serial = x509.random_serial_number()
        issuer_ext = ObjectIdentifier("1.3.6.1.4.1.57264.1.8")
        issuer_utf8 = b"\x0c" + bytes([len(ISSUER)]) + ISSUER.encode()

        def builder() -> x509.CertificateBuilder:
            return (
                x509.CertificateBuilder()
                .subject_name(x509.Name([]))
                .issuer_name(self.fulcio.subject)
                .public_key(key.public_key())
                .serial_number(serial)
                .not_valid_before(now - dt.timedelta(minutes=1))
                .not_valid_after(now + dt.timedelta(minutes=10))
                .add_extension(
                    x509.KeyUsage(True, False, False, False, False, False, False, False, False),
                    critical=True,
                )
                .add_extension(
                    x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False
                )
                .add_extension(
                    x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
                )
                .add_extension(
                    x509.AuthorityKeyIdentifier.from_issuer_public_key(
                        self.fulcio_key.public_key()
                    ),
                    critical=False,
                )
                .add_extension(
                    x509.SubjectAlternativeName([x509.RFC822Name(identity)]), critical=True
                )
                .add_extension(
                    x509.UnrecognizedExtension(
                        ObjectIdentifier("1.3.6.1.4.1.57264.1.1"), ISSUER.encode()
                    ),
                    critical=False,
                )
                .add_extension(x509.UnrecognizedExtension(issuer_ext, issuer_utf8), critical=False)
            )

        # The precertificate's TBS is the final certificate's without the SCT list.
        precert = builder().sign(self.fulcio_key, hashes.SHA256())
        tbs = precert.tbs_certificate_bytes
        timestamp = int(now.timestamp() * 1000)
        issuer_key_hash = _log_id(self.fulcio_key.public_key())
        signed = (
            struct.pack("!BBQH", 0, 0, timestamp, 1)
            + issuer_key_hash
            + len(tbs).to_bytes(3, "big")
            + tbs
            + struct.pack("!H", 0)
        )
        sig = self.ct_key.sign(signed, ec.ECDSA(hashes.SHA256()))
        sct = (
            struct.pack("!B", 0)
            + _log_id(self.ct_key.public_key())
            + struct.pack("!QH", timestamp, 0)
            + struct.pack("!BBH", 4, 3, len(sig))
            + sig
        )
        sct_list = struct.pack("!HH", len(sct) + 2, len(sct)) + sct
        octets = b"\x04" + _der_length(len(sct_list)) + sct_list
        sct_ext = x509.UnrecognizedExtension(ObjectIdentifier("1.3.6.1.4.1.11129.2.4.2"), octets)
        return (
            builder().add_extension(sct_ext, critical=False).sign(self.fulcio_key, hashes.SHA256())
        )

    def record(self, envelope: dict[str, Any], cert: x509.Certificate) -> dict[str, Any]:
        """What Rekor returns for a dsse/0.0.1 entry upload: the entry in a tree of one, with
        its signed checkpoint and inclusion promise (SET)."""
        payload = base64.b64decode(envelope["payload"])
        pem = cert.public_bytes(serialization.Encoding.PEM)
        body = {
            "apiVersion": "0.0.1",
            "kind": "dsse",
            "spec": {
                "envelopeHash": {
                    "algorithm": "sha256",
                    "value": hashlib.sha256(json.dumps(envelope).encode()).hexdigest(),
                },
                "payloadHash": {
                    "algorithm": "sha256",
                    "value": hashlib.sha256(payload).hexdigest(),
                },
                "signatures": [
                    {
                        "signature": envelope["signatures"][0]["sig"],
                        "verifier": base64.b64encode(pem).decode(),
                    }
                ],
            },
        }
        body_b64 = base64.b64encode(json.dumps(body).encode()).decode()
        log_id = _log_id(self.rekor_key.public_key())
        integrated = int(dt.datetime.now(dt.UTC).timestamp())
        root = hashlib.sha256(b"\x00" + base64.b64decode(body_b64)).digest()
        note = f"rekor.example.test - 1\n1\n{base64.b64encode(root).decode()}\n"
        note_sig = self.rekor_key.sign(note.encode(), ec.ECDSA(hashes.SHA256()))
        checkpoint = (
            f"{note}\n\u2014 rekor.example.test "
            f"{base64.b64encode(log_id[:4] + note_sig).decode()}\n"
        )
        set_payload = rfc8785.dumps(
            {"body": body_b64, "integratedTime": integrated, "logID": log_id.hex(), "logIndex": 0}
        )
        entry_set = self.rekor_key.sign(set_payload, ec.ECDSA(hashes.SHA256()))
        return {
            "24296fb24b8ad77a" + "0" * 48: {
                "body": body_b64,
                "integratedTime": integrated,
                "logID": log_id.hex(),
                "logIndex": 0,
                "verification": {
                    "inclusionProof": {
                        "checkpoint": checkpoint,
                        "hashes": [],
                        "logIndex": 0,
                        "rootHash": root.hex(),
                        "treeSize": 1,
                    },
                    "signedEntryTimestamp": base64.b64encode(entry_set).decode(),
                },
            }
        }


def _der_length(n: int) -> bytes:
    return bytes([n]) if n < 0x80 else b"\x82" + n.to_bytes(2, "big")


def _statement(model: Path) -> bytes:
    """model-signing's v1.0 statement (files serialization) for the directory."""
    resources = [
        {
            "name": p.relative_to(model).as_posix(),
            "algorithm": "sha256",
            "digest": hashlib.sha256(p.read_bytes()).hexdigest(),
        }
        for p in sorted(model.rglob("*"))
        if p.is_file()
    ]
    root = hashlib.sha256(b"".join(bytes.fromhex(r["digest"]) for r in resources)).hexdigest()
    return json.dumps(
        {
            "_type": "https://in-toto.io/Statement/v1",
            "subject": [{"name": model.name, "digest": {"sha256": root}}],
            "predicateType": "https://model_signing/signature/v1.0",
            "predicate": {
                "serialization": {
                    "method": "files",
                    "hash_type": "sha256",
                    "allow_symlinks": False,
                    "ignore_paths": [],
                },
                "resources": resources,
            },
        },
        indent=2,
    ).encode()


@dataclass(frozen=True)
class Keyless:
    model: Path
    signature: Path
    trust_config: Path
    rekor_response: dict[str, Any]
    envelope: dict[str, Any]
    certificate: x509.Certificate


@pytest.fixture(scope="module")
def keyless(tmp_path_factory: pytest.TempPathFactory) -> Keyless:
    tmp = tmp_path_factory.mktemp("keyless")
    model = tmp / "model"
    (model / "sub").mkdir(parents=True)
    (model / "config.json").write_text('{"a": 1}')
    (model / "sub" / "weights.bin").write_bytes(bytes(range(256)) * 16)
    instance = FakeSigstore.create()
    config = tmp / "trust-config.json"
    config.write_text(json.dumps(instance.trust_config()))
    # The signer: an ephemeral key, Fulcio's certificate for it, the DSSE envelope, Rekor.
    ephemeral = ec.generate_private_key(ec.SECP256R1())
    cert = instance.issue(ephemeral, IDENTITY)
    payload = _statement(model)
    pae = f"DSSEv1 {len(IN_TOTO)} {IN_TOTO} {len(payload)} ".encode() + payload
    sig = ephemeral.sign(pae, ec.ECDSA(hashes.SHA256()))
    envelope = {
        "payload": base64.b64encode(payload).decode(),
        "payloadType": IN_TOTO,
        "signatures": [{"sig": base64.b64encode(sig).decode()}],
    }
    response = instance.record(envelope, cert)
    signature = tmp / "model.sig"
    signature.write_text(
        assemble_keyless_bundle(envelope=envelope, certificate=cert, rekor_response=response)
    )
    return Keyless(model, signature, config, response, envelope, cert)


def _trust(keyless: Keyless, **kwargs: Any) -> SignerTrust:
    identity = kwargs.pop("identity", SigstoreIdentity(IDENTITY, ISSUER))
    return SignerTrust(identities=(identity,), trust_config=keyless.trust_config, **kwargs)


def test_a_bundle_assembled_from_recorded_responses_verifies_offline(
    keyless: Keyless, no_network: list[Any]
) -> None:
    bundle = json.loads(keyless.signature.read_text())
    assert set(bundle["verificationMaterial"]) >= {"certificate", "tlogEntries"}
    signer = verify_signed_model(
        keyless.model, signature=keyless.signature, trust=_trust(keyless, require_rekor=True)
    )
    assert (signer.method, signer.identity, signer.issuer) == ("sigstore", IDENTITY, ISSUER)
    assert signer.details["rekor_log_index"] == 0
    assert no_network == []


@pytest.mark.parametrize(
    "identity",
    [SigstoreIdentity("other@example.com", ISSUER), SigstoreIdentity(IDENTITY, "https://x.test")],
)
def test_another_identity_or_issuer_is_refused(
    keyless: Keyless, identity: SigstoreIdentity
) -> None:
    with pytest.raises(ControlRefused) as refused:
        verify_signed_model(
            keyless.model, signature=keyless.signature, trust=_trust(keyless, identity=identity)
        )
    assert refused.value.reason == SignerRefusal.IDENTITY_MISMATCH


def test_the_public_instance_does_not_vouch_for_a_private_one(keyless: Keyless) -> None:
    trust = SignerTrust(identities=(SigstoreIdentity(IDENTITY, ISSUER),))
    with pytest.raises(ControlRefused) as refused:
        verify_signed_model(keyless.model, signature=keyless.signature, trust=trust)
    assert refused.value.reason in (
        SignerRefusal.CERTIFICATE_NOT_TRUSTED,
        SignerRefusal.TRANSPARENCY_LOG,
    )


def test_a_tampered_rekor_entry_is_refused(keyless: Keyless, tmp_path: Path) -> None:
    response = json.loads(json.dumps(keyless.rekor_response))
    entry = next(iter(response.values()))
    entry["integratedTime"] += 1  # the SET no longer matches
    signature = tmp_path / "model.sig"
    signature.write_text(
        assemble_keyless_bundle(
            envelope=keyless.envelope, certificate=keyless.certificate, rekor_response=response
        )
    )
    with pytest.raises(ControlRefused) as refused:
        verify_signed_model(keyless.model, signature=signature, trust=_trust(keyless))
    assert refused.value.reason == SignerRefusal.TRANSPARENCY_LOG


def test_a_changed_model_is_refused(keyless: Keyless, tmp_path: Path) -> None:
    import shutil

    from secmlops.controls.signing import SignatureRefusal

    model = tmp_path / "model"
    shutil.copytree(keyless.model, model)
    (model / "config.json").write_text('{"a": 2}')
    with pytest.raises(ControlRefused) as refused:
        verify_signed_model(model, signature=keyless.signature, trust=_trust(keyless))
    assert refused.value.reason == SignatureRefusal.CONTENT_MISMATCH


def test_a_malformed_recorded_response_is_bad_input(keyless: Keyless) -> None:
    with pytest.raises(InputError, match="cannot assemble"):
        assemble_keyless_bundle(
            envelope=keyless.envelope, certificate=keyless.certificate, rekor_response={"x": {}}
        )


def test_a_trust_config_that_is_not_one_is_bad_input(keyless: Keyless, tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"mediaType": "something/else"}')
    trust = SignerTrust(identities=(SigstoreIdentity(IDENTITY, ISSUER),), trust_config=bad)
    with pytest.raises(InputError, match="not a client trust config"):
        verify_signed_model(keyless.model, signature=keyless.signature, trust=trust)


def test_keyless_signing_without_network_is_a_tool_failure(
    no_ci: None, no_network: list[Any], tmp_path: Path
) -> None:
    """With a usable token, signing hashes the model, builds the statement and asks Fulcio
    for a certificate: here that request cannot leave the machine, which is a ToolError
    saying keyless signing needs Fulcio and Rekor; no signature is written."""
    from secmlops.errors import ToolError

    now = int(dt.datetime.now(dt.UTC).timestamp())
    token = _jwt({"iss": ISSUER, "sub": IDENTITY, "aud": "sigstore", "iat": now, "exp": now + 300})
    model = tmp_path / "model"
    model.mkdir()
    (model / "w.bin").write_bytes(b"w")
    with pytest.raises(ToolError, match="keyless signing failed") as failed:
        sign_model_keyless(model, signature=tmp_path / "model.sig", identity_token=token)
    assert "Fulcio and Rekor" in (failed.value.fix or "")
    assert no_network  # it did try to reach Fulcio
    assert not (tmp_path / "model.sig").exists()


def test_keyless_signing_hashes_once_and_signs_the_native_statement(
    no_ci: None, no_network: list[Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """With Fulcio and Rekor stood in for by this test's own instance (the signing context
    is replaced; nothing else), ``sign_model_keyless`` signs the statement key signing makes
    (model-signing's v1.0 manifest from one hashing pass) and returns a ModelSignature naming
    the identity and issuer; the bundle verifies offline against that instance, and with
    ``shard_size`` the manifest is sharded and the digest is the shard manifest's."""
    from sigstore.models import Bundle
    from sigstore.sign import SigningContext

    from secmlops._internal.digests import sha256_file, tree_digest

    instance = FakeSigstore.create()
    config = tmp_path / "trust-config.json"
    config.write_text(json.dumps(instance.trust_config()))
    signed_payloads: list[bytes] = []

    class Signer:
        def __enter__(self) -> Signer:
            return self

        def __exit__(self, *exc: object) -> None:
            return None

        def sign_dsse(self, statement: Any) -> Bundle:
            payload: bytes = statement._contents
            signed_payloads.append(payload)
            ephemeral = ec.generate_private_key(ec.SECP256R1())
            cert = instance.issue(ephemeral, IDENTITY)
            pae = f"DSSEv1 {len(IN_TOTO)} {IN_TOTO} {len(payload)} ".encode() + payload
            envelope = {
                "payload": base64.b64encode(payload).decode(),
                "payloadType": IN_TOTO,
                "signatures": [
                    {
                        "sig": base64.b64encode(
                            ephemeral.sign(pae, ec.ECDSA(hashes.SHA256()))
                        ).decode()
                    }
                ],
            }
            text = assemble_keyless_bundle(
                envelope=envelope, certificate=cert, rekor_response=instance.record(envelope, cert)
            )
            return Bundle.from_json(text)

    class Context:
        def signer(self, token: Any) -> Signer:
            return Signer()

    monkeypatch.setattr(SigningContext, "from_trust_config", lambda config: Context())
    now = int(dt.datetime.now(dt.UTC).timestamp())
    token = _jwt({"iss": ISSUER, "sub": IDENTITY, "aud": "sigstore", "iat": now, "exp": now + 300})
    model = tmp_path / "model"
    (model / "sub").mkdir(parents=True)
    (model / "config.json").write_text('{"a": 1}')
    (model / "sub" / "weights.bin").write_bytes(bytes(range(256)) * 16)
    sig = tmp_path / "model.sig"
    signed = sign_model_keyless(model, signature=sig, trust_config=config, identity_token=token)
    assert (signed.method, signed.identity, signed.issuer, signed.key_id) == (
        "sigstore",
        IDENTITY,
        ISSUER,
        "",
    )
    assert signed.model_digest == tree_digest(model)
    assert signed.signature_sha256 == sha256_file(sig)
    assert signed.to_json()["identity"] == IDENTITY
    assert json.loads(signed_payloads[0]) == json.loads(_statement(model)) | {
        "predicate": {
            **json.loads(_statement(model))["predicate"],
            "serialization": {"method": "files", "hash_type": "sha256", "allow_symlinks": False},
        }
    }
    trust = SignerTrust(identities=(SigstoreIdentity(IDENTITY, ISSUER),), trust_config=config)
    verified = verify_signed_model(model, signature=sig, trust=trust)
    assert (verified.method, verified.model_digest) == ("sigstore", signed.model_digest)
    sharded = sign_model_keyless(
        model, signature=sig, trust_config=config, identity_token=token, shard_size=1000
    )
    assert sharded.shard_size == 1000 and sharded.model_digest != tree_digest(model)
    fast = verify_signed_model(model, signature=sig, trust=trust, whole_files=False)
    assert fast.model_digest == sharded.model_digest and fast.tree_digest is None
    assert verify_signed_model(model, signature=sig, trust=trust).model_digest == tree_digest(model)
    assert no_network == []
