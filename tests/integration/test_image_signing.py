"""Issue 10, "Sign the image too": cosign-format signature and scan attestation of the serving
image, keyed by its registry manifest digest, written as an OCI layout, checked offline.

Real images (build_serving_image), the real trivy scan for the attested predicate, a real
attestor key (KeyDirectory), and the ``sigstore`` package's own DSSE verifier and bundle
model for the Sigstore bundle. sigstore 4.x's public ``Verifier`` accepts only bundles with a
Fulcio certificate and a Rekor entry (``sigstore.models.Bundle`` refuses a public-key bundle,
asserted below), so the key-signed bundle is checked with ``sigstore_models.bundle.v1.Bundle``
(the bundle schema) and ``sigstore.dsse`` (its DSSE verification with a given key).
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from secmlops.controls.image_scan import (
    ScanPolicy,
    enforce_scan_policy,
    image_scan_statement,
    scan_image,
)
from secmlops.controls.image_signing import (
    DSSE_MEDIA_TYPE,
    KIND_ATTS,
    KIND_IMAGE,
    KIND_SIGS,
    SIGNATURE_ANNOTATION,
    SIMPLE_SIGNING_MEDIA_TYPE,
    ImageSignatures,
    ImageSigningRefusal,
    sign_image,
    verify_image_signatures,
)
from secmlops.demo.serving_image import (
    ServingImage,
    build_serving_image,
    image_manifest_digest,
    write_oci_layout,
)
from secmlops.demo.trivy_db import seed_demo_trivy_db
from secmlops.errors import ControlRefused, InputError
from secmlops.evidence.keys import KeyDirectory
from secmlops.evidence.statements import (
    BUNDLE_MEDIA_TYPE,
    PAYLOAD_TYPE,
    PREDICATE_VULNS,
    TrustedKeys,
    generate_keypair,
    load_public_key,
)

pytestmark = pytest.mark.integration

LOCK = Path(__file__).resolve().parents[2] / "uv.lock"
POLICY = ScanPolicy(unsafe_allow_curated_db=True)  # the demo DB, as the demo opts in
REPO = "registry.example.com/secmlops/serving"


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> KeyDirectory:
    directory = KeyDirectory(tmp_path_factory.mktemp("keys"))
    directory.ensure()
    return directory


@pytest.fixture(scope="module")
def trusted(keys: KeyDirectory) -> TrustedKeys:
    return keys.trust_root().trusted("attestor")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("trivy-cache")
    seed_demo_trivy_db(path)
    return path


def _scanned(image: ServingImage, cache_dir: Path) -> dict[str, Any]:
    result = scan_image(image.path, cache_dir=cache_dir, policy=POLICY)
    return image_scan_statement(result, enforce_scan_policy(result, POLICY))


@pytest.fixture(scope="module")
def images(
    tmp_path_factory: pytest.TempPathFactory, cache_dir: Path
) -> dict[str, tuple[ServingImage, dict[str, Any]]]:
    """Two different clean images, each with its real scan statement."""
    root = tmp_path_factory.mktemp("img")
    a = build_serving_image(root / "a.tar", lock_file=LOCK)
    b = build_serving_image(root / "b.tar", lock_file=LOCK, extra_files={"srv/VERSION": b"2\n"})
    return {"a": (a, _scanned(a, cache_dir)), "b": (b, _scanned(b, cache_dir))}


@pytest.fixture(scope="module")
def signed(
    tmp_path_factory: pytest.TempPathFactory,
    keys: KeyDirectory,
    images: dict[str, tuple[ServingImage, dict[str, Any]]],
) -> ImageSignatures:
    image, statement = images["a"]
    out = tmp_path_factory.mktemp("signed") / "a.tar.cosign"
    return sign_image(
        image.path,
        repository=REPO,
        signer=keys.signer("attestor"),
        scan_statement=statement,
        out_dir=out,
    )


def _index(layout: Path) -> list[dict[str, Any]]:
    manifests: list[dict[str, Any]] = json.loads((layout / "index.json").read_bytes())["manifests"]
    return manifests


def _blob(layout: Path, digest: str) -> bytes:
    return (layout / "blobs" / "sha256" / digest.removeprefix("sha256:")).read_bytes()


def _tagged_layer(layout: Path, tag: str) -> tuple[dict[str, Any], bytes]:
    (entry,) = [
        m
        for m in _index(layout)
        if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag
    ]
    (layer,) = json.loads(_blob(layout, entry["digest"]))["layers"]
    return layer, _blob(layout, layer["digest"])


def _copy(layout: Path, to: Path) -> Path:
    shutil.copytree(layout, to)
    return to


def test_signature_names_the_registry_manifest_digest_not_the_image_id(
    signed: ImageSignatures,
    images: dict[str, tuple[ServingImage, dict[str, Any]]],
    keys: KeyDirectory,
    tmp_path: Path,
) -> None:
    image, _ = images["a"]
    oci = write_oci_layout(image, tmp_path / "oci")
    (entry,) = _index(oci)
    registry_digest = entry["digest"].removeprefix("sha256:")

    assert signed.manifest_digest == registry_digest == image_manifest_digest(image)
    assert signed.config_digest == image.image_digest != signed.manifest_digest
    assert signed.reference == f"{REPO}@sha256:{registry_digest}"

    # The .sig layer, checked with cryptography alone: cosign's simple signing payload.
    layer, payload = _tagged_layer(signed.layout, f"sha256-{registry_digest}.sig")
    assert layer["mediaType"] == SIMPLE_SIGNING_MEDIA_TYPE
    public = load_public_key(keys.public("attestor"))
    public.verify(
        base64.b64decode(layer["annotations"][SIGNATURE_ANNOTATION]),
        payload,
        ec.ECDSA(hashes.SHA256()),
    )
    critical = json.loads(payload)["critical"]
    assert critical == {
        "identity": {"docker-reference": REPO},
        "image": {"docker-manifest-digest": f"sha256:{registry_digest}"},
        "type": "cosign container image signature",
    }


def test_layout_is_shaped_like_cosign_save(signed: ImageSignatures) -> None:
    entries = _index(signed.layout)
    kinds = [m.get("annotations", {}).get("kind") for m in entries]
    assert kinds[:3] == [KIND_IMAGE, KIND_SIGS, KIND_ATTS]
    # The image inside is the same manifest (same registry digest) and every blob is there.
    assert entries[0]["digest"] == f"sha256:{signed.manifest_digest}"
    for entry in entries:
        manifest = json.loads(_blob(signed.layout, entry["digest"]))
        for desc in [manifest["config"], *manifest["layers"]]:
            assert (signed.layout / "blobs" / "sha256" / desc["digest"][7:]).is_file()
    att_layer, envelope = _tagged_layer(signed.layout, signed.attestation_tag)
    assert att_layer["mediaType"] == DSSE_MEDIA_TYPE
    assert att_layer["annotations"]["predicateType"] == PREDICATE_VULNS
    assert json.loads(envelope)["payloadType"] == PAYLOAD_TYPE
    referrer = json.loads(_blob(signed.layout, entries[3]["digest"]))
    assert referrer["artifactType"] == BUNDLE_MEDIA_TYPE
    assert referrer["subject"]["digest"] == f"sha256:{signed.manifest_digest}"


def test_bundle_verifies_with_sigstore_and_names_the_manifest_digest(
    signed: ImageSignatures, keys: KeyDirectory
) -> None:
    """The referrer's Sigstore bundle and the .att envelope, checked with ``sigstore``."""
    from sigstore.dsse import Envelope, Statement
    from sigstore.dsse import _verify as dsse_verify
    from sigstore.errors import VerificationError
    from sigstore.hashes import Hashed
    from sigstore.models import Bundle as VerifierBundle
    from sigstore.models import InvalidBundle
    from sigstore_models.bundle.v1 import Bundle
    from sigstore_models.common.v1 import HashAlgorithm
    from sigstore_models.intoto import Envelope as EnvelopeModel

    entries = _index(signed.layout)
    (referrer_entry,) = [m for m in entries if m.get("artifactType") == BUNDLE_MEDIA_TYPE]
    (layer,) = json.loads(_blob(signed.layout, referrer_entry["digest"]))["layers"]
    bundle_json = _blob(signed.layout, layer["digest"])
    public = load_public_key(keys.public("attestor"))
    manifest = Hashed(
        algorithm=HashAlgorithm.SHA2_256, digest=bytes.fromhex(signed.manifest_digest)
    )
    config = Hashed(algorithm=HashAlgorithm.SHA2_256, digest=bytes.fromhex(signed.config_digest))

    bundle = Bundle.from_json(bundle_json)
    assert bundle.media_type == BUNDLE_MEDIA_TYPE and bundle.dsse_envelope is not None
    assert bundle.verification_material.public_key is not None
    payload = dsse_verify(public, Envelope(bundle.dsse_envelope))
    statement = Statement(payload)
    assert statement._matches_digest(manifest)
    assert not statement._matches_digest(config)

    # The .att layer's bare envelope is the same signed statement.
    _, att = _tagged_layer(signed.layout, signed.attestation_tag)
    assert dsse_verify(public, Envelope(EnvelopeModel.from_json(att))) == payload

    # A wrong key does not verify it.
    other = ec.generate_private_key(ec.SECP256R1()).public_key()
    with pytest.raises(VerificationError):
        dsse_verify(other, Envelope(bundle.dsse_envelope))
    # sigstore's Verifier path needs a Fulcio certificate + Rekor entry: key bundles are
    # refused by its model (the reason the checks above use sigstore.dsse directly).
    with pytest.raises(InvalidBundle, match="certificate"):
        VerifierBundle.from_json(bundle_json)


