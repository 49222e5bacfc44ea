"""Sign and verify model directories as OpenSSF model-signing does, offline.

The signature is a model-signing 1.1.1 Sigstore bundle (DSSE over an in-toto statement
listing every file's sha256, or every shard's) written *outside* the model directory, so it
never signs or hides itself. Signing is native (:mod:`secmlops.controls.signing_native`,
no ``import model_signing``, which costs over a second) and hashes every byte once
(:mod:`secmlops.controls.model_hashing`); the model digest (``tree_digest``) comes from the
same pass, and a model that changes while it is hashed is refused by comparing every file's
``stat`` before and after, not by hashing again. Two signing methods, as model-signing's
``sign key`` and ``sign certificate``:

- :class:`KeySigner`: an EC P-256/P-384/P-521 key from a PEM file (encrypted or not), or
  any :class:`~secmlops.evidence.signers.Signer` (a P-256 AWS KMS key: ``KmsSigner``);
- :class:`CertificateSigner`: the same, plus the signing certificate and its chain
  (PEM files) from the organisation's PKI.

Ed25519 and RSA keys are refused (``InputError``): model-signing 1.1.1 signs and verifies
with elliptic-curve keys only.

model-signing raises ``ValueError`` for everything; this module tells the cases apart:
a changed, added or removed file, a symlink, or the wrong key is ``ControlRefused``; a
missing model directory, signature or key is ``InputError``.

Verification is stricter than model-signing alone: model-signing skips paths listed as
``ignore_paths`` in the signature (``.git*`` by default), so after it verifies we also
require that the directory holds exactly the files the signature lists.

Verification of key-signed bundles (what ``sign_model`` writes) runs natively in
:mod:`secmlops.controls.signing_native`, without importing model-signing (over a second of
imports); any bundle that module does not fully understand is verified by model-signing.

Example::

    sig = sign_model(Path("model"), private_key=Path("keys/model-signer.pem"),
                     signature=Path("out/model.sig"))
    signer = CertificateSigner.from_files(Path("leaf.key"), certificate=Path("leaf.pem"),
                                          chain=[Path("intermediate.pem")])
    sig = sign_model_with(Path("model"), signer=signer, signature=Path("out/model.sig"))
    verify_model_signature(Path("model"), signature=sig.signature,
                           public_key=Path("keys/model-signer.pub"))
"""

from __future__ import annotations

import base64
import datetime
import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from secmlops._internal.digests import sha256_bytes
from secmlops.controls import model_hashing
from secmlops.errors import ControlRefused, InputError, RefusalReason, SecMLOpsError, ToolError
from secmlops.evidence.signers import FileSigner, Signer
from secmlops.evidence.statements import PublicKey, key_id, load_public_key


class SignatureRefusal(RefusalReason):
    """Why model signing or verification refused a model (``ControlRefused.reason``)."""

    MODEL_CHANGED_WHILE_SIGNING = "model_changed_while_signing"
    """A model file was written, replaced, added or removed while it was being hashed."""
    SIGNATURE_INVALID = "signature_invalid"
    """The DSSE signature does not verify with the given key (tampered bundle or other key)."""
    WRONG_KEY = "wrong_key"
    """The signature names another public key than the one given."""
    CONTENT_MISMATCH = "content_mismatch"
    """A signed file's digest differs: the model was tampered with."""
    MALFORMED_SIGNATURE = "malformed_signature"
    """The signature bundle cannot be read, is inconsistent, or lists no files."""
    FILE_SET_MISMATCH = "file_set_mismatch"
    """The directory holds files the signature does not list, or lacks files it lists."""
    SYMLINK_IN_MODEL = "symlink_in_model"
    """The model directory holds a symlink (a signed model holds regular files only)."""


