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
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from secmlops import gate as gate_module
from secmlops import release as release_module
from secmlops.catalogue import GateRefusal
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
    read_image,
    sign_image,
    verify_image_signatures,
)
from secmlops.controls.model_scan import model_scan_statement, scan_model_files
from secmlops.controls.signing import sign_model
from secmlops.demo.serving_image import (
    ServingImage,
    build_serving_image,
    image_manifest_digest,
    write_oci_layout,
)
from secmlops.demo.trivy_db import seed_demo_trivy_db
from secmlops.errors import ControlRefused, InputError
from secmlops.evidence.keys import KeyDirectory
from secmlops.evidence.predicates import ReleasePredicate
from secmlops.evidence.signers import Signer
from secmlops.evidence.statements import (
    BUNDLE_MEDIA_TYPE,
    PAYLOAD_TYPE,
    PREDICATE_VULNS,
    TrustedKeys,
    generate_keypair,
    load_public_key,
)
from secmlops.gate import GateCheck, GatePolicy, GateReport, verify_release
from secmlops.registry.stores import LocalRegistry, S3Registry
from secmlops.release import ReleaseEvidence, ReleaseInputs, register_release
from secmlops.site import DEMO_IMAGE_REPOSITORY, ImageSource
from tests.integration.deploy_world import World, make_world
from tests.unit import test_predicates as writers

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


# --- the version in the registry, and the deploy gate (deploy_world registries) -------------

FIXTURE_IMAGE = "ab" * 32  # the image digest the fixture writers (tests/unit) scan


def _about(statement: dict[str, Any], image: ServingImage) -> dict[str, Any]:
    """A fixture writer's statement about ``image`` instead of the fixtures' fake image."""
    swapped: dict[str, Any] = json.loads(
        json.dumps(statement).replace(FIXTURE_IMAGE, image.image_digest)
    )
    return swapped


def _register(
    world: World,
    image: ServingImage,
    *,
    repository: str = DEMO_IMAGE_REPOSITORY,
    signing_image: ServingImage | None = None,
    scan_edit: Callable[[dict[str, Any]], None] | None = None,
    signer: Signer | None = None,
    signed: bool = True,
) -> str:
    """Register a version as :meth:`World.register` does, about the real ``image``, with the
    image signed (by the attestor, for ``repository``) unless ``signed`` is false.
    ``signing_image``: sign another image than the one scanned; ``scan_edit``: attest an
    edited copy of the scan. Both are refused by registration's own check, so a test that
    uses them patches that check out (what a forged, attestor-signed manifest would name)."""
    n = len(world.models.versions()) + 1
    work = Path(tempfile.mkdtemp(dir=world.root, prefix=f"build-{n}-"))
    evidence = ReleaseEvidence(world.keys.signer("attestor"))
    scan = _about(writers._image_scan(), image)
    evidence.add("data-pull", writers._data_pull())
    evidence.add("validation", writers._validation())
    evidence.add("image-scan", scan)
    evidence.add("provenance", _about(writers._provenance(work), image))
    model_dir = work / "train" / "model"
    evidence.add("model-scan", model_scan_statement(scan_model_files(model_dir)))
    signature = work / "model.sig"
    sign_model(model_dir, private_key=world.keys.private("model-signer"), signature=signature)
    layout = None
    if signed:
        target = signing_image or image
        attested = json.loads(json.dumps(scan).replace(image.image_digest, target.image_digest))
        if scan_edit is not None:
            scan_edit(attested)
        layout = sign_image(
            target.path,
            repository=repository,
            signer=signer or world.keys.signer("attestor"),
            scan_statement=attested,
            out_dir=work / "image.cosign",
        ).layout
    inputs = ReleaseInputs(
        dataset={
            "sha256": writers.D,
            "repo": "/r",
            "path": "data/churn.csv",
            "rev": "v1",
            "commit": "1",
        },
        image={"ref": "img.tar", "sha256": image.image_digest},
        metrics={"accuracy": 0.9},
        run=f"r{n}",
        builder="b",
        created_by="test",
        image_signature=layout,
    )
    reg = register_release(
        world.models, model_dir, signature, evidence.bundles, inputs, attestor=evidence.key
    )
    return reg.version


def _stored(world: World, version: str) -> Path:
    """Where the local registry keeps ``version``'s image signature layout."""
    store = world.models.store
    assert isinstance(store, LocalRegistry)
    return store.root / world.models.image_signature_prefix(version)


