"""Sign the serving image the way cosign does, so an admission controller can check it.

The signature and the attestation name the image by its **registry manifest digest** (the
sha256 of the OCI image manifest, what ``repo@sha256:...`` resolves to), not by the config
digest (image ID) the scan evidence uses. For a docker-archive the manifest is the one
:func:`secmlops.demo.serving_image.write_oci_layout` writes (uncompressed layers); for an
OCI layout it is the layout's own manifest. Push the signed layout with a tool that keeps the
manifest bytes (``cosign load``, ``oras cp -r --from-oci-layout``, ``skopeo copy
--preserve-digests``): a tool that recompresses layers makes a new manifest and digest that
nothing here signs (:class:`~secmlops.demo.serving_image.OciImage`).

What :func:`sign_image` writes, as one OCI image layout directory beside the image
(``<image>.cosign`` by default), laid out like ``cosign save`` (index entries annotated
``kind: dev.cosignproject.cosign/image|sigs|atts``, so ``cosign load --dir`` pushes it) and
tagged like cosign's registry scheme (``org.opencontainers.image.ref.name``):

- the image itself (manifest, config, layers; the same bytes, the same digest);
- ``sha256-<hex>.sig``: a manifest whose one layer (``application/vnd.dev.cosign.
  simplesigning.v1+json``) is the cosign *simple signing* payload ``{"critical": {"identity":
  {"docker-reference": REPO}, "image": {"docker-manifest-digest": "sha256:<hex>"}, "type":
  "cosign container image signature"}, "optional": {...}}``, its ECDSA P-256 / SHA-256
  signature (base64 DER) in the layer annotation ``dev.cosignproject.cosign/signature``;
- ``sha256-<hex>.att``: a manifest whose one layer (``application/vnd.dsse.envelope.v1+json``,
  annotation ``predicateType``) is a DSSE envelope (``application/vnd.in-toto+json``) of an
  in-toto Statement v1 whose subject is ``REPO`` at the manifest digest and whose predicate is
  the image scan's in-toto ``vulns`` predicate (``https://in-toto.io/attestation/vulns/v0.1``,
  recording the config digest it scanned as ``image.imageId``);
- an OCI 1.1 referrer of the image (``subject`` = the image manifest, ``artifactType
  application/vnd.dev.sigstore.bundle.v0.3+json``): the same DSSE envelope as a Sigstore
  bundle v0.3 with public-key verification material, as ``cosign attest
  --new-bundle-format`` stores it.

All are signed with the attestor key (``KeyDirectory.signer("attestor")``); no transparency
log entry is made (key-based signing, offline). An admission controller checks them with the
attestor's public key and the log check switched off, e.g. Kyverno ``verifyImages``:
``attestors: [{entries: [{keys: {publicKeys: <attestor.pub>, rekor: {ignoreTlog: true},
ctlog: {ignoreSCT: true}}}]}]`` and ``attestations: [{type:
https://in-toto.io/attestation/vulns/v0.1, conditions: ...}]``; cosign: ``cosign verify
--key attestor.pub --insecure-ignore-tlog REPO@sha256:<hex>``.

:func:`verify_image_signatures` checks all of it offline against trusted keys (the trust
root's attestor keys): every blob's digest, the signature over the simple signing payload,
the DSSE signature, that both name the manifest digest (and the repository, when given), and
that the bundle holds the same envelope. It refuses with an :class:`ImageSigningRefusal`.

The pipeline signs right after the scan passes (``flows/training.py``, stage ``sign-image``);
registration stores :func:`detached_files` (the layout without the image's layers) with the
model version and names its ``index.json`` in the release manifest (evidence
``image-signature``); the deploy gate's ``image-signature`` check verifies it with
``detached=True`` (see ``docs/image-signing.md``).

Example::

    signed = sign_image(Path("build/serving.tar"), repository="registry.example/serving",
                        signer=keys.signer("attestor"), scan_statement=scan_statement)
    verify_image_signatures(signed.layout, trusted,
                            manifest_digest=signed.manifest_digest,
                            repository="registry.example/serving")
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from secmlops._internal.digests import sha256_bytes
from secmlops.demo.serving_image import (
    OCI_CONFIG_MEDIA_TYPE,
    OCI_MANIFEST_MEDIA_TYPE,
    OciImage,
    oci_image_from_archive,
)
from secmlops.errors import ControlRefused, InputError, RefusalReason
from secmlops.evidence.signers import Signer
from secmlops.evidence.statements import (
    BUNDLE_MEDIA_TYPE,
    PAYLOAD_TYPE,
    PREDICATE_VULNS,
    STATEMENT_TYPE,
    TrustedKeys,
    format_time,
    has_subject,
    pae,
    parse_time,
    verify_bundle,
)

SIMPLE_SIGNING_MEDIA_TYPE = "application/vnd.dev.cosign.simplesigning.v1+json"
DSSE_MEDIA_TYPE = "application/vnd.dsse.envelope.v1+json"
SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
PREDICATE_TYPE_ANNOTATION = "predicateType"
COSIGN_SIGNATURE_TYPE = "cosign container image signature"
#: cosign's own vulnerability predicate (``cosign attest --type vuln``); accepted as input.
PREDICATE_COSIGN_VULN = "https://cosign.sigstore.dev/attestation/vuln/v1"
SCAN_PREDICATES = (PREDICATE_VULNS, PREDICATE_COSIGN_VULN)
#: The release manifest's evidence entry naming a version's stored image signature layout
#: (its ``index.json``, by sha256; see :func:`detached_files`).
IMAGE_SIGNATURE_EVIDENCE = "image-signature"

INDEX_MEDIA_TYPE = "application/vnd.oci.image.index.v1+json"
EMPTY_MEDIA_TYPE = "application/vnd.oci.empty.v1+json"
EMPTY_BLOB = b"{}"
REF_NAME_ANNOTATION = "org.opencontainers.image.ref.name"
CREATED_ANNOTATION = "org.opencontainers.image.created"
#: ``cosign save``'s index annotation (``kind``) and its values.
KIND_ANNOTATION = "kind"
KIND_IMAGE = "dev.cosignproject.cosign/image"
KIND_SIGS = "dev.cosignproject.cosign/sigs"
KIND_ATTS = "dev.cosignproject.cosign/atts"
#: Annotations ``cosign attest --new-bundle-format`` puts on a bundle referrer.
BUNDLE_CONTENT_ANNOTATION = "dev.sigstore.bundle.content"
BUNDLE_PREDICATE_ANNOTATION = "dev.sigstore.bundle.predicateType"

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
# registry[:port]/path, lowercase path components, no tag and no digest.
_REPOSITORY = re.compile(
    r"(?:[a-zA-Z0-9.-]+(?::[0-9]+)?/)?[a-z0-9]+(?:[._-][a-z0-9]+|__)*"
    r"(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*"
)


class ImageSigningRefusal(RefusalReason):
    """Why image signing or its verification refuses (by precedence)."""

    #: A layout blob's bytes do not hash to the digest that names them (tampered layout).
    BLOB_DIGEST_MISMATCH = "blob_digest_mismatch"
    #: The signed layout is not what :func:`sign_image` writes (missing or garbled parts).
    MALFORMED_SIGNATURES = "malformed_signatures"
    #: No ``sha256-<hex>.sig`` / ``.att`` for the image's manifest digest.
    MISSING_SIGNATURE = "missing_signature"
    #: A signature verifies with none of the trusted keys.
    BAD_SIGNATURE = "bad_signature"
    #: The signing key was outside its validity window when the payload says it signed.
    KEY_NOT_VALID = "key_not_valid"
    #: The image is not the one expected, or a payload names another manifest digest.
    WRONG_DIGEST = "wrong_digest"
    #: The signature names another repository (docker-reference) than the one expected.
    WRONG_REFERENCE = "wrong_reference"
    #: The scan statement given to sign is not about this image (config digest) or not a scan.
    SCAN_NOT_OF_THIS_IMAGE = "scan_not_of_this_image"
    #: The scan statement's verdict did not pass: the image is not signed for admission.
    SCAN_NOT_PASSED = "scan_not_passed"


# --- reading images -------------------------------------------------------------------------


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def _descriptor(media_type: str, blob: bytes, **extra: Any) -> dict[str, Any]:
    digest = f"sha256:{sha256_bytes(blob)}"
    return {"mediaType": media_type, "digest": digest, "size": len(blob), **extra}


def _hex_of(digest: object, where: str) -> str:
    text = str(digest)
    hex_ = text.removeprefix("sha256:")
    if not text.startswith("sha256:") or not _SHA256_HEX.fullmatch(hex_):
        raise _refused(
            f"{digest!r} is not a sha256 digest", ImageSigningRefusal.MALFORMED_SIGNATURES, where
        )
    return hex_


def _read_blob(layout: Path, digest: object, where: str) -> bytes:
    """A blob of ``layout`` by digest, checked against it (``BLOB_DIGEST_MISMATCH``)."""
    hex_ = _hex_of(digest, where)
    path = layout / "blobs" / "sha256" / hex_
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise _refused(
            f"blob sha256:{hex_[:12]}… is missing from {layout}: {exc.strerror}",
            ImageSigningRefusal.MALFORMED_SIGNATURES,
            where,
        ) from exc
    if sha256_bytes(data) != hex_:
        raise _refused(
            f"blob {path} does not hash to sha256:{hex_[:12]}… (tampered?)",
            ImageSigningRefusal.BLOB_DIGEST_MISMATCH,
            where,
        )
    return data


def _json(data: bytes, what: str, where: str) -> Any:
    try:
        return json.loads(data)
    except ValueError as exc:
        raise _refused(
            f"{what} is not JSON: {exc}", ImageSigningRefusal.MALFORMED_SIGNATURES, where
        ) from exc


def _read_index(layout: Path, where: str) -> list[dict[str, Any]]:
    try:
        index = json.loads((layout / "index.json").read_bytes())
        manifests = index["manifests"]
    except FileNotFoundError as exc:
        raise InputError(
            f"{layout} is not an OCI image layout (no index.json)",
            where=where,
            fix="give a docker-archive, an OCI layout directory, or the layout sign_image wrote",
        ) from exc
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise _refused(
            f"unreadable index.json in {layout}: {exc}",
            ImageSigningRefusal.MALFORMED_SIGNATURES,
            where,
        ) from exc
    if not isinstance(manifests, list) or not all(isinstance(m, dict) for m in manifests):
        raise _refused(
            f"index.json in {layout} lists no manifests",
            ImageSigningRefusal.MALFORMED_SIGNATURES,
            where,
        )
    return manifests


def _annotations(entry: Mapping[str, Any]) -> dict[str, str]:
    found = entry.get("annotations")
    return dict(found) if isinstance(found, dict) else {}


def _image_entry(manifests: list[dict[str, Any]], layout: Path, where: str) -> dict[str, Any]:
    """The one image manifest of a layout: marked ``kind: …/image`` (cosign save), else the
    only image manifest that is neither a signature, an attestation nor a referrer."""
    marked = [m for m in manifests if _annotations(m).get(KIND_ANNOTATION) == KIND_IMAGE]
    if marked:
        candidates = marked
    else:
        candidates = [
            m
            for m in manifests
            if m.get("mediaType") == OCI_MANIFEST_MEDIA_TYPE
            and KIND_ANNOTATION not in _annotations(m)
            and "artifactType" not in m
            and not str(_annotations(m).get(REF_NAME_ANNOTATION, "")).startswith("sha256-")
        ]
    if len(candidates) != 1:
        raise InputError(
            f"{layout} holds {len(candidates)} image manifests, not one",
            where=where,
            fix="give a layout of one image (an image index of several platforms is not supported)",
        )
    return candidates[0]


def _image_from_layout(layout: Path, where: str, *, with_layers: bool = True) -> OciImage:
    """The layout's image; ``with_layers=False`` reads only its manifest and config (a
    detached signature layout, :func:`detached_files`, holds no layers)."""
    manifests = _read_index(layout, where)
    entry = _image_entry(manifests, layout, where)
    manifest_bytes = _read_blob(layout, entry.get("digest"), where)
    manifest = _json(manifest_bytes, "the image manifest", where)
    try:
        config = _read_blob(layout, manifest["config"]["digest"], where)
        layers = (
            tuple(_read_blob(layout, d["digest"], where) for d in manifest["layers"])
            if with_layers
            else ()
        )
    except (KeyError, TypeError) as exc:
        raise _refused(
            f"malformed image manifest in {layout}: {exc!r}",
            ImageSigningRefusal.MALFORMED_SIGNATURES,
            where,
        ) from exc
    ref = _annotations(entry).get(REF_NAME_ANNOTATION)
    return OciImage(manifest=manifest_bytes, config=config, layers=layers, tag=ref)


def read_image(source: Path) -> OciImage:
    """The image at ``source``: a docker-archive file or an OCI image layout directory."""
    where = str(source)
    if source.is_dir():
        return _image_from_layout(source, where)
    if source.is_file():
        return oci_image_from_archive(source)
    raise InputError(
        f"image {source} does not exist",
        where=where,
        fix="build it (build_serving_image) or give the site's image path",
    )


# --- signing --------------------------------------------------------------------------------


def signature_tag(manifest_digest: str) -> str:
    """cosign's tag for the signatures of ``sha256:<hex>``: ``sha256-<hex>.sig``."""
    return f"sha256-{manifest_digest}.sig"