@dataclass(frozen=True)
class ModelSignature:
    """A model-signing signature: where it is, its digest, who signed, what was signed.

    ``model_digest`` is the model digest from the signing pass: the signed manifest's digest
    (sha256 over the canonical JSON of ``{resource: sha256}``), which for a ``files``
    manifest is exactly ``tree_digest``; for a ``shards`` manifest (``shard_size``) it is
    the digest of the shard manifest (see :mod:`secmlops.controls.model_hashing`).
    ``method`` is ``key``, ``certificate`` or ``sigstore``; for a certificate (and a
    Sigstore keyless signature's Fulcio certificate) the leaf's sha256 fingerprint (hex, of
    its DER) and subject (RFC 4514) say who signed; keyless adds the certificate's
    ``identity`` (SAN) and OIDC ``issuer``, and ``key_id`` is empty (a one-time key).
    """

    signature: Path
    signature_sha256: str
    key_id: str
    model_digest: str
    method: Literal["key", "certificate", "sigstore"] = "key"
    certificate_sha256: str | None = None
    certificate_subject: str | None = None
    identity: str | None = None
    issuer: str | None = None
    shard_size: int | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "signature": str(self.signature),
            "signature_sha256": self.signature_sha256,
            "key_id": self.key_id,
            "model_digest": self.model_digest,
            "method": self.method,
        }
        if self.method in ("certificate", "sigstore"):
            data["certificate_sha256"] = self.certificate_sha256
            data["certificate_subject"] = self.certificate_subject
        if self.method == "sigstore":
            data["identity"] = self.identity
            data["issuer"] = self.issuer
        if self.shard_size is not None:
            data["shard_size"] = self.shard_size
        return data


#: The curves model-signing 1.1.1 signs with, and the hash it pairs with each.
SUPPORTED_CURVES: dict[str, type[hashes.HashAlgorithm]] = {
    "secp256r1": hashes.SHA256,
    "secp384r1": hashes.SHA384,
    "secp521r1": hashes.SHA512,
}
_SUPPORTED = "an EC P-256, P-384 or P-521 key (model-signing 1.1.1 signs with no other)"


@dataclass(frozen=True)
class KeySigner:
    """Sign with a key alone (model-signing's ``sign key``): the bundle carries the key's
    hint, and verifiers need the public key."""

    signer: Signer

    @classmethod
    def from_pem(cls, private_key: Path, *, subject: str = "model-signer") -> KeySigner:
        """A PEM private key file; an encrypted one takes its passphrase from
        ``SECMLOPS_<SUBJECT>_KEY_PASSPHRASE[_FILE]``, ``SECMLOPS_KEY_PASSPHRASE[_FILE]`` or a
        prompt. ``InputError`` for a missing file, a wrong passphrase, or a key that is not
        P-256/P-384/P-521 (Ed25519 and RSA included)."""
        return cls(_load_file_signer(private_key, subject))

    @property
    def public_key(self) -> PublicKey:
        return self.signer.public_key

    def material(self) -> dict[str, Any]:
        from secmlops.controls.signing_native import key_material

        return key_material(self.signer.public_key)


@dataclass(frozen=True)
class CertificateSigner:
    """Sign with a key and its X.509 certificate (model-signing's ``sign certificate``):
    the bundle carries the certificate and its chain (leaf first); verifiers need the CA."""

    signer: Signer
    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...] = ()

    def __post_init__(self) -> None:
        _check_certificate(self.certificate, self.signer)

    @classmethod
    def from_files(
        cls,
        private_key: Path | Signer,
        *,
        certificate: Path,
        chain: Sequence[Path] = (),
        subject: str = "model-signer",
    ) -> CertificateSigner:
        """The leaf's private key (a PEM file as :meth:`KeySigner.from_pem`, or a
        :class:`Signer`), its certificate and the chain to the CA (PEM files, several
        certificates per file allowed). ``InputError`` for an unreadable or malformed file,
        a certificate that does not match the key, cannot sign code (neither KeyUsage
        digitalSignature nor ExtendedKeyUsage codeSigning), or is not valid now."""
        from secmlops.controls.signer_trust import load_certificates  # imports this module

        signer = (
            private_key
            if isinstance(private_key, Signer)
            else _load_file_signer(private_key, subject)
        )
        leaf = load_certificates(certificate, "signing certificate")
        if len(leaf) != 1:
            raise InputError(
                f"signing certificate {certificate} holds {len(leaf)} certificates, not one",
                where=str(certificate),
                fix="pass the leaf certificate alone; put the CA certificates in the chain",
            )
        others = tuple(c for path in chain for c in load_certificates(path, "certificate chain"))
        return cls(signer, leaf[0], others)

    @property
    def public_key(self) -> PublicKey:
        return self.signer.public_key

    def material(self) -> dict[str, Any]:
        from secmlops.controls.signing_native import certificate_material

        return certificate_material((self.certificate, *self.chain))


