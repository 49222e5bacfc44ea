"""Signed, fresh stage pointers (issue 8, attack 1: stage pointer replay).

A stage pointer (``<model>/stages/<stage>.json``) is an in-toto statement signed by the gate
key, stored as a Sigstore bundle. Its predicate names the stage, the version, the model
digest, the VSA (key + sha256), a ``sequence`` that only grows, the sha256 of the pointer
it replaced (``previous``), ``promotedAt``, ``expiresAt`` and the stage's ``history``.

The signed stage history: before the pointer moves, the same bytes are written create-only
at ``<model>/stages/<stage>/<sequence:010d>.json``. Taking the next sequence is what makes
two concurrent promotions collide (one wins), and the history is what a reader checks a
pointer against: a pointer older than a gate-signed history entry was replayed (or its
promotion was interrupted; ``secmlops audit verify`` tells which). On S3 with Object Lock
the history objects cannot be deleted or overwritten (docs/security-model.md).

Like a TUF client, every reader also remembers the last sequence it verified per registry,
model and stage (:class:`SeenPointers`, ``<home>/trusted-pointers.json``) and refuses a
pointer that went back, or a different pointer with the same sequence.

Example::

    pointer, _ = models.read_pointer("production")
    verify_pointer_signature(models, pointer, keys.trusted("gate"))
    check_stage_history(models, pointer, keys.trusted("gate"))
    SeenPointers.default().check(models, pointer)
    check_fresh(pointer)
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import fcntl
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from secmlops._internal.atomic import write_atomic
from secmlops._internal.digests import sha256_bytes
from secmlops.errors import ControlRefused, InputError, RefusalReason, SecMLOpsError, ToolError
from secmlops.evidence.statements import (
    Subject,
    TrustedKeys,
    load_private_key,
    make_statement,
    sign_statement,
    verify_bundle,
)
from secmlops.registry.models import ModelRegistry, StagePointer, canonical_json, parse_pointer

PREDICATE_STAGE_POINTER = "https://secmlops.dev/attestation/stage-pointer/v1"

#: How long a signed pointer counts (days) unless the policy says otherwise
#: (``GatePolicy.pointer_valid_days`` when the policy has that field).
POINTER_VALID_DAYS = 30

#: The file, in the state home, where this machine remembers the pointers it verified.
SEEN_POINTERS_FILE = "trusted-pointers.json"

_TIME = "%Y-%m-%dT%H:%M:%SZ"


class PointerRefusal(RefusalReason):
    """Why a reader refused a stage pointer (``ControlRefused.reason``)."""

    POINTER_UNSIGNED = "pointer_unsigned"
    """The pointer is not a signed statement (written by hand, or before issue 8)."""
    POINTER_BAD_SIGNATURE = "pointer_bad_signature"
    """The pointer is signed by a key that is not the gate's, or its signature is broken."""
    POINTER_MISMATCH = "pointer_mismatch"
    """The signed pointer is about another model or stage, or is malformed."""
    POINTER_ROLLED_BACK = "pointer_rolled_back"
    """The pointer is older than the signed stage history or than one this reader saw."""
    POINTER_FORKED = "pointer_forked"
    """Two different signed pointers claim the same place in the stage history."""
    POINTER_EXPIRED = "pointer_expired"
    """The signed pointer is past its expiry: nobody re-verified the stage in time."""


def role_signer(keys: Any, role: str) -> Any:
    """The signer of a pipeline role: ``keys.signer(role)`` where the key directory has
    signers (issue 8 key custody), else the role's private key file."""
    signer = getattr(keys, "signer", None)
    if signer is not None:
        return signer(role)
    return load_private_key(keys.require(keys.private(role)))


def _time(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).strftime(_TIME)


def _parse_time(value: str, where: str) -> dt.datetime:
    try:
        return dt.datetime.strptime(value, _TIME).replace(tzinfo=dt.UTC)
    except ValueError as exc:
        raise ControlRefused(
            f"the signed pointer's time {value!r} is not an RFC 3339 UTC time",
            where=where,
            reason=PointerRefusal.POINTER_MISMATCH,
        ) from exc