def attestation_tag(manifest_digest: str) -> str:
    """cosign's tag for the attestations of ``sha256:<hex>``: ``sha256-<hex>.att``."""
    return f"sha256-{manifest_digest}.att"


def simple_signing_payload(
    repository: str, manifest_digest: str, optional: Mapping[str, Any] | None = None
) -> bytes:
    """The cosign simple signing payload (canonical JSON) for ``repository@sha256:<hex>``."""
    return _canonical(
        {
            "critical": {
                "identity": {"docker-reference": repository},
                "image": {"docker-manifest-digest": f"sha256:{manifest_digest}"},
                "type": COSIGN_SIGNATURE_TYPE,
            },
            "optional": dict(optional or {}),
        }
    )


@dataclass(frozen=True)
class ImageSignatures:
    """What :func:`sign_image` wrote: the layout and the signed material in it."""

    layout: Path
    repository: str
    manifest_digest: str  # sha256 hex of the image manifest (the registry digest)
    config_digest: str  # sha256 hex of the config (image ID, what the scan names)
    signature_tag: str
    attestation_tag: str
    simple_signing_payload: bytes
    signature: bytes  # DER ECDSA over simple_signing_payload
    attestation_envelope: dict[str, Any]  # the DSSE envelope of the .att layer
    attestation_bundle: dict[str, Any]  # the same envelope as a Sigstore bundle v0.3
    key_id: str

    @property
    def reference(self) -> str:
        """``repository@sha256:<hex>``: what to deploy and what an admission check sees."""
        return f"{self.repository}@sha256:{self.manifest_digest}"

    def to_json(self) -> dict[str, Any]:
        return {
            "layout": str(self.layout),
            "reference": self.reference,
            "manifestDigest": f"sha256:{self.manifest_digest}",
            "configDigest": f"sha256:{self.config_digest}",
            "signatureTag": self.signature_tag,
            "attestationTag": self.attestation_tag,
            "keyId": self.key_id,
        }