#: Who signs a model: a key alone, or a key with its certificate chain.
ModelSigner = KeySigner | CertificateSigner


def _load_file_signer(path: Path, subject: str) -> FileSigner:
    try:
        signer = FileSigner.load(path, subject=subject)
    except InputError as exc:
        if "elliptic-curve" not in exc.message:
            raise
        raise InputError(
            f"{path} is not an elliptic-curve private key; a model is signed with {_SUPPORTED}",
            where=str(path),
            fix="generate an EC key (e.g. `openssl ecparam -name prime256v1 -genkey`); "
            "Ed25519 and RSA model signatures cannot be verified by model-signing",
        ) from exc
    _check_curve(signer.public_key, signer.description)
    return signer


def _check_curve(public_key: PublicKey, where: str) -> None:
    if public_key.curve.name not in SUPPORTED_CURVES:
        raise InputError(
            f"{where} is an EC {public_key.curve.name} key; a model is signed with {_SUPPORTED}",
            where=where,
            fix="use a P-256, P-384 or P-521 key",
        )


def _check_certificate(certificate: x509.Certificate, signer: Signer) -> None:
    """The leaf must match the key, be allowed to sign, and be valid now: a signature that
    no verifier accepts is refused here rather than at the deploy gate."""
    subject = certificate.subject.rfc4514_string()
    if certificate.public_key() != signer.public_key:
        raise InputError(
            f"the signing certificate ({subject}) is not for key {signer.description}",
            where=signer.description,
            fix="pass the private key the certificate was issued for",
        )
    extensions = certificate.extensions
    try:
        can_sign = extensions.get_extension_for_class(x509.KeyUsage).value.digital_signature
    except x509.ExtensionNotFound:
        can_sign = False
    try:
        eku = extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        can_sign = can_sign or ExtendedKeyUsageOID.CODE_SIGNING in eku
    except x509.ExtensionNotFound:
        pass
    if not can_sign:
        raise InputError(
            f"the signing certificate ({subject}) allows neither digitalSignature (KeyUsage) "
            "nor codeSigning (ExtendedKeyUsage)",
            where=subject,
            fix="ask the PKI for a code-signing certificate",
        )
    now = datetime.datetime.now(datetime.UTC)
    if not certificate.not_valid_before_utc <= now <= certificate.not_valid_after_utc:
        raise InputError(
            f"the signing certificate ({subject}) is not valid now (valid "
            f"{certificate.not_valid_before_utc:%Y-%m-%d %H:%M} to "
            f"{certificate.not_valid_after_utc:%Y-%m-%d %H:%M} UTC)",
            where=subject,
            fix="renew the signing certificate",
        )


def require_model_dir(model_dir: Path) -> Path:
    if model_dir.is_symlink() or not model_dir.is_dir():
        raise InputError(
            f"model directory {model_dir} does not exist (or is a symlink)",
            where=str(model_dir),
            fix="pass the directory holding the model files",
        )
    return model_dir.resolve()


def _require_file(path: Path, what: str, fix: str) -> None:
    if not path.is_file():
        raise InputError(f"{what} {path} does not exist", where=str(path), fix=fix)


def _outside(model_root: Path, signature: Path) -> Path:
    sig = signature.resolve()
    if sig.is_relative_to(model_root):
        raise InputError(
            f"signature {signature} is inside the model directory {model_root}",
            where=str(signature),
            fix="write the signature next to the model directory (e.g. <version>/model.sig)",
        )
    return sig


