"""The model registry layout on top of :mod:`secmlops.registry.stores` storage.

Versions are allocated create-only (``v1``, ``v2``, ...), evidence bundles are written
once and never replaced, stage pointers move by compare-and-swap, and every event is
appended to the audit log as its own object.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from secmlops._internal.digests import sha256_bytes
from secmlops.controls.approval import check_stage
from secmlops.errors import ControlRefused, InputError
from secmlops.evidence.keys import check_name
from secmlops.evidence.statements import utc_now
from secmlops.registry.stores import Registry, RegistryRefusal, StoredObject, WriteConflict

_VERSION = re.compile(r"^v([1-9][0-9]{0,8})$")


def check_model_name(name: str) -> str:
    """Model names become registry key prefixes."""
    return check_name(name, "model")


def check_version(version: str) -> str:
    if not _VERSION.match(version):
        raise InputError(
            f"invalid model version {version!r}", where="version", fix="versions look like v1, v2"
        )
    return version


def parse_json_object(raw: bytes, where: str) -> dict[str, Any]:
    """Registry bytes as a JSON object; anything else is a refusal (the store is untrusted)."""
    try:
        obj = json.loads(raw)
    except ValueError as exc:
        raise ControlRefused(
            f"{where} is not JSON", where=where, reason=RegistryRefusal.NOT_JSON
        ) from exc
    if not isinstance(obj, dict):
        raise ControlRefused(
            f"{where} is not a JSON object", where=where, reason=RegistryRefusal.NOT_JSON
        )
    return obj


def stamped(name: str) -> str:
    """An evidence name unique in time: ``<name>-<UTC yyyymmddThhmmss>-<random>``."""
    now = dt.datetime.now(dt.UTC).strftime("%Y%m%dt%H%M%S")
    return f"{name}-{now}-{uuid.uuid4().hex[:6]}"


def canonical_json(obj: Any) -> bytes:
    """Stable JSON bytes (sorted keys, two-space indent, trailing newline)."""
    return (json.dumps(obj, sort_keys=True, indent=2) + "\n").encode()


@dataclass(frozen=True)
class StagePointer:
    """What a stage serves now, and what it served before (for rollback)."""

    model: str
    stage: str
    version: str
    model_digest: str
    vsa: str
    vsa_sha256: str
    promoted_at: str
    promoted_by: str
    reason: str = "promote"
    history: list[dict[str, str]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "stage": self.stage,
            "version": self.version,
            "modelDigest": {"sha256": self.model_digest},
            "vsa": {"key": self.vsa, "sha256": self.vsa_sha256},
            "promotedAt": self.promoted_at,
            "promotedBy": self.promoted_by,
            "reason": self.reason,
            "history": self.history,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str) -> StagePointer:
        try:
            return cls(
                model=data["model"],
                stage=data["stage"],
                version=data["version"],
                model_digest=data["modelDigest"]["sha256"],
                vsa=data["vsa"]["key"],
                vsa_sha256=data["vsa"]["sha256"],
                promoted_at=data["promotedAt"],
                promoted_by=data["promotedBy"],
                reason=data.get("reason", "promote"),
                history=list(data.get("history", [])),
            )
        except (KeyError, TypeError) as exc:
            raise ControlRefused(
                f"malformed stage pointer: missing {exc}",
                where=where,
                reason=RegistryRefusal.MALFORMED_POINTER,
            ) from exc


class ModelRegistry:
    """One model's versions, evidence, stage pointers and audit log in a registry."""

    def __init__(self, store: Registry, model: str) -> None:
        self.store = store
        self.model = check_model_name(model)

    # --- keys ---
    def version_prefix(self, version: str) -> str:
        return f"{self.model}/versions/{check_version(version)}"

    def model_prefix(self, version: str) -> str:
        return f"{self.version_prefix(version)}/model"

    def signature_key(self, version: str) -> str:
        return f"{self.version_prefix(version)}/model.sig"

    def evidence_prefix(self, version: str) -> str:
        return f"{self.version_prefix(version)}/evidence"

    def stage_key(self, stage: str) -> str:
        return f"{self.model}/stages/{check_stage(stage)}.json"

    # --- versions ---
    def versions(self) -> list[str]:
        found = set()
        for key in self.store.list_keys(f"{self.model}/versions"):
            parts = key.split("/")
            if len(parts) > 2 and _VERSION.match(parts[2]):
                found.add(parts[2])
        return sorted(found, key=lambda v: int(v[1:]))

    def allocate_version(self, claim: dict[str, Any]) -> str:
        """Claim the next free version by writing its ``version.json`` create-only."""
        for _ in range(20):
            existing = self.versions()
            nxt = f"v{int(existing[-1][1:]) + 1}" if existing else "v1"
            body = {**claim, "model": self.model, "version": nxt, "createdAt": utc_now()}
            try:
                self.store.put(f"{self.version_prefix(nxt)}/version.json", canonical_json(body))
                return nxt
            except WriteConflict:
                continue  # someone else took it; try the next one
        raise ControlRefused(
            "could not allocate a model version (20 conflicts)",
            where=self.model,
            reason=RegistryRefusal.VERSION_ALLOCATION_CONFLICT,
        )

    def require_version(self, version: str) -> None:
        if not self.store.exists(f"{self.version_prefix(version)}/version.json"):
            raise InputError(
                f"model {self.model} has no version {version}",
                where=self.store.describe(self.version_prefix(version)),
                fix=f"known versions: {', '.join(self.versions()) or 'none'}",
            )

    # --- evidence ---
    def put_evidence(self, version: str, name: str, bundle: dict[str, Any]) -> tuple[str, str]:
        """Write one signed bundle create-only; return (key, sha256)."""
        if not re.match(r"^[a-z0-9][a-z0-9._-]*$", name):
            raise InputError(f"invalid evidence name {name!r}", where="evidence")
        data = canonical_json(bundle)
        key = f"{self.evidence_prefix(version)}/{name}.json"
        self.store.put(key, data)
        return key, sha256_bytes(data)

    def evidence_keys(self, version: str) -> list[str]:
        return [
            k for k in self.store.list_keys(self.evidence_prefix(version)) if k.endswith(".json")
        ]

    def read_json(self, key: str) -> dict[str, Any]:
        return parse_json_object(self.store.read(key), self.store.describe(key))

    # --- stage pointers ---
    def read_pointer(self, stage: str) -> tuple[StagePointer | None, StoredObject | None]:
        key = self.stage_key(stage)
        obj = self.store.get(key)
        if obj is None:
            return None, None
        try:
            data = json.loads(obj.data)
        except ValueError as exc:
            raise ControlRefused(
                f"stage pointer {key} is not JSON", where=key, reason=RegistryRefusal.NOT_JSON
            ) from exc
        return StagePointer.from_json(data, key), obj

    def move_pointer(self, pointer: StagePointer, previous: StoredObject | None) -> None:
        """Write the stage pointer; create it, or replace exactly the version we read."""
        self.store.put(
            self.stage_key(pointer.stage),
            canonical_json(pointer.to_json()),
            replace_etag=previous.etag if previous else None,
        )

    # --- audit ---
    def audit(self, event: str, **fields: Any) -> str:
        """Append an event to the audit log (one create-only object per event)."""
        now = utc_now()
        key = f"{self.model}/audit/{now.replace(':', '')}-{uuid.uuid4().hex[:8]}-{event}.json"
        self.store.put(
            key, canonical_json({"event": event, "at": now, "model": self.model, **fields})
        )
        return key

    def download_model(self, version: str, dest: Path) -> tuple[Path, Path]:
        """Download a version's model files and signature; return (model_dir, signature)."""
        model_dir = dest / "model"
        model_dir.mkdir(parents=True, exist_ok=False)
        if not self.store.download_tree(self.model_prefix(version), model_dir):
            raise ControlRefused(
                f"version {version} has no model files",
                where=self.store.describe(self.model_prefix(version)),
                reason=RegistryRefusal.NO_MODEL_FILES,
            )
        signature = dest / "model.sig"
        signature.write_bytes(self.store.read(self.signature_key(version)))
        return model_dir, signature
