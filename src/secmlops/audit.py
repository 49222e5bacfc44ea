"""The tamper-evident audit log (issue 8, attack 4).

Each model's log is a hash chain of signed entries, one create-only object per entry at
``<model>/audit/<sequence:010d>.json``. An entry is an in-toto statement (a Sigstore
bundle) whose predicate carries its ``sequence``, the sha256 of the stored bytes of the
entry before it (``previous``), the ``event``, the time and the event's fields::

    {"model": "churn", "sequence": 7, "previous": {"sha256": "…"}, "event": "intent",
     "at": "2026-01-01T00:00:00Z", "fields": {"operation": "…", "action": "promote", …}}

Appending takes the next sequence create-only (``If-None-Match: *`` on S3), so two writers
cannot both append entry 7: the loser re-reads the tail and retries. Pointer moves write an
``intent`` before the pointer moves and an ``outcome`` after (``promoted``, ``rolled-back``,
``refreshed``, ``race-lost``, ``failed``), so a crash in between leaves an intent without an
outcome. A lost race also writes ``superseded`` naming the loser's VSA, which readers then
ignore (:func:`superseded_vsas`). Entries about pointer moves must be signed by the gate;
pipeline entries (``registered``, approvals) by the gate or the attestor.

:func:`verify_audit_log` walks the chain and reports gaps (deleted entries), forged entries
(bad signature, untrusted key, wrong role), broken links (an entry replaced), unsigned
entries, and intents without an outcome. Deleting the newest entries leaves no gap: keep the
log in an S3 bucket with Object Lock in compliance mode (docs/security-model.md), where no
entry can be deleted or overwritten, and a delete marker is reported.

Example::

    AuditLog(models).append("intent", signer=gate_key, operation=op, action="promote")
    report = verify_audit_log(models, keys)
    print(render_audit_report(report))
    require_clean(report)
"""

from __future__ import annotations

import base64
import json
import random
import re
import time
from dataclasses import dataclass, field
from typing import Any

from secmlops._internal.digests import sha256_bytes
from secmlops.errors import ControlRefused, RefusalReason, SecMLOpsError
from secmlops.evidence.statements import (
    Subject,
    TrustedKeys,
    make_statement,
    sign_statement,
    utc_now,
    verify_bundle,
)
from secmlops.registry.models import (
    ModelRegistry,
    canonical_json,
    parse_json_object,
    parse_json_value,
)
from secmlops.registry.stores import WriteConflict

PREDICATE_AUDIT_ENTRY = "https://secmlops.dev/attestation/audit-entry/v1"

#: Events about stage pointers: only the gate may sign them.
GATE_EVENTS = frozenset({"intent", "outcome", "superseded", "refused", "failed"})
#: Roles whose signatures an audit entry may carry.
AUDIT_ROLES = ("gate", "attestor")
#: Events a person signs with their own key: a revocation, and their own approval or
#: rejection recorded from their machine (``promote --approve-as``).
PERSON_EVENTS = frozenset({"revoked", "approved", "rejected"})

_ENTRY = re.compile(r"^([0-9]{10})\.json$")
_GENESIS = "0" * 64
_APPEND_ATTEMPTS = 50


class AuditRefusal(RefusalReason):
    """What ``secmlops audit verify`` found wrong (first declared = the refusal's reason)."""

    ENTRY_FORGED = "entry_forged"
    """An entry's signature does not verify, or it is signed by a key no audit role holds."""
    WRONG_SIGNER = "wrong_signer"
    """A pointer event is signed by a role other than the gate."""
    CHAIN_BROKEN = "chain_broken"
    """An entry does not link to the one before it (replaced, reordered or malformed)."""
    ENTRY_MISSING = "entry_missing"
    """A sequence number has no entry (deleted), or is hidden by a delete marker."""
    UNSIGNED_ENTRY = "unsigned_entry"
    """An entry carries no signature (written without a signer)."""
    INTENT_WITHOUT_OUTCOME = "intent_without_outcome"
    """A pointer move was announced but its outcome never written (a crash in between)."""
    APPEND_CONFLICT = "append_conflict"
    """Every attempt to append collided with another writer."""


@dataclass(frozen=True)
class AuditEntry:
    """One entry of the chain as read (``signer``: the role that signed it, "" if none)."""

    sequence: int
    key: str
    sha256: str
    event: str
    at: str
    fields: dict[str, Any]
    previous_sha256: str | None
    signer: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "sequence": self.sequence,
            "key": self.key,
            "sha256": self.sha256,
            "event": self.event,
            "at": self.at,
            "signer": self.signer,
            "fields": self.fields,
        }