def sign_model(model_dir: Path, *, private_key: Path, signature: Path) -> ModelSignature:
    """Sign every file in ``model_dir`` with an EC private key (PEM; an encrypted one takes
    its passphrase from ``SECMLOPS_MODEL_SIGNER_KEY_PASSPHRASE[_FILE]``,
    ``SECMLOPS_KEY_PASSPHRASE[_FILE]`` or a prompt, as every role key does).

    :func:`sign_model_with` a :class:`KeySigner`: see there.
    """
    return sign_model_with(model_dir, signer=KeySigner.from_pem(private_key), signature=signature)


def sign_model_with(
    model_dir: Path,
    *,
    signer: ModelSigner,
    signature: Path,
    shard_size: int | None = None,
) -> ModelSignature:
    """Sign every file in ``model_dir`` with ``signer``, as model-signing 1.1.1 would.

    The manifest is ``files`` (one sha256 per file), or ``shards`` of ``shard_size`` bytes
    (model-signing's sharded manifest: every core hashes a large file; whole-file digests
    are not computed, so ``model_digest`` is the shard manifest's digest, not
    ``tree_digest``). Each byte is hashed once either way. The signature must live outside
    ``model_dir`` and is written atomically.

    ``InputError``: no such directory, a signature inside it, a symlink or special file in
    the model, an empty file or a name with ``:`` under ``shards``, a signer that cannot
    sign (see the signer classes). ``ControlRefused`` (``MODEL_CHANGED_WHILE_SIGNING``):
    a file was written, replaced, added or removed while it was hashed; nothing is written.
    """
    from secmlops.controls.signing_native import bundle_text, pae

    sig_path, digests, payload = hash_for_signing(model_dir, signature, shard_size=shard_size)
    sig = _sign_pae(signer.signer, pae(payload))
    data = bundle_text(payload, sig, signer.material()).encode("utf-8")
    write_atomically(sig_path, data)
    certificate = signer.certificate if isinstance(signer, CertificateSigner) else None
    return ModelSignature(
        signature=sig_path,
        signature_sha256=sha256_bytes(data),
        key_id=key_id(signer.public_key),
        model_digest=digests.model_digest,
        method="certificate" if certificate is not None else "key",
        certificate_sha256=(
            certificate.fingerprint(hashes.SHA256()).hex() if certificate is not None else None
        ),
        certificate_subject=(
            certificate.subject.rfc4514_string() if certificate is not None else None
        ),
        shard_size=shard_size,
    )


def hash_for_signing(
    model_dir: Path, signature: Path, *, shard_size: int | None = None
) -> tuple[Path, model_hashing.ModelDigests, bytes]:
    """What every signing method does before it signs: check the paths, hash the model once
    (``files``, or only the ``shard_size`` shards), refuse a model that changed meanwhile.

    Returns the resolved signature path, the digests and the DSSE payload (model-signing's
    v1.0 statement) to sign. Errors as :func:`sign_model_with`; nothing is written.
    """
    from secmlops.controls.signing_native import payload_bytes, statement_for

    root = require_model_dir(model_dir)
    sig_path = _outside(root, signature)
    if shard_size is not None and (
        not isinstance(shard_size, int) or isinstance(shard_size, bool) or shard_size <= 0
    ):
        raise InputError(
            f"shard size {shard_size!r} is not a positive number of bytes",
            where="shard_size",
            fix="pass a shard size in bytes (model-signing's default is 1000000000), or none",
        )
    tree = _signable_tree(root, sharded=shard_size is not None)
    try:
        digests = model_hashing.hash_model(
            root, shard_size=shard_size, tree=tree, whole_files=False
        )
    except model_hashing.ModelReadError as exc:
        if isinstance(exc.error, FileNotFoundError):  # removed (or replaced) under us
            raise _changed_while_signing(model_dir, [exc.name]) from exc
        raise InputError(
            f"cannot read model file {exc.name} in {model_dir}: {exc}",
            where=str(root / exc.name),
            fix="make every model file readable by the signer",
        ) from exc
    changed = model_hashing.changed_files(digests)
    if changed:
        raise _changed_while_signing(model_dir, changed)
    return sig_path, digests, payload_bytes(statement_for(digests, root.name))


