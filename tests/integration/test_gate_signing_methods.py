"""Issue 10: the deploy gate verifies the model signature with whichever method the trust
root names for the model-signer role (keys, CA certificates, Sigstore identities).

Before issue 10 the gate knew one method: a model-signer public key. A model signed with a
certificate from the site's PKI could not pass the gate at all, and nothing let a site say
"only our CA" or "only this CI identity". Now the trust root's model-signer role lists any of
the three; a signature of a method it does not list is refused, a certificate must chain to a
listed CA and be valid at the release's signed time, and the check's detail says which method
and which signer verified.

Registries are built with :mod:`tests.integration.deploy_world` (real evidence, real
model-signing signatures); certificate signatures are made with model-signing's own
certificate signer over a PKI made here.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from secmlops._internal.digests import tree_digest
from secmlops.catalogue import GateRefusal
from secmlops.controls.image_scan import ScanPolicy
from secmlops.controls.signing import ModelSignature
from secmlops.errors import ControlRefused, InputError
from secmlops.evidence.statements import key_id, load_private_key
from secmlops.evidence.trust_root import MODEL_SIGNER, TrustRoot
from secmlops.gate import GateCheck, GatePolicy, verify_release
from secmlops.registry.stores import LocalRegistry
from secmlops.site import SigningSource
from tasks.signing import require_signing_ready, sign_model_for_site
from tests.integration import deploy_world
from tests.integration.deploy_world import World, make_world
from tests.unit.test_catalogue import SITE

pytestmark = pytest.mark.integration

NOW = dt.datetime.now(dt.UTC)
DAY = dt.timedelta(days=1)


@dataclass(frozen=True)
class Issued:
    """A certificate and its key, as PEM files."""

    key: Path
    certificate: Path
    cert: x509.Certificate
    #: The issuer's certificate (a leaf's bundle carries it; model-signing needs a chain).
    chain: tuple[Path, ...] = ()


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example ML"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _write(
    folder: Path, stem: str, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate
) -> Issued:
    folder.mkdir(parents=True, exist_ok=True)
    key_path, cert_path = folder / f"{stem}.key", folder / f"{stem}.crt"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return Issued(key_path, cert_path, cert)


def make_ca(folder: Path, name: str) -> Issued:
    """A self-signed root CA (basicConstraints CA, keyCertSign), valid a year around now."""
    key = ec.generate_private_key(ec.SECP256R1())
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(_name(name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - 365 * DAY)
        .not_valid_after(NOW + 365 * DAY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    return _write(folder, name, key, cert)


def make_leaf(
    folder: Path, ca: Issued, name: str, *, not_before: dt.datetime, not_after: dt.datetime
) -> Issued:
    """A code-signing leaf certificate issued by ``ca`` (digitalSignature, codeSigning)."""
    key = ec.generate_private_key(ec.SECP256R1())
    ca_key = load_private_key(ca.key)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return dataclasses.replace(_write(folder, name, key, cert), chain=(ca.certificate,))


def sign_with_certificate(model_dir: Path, signature: Path, leaf: Issued) -> None:
    """Sign as model-signing's certificate method does (leaf + chain in the bundle)."""
    from model_signing import hashing, signing

    hashing_config: Any = hashing.Config  # model-signing is untyped
    signing_config: Any = signing.Config
    (
        signing_config()
        .set_hashing_config(hashing_config().set_ignored_paths(paths=[], ignore_git_paths=False))
        .use_certificate_signer(
            private_key=leaf.key,
            signing_certificate=leaf.certificate,
            certificate_chain=leaf.chain,
        )
        .sign(model_dir, signature)
    )


@dataclass
class Pki:
    ca: Issued
    other_ca: Issued
    leaf: Issued
    expired_leaf: Issued


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca = make_ca(folder, "models-ca")
    return Pki(
        ca=ca,
        other_ca=make_ca(folder, "other-ca"),
        leaf=make_leaf(folder, ca, "trainer", not_before=NOW - DAY, not_after=NOW + 30 * DAY),
        expired_leaf=make_leaf(
            folder, ca, "old-trainer", not_before=NOW - 30 * DAY, not_after=NOW - DAY
        ),
    )


@pytest.fixture
def world(tmp_path: Path) -> World:
    return make_world(tmp_path, LocalRegistry(tmp_path / "registry"))


