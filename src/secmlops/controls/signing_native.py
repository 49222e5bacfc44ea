"""model-signing bundles made and checked natively, without importing model-signing.

``import model_signing`` costs over a second (it pulls in sigstore, tuf and boto3), which a
sign or verify step in CI or an init container pays on every run. This module writes and
reads the bundles model-signing 1.1.1 writes, with ``cryptography`` and ``hashlib`` only,
hashing the model once through :mod:`secmlops.controls.model_hashing`.

Signing (:func:`statement_for`, :func:`payload_bytes`, :func:`bundle_text`): an in-toto v1
statement with predicate ``https://model_signing/signature/v1.0`` (serialization ``files``,
or ``shards`` with a shard size and resources named ``path:start:end``; subject digest the
sha256 over the resource digests in model-signing's order), as 2-space-indented JSON like
protobuf's ``MessageToJson``; a DSSE envelope over its PAE; a Sigstore bundle v0.3 whose
verification material is a public-key hint (key signing) or the X.509 chain, leaf first
(certificate signing). One deliberate difference: ``shard_size`` is written as a JSON
integer; model-signing 1.1.1 writes it through a protobuf ``Struct`` as a float (``7.0``),
which its own verifier then cannot use (``range()`` refuses a float), so its sharded
signatures do not verify with model-signing itself. Same number, readable by both.

Verification of key-signed bundles (:func:`verify_key_signed_model`) reproduces
model-signing's checks and their order:

1. the bundle: Sigstore bundle v0.3 JSON, a ``publicKey`` (optional ``hint``) and a DSSE
   envelope with one signature; the hint, when present, must name the trusted key
   (sha256 of its PEM SubjectPublicKeyInfo, as model-signing computes it);
2. the ECDSA signature over the DSSE PAE with the trusted key (P-256/SHA-256,
   P-384/SHA-384, P-521/SHA-512), then model-signing's pre-1.0 PAE as it does;
3. the payload: an in-toto v1 statement, predicate ``https://model_signing/signature/v1.0``,
   serialization ``files`` or ``shards`` (sha256, no symlinks), a subject digest equal to
   the sha256 over the resource digests in their listed order;
4. the model directory: no symlinks; every file not ignored (``.git*`` and the signature's
   ``ignore_paths``, as model-signing ignores them) hashed once and compared with the
   resources (for shards, per file: a file whose shards differ is *changed*);
5. SecMLOps' own rule: the directory holds exactly the listed files, ignored ones included
   (for shards, an empty file, which has no shard, is never listed, so it is refused).

Steps 3-5 are :func:`check_statement_against_model`, which the certificate and Sigstore
verifiers call once they have verified the envelope's signature; it returns the digests
from the same pass (for a ``shards`` manifest, whole files are hashed too unless
``whole_files=False``: see :mod:`~secmlops.controls.model_hashing` on the model digest).

Whatever :func:`verify_key_signed_model` does not fully understand — certificate or
Sigstore keyless bundles, the pre-1.0 predicate, extra or oddly typed fields,
non-canonical names, special files, I/O errors — raises :class:`NotNativelyVerifiable`, and
the caller verifies with model-signing instead. It never returns without having verified.

Example::

    try:
        digest = verify_key_signed_model(root, signature=sig, public_key=load_public_key(pub))
    except NotNativelyVerifiable:
        ...  # verify with model-signing
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from secmlops.controls.model_hashing import ModelDigests, ModelReadError, hash_model, walk
from secmlops.controls.signing import SUPPORTED_CURVES, SignatureRefusal
from secmlops.errors import ControlRefused, InputError
from secmlops.evidence.statements import key_id

BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
IN_TOTO_PAYLOAD_TYPE = "application/vnd.in-toto+json"
IN_TOTO_STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://model_signing/signature/v1.0"
PREDICATE_TYPE_COMPAT = "https://model_signing/Digests/v0.1"
# What model-signing's verifier skips by default (hashing.Config(): ignore_git_paths=True).
GIT_PATHS = (".git", ".gitattributes", ".github", ".gitignore")

_HEX64 = re.compile(r"[0-9a-f]{64}")


class NotNativelyVerifiable(Exception):  # noqa: N818 - a signal to fall back, not an error
    """The bundle or model uses something this module does not verify; use model-signing."""


def verify_key_signed_model(
    root: Path,
    *,
    signature: Path,
    public_key: ec.EllipticCurvePublicKey,
    whole_files: bool = True,
) -> str:
    """Verify the model directory ``root`` (resolved) against a key-signed bundle.

    Returns the model digest (``tree_digest`` of ``root``, from the same pass; for a
    ``shards`` manifest with ``whole_files=False``, the manifest's digest) when the
    signature verifies with ``public_key`` and the directory holds exactly the signed files
    with their signed digests. Raises ``ControlRefused`` (reason a
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
    manifest = _read_manifest(statement, signature)
    return _verify_model(root, manifest, strict=False, whole_files=whole_files).model_digest


def check_statement_against_model(
    root: Path, payload_type: str, payload: bytes, signature: Path, *, whole_files: bool = True
) -> ModelDigests:
    """Check an already signature-verified DSSE payload against the model directory ``root``
    (resolved): steps 3-5 of the module docstring, hashing every byte once (a ``shards``
    manifest with ``whole_files=True``: twice, whole file and shard, side by side).

    Returns the digests of that pass: ``model_digest`` is ``tree_digest`` of ``root``
    whenever whole files were hashed, else the shard manifest's digest. Raises
    ``ControlRefused`` (reason
    a :class:`SignatureRefusal`) for a changed, added, removed, symlinked or special file,
    and for a payload that is not a model-signing v1.0 manifest this module reads (the
    pre-1.0 predicate, another hash, symlinks allowed: ``MALFORMED_SIGNATURE``);
    ``InputError`` if the directory cannot be read. ``signature`` only names the bundle in
    messages.
    """
    try:
        statement = _read_statement(payload_type, payload, signature)
        manifest = _read_manifest(statement, signature)
    except NotNativelyVerifiable as exc:
        raise _malformed(
            signature, f"the signed statement is not a model-signing v1.0 manifest ({exc})"
        ) from exc
    return _verify_model(root, manifest, strict=True, whole_files=whole_files)


# --- signing: statement, envelope, bundle ----------------------------------------------------


def statement_for(digests: ModelDigests, model_name: str) -> dict[str, Any]:
    """model-signing's v1.0 statement for ``digests`` (``files`` or ``shards``)."""
    serialization_args: dict[str, Any]
    if digests.shard_size is None:
        serialization_args = {"method": "files", "hash_type": "sha256", "allow_symlinks": False}
        algorithm = "sha256"
    else:
        serialization_args = {
            "method": "shards",
            "hash_type": "sha256",
            "shard_size": digests.shard_size,
            "allow_symlinks": False,
        }
        algorithm = f"sha256-sharded-{digests.shard_size}"
    resources = digests.resources()
    root_digest = hashlib.sha256(b"".join(bytes.fromhex(d) for _, d in resources)).hexdigest()
    return {
        "_type": IN_TOTO_STATEMENT_TYPE,
        "subject": [{"name": model_name, "digest": {"sha256": root_digest}}],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "serialization": serialization_args,
            "resources": [
                {"name": name, "digest": digest, "algorithm": algorithm}
                for name, digest in resources
            ],
        },
    }


def payload_bytes(statement: dict[str, Any]) -> bytes:
    """The DSSE payload as model-signing writes it (protobuf ``MessageToJson``: indent 2)."""
    return json.dumps(statement, indent=2, ensure_ascii=False).encode("utf-8")


def key_material(public_key: ec.EllipticCurvePublicKey) -> dict[str, Any]:
    """Verification material of a key-signed bundle: the key's hint, as model-signing."""
    return {
        "publicKey": {"hint": key_hint(public_key)},
        "tlogEntries": [],
    }


def certificate_material(chain: Sequence[x509.Certificate]) -> dict[str, Any]:
    """Verification material of a certificate-signed bundle: DER certificates, leaf first."""
    return {
        "x509CertificateChain": {
            "certificates": [
                {
                    "rawBytes": base64.b64encode(
                        cert.public_bytes(serialization.Encoding.DER)
                    ).decode()
                }
                for cert in chain
            ]
        },
        "tlogEntries": [],
    }


def bundle_text(payload: bytes, sig: bytes, material: dict[str, Any]) -> str:
    """The Sigstore bundle v0.3 JSON model-signing writes (compact, its field order)."""
    bundle = {
        "mediaType": BUNDLE_MEDIA_TYPE,
        "verificationMaterial": material,
        "dsseEnvelope": {
            "payload": base64.b64encode(payload).decode(),
            "payloadType": IN_TOTO_PAYLOAD_TYPE,
            "signatures": [{"sig": base64.b64encode(sig).decode(), "keyid": ""}],
        },
    }
    return json.dumps(bundle, separators=(",", ":"), ensure_ascii=False)


def key_hint(public_key: ec.EllipticCurvePublicKey) -> str:
    """model-signing's key hint: the sha256 of the key's PEM SubjectPublicKeyInfo."""
    return hashlib.sha256(_pem(public_key)).hexdigest()


def curve_hash(public_key: ec.EllipticCurvePublicKey) -> hashes.HashAlgorithm | None:
    """The hash model-signing pairs with the key's curve, ``None`` for other curves."""
    algorithm = SUPPORTED_CURVES.get(public_key.curve.name)
    return algorithm() if algorithm else None


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
    if public_key.curve.name not in SUPPORTED_CURVES:
        raise NotNativelyVerifiable(f"unsupported curve {public_key.curve.name}")
    # model-signing compares the hint with the sha256 of the key's PEM SubjectPublicKeyInfo
    # (SecMLOps' own key id hashes the DER); an empty or absent hint is not checked.
    if hint and hint != key_hint(public_key):
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
    algorithm = ec.ECDSA(SUPPORTED_CURVES[public_key.curve.name]())
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
        raise _malformed(signature, f"DSSE payload type is {payload_type[:80]!r}")
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
        raise _malformed(signature, f"statement type is {str(statement['_type'])[:80]!r}")
    if statement["predicateType"] == PREDICATE_TYPE_COMPAT:
        raise NotNativelyVerifiable("pre-1.0 predicate")
    if statement["predicateType"] != PREDICATE_TYPE:
        raise _malformed(signature, f"predicate type is {str(statement['predicateType'])[:80]!r}")
    return statement


@dataclass(frozen=True)
class _Manifest:
    """What a v1.0 predicate signs: resource name -> sha256, and how to recompute it."""

    resources: dict[str, str]
    #: ``None`` for ``files``; the shard size for ``shards``.
    shard_size: int | None
    #: Path prefixes (as parts) model-signing skips when it hashes the directory.
    ignored: tuple[tuple[str, ...], ...]

    def file_of(self, resource: str) -> str:
        return resource if self.shard_size is None else resource.rsplit(":", 2)[0]


def _read_manifest(statement: dict[str, Any], signature: Path) -> _Manifest:
    """The predicate's resources, checked against its subject digest."""
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
    shard_size, ignored = _read_serialization(predicate["serialization"])
    algorithm = "sha256" if shard_size is None else f"sha256-sharded-{shard_size}"
    resources = predicate["resources"]
    if not isinstance(resources, list):
        raise NotNativelyVerifiable("resources is not a list")
    expected: dict[str, str] = {}
    root_digest = hashlib.sha256()
    for resource in resources:
        if (
            not isinstance(resource, dict)
            or set(resource) != {"name", "algorithm", "digest"}
            or resource["algorithm"] != algorithm
            or not isinstance(resource["digest"], str)
            or not _HEX64.fullmatch(resource["digest"])
            or not _resource_name_ok(resource["name"], shard_size)
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
    return _Manifest(expected, shard_size, ignored)


def _read_serialization(serialization_args: Any) -> tuple[int | None, tuple[tuple[str, ...], ...]]:
    """The shard size (``None`` for ``files``) and the ignored path prefixes."""
    if not isinstance(serialization_args, dict):
        raise NotNativelyVerifiable("serialization is not an object")
    method = serialization_args.get("method")
    required = {"method", "hash_type", "allow_symlinks"}
    if method == "shards":
        required.add("shard_size")
    elif method != "files":
        raise NotNativelyVerifiable(f"serialization method {str(method)[:40]!r}")
    if (
        not required <= set(serialization_args) <= required | {"ignore_paths"}
        or serialization_args["hash_type"] != "sha256"
        or serialization_args["allow_symlinks"] is not False
    ):
        raise NotNativelyVerifiable("serialization is not sha256 without symlinks")
    shard_size: int | None = None
    if method == "shards":
        value = serialization_args["shard_size"]
        # model-signing writes it through a protobuf Struct: a float such as 7.0.
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise NotNativelyVerifiable(f"shard size {value!r}")
        shard_size = value
    ignore_paths = serialization_args.get("ignore_paths", [])
    if not isinstance(ignore_paths, list) or not all(_canonical(p) for p in ignore_paths):
        raise NotNativelyVerifiable("ignore_paths not understood")
    return shard_size, tuple(PurePosixPath(p).parts for p in (*GIT_PATHS, *ignore_paths))


def _resource_name_ok(name: Any, shard_size: int | None) -> bool:
    if shard_size is None:
        return _canonical(name)
    if not isinstance(name, str):
        return False
    parts = name.split(":")  # model-signing's own parse: exactly path:start:end
    if len(parts) != 3 or not _canonical(parts[0]):
        return False
    start, end = parts[1], parts[2]
    if not (start.isdecimal() and end.isdecimal()) or str(int(start)) != start:
        return False
    return str(int(end)) == end and 0 <= int(start) < int(end) <= int(start) + shard_size


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
    root: Path, manifest: _Manifest, *, strict: bool, whole_files: bool
) -> ModelDigests:
    """Steps 4 and 5; returns the digests. ``strict``: decide everything (refuse a special
    file, ``InputError`` on I/O) instead of raising ``NotNativelyVerifiable``."""
    try:
        tree = walk(root)
    except OSError as exc:
        if strict:
            raise InputError(
                f"cannot list the model directory {root}: {exc}",
                where=str(root),
                fix="check the directory is readable",
            ) from exc
        raise NotNativelyVerifiable(f"cannot list {root}: {exc}") from exc
    if tree.symlinks:
        raise ControlRefused(
            f"model signature does not verify: {tree.symlinks[0]} is a symlink",
            where=str(root / tree.symlinks[0]),
            fix="a signed model holds regular files only; do not deploy it",
            reason=SignatureRefusal.SYMLINK_IN_MODEL,
        )
    if tree.special:
        if not strict:
            raise NotNativelyVerifiable(f"{tree.special[0]} is not a regular file")
        raise ControlRefused(
            f"model signature does not verify: {tree.special[0]} is not a regular file "
            "(a FIFO, socket or device)",
            where=str(root / tree.special[0]),
            fix="a signed model holds regular files only; do not deploy it",
            reason=SignatureRefusal.FILE_SET_MISMATCH,
        )
    try:
        digests = hash_model(
            root, shard_size=manifest.shard_size, tree=tree, whole_files=whole_files
        )
    except ModelReadError as exc:  # a file vanished or is unreadable mid-check
        if strict:
            raise InputError(
                f"cannot read model file {exc.name} in {root}: {exc}",
                where=str(root / exc.name),
                fix="check the model files are readable and nothing is deleting them",
            ) from exc
        raise NotNativelyVerifiable(f"cannot read a model file: {exc}") from exc
    # First what model-signing compares (ignored paths skipped), so the reasons agree.
    actual = {
        name: digest
        for name, digest in digests.resources()
        if not _is_ignored(manifest.file_of(name), manifest.ignored)
    }
    if actual != manifest.resources:
        _refuse_mismatch(root, manifest, actual)
    # Then SecMLOps' rule: nothing is exempt, .git* and the signature's ignore_paths included
    # (and, for shards, empty files, which have no shard to list).
    present = set(tree.files)
    listed = {manifest.file_of(name) for name in manifest.resources}
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
    return digests


def _refuse_mismatch(root: Path, manifest: _Manifest, actual: dict[str, str]) -> None:
    """Refuse, naming changed, unsigned and missing files (a file whose shards differ in
    number, bounds or digests is changed)."""

    def by_file(resources: dict[str, str]) -> dict[str, dict[str, str]]:
        grouped: dict[str, dict[str, str]] = {}
        for name, digest in resources.items():
            grouped.setdefault(manifest.file_of(name), {})[name] = digest
        return grouped

    got, want = by_file(actual), by_file(manifest.resources)
    extra = sorted(set(got) - set(want))
    missing = sorted(set(want) - set(got))
    changed = sorted(n for n in set(got) & set(want) if got[n] != want[n])
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
