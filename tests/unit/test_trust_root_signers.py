"""Issue 10: the trust root's model-signer role names keys, CA certificates and Sigstore
identities; the site's ``sources.signing`` names how the flow signs; the template renders it.

Before issue 10 the model-signer role could list public keys only, so a site whose models are
signed with its PKI's certificates, or keyless in CI, had no way to say whom it trusts, and
the template refused every signing method but ``key``.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pydantic import ValidationError

from secmlops.controls.signer_trust import SignerTrust
from secmlops.errors import InputError
from secmlops.evidence.keys import KeyDirectory
from secmlops.evidence.trust_root import (
    MODEL_SIGNER,
    SIGSTORE_PRODUCTION,
    TrustRoot,
    certificate_fingerprint,
)
from secmlops.policy import read_policy
from secmlops.site import SigningSource, Sources

ROOT = Path(__file__).resolve().parents[2]
SECMLOPS = Path(sys.executable).parent / "secmlops"
NOW = dt.datetime.now(dt.UTC)
GITHUB = "https://token.actions.githubusercontent.com"
WORKFLOW = "https://github.com/example/ml/.github/workflows/train.yml@refs/heads/main"


def _certificate(name: str, *, ca: bool) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=1))
        .not_valid_after(NOW + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


@pytest.fixture(scope="module")
def ca() -> x509.Certificate:
    return _certificate("models-ca", ca=True)


@pytest.fixture
def keys(tmp_path: Path) -> KeyDirectory:
    directory = KeyDirectory(tmp_path / "keys")
    directory.ensure()
    return directory


def _edit(path: Path, change: dict[str, object]) -> None:
    raw = yaml.safe_load(path.read_text())
    raw["roles"].update(change)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))


# --- the trust root -------------------------------------------------------------------------


def test_a_keys_only_trust_root_loads_and_saves_unchanged(keys: KeyDirectory) -> None:
    """Existing trust roots keep working byte for byte."""
    text = keys.trust_root_file.read_text()
    root = TrustRoot.load(keys.trust_root_file)
    assert root.certificates == () and root.identities == ()
    assert root.to_yaml() == text
    trust = root.model_signer()
    assert trust.methods == ("key",)
    (option,) = trust.signer_trusts()
    assert option.method == "key" and isinstance(option.trust, SignerTrust)
    assert option.trust.public_keys == (trust.keys[0].public_key,)


def test_cas_and_identities_round_trip_and_become_signer_trusts(
    keys: KeyDirectory, ca: x509.Certificate, tmp_path: Path
) -> None:
    config = keys.root / "private-sigstore.json"
    config.write_text("{}")
    root = (
        keys.trust_root()
        .with_ca_certificate(ca, not_after=NOW + dt.timedelta(days=30), source="pki/ca.pem")
        .with_identity(WORKFLOW, GITHUB)
        .with_identity("ci@example.com", "https://oidc.example.com", trust_config=str(config))
    )
    root.save()
    text = keys.trust_root_file.read_text()
    assert "trust_config: private-sigstore.json" in text  # relative to the trust root
    loaded = TrustRoot.load(keys.trust_root_file)
    assert loaded.to_yaml() == text
    assert MODEL_SIGNER in loaded.subjects()
    (entry,) = loaded.certificates
    assert entry.fingerprint == certificate_fingerprint(ca) and entry.source == "pki/ca.pem"
    trust = loaded.model_signer()
    assert trust.methods == ("key", "certificate", "sigstore")
    options = trust.signer_trusts()
    assert [o.method for o in options] == ["key", "certificate", "sigstore", "sigstore"]
    assert options[1].trust.ca_certificates == (ca,) and options[1].ca == entry
    production, private = options[2].trust, options[3].trust
    assert production.trust_config is None and production.require_rekor is True
    assert private.trust_config == config
    assert [(i.identity, i.issuer) for i in private.identities] == [
        ("ci@example.com", "https://oidc.example.com")
    ]
    # Windows: the CA counts until its not_after, like a key.
    later = trust.valid_at(NOW + dt.timedelta(days=31))
    assert later.methods == ("key", "sigstore")


def test_a_trust_root_with_only_a_ca_for_the_model_signer_is_enough(
    keys: KeyDirectory, ca: x509.Certificate
) -> None:
    root = keys.trust_root()
    site = TrustRoot(
        root.path, tuple(e for e in root.entries if e.subject != MODEL_SIGNER)
    ).with_ca_certificate(ca)
    site.save()
    trust = TrustRoot.load(keys.trust_root_file).model_signer()
    assert trust.methods == ("certificate",)
    assert "model-signer" in TrustRoot.load(keys.trust_root_file).subjects()


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({MODEL_SIGNER: []}, "roles.model-signer lists nothing"),
        ({"gate": [{"ca_certificate": "CA"}]}, "for role model-signer only"),
        ({"attestor": [{"identity": WORKFLOW, "issuer": GITHUB}]}, "for role model-signer only"),
        ({MODEL_SIGNER: [{"ca_certificate": "not a pem"}]}, "not a PEM certificate"),
        ({MODEL_SIGNER: [{"identity": WORKFLOW, "issuer": "http://x"}]}, "issuer must be"),
        ({MODEL_SIGNER: [{"identity": "", "issuer": GITHUB}]}, "identity must be"),
        ({MODEL_SIGNER: [{"identity": WORKFLOW, "issuer": GITHUB, "rekor": True}]}, "unknown"),
        (
            {MODEL_SIGNER: [{"identity": WORKFLOW, "issuer": GITHUB, "trust_config": "nope.json"}]},
            "trust_config nope.json is not a file",
        ),
        (
            {MODEL_SIGNER: [{"identity": WORKFLOW, "issuer": GITHUB, "require_rekor": "yes"}]},
            "require_rekor must be true or false",
        ),
        (
            {MODEL_SIGNER: [{"identity": WORKFLOW, "issuer": GITHUB}] * 2},
            "Sigstore identity is listed twice",
        ),
    ],
)
def test_an_empty_or_invalid_model_signer_entry_is_input_error_naming_file_and_field(
    keys: KeyDirectory, change: dict[str, object], says: str
) -> None:
    _edit(keys.trust_root_file, change)
    with pytest.raises(InputError) as refused:
        TrustRoot.load(keys.trust_root_file)
    assert refused.value.exit_code == 2
    assert says in refused.value.message
    assert str(keys.trust_root_file) in str(refused.value)


def test_a_leaf_certificate_is_not_a_ca_and_its_fingerprint_is_checked(
    keys: KeyDirectory, ca: x509.Certificate
) -> None:
    _edit(
        keys.trust_root_file,
        {MODEL_SIGNER: [{"ca_certificate": _pem(_certificate("x", ca=False))}]},
    )
    with pytest.raises(InputError, match="not a CA certificate"):
        TrustRoot.load(keys.trust_root_file)
    _edit(keys.trust_root_file, {MODEL_SIGNER: [{"ca_certificate": _pem(ca), "fingerprint": "ab"}]})
    with pytest.raises(InputError, match="fingerprint ab is not the sha256"):
        TrustRoot.load(keys.trust_root_file)
    _edit(
        keys.trust_root_file,
        {MODEL_SIGNER: [{"ca_certificate": _pem(ca), "public_key": "x"}]},
    )
    with pytest.raises(InputError, match="public_key and ca_certificate"):
        TrustRoot.load(keys.trust_root_file)


def test_a_trust_root_listing_nothing_for_the_model_signer_says_so_when_asked(
    keys: KeyDirectory,
) -> None:
    root = keys.trust_root()
    bare = TrustRoot(root.path, tuple(e for e in root.entries if e.subject != MODEL_SIGNER))
    with pytest.raises(InputError) as refused:
        bare.model_signer()
    assert "roles.model-signer" in str(refused.value)
    assert "trust add-ca" in (refused.value.fix or "")


def test_trust_add_ca_add_identity_and_show(keys: KeyDirectory, ca: x509.Certificate) -> None:
    """``secmlops trust add-ca|add-identity`` write the model-signer entries and ``trust
    show`` lists them (text and JSON)."""
    env = {**os.environ, "SECMLOPS_HOME": str(keys.root.parent / "home")}
    env.pop("SECMLOPS_TRUST_ROOT", None)
    ca_file = keys.root.parent / "ca.pem"
    ca_file.write_text(_pem(ca))
    leaf_file = keys.root.parent / "leaf.pem"
    leaf_file.write_text(_pem(_certificate("leaf", ca=False)))
    for args, code in (
        (["add-ca", str(ca_file)], 0),
        (["add-identity", WORKFLOW, "--issuer", GITHUB], 0),
        (["add-ca", str(leaf_file)], 2),
        (["add-identity", "ci@example.com", "--issuer", "http://insecure"], 2),
    ):
        done = subprocess.run(
            [str(SECMLOPS), "trust", *args, "--keys", str(keys.root)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == code, done.stderr
    shown = subprocess.run(
        [str(SECMLOPS), "trust", "show", "--keys", str(keys.root), "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert shown.returncode == 0, shown.stderr
    data = json.loads(shown.stdout)
    assert [c["fingerprint"] for c in data["certificates"]] == [certificate_fingerprint(ca)]
    assert data["certificates"][0]["ca"] == "CN=models-ca"
    assert data["identities"] == [
        {
            "subject": MODEL_SIGNER,
            "identity": WORKFLOW,
            "issuer": GITHUB,
            "trust_config": SIGSTORE_PRODUCTION,
            "require_rekor": True,
            "not_before": None,
            "not_after": None,
        }
    ]
    text = subprocess.run(
        [str(SECMLOPS), "trust", "show", "--keys", str(keys.root)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    assert f"CA {certificate_fingerprint(ca)[:16]}  CN=models-ca" in text
    assert f"identity {WORKFLOW}  issuer {GITHUB}" in text


# --- the site's signing section -------------------------------------------------------------


def test_the_default_signing_is_the_model_signer_key() -> None:
    assert Sources().signing == SigningSource(method="key", key="")


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"method": "certificate"}, "needs sources.signing.certificate"),
        ({"method": "key", "certificate": "/pki/leaf.crt"}, "certificate and chain are for"),
        ({"method": "sigstore", "key": "kms:alias/x"}, "remove sources.signing.key"),
        ({"method": "key", "trust_config": "/etc/trust.json"}, "trust_config is for method"),
        ({"key": "keys/model-signer.pem"}, "must be an absolute path"),
        ({"key": "vault:x"}, "unknown signer kind"),
        ({"method": "pgp"}, "method"),
        ({"method": "sigstore", "oidc_token": "file"}, "oidc_token"),
    ],
)
def test_a_bad_signing_section_is_refused(fields: dict[str, str], says: str) -> None:
    with pytest.raises(ValidationError, match=says):
        SigningSource.model_validate(fields)


# --- the template -----------------------------------------------------------------------------


def _render_policy(dest: Path, **answers: str) -> Path:
    """Render only the template's secmlops-policy.yaml (copier, this checkout)."""
    import copier

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with copier.Worker(
            src_path=str(ROOT),
            dst_path=dest,
            data=answers,
            defaults=True,
            quiet=True,
            unsafe=False,
            exclude=["*", "!secmlops-policy.yaml"],
        ) as worker:
            worker.run_copy()
    return dest / "secmlops-policy.yaml"