@pytest.fixture
def cert_signing(monkeypatch: pytest.MonkeyPatch, world: World) -> Iterator[list[Issued]]:
    """While active, ``World.register`` signs as the training flow does under a site whose
    ``sources.signing`` is ``certificate`` with the leaf put in the yielded list."""
    leaves: list[Issued] = []

    def sign(model_dir: Path, *, private_key: Path, signature: Path) -> ModelSignature:
        leaf = leaves[-1]
        site = SigningSource(
            method="certificate",
            key=str(leaf.key),
            certificate=str(leaf.certificate),
            chain=tuple(str(c) for c in leaf.chain),
        )
        return sign_model_for_site(model_dir, signature=signature, signing=site, keys=world.keys)

    monkeypatch.setattr(deploy_world, "sign_model", sign)
    yield leaves


def _root(world: World) -> TrustRoot:
    return world.keys.trust_root()


def _without_model_signer_keys(root: TrustRoot) -> TrustRoot:
    return dataclasses.replace(
        root, entries=tuple(e for e in root.entries if e.subject != MODEL_SIGNER)
    )


def model_signature_check(
    world: World, version: str, policy: GatePolicy | None = None
) -> GateCheck:
    """The gate's model-signature check for ``version`` (staging; other checks may fail)."""
    try:
        report = verify_release(
            world.models, version, "staging", keys=world.keys, policy=policy or world.policy
        )
    except ControlRefused as exc:
        report = exc.result
    return next(c for c in report.checks if c.name == "model-signature")


def test_a_key_signed_model_verifies_with_the_model_signer_key_as_before(world: World) -> None:
    version = world.register()
    check = model_signature_check(world, version)
    kid = key_id(load_private_key(world.keys.private(MODEL_SIGNER)).public_key())
    assert check.passed, check.detail
    assert check.detail == f"model-signing signature verifies with model-signer key {kid[:12]}…"