def _image_check(world: World, version: str, policy: GatePolicy | None = None) -> GateCheck:
    """The gate's ``image-signature`` check for ``version`` (staging; the rest may fail)."""
    try:
        report = verify_release(
            world.models, version, "staging", keys=world.keys, policy=policy or world.policy
        )
    except ControlRefused as exc:
        assert isinstance(exc.result, GateReport), exc
        report = exc.result
    (check,) = [c for c in report.checks if c.name == "image-signature"]
    return check


@pytest.fixture()
def world(tmp_path: Path) -> World:
    return make_world(tmp_path, LocalRegistry(tmp_path / "registry"))


def _unchecked(monkeypatch: pytest.MonkeyPatch) -> None:
    """Registration's own check of the layout, out of the way: what follows is what a
    forged (attestor-signed) release manifest naming that layout gets from the gate."""
    monkeypatch.setattr(release_module, "_check_image_signature", lambda *a, **k: None)


def test_signed_version_stores_the_signatures_without_the_image_and_passes_the_gate(
    world: World, images: dict[str, tuple[ServingImage, dict[str, Any]]]
) -> None:
    image, _ = images["a"]
    version = _register(world, image)
    prefix = world.models.image_signature_prefix(version)
    stored = world.models.store.list_keys(prefix)
    assert f"{prefix}/index.json" in stored
    # The image's layers stay in the container registry: only small blobs are stored.
    layers = read_image(image.path).layers
    layer_keys = {f"{prefix}/blobs/sha256/{hashlib.sha256(b).hexdigest()}" for b in layers}
    assert layers and all(len(b) > 1024 for b in layers)
    assert not layer_keys & set(stored)
    check = _image_check(world, version)
    assert check.passed, check.detail
    assert f"{DEMO_IMAGE_REPOSITORY}@sha256:{image_manifest_digest(image)[:12]}" in check.detail
    world.promote(version, "staging")  # the whole gate passes, image signature included


def test_gate_refuses_a_version_whose_signature_layout_is_missing(
    world: World, images: dict[str, tuple[ServingImage, dict[str, Any]]]
) -> None:
    """Deleting the stored layout (or its index) does not make the check go away: the
    signed release manifest names it."""
    version = _register(world, images["a"][0])
    (_stored(world, version) / "index.json").unlink()
    check = _image_check(world, version)
    assert not check.passed and check.reason is GateRefusal.MISSING_EVIDENCE, check.detail
    shutil.rmtree(_stored(world, version))
    check = _image_check(world, version)
    assert not check.passed and check.reason is GateRefusal.MISSING_EVIDENCE, check.detail