def _signable_tree(root: Path, *, sharded: bool) -> model_hashing.ModelTree:
    """The model's files, after refusing what a signed model must not hold."""
    try:
        tree = model_hashing.walk(root)
    except OSError as exc:
        raise InputError(
            f"cannot list the model directory {root}: {exc}",
            where=str(root),
            fix="check the directory is readable",
        ) from exc
    if tree.symlinks:
        rel = tree.symlinks[0]
        raise InputError(
            f"{rel} is a symlink; signed trees may hold regular files only",
            where=str(root / rel),
            fix="replace the symlink with the file it points at",
        )
    if tree.special:
        rel = tree.special[0]
        raise InputError(
            f"{rel} is not a regular file (a FIFO, socket or device); signed trees may "
            "hold regular files only",
            where=str(root / rel),
            fix="remove it from the folder",
        )
    if sharded:
        empty = [name for name, state in tree.files.items() if state.size == 0]
        colons = [name for name in tree.files if ":" in name]
        if empty or colons:
            what = f"empty file {empty[0]}" if empty else f"file name {colons[0]!r} (a ':')"
            raise InputError(
                f"a sharded manifest cannot list the {what}: model-signing names shards "
                "path:start:end and gives an empty file none",
                where=str(root / (empty or colons)[0]),
                fix="sign with the files manifest (no shard size), or remove or rename it",
            )
    return tree


