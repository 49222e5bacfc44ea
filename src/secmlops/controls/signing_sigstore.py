"""Sigstore keyless model signatures: offline verification against a pinned trust root, and
keyless signing from an ambient OIDC token.

**Verify** (never touches the network). A keyless bundle holds a short-lived Fulcio
certificate for an OIDC identity and a Rekor entry. ``sigstore``'s verifier checks, with the
trust config's keys only: the certificate chains to the Fulcio CA at the time Rekor (or a
timestamp authority) witnessed; its embedded SCT; KeyUsage digitalSignature and
ExtendedKeyUsage codeSigning; the Rekor entry's Merkle inclusion proof against its signed
checkpoint and, when present, its inclusion promise (SET); that the entry records this very
envelope; the DSSE signature. SecMLOps then requires the certificate's identity (SAN) and
OIDC issuer to be one of the trusted pairs, and with ``require_rekor`` that the signing time
come from Rekor (an inclusion promise with its integrated time), not a timestamp alone.

The trust config is a client trust config (``application/vnd.dev.sigstore.clienttrustconfig
.v0.1+json``: ``trustedRoot`` + ``signingConfig``). Default: Sigstore's public-good instance,
built from the ``trusted_root.json`` and ``signing_config`` that the installed ``sigstore``
package ships (:func:`production_trust_config`) — pinned by the package version, never
refreshed over TUF. A private Sigstore instance (or an air-gapped copy of a newer public
root) is a trust config file of your own (``--trust-config``).

**Sign** keyless (needs network access to Fulcio and Rekor, or a private instance's): an
identity token is taken from ``SIGSTORE_IDENTITY_TOKEN``, else detected in the CI
environment by ``sigstore`` (GitHub Actions with ``id-token: write``, GitLab's
``SIGSTORE_ID_TOKEN``, Buildkite, CircleCI, Google Cloud); no browser flow is ever started.
No token is an ``InputError`` saying how to provide one. The statement is made natively and
the model hashed once, as for key signing. The bundle is assembled from Fulcio's certificate
and Rekor's response (:func:`assemble_keyless_bundle`).

Example::

    info = verify_keyless_bundle(read_bundle(sig), identities=[SigstoreIdentity(
        "ci@example.com", "https://token.actions.githubusercontent.com")],
        trust_config=None, require_rekor=True)
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from secmlops.controls.signer_trust import SignerRefusal, SigstoreIdentity
from secmlops.controls.signing import ModelSignature, hash_for_signing, write_atomically
from secmlops.errors import ControlRefused, InputError, ToolError

if TYPE_CHECKING:
    from cryptography import x509

    from secmlops.controls.signer_trust import SignedBundle

CLIENT_TRUST_CONFIG_MEDIA_TYPE = "application/vnd.dev.sigstore.clienttrustconfig.v0.1+json"
#: The variable sigstore's own CLI reads an explicit identity token from.
TOKEN_ENV = "SIGSTORE_IDENTITY_TOKEN"  # noqa: S105 - a variable's name, not a secret
_PRODUCTION_STORE = "https%3A%2F%2Ftuf-repo-cdn.sigstore.dev"
_OIDC_ISSUER_OIDS = ("1.3.6.1.4.1.57264.1.8", "1.3.6.1.4.1.57264.1.1")


@dataclass(frozen=True)
class KeylessSigner:
    """A keyless signature that verified: the identity, its issuer, what Rekor recorded."""

    identity: str
    issuer: str
    certificate_sha256: str
    log_index: int | None
    integrated_time: int | None
    trust_config: str
    payload_type: str
    payload: bytes

    def to_json(self) -> dict[str, Any]:
        return {
            "certificate_sha256": self.certificate_sha256,
            "rekor_log_index": self.log_index,
            "rekor_integrated_time": self.integrated_time,
            "trust_config": self.trust_config,
        }


# --- the trust config -----------------------------------------------------------------------


def production_trust_config() -> dict[str, Any]:
    """Sigstore's public-good trust config, from the files the ``sigstore`` package ships
    (its trusted root and signing config, as of that package version; no TUF refresh)."""
    import sigstore

    store = Path(sigstore.__file__).parent / "_store" / _PRODUCTION_STORE
    try:
        trusted_root = json.loads((store / "trusted_root.json").read_text("utf-8"))
        signing = sorted(store.glob("signing_config*.json"))
        signing_config = json.loads(signing[-1].read_text("utf-8"))
    except (OSError, ValueError, IndexError) as exc:
        raise ToolError(
            f"the sigstore package's pinned trusted root is missing or unreadable in {store}",
            where=str(store),
            fix="reinstall the sigstore package, or pass your own --trust-config",
        ) from exc
    return {
        "mediaType": CLIENT_TRUST_CONFIG_MEDIA_TYPE,
        "trustedRoot": trusted_root,
        "signingConfig": signing_config,
    }


def write_production_trust_config(path: Path) -> Path:
    """Write :func:`production_trust_config` to ``path`` (to pin it, or to copy it to an
    air-gapped site)."""
    path.write_text(json.dumps(production_trust_config(), indent=2) + "\n", "utf-8")
    return path


@cache
def _production_config_text() -> str:
    return json.dumps(production_trust_config())


def load_trust_config(path: Path | None) -> Any:
    """A ``sigstore.models.ClientTrustConfig`` from ``path`` (``None``: the pinned public
    instance); ``InputError`` naming the file when it is not a client trust config."""
    from sigstore.models import ClientTrustConfig

    if path is None:
        return ClientTrustConfig.from_json(_production_config_text())
    try:
        text = path.read_text("utf-8")
        raw = json.loads(text)
        if not isinstance(raw, dict) or raw.get("mediaType") != CLIENT_TRUST_CONFIG_MEDIA_TYPE:
            raise ValueError(f"mediaType is not {CLIENT_TRUST_CONFIG_MEDIA_TYPE}")
        config = ClientTrustConfig.from_json(text)
        config.trusted_root  # noqa: B018 - parse (and validate) it now, not mid-verification
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(
            f"Sigstore trust config {path} cannot be read",
            where=str(path),
            fix="pass a readable client trust config JSON",
        ) from exc
    except Exception as exc:  # pydantic/protobuf/sigstore errors of many types
        raise InputError(
            f"Sigstore trust config {path} is not a client trust config: "
            f"{' '.join(str(exc).split())[:200]}",
            where=str(path),
            fix=f"pass a {CLIENT_TRUST_CONFIG_MEDIA_TYPE} file with trustedRoot and "
            "signingConfig (docs/signing.md shows how to make one)",
        ) from exc
    return config


# --- verification ---------------------------------------------------------------------------


def verify_keyless_bundle(
    bundle: SignedBundle,
    *,
    identities: Sequence[SigstoreIdentity],
    trust_config: Path | None,
    require_rekor: bool = False,
) -> KeylessSigner:
    """Verify a keyless bundle offline; return who signed and the verified DSSE payload.

    ``ControlRefused``: identity/issuer not trusted (``IDENTITY_MISMATCH``), Rekor entry
    missing or invalid (``TRANSPARENCY_LOG``), chain or time not trusted
    (``CERTIFICATE_NOT_TRUSTED``), a wrong signature (``SIGNATURE_INVALID``).
    ``InputError``: the bundle or the trust config is malformed, no identity is given.
    """
    from sigstore.errors import Error as SigstoreError
    from sigstore.models import Bundle, InvalidBundle
    from sigstore.verify import Verifier
    from sigstore.verify.policy import AnyOf, Identity

    from secmlops.controls.signer_trust import _malformed_input

    path = bundle.path
    if not identities:
        raise InputError(
            "no Sigstore identity was given to verify a keyless signature",
            where=str(path),
            fix="name the signer with --identity and --issuer",
        )
    config = load_trust_config(trust_config)
    try:
        parsed = Bundle.from_json(bundle.text)
    except InvalidBundle as exc:
        text = " ".join(str(exc).split())[:200]
        if "log entry" in text or "inclusion" in text or "checkpoint" in text:
            raise _rekor_refusal(
                path, f"its Rekor entry is missing or incomplete ({text})"
            ) from exc
        raise _malformed_input(path, f"it is not a valid Sigstore bundle ({text})") from exc
    cert = parsed.signing_certificate
    identity, issuer = _certificate_identity(cert)
    entry = parsed.log_entry._inner
    if require_rekor and not (entry.inclusion_promise and entry.integrated_time):
        raise _rekor_refusal(
            path,
            "the policy requires a Rekor-witnessed signing time, but the entry has no "
            "inclusion promise with an integrated time",
        )
    policy = AnyOf([Identity(identity=i.identity, issuer=i.issuer) for i in identities])
    try:
        verifier = Verifier(trusted_root=config.trusted_root)
        payload_type, payload = verifier.verify_dsse(parsed, policy)
    except SigstoreError as exc:
        raise _classify(exc, policy, cert, identity, issuer, identities, path) from exc
    from cryptography.hazmat.primitives import hashes

    return KeylessSigner(
        identity=identity,
        issuer=issuer,
        certificate_sha256=cert.fingerprint(hashes.SHA256()).hex(),
        log_index=int(entry.log_index) if entry.log_index is not None else None,
        integrated_time=int(entry.integrated_time) if entry.integrated_time else None,
        trust_config=str(trust_config) if trust_config else "sigstore-production (pinned)",
        payload_type=payload_type,
        payload=payload,
    )


def _certificate_identity(cert: x509.Certificate) -> tuple[str, str]:
    """The certificate's identity (its SAN values) and OIDC issuer, for messages."""
    from cryptography import x509
    from cryptography.x509 import ObjectIdentifier

    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [str(n.value) for n in sans if not isinstance(n, x509.OtherName)]
        names += [n.value.decode(errors="replace") for n in sans if isinstance(n, x509.OtherName)]
    except x509.ExtensionNotFound:
        names = []
    issuer = ""
    for dotted in _OIDC_ISSUER_OIDS:
        try:
            ext = cert.extensions.get_extension_for_oid(ObjectIdentifier(dotted)).value
        except x509.ExtensionNotFound:
            continue
        raw = getattr(ext, "value", b"")
        # .1.8 is a DER UTF8String, .1.1 the raw bytes.
        if dotted.endswith(".8") and len(raw) > 2 and raw[0] == 0x0C:
            raw = raw[2:] if raw[1] < 0x80 else raw[2 + (raw[1] & 0x7F) :]
        issuer = raw.decode(errors="replace")
        break
    return ", ".join(names) or "(no identity)", issuer or "(no issuer)"