def test_our_verifier_accepts_it_and_returns_the_attested_scan(
    signed: ImageSignatures, trusted: TrustedKeys
) -> None:
    verified = verify_image_signatures(
        signed.layout, trusted, manifest_digest=f"sha256:{signed.manifest_digest}", repository=REPO
    )
    assert verified.manifest_digest == signed.manifest_digest
    assert verified.repository == REPO and verified.signer == "attestor"
    assert verified.predicate_type == PREDICATE_VULNS
    predicate = verified.attestation["predicate"]
    assert predicate["image"]["imageId"] == f"sha256:{signed.config_digest}"
    assert predicate["verdict"]["passed"] is True


def test_signing_an_oci_layout_gives_the_same_manifest_digest(
    signed: ImageSignatures,
    images: dict[str, tuple[ServingImage, dict[str, Any]]],
    keys: KeyDirectory,
    trusted: TrustedKeys,
    tmp_path: Path,
) -> None:
    image, statement = images["a"]
    layout = write_oci_layout(image, tmp_path / "oci")
    again = sign_image(
        layout, repository=REPO, signer=keys.signer("attestor"), scan_statement=statement
    )
    assert again.layout == tmp_path / "oci.cosign"
    assert again.manifest_digest == signed.manifest_digest
    verify_image_signatures(again.layout, trusted, manifest_digest=signed.manifest_digest)