def check_repository(repository: str, where: str = "repository") -> str:
    """A repository reference without tag or digest (``registry[:port]/path``)."""
    if not isinstance(repository, str) or not _REPOSITORY.fullmatch(repository):
        raise InputError(
            f"{repository!r} is not an image repository (registry/path, no tag or digest)",
            where=where,
            fix="give where the image is served from, e.g. registry.example.com/team/serving",
        )
    return repository


def default_layout_path(source: Path) -> Path:
    """Where :func:`sign_image` writes by default: ``<image>.cosign`` beside the image."""
    return source.with_name(f"{source.name}.cosign")


def _attestation_statement(
    scan_statement: Mapping[str, Any], image: OciImage, repository: str, where: str
) -> dict[str, Any]:
    """The scan's predicate re-issued about ``repository`` at the manifest digest, after
    checking it is a scan of this image (config digest) that passed."""
    predicate_type = scan_statement.get("predicateType")
    predicate = scan_statement.get("predicate")
    if predicate_type not in SCAN_PREDICATES or not isinstance(predicate, Mapping):
        raise _refused(
            f"the scan statement has predicate type {predicate_type!r}, not one of "
            f"{list(SCAN_PREDICATES)}",
            ImageSigningRefusal.SCAN_NOT_OF_THIS_IMAGE,
            where,
        )
    if not has_subject(scan_statement, image.config_digest):
        raise _refused(
            f"the scan statement is not about this image (config sha256:"
            f"{image.config_digest[:12]}…): it names "
            f"{[s.get('digest') for s in scan_statement.get('subject', [])]}",
            ImageSigningRefusal.SCAN_NOT_OF_THIS_IMAGE,
            where,
        )
    verdict = predicate.get("verdict")
    if not isinstance(verdict, Mapping) or verdict.get("passed") is not True:
        raise _refused(
            "the image scan did not pass: the image is not signed for admission",
            ImageSigningRefusal.SCAN_NOT_PASSED,
            where,
        )
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": repository, "digest": {"sha256": image.manifest_digest}}],
        "predicateType": predicate_type,
        "predicate": dict(predicate),
    }


