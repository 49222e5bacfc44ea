"""The model registry layout on top of :mod:`secmlops.registry.stores` storage.

Versions are allocated create-only (``v1``, ``v2``, ...), evidence bundles are written
once and never replaced, stage pointers are gate-signed statements that move by
compare-and-swap after claiming their sequence number in the create-only stage history
(``<model>/stages/<stage>/<sequence>.json``), and every event is appended to the
hash-chained audit log (``<model>/audit/<sequence>.json``, :mod:`secmlops.audit`).
"""

from __future__ import annotations

import base64
import dataclasses
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
_HISTORY_ENTRY = re.compile(r"^([0-9]{10})\.json$")


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
    """What a stage serves now, and what it served before (for rollback).

    Since issue 8 a pointer is a statement signed by the gate (see
    :mod:`secmlops.registry.pointers`): ``sequence`` only grows, ``previous_sha256`` is the
    digest of the stored bytes of the pointer it replaced, ``expires_at`` bounds how long it
    counts, and ``history`` (signed with it) lists what the stage served before. ``bundle``
    and ``sha256`` are the signed bundle it was read from and the digest of its stored
    bytes (``None``/"" for an unsigned pointer, written before issue 8: refused by readers).
    """

    model: str
    stage: str
    version: str
    model_digest: str
    vsa: str
    vsa_sha256: str
    promoted_at: str
    promoted_by: str
    reason: str = "promote"
    history: list[dict[str, Any]] = field(default_factory=list)
    sequence: int = 0
    previous_sha256: str | None = None
    expires_at: str = ""
    bundle: dict[str, Any] | None = field(default=None, compare=False, repr=False)
    sha256: str = field(default="", compare=False)

    def to_json(self) -> dict[str, Any]:
        """The signed fields (the pointer statement's predicate)."""
        return {
            "model": self.model,
            "stage": self.stage,
            "version": self.version,
            "modelDigest": {"sha256": self.model_digest},
            "vsa": {"key": self.vsa, "sha256": self.vsa_sha256},
            "sequence": self.sequence,
            "previous": {"sha256": self.previous_sha256} if self.previous_sha256 else None,
            "promotedAt": self.promoted_at,
            "expiresAt": self.expires_at,
            "promotedBy": self.promoted_by,
            "reason": self.reason,
            "history": self.history,
        }

    def summary(self) -> dict[str, Any]:
        """This pointer as one entry of its successor's ``history``."""
        return {
            "version": self.version,
            "modelDigest": self.model_digest,
            "promotedAt": self.promoted_at,
            "vsa": self.vsa,
            "sequence": self.sequence,
            "sha256": self.sha256,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str) -> StagePointer:
        try:
            previous = data.get("previous")
            pointer = cls(
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
                sequence=data.get("sequence", 0),
                previous_sha256=previous["sha256"] if previous else None,
                expires_at=data.get("expiresAt", ""),
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise ControlRefused(
                f"malformed stage pointer: missing {exc}",
                where=where,
                reason=RegistryRefusal.MALFORMED_POINTER,
            ) from exc
        fields_ok = (
            all(
                isinstance(v, str)
                for v in (
                    pointer.model,
                    pointer.stage,
                    pointer.version,
                    pointer.model_digest,
                    pointer.vsa,
                    pointer.vsa_sha256,
                    pointer.promoted_at,
                    pointer.promoted_by,
                    pointer.reason,
                    pointer.expires_at,
                )
            )
            and type(pointer.sequence) is int
            and pointer.sequence >= 0
            and (pointer.previous_sha256 is None or isinstance(pointer.previous_sha256, str))
            and all(isinstance(h, dict) for h in pointer.history)
        )
        if not fields_ok:
            raise ControlRefused(
                "malformed stage pointer: a field has the wrong type",
                where=where,
                reason=RegistryRefusal.MALFORMED_POINTER,
            )
        return pointer


def parse_pointer(raw: bytes, where: str) -> StagePointer:
    """Parse stored pointer bytes WITHOUT verifying them: a signed bundle (its payload's
    predicate, with ``bundle`` and ``sha256`` set) or an unsigned pre-issue-8 pointer
    (``bundle`` ``None``). Readers verify with :func:`secmlops.gate.verify_pointer_vsa`."""
    data = parse_json_object(raw, where)
    if "dsseEnvelope" not in data:
        return StagePointer.from_json(data, where)
    try:
        statement = json.loads(base64.b64decode(data["dsseEnvelope"]["payload"], validate=True))
        predicate = statement["predicate"]
    except (KeyError, TypeError, ValueError) as exc:
        raise ControlRefused(
            f"malformed signed stage pointer: {exc}",
            where=where,
            reason=RegistryRefusal.MALFORMED_POINTER,
        ) from exc
    if not isinstance(predicate, dict):
        raise ControlRefused(
            "malformed signed stage pointer: no predicate object",
            where=where,
            reason=RegistryRefusal.MALFORMED_POINTER,
        )
    pointer = StagePointer.from_json(predicate, where)
    return dataclasses.replace(pointer, bundle=data, sha256=sha256_bytes(raw))


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
    def stage_history_key(self, stage: str, sequence: int) -> str:
        """Where the signed stage history keeps pointer ``sequence`` (create-only)."""
        return f"{self.model}/stages/{check_stage(stage)}/{sequence:010d}.json"

    def stage_history(self, stage: str) -> dict[int, str]:
        """The stage history's keys by sequence (every object named like one; unverified)."""
        found: dict[int, str] = {}
        for key in self.store.list_keys(f"{self.model}/stages/{check_stage(stage)}"):
            match = _HISTORY_ENTRY.match(key.rsplit("/", 1)[-1])
            if match:
                found[int(match.group(1))] = key
        return found

    def read_pointer(self, stage: str) -> tuple[StagePointer | None, StoredObject | None]:
        """The stage pointer as stored (parsed, NOT verified) and the object to CAS against."""
        key = self.stage_key(stage)
        obj = self.store.get(key)
        if obj is None:
            return None, None
        try:
            json.loads(obj.data)
        except ValueError as exc:
            raise ControlRefused(
                f"stage pointer {key} is not JSON", where=key, reason=RegistryRefusal.NOT_JSON
            ) from exc
        return parse_pointer(obj.data, key), obj

    def move_pointer(self, pointer: StagePointer, previous: StoredObject | None) -> None:
        """Publish a signed pointer: claim its sequence in the stage history (create-only,
        so two promotions cannot both take it), then move the stage pointer to the same
        bytes by compare-and-swap against ``previous`` (the object read before).

        ``WriteConflict`` if the sequence is taken or the pointer moved meanwhile;
        ``InputError`` for an unsigned pointer (sign it with
        :func:`secmlops.registry.pointers.sign_pointer`).
        """
        if pointer.bundle is None:
            raise InputError(
                f"refusing to write an unsigned {pointer.stage} pointer",
                where=self.stage_key(pointer.stage),
                fix="sign it with secmlops.registry.pointers.sign_pointer (the gate key)",
            )
        data = canonical_json(pointer.bundle)
        self.store.put(self.stage_history_key(pointer.stage, pointer.sequence), data)
        self.store.put(
            self.stage_key(pointer.stage),
            data,
            replace_etag=previous.etag if previous else None,
        )

    # --- audit ---
    def audit(self, event: str, *, signer: Any = None, **fields: Any) -> str:
        """Append an event to the model's tamper-evident audit log; return its key.

        ``signer``: the role key (or :class:`Signer`) that signs the entry: the gate for
        pointer moves, the attestor for pipeline events. ``None`` writes an unsigned entry,
        which ``secmlops audit verify`` reports as a problem (pass a signer). See
        :mod:`secmlops.audit`.
        """
        from secmlops.audit import AuditLog

        return AuditLog(self).append(event, signer=signer, **fields).key

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