def _classify(
    exc: Exception,
    policy: Any,
    cert: x509.Certificate,
    identity: str,
    issuer: str,
    identities: Sequence[SigstoreIdentity],
    path: Path,
) -> ControlRefused:
    from sigstore.errors import Error as SigstoreError

    from secmlops.controls.signing import SignatureRefusal

    text = " ".join(str(exc).split())[:300]
    try:
        policy.verify(cert)
    except SigstoreError:
        trusted = ", ".join(f"{i.identity} ({i.issuer})" for i in identities)
        return ControlRefused(
            f"keyless signature {path} was made by {identity} (OIDC issuer {issuer}), "
            f"not by a trusted identity: {trusted}",
            where=str(path),
            fix="verify with the identity and issuer of the model's signer; do not deploy it",
            details={"identity": identity, "issuer": issuer},
            reason=SignerRefusal.IDENTITY_MISMATCH,
        )
    if "log entry" in text or "inclusion" in text or "checkpoint" in text or "SET" in text:
        return _rekor_refusal(path, text)
    if "DSSE" in text or ("signature" in text.lower() and "certificate" not in text.lower()):
        return ControlRefused(
            f"keyless signature {path} does not verify: {text}",
            where=str(path),
            fix="the signed payload or its signature was changed; do not deploy this model",
            reason=SignatureRefusal.SIGNATURE_INVALID,
        )
    return ControlRefused(
        f"keyless signature {path} is not trusted by the Sigstore trust config: {text}",
        where=str(path),
        fix="check the trust config names the Sigstore instance that issued the "
        "certificate; do not deploy this model",
        details={"identity": identity, "issuer": issuer},
        reason=SignerRefusal.CERTIFICATE_NOT_TRUSTED,
    )