def _sig_image(
    layer: bytes, media_type: str, annotations: Mapping[str, str]
) -> tuple[bytes, bytes]:
    """(config, manifest) of a cosign signature/attestation image with one layer."""
    config = _canonical(
        {
            "architecture": "",
            "config": {},
            "created": "0001-01-01T00:00:00Z",
            "history": [{"created": "0001-01-01T00:00:00Z"}],
            "os": "",
            "rootfs": {"type": "layers", "diff_ids": [f"sha256:{sha256_bytes(layer)}"]},
        }
    )
    manifest = _canonical(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST_MEDIA_TYPE,
            "config": _descriptor(OCI_CONFIG_MEDIA_TYPE, config),
            "layers": [_descriptor(media_type, layer, annotations=dict(annotations))],
        }
    )
    return config, manifest


def sign_image(
    source: Path,
    *,
    repository: str,
    signer: Signer,
    scan_statement: Mapping[str, Any],
    out_dir: Path | None = None,
    signed_at: dt.datetime | None = None,
) -> ImageSignatures:
    """Sign the image at ``source`` (docker-archive or OCI layout) and attest its scan.

    ``repository``: where the image is served from (``registry/path``, no tag): the
    signature's ``docker-reference`` and the attestation's subject name. ``signer``: the
    attestor's (``KeyDirectory.signer("attestor")``). ``scan_statement``: the in-toto Statement
    :func:`~secmlops.controls.image_scan.image_scan_statement` wrote for this image (subject:
    its config digest) with a passing verdict; anything else is refused
    (``SCAN_NOT_OF_THIS_IMAGE``, ``SCAN_NOT_PASSED``). Writes the layout described in the
    module docstring at ``out_dir`` (default :func:`default_layout_path`), which must not exist.
    """
    where = str(source)
    check_repository(repository)
    out = out_dir or default_layout_path(source)
    if out.exists():
        raise InputError(f"{out} already exists", where=str(out), fix="remove it first")
    image = read_image(source)
    statement = _attestation_statement(scan_statement, image, repository, where)
    when = format_time(signed_at or dt.datetime.now(dt.UTC))
    kid = signer.key_id

    payload = simple_signing_payload(
        repository,
        image.manifest_digest,
        {
            "creator": "secmlops",
            "signedAt": when,
            "configDigest": f"sha256:{image.config_digest}",
            "keyId": kid,
        },
    )
    signature = signer.sign(payload)
    b64_signature = base64.b64encode(signature).decode()

    statement_bytes = _canonical(statement)
    dsse_sig = base64.b64encode(signer.sign(pae(PAYLOAD_TYPE, statement_bytes))).decode()
    envelope = {
        "payload": base64.b64encode(statement_bytes).decode(),
        "payloadType": PAYLOAD_TYPE,
        "signatures": [{"keyid": "", "sig": dsse_sig}],
    }
    envelope_bytes = _canonical(envelope)
    bundle = {
        "mediaType": BUNDLE_MEDIA_TYPE,
        "verificationMaterial": {"publicKey": {"hint": kid}, "tlogEntries": []},
        "dsseEnvelope": envelope,
    }
    bundle_bytes = _canonical(bundle)

    blobs: dict[str, bytes] = image.blobs()
    sig_config, sig_manifest = _sig_image(
        payload, SIMPLE_SIGNING_MEDIA_TYPE, {SIGNATURE_ANNOTATION: b64_signature}
    )
    att_config, att_manifest = _sig_image(
        envelope_bytes,
        DSSE_MEDIA_TYPE,
        {SIGNATURE_ANNOTATION: "", PREDICATE_TYPE_ANNOTATION: str(statement["predicateType"])},
    )
    image_descriptor = _descriptor(OCI_MANIFEST_MEDIA_TYPE, image.manifest)
    referrer_annotations = {
        BUNDLE_CONTENT_ANNOTATION: "dsse-envelope",
        BUNDLE_PREDICATE_ANNOTATION: str(statement["predicateType"]),
        CREATED_ANNOTATION: when,
    }
    referrer = _canonical(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST_MEDIA_TYPE,
            "artifactType": BUNDLE_MEDIA_TYPE,
            "config": _descriptor(EMPTY_MEDIA_TYPE, EMPTY_BLOB),
            "layers": [_descriptor(BUNDLE_MEDIA_TYPE, bundle_bytes)],
            "subject": image_descriptor,
            "annotations": referrer_annotations,
        }
    )
    for blob in (payload, sig_config, sig_manifest, envelope_bytes, att_config, att_manifest):
        blobs[sha256_bytes(blob)] = blob
    for blob in (EMPTY_BLOB, bundle_bytes, referrer):
        blobs[sha256_bytes(blob)] = blob

    image_annotations = {KIND_ANNOTATION: KIND_IMAGE}
    if image.tag:
        image_annotations[REF_NAME_ANNOTATION] = image.tag.rsplit(":", 1)[-1]
    sig_tag, att_tag = signature_tag(image.manifest_digest), attestation_tag(image.manifest_digest)
    index = {
        "schemaVersion": 2,
        "mediaType": INDEX_MEDIA_TYPE,
        "manifests": [
            image_descriptor | {"annotations": image_annotations},
            _descriptor(OCI_MANIFEST_MEDIA_TYPE, sig_manifest)
            | {"annotations": {KIND_ANNOTATION: KIND_SIGS, REF_NAME_ANNOTATION: sig_tag}},
            _descriptor(OCI_MANIFEST_MEDIA_TYPE, att_manifest)
            | {"annotations": {KIND_ANNOTATION: KIND_ATTS, REF_NAME_ANNOTATION: att_tag}},
            _descriptor(OCI_MANIFEST_MEDIA_TYPE, referrer)
            | {"artifactType": BUNDLE_MEDIA_TYPE, "annotations": referrer_annotations},
        ],
    }
    _write_layout(out, blobs, index)
    return ImageSignatures(
        layout=out,
        repository=repository,
        manifest_digest=image.manifest_digest,
        config_digest=image.config_digest,
        signature_tag=sig_tag,
        attestation_tag=att_tag,
        simple_signing_payload=payload,
        signature=signature,
        attestation_envelope=envelope,
        attestation_bundle=bundle,
        key_id=kid,
    )


