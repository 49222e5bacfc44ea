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
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from secmlops._internal.digests import sha256_bytes
from secmlops.controls.approval import check_stage
from secmlops.errors import ControlRefused, InputError
from secmlops.evidence.keys import check_name
from secmlops.evidence.statements import utc_now
from secmlops.registry.stores import (
    Registry,
    RegistryRefusal,
    StoredObject,
    WriteConflict,
    current_limits,
)

_VERSION = re.compile(r"^v([1-9][0-9]{0,8})$")
_HISTORY_ENTRY = re.compile(r"^([0-9]{10})\.json$")


def check_model_name(name: str) -> str:
    """Model names become registry key prefixes."""
    return check_name(name, "model")


def check_version(version: str) -> str:
    """``v1``, ``v2``, ...: the whole string (``fullmatch``, so no trailing newline)."""
    if not isinstance(version, str) or not _VERSION.fullmatch(version):
        shown = repr(version) if len(str(version)) <= 80 else f"{str(version)[:60]!r}…"
        raise InputError(
            f"invalid model version {shown}", where="version", fix="versions look like v1, v2"
        )
    return version


_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS = bytes(sorted(set(range(256)) - set(b"[]{}")))
_BRACKET_PAIR = re.compile(rb"\[\]|\{\}")


def check_json_depth(raw: bytes, where: str, max_depth: int | None = None) -> None:
    """``ControlRefused`` (``JSON_TOO_DEEP``) if the JSON in ``raw`` nests deeper than
    ``max_depth`` (default: the configured ``max_json_depth``). A pre-scan of the bytes
    (strings removed, innermost bracket pairs peeled off once per level, in C): no parser
    recursion, so a 200k-deep array is a refusal, never a ``RecursionError``."""
    limit = current_limits().max_json_depth if max_depth is None else max_depth
    brackets = _JSON_STRING.sub(b"", raw).translate(None, _NOT_BRACKETS)
    if len(brackets) <= 2 * limit:
        return
    for _ in range(limit + 1):
        brackets, peeled = _BRACKET_PAIR.subn(b"", brackets)
        if not peeled:
            return  # deep enough to stop here, or unbalanced (the parser says so)
    raise ControlRefused(
        f"{where} nests JSON deeper than {limit} levels",
        where=where,
        fix="remove the object from the registry (no reader accepts it)",
        reason=RegistryRefusal.JSON_TOO_DEEP,
    )


def parse_json_value(raw: bytes, where: str, *, max_bytes: int | None = None) -> Any:
    """Untrusted bytes as JSON, refused (``ControlRefused``, one sentence naming ``where``)
    if above ``max_bytes`` (default: the configured ``max_object_bytes``), nested deeper than
    the configured ``max_json_depth``, not UTF-8 or not JSON."""
    limit = current_limits().max_object_bytes if max_bytes is None else max_bytes
    if len(raw) > limit:
        raise ControlRefused(
            f"{where} is {len(raw)} bytes, above the {limit}-byte limit",
            where=where,
            reason=RegistryRefusal.OBJECT_TOO_LARGE,
        )
    check_json_depth(raw, where)
    try:
        return json.loads(raw)
    except UnicodeDecodeError as exc:
        raise ControlRefused(
            f"{where} is not UTF-8 text", where=where, reason=RegistryRefusal.NOT_JSON
        ) from exc
    except (ValueError, RecursionError) as exc:
        raise ControlRefused(
            f"{where} is not JSON", where=where, reason=RegistryRefusal.NOT_JSON
        ) from exc


def parse_json_object(raw: bytes, where: str, *, max_bytes: int | None = None) -> dict[str, Any]:
    """Registry bytes as a JSON object; anything else is a refusal (the store is untrusted):
    see :func:`parse_json_value` for the size, depth and encoding limits."""
    obj = parse_json_value(raw, where, max_bytes=max_bytes)
    if not isinstance(obj, dict):
        raise ControlRefused(
            f"{where} is not a JSON object (it is a JSON {_json_kind(obj)})",
            where=where,
            reason=RegistryRefusal.NOT_JSON,
        )
    return obj