def test_refused_with_an_untrusted_key(signed: ImageSignatures, tmp_path: Path) -> None:
    generate_keypair(tmp_path / "other.pem", tmp_path / "other.pub")
    other = TrustedKeys.from_files([tmp_path / "other.pub"])
    with pytest.raises(ControlRefused) as err:
        verify_image_signatures(signed.layout, other)
    assert err.value.reason is ImageSigningRefusal.BAD_SIGNATURE


def test_refused_for_another_repository_or_another_image(
    signed: ImageSignatures,
    images: dict[str, tuple[ServingImage, dict[str, Any]]],
    trusted: TrustedKeys,
) -> None:
    with pytest.raises(ControlRefused) as err:
        verify_image_signatures(signed.layout, trusted, repository="registry.example.com/evil")
    assert err.value.reason is ImageSigningRefusal.WRONG_REFERENCE
    other_digest = image_manifest_digest(images["b"][0])
    with pytest.raises(ControlRefused) as err:
        verify_image_signatures(signed.layout, trusted, manifest_digest=other_digest)
    assert err.value.reason is ImageSigningRefusal.WRONG_DIGEST


def test_tampered_payload_is_refused(
    signed: ImageSignatures, trusted: TrustedKeys, tmp_path: Path
) -> None:
    layout = _copy(signed.layout, tmp_path / "copy")
    layer, payload = _tagged_layer(layout, signed.signature_tag)
    (layout / "blobs" / "sha256" / layer["digest"][7:]).write_bytes(
        payload.replace(b"secmlops/serving", b"secmlops/servinG")
    )
    with pytest.raises(ControlRefused) as err:
        verify_image_signatures(layout, trusted)
    assert err.value.reason is ImageSigningRefusal.BLOB_DIGEST_MISMATCH


def test_rewritten_and_rehashed_payload_is_refused(
    signed: ImageSignatures, trusted: TrustedKeys, tmp_path: Path
) -> None:
    """A payload rewritten to another repository, every digest recomputed: the signature
    (over the original bytes) no longer verifies."""
    layout = _copy(signed.layout, tmp_path / "copy")
    index = json.loads((layout / "index.json").read_bytes())
    (entry,) = [m for m in index["manifests"] if m["annotations"].get("kind") == KIND_SIGS]
    manifest = json.loads(_blob(layout, entry["digest"]))
    payload = _blob(layout, manifest["layers"][0]["digest"])
    forged = payload.replace(REPO.encode(), b"registry.example.com/evil")

    def put(data: bytes) -> dict[str, Any]:
        digest = hashlib.sha256(data).hexdigest()
        (layout / "blobs" / "sha256" / digest).write_bytes(data)
        return {"digest": f"sha256:{digest}", "size": len(data)}

    manifest["layers"][0] |= put(forged)
    entry |= put(json.dumps(manifest).encode())
    (layout / "index.json").write_text(json.dumps(index))
    with pytest.raises(ControlRefused) as err:
        verify_image_signatures(layout, trusted)
    assert err.value.reason is ImageSigningRefusal.BAD_SIGNATURE