@dataclass(frozen=True)
class AuditProblem:
    """One thing wrong with the log."""

    reason: AuditRefusal
    sequence: int | None
    detail: str

    def to_json(self) -> dict[str, Any]:
        return {"reason": self.reason.value, "sequence": self.sequence, "detail": self.detail}


@dataclass
class AuditReport:
    """The result of :func:`verify_audit_log`: entries that verified, problems, notes."""

    model: str
    location: str
    entries: list[AuditEntry] = field(default_factory=list)
    problems: list[AuditProblem] = field(default_factory=list)
    #: Objects in the audit folder outside the chain (e.g. written before issue 8).
    unchained: list[str] = field(default_factory=list)
    #: The store's write-once protection (Object Lock), or None.
    retention: str | None = None

    @property
    def clean(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "location": self.location,
            "clean": self.clean,
            "entries": [e.to_json() for e in self.entries],
            "problems": [p.to_json() for p in self.problems],
            "unchained": self.unchained,
            "retention": self.retention,
        }


def _entry_statement(
    model: str, sequence: int, previous: str | None, event: str, fields: dict[str, Any]
) -> dict[str, Any]:
    predicate = {
        "model": model,
        "sequence": sequence,
        "previous": {"sha256": previous} if previous else None,
        "event": event,
        "at": utc_now(),
        "fields": json.loads(json.dumps(fields, default=str)),
    }
    return make_statement(
        [Subject("previous-entry", previous or _GENESIS)], PREDICATE_AUDIT_ENTRY, predicate
    )


class AuditLog:
    """One model's hash-chained audit log in the registry."""

    def __init__(self, models: ModelRegistry) -> None:
        self.models = models
        self.prefix = f"{models.model}/audit"

    def key(self, sequence: int) -> str:
        return f"{self.prefix}/{sequence:010d}.json"

    def chain(self) -> tuple[dict[int, str], list[str]]:
        """The chained entries' keys by sequence, and the other objects in the folder."""
        chained: dict[int, str] = {}
        other: list[str] = []
        for key in self.models.store.list_keys(self.prefix):
            match = _ENTRY.fullmatch(key.rsplit("/", 1)[-1])
            if match and key == self.key(int(match.group(1))):
                chained[int(match.group(1))] = key
            else:
                other.append(key)
        return chained, other

    def append(self, event: str, *, signer: Any, **fields: Any) -> AuditEntry:
        """Sign and append one entry after the current tail; retry when another writer took
        the sequence. ``signer`` ``None`` writes an unsigned entry (reported by verify)."""
        store = self.models.store
        for attempt in range(_APPEND_ATTEMPTS):
            chained, _ = self.chain()
            tail = max(chained, default=0)
            previous = None
            if tail:
                obj = store.get(chained[tail])
                if obj is None:  # vanished between list and read: look again
                    continue
                previous = sha256_bytes(obj.data)
            statement = _entry_statement(self.models.model, tail + 1, previous, event, fields)
            body = sign_statement(statement, signer) if signer is not None else statement
            data = canonical_json(body)
            try:
                store.put(self.key(tail + 1), data)
            except WriteConflict:
                time.sleep(random.uniform(0, 0.02 * (attempt + 1)))  # noqa: S311 - jitter
                continue
            return AuditEntry(
                sequence=tail + 1,
                key=self.key(tail + 1),
                sha256=sha256_bytes(data),
                event=event,
                at=statement["predicate"]["at"],
                fields=statement["predicate"]["fields"],
                previous_sha256=previous,
                signer="",
            )
        raise ControlRefused(
            f"could not append to the audit log of {self.models.model} "
            f"({_APPEND_ATTEMPTS} conflicts)",
            where=store.describe(self.prefix),
            reason=AuditRefusal.APPEND_CONFLICT,
        )


def audit_trust(keys: Any) -> TrustedKeys:
    """The keys audit entries may be signed with, each labelled with its role (approvers as
    ``approver:NAME``): the pipeline's gate and attestor, and for ``revoked`` entries only,
    the revoker's own key (an approver or the policy owner)."""
    trusted = TrustedKeys()
    trusted.extend(keys.trusted_all())  # labels: role names and approver:NAME, with windows
    return trusted