def _json_kind(obj: Any) -> str:
    if isinstance(obj, list):
        return "array"
    if isinstance(obj, str):
        return "string"
    if isinstance(obj, bool):
        return "boolean"
    if obj is None:
        return "null"
    return "number"


def stamped(name: str) -> str:
    """An evidence name unique in time: ``<name>-<UTC yyyymmddThhmmss>-<random>``."""
    now = dt.datetime.now(dt.UTC).strftime("%Y%m%dt%H%M%S")
    return f"{name}-{now}-{uuid.uuid4().hex[:6]}"


def canonical_json(obj: Any) -> bytes:
    """Stable JSON bytes (sorted keys, two-space indent, trailing newline)."""
    return (json.dumps(obj, sort_keys=True, indent=2) + "\n").encode()


@dataclass(frozen=True)
class DownloadedModel:
    """A version's model files and signature on local disk, with their streamed sha256s."""

    model_dir: Path
    signature: Path
    #: ``{relative path: sha256}`` of every model file, hashed while it was written.
    files: dict[str, str]
    signature_sha256: str


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
    def from_json(cls, data: Any, where: str) -> StagePointer:
        """The pointer a (signed or stored) predicate describes, validated against
        :class:`PointerPredicate`; ``ControlRefused`` (``MALFORMED_POINTER``, one sentence
        naming ``where`` and the field) for anything else."""
        p = validate_pointer_predicate(data, where)
        return cls(
            model=p.model,
            stage=p.stage,
            version=p.version,
            model_digest=p.modelDigest.sha256,
            vsa=p.vsa.key,
            vsa_sha256=p.vsa.sha256,
            promoted_at=p.promotedAt,
            promoted_by=p.promotedBy,
            reason=p.reason,
            # the entries exactly as signed (to_json must give back the signed predicate)
            history=[dict(h) for h in data["history"]] if "history" in data else [],
            sequence=p.sequence,
            previous_sha256=p.previous.sha256 if p.previous else None,
            expires_at=p.expiresAt,
        )


_SHA256 = r"^[0-9a-f]{64}$"
_NAME_IN_KEY = r"[a-z0-9][a-z0-9._-]*"
_EVIDENCE_KEY = re.compile(
    rf"^({_NAME_IN_KEY})/versions/(v[1-9][0-9]{{0,8}})/evidence/[a-z0-9][a-z0-9._-]*\.json$"
)
_Strict = ConfigDict(strict=True, extra="ignore")


class _Digest(BaseModel):
    model_config = _Strict
    sha256: str = Field(pattern=_SHA256)


class _VsaRef(BaseModel):
    model_config = _Strict
    key: str = Field(max_length=1024)
    sha256: str = Field(pattern=_SHA256)


class HistoryEntry(BaseModel):
    """One entry of a pointer's ``history`` (what :meth:`StagePointer.summary` writes)."""

    model_config = _Strict
    version: str = Field(pattern=r"^v[1-9][0-9]{0,8}$")
    modelDigest: str = Field(pattern=_SHA256)  # noqa: N815 - the stored field name
    vsa: str = Field(max_length=1024)
    promotedAt: str = Field(default="", max_length=64)  # noqa: N815
    sequence: int = Field(default=0, ge=0)
    sha256: str = Field(default="", pattern=r"^([0-9a-f]{64})?$")


class PointerPredicate(BaseModel):
    """The shape of a stage pointer (the gate-signed statement's predicate)."""

    model_config = _Strict
    model: str = Field(pattern=rf"^{_NAME_IN_KEY}$", max_length=128)
    stage: Literal["staging", "production"]
    version: str = Field(pattern=r"^v[1-9][0-9]{0,8}$")
    modelDigest: _Digest  # noqa: N815
    vsa: _VsaRef
    sequence: int = Field(default=0, ge=0)
    previous: _Digest | None = None
    promotedAt: str = Field(max_length=64)  # noqa: N815
    expiresAt: str = Field(default="", max_length=64)  # noqa: N815
    promotedBy: str = Field(max_length=256)  # noqa: N815
    reason: str = Field(default="promote", max_length=1024)
    history: list[HistoryEntry] = Field(default_factory=list, max_length=10_000)