def new_pointer(
    *,
    model: str,
    stage: str,
    version: str,
    model_digest: str,
    vsa: str,
    vsa_sha256: str,
    actor: str,
    reason: str,
    tip: StagePointer | None,
    sequence: int,
    valid_days: int = POINTER_VALID_DAYS,
    history_limit: int = 50,
    now: dt.datetime | None = None,
) -> StagePointer:
    """An unsigned pointer that follows ``tip`` (the newest signed history entry)."""
    at = now or dt.datetime.now(dt.UTC)
    history = [*tip.history, tip.summary()] if tip else []
    return StagePointer(
        model=model,
        stage=stage,
        version=version,
        model_digest=model_digest,
        vsa=vsa,
        vsa_sha256=vsa_sha256,
        promoted_at=_time(at),
        promoted_by=actor,
        reason=reason,
        history=history[-history_limit:],
        sequence=sequence,
        previous_sha256=tip.sha256 if tip else None,
        expires_at=_time(at + dt.timedelta(days=valid_days)),
    )


def sign_pointer(pointer: StagePointer, signer: Any) -> StagePointer:
    """``pointer`` signed by ``signer`` (the gate): with its ``bundle`` and ``sha256`` set."""
    statement = make_statement(
        [Subject("model", pointer.model_digest)], PREDICATE_STAGE_POINTER, pointer.to_json()
    )
    bundle = sign_statement(statement, signer)
    return dataclasses.replace(pointer, bundle=bundle, sha256=sha256_bytes(canonical_json(bundle)))


def publish_pointer(
    models: ModelRegistry,
    *,
    stage: str,
    version: str,
    model_digest: str,
    vsa: str,
    vsa_sha256: str,
    signer: Any,
    actor: str,
    reason: str = "promote",
) -> StagePointer:
    """Sign and publish a pointer that follows the stage's signed history (no gate run, no
    audit): for tools and tests that wrote the VSA themselves. ``WriteConflict`` if another
    writer took the sequence. Promotions go through :func:`secmlops.deploy.promote_to_stage`.
    """
    tip, taken = history_tip(models, stage, _trust_of(signer))
    current, current_obj = models.read_pointer(stage)
    pointer = new_pointer(
        model=models.model,
        stage=stage,
        version=version,
        model_digest=model_digest,
        vsa=vsa,
        vsa_sha256=vsa_sha256,
        actor=actor,
        reason=reason,
        tip=tip,
        sequence=max(taken, current.sequence if current else 0) + 1,
    )
    signed = sign_pointer(pointer, signer)
    models.move_pointer(signed, current_obj)
    return signed


def _trust_of(signer: Any) -> TrustedKeys:
    """Trust exactly ``signer``'s key (a private key's ``public_key()``, or a
    :class:`Signer`'s ``public_key``)."""
    public = signer.public_key
    trusted = TrustedKeys()
    trusted.add("gate", public() if callable(public) else public)
    return trusted


def _refuse(
    message: str, reason: PointerRefusal, where: str, fix: str | None = None
) -> ControlRefused:
    return ControlRefused(message, where=where, fix=fix, reason=reason)


def _repromote_fix(models: ModelRegistry, stage: str) -> str:
    return (
        f"re-promote the version that should serve: `secmlops promote {models.model} VERSION "
        f"--stage {stage}` (writes a new gate-signed pointer with a higher sequence)"
    )


def verify_pointer_signature(
    models: ModelRegistry, pointer: StagePointer, trusted_gate: TrustedKeys, *, stage: str
) -> None:
    """The pointer is a statement signed by a gate key, about this model and ``stage``, and
    says exactly what ``pointer`` says; ``ControlRefused`` otherwise."""
    where = models.store.describe(models.stage_key(stage))
    if pointer.bundle is None:
        raise _refuse(
            f"the {stage} pointer is unsigned (written by hand, or before pointers were "
            "signed); it is not trusted",
            PointerRefusal.POINTER_UNSIGNED,
            where,
            _repromote_fix(models, stage),
        )
    try:
        statement = verify_bundle(pointer.bundle, trusted_gate, where=where)
    except ControlRefused as exc:
        raise _refuse(
            f"the {stage} pointer is not signed by the gate key: {exc.message}",
            PointerRefusal.POINTER_BAD_SIGNATURE,
            where,
            _repromote_fix(models, stage),
        ) from exc
    if statement.predicate_type != PREDICATE_STAGE_POINTER:
        raise _refuse(
            f"the {stage} pointer's statement is a {statement.predicate_type}, not a pointer",
            PointerRefusal.POINTER_MISMATCH,
            where,
        )
    signed = StagePointer.from_json(statement.predicate, where)
    if signed != pointer or (signed.model, signed.stage) != (models.model, stage):
        raise _refuse(
            f"the signed pointer names {signed.model} {signed.stage}, "
            f"not {models.model} {stage} (copied from elsewhere?)",
            PointerRefusal.POINTER_MISMATCH,
            where,
        )


