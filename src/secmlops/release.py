"""Register a model version: upload the signed model and its evidence, then sign the
release manifest that binds them together.

Called only after every build-time control passed. The manifest is written last: a version
without ``evidence/release.json`` never passes the deploy gate, so a registration cut off
half-way cannot be deployed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from secmlops._internal.digests import sha256_bytes, tree_digest
from secmlops.errors import InputError
from secmlops.evidence.statements import (
    PREDICATE_RELEASE,
    PrivateKey,
    Subject,
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
    created_by: str


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
    attestor: PrivateKey,
) -> Registration:
    """Claim the next version, upload model + signature + evidence, then the signed manifest."""
    missing = {"data-pull", "validation", "image-scan", "provenance", "model-scan"} - set(evidence)
    if missing:
        raise InputError(
            f"cannot register a release without evidence: {', '.join(sorted(missing))}",
            where="register",
        )
    model_digest = tree_digest(model_dir)
    version = models.allocate_version(
        {"run": inputs.run, "builder": inputs.builder, "createdBy": inputs.created_by}
    )
    models.store.upload_tree(model_dir, models.model_prefix(version))
    sig_bytes = signature.read_bytes()
    models.store.put(models.signature_key(version), sig_bytes)
    written = {name: models.put_evidence(version, name, b) for name, b in evidence.items()}
    release = make_statement(
        [Subject("model", model_digest)],
        PREDICATE_RELEASE,
        {
            "model": models.model,
            "version": version,
            "modelDigest": {"sha256": model_digest},
            "signature": {"key": models.signature_key(version), "sha256": sha256_bytes(sig_bytes)},
            "dataset": dict(inputs.dataset),
            "image": dict(inputs.image),
            "evidence": {n: {"key": k, "sha256": s} for n, (k, s) in written.items()},
            "metrics": dict(inputs.metrics),
            "run": inputs.run,
            "builder": inputs.builder,
            "createdAt": utc_now(),
        },
    )
    release_key, _ = models.put_evidence(version, "release", sign_statement(release, attestor))
    models.audit("registered", version=version, model_digest=model_digest, run=inputs.run)
    return Registration(
        version=version,
        model_digest=model_digest,
        release_key=release_key,
        evidence={n: k for n, (k, _) in written.items()},
    )


# --- Prefect -------------------------------------------------------------------------------