def test_signature_of_one_image_does_not_admit_another(
    signed: ImageSignatures,
    images: dict[str, tuple[ServingImage, dict[str, Any]]],
    keys: KeyDirectory,
    trusted: TrustedKeys,
    tmp_path: Path,
) -> None:
    """Image A's valid .sig, .att and bundle copied under image B's tags: B is refused."""
    b, b_statement = images["b"]
    forged = sign_image(
        b.path,
        repository=REPO,
        signer=keys.signer("attestor"),
        scan_statement=b_statement,
        out_dir=tmp_path / "b.cosign",
    )
    index = json.loads((forged.layout / "index.json").read_bytes())
    a_entries = _index(signed.layout)
    index["manifests"][1:] = [
        m | {"annotations": m["annotations"] | {"org.opencontainers.image.ref.name": tag}}
        for m, tag in zip(
            a_entries[1:3], (forged.signature_tag, forged.attestation_tag), strict=True
        )
    ] + a_entries[3:]
    for blob in (signed.layout / "blobs" / "sha256").iterdir():
        shutil.copy(blob, forged.layout / "blobs" / "sha256" / blob.name)
    (forged.layout / "index.json").write_text(json.dumps(index))
    with pytest.raises(ControlRefused) as err:
        verify_image_signatures(forged.layout, trusted)
    assert err.value.reason is ImageSigningRefusal.WRONG_DIGEST


def test_missing_attestation_is_refused(
    signed: ImageSignatures, trusted: TrustedKeys, tmp_path: Path
) -> None:
    layout = _copy(signed.layout, tmp_path / "copy")
    index = json.loads((layout / "index.json").read_bytes())
    index["manifests"] = [
        m for m in index["manifests"] if m.get("annotations", {}).get("kind") != KIND_ATTS
    ]
    (layout / "index.json").write_text(json.dumps(index))
    with pytest.raises(ControlRefused) as err:
        verify_image_signatures(layout, trusted)
    assert err.value.reason is ImageSigningRefusal.MISSING_SIGNATURE


def test_scan_of_another_image_or_a_failed_scan_is_not_signed(
    images: dict[str, tuple[ServingImage, dict[str, Any]]], keys: KeyDirectory, tmp_path: Path
) -> None:
    a, a_statement = images["a"]
    _, b_statement = images["b"]
    signer = keys.signer("attestor")
    with pytest.raises(ControlRefused) as err:
        sign_image(
            a.path,
            repository=REPO,
            signer=signer,
            scan_statement=b_statement,
            out_dir=tmp_path / "x",
        )
    assert err.value.reason is ImageSigningRefusal.SCAN_NOT_OF_THIS_IMAGE
    failed = json.loads(json.dumps(a_statement))
    failed["predicate"]["verdict"]["passed"] = False
    with pytest.raises(ControlRefused) as err:
        sign_image(
            a.path, repository=REPO, signer=signer, scan_statement=failed, out_dir=tmp_path / "y"
        )
    assert err.value.reason is ImageSigningRefusal.SCAN_NOT_PASSED
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_bad_inputs(
    signed: ImageSignatures,
    images: dict[str, tuple[ServingImage, dict[str, Any]]],
    keys: KeyDirectory,
    tmp_path: Path,
) -> None:
    a, statement = images["a"]
    signer = keys.signer("attestor")
    with pytest.raises(InputError, match="repository"):
        sign_image(
            a.path,
            repository=f"{REPO}:demo",
            signer=signer,
            scan_statement=statement,
            out_dir=tmp_path / "x",
        )
    with pytest.raises(InputError, match="already exists"):
        sign_image(
            a.path, repository=REPO, signer=signer, scan_statement=statement, out_dir=signed.layout
        )
    with pytest.raises(InputError, match="does not exist"):
        sign_image(tmp_path / "nope.tar", repository=REPO, signer=signer, scan_statement=statement)
    with pytest.raises(InputError, match="no trusted keys"):
        verify_image_signatures(signed.layout, TrustedKeys())