def _history_entry(
    models: ModelRegistry, stage: str, key: str, trusted_gate: TrustedKeys
) -> StagePointer:
    """A stage history entry, verified: gate-signed, about this stage, at its own sequence."""
    raw = models.store.read(key)
    entry = parse_pointer(raw, models.store.describe(key))
    verify_pointer_signature(models, entry, trusted_gate, stage=stage)
    if models.stage_history_key(stage, entry.sequence) != key:
        raise _refuse(
            f"stage history entry {key} claims sequence {entry.sequence}",
            PointerRefusal.POINTER_MISMATCH,
            models.store.describe(key),
        )
    return entry


def history_tip(
    models: ModelRegistry, stage: str, trusted_gate: TrustedKeys
) -> tuple[StagePointer | None, int]:
    """The newest verified entry of the signed stage history (``None`` if there is none),
    and the highest sequence taken there (verified or not: the next one to claim is above)."""
    history = models.stage_history(stage)
    for sequence in sorted(history, reverse=True):
        try:
            return _history_entry(models, stage, history[sequence], trusted_gate), max(history)
        except SecMLOpsError:
            continue
    return None, max(history, default=0)


def check_stage_history(
    models: ModelRegistry, pointer: StagePointer, trusted_gate: TrustedKeys, *, stage: str
) -> None:
    """The (signature-verified) pointer is the newest entry of the signed stage history:
    stored there at its sequence with the same bytes, linked to the entry before it, and
    with no entry above it. ``ControlRefused`` (rolled back / forked) otherwise."""
    where = models.store.describe(models.stage_key(stage))
    rewritten = models.store.rewritten_keys(f"{models.model}/stages/{stage}")
    if rewritten:
        raise _refuse(
            f"entries of the signed stage history of {stage} were deleted or overwritten "
            f"({', '.join(rewritten)}); the pointer cannot be trusted",
            PointerRefusal.POINTER_ROLLED_BACK,
            where,
            "restore the earlier versions (Object Lock kept them), then re-verify",
        )
    history = models.stage_history(stage)
    own = history.get(pointer.sequence)
    stored = models.store.get(own) if own else None
    if stored is None or sha256_bytes(stored.data) != pointer.sha256:
        raise _refuse(
            f"the {stage} pointer (sequence {pointer.sequence}, {pointer.version}) is not the "
            f"entry the signed stage history holds at that sequence",
            PointerRefusal.POINTER_FORKED,
            where,
            _repromote_fix(models, stage),
        )
    newer = sorted((s for s in history if s > pointer.sequence), reverse=True)
    for sequence in newer:
        try:
            entry = _history_entry(models, stage, history[sequence], trusted_gate)
        except SecMLOpsError as exc:
            raise _refuse(
                f"the signed stage history of {stage} holds an entry above the pointer that "
                f"does not verify ({history[sequence]}: {exc.message})",
                PointerRefusal.POINTER_ROLLED_BACK,
                where,
                _repromote_fix(models, stage),
            ) from exc
        raise _refuse(
            f"the {stage} pointer moved backwards: it is sequence {pointer.sequence} "
            f"({pointer.version}) but the signed stage history reached sequence "
            f"{entry.sequence} ({entry.version}) — a replayed old pointer, or an interrupted "
            f"promotion (`secmlops audit verify {models.model}` tells which)",
            PointerRefusal.POINTER_ROLLED_BACK,
            where,
            _repromote_fix(models, stage),
        )
    if pointer.sequence > 1:
        before = history.get(pointer.sequence - 1)
        before_obj = models.store.get(before) if before else None
        if before_obj is not None and sha256_bytes(before_obj.data) != pointer.previous_sha256:
            raise _refuse(
                f"the {stage} pointer (sequence {pointer.sequence}) does not follow the "
                f"signed stage history's entry {pointer.sequence - 1}",
                PointerRefusal.POINTER_FORKED,
                where,
                _repromote_fix(models, stage),
            )


