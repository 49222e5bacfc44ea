"""Sign and verify model directories with OpenSSF model-signing and a local EC key (offline).

The signature is a Sigstore bundle (DSSE over an in-toto statement listing every file's
sha256) written *outside* the model directory, so it never signs or hides itself.
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
    verify_model_signature(Path("model"), signature=sig.signature,
                           public_key=Path("keys/model-signer.pub"))
"""

from __future__ import annotations

import base64
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature

from secmlops._internal.digests import sha256_file, tree_digest
from secmlops.errors import ControlRefused, InputError, RefusalReason, SecMLOpsError, ToolError
from secmlops.evidence.signers import pem_passphrase
from secmlops.evidence.statements import PublicKey, key_id, load_private_key, load_public_key


class SignatureRefusal(RefusalReason):
    """Why model signing or verification refused a model (``ControlRefused.reason``)."""

    MODEL_CHANGED_WHILE_SIGNING = "model_changed_while_signing"
    """The model directory's digest changed between hashing and signing."""
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
    """A model-signing signature: where it is, its digest, who signed, what was signed."""

    signature: Path
    signature_sha256: str
    key_id: str
    model_digest: str

    def to_json(self) -> dict[str, Any]:
        return {
            "signature": str(self.signature),
            "signature_sha256": self.signature_sha256,
            "key_id": self.key_id,
            "model_digest": self.model_digest,
        }


def _require_model_dir(model_dir: Path) -> Path:
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


def _hashing_config() -> Any:
    from model_signing import hashing

    config: Any = hashing.Config  # model-signing is untyped
    # Sign every file, .git* included: nothing in a model directory is exempt.
    return config().set_ignored_paths(paths=[], ignore_git_paths=False)


def sign_model(model_dir: Path, *, private_key: Path, signature: Path) -> ModelSignature:
    """Sign every file in ``model_dir`` with an EC private key (PEM; an encrypted one takes
    its passphrase from ``SECMLOPS_MODEL_SIGNER_KEY_PASSPHRASE[_FILE]``,
    ``SECMLOPS_KEY_PASSPHRASE[_FILE]`` or a prompt, as every role key does).

    The signature must live outside ``model_dir`` (``InputError`` otherwise); it is
    written atomically. Symlinks in the model are refused (``InputError``).
    """
    from model_signing import signing

    root = _require_model_dir(model_dir)
    sig_path = _outside(root, signature)
    # Load the key ourselves first: a clear InputError instead of model-signing's ValueError.
    public = load_private_key(private_key, subject="model-signer").public_key()
    password = pem_passphrase(private_key, subject="model-signer")
    model_digest = tree_digest(root)  # InputError on a symlink
    sig_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=sig_path.parent, prefix=f".{sig_path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    config: Any = signing.Config  # model-signing is untyped
    try:
        (
            config()
            .set_hashing_config(_hashing_config())
            # model-signing's annotation says str; it hands the value to cryptography,
            # which needs bytes.
            .use_elliptic_key_signer(private_key=private_key, password=password)
            .sign(root, tmp)
        )
        os.chmod(tmp, 0o644)
        os.replace(tmp, sig_path)
    except ValueError as exc:
        raise ToolError(
            f"model-signing could not sign {model_dir}: {exc}",
            where=str(model_dir),
            fix="check the key is an EC P-256/P-384/P-521 private key",
        ) from exc
    finally:
        tmp.unlink(missing_ok=True)
    if tree_digest(root) != model_digest:
        raise ControlRefused(
            f"model directory {model_dir} changed while it was being signed",
            where=str(model_dir),
            fix="sign only a model that nothing else is writing to",
            reason=SignatureRefusal.MODEL_CHANGED_WHILE_SIGNING,
        )
    return ModelSignature(
        signature=sig_path,
        signature_sha256=sha256_file(sig_path),
        key_id=key_id(public),
        model_digest=model_digest,
    )


def signed_files(signature: Path) -> set[str]:
    """The file names a model-signing bundle lists (read from its DSSE payload; only
    meaningful once the signature has verified)."""
    try:
        bundle = json.loads(signature.read_text("utf-8"))
        payload = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
        resources = payload["predicate"]["resources"]
        return {str(r["name"]) for r in resources}
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

    root = _require_model_dir(model_dir)
    _require_file(signature, "model signature", "pass the model.sig stored with this model version")
    _require_file(public_key, "public key", "pass the model signer's public key (.pub, PEM)")
    _outside(root, signature)
    trusted = load_public_key(public_key)  # InputError if not a PEM EC public key
    try:
        # The bundles sign_model writes verify without importing model-signing (>1 s).
        verify_key_signed_model(root, signature=signature, public_key=trusted)
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
