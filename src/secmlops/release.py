"""Register a model version: upload the signed model and its evidence, then sign the
release manifest that binds them together.

Called only after every build-time control passed. The manifest is written last: a version
without ``evidence/release.json`` never passes the deploy gate, so a registration cut off
half-way cannot be deployed.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import ValidationError

from secmlops._internal.digests import sha256_bytes, tree_digest
from secmlops.catalogue import Control, build_controls, required_release_evidence
from secmlops.controls.image_signing import (
    IMAGE_SIGNATURE_EVIDENCE,
    ImageSigningRefusal,
    detached_files,
    verify_image_signatures,
)
from secmlops.errors import ControlRefused, InputError
from secmlops.evidence.predicates import (
    DatasetRef,
    EvidenceRef,
    ImageRef,
    ReleasePredicate,
    Sha256Ref,
    SignatureRef,
    dump_predicate,
)
from secmlops.evidence.statements import (
    PREDICATE_RELEASE,
    SigningKey,
    Subject,
    TrustedKeys,
    make_statement,
    sign_statement,
    utc_now,
)
from secmlops.registry.models import ModelRegistry


@dataclass(frozen=True)
class ReleaseInputs:
    """What a release binds besides the model: the data it was trained on and the image."""

    dataset: Mapping[str, Any]  # sha256, repo, path, rev, commit
    image: Mapping[str, Any]  # ref, sha256
    metrics: Mapping[str, Any]
    run: str
    builder: str
    #: The OS identity the worker ran as (``user@host``): the worker, not who started the run.
    created_by: str
    #: Who started the run, where the orchestrator knows it (``RunRecord.started_by``);
    #: ``None``: unknown (Prefect OSS records no identity for UI/API runs).
    started_by: str | None = None
    #: The layout :func:`~secmlops.controls.image_signing.sign_image` wrote for the scanned
    #: image (cosign signature + scan attestation); ``None``: the image is not signed (the
    #: gate refuses such a release under a production policy).
    image_signature: Path | None = None


def _build_control(name: str) -> Control[Any]:
    for entry in build_controls():
        if entry.name == name:
            return entry
    raise InputError(
        f"{name!r} is not build evidence the catalogue knows",
        where="release evidence",
        fix="known: " + ", ".join(c.name for c in build_controls()),
    )


def check_build_statement(name: str, statement: Mapping[str, Any]) -> None:
    """``statement`` must be ``name``'s evidence: its predicate type, its predicate model.

    Run before signing, so a writer that drifted from the model the gate reads fails the
    build here, not the deploy gate later. ``InputError`` otherwise.
    """
    entry = _build_control(name)
    if statement.get("predicateType") != entry.predicate_type:
        raise InputError(
            f"{name} evidence has predicate {statement.get('predicateType')}, "
            f"expected {entry.predicate_type}",
            where=f"release evidence {name}",
        )
    try:
        entry.predicate.model_validate(statement.get("predicate"))
    except ValidationError as exc:
        raise InputError(
            f"{name} evidence does not match {entry.predicate.__name__}: {exc}",
            where=f"release evidence {name}",
            fix="the statement writer and the catalogue's predicate model disagree; fix the writer",
        ) from exc


@dataclass
class ReleaseEvidence:
    """A release's build evidence, collected and signed before the version exists.

    Example::

        evidence = ReleaseEvidence(attestor_key)
        evidence.add("data-pull", data_pull_statement(pulled))
        register_release(models, model_dir, sig, evidence.bundles, inputs, attestor=evidence.key)
    """

    key: SigningKey
    bundles: dict[str, dict[str, Any]] = field(default_factory=dict)

    def add(self, name: str, statement: Mapping[str, Any]) -> None:
        """Check ``statement`` against ``name``'s catalogue entry, then sign and keep it."""
        check_build_statement(name, statement)
        self.bundles[name] = sign_statement(statement, self.key)

    def missing(self) -> frozenset[str]:
        """Required evidence not collected yet."""
        return required_release_evidence() - set(self.bundles)