@pytest.mark.parametrize(
    ("answers", "expected"),
    [
        ({}, SigningSource()),
        ({"signing_key": "kms:alias/model-signer"}, SigningSource(key="kms:alias/model-signer")),
        (
            {
                "signing_method": "certificate",
                "signing_key": "/srv/keys/model-signer.pem",
                "signing_certificate": "/srv/pki/model-signer.crt",
                "signing_chain": "/srv/pki/issuing.crt, /srv/pki/policy.crt",
            },
            SigningSource(
                method="certificate",
                key="/srv/keys/model-signer.pem",
                certificate="/srv/pki/model-signer.crt",
                chain=("/srv/pki/issuing.crt", "/srv/pki/policy.crt"),
            ),
        ),
        ({"signing_method": "sigstore"}, SigningSource(method="sigstore")),
        (
            {"signing_method": "sigstore", "sigstore_trust_config": "/etc/sigstore/trust.json"},
            SigningSource(method="sigstore", trust_config="/etc/sigstore/trust.json"),
        ),
    ],
)
def test_each_signing_method_renders_a_valid_site_config(
    tmp_path: Path, answers: dict[str, str], expected: SigningSource
) -> None:
    rendered = _render_policy(tmp_path / "p", **answers)
    policy = read_policy(rendered).policy
    assert policy.sources.signing == expected
    reference = read_policy(ROOT / "secmlops-policy.yaml").policy
    assert policy.model_dump(exclude={"sources"}) == reference.model_dump(exclude={"sources"})
    assert policy.sources.model_dump(exclude={"signing"}) == reference.sources.model_dump(
        exclude={"signing"}
    )
    if not answers:
        assert rendered.read_bytes() == (ROOT / "secmlops-policy.yaml").read_bytes()


@pytest.mark.parametrize(
    ("answers", "question"),
    [
        ({"signing_method": "pgp"}, "signing_method"),
        ({"signing_method": "certificate"}, "signing_certificate"),
        (
            {"signing_method": "certificate", "signing_certificate": "leaf.crt"},
            "signing_certificate",
        ),
        (
            {
                "signing_method": "certificate",
                "signing_certificate": "/l.crt",
                "signing_chain": "c.crt",
            },
            "signing_chain",
        ),
        ({"signing_key": "keys/ms.pem"}, "signing_key"),
        (
            {"signing_method": "sigstore", "sigstore_trust_config": "t.json"},
            "sigstore_trust_config",
        ),
    ],
)
def test_a_bad_signing_answer_is_refused_at_the_question(
    tmp_path: Path, answers: dict[str, str], question: str
) -> None:
    with pytest.raises(ValueError, match=question):
        _render_policy(tmp_path / "p", **answers)
    assert not (tmp_path / "p" / "secmlops-policy.yaml").exists()