def _write_layout(out: Path, blobs: Mapping[str, bytes], index: Mapping[str, Any]) -> None:
    """Write an OCI layout at ``out`` whole or not at all (temp dir + rename)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        blob_dir = tmp / "blobs" / "sha256"
        blob_dir.mkdir(parents=True)
        for digest, data in sorted(blobs.items()):
            (blob_dir / digest).write_bytes(data)
        (tmp / "oci-layout").write_bytes(_canonical({"imageLayoutVersion": "1.0.0"}))
        (tmp / "index.json").write_bytes(_canonical(index))
        tmp.chmod(0o755)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def detached_files(layout: Path) -> dict[str, bytes]:
    """The files of a signed layout to keep with a model version: ``{relative path: bytes}``.

    Everything :func:`sign_image` wrote except the image's layers (the image itself lives in
    the container registry): ``oci-layout``, ``index.json``, the image's manifest and config,
    and the signature, attestation and bundle manifests with their blobs. Every blob is read
    against its digest. :func:`verify_image_signatures` with ``detached=True`` checks such a
    layout; the image manifest in it still binds the manifest digest to the config digest
    (the image ID the scan names).
    """
    where = str(layout)
    manifests = _read_index(layout, where)
    image_entry = _image_entry(manifests, layout, where)
    files: dict[str, bytes] = {}
    for name in ("oci-layout", "index.json"):
        try:
            files[name] = (layout / name).read_bytes()
        except OSError as exc:
            raise _refused(
                f"{layout / name} is unreadable: {exc.strerror}",
                ImageSigningRefusal.MALFORMED_SIGNATURES,
                where,
            ) from exc
    for entry in manifests:
        raw = _read_blob(layout, entry.get("digest"), where)
        files[f"blobs/sha256/{_hex_of(entry.get('digest'), where)}"] = raw
        manifest = _json(raw, "a manifest", where)
        try:
            wanted = [manifest["config"]]
            if entry is not image_entry:
                wanted += list(manifest["layers"])
            for desc in wanted:
                files[f"blobs/sha256/{_hex_of(desc['digest'], where)}"] = _read_blob(
                    layout, desc["digest"], where
                )
        except (KeyError, TypeError) as exc:
            raise _refused(
                f"malformed manifest in {layout}: {exc!r}",
                ImageSigningRefusal.MALFORMED_SIGNATURES,
                where,
            ) from exc
    return files


# --- verification ---------------------------------------------------------------------------


@dataclass(frozen=True)
class VerifiedImageSignatures:
    """What :func:`verify_image_signatures` checked."""

    repository: str  # the docker-reference the signature names
    manifest_digest: str
    config_digest: str
    signer: str  # the trusted key's name
    key_id: str
    attestation: dict[str, Any]  # the verified in-toto Statement (subject: manifest digest)

    @property
    def predicate_type(self) -> str:
        return str(self.attestation["predicateType"])


def _refused(message: str, reason: ImageSigningRefusal, where: str) -> ControlRefused:
    return ControlRefused(message, where=where, reason=reason)


def _tagged(manifests: list[dict[str, Any]], tag: str) -> dict[str, Any] | None:
    found = [m for m in manifests if _annotations(m).get(REF_NAME_ANNOTATION) == tag]
    return found[0] if len(found) == 1 else None


def _single_layer(
    layout: Path, entry: Mapping[str, Any], media_type: str, where: str
) -> tuple[bytes, dict[str, str]]:
    manifest = _json(_read_blob(layout, entry.get("digest"), where), "a manifest", where)
    layers = manifest.get("layers") if isinstance(manifest, dict) else None
    if not isinstance(layers, list) or len(layers) != 1 or not isinstance(layers[0], dict):
        raise _refused(
            f"{where}: expected one {media_type} layer",
            ImageSigningRefusal.MALFORMED_SIGNATURES,
            where,
        )
    layer = layers[0]
    if layer.get("mediaType") != media_type:
        raise _refused(
            f"{where}: layer media type {layer.get('mediaType')!r}, expected {media_type}",
            ImageSigningRefusal.MALFORMED_SIGNATURES,
            where,
        )
    return _read_blob(layout, layer.get("digest"), where), _annotations(layer)


def _verifying_key(
    trusted: TrustedKeys, signature: bytes, message: bytes
) -> tuple[str, str] | None:
    """(name, key id) of the trusted key the signature verifies with, else ``None``."""
    for kid, (name, key) in trusted.keys.items():
        try:
            key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            continue
        return name, kid
    return None


def _check_simple_signing(
    payload_bytes: bytes,
    annotations: Mapping[str, str],
    trusted: TrustedKeys,
    manifest_digest: str,
    repository: str | None,
    where: str,
) -> tuple[str, str, str]:
    """(docker-reference, signer name, key id) of a verified simple signing payload."""
    try:
        signature = base64.b64decode(annotations.get(SIGNATURE_ANNOTATION, ""), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _refused(
            f"the {SIGNATURE_ANNOTATION} annotation is not base64",
            ImageSigningRefusal.MALFORMED_SIGNATURES,
            where,
        ) from exc
    if not signature:
        raise _refused(
            f"the signature layer has no {SIGNATURE_ANNOTATION} annotation",
            ImageSigningRefusal.MISSING_SIGNATURE,
            where,
        )
    found = _verifying_key(trusted, signature, payload_bytes)
    if found is None:
        raise _refused(
            "the image signature verifies with no trusted key (tampered, or another signer)",
            ImageSigningRefusal.BAD_SIGNATURE,
            where,
        )
    name, kid = found
    payload = _json(payload_bytes, "the simple signing payload", where)
    try:
        critical = payload["critical"]
        kind = critical["type"]
        digest = critical["image"]["docker-manifest-digest"]
        reference = critical["identity"]["docker-reference"]
        optional = payload.get("optional") or {}
    except (KeyError, TypeError) as exc:
        raise _refused(
            f"the simple signing payload lacks {exc}",
            ImageSigningRefusal.MALFORMED_SIGNATURES,
            where,
        ) from exc
    if kind != COSIGN_SIGNATURE_TYPE:
        raise _refused(
            f"the signed payload is a {kind!r}, not a {COSIGN_SIGNATURE_TYPE!r}",
            ImageSigningRefusal.MALFORMED_SIGNATURES,
            where,
        )
    if digest != f"sha256:{manifest_digest}":
        raise _refused(
            f"the signature is for {digest}, not the image's manifest sha256:{manifest_digest}",
            ImageSigningRefusal.WRONG_DIGEST,
            where,
        )
    if repository is not None and reference != repository:
        raise _refused(
            f"the signature names repository {reference!r}, not {repository!r}",
            ImageSigningRefusal.WRONG_REFERENCE,
            where,
        )
    window = trusted.window(kid)
    if window:
        when = parse_time(optional.get("signedAt")) if isinstance(optional, dict) else None
        if when is None or not window.contains(when):
            raise _refused(
                f"{name} key {kid[:16]}… was not valid when the image was signed "
                f"({optional.get('signedAt') if isinstance(optional, dict) else None}; key "
                f"valid {window.describe()})",
                ImageSigningRefusal.KEY_NOT_VALID,
                where,
            )
    return str(reference), name, kid


def _check_attestation(
    envelope_bytes: bytes,
    annotations: Mapping[str, str],
    trusted: TrustedKeys,
    manifest_digest: str,
    repository: str | None,
    where: str,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(envelope, verified statement) of the ``.att`` layer."""
    envelope = _json(envelope_bytes, "the attestation envelope", where)
    if not isinstance(envelope, dict):
        raise _refused(
            "the attestation is not a DSSE envelope",
            ImageSigningRefusal.MALFORMED_SIGNATURES,
            where,
        )
    try:
        payload = base64.b64decode(envelope["payload"], validate=True)
        signatures = [base64.b64decode(s["sig"], validate=True) for s in envelope["signatures"]]
        payload_type = envelope["payloadType"]
    except (KeyError, TypeError, ValueError, binascii.Error) as exc:
        raise _refused(
            f"malformed DSSE envelope: {exc!r}", ImageSigningRefusal.MALFORMED_SIGNATURES, where
        ) from exc
    if payload_type != PAYLOAD_TYPE:
        raise _refused(
            f"DSSE payload type {payload_type!r}, expected {PAYLOAD_TYPE}",
            ImageSigningRefusal.MALFORMED_SIGNATURES,
            where,
        )
    message = pae(payload_type, payload)
    if not any(_verifying_key(trusted, sig, message) for sig in signatures):
        raise _refused(
            "the attestation verifies with no trusted key (tampered, or another signer)",
            ImageSigningRefusal.BAD_SIGNATURE,
            where,
        )
    statement = _json(payload, "the attested statement", where)
    if not isinstance(statement, dict) or statement.get("_type") != STATEMENT_TYPE:
        raise _refused(
            "the attested payload is not an in-toto Statement v1",
            ImageSigningRefusal.MALFORMED_SIGNATURES,
            where,
        )
    if not has_subject(statement, manifest_digest, repository):
        raise _refused(
            f"the attestation is not about {repository or 'the image'} at manifest "
            f"sha256:{manifest_digest[:12]}…",
            ImageSigningRefusal.WRONG_DIGEST,
            where,
        )
    if annotations.get(PREDICATE_TYPE_ANNOTATION) != statement.get("predicateType"):
        raise _refused(
            "the attestation layer's predicateType annotation differs from the statement's",
            ImageSigningRefusal.MALFORMED_SIGNATURES,
            where,
        )
    return envelope, statement


