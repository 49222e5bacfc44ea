"""``secmlops fetch``: what a model server's init container runs before it serves a model.

:func:`fetch` runs exactly the verification ``secmlops verify-stage`` runs
(:func:`secmlops.operations.verify_stage`: the gate-signed stage pointer, fresh and not rolled
back against this consumer's last-seen record, its VSA, then the full deploy gate
:func:`secmlops.gate.verify_release` under the signed policy in force) while the model is
streamed *once* into a temp directory next to ``dest`` and hashed as it streams. The gate
verifies that very copy (no second download), and only when every check passed and the
streamed bytes hash to the digest the gate verified is the copy renamed to ``dest``
(atomically, same filesystem). Anything else leaves ``dest`` untouched.

The module is named ``consume`` (not ``fetch``) so that importing it never shadows the
package attribute ``secmlops.fetch``, the function.

Example::

    import secmlops
    from pathlib import Path

    models = secmlops.ModelRegistry(secmlops.open_registry("s3://bucket/models"), "churn")
    got = secmlops.fetch(models, "production", Path("/models/current"),
                         keys=secmlops.KeyDirectory(Path("/etc/secmlops/keys")))
    print(got.version, got.model_digest)
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from secmlops._internal.digests import manifest_digest
from secmlops.catalogue import GateRefusal
from secmlops.errors import ControlRefused, InputError, RefusalReason, ToolError
from secmlops.evidence.keys import KeyDirectory
from secmlops.gate import GatePolicy, GateReport
from secmlops.registry.models import ModelRegistry, StagePointer
from secmlops.registry.pointers import SeenPointers


class FetchRefusal(RefusalReason):
    """Why ``fetch`` refused after the gate's own checks passed (theirs carry their reasons)."""

    STREAMED_BYTES_DIFFER = "streamed_bytes_differ"
    """The bytes streamed to disk do not hash to the model digest the gate verified."""


@dataclass(frozen=True)
class FetchResult:
    """What :func:`fetch` delivered into ``dest``."""

    model: str
    stage: str
    version: str
    model_digest: str
    dest: Path
    #: ``{relative path: sha256}`` of every file delivered, as hashed while streaming.
    files: dict[str, str]
    pointer: StagePointer
    report: GateReport = field(repr=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "stage": self.stage,
            "version": self.version,
            "modelDigest": self.model_digest,
            "dest": str(self.dest),
            "files": self.files,
            "sequence": self.pointer.sequence,
            "checks": [c.to_json() for c in self.report.checks],
        }


class _DownloadOnce(ModelRegistry):
    """The consumer's view of ``models``: the gate's ``download_model`` streams into the
    fetch's staging directory (hashing as it goes) and is served from there ever after, so
    the copy the gate verifies is the copy ``fetch`` delivers."""

    def __init__(self, models: ModelRegistry, staging: Path) -> None:
        super().__init__(models.store, models.model)
        self.staging = staging
        self.version: str | None = None
        self.files: dict[str, str] = {}
        self.signature_sha256 = ""
        #: A store/network failure during the download (the gate records it as a failed
        #: check; ``fetch`` reports it as the tool error it is, exit 3).
        self.tool_error: ToolError | None = None

    def download_model(self, version: str, dest: Path) -> tuple[Path, Path]:
        model_dir, signature = self.staging / "model", self.staging / "model.sig"
        if self.version is not None:
            if version != self.version:
                raise ControlRefused(
                    f"asked for {version} after downloading {self.version}",
                    where=self.store.describe(self.model_prefix(version)),
                    reason=GateRefusal.CHECK_ERROR,
                )
            return model_dir, signature
        self.version = version
        try:
            # Streamed and hashed once by the store (symlinks, special files, empty folders,
            # keys escaping the folder and oversized objects refused there).
            downloaded = self.download_model_hashed(version, self.staging)
            self.files, self.signature_sha256 = downloaded.files, downloaded.signature_sha256
        except ToolError as exc:
            self.tool_error = exc
            raise
        except OSError as exc:
            self.tool_error = ToolError(
                f"cannot write the model to {self.staging}: {exc.strerror or exc}",
                where=str(self.staging),
                fix="check free space and permissions next to DEST",
            )
            raise self.tool_error from exc
        return model_dir, signature


