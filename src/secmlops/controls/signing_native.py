"""Verify key-signed model-signing bundles natively, without importing model-signing.

``import model_signing`` costs over a second (it pulls in sigstore, tuf and boto3), which a
verify step in CI or an init container pays on every run. This module verifies the bundles
that ``sign_model`` writes — and that model-signing writes for an elliptic-curve key — with
``cryptography`` and ``hashlib`` only, reproducing model-signing's checks and their order:

1. the bundle: Sigstore bundle v0.3 JSON, a ``publicKey`` (optional ``hint``) and a DSSE
   envelope with one signature; the hint, when present, must name the trusted key
   (sha256 of its PEM SubjectPublicKeyInfo, as model-signing computes it);
2. the ECDSA signature over the DSSE PAE with the trusted key (P-256/SHA-256,
   P-384/SHA-384, P-521/SHA-512), then model-signing's pre-1.0 PAE as it does;
3. the payload: an in-toto v1 statement, predicate ``https://model_signing/signature/v1.0``,
   serialization ``files``/``sha256`` without symlinks, a subject digest equal to the sha256
   over the resource digests in their listed order;
4. the model directory: no symlinks; every file not ignored (``.git*`` and the signature's
   ``ignore_paths``, as model-signing ignores them) hashed and compared with the resources;
5. SecMLOps' own rule: the directory holds exactly the listed files, ignored ones included.

Whatever this module does not fully understand — certificate or Sigstore keyless bundles,
shard serialization, the pre-1.0 predicate, extra or oddly typed fields, non-canonical
names, special files, I/O errors — raises :class:`NotNativelyVerifiable`, and the caller
verifies with model-signing instead. It never returns without having verified.

Example::

    try:
        verify_key_signed_model(root, signature=sig, public_key=load_public_key(pub))
    except NotNativelyVerifiable:
        ...  # verify with model-signing
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
import stat
from pathlib import Path, PurePosixPath
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from secmlops._internal.digests import sha256_file
from secmlops.controls.signing import SignatureRefusal
from secmlops.errors import ControlRefused, InputError
from secmlops.evidence.statements import key_id

BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
IN_TOTO_PAYLOAD_TYPE = "application/vnd.in-toto+json"
IN_TOTO_STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://model_signing/signature/v1.0"
PREDICATE_TYPE_COMPAT = "https://model_signing/Digests/v0.1"
# What model-signing's verifier skips by default (hashing.Config(): ignore_git_paths=True).
GIT_PATHS = (".git", ".gitattributes", ".github", ".gitignore")

_CURVE_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "secp256r1": hashes.SHA256,
    "secp384r1": hashes.SHA384,
    "secp521r1": hashes.SHA512,
}
_HEX64 = re.compile(r"[0-9a-f]{64}")


class NotNativelyVerifiable(Exception):  # noqa: N818 - a signal to fall back, not an error
    """The bundle or model uses something this module does not verify; use model-signing."""


def verify_key_signed_model(
    root: Path, *, signature: Path, public_key: ec.EllipticCurvePublicKey
) -> None:
    """Verify the model directory ``root`` (resolved) against a key-signed bundle.

    Returns ``None`` when the signature verifies with ``public_key`` and the directory holds
    exactly the signed files with their signed digests. Raises ``ControlRefused`` (reason a
    :class:`SignatureRefusal`) when model-signing would refuse too, and
    :class:`NotNativelyVerifiable` when only model-signing can decide.
    """
    try:
        text = signature.read_text("utf-8")
    except OSError as exc:
        raise NotNativelyVerifiable(f"cannot read {signature}: {exc}") from exc
    except ValueError as exc:  # not UTF-8: model-signing fails the same way
        raise _malformed(signature, f"signature is not UTF-8 ({exc})") from exc
    try:
        bundle = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise _malformed(signature, f"signature is not JSON ({exc})") from exc
    payload_type, payload, sig = _read_bundle(bundle, signature, public_key)
    _verify_dsse(payload, sig, signature, public_key)
    statement = _read_statement(payload_type, payload, signature)
    expected, ignored = _read_manifest(statement, signature)
    _verify_model(root, expected, ignored)


# --- 1. the bundle -------------------------------------------------------------------------


def _read_bundle(
    bundle: Any, signature: Path, public_key: ec.EllipticCurvePublicKey
) -> tuple[str, bytes, bytes]:
    """The envelope's payload type, payload and signature bytes, after the key hint check."""
    if not isinstance(bundle, dict) or set(bundle) != {
        "mediaType",
        "verificationMaterial",
        "dsseEnvelope",
    }:
        raise NotNativelyVerifiable("not a bundle with exactly a DSSE envelope and key")
    if bundle["mediaType"] != BUNDLE_MEDIA_TYPE:
        raise NotNativelyVerifiable(f"bundle media type {bundle['mediaType']!r}")
    material = bundle["verificationMaterial"]
    if (
        not isinstance(material, dict)
        or not set(material) <= {"publicKey", "tlogEntries"}
        or "publicKey" not in material
        or material.get("tlogEntries", []) != []
    ):
        raise NotNativelyVerifiable("verification material is not a bare public key")
    key_material = material["publicKey"]
    if not isinstance(key_material, dict) or not set(key_material) <= {
        "hint",
        "rawBytes",
        "keyDetails",
    }:
        raise NotNativelyVerifiable("unexpected public key material")
    hint = key_material.get("hint")
    if hint is not None and not isinstance(hint, str):
        raise NotNativelyVerifiable("key hint is not a string")
    envelope = bundle["dsseEnvelope"]
    if not isinstance(envelope, dict) or set(envelope) != {
        "payload",
        "payloadType",
        "signatures",
    }:
        raise NotNativelyVerifiable("unexpected DSSE envelope fields")
    signatures = envelope["signatures"]
    if (
        not isinstance(signatures, list)
        or len(signatures) != 1
        or not isinstance(signatures[0], dict)
        or not set(signatures[0]) <= {"sig", "keyid"}
        or "sig" not in signatures[0]
        or not isinstance(signatures[0].get("keyid", ""), str | None)
        or not isinstance(envelope["payloadType"], str)
    ):
        raise NotNativelyVerifiable("envelope does not hold exactly one signature")
    payload = _b64(envelope["payload"])
    sig = _b64(signatures[0]["sig"])
    if public_key.curve.name not in _CURVE_HASHES:
        raise NotNativelyVerifiable(f"unsupported curve {public_key.curve.name}")
    # model-signing compares the hint with the sha256 of the key's PEM SubjectPublicKeyInfo
    # (SecMLOps' own key id hashes the DER); an empty or absent hint is not checked.
    if hint and hint != hashlib.sha256(_pem(public_key)).hexdigest():
        raise ControlRefused(
            "model signature does not verify: Key mismatch: the signature names another "
            f"public key (hint {hint}) than the one given",
            where=str(signature),
            fix="check you verify with the model signer's public key; do not deploy this model",
            details={"signature": str(signature), "key_id": key_id(public_key)},
            reason=SignatureRefusal.WRONG_KEY,
        )
    return envelope["payloadType"], payload, sig