def verify_image_signatures(
    layout: Path,
    trusted: TrustedKeys,
    *,
    manifest_digest: str | None = None,
    repository: str | None = None,
    predicate_type: str = PREDICATE_VULNS,
    config_digest: str | None = None,
    at: dt.datetime | None = None,
    detached: bool = False,
) -> VerifiedImageSignatures:
    """Verify the signature and the scan attestation in a layout :func:`sign_image` wrote.

    ``trusted``: the keys whose signatures count (the trust root's attestor keys); an empty
    set is ``InputError``. ``manifest_digest`` (sha256 hex, or ``sha256:<hex>``): the image the
    caller means to admit; the layout's image must be it. ``config_digest``: likewise for the
    image ID (what a scan names). ``repository``: the signature's docker-reference and the
    attestation's subject name must equal it. ``at``: when the signing happened as the caller
    knows it (the release manifest's time): only keys valid then count. ``detached``: the
    layout holds no image layers (:func:`detached_files`). Every blob read is hashed against
    its digest. Refusals are ``ControlRefused`` with an :class:`ImageSigningRefusal`.
    """
    where = str(layout)
    if not trusted:
        raise InputError(
            "no trusted keys to verify the image signature with",
            where=where,
            fix="list the attestor's public key in the trust root",
        )
    if repository is not None:
        check_repository(repository)
    if at is not None:
        trusted = _valid_at(trusted, at, where)
    image = _image_from_layout(layout, where, with_layers=not detached)
    if config_digest is not None:
        wanted_config = config_digest.removeprefix("sha256:")
        if wanted_config != image.config_digest:
            raise _refused(
                f"the layout's image has config (image ID) sha256:{image.config_digest[:12]}…, "
                f"not the expected sha256:{wanted_config[:12]}…",
                ImageSigningRefusal.WRONG_DIGEST,
                where,
            )
    if manifest_digest is not None:
        wanted = manifest_digest.removeprefix("sha256:")
        if wanted != image.manifest_digest:
            raise _refused(
                f"the layout's image is manifest sha256:{image.manifest_digest[:12]}…, not the "
                f"expected sha256:{wanted[:12]}…",
                ImageSigningRefusal.WRONG_DIGEST,
                where,
            )
    manifests = _read_index(layout, where)
    sig_entry = _tagged(manifests, signature_tag(image.manifest_digest))
    att_entry = _tagged(manifests, attestation_tag(image.manifest_digest))
    if sig_entry is None or att_entry is None:
        missing = [
            t
            for t, e in (
                (signature_tag(image.manifest_digest), sig_entry),
                (attestation_tag(image.manifest_digest), att_entry),
            )
            if e is None
        ]
        raise _refused(
            f"no {' or '.join(missing)} for the image's manifest digest in {layout}",
            ImageSigningRefusal.MISSING_SIGNATURE,
            where,
        )
    payload, sig_annotations = _single_layer(layout, sig_entry, SIMPLE_SIGNING_MEDIA_TYPE, where)
    reference, name, kid = _check_simple_signing(
        payload, sig_annotations, trusted, image.manifest_digest, repository, where
    )
    envelope_bytes, att_annotations = _single_layer(layout, att_entry, DSSE_MEDIA_TYPE, where)
    envelope, statement = _check_attestation(
        envelope_bytes, att_annotations, trusted, image.manifest_digest, reference, where
    )
    if statement.get("predicateType") != predicate_type:
        raise _refused(
            f"the attestation's predicate type is {statement.get('predicateType')!r}, not "
            f"{predicate_type!r}",
            ImageSigningRefusal.MISSING_SIGNATURE,
            where,
        )
    _check_bundle_referrer(layout, manifests, image, envelope, trusted, where, at)
    return VerifiedImageSignatures(
        repository=reference,
        manifest_digest=image.manifest_digest,
        config_digest=image.config_digest,
        signer=name,
        key_id=kid,
        attestation=statement,
    )