def check_fresh(pointer: StagePointer, *, where: str, now: dt.datetime | None = None) -> None:
    """``ControlRefused`` (``POINTER_EXPIRED``) if the signed pointer is past ``expiresAt``."""
    expires = _parse_time(pointer.expires_at, where)
    if (now or dt.datetime.now(dt.UTC)) >= expires:
        raise _refuse(
            f"the {pointer.stage} pointer ({pointer.version}, signed {pointer.promoted_at}) "
            f"expired at {pointer.expires_at}",
            PointerRefusal.POINTER_EXPIRED,
            where,
            f"re-verify the stage through the full gate and re-sign its pointer: "
            f"`secmlops verify-stage {pointer.model} --stage {pointer.stage} --refresh`",
        )


class SeenPointers:
    """The last pointer this machine verified per registry, model and stage (like a TUF
    client's trusted metadata): a pointer older than it, or a different one with the same
    sequence, is refused. Updated only after a pointer verified.

    The file is JSON::

        {"pointers": {"<registry uri>#<model>/<stage>":
            {"sequence": 3, "sha256": "...", "version": "v2", "seenAt": "..."}}}
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def default(cls) -> SeenPointers:
        """``<state home>/trusted-pointers.json`` (``SECMLOPS_HOME``, else ``.secmlops``)."""
        from secmlops.settings import state_home

        return cls(state_home() / SEEN_POINTERS_FILE)

    @staticmethod
    def _name(models: ModelRegistry, stage: str) -> str:
        return f"{models.store.uri}#{models.model}/{stage}"

    def _load(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise InputError(
                f"{self.path} (the pointers this machine verified) cannot be read: {exc}",
                where=str(self.path),
                fix="restore it from a backup; deleting it forgets which pointers were seen",
            ) from exc
        pointers = data.get("pointers") if isinstance(data, dict) else None
        if not isinstance(pointers, dict):
            raise InputError(f"{self.path} is not a trusted-pointers file", where=str(self.path))
        return pointers

    def last(self, models: ModelRegistry, stage: str) -> dict[str, Any] | None:
        """What this machine last verified for ``stage`` (``None``: never)."""
        return self._load().get(self._name(models, stage))

    def check(self, models: ModelRegistry, pointer: StagePointer, *, stage: str) -> None:
        """``ControlRefused`` if ``pointer`` is older than (or forks) the last one seen."""
        seen = self.last(models, stage)
        if not seen:
            return
        where = models.store.describe(models.stage_key(stage))
        sequence = seen.get("sequence", 0)
        if pointer.sequence < sequence:
            raise _refuse(
                f"the {stage} pointer moved backwards: it is sequence {pointer.sequence} "
                f"({pointer.version}), but this machine already verified sequence {sequence} "
                f"({seen.get('version')}) — a replayed old pointer",
                PointerRefusal.POINTER_ROLLED_BACK,
                where,
                _repromote_fix(models, stage),
            )
        if pointer.sequence == sequence and pointer.sha256 != seen.get("sha256"):
            raise _refuse(
                f"the {stage} pointer at sequence {sequence} differs from the one this machine "
                "verified before (two signed pointers with one sequence)",
                PointerRefusal.POINTER_FORKED,
                where,
            )

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.with_name(f".{self.path.name}.lock").open("a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def remember(self, models: ModelRegistry, pointer: StagePointer, *, stage: str) -> None:
        """Record a verified ``pointer`` (never lowers the sequence already recorded)."""
        try:
            with self._locked():
                pointers = self._load()
                name = self._name(models, stage)
                if pointers.get(name, {}).get("sequence", 0) > pointer.sequence:
                    return
                pointers[name] = {
                    "sequence": pointer.sequence,
                    "sha256": pointer.sha256,
                    "version": pointer.version,
                    "seenAt": _time(dt.datetime.now(dt.UTC)),
                }
                write_atomic(self.path, canonical_json({"pointers": pointers}), mode=0o600)
        except OSError as exc:
            raise ToolError(
                f"cannot record the verified pointer in {self.path}: {exc.strerror}",
                where=str(self.path),
            ) from exc


__all__ = [
    "POINTER_VALID_DAYS",
    "PREDICATE_STAGE_POINTER",
    "PointerRefusal",
    "SeenPointers",
    "check_fresh",
    "check_stage_history",
    "history_tip",
    "new_pointer",
    "publish_pointer",
    "role_signer",
    "sign_pointer",
    "verify_pointer_signature",
]