def test_gate_refuses_a_layout_swapped_for_another_images(
    world: World,
    images: dict[str, tuple[ServingImage, dict[str, Any]]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    a, b = images["a"][0], images["b"][0]
    version = _register(world, a)
    other = _register(world, b)
    here = _stored(world, version)
    there = _stored(world, other)
    shutil.rmtree(here)
    shutil.copytree(there, here)  # image B's valid, attestor-signed signatures
    check = _image_check(world, version)
    assert not check.passed and check.reason is GateRefusal.EVIDENCE_CHANGED, check.detail
    # Registration refuses to name B's signatures for a release of A ...
    with pytest.raises(ControlRefused) as err:
        _register(world, a, signing_image=b)
    assert err.value.reason is ImageSigningRefusal.WRONG_DIGEST
    # ... and a manifest that names them anyway (forged) is refused by the gate.
    _unchecked(monkeypatch)
    forged = _register(world, a, signing_image=b)
    check = _image_check(world, forged)
    assert not check.passed and check.reason is GateRefusal.WRONG_SUBJECT, check.detail


def test_gate_refuses_a_signature_for_another_repository(
    world: World, images: dict[str, tuple[ServingImage, dict[str, Any]]]
) -> None:
    image = images["a"][0]
    version = _register(world, image, repository="registry.example.com/evil/serving")
    check = _image_check(world, version)
    assert not check.passed and check.reason is GateRefusal.SOURCE_MISMATCH, check.detail
    assert "registry.example.com/evil/serving" in check.detail
    # The site decides the repository: one that names it admits the same signature.
    site = world.policy.sources.model_copy(
        update={"images": {"demo": ImageSource(repository="registry.example.com/evil/serving")}}
    )
    moved = world.policy.model_copy(update={"sources": site})
    assert _image_check(world, version, moved).passed


def test_gate_refuses_an_edited_attestation(
    world: World,
    images: dict[str, tuple[ServingImage, dict[str, Any]]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    image = images["a"][0]
    version = _register(world, image)
    prefix = _stored(world, version)
    index = json.loads((prefix / "index.json").read_bytes())
    (att,) = [m for m in index["manifests"] if m.get("annotations", {}).get("kind") == KIND_ATTS]
    att_manifest = json.loads(_blob(prefix, att["digest"]))
    envelope_path = prefix / "blobs" / "sha256" / att_manifest["layers"][0]["digest"][7:]
    envelope = json.loads(envelope_path.read_bytes())
    statement = json.loads(base64.b64decode(envelope["payload"]))
    statement["predicate"]["scanner"]["result"] = []  # the findings, gone
    envelope["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    envelope_path.write_text(json.dumps(envelope))  # in place: its digest no longer matches
    check = _image_check(world, version)
    assert not check.passed and check.reason is GateRefusal.EVIDENCE_CHANGED, check.detail

    # Signed by the attestor but attesting another scan result than the release's evidence:
    # registration refuses it, and the gate refuses a manifest that names it anyway.
    with pytest.raises(ControlRefused) as err:
        _register(world, image, scan_edit=lambda s: s["predicate"]["scanner"].update(result=[]))
    assert err.value.reason is ImageSigningRefusal.SCAN_NOT_OF_THIS_IMAGE
    _unchecked(monkeypatch)
    edited = _register(
        world, image, scan_edit=lambda s: s["predicate"]["scanner"].update(result=[])
    )
    check = _image_check(world, edited)
    assert not check.passed and check.reason is GateRefusal.NOT_THIS_RELEASE, check.detail


def test_gate_refuses_image_signatures_by_another_key(
    world: World,
    images: dict[str, tuple[ServingImage, dict[str, Any]]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    other = KeyDirectory(tmp_path / "other-keys")
    other.ensure()
    with pytest.raises(ControlRefused) as err:
        _register(world, images["a"][0], signer=other.signer("attestor"))
    assert err.value.reason is ImageSigningRefusal.BAD_SIGNATURE
    _unchecked(monkeypatch)
    version = _register(world, images["a"][0], signer=other.signer("attestor"))
    check = _image_check(world, version)
    assert not check.passed and check.reason is GateRefusal.BAD_SIGNATURE, check.detail


def test_production_refuses_a_release_without_image_signature(
    world: World, images: dict[str, tuple[ServingImage, dict[str, Any]]]
) -> None:
    """A release made before images were signed passes a demo policy (saying so), never a
    production one."""
    version = _register(world, images["a"][0], signed=False)
    check = _image_check(world, version)
    assert check.passed and "no image signature recorded" in check.detail
    # Under a production policy the demo keys that signed this release are refused before
    # the image check runs; the check itself, on the release as the gate read it:
    production = world.policy.model_copy(update={"environment": "production"})
    gate = gate_module._Gate(world.models, version, "staging", world.keys, production)
    release = world.models.read_json(f"{world.models.evidence_prefix(version)}/release.json")
    statement = json.loads(base64.b64decode(release["dsseEnvelope"]["payload"]))
    gate.release = ReleasePredicate.model_validate(statement["predicate"])
    with pytest.raises(ControlRefused) as err:
        gate_module._check_image_signature(gate, version)
    assert err.value.reason is GateRefusal.MISSING_EVIDENCE
    assert "production policy admits only a serving image signed" in err.value.message


def test_on_s3_the_gate_verifies_and_refuses_a_deleted_signature(
    tmp_path: Path,
    s3_bucket: str,
    s3_endpoint: str,
    images: dict[str, tuple[ServingImage, dict[str, Any]]],
) -> None:
    """The same layout through the S3 store (moto_server over HTTP): stored, verified by the
    gate, and refused once an object of it is deleted."""
    import boto3

    world = make_world(tmp_path, S3Registry(s3_bucket, "models", endpoint_url=s3_endpoint))
    version = _register(world, images["a"][0])
    assert _image_check(world, version).passed
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    key = f"models/{world.models.image_signature_prefix(version)}/index.json"
    s3.delete_object(Bucket=s3_bucket, Key=key)
    check = _image_check(world, version)
    assert not check.passed and check.reason is GateRefusal.MISSING_EVIDENCE, check.detail