def _check_dest(dest: Path) -> Path:
    """``dest`` made absolute; ``InputError`` unless it is absent or an empty directory in an
    existing directory."""
    dest = Path(os.path.abspath(dest))
    if dest.is_symlink():
        raise InputError(f"DEST {dest} is a symlink", where=str(dest), fix="name a plain path")
    if dest.exists():
        if not dest.is_dir():
            raise InputError(
                f"DEST {dest} exists and is not a directory",
                where=str(dest),
                fix="name a new or empty directory",
            )
        if any(dest.iterdir()):
            raise InputError(
                f"DEST {dest} is not empty; fetch never overwrites a model",
                where=str(dest),
                fix="name a new or empty directory",
            )
    if not dest.parent.is_dir():
        raise InputError(
            f"the directory DEST goes into, {dest.parent}, does not exist",
            where=str(dest),
            fix="create it (or mount the volume there) first",
        )
    return dest


def fetch(
    models: ModelRegistry,
    stage: str,
    dest: Path,
    *,
    keys: KeyDirectory,
    policy: GatePolicy | None = None,
    seen: SeenPointers | None = None,
) -> FetchResult:
    """Verify what ``stage`` serves and deliver its model files into ``dest``.

    Runs :func:`secmlops.operations.verify_stage` (pointer, VSA and the whole deploy gate
    under ``policy``, default the signed policy in force; ``seen``: this consumer's
    last-seen pointer record, default the state home's) on a copy streamed once into a temp
    directory next to ``dest``. ``dest`` must not exist or be an empty directory
    (``InputError``); a refusal is ``ControlRefused`` (the gate's report as ``result``), a
    store failure ``ToolError``, and in every such case ``dest`` is left untouched.
    """
    from secmlops.operations import verify_stage
    from secmlops.policy import load_gate_policy

    dest = _check_dest(dest)
    policy = policy or load_gate_policy()
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.fetch-", dir=dest.parent))
    except OSError as exc:
        raise InputError(
            f"cannot create a temp directory next to DEST in {dest.parent}: {exc.strerror}",
            where=str(dest.parent),
            fix="DEST's directory must be writable (and on the volume DEST is on)",
        ) from exc
    try:
        once = _DownloadOnce(models, staging)
        try:
            pointer, report = verify_stage(once, stage, keys=keys, policy=policy, seen=seen)
        except ControlRefused:
            if once.tool_error is not None:
                raise once.tool_error from None
            raise
        where = f"fetch:{models.model}/{stage}"
        streamed = manifest_digest(once.files)
        if (
            once.version != pointer.version
            or streamed not in (report.model_digest,)
            or (streamed != pointer.model_digest)
        ):
            raise ControlRefused(
                f"the files streamed for {models.model} {pointer.version} hash to "
                f"{streamed[:12]}…, not the verified {report.model_digest[:12]}…",
                where=where,
                reason=FetchRefusal.STREAMED_BYTES_DIFFER,
            )
        try:
            os.rename(staging / "model", dest)  # atomic; replaces only an empty directory
        except OSError as exc:
            raise InputError(
                f"cannot move the verified model into DEST {dest}: {exc.strerror}",
                where=str(dest),
                fix="DEST must be new or empty and on the same filesystem as its directory",
            ) from exc
        return FetchResult(
            model=models.model,
            stage=stage,
            version=pointer.version,
            model_digest=report.model_digest,
            dest=dest,
            files=dict(once.files),
            pointer=pointer,
            report=report,
        )
    finally:
        shutil.rmtree(staging, ignore_errors=True)


__all__ = ["FetchRefusal", "FetchResult", "fetch"]