def _read_entry(
    models: ModelRegistry, sequence: int, key: str, trusted: TrustedKeys
) -> tuple[AuditEntry, list[AuditProblem]]:
    """Parse and verify one entry; problems found (an unsigned entry still parses)."""
    where = models.store.describe(key)
    raw = models.store.read(key)
    problems: list[AuditProblem] = []
    body = parse_json_object(raw, where)
    signer = ""
    if "dsseEnvelope" in body:
        try:
            verified = verify_bundle(body, trusted, where=where)
        except ControlRefused as exc:
            # Read what it claims anyway, to keep walking the chain.
            problems.append(
                AuditProblem(AuditRefusal.ENTRY_FORGED, sequence, f"{key}: {exc.message}")
            )
            try:  # bounded: size and depth checked before parsing (a hostile payload)
                statement = parse_json_value(
                    base64.b64decode(body["dsseEnvelope"]["payload"]), where
                )
            except (KeyError, TypeError, ValueError, ControlRefused):
                statement = {}
        else:
            statement, signer = verified.statement, verified.signer
    else:
        statement = body
        problems.append(AuditProblem(AuditRefusal.UNSIGNED_ENTRY, sequence, f"{key} is unsigned"))
    predicate = statement.get("predicate") if isinstance(statement, dict) else None
    if (
        not isinstance(predicate, dict)
        or statement.get("predicateType") != PREDICATE_AUDIT_ENTRY
        or predicate.get("sequence") != sequence
        or predicate.get("model") != models.model
        or not isinstance(predicate.get("event"), str)
        or not isinstance(predicate.get("fields"), dict)
    ):
        problems.append(
            AuditProblem(
                AuditRefusal.CHAIN_BROKEN,
                sequence,
                f"{key} is not audit entry {sequence} of {models.model}",
            )
        )
        predicate = predicate if isinstance(predicate, dict) else {}
    previous = predicate.get("previous")
    fields = predicate.get("fields")
    entry = AuditEntry(
        sequence=sequence,
        key=key,
        sha256=sha256_bytes(raw),
        event=str(predicate.get("event", "")),
        at=str(predicate.get("at", "")),
        fields=fields if isinstance(fields, dict) else {},
        previous_sha256=previous.get("sha256") if isinstance(previous, dict) else None,
        signer=signer,
    )
    own_decision = entry.event in ("approved", "rejected") and signer == (
        f"approver:{entry.fields.get('approver')}"
    )
    person_ok = entry.event == "revoked" or own_decision
    if signer and signer not in AUDIT_ROLES and not (entry.event in PERSON_EVENTS and person_ok):
        problems.append(
            AuditProblem(
                AuditRefusal.WRONG_SIGNER,
                sequence,
                f"{key}: a {entry.event} entry signed by the {signer} key; a person's key "
                "signs only revocations and that person's own decisions",
            )
        )
    elif entry.event in GATE_EVENTS and signer and signer != "gate":
        problems.append(
            AuditProblem(
                AuditRefusal.WRONG_SIGNER,
                sequence,
                f"{key}: a {entry.event} entry signed by the {signer} key, not the gate's",
            )
        )
    return entry, problems


def verify_audit_log(models: ModelRegistry, keys: Any) -> AuditReport:
    """Walk the model's audit chain and report every problem (see :class:`AuditRefusal`).

    Evaluates only: :func:`require_clean` enforces.
    """
    log = AuditLog(models)
    report = AuditReport(
        model=models.model,
        location=models.store.describe(log.prefix),
        retention=models.store.retention(),
    )
    chained, report.unchained = log.chain()
    trusted = audit_trust(keys)
    for rewritten in models.store.rewritten_keys(log.prefix):
        report.problems.append(
            AuditProblem(
                AuditRefusal.ENTRY_MISSING,
                None,
                f"{rewritten} was deleted or overwritten (the bucket kept its earlier versions)",
            )
        )
    previous: AuditEntry | None = None
    for sequence in range(1, max(chained, default=0) + 1):
        key = chained.get(sequence)
        if key is None:
            report.problems.append(
                AuditProblem(
                    AuditRefusal.ENTRY_MISSING,
                    sequence,
                    f"audit entry {sequence} is missing (deleted?)",
                )
            )
            previous = None
            continue
        try:
            entry, problems = _read_entry(models, sequence, key, trusted)
        except SecMLOpsError as exc:
            report.problems.append(
                AuditProblem(AuditRefusal.CHAIN_BROKEN, sequence, f"{key}: {exc.message}")
            )
            previous = None
            continue
        report.problems.extend(problems)
        # Entry 1 links to nothing; after a gap the link cannot be checked (the gap is).
        linkable = sequence == 1 or previous is not None
        expected = previous.sha256 if previous else None
        if linkable and entry.previous_sha256 != expected:
            report.problems.append(
                AuditProblem(
                    AuditRefusal.CHAIN_BROKEN,
                    sequence,
                    f"audit entry {sequence} does not link to entry {sequence - 1} "
                    "(an entry was replaced)"
                    if sequence > 1
                    else "audit entry 1 links to an entry before it",
                )
            )
        report.entries.append(entry)
        previous = entry
    _check_intents(report)
    return report