def _sign_pae(signer: Signer, data: bytes) -> bytes:
    """An ECDSA signature over ``data`` with the hash model-signing pairs with the curve,
    checked against the signer's public key before it is used."""
    public = signer.public_key
    _check_curve(public, signer.description)
    algorithm = SUPPORTED_CURVES[public.curve.name]()
    if isinstance(signer, FileSigner):
        sig = signer.private_key.sign(data, ec.ECDSA(algorithm))
    elif isinstance(algorithm, hashes.SHA256):
        sig = signer.sign(data)  # Signer's contract: ECDSA P-256 / SHA-256, DER
    else:
        raise InputError(
            f"{signer.description} holds a {public.curve.name} key, which only a key file "
            "can sign with here",
            where=signer.description,
            fix="use a P-256 key for a KMS or other remote signer",
        )
    try:
        public.verify(sig, data, ec.ECDSA(algorithm))
    except InvalidSignature as exc:
        raise ToolError(
            f"{signer.description} returned a signature that does not verify with its key",
            where=signer.description,
        ) from exc
    return sig


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` (mode 644) through a temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _changed_while_signing(model_dir: Path, names: list[str]) -> ControlRefused:
    shown = ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")
    return ControlRefused(
        f"model directory {model_dir} changed while it was being signed ({shown})",
        where=str(model_dir),
        fix="sign only a model that nothing else is writing to",
        details={"changed": names},
        reason=SignatureRefusal.MODEL_CHANGED_WHILE_SIGNING,
    )


def signed_files(signature: Path) -> set[str]:
    """The file names a model-signing bundle lists (read from its DSSE payload; only
    meaningful once the signature has verified)."""
    try:
        bundle = json.loads(signature.read_text("utf-8"))
        payload = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
        predicate = payload["predicate"]
        names = {str(r["name"]) for r in predicate["resources"]}
        if predicate.get("serialization", {}).get("method") == "shards":
            return {name.rsplit(":", 2)[0] for name in names}  # path:start:end
        return names
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ControlRefused(
            f"model signature {signature} has no readable file list: {exc}",
            where=str(signature),
            reason=SignatureRefusal.MALFORMED_SIGNATURE,
        ) from exc


def verify_model_signature(model_dir: Path, *, signature: Path, public_key: Path) -> None:
    """Verify ``model_dir`` against a model-signing signature and an EC public key.

    Returns ``None`` when every file matches and nothing was added or removed. Raises
    ``ControlRefused`` ("model signature does not verify: ...") for a tampered, added,
    removed or symlinked file, a malformed signature or the wrong key (its ``reason`` a
    :class:`SignatureRefusal` that tells these apart); ``InputError`` when
    the model directory, signature or key file is missing or the key is not an EC key.
    """
    from secmlops.controls.signing_native import NotNativelyVerifiable, verify_key_signed_model

    root = require_model_dir(model_dir)
    _require_file(signature, "model signature", "pass the model.sig stored with this model version")
    _require_file(public_key, "public key", "pass the model signer's public key (.pub, PEM)")
    _outside(root, signature)
    trusted = load_public_key(public_key)  # InputError if not a PEM EC public key
    try:
        # The bundles sign_model writes verify without importing model-signing (>1 s).
        # Nothing compares a digest here: a sharded signature's files are not hashed whole.
        verify_key_signed_model(root, signature=signature, public_key=trusted, whole_files=False)
        return
    except NotNativelyVerifiable:
        pass  # certificate/keyless bundles, shards, odd fields: model-signing decides
    _verify_with_model_signing(
        model_dir, root, signature=signature, public_key=public_key, trusted=trusted
    )


def _verify_with_model_signing(
    model_dir: Path, root: Path, *, signature: Path, public_key: Path, trusted: PublicKey
) -> None:
    """``verify_model_signature`` for bundles only model-signing understands."""
    from model_signing import verifying

    config: Any = verifying.Config  # model-signing is untyped
    try:
        config().use_elliptic_key_verifier(public_key=public_key).verify(root, signature)
    except InvalidSignature as exc:
        raise ControlRefused(
            f"model signature does not verify: the signature was not made by key {public_key}",
            where=str(signature),
            fix="check you verify with the model signer's public key; do not deploy this model",
            details={"signature": str(signature), "key_id": key_id(trusted)},
            reason=SignatureRefusal.SIGNATURE_INVALID,
        ) from exc
    except (ValueError, KeyError, TypeError) as exc:
        raise ControlRefused(
            f"model signature does not verify: {exc}",
            where=str(model_dir),
            fix="the model or its signature changed, or it was signed by another key; "
            "do not deploy it — re-run the pipeline to get a freshly signed model",
            details={"signature": str(signature), "key_id": key_id(trusted)},
            reason=_verify_failure_reason(exc),
        ) from exc
    except SecMLOpsError:
        raise
    except Exception as exc:
        # Malformed bundles surface as protobuf/JSON errors of many types: never a pass.
        raise ControlRefused(
            f"model signature does not verify: unreadable signature ({type(exc).__name__}: {exc})",
            where=str(signature),
            details={"signature": str(signature)},
            reason=SignatureRefusal.MALFORMED_SIGNATURE,
        ) from exc
    present = set(_regular_files(root))
    listed = signed_files(signature)
    if present != listed:
        extra, missing = sorted(present - listed), sorted(listed - present)
        raise ControlRefused(
            "model signature does not verify: the directory does not hold exactly the signed "
            f"files (unsigned: {extra}, missing: {missing})",
            where=str(model_dir),
            fix="remove files that were added after signing; do not deploy this model",
            details={"unsigned": extra, "missing": missing},
            reason=SignatureRefusal.FILE_SET_MISMATCH,
        )


def _verify_failure_reason(exc: Exception) -> SignatureRefusal:
    """Tell model-signing's ``ValueError``s apart; its messages are all it gives."""
    text = str(exc)
    if "Hash mismatch" in text:
        return SignatureRefusal.CONTENT_MISMATCH
    if "Extra files" in text or "Missing files" in text:
        return SignatureRefusal.FILE_SET_MISMATCH
    if "is a symlink" in text:
        return SignatureRefusal.SYMLINK_IN_MODEL
    if "Key mismatch" in text:
        return SignatureRefusal.WRONG_KEY
    # A bundle, payload or manifest model-signing cannot read (JSON errors included).
    return SignatureRefusal.MALFORMED_SIGNATURE


def _regular_files(root: Path) -> list[str]:
    files: list[str] = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            raise ControlRefused(
                f"model signature does not verify: {rel} is a symlink",
                where=str(path),
                fix="a signed model holds regular files only; do not deploy it",
                reason=SignatureRefusal.SYMLINK_IN_MODEL,
            )
        if path.is_file():
            files.append(rel)
    return files


# --- Prefect -------------------------------------------------------------------------------