def _check_image_signature(
    layout: Path, image_digest: str, attestor: SigningKey, scan_bundle: Mapping[str, Any]
) -> None:
    """``layout`` signs the scanned image (config digest ``image_digest``) with
    ``attestor``'s key and attests the scan ``scan_bundle`` holds: a layout that would fail
    the gate is refused before a version is claimed."""
    public = (
        attestor.public_key()
        if isinstance(attestor, ec.EllipticCurvePrivateKey)
        else attestor.public_key
    )
    trusted = TrustedKeys()
    trusted.add("attestor", public)
    verified = verify_image_signatures(layout, trusted, config_digest=image_digest)
    try:
        scan = json.loads(base64.b64decode(scan_bundle["dsseEnvelope"]["payload"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(
            "the image-scan evidence is not a signed bundle", where="register"
        ) from exc
    if verified.attestation.get("predicate") != scan.get("predicate"):
        raise ControlRefused(
            "the image signature attests another scan result than the image-scan evidence",
            where=str(layout),
            reason=ImageSigningRefusal.SCAN_NOT_OF_THIS_IMAGE,
        )


@dataclass(frozen=True)
class Registration:
    """A registered version and where its pieces are."""

    version: str
    model_digest: str
    release_key: str
    evidence: dict[str, str]


def register_release(
    models: ModelRegistry,
    model_dir: Path,
    signature: Path,
    evidence: Mapping[str, dict[str, Any]],
    inputs: ReleaseInputs,
    *,
    attestor: SigningKey,
) -> Registration:
    """Claim the next version, upload model + signature + evidence, then the signed manifest.

    ``evidence`` must hold a signed bundle for every build control of the catalogue, and
    nothing the catalogue does not know (``InputError`` otherwise). ``inputs.image_signature``:
    the layout :func:`~secmlops.controls.image_signing.sign_image` wrote for the scanned image
    (checked here with ``attestor``'s public key and the image digest of ``inputs``); its
    detached files go to :meth:`ModelRegistry.image_signature_prefix` and the manifest names
    its ``index.json`` (which names every other file by digest) as evidence
    ``image-signature``.
    """
    missing = required_release_evidence() - set(evidence)
    if missing:
        raise InputError(
            f"cannot register a release without evidence: {', '.join(sorted(missing))}",
            where="register",
        )
    for name in evidence:
        _build_control(name)
    model_digest = tree_digest(model_dir)
    try:  # shape-check what the caller passed before a version is claimed
        dataset, image = DatasetRef(**inputs.dataset), ImageRef(**inputs.image)
    except ValidationError as exc:
        raise InputError(f"release inputs are malformed: {exc}", where="register") from exc
    image_files = None
    if inputs.image_signature is not None:
        _check_image_signature(
            inputs.image_signature, image.sha256, attestor, evidence["image-scan"]
        )
        image_files = detached_files(inputs.image_signature)
    version = models.allocate_version(
        {
            "run": inputs.run,
            "builder": inputs.builder,
            "worker": inputs.created_by,
            "startedBy": inputs.started_by,
        }
    )
    models.store.upload_tree(model_dir, models.model_prefix(version))
    sig_bytes = signature.read_bytes()
    models.store.put(models.signature_key(version), sig_bytes)
    written = {name: models.put_evidence(version, name, b) for name, b in evidence.items()}
    if image_files is not None:
        prefix = models.image_signature_prefix(version)
        for rel, data in sorted(image_files.items()):
            models.store.put(f"{prefix}/{rel}", data)
        written[IMAGE_SIGNATURE_EVIDENCE] = (
            f"{prefix}/index.json",
            sha256_bytes(image_files["index.json"]),
        )
    manifest = ReleasePredicate(
        model=models.model,
        version=version,
        model_digest=Sha256Ref(sha256=model_digest),
        signature=SignatureRef(key=models.signature_key(version), sha256=sha256_bytes(sig_bytes)),
        dataset=dataset,
        image=image,
        evidence={n: EvidenceRef(key=k, sha256=s) for n, (k, s) in written.items()},
        metrics=dict(inputs.metrics),
        run=inputs.run,
        builder=inputs.builder,
        created_at=utc_now(),
    )
    release = make_statement(
        [Subject("model", model_digest)], PREDICATE_RELEASE, dump_predicate(manifest)
    )
    release_key, _ = models.put_evidence(version, "release", sign_statement(release, attestor))
    models.audit(
        "registered", signer=attestor, version=version, model_digest=model_digest, run=inputs.run
    )
    return Registration(
        version=version,
        model_digest=model_digest,
        release_key=release_key,
        evidence={n: k for n, (k, _) in written.items()},
    )


# --- Prefect -------------------------------------------------------------------------------