def _evidence_key_of(key: str, model: str) -> bool:
    """``key`` is an evidence key of ``model`` (which version's is the gate's question:
    :func:`secmlops.gate.verify_pointer_vsa` refuses the VSA of another version)."""
    match = _EVIDENCE_KEY.fullmatch(key)
    return match is not None and match.group(1) == model


def validate_pointer_predicate(data: Any, where: str) -> PointerPredicate:
    """``data`` as a :class:`PointerPredicate` whose VSA keys are evidence of the model and
    version they name; ``ControlRefused`` (``MALFORMED_POINTER``) naming ``where`` otherwise."""
    try:
        p = PointerPredicate.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        field_name = ".".join(str(x) for x in err["loc"]) or "the pointer"
        raise ControlRefused(
            f"malformed stage pointer {where}: {field_name}: {err['msg']}",
            where=where,
            reason=RegistryRefusal.MALFORMED_POINTER,
        ) from None
    bad = None
    if not _evidence_key_of(p.vsa.key, p.model):
        bad = f"vsa.key {p.vsa.key!r} is not an evidence key of {p.model}"
    for i, h in enumerate(p.history):
        if bad is None and not _evidence_key_of(h.vsa, p.model):
            bad = f"history.{i}.vsa {h.vsa!r} is not an evidence key of {p.model}"
    if bad:
        raise ControlRefused(
            f"malformed stage pointer {where}: {bad}",
            where=where,
            reason=RegistryRefusal.MALFORMED_POINTER,
        )
    return p


def parse_pointer(raw: bytes, where: str) -> StagePointer:
    """Parse stored pointer bytes WITHOUT verifying them: a signed bundle (its payload's
    predicate, with ``bundle`` and ``sha256`` set) or an unsigned pre-issue-8 pointer
    (``bundle`` ``None``). Readers verify with :func:`secmlops.gate.verify_pointer_vsa`."""
    data = parse_json_object(raw, where)
    if "dsseEnvelope" not in data:
        return StagePointer.from_json(data, where)
    envelope = data["dsseEnvelope"]
    payload = envelope.get("payload") if isinstance(envelope, dict) else None
    try:
        if not isinstance(payload, str):
            raise ValueError("no payload")
        decoded = base64.b64decode(payload, validate=True)
    except ValueError as exc:
        raise ControlRefused(
            f"malformed signed stage pointer {where}: its dsseEnvelope.payload is not base64",
            where=where,
            reason=RegistryRefusal.MALFORMED_POINTER,
        ) from exc
    statement = parse_json_object(decoded, f"the payload of {where}")
    predicate = statement.get("predicate")
    if not isinstance(predicate, dict):
        raise ControlRefused(
            f"malformed signed stage pointer {where}: its statement has no predicate object",
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

    def image_signature_prefix(self, version: str) -> str:
        """The serving image's cosign signature and scan attestation, as a detached OCI
        layout (no image layers: :func:`secmlops.controls.image_signing.detached_files`)."""
        return f"{self.version_prefix(version)}/image.cosign"

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
        obj = self.store.get_limited(key)
        if obj is None:
            return None, None
        return parse_pointer(obj.data, self.store.describe(key)), obj

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
        downloaded = self.download_model_hashed(version, dest)
        return downloaded.model_dir, downloaded.signature

    def download_model_hashed(self, version: str, dest: Path) -> DownloadedModel:
        """:meth:`download_model`, with the sha256 of every file as it was streamed (each
        byte read once: memory flat in model size). Symlinks, special files, empty folders
        and files above the configured ``max_model_file_bytes`` are refused."""
        model_dir = dest / "model"
        model_dir.mkdir(parents=True, exist_ok=False)
        files = self.store.download_tree_hashed(self.model_prefix(version), model_dir)
        if not files:
            raise ControlRefused(
                f"version {version} has no model files",
                where=self.store.describe(self.model_prefix(version)),
                reason=RegistryRefusal.NO_MODEL_FILES,
            )
        signature = dest / "model.sig"
        signature_sha256 = self.store.download_file(  # a signature is an ordinary object
            self.signature_key(version), signature, max_bytes=current_limits().max_object_bytes
        )
        return DownloadedModel(model_dir, signature, files, signature_sha256)