def _b64(value: Any) -> bytes:
    if not isinstance(value, str):
        raise NotNativelyVerifiable("base64 field is not a string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        # model-signing decodes leniently (skipping stray characters): let it decide.
        raise NotNativelyVerifiable(f"not strict base64: {exc}") from exc


def _pem(public_key: ec.EllipticCurvePublicKey) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


# --- 2. the signature ----------------------------------------------------------------------


def pae(payload: bytes) -> bytes:
    """The DSSE v1 pre-authentication encoding model-signing signs (payload type fixed)."""
    head = f"DSSEv1 {len(IN_TOTO_PAYLOAD_TYPE)} {IN_TOTO_PAYLOAD_TYPE} {len(payload)}"
    return head.encode() + b" " + payload


def pae_compat(payload: bytes) -> bytes:
    """model-signing v0.2's buggy encoding (``str`` of the bytes), which it still accepts."""
    return (
        f"DSSEV1 {len(IN_TOTO_PAYLOAD_TYPE)} {IN_TOTO_PAYLOAD_TYPE} {len(payload)} {payload!r}"
    ).encode()


def _verify_dsse(
    payload: bytes, sig: bytes, signature: Path, public_key: ec.EllipticCurvePublicKey
) -> None:
    algorithm = ec.ECDSA(_CURVE_HASHES[public_key.curve.name]())
    for encoded in (pae(payload), pae_compat(payload)):
        try:
            public_key.verify(sig, encoded, algorithm)
            return
        except InvalidSignature:
            continue
        except Exception as exc:  # not expected from cryptography; model-signing decides
            raise NotNativelyVerifiable(f"signature check failed: {exc}") from exc
    raise ControlRefused(
        "model signature does not verify: the signature was not made by the given key "
        "(or the signed payload was changed)",
        where=str(signature),
        fix="check you verify with the model signer's public key; do not deploy this model",
        details={"signature": str(signature), "key_id": key_id(public_key)},
        reason=SignatureRefusal.SIGNATURE_INVALID,
    )


# --- 3. the statement ----------------------------------------------------------------------


def _read_statement(payload_type: str, payload: bytes, signature: Path) -> dict[str, Any]:
    if payload_type != IN_TOTO_PAYLOAD_TYPE:
        raise _malformed(signature, f"DSSE payload type is {payload_type!r}")
    try:
        statement = json.loads(payload)
    except (ValueError, RecursionError) as exc:
        raise _malformed(signature, f"signed payload is not JSON ({exc})") from exc
    if not isinstance(statement, dict) or set(statement) != {
        "_type",
        "subject",
        "predicateType",
        "predicate",
    }:
        raise NotNativelyVerifiable("statement fields are not the in-toto v1 ones")
    if statement["_type"] != IN_TOTO_STATEMENT_TYPE:
        raise _malformed(signature, f"statement type is {statement['_type']!r}")
    if statement["predicateType"] == PREDICATE_TYPE_COMPAT:
        raise NotNativelyVerifiable("pre-1.0 predicate")
    if statement["predicateType"] != PREDICATE_TYPE:
        raise _malformed(signature, f"predicate type is {statement['predicateType']!r}")
    return statement


def _read_manifest(
    statement: dict[str, Any], signature: Path
) -> tuple[dict[str, str], tuple[tuple[str, ...], ...]]:
    """``{file name: sha256}`` from the predicate, and the ignored path prefixes (as parts)."""
    subjects, predicate = statement["subject"], statement["predicate"]
    if (
        not isinstance(subjects, list)
        or len(subjects) != 1
        or not isinstance(subjects[0], dict)
        or set(subjects[0]) != {"name", "digest"}
        or not isinstance(subjects[0]["name"], str)
        or not isinstance(subjects[0]["digest"], dict)
        or set(subjects[0]["digest"]) != {"sha256"}
        or not isinstance(subjects[0]["digest"]["sha256"], str)
    ):
        raise NotNativelyVerifiable("subject is not one named sha256 digest")
    if not isinstance(predicate, dict) or set(predicate) != {"serialization", "resources"}:
        raise NotNativelyVerifiable("predicate fields are not the v1.0 ones")
    ignored = _read_serialization(predicate["serialization"])
    resources = predicate["resources"]
    if not isinstance(resources, list):
        raise NotNativelyVerifiable("resources is not a list")
    expected: dict[str, str] = {}
    root_digest = hashlib.sha256()
    for resource in resources:
        if (
            not isinstance(resource, dict)
            or set(resource) != {"name", "algorithm", "digest"}
            or resource["algorithm"] != "sha256"
            or not isinstance(resource["digest"], str)
            or not _HEX64.fullmatch(resource["digest"])
            or not _canonical(resource["name"])
            or resource["name"] in expected
        ):
            raise NotNativelyVerifiable(f"resource not understood: {resource!r}"[:200])
        expected[resource["name"]] = resource["digest"]
        root_digest.update(bytes.fromhex(resource["digest"]))
    # model-signing's subject digest: sha256 over the resource digests, in listed order.
    if root_digest.hexdigest() != subjects[0]["digest"]["sha256"]:
        raise _malformed(
            signature,
            "Manifest is inconsistent: the subject digest is not the digest of the resources",
        )
    return expected, ignored


def _read_serialization(serialization_args: Any) -> tuple[tuple[str, ...], ...]:
    if (
        not isinstance(serialization_args, dict)
        or serialization_args.get("method") != "files"
        or not {"method", "hash_type", "allow_symlinks"}
        <= set(serialization_args)
        <= {"method", "hash_type", "allow_symlinks", "ignore_paths"}
        or serialization_args["hash_type"] != "sha256"
        or serialization_args["allow_symlinks"] is not False
    ):
        raise NotNativelyVerifiable("serialization is not files/sha256 without symlinks")
    ignore_paths = serialization_args.get("ignore_paths", [])
    if not isinstance(ignore_paths, list) or not all(_canonical(p) for p in ignore_paths):
        raise NotNativelyVerifiable("ignore_paths not understood")
    return tuple(PurePosixPath(p).parts for p in (*GIT_PATHS, *ignore_paths))


def _canonical(name: Any) -> bool:
    """A plain relative POSIX path, as model-signing writes resource names."""
    if not isinstance(name, str) or not name or "\x00" in name:
        return False
    path = PurePosixPath(name)
    return (
        not path.is_absolute()
        and path.as_posix() == name
        and all(part not in (".", "..") for part in path.parts)
    )


# --- 4. and 5. the model directory ----------------------------------------------------------


def _verify_model(
    root: Path, expected: dict[str, str], ignored: tuple[tuple[str, ...], ...]
) -> None:
    files, symlinks = _walk(root)
    if symlinks:
        raise ControlRefused(
            f"model signature does not verify: {symlinks[0]} is a symlink",
            where=str(root / symlinks[0]),
            fix="a signed model holds regular files only; do not deploy it",
            reason=SignatureRefusal.SYMLINK_IN_MODEL,
        )
    # First what model-signing compares (ignored paths skipped), so the reasons agree.
    hashed = [rel for rel in files if not _is_ignored(rel, ignored)]
    try:
        actual = {rel: sha256_file(root / rel) for rel in hashed}
    except (OSError, InputError) as exc:  # a file vanished or is unreadable mid-check
        raise NotNativelyVerifiable(f"cannot read a model file: {exc}") from exc
    if actual != expected:
        extra = sorted(set(actual) - set(expected))
        missing = sorted(set(expected) - set(actual))
        changed = sorted(n for n in set(actual) & set(expected) if actual[n] != expected[n])
        diffs = [f"Hash mismatch for '{name}'" for name in changed]
        if extra:
            diffs.append(f"Extra files found in model: {', '.join(extra)}")
        if missing:
            diffs.append(f"Missing files in model: {', '.join(missing)}")
        raise ControlRefused(
            f"model signature does not verify: {'; '.join(diffs)}",
            where=str(root),
            fix="the model or its signature changed; do not deploy it — re-run the pipeline "
            "to get a freshly signed model",
            details={"changed": changed, "unsigned": extra, "missing": missing},
            reason=(
                SignatureRefusal.CONTENT_MISMATCH if changed else SignatureRefusal.FILE_SET_MISMATCH
            ),
        )
    # Then SecMLOps' rule: nothing is exempt, .git* and the signature's ignore_paths included.
    present, listed = set(files), set(expected)
    if present != listed:
        extra, missing = sorted(present - listed), sorted(listed - present)
        raise ControlRefused(
            "model signature does not verify: the directory does not hold exactly the signed "
            f"files (unsigned: {extra}, missing: {missing})",
            where=str(root),
            fix="remove files that were added after signing; do not deploy this model",
            details={"unsigned": extra, "missing": missing},
            reason=SignatureRefusal.FILE_SET_MISMATCH,
        )


def _walk(root: Path) -> tuple[list[str], list[str]]:
    """Regular files and symlinks below ``root`` (POSIX relative paths, sorted)."""
    files: list[str] = []
    symlinks: list[str] = []
    pending = [(root, "")]
    while pending:
        directory, prefix = pending.pop()
        try:
            with os.scandir(directory) as entries:
                for entry in entries:
                    rel = prefix + entry.name
                    mode = entry.stat(follow_symlinks=False).st_mode
                    if stat.S_ISLNK(mode):
                        symlinks.append(rel)
                    elif stat.S_ISDIR(mode):
                        pending.append((Path(entry.path), rel + "/"))
                    elif stat.S_ISREG(mode):
                        files.append(rel)
                    else:
                        raise NotNativelyVerifiable(f"{rel} is not a regular file")
        except OSError as exc:
            raise NotNativelyVerifiable(f"cannot list {directory}: {exc}") from exc
    return sorted(files), sorted(symlinks)


def _is_ignored(rel: str, ignored: tuple[tuple[str, ...], ...]) -> bool:
    parts = PurePosixPath(rel).parts
    return any(parts[: len(prefix)] == prefix for prefix in ignored)


def _malformed(signature: Path, why: str) -> ControlRefused:
    return ControlRefused(
        f"model signature does not verify: {why}",
        where=str(signature),
        details={"signature": str(signature)},
        reason=SignatureRefusal.MALFORMED_SIGNATURE,
    )
