"""Verify certificate-signed model bundles: the X.509 chain to a trusted CA, then the DSSE.

model-signing's certificate method puts the signing certificate and its chain in the bundle's
``x509CertificateChain`` (leaf first) and signs the DSSE envelope with the leaf's EC key.

What model-signing 1.1 itself checks (``_signing/sign_certificate.Verifier``): an OpenSSL
chain to the CA certificates it is given — all of them trust anchors, intermediates included,
and with none given the operating system's (certifi) roots — evaluated at the leaf's own
``notBefore`` (so an expired leaf or CA is never noticed); then that the leaf has KeyUsage
digitalSignature *or* ExtendedKeyUsage codeSigning.

What this module checks, natively with ``cryptography`` (no model-signing import):

1. the trust names at least one root CA (never the operating system's store); only
   self-signed CA certificates are anchors, other configured certificates and those in the
   bundle only help to build the path;
2. the leaf has KeyUsage with digitalSignature **and** ExtendedKeyUsage with codeSigning;
3. RFC 5280 path validation (``cryptography.x509.verification``): every link's signature,
   issuers are CAs (basicConstraints CA, critical; keyCertSign when KeyUsage is present),
   ``pathLenConstraint``, name chaining, at the **signing time**;
4. the DSSE signature with the leaf's key (P-256/SHA-256, P-384/SHA-384, P-521/SHA-512, and
   model-signing's pre-1.0 encoding as it accepts it).

The signing time: a bundle of this kind carries no trusted time (no timestamp, no log
entry), so the caller passes one when it has it — the deploy gate passes the release's
signed ``created_at`` — and otherwise every certificate must be valid *now*. A model signed
with a certificate that has since expired therefore verifies in the gate (its release says
when it was signed) but not with a bare ``secmlops verify`` unless ``--signed-at`` is given.

Not rejected, to keep interoperating with the third-party fixtures: a leaf that is itself
marked as a CA (``basicConstraints CA=true``). Such a leaf without keyCertSign cannot issue
certificates that this check would accept, so it adds no trust.

Example::

    signer = verify_certificate_bundle(read_bundle(sig), roots=[root_ca], intermediates=[],
                                       signed_at=release_created_at)
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from secmlops.controls.signer_trust import SignerRefusal, verify_dsse_signature
from secmlops.errors import ControlRefused, InputError

if TYPE_CHECKING:
    from secmlops.controls.signer_trust import SignedBundle

#: Longest chain (leaf, intermediates, root) a model signature may carry.
MAX_CHAIN_LENGTH = 8


@dataclass(frozen=True)
class CertificateSigner:
    """A leaf certificate that verified: whom it names, its fingerprint, the path to the root."""

    subject: str
    fingerprint: str
    chain: tuple[str, ...]
    root: str
    checked_at: dt.datetime
    not_before: dt.datetime
    not_after: dt.datetime

    def to_json(self) -> dict[str, Any]:
        return {
            "certificate_sha256": self.fingerprint,
            "chain": list(self.chain),
            "checked_at": self.checked_at.isoformat(),
            "not_before": self.not_before.isoformat(),
            "not_after": self.not_after.isoformat(),
        }


def verify_certificate_bundle(
    bundle: SignedBundle,
    *,
    roots: Sequence[x509.Certificate],
    intermediates: Sequence[x509.Certificate] = (),
    signed_at: dt.datetime | None = None,
) -> CertificateSigner:
    """Verify the chain and the DSSE signature of a certificate-signed bundle.

    Returns the verified signer; ``ControlRefused`` (a :class:`SignerRefusal` or
    ``SignatureRefusal.SIGNATURE_INVALID``) when the chain does not lead to ``roots`` at
    ``signed_at`` (default: now), the leaf may not sign code, or the signature is wrong;
    ``InputError`` when the bundle's certificates cannot be read or no root is given.
    """
    path = bundle.path
    if not roots:
        raise InputError(
            "no trusted CA certificate was given to verify a certificate signature",
            where=str(path),
            fix="pass the root CA with --certificate-chain (never the system's store)",
        )
    chain = _bundle_chain(bundle)
    leaf = chain[0]
    when = (signed_at or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)
    subject = _subject(leaf)
    _check_usage(leaf, subject, path)
    if not leaf.not_valid_before_utc <= when <= leaf.not_valid_after_utc:
        raise _not_valid_at(leaf, subject, when, path)
    verified = _verify_path(leaf, [*chain[1:], *intermediates], roots, when, subject, path)
    key = leaf.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not verify_dsse_signature(
        key, bundle.payload, bundle.sig
    ):
        from secmlops.controls.signing import SignatureRefusal

        raise ControlRefused(
            f"model signature {path} does not verify with the key of certificate {subject!r} "
            "(the signed payload was changed, or another key signed it)",
            where=str(path),
            fix="do not deploy this model; re-sign it",
            reason=SignatureRefusal.SIGNATURE_INVALID,
        )
    return CertificateSigner(
        subject=subject,
        fingerprint=leaf.fingerprint(hashes.SHA256()).hex(),
        chain=tuple(c.subject.rfc4514_string() for c in verified),
        root=verified[-1].subject.rfc4514_string(),
        checked_at=when,
        not_before=leaf.not_valid_before_utc,
        not_after=leaf.not_valid_after_utc,
    )


def _bundle_chain(bundle: SignedBundle) -> list[x509.Certificate]:
    from secmlops.controls.signer_trust import _malformed_input

    material = bundle.material.get("x509CertificateChain")
    certs = material.get("certificates") if isinstance(material, dict) else None
    if bundle.material.get("tlogEntries"):
        raise _malformed_input(bundle.path, "a certificate signature carries log entries")
    if not isinstance(certs, list) or not certs:
        raise _malformed_input(bundle.path, "its certificate chain is empty")
    if len(certs) > MAX_CHAIN_LENGTH:
        raise _malformed_input(
            bundle.path, f"its certificate chain is longer than {MAX_CHAIN_LENGTH}"
        )
    out = []
    for i, item in enumerate(certs):
        raw = item.get("rawBytes") if isinstance(item, dict) else None
        try:
            der = base64.b64decode(raw, validate=True) if isinstance(raw, str) else b""
            out.append(x509.load_der_x509_certificate(der))
        except (binascii.Error, ValueError) as exc:
            raise _malformed_input(
                bundle.path, f"certificate {i} of its chain is not a DER certificate"
            ) from exc
    return out


def _subject(cert: x509.Certificate) -> str:
    """The subject as people name it: the DN, or the SAN when the DN is empty."""
    text = cert.subject.rfc4514_string()
    if text:
        return text
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        return ", ".join(str(n.value) for n in names)
    except x509.ExtensionNotFound:
        return f"serial {cert.serial_number:x}"


def _check_usage(leaf: x509.Certificate, subject: str, path: Any) -> None:
    problems = []
    try:
        if not leaf.extensions.get_extension_for_class(x509.KeyUsage).value.digital_signature:
            problems.append("its KeyUsage lacks digitalSignature")
    except x509.ExtensionNotFound:
        problems.append("it has no KeyUsage")
    try:
        usages = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        if ExtendedKeyUsageOID.CODE_SIGNING not in usages:
            problems.append("its ExtendedKeyUsage lacks codeSigning")
    except x509.ExtensionNotFound:
        problems.append("it has no ExtendedKeyUsage")
    if problems:
        raise ControlRefused(
            f"signing certificate {subject!r} may not sign models: {'; '.join(problems)}",
            where=str(path),
            fix="sign with a certificate that has KeyUsage digitalSignature and "
            "ExtendedKeyUsage codeSigning",
            details={"certificate": subject},
            reason=SignerRefusal.CERTIFICATE_USAGE,
        )


def _not_valid_at(
    cert: x509.Certificate, subject: str, when: dt.datetime, path: Any
) -> ControlRefused:
    start, end = cert.not_valid_before_utc.isoformat(), cert.not_valid_after_utc.isoformat()
    return ControlRefused(
        f"certificate {subject!r} was not valid at the signing time {when.isoformat()} "
        f"(valid {start} to {end})",
        where=str(path),
        fix="a model signed outside its certificate's validity is not trusted; re-sign it "
        "(or pass the time it was really signed, when you have a trusted one)",
        details={"certificate": subject, "signed_at": when.isoformat()},
        reason=SignerRefusal.CERTIFICATE_NOT_VALID_AT_SIGNING_TIME,
    )


def _verify_path(
    leaf: x509.Certificate,
    untrusted: list[x509.Certificate],
    roots: Sequence[x509.Certificate],
    when: dt.datetime,
    subject: str,
    path: Any,
) -> list[x509.Certificate]:
    """The validated path leaf -> root (RFC 5280 via cryptography), or a refusal."""
    from cryptography.x509.verification import VerificationError

    try:
        path_chain: list[x509.Certificate] = (
            _path_verifier(roots, when).verify(leaf, untrusted).chain
        )
        return path_chain
    except VerificationError as exc:
        error = " ".join(str(exc).split())[:300]
    # Tell "expired somewhere on the path" from "does not lead to a trusted CA".
    try:
        chain = _path_verifier(roots, leaf.not_valid_before_utc).verify(leaf, untrusted).chain
    except VerificationError:
        chain = []
    for cert in chain:
        if not cert.not_valid_before_utc <= when <= cert.not_valid_after_utc:
            raise _not_valid_at(cert, _subject(cert), when, path)
    raise ControlRefused(
        f"signing certificate {subject!r} does not chain to a trusted CA: {error}",
        where=str(path),
        fix="verify with the CA that issued the signer's certificate; do not deploy this model",
        details={
            "certificate": subject,
            "trusted_cas": [r.subject.rfc4514_string() for r in roots],
        },
        reason=SignerRefusal.CERTIFICATE_NOT_TRUSTED,
    )


def _path_verifier(roots: Sequence[x509.Certificate], when: dt.datetime) -> Any:
    from cryptography.x509.verification import (
        Criticality,
        ExtensionPolicy,
        PolicyBuilder,
        Store,
    )

    # CAs: the Web PKI profile (basicConstraints, keyCertSign, pathLen, AKI). The leaf's own
    # profile is checked above (KeyUsage, ExtendedKeyUsage); a code-signing leaf has no
    # server/client-auth usage or SAN that the Web PKI leaf profile would demand.
    ee_policy = ExtensionPolicy.permit_all().may_be_present(
        x509.ExtendedKeyUsage, Criticality.AGNOSTIC, None
    )
    return (
        PolicyBuilder()
        .store(Store(list(roots)))
        .time(when)
        .max_chain_depth(MAX_CHAIN_LENGTH)
        .extension_policies(ca_policy=ExtensionPolicy.webpki_defaults_ca(), ee_policy=ee_policy)
        .build_client_verifier()
    )