def _rekor_refusal(path: Path, why: str) -> ControlRefused:
    return ControlRefused(
        f"keyless signature {path} has no acceptable Rekor entry: {why}",
        where=str(path),
        fix="a keyless model signature must carry its transparency-log entry; re-sign it",
        reason=SignerRefusal.TRANSPARENCY_LOG,
    )


# --- keyless signing ------------------------------------------------------------------------


def detect_identity_token(explicit: str | None = None) -> str | None:
    """An OIDC identity token for keyless signing, or ``None``: ``explicit``, else
    ``SIGSTORE_IDENTITY_TOKEN``, else an ambient CI credential (``sigstore`` detects GitHub
    Actions, GitLab, Buildkite, CircleCI, Google Cloud). Never starts a browser flow.

    A CI environment that offers a credential but fails to hand it out is a ``ToolError``.
    """
    for token in (explicit, os.environ.get(TOKEN_ENV)):
        if token and token.strip():
            return token.strip()
    from sigstore.oidc import IdentityError, detect_credential

    try:
        return detect_credential()
    except IdentityError as exc:
        raise ToolError(
            f"the CI environment's OIDC credential could not be obtained: {exc}",
            fix="grant the job an identity token (GitHub Actions: permissions: id-token: write)",
        ) from exc


def require_identity_token(explicit: str | None = None) -> Any:
    """:func:`detect_identity_token`, parsed as a ``sigstore.oidc.IdentityToken``;
    ``InputError`` saying how to provide one when there is none or it is malformed/expired."""
    from sigstore.oidc import IdentityError, IdentityToken

    raw = detect_identity_token(explicit)
    if raw is None:
        raise InputError(
            "Sigstore keyless signing needs an OIDC identity token, and none was found",
            fix=f"set {TOKEN_ENV}, or run in CI with an ambient OIDC credential (GitHub "
            "Actions: `permissions: id-token: write`; GitLab: an `id_tokens:` entry "
            "SIGSTORE_ID_TOKEN with aud sigstore); or sign with --method key|certificate",
        )
    try:
        return IdentityToken(raw)
    except IdentityError as exc:
        raise InputError(
            f"the OIDC identity token is not usable for Sigstore: {exc}",
            fix=f"provide a current token for audience 'sigstore' in {TOKEN_ENV}",
        ) from exc