def _check_intents(report: AuditReport) -> None:
    """Every intent has a gate-signed outcome naming its operation (a forged one does not
    count)."""
    outcomes = {
        e.fields.get("operation")
        for e in report.entries
        if e.event == "outcome" and e.signer == "gate"
    }
    for e in report.entries:
        if e.event == "intent" and e.fields.get("operation") not in outcomes:
            report.problems.append(
                AuditProblem(
                    AuditRefusal.INTENT_WITHOUT_OUTCOME,
                    e.sequence,
                    f"audit entry {e.sequence}: {e.fields.get('action', 'pointer move')} of "
                    f"{e.fields.get('version')} to {e.fields.get('stage')} (operation "
                    f"{e.fields.get('operation')}) has no outcome: it crashed or was killed "
                    "between announcing and finishing the pointer move",
                )
            )


def require_clean(report: AuditReport) -> None:
    """``ControlRefused`` naming every problem unless the log verified clean."""
    if report.clean:
        return
    first = AuditRefusal.first_of(p.reason for p in report.problems)
    raise ControlRefused(
        f"the audit log of {report.model} has {len(report.problems)} problem(s): "
        + "; ".join(p.detail for p in report.problems),
        where=report.location,
        fix="investigate each entry named; restore deleted entries from the versioned "
        "(Object Lock) bucket",
        details={"problems": [p.to_json() for p in report.problems]},
        reason=first,
        result=report,
    )


def superseded_vsas(models: ModelRegistry, keys: Any) -> frozenset[str]:
    """Keys of VSAs a gate-signed ``superseded`` entry names (a lost promotion race):
    readers ignore them."""
    log = AuditLog(models)
    chained, _ = log.chain()
    trusted = audit_trust(keys)
    found: set[str] = set()
    for sequence, key in chained.items():
        try:
            entry, problems = _read_entry(models, sequence, key, trusted)
        except SecMLOpsError:
            continue
        if entry.event == "superseded" and entry.signer == "gate" and not problems:
            vsa = entry.fields.get("vsa")
            if isinstance(vsa, str):
                found.add(vsa)
    return frozenset(found)


def render_audit_report(report: AuditReport) -> str:
    """The report as text: one line per entry, then the problems."""
    lines = [f"Audit log of {report.model}  ({report.location})"]
    lines.append(f"  protection: {report.retention or 'none (entries can be deleted)'}")
    for e in report.entries:
        what = ", ".join(
            f"{k}={e.fields[k]}"
            for k in ("action", "result", "version", "stage", "vsa")
            if e.fields.get(k)
        )
        lines.append(f"  {e.sequence:>5} {e.at} {e.event:<18} {e.signer or 'UNSIGNED':<8} {what}")
    if report.unchained:
        lines.append(f"  {len(report.unchained)} object(s) outside the chain (pre-issue-8 log?)")
    lines.append("")
    if report.clean:
        lines.append(f"audit log verified: {len(report.entries)} entries, chain intact")
    else:
        lines.append(f"AUDIT LOG PROBLEMS ({len(report.problems)}):")
        lines.extend(f"- {p.reason.value}: {p.detail}" for p in report.problems)
    return "\n".join(lines)


__all__ = [
    "GATE_EVENTS",
    "PREDICATE_AUDIT_ENTRY",
    "AuditEntry",
    "AuditLog",
    "AuditProblem",
    "AuditRefusal",
    "AuditReport",
    "audit_trust",
    "render_audit_report",
    "require_clean",
    "superseded_vsas",
    "verify_audit_log",
]