def test_a_sharded_signature_is_compared_with_the_releases_tree_digest(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ``shards`` manifest's own digest is not the release's ``tree_digest``: the gate
    hashes the whole files too (``verify_signed_model``'s default) and compares those, so a
    model signed with ``sign --shard-size`` passes, and a changed byte is still refused."""
    from secmlops.controls.signing import KeySigner, sign_model_with

    def sign(model_dir: Path, *, private_key: Path, signature: Path) -> ModelSignature:
        signed = sign_model_with(
            model_dir, signer=KeySigner.from_pem(private_key), signature=signature, shard_size=7
        )
        assert signed.model_digest != tree_digest(model_dir)  # the shard manifest's digest
        return signed

    monkeypatch.setattr(deploy_world, "sign_model", sign)
    version = world.register()
    check = model_signature_check(world, version)
    assert check.passed, check.detail
    model = world.root / "registry" / world.models.version_prefix(version) / "model"
    victim = next(p for p in sorted(model.rglob("*")) if p.is_file() and p.stat().st_size)
    data = bytearray(victim.read_bytes())
    data[0] ^= 1
    victim.write_bytes(bytes(data))
    check = model_signature_check(world, version)
    assert not check.passed
    assert check.reason == GateRefusal.MODEL_SIGNATURE_INVALID
    assert "Hash mismatch" in check.detail, check.detail


def test_a_certificate_signed_model_passes_with_its_ca_in_the_trust_root(
    world: World, pki: Pki, cert_signing: list[Issued]
) -> None:
    """The check's detail names the method, the leaf and the CA (by fingerprint)."""
    _without_model_signer_keys(_root(world)).with_ca_certificate(pki.ca.cert).save()
    cert_signing.append(pki.leaf)
    version = world.register()
    check = model_signature_check(world, version)
    assert check.passed, check.detail
    ca = _root(world).certificates[0]
    assert "certificate" in check.detail and "CN=trainer" in check.detail
    assert f"CN=models-ca,O=Example ML ({ca.fingerprint[:12]}…)" in check.detail


def test_a_certificate_signed_model_is_refused_under_another_ca(
    world: World, pki: Pki, cert_signing: list[Issued]
) -> None:
    _without_model_signer_keys(_root(world)).with_ca_certificate(pki.other_ca.cert).save()
    cert_signing.append(pki.leaf)
    check = model_signature_check(world, world.register())
    assert not check.passed
    assert check.reason == GateRefusal.MODEL_SIGNATURE_INVALID
    assert "does not chain to a trusted CA" in check.detail, check.detail


def test_a_leaf_expired_when_the_release_was_made_is_refused(
    world: World, pki: Pki, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Our signer refuses an expired leaf (exit 2); a model signed with one elsewhere
    (model-signing's own signer, which never checks validity, and whose verifier checks the
    chain at the leaf's notBefore) is refused by the gate at the release's signed time."""
    _without_model_signer_keys(_root(world)).with_ca_certificate(pki.ca.cert).save()
    site = SigningSource(
        method="certificate",
        key=str(pki.expired_leaf.key),
        certificate=str(pki.expired_leaf.certificate),
    )
    model = tmp_path / "m"
    model.mkdir()
    (model / "w.bin").write_bytes(b"1")
    with pytest.raises(InputError, match="not valid now") as refused:
        sign_model_for_site(model, signature=tmp_path / "m.sig", signing=site, keys=world.keys)
    assert refused.value.exit_code == 2

    def sign(model_dir: Path, *, private_key: Path, signature: Path) -> None:
        sign_with_certificate(model_dir, signature, pki.expired_leaf)

    monkeypatch.setattr(deploy_world, "sign_model", sign)
    check = model_signature_check(world, world.register())
    assert not check.passed
    assert check.reason == GateRefusal.MODEL_SIGNATURE_INVALID
    assert "CN=old-trainer" in check.detail and "not valid at the signing time" in check.detail


def test_a_ca_whose_window_closed_before_the_release_no_longer_counts(
    world: World, pki: Pki, cert_signing: list[Issued]
) -> None:
    """The trust root's window on a CA entry works like a key's (retired: nothing newer)."""
    _root(world).with_ca_certificate(pki.ca.cert, not_after=NOW - DAY).save()
    cert_signing.append(pki.leaf)
    check = model_signature_check(world, world.register())
    assert not check.passed
    assert (
        "signed with method 'certificate'" in check.detail and "trusts 'key' only" in check.detail
    )


def test_a_trust_root_naming_only_a_sigstore_identity_refuses_a_key_signed_model(
    world: World,
) -> None:
    root = _without_model_signer_keys(_root(world)).with_identity(
        "https://github.com/example/ml/.github/workflows/train.yml@refs/heads/main",
        "https://token.actions.githubusercontent.com",
    )
    root.save()
    check = model_signature_check(world, world.register())
    assert not check.passed
    assert check.reason == GateRefusal.MODEL_SIGNATURE_INVALID
    assert "signed with method 'key'" in check.detail and "trusts 'sigstore' only" in check.detail
    assert "github.com/example/ml" in check.detail


def test_a_certificate_signed_model_is_refused_when_only_keys_are_trusted(
    world: World, pki: Pki, cert_signing: list[Issued]
) -> None:
    cert_signing.append(pki.leaf)
    check = model_signature_check(world, world.register())
    assert not check.passed
    assert (
        "signed with method 'certificate'" in check.detail and "trusts 'key' only" in check.detail
    )


def test_a_tampered_certificate_signed_model_is_refused(
    world: World, pki: Pki, cert_signing: list[Issued]
) -> None:
    _root(world).with_ca_certificate(pki.ca.cert).save()
    cert_signing.append(pki.leaf)
    version = world.register()
    model = world.root / "registry" / world.models.version_prefix(version) / "model"
    victim = next(p for p in sorted(model.rglob("*")) if p.is_file())
    victim.write_bytes(victim.read_bytes() + b"\0")
    check = model_signature_check(world, version)
    assert not check.passed
    assert check.reason == GateRefusal.MODEL_SIGNATURE_INVALID


PRODUCTION = GatePolicy(
    environment="production", scan=ScanPolicy(unsafe_allow_curated_db=False), sources=SITE
)


def _site_attestor(root: TrustRoot) -> TrustRoot:
    """The attestor's key as a site key (not demo), so a production gate reads the release
    and reaches the model-signature check."""
    entries = tuple(
        dataclasses.replace(e, demo=False) if e.subject == "attestor" else e for e in root.entries
    )
    return dataclasses.replace(root, entries=entries)


def test_production_still_refuses_the_demo_model_signer_key(world: World) -> None:
    _site_attestor(_root(world)).save()
    check = model_signature_check(world, world.register(), PRODUCTION)
    assert not check.passed
    assert check.reason == GateRefusal.UNTRUSTED_SIGNER
    assert "demo key" in check.detail


def test_production_refuses_a_demo_ca(world: World, pki: Pki, cert_signing: list[Issued]) -> None:
    root = _site_attestor(_without_model_signer_keys(_root(world)))
    root.with_ca_certificate(pki.ca.cert, demo=True).save()
    cert_signing.append(pki.leaf)
    version = world.register()
    assert model_signature_check(world, version).passed  # the demo policy accepts it
    check = model_signature_check(world, version, PRODUCTION)
    assert not check.passed
    assert check.reason == GateRefusal.UNTRUSTED_SIGNER
    assert "demo CA" in check.detail


def test_a_model_signed_by_model_signings_own_certificate_signer_passes_the_gate(
    world: World, pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Interop: the gate verifies what the model_signing library itself writes."""

    def sign(model_dir: Path, *, private_key: Path, signature: Path) -> None:
        sign_with_certificate(model_dir, signature, pki.leaf)

    monkeypatch.setattr(deploy_world, "sign_model", sign)
    _root(world).with_ca_certificate(pki.ca.cert).save()
    check = model_signature_check(world, world.register())
    assert check.passed, check.detail
    assert "CN=trainer" in check.detail


def test_the_site_key_method_signs_with_the_trust_roots_model_signer_key_only(
    world: World, tmp_path: Path
) -> None:
    """sources.signing.key naming a key the trust root does not list for model-signer is
    refused before anything is signed (exit 2), as every role key is."""
    stray = tmp_path / "stray.pem"
    from secmlops.evidence.signers import write_private_key

    write_private_key(stray, ec.generate_private_key(ec.SECP256R1()), None)
    model = tmp_path / "m"
    model.mkdir()
    (model / "w.bin").write_bytes(b"1")
    with pytest.raises(InputError) as refused:
        sign_model_for_site(
            model,
            signature=tmp_path / "m.sig",
            signing=SigningSource(key=str(stray)),
            keys=world.keys,
        )
    assert refused.value.exit_code == 2
    assert "not listed" in refused.value.message and "sources.signing.key" in str(refused.value)
    assert not (tmp_path / "m.sig").exists()
    signed = sign_model_for_site(
        model, signature=tmp_path / "m.sig", signing=SigningSource(), keys=world.keys
    )
    assert signed.method == "key"
    assert signed.key_id == key_id(load_private_key(world.keys.private(MODEL_SIGNER)).public_key())


SIGSTORE_ENV = (
    "SIGSTORE_IDENTITY_TOKEN",
    "SIGSTORE_ID_TOKEN",
    "GITHUB_ACTIONS",
    "ACTIONS_ID_TOKEN_REQUEST_URL",
    "ACTIONS_ID_TOKEN_REQUEST_TOKEN",
    "GITLAB_CI",
    "BUILDKITE",
    "CIRCLECI",
    "GOOGLE_SERVICE_ACCOUNT_NAME",
)


def test_the_sigstore_method_without_an_ambient_oidc_token_is_refused_with_exit_2(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in SIGSTORE_ENV:
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(InputError) as refused:
        require_signing_ready(SigningSource(method="sigstore"))
    assert refused.value.exit_code == 2
    assert "OIDC identity token" in refused.value.message
    require_signing_ready(SigningSource())  # key: nothing to wait for


FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "model-signing"
#: Who signed the vendored third-party Sigstore fixtures (tests/fixtures/model-signing/README).
FIXTURE_IDENTITY = ("stefanb@us.ibm.com", "https://sigstore.verify.ibm.com/oauth2")


@pytest.fixture
def keyless_signed(monkeypatch: pytest.MonkeyPatch) -> None:
    """While active, ``World.register`` registers the third-party model signed keyless on
    Sigstore's public-good instance (v1.1.0 fixture) instead of the trained one."""
    source = FIXTURES / "v1.1.0-sigstore"

    def sign(model_dir: Path, *, private_key: Path, signature: Path) -> None:
        shutil.rmtree(model_dir)
        model_dir.mkdir()
        for path in source.iterdir():
            if path.name not in ("model.sig", "ignore-me"):
                shutil.copyfile(path, model_dir / path.name)
        shutil.copyfile(source / "model.sig", signature)

    monkeypatch.setattr(deploy_world, "sign_model", sign)


@pytest.mark.usefixtures("keyless_signed")
def test_a_keyless_signed_model_passes_with_its_identity_in_the_trust_root(world: World) -> None:
    """Verified offline against the trust root pinned in the sigstore package."""
    _without_model_signer_keys(_root(world)).with_identity(*FIXTURE_IDENTITY).save()
    check = model_signature_check(world, world.register())
    assert check.passed, check.detail
    assert check.detail == (
        "model-signing signature verifies with Sigstore identity stefanb@us.ibm.com "
        "(issuer https://sigstore.verify.ibm.com/oauth2)"
    )


@pytest.mark.usefixtures("keyless_signed")
def test_a_keyless_signed_model_is_refused_for_another_identity_or_only_keys(
    world: World,
) -> None:
    version = world.register()
    check = model_signature_check(world, version)  # the demo trust root: keys only
    assert not check.passed
    assert "signed with method 'sigstore'" in check.detail and "trusts 'key' only" in check.detail
    _without_model_signer_keys(_root(world)).with_identity(
        "mallory@example.com", FIXTURE_IDENTITY[1]
    ).save()
    check = model_signature_check(world, version)
    assert not check.passed
    assert check.reason == GateRefusal.MODEL_SIGNATURE_INVALID
    assert "stefanb@us.ibm.com" in check.detail