def _valid_at(trusted: TrustedKeys, at: dt.datetime, where: str) -> TrustedKeys:
    """The keys of ``trusted`` whose validity window contains ``at``."""
    valid = TrustedKeys()
    for kid, (name, key) in trusted.keys.items():
        window = trusted.window(kid)
        if window.contains(at):
            valid.add(name, key, window if window else None)
    if not valid:
        raise _refused(
            f"no trusted key was valid at {format_time(at)}, when the image was signed",
            ImageSigningRefusal.KEY_NOT_VALID,
            where,
        )
    return valid


def _check_bundle_referrer(
    layout: Path,
    manifests: list[dict[str, Any]],
    image: OciImage,
    envelope: Mapping[str, Any],
    trusted: TrustedKeys,
    where: str,
    at: dt.datetime | None = None,
) -> None:
    """The Sigstore bundle referrer: its subject is the image, it verifies, and it holds the
    same envelope as the ``.att`` layer."""
    referrers = [m for m in manifests if m.get("artifactType") == BUNDLE_MEDIA_TYPE]
    if len(referrers) != 1:
        raise _refused(
            f"{len(referrers)} Sigstore bundle referrers in {layout}, expected one",
            ImageSigningRefusal.MISSING_SIGNATURE,
            where,
        )
    manifest = _json(_read_blob(layout, referrers[0].get("digest"), where), "a referrer", where)
    subject = manifest.get("subject") if isinstance(manifest, dict) else None
    if not isinstance(subject, dict) or subject.get("digest") != f"sha256:{image.manifest_digest}":
        raise _refused(
            "the Sigstore bundle referrer's subject is not the image manifest",
            ImageSigningRefusal.WRONG_DIGEST,
            where,
        )
    bundle_bytes, _ = _single_layer(layout, referrers[0], BUNDLE_MEDIA_TYPE, where)
    bundle = _json(bundle_bytes, "the Sigstore bundle", where)
    if not isinstance(bundle, dict):
        raise _refused(
            "the Sigstore bundle is not an object", ImageSigningRefusal.MALFORMED_SIGNATURES, where
        )
    try:
        verify_bundle(bundle, trusted, where=f"{where} (bundle)", at=at)
    except ControlRefused as exc:
        raise _refused(
            f"the Sigstore bundle does not verify: {exc.message}",
            ImageSigningRefusal.BAD_SIGNATURE,
            where,
        ) from exc
    if bundle.get("dsseEnvelope") != envelope:
        raise _refused(
            "the Sigstore bundle holds another envelope than the .att attestation",
            ImageSigningRefusal.MALFORMED_SIGNATURES,
            where,
        )


__all__ = [
    "IMAGE_SIGNATURE_EVIDENCE",
    "ImageSignatures",
    "ImageSigningRefusal",
    "VerifiedImageSignatures",
    "attestation_tag",
    "check_repository",
    "default_layout_path",
    "detached_files",
    "read_image",
    "sign_image",
    "signature_tag",
    "simple_signing_payload",
    "verify_image_signatures",
]