def sign_model_keyless(
    model_dir: Path,
    *,
    signature: Path,
    trust_config: Path | None = None,
    identity_token: str | None = None,
    shard_size: int | None = None,
) -> ModelSignature:
    """Sign every file of ``model_dir`` keyless: a Fulcio certificate for the ambient OIDC
    identity, the envelope recorded in Rekor. Needs network access to the trust config's
    Fulcio and Rekor (the public-good instance by default).

    The statement is the one key and certificate signing make (model-signing's v1.0
    manifest, ``files`` or ``shards`` of ``shard_size``), from one hashing pass
    (:func:`~secmlops.controls.signing.hash_for_signing`); a model that changes meanwhile is
    refused. ``InputError`` without a token (checked before any hashing or network), for a
    missing model or a signature inside it; ``ToolError`` when Sigstore cannot be reached.
    Returns the signature, its identity (certificate SAN) and OIDC issuer.
    """
    from secmlops._internal.digests import sha256_bytes

    token = require_identity_token(identity_token)  # before any hashing or network
    config = load_trust_config(trust_config)
    sig_path, digests, payload = hash_for_signing(model_dir, signature, shard_size=shard_size)
    from cryptography.hazmat.primitives import hashes
    from sigstore import dsse
    from sigstore.sign import SigningContext

    try:
        with SigningContext.from_trust_config(config).signer(token) as signer:
            bundle = signer.sign_dsse(dsse.Statement(payload))
    except Exception as exc:  # network, Fulcio or Rekor refusals of many types
        raise ToolError(
            f"Sigstore keyless signing failed: {' '.join(str(exc).split())[:200]}",
            fix="keyless signing needs network access to Fulcio and Rekor (or a private "
            "instance in --trust-config); sign with --method key|certificate offline",
        ) from exc
    data = bundle.to_json().encode("utf-8")
    write_atomically(sig_path, data)
    cert = bundle.signing_certificate
    identity, issuer = _certificate_identity(cert)
    return ModelSignature(
        signature=sig_path,
        signature_sha256=sha256_bytes(data),
        key_id="",  # a one-time key that Fulcio certified; the identity is in the certificate
        model_digest=digests.model_digest,
        method="sigstore",
        certificate_sha256=cert.fingerprint(hashes.SHA256()).hex(),
        certificate_subject=cert.subject.rfc4514_string(),
        identity=identity,
        issuer=issuer,
        shard_size=shard_size,
    )


def assemble_keyless_bundle(
    *,
    envelope: dict[str, Any],
    certificate: x509.Certificate,
    rekor_response: dict[str, Any],
) -> str:
    """A Sigstore bundle (v0.3 JSON) from a signed DSSE envelope, the Fulcio certificate and
    Rekor's response to the entry upload (``{uuid: {body, integratedTime, logID, logIndex,
    verification: {inclusionProof, signedEntryTimestamp}}}``), as ``sigstore`` assembles it
    after signing. ``InputError`` when a part is malformed. Nothing is verified here."""
    from sigstore.dsse import Envelope
    from sigstore.models import Bundle, TransparencyLogEntry

    try:
        entry = TransparencyLogEntry._from_v1_response(rekor_response)
        dsse_envelope = Envelope._from_json(json.dumps(envelope))
        bundle = Bundle._from_parts(certificate, dsse_envelope, entry)
    except Exception as exc:  # pydantic / KeyError / ValueError from the recorded parts
        raise InputError(
            f"cannot assemble a Sigstore bundle from the Fulcio/Rekor responses: "
            f"{' '.join(str(exc).split())[:200]}",
            fix="pass Rekor's entry response as returned by POST /api/v1/log/entries",
        ) from exc
    return str(bundle.to_json())
