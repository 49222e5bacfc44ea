"""Who is trusted to sign models, and one verifier for every way a model can be signed.

A model-signing signature is a Sigstore bundle (v0.3 JSON) whose DSSE envelope signs an
in-toto statement listing every file's digest. Three kinds of verification material exist,
and each is verified against what a :class:`SignerTrust` names:

``publicKey``
    an elliptic-curve key (``method="key"``): the signature must verify with one of
    :attr:`SignerTrust.public_keys` (the bundle's key hint picks it when present).
``x509CertificateChain`` (no transparency-log entry)
    a certificate from the organisation's PKI (``method="certificate"``): the chain must lead
    to one of :attr:`SignerTrust.ca_certificates`, the leaf may sign code, and every
    certificate was valid at the signing time (:mod:`secmlops.controls.signing_pki`).
``certificate`` + ``tlogEntries`` (or a chain with a log entry)
    Sigstore keyless (``method="sigstore"``): a Fulcio certificate for an OIDC identity with a
    Rekor entry, verified offline against a pinned trust config and
    :attr:`SignerTrust.identities` (:mod:`secmlops.controls.signing_sigstore`).

A bundle of a kind the trust does not name is refused (``METHOD_NOT_TRUSTED``): a site that
trusts only its CA never accepts "some valid key". After the signature, the statement is
checked against the directory: every file hashed once, and the directory must hold exactly the
signed files (nothing is exempt; model-signing's own ``ignore_paths`` are not honoured).

Exit codes through :mod:`secmlops.errors`: a refusal is ``ControlRefused`` (reason a
:class:`SignerRefusal` or a :class:`~secmlops.controls.signing.SignatureRefusal`), a malformed
signature, a missing path or an empty trust is ``InputError``.

Example::

    trust = SignerTrust.from_files(certificate_chain=[Path("ca.pem")])
    signer = verify_signed_model(Path("model"), signature=Path("model.sig"), trust=trust)
    print(signer.method, signer.identity, signer.model_digest)
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from secmlops.controls.signing import require_model_dir
from secmlops.controls.signing_native import (
    check_statement_against_model,
    curve_hash,
    key_hint,
    pae,
    pae_compat,
)
from secmlops.errors import ControlRefused, InputError, RefusalReason

if TYPE_CHECKING:
    pass

SigningMethod = Literal["key", "certificate", "sigstore"]
#: The methods, in the order messages list them.
SIGNING_METHODS: tuple[SigningMethod, ...] = ("key", "certificate", "sigstore")
BUNDLE_MEDIA_TYPES = (
    "application/vnd.dev.sigstore.bundle.v0.3+json",
    "application/vnd.dev.sigstore.bundle+json;version=0.3",
    "application/vnd.dev.sigstore.bundle+json;version=0.2",
    "application/vnd.dev.sigstore.bundle+json;version=0.1",
)
_MAX_SIGNATURE_BYTES = 16 << 20


class SignerRefusal(RefusalReason):
    """Why a signature by an untrusted signer was refused (``ControlRefused.reason``).

    Content problems (a changed, added or missing file) keep
    :class:`~secmlops.controls.signing.SignatureRefusal`'s reasons.
    """

    METHOD_NOT_TRUSTED = "method_not_trusted"
    """The model is signed with a method (key, certificate, Sigstore) the trust does not name."""
    KEY_NOT_TRUSTED = "key_not_trusted"
    """The bundle names a public key that is not one of the trusted keys."""
    CERTIFICATE_NOT_TRUSTED = "certificate_not_trusted"
    """The certificate chain does not lead to a trusted CA (or a link's signature is wrong)."""
    CERTIFICATE_NOT_VALID_AT_SIGNING_TIME = "certificate_not_valid_at_signing_time"
    """A certificate of the chain was expired or not yet valid when the model was signed."""
    CERTIFICATE_USAGE = "certificate_usage"
    """The signing certificate may not sign code (KeyUsage / ExtendedKeyUsage)."""
    IDENTITY_MISMATCH = "identity_mismatch"
    """The Sigstore certificate is for another identity or OIDC issuer than the trusted ones."""
    TRANSPARENCY_LOG = "transparency_log"
    """The Rekor entry is missing, does not verify, or lacks what the trust requires."""


@dataclass(frozen=True)
class SigstoreIdentity:
    """One trusted keyless signer: the certificate's identity (SAN: an e-mail, a workflow URI)
    and the OIDC issuer that vouched for it. Both are compared exactly."""

    identity: str
    issuer: str

    def __post_init__(self) -> None:
        for name in ("identity", "issuer"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip() or not value.isprintable():
                raise InputError(
                    f"Sigstore {name} {value!r} is empty or not one printable line",
                    fix="name the signer's exact identity and OIDC issuer URL",
                )


@dataclass(frozen=True)
class SignerTrust:
    """Who may sign models: public keys, CA certificates, Sigstore identities.

    ``ca_certificates`` are trust anchors: the chain must reach one of them (root CAs, or an
    intermediate pinned on purpose, which narrows trust to what it issued);
    ``intermediates`` only help build a chain and are never trusted on their own.
    :meth:`from_files` (the CLI) takes only self-signed CA certificates as anchors.
    ``trust_config`` is the Sigstore client trust config file (``None``: Sigstore's
    public-good instance, from the trusted root that the ``sigstore`` package ships; never
    fetched). ``require_rekor`` demands that a keyless
    signature's time be witnessed by Rekor (an inclusion promise with its integrated time),
    beside the inclusion proof and checkpoint that are always verified.

    An empty trust is an ``InputError``: it would trust nobody, or, worse, everybody.
    """

    public_keys: tuple[ec.EllipticCurvePublicKey, ...] = ()
    ca_certificates: tuple[x509.Certificate, ...] = ()
    intermediates: tuple[x509.Certificate, ...] = ()
    identities: tuple[SigstoreIdentity, ...] = ()
    trust_config: Path | None = None
    require_rekor: bool = False
    #: Where the trust came from, for messages (a trust root file, CLI options).
    source: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        where = self.source or None
        if self.intermediates and not self.ca_certificates:
            raise InputError(
                "intermediate certificates were given without a root CA to anchor them",
                where=where,
                fix="include the root CA certificate (self-signed) in --certificate-chain",
            )
        if not (self.public_keys or self.ca_certificates or self.identities):
            raise InputError(
                "the signer trust is empty: it names no public key, CA certificate or "
                "Sigstore identity",
                where=where,
                fix="name who may sign models: --public-key, --certificate-chain or "
                "--identity with --issuer (or the trust root's model-signer entries)",
            )
        for key in self.public_keys:
            if not isinstance(key, ec.EllipticCurvePublicKey):
                raise InputError(
                    f"trusted key {type(key).__name__} is not an elliptic-curve public key",
                    where=where,
                    fix="model-signing signs with EC keys (P-256, P-384, P-521)",
                )
        for cert in self.ca_certificates:
            if not _is_ca(cert):
                raise InputError(
                    f"trusted CA certificate {cert.subject.rfc4514_string()!r} is not a CA "
                    "(basicConstraints CA is not set)",
                    where=where,
                    fix="give the CA certificate(s) that issued the signing certificate",
                )
        if (self.trust_config is not None or self.require_rekor) and not self.identities:
            raise InputError(
                "a Sigstore trust config or --require-rekor was given without an identity",
                where=where,
                fix="name the keyless signer with --identity and --issuer",
            )

    @property
    def methods(self) -> tuple[SigningMethod, ...]:
        """The signing methods this trust accepts."""
        named = {
            "key": bool(self.public_keys),
            "certificate": bool(self.ca_certificates),
            "sigstore": bool(self.identities),
        }
        return tuple(m for m in SIGNING_METHODS if named[m])

    @classmethod
    def from_files(
        cls,
        *,
        public_keys: Iterable[Path] = (),
        certificate_chain: Iterable[Path] = (),
        identities: Iterable[tuple[str, str]] = (),
        trust_config: Path | None = None,
        require_rekor: bool = False,
        source: str = "",
    ) -> SignerTrust:
        """A trust from files: PEM public keys; PEM CA certificates (one or many per file:
        self-signed ones are the roots, the others intermediates); (identity, issuer) pairs
        with an optional Sigstore trust config file."""
        from secmlops.evidence.statements import load_public_key

        keys = tuple(load_public_key(path) for path in public_keys)
        roots: list[x509.Certificate] = []
        intermediates: list[x509.Certificate] = []
        for path in certificate_chain:
            for cert in load_certificates(path, "CA certificate file"):
                (roots if _is_self_signed(cert) else intermediates).append(cert)
        if trust_config is not None and not trust_config.is_file():
            raise InputError(
                f"Sigstore trust config {trust_config} does not exist",
                where=str(trust_config),
                fix="pass a client trust config JSON (application/vnd.dev.sigstore."
                "clienttrustconfig.v0.1+json) or leave it out for Sigstore's public instance",
            )
        return cls(
            public_keys=keys,
            ca_certificates=tuple(roots),
            intermediates=tuple(intermediates),
            identities=tuple(SigstoreIdentity(i, s) for i, s in identities),
            trust_config=trust_config,
            require_rekor=require_rekor,
            source=source,
        )


@dataclass(frozen=True)
class VerifiedSigner:
    """Who signed a model that verified, and the model's digest.

    ``identity`` is the key id (sha256 of the DER public key) for ``key``, the leaf
    certificate's subject for ``certificate``, the certificate's SAN for ``sigstore``;
    ``issuer`` is the root CA's subject or the OIDC issuer.

    ``model_digest`` is ``tree_digest`` of the verified files whenever whole files were
    hashed (always for a ``files`` manifest); for a ``shards`` manifest (``shard_size``)
    verified with ``whole_files=False`` it is the signed manifest's digest and
    ``tree_digest`` is ``None`` (see :mod:`secmlops.controls.model_hashing`).
    """

    method: SigningMethod
    identity: str
    model_digest: str
    issuer: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    #: ``tree_digest`` of the verified files, ``None`` when whole files were not hashed.
    tree_digest: str | None = None
    #: The signed manifest's shard size, ``None`` for a ``files`` manifest.
    shard_size: int | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "method": self.method,
            "identity": self.identity,
            "issuer": self.issuer,
            "model_digest": self.model_digest,
        }
        if self.shard_size is not None:
            data["shard_size"] = self.shard_size
            data["tree_digest"] = self.tree_digest
        return {**data, **({"details": self.details} if self.details else {})}


@dataclass(frozen=True)
class SignedBundle:
    """A model-signing bundle read (not yet verified): its material and DSSE envelope."""

    path: Path
    text: str
    media_type: str
    material: dict[str, Any]
    payload_type: str
    payload: bytes
    sig: bytes

    @property
    def method(self) -> SigningMethod:
        """The signing method the verification material implies."""
        if "publicKey" in self.material:
            return "key"
        if "certificate" in self.material or self.material.get("tlogEntries"):
            return "sigstore"
        return "certificate"


def verify_signed_model(
    model_dir: Path,
    *,
    signature: Path,
    trust: SignerTrust,
    signed_at: dt.datetime | None = None,
    whole_files: bool = True,
) -> VerifiedSigner:
    """Verify ``model_dir`` against the model-signing bundle ``signature`` and ``trust``.

    ``signed_at`` is the signing time for certificate validity when the caller has a trusted
    one (the gate passes the release's signed ``created_at``); without it the certificates
    must be valid now. Keyless signatures take their time from Rekor / the timestamp
    authority instead. ``whole_files``: for a ``shards`` manifest, also hash every file
    whole, so that ``model_digest`` is the ``tree_digest`` that release manifests record
    (the default; the gate relies on it); ``False`` hashes each byte once (``secmlops
    verify``) and reports the manifest's digest. Raises ``ControlRefused`` (which file, what
    mismatched) or ``InputError`` (missing path, malformed signature); returns who signed.
    """
    root = require_model_dir(model_dir)
    bundle = read_bundle(signature)
    if bundle.path.resolve().is_relative_to(root):
        raise InputError(
            f"signature {signature} is inside the model directory {model_dir}",
            where=str(signature),
            fix="keep the signature next to the model directory (e.g. <version>/model.sig)",
        )
    method = bundle.method
    if method not in trust.methods:
        raise ControlRefused(
            f"model signature {signature} is a {_METHOD_NAMES[method]} signature, but the "
            f"trusted signers are {' and '.join(_METHOD_NAMES[m] for m in trust.methods)} only",
            where=str(signature),
            fix="verify with the trust the signer belongs to; do not deploy this model",
            details={"method": method, "trusted_methods": list(trust.methods)},
            reason=SignerRefusal.METHOD_NOT_TRUSTED,
        )
    identity: str
    issuer: str | None = None
    details: dict[str, Any]
    payload_type, payload = bundle.payload_type, bundle.payload
    if method == "key":
        key = _verify_with_trusted_key(bundle, trust.public_keys)
        from secmlops.evidence.statements import key_id

        identity, details = key_id(key), {}
    elif method == "certificate":
        from secmlops.controls.signing_pki import verify_certificate_bundle

        cert = verify_certificate_bundle(
            bundle,
            roots=trust.ca_certificates,
            intermediates=trust.intermediates,
            signed_at=signed_at,
        )
        identity, issuer, details = cert.subject, cert.root, cert.to_json()
    else:
        from secmlops.controls.signing_sigstore import verify_keyless_bundle

        keyless = verify_keyless_bundle(
            bundle,
            identities=trust.identities,
            trust_config=trust.trust_config,
            require_rekor=trust.require_rekor,
        )
        identity, issuer, details = keyless.identity, keyless.issuer, keyless.to_json()
        payload_type, payload = keyless.payload_type, keyless.payload
    digests = check_statement_against_model(
        root, payload_type, payload, bundle.path, whole_files=whole_files
    )
    return VerifiedSigner(
        method=method,
        identity=identity,
        issuer=issuer,
        model_digest=digests.model_digest,
        details=details,
        tree_digest=digests.tree_digest,
        shard_size=digests.shard_size,
    )


_METHOD_NAMES: dict[SigningMethod, str] = {
    "key": "public-key",
    "certificate": "X.509 certificate",
    "sigstore": "Sigstore keyless",
}


# --- reading the bundle ---------------------------------------------------------------------


def read_bundle(signature: Path) -> SignedBundle:
    """Read a model-signing bundle; ``InputError`` naming the file when it is missing or is
    not a Sigstore bundle with one DSSE signature (nothing is verified here)."""
    if signature.is_symlink() or not signature.is_file():
        raise InputError(
            f"model signature {signature} does not exist (or is not a regular file)",
            where=str(signature),
            fix="pass the model.sig stored with this model version",
        )
    try:
        if signature.stat().st_size > _MAX_SIGNATURE_BYTES:
            raise _malformed_input(signature, "it is larger than 16 MiB")
        text = signature.read_bytes().decode("utf-8")
        raw = json.loads(text)
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise _malformed_input(signature, f"it is not JSON ({_short(exc)})") from exc
    if not isinstance(raw, dict):
        raise _malformed_input(signature, "it is not a JSON object")
    media_type = raw.get("mediaType")
    if media_type not in BUNDLE_MEDIA_TYPES:
        raise _malformed_input(signature, f"media type {str(media_type)[:80]!r} is not a bundle")
    material = raw.get("verificationMaterial")
    if not isinstance(material, dict):
        raise _malformed_input(signature, "it has no verificationMaterial")
    kinds = [k for k in ("publicKey", "x509CertificateChain", "certificate") if k in material]
    if len(kinds) != 1:
        raise _malformed_input(
            signature,
            "its verificationMaterial holds not exactly one of publicKey, "
            "x509CertificateChain, certificate",
        )
    tlog = material.get("tlogEntries", [])
    if not isinstance(tlog, list):
        raise _malformed_input(signature, "tlogEntries is not a list")
    envelope = raw.get("dsseEnvelope")
    if not isinstance(envelope, dict):
        raise _malformed_input(signature, "it holds no DSSE envelope (a model is signed as one)")
    signatures = envelope.get("signatures")
    if (
        not isinstance(signatures, list)
        or len(signatures) != 1
        or not isinstance(signatures[0], dict)
    ):
        raise _malformed_input(signature, "its DSSE envelope holds not exactly one signature")
    payload_type = envelope.get("payloadType")
    if not isinstance(payload_type, str):
        raise _malformed_input(signature, "its DSSE envelope has no payload type")
    return SignedBundle(
        path=signature,
        text=text,
        media_type=media_type,
        material=material,
        payload_type=payload_type,
        payload=b64_field(envelope.get("payload"), signature, "DSSE payload"),
        sig=b64_field(signatures[0].get("sig"), signature, "DSSE signature"),
    )


def b64_field(value: Any, signature: Path, what: str) -> bytes:
    """A base64 field of the bundle; ``InputError`` if it is missing or not base64."""
    if not isinstance(value, str) or not value:
        raise _malformed_input(signature, f"its {what} is missing")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _malformed_input(signature, f"its {what} is not base64") from exc


def load_certificates(path: Path, what: str = "certificate file") -> list[x509.Certificate]:
    """Every PEM certificate in ``path``; ``InputError`` naming the file (as ``what``) if it
    cannot be read or holds none. The one loader for signing, verifying and the trust root."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(
            f"{what} {path} cannot be read ({exc.strerror or exc})",
            where=str(path),
            fix=f"pass the {what} as a PEM file",
        ) from exc
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise InputError(
            f"{what} {path} is not a PEM X.509 certificate ({_short(exc)})",
            where=str(path),
            fix=f"pass the {what} as a PEM file (-----BEGIN CERTIFICATE-----)",
        ) from exc


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _is_self_signed(cert: x509.Certificate) -> bool:
    if cert.subject != cert.issuer:
        return False
    try:
        cert.verify_directly_issued_by(cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


# --- key signatures -------------------------------------------------------------------------


def _verify_with_trusted_key(
    bundle: SignedBundle, keys: Sequence[ec.EllipticCurvePublicKey]
) -> ec.EllipticCurvePublicKey:
    """The trusted key whose signature the envelope carries (the hint picks it when given)."""
    key_material = bundle.material.get("publicKey")
    hint = key_material.get("hint") if isinstance(key_material, dict) else None
    if bundle.material.get("tlogEntries"):
        raise _malformed_input(bundle.path, "a key signature carries transparency-log entries")
    candidates = list(keys)
    if isinstance(hint, str) and hint:
        # model-signing's hint: sha256 of the key's PEM SubjectPublicKeyInfo.
        candidates = [k for k in keys if key_hint(k) == hint]
        if not candidates:
            raise ControlRefused(
                f"model signature {bundle.path} was made by a key (hint {hint[:16]}…) that is "
                "not one of the trusted keys",
                where=str(bundle.path),
                fix="verify with the model signer's public key; do not deploy this model",
                details={"hint": hint},
                reason=SignerRefusal.KEY_NOT_TRUSTED,
            )
    for key in candidates:
        if verify_dsse_signature(key, bundle.payload, bundle.sig):
            return key
    from secmlops.controls.signing import SignatureRefusal

    raise ControlRefused(
        f"model signature {bundle.path} does not verify with any trusted key "
        "(another key signed it, or the signed payload was changed)",
        where=str(bundle.path),
        fix="verify with the model signer's public key; do not deploy this model",
        reason=SignatureRefusal.SIGNATURE_INVALID,
    )


def verify_dsse_signature(key: ec.EllipticCurvePublicKey, payload: bytes, sig: bytes) -> bool:
    """Whether ``sig`` is ``key``'s ECDSA signature over the DSSE PAE of an in-toto payload,
    as model-signing makes it (and its pre-1.0 encoding, which it still accepts)."""
    algorithm = curve_hash(key)
    if algorithm is None:
        return False
    attempts = (
        (pae(payload), algorithm),
        (pae_compat(payload), algorithm),
        # model-signing v0.2 hashed with SHA-256 whatever the curve.
        (pae_compat(payload), hashes.SHA256()),
    )
    for encoded, digest in attempts:
        try:
            key.verify(sig, encoded, ec.ECDSA(digest))
            return True
        except InvalidSignature:
            continue
    return False


# --- the statement against the directory ------------------------------------------------------


def _malformed_input(signature: Path, why: str) -> InputError:
    return InputError(
        f"model signature {signature} is malformed: {why}",
        where=str(signature),
        fix="pass a model-signing signature bundle (the model.sig written when it was signed)",
    )


def _short(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:160]
